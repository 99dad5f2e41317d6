"""Remotes for ``push``/``pull``: named in ``<home>/remotes.json``, or given as a URL or a path.

A remote is one of:

* a **name** saved with ``pfsfs remote add NAME URL [--endpoint-url URL] [--region R]``;
* an **S3 URL** ``s3://bucket/prefix`` (with ``--endpoint-url`` for non-AWS servers);
* the **path of another pfsfs home** (whatever store that home uses, local or S3).

``remotes.json`` holds ``{"remotes": {NAME: {"url": ..., "endpoint_url": ..., "region": ...}}}``
and never credentials: those come from the usual AWS chain (environment, ``~/.aws``, profile).

An S3 remote is opened as a ``Repository`` whose index and read cache live in the local home
under ``remotes/<name>/`` (``<name>`` is the remote's name, or a digest of URL and endpoint),
so a second push or pull re-reads nothing it already knows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import AlreadyExists, InvalidInput, NotFound, StoreError
from .home import CONFIG_NAME, HomeConfig, read_config
from .index import Index
from .refspec import check_name
from .repository import Repository

log = logging.getLogger(__name__)

REMOTES_NAME = "remotes.json"


@dataclass(frozen=True)
class Remote:
    """Where a remote is: an S3 URL (plus endpoint and region) or another home's path."""

    url: str
    endpoint_url: str | None = None
    region: str | None = None
    name: str | None = None

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def describe(self) -> str:
        where = self.url + (f" at {self.endpoint_url}" if self.endpoint_url else "")
        return f"{self.name} ({where})" if self.name else where

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"url": self.url}
        if self.endpoint_url:
            d["endpoint_url"] = self.endpoint_url
        if self.region:
            d["region"] = self.region
        return d


def _path(home: Path) -> Path:
    return home / REMOTES_NAME


def load_remotes(home: Path) -> dict[str, Remote]:
    try:
        data = json.loads(_path(home).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {_path(home)}: {exc}") from None
    remotes = data.get("remotes") if isinstance(data, dict) else None
    if not isinstance(remotes, dict):
        raise StoreError(f"{_path(home)} is not a pfsfs remotes file")
    result = {}
    for name, d in remotes.items():
        if not isinstance(d, dict) or not isinstance(d.get("url"), str):
            raise StoreError(f"{_path(home)}: remote {name!r} has no url")
        result[name] = Remote(d["url"], d.get("endpoint_url"), d.get("region"), name)
    return result


def _save(home: Path, remotes: dict[str, Remote]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = _path(home).with_suffix(".tmp")
    body = {"remotes": {n: r.to_json() for n, r in sorted(remotes.items())}}
    tmp.write_text(json.dumps(body, indent=2) + "\n")
    os.replace(tmp, _path(home))


def normalise(url: str, endpoint_url: str | None, region: str | None) -> Remote:
    """Validate a remote's URL: ``s3://bucket/prefix`` or an existing home directory."""
    if endpoint_url is not None:
        parts = urlsplit(endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidInput("--endpoint-url must be an http:// or https:// URL")
        if parts.username is not None or parts.password is not None:
            raise InvalidInput(
                "--endpoint-url must not carry credentials; use AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY or a profile"
            )
    if url.startswith("s3://"):
        from .store.s3 import parse_store_url

        bucket, prefix = parse_store_url(url)
        clean = f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"
        return Remote(clean, endpoint_url, region)
    if "://" in url:
        raise InvalidInput(f"remote {url!r}: use s3://bucket/prefix or the path of a pfsfs home")
    if endpoint_url or region:
        raise InvalidInput("--endpoint-url and --region apply only to s3:// remotes")
    path = Path(url).expanduser().resolve()
    if read_config(path) is None:
        raise NotFound(f"{path} is not a pfsfs home (no {CONFIG_NAME}); run `pfsfs init` there")
    return Remote(str(path))


def add_remote(home: Path, name: str, remote: Remote) -> Remote:
    check_name("remote", name)
    remotes = load_remotes(home)
    if name in remotes:
        raise AlreadyExists(f"remote {name!r} already exists ({remotes[name].describe()})")
    remotes[name] = Remote(remote.url, remote.endpoint_url, remote.region, name)
    _save(home, remotes)
    return remotes[name]


def remove_remote(home: Path, name: str) -> None:
    remotes = load_remotes(home)
    if name not in remotes:
        raise NotFound(f"no remote named {name!r}")
    del remotes[name]
    _save(home, remotes)


def resolve(
    home: Path, spec: str | None, endpoint_url: str | None = None, region: str | None = None
) -> Remote:
    """A remote from a name, an ``s3://`` URL or a path; ``None`` means the only remote."""
    remotes = load_remotes(home)
    if spec is None:
        if len(remotes) == 1:
            return next(iter(remotes.values()))
        if not remotes:
            raise InvalidInput(
                "no remote given and none configured: `pfsfs remote add NAME s3://bucket/prefix`"
            )
        raise InvalidInput(f"several remotes are configured; name one of: {', '.join(remotes)}")
    if spec in remotes:
        if endpoint_url or region:
            raise InvalidInput(f"remote {spec!r} is configured; do not give --endpoint-url")
        return remotes[spec]
    if not spec.startswith("s3://") and "/" not in spec and not Path(spec).exists():
        raise NotFound(f"no remote named {spec!r} (see `pfsfs remote list`)")
    return normalise(spec, endpoint_url, region)


def open_remote(home: Path, remote: Remote) -> Repository:
    """The remote as a ``Repository``; for S3 its index and cache live under our home."""
    if not remote.is_s3:
        return Repository.open(Path(remote.url), create=False)
    from .store.s3 import parse_store_url

    bucket, prefix = parse_store_url(remote.url)
    store: dict[str, Any] = {"type": "s3", "bucket": bucket, "prefix": prefix}
    if remote.endpoint_url:
        store["endpoint_url"] = remote.endpoint_url
    if remote.region:
        store["region"] = remote.region
    tag = (
        remote.name
        or hashlib.sha256(f"{remote.url}\n{remote.endpoint_url or ''}".encode()).hexdigest()[:16]
    )
    local = home / "remotes" / tag
    config = HomeConfig(store)
    return Repository.on_store(local, config, Index(local / "index"))
