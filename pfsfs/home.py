"""The pfsfs home: where the index, the local store, staging and the daemon's socket live.

Resolution order: ``--home`` > ``$PFSFS_HOME`` > ``$XDG_DATA_HOME/pfsfs`` >
``~/.local/share/pfsfs``. ``config.json`` in the home names the object store (the embedded
local directory by default, or S3). Store-wide settings that every machine must agree on (the
chunking parameters) live in the store itself, in the ``config`` ref.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidInput, StoreError
from .store.base import ObjectStore

CONFIG_NAME = "config.json"


def default_home() -> Path:
    env = os.environ.get("PFSFS_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local/share")
    return Path(xdg) / "pfsfs"


@dataclass(frozen=True)
class HomeConfig:
    """What ``config.json`` holds."""

    store: dict[str, Any]

    @classmethod
    def local(cls) -> HomeConfig:
        return cls({"type": "local", "path": "store"})


def read_config(home: Path) -> HomeConfig | None:
    path = home / CONFIG_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("store"), dict):
        raise StoreError(f"{path} is not a pfsfs configuration")
    return HomeConfig(data["store"])


def write_config(home: Path, config: HomeConfig) -> None:
    home.mkdir(parents=True, exist_ok=True)
    tmp = home / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "store": config.store}, indent=2) + "\n")
    os.replace(tmp, home / CONFIG_NAME)


def open_store(home: Path, config: HomeConfig) -> ObjectStore:
    """Instantiate the store that ``config`` names (no network I/O here)."""
    kind = config.store.get("type")
    if kind == "local":
        from .store.local import LocalObjectStore

        path = Path(config.store.get("path", "store"))
        return LocalObjectStore(path if path.is_absolute() else home / path)
    if kind == "s3":
        from .store.cache import DEFAULT_MAX_BYTES, CachingStore
        from .store.s3 import from_config

        # Immutable blobs are cached in <home>/cache/store (size: store.cache_max_bytes).
        max_bytes = config.store.get("cache_max_bytes", DEFAULT_MAX_BYTES)
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise InvalidInput(f"{home / CONFIG_NAME}: store.cache_max_bytes must be an integer")
        return CachingStore(from_config(config.store), home / "cache" / "store", max_bytes)
    raise InvalidInput(f"unknown store type {kind!r} in {home / CONFIG_NAME}")
