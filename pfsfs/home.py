"""The pfsfs home: where the index, the local store, staging and the daemon's socket live.

Resolution order: ``--home`` > ``$PFSFS_HOME`` > ``$XDG_DATA_HOME/pfsfs`` >
``~/.local/share/pfsfs``. ``config.json`` in the home names the object store (the embedded
local directory by default, or S3). Store-wide settings that every machine must agree on (the
chunking parameters) live in the store itself, in the ``config`` ref.

Permissions: a new home is made 0700 (everything in it, the store included, is then out of
other users' reach whatever the modes of the files inside), and a local store created outside
the home by ``pfsfs init --store`` is 0700 too. ``pfsfs init`` tightens an existing home that
others can enter, and says so; nothing else changes the modes of an existing home.

A group-shared store (``pfsfs init --store DIR --shared-group``, ``store.shared_group`` in
``config.json``) is for a team whose members each keep a private home: the store's directories
are 2770 (setgid: new ones keep the group) and its files 0660, and every process that opens it
runs with umask 007 so what it adds stays usable by the group.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, StoreError
from .store.base import ObjectStore

if TYPE_CHECKING:
    from .store.cache import CachingStore

CONFIG_NAME = "config.json"
PRIVATE_DIR_MODE = 0o700
SHARED_DIR_MODE = 0o2770
SHARED_FILE_MODE = 0o660
SHARED_UMASK = 0o007


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


def check_path(path: Path, what: str) -> Path:
    """LMDB opens paths as UTF-8: refuse one that is not, in words, before it is used."""
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{what} {os.fsencode(path)!r}: the path must be UTF-8") from None
    return path


def is_shared(config: HomeConfig) -> bool:
    return bool(config.store.get("shared_group"))


def make_private_dir(path: Path) -> bool:
    """Create ``path`` (and missing parents) with mode 0700; False if it already existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, PRIVATE_DIR_MODE)  # exactly 0700, whatever the umask
    return True


def tighten(path: Path) -> int | None:
    """Make ``path`` 0700 if group or others may enter it; the old mode, or None if it was
    already private."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o077:
        return None
    os.chmod(path, PRIVATE_DIR_MODE)
    return mode


def share_with_group(root: Path) -> None:
    """Make a local store usable by its directory's group: directories 2770, files 0660.

    Only what this user owns is changed (a member joining a shared store finds the rest shared
    by its owners already; chmod of it would fail)."""
    me = os.geteuid()

    def share(path: str, mode: int) -> None:
        st = os.lstat(path)
        if st.st_uid == me and not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
            os.chmod(path, mode)

    share(str(root), SHARED_DIR_MODE)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            share(os.path.join(dirpath, name), SHARED_DIR_MODE)
        for name in filenames:
            share(os.path.join(dirpath, name), SHARED_FILE_MODE)


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


#: What pfsfs itself puts in a home: a directory holding only these is a home being made.
HOME_ENTRIES = frozenset(
    {"store", "index", "cache", "staging", "jobs", "pipelines", "remotes.json", "gc.lock"}
    | {"daemon.lock", "daemon.log", "daemon.sock", CONFIG_NAME + ".tmp"}
)


def write_config(home: Path, config: HomeConfig) -> None:
    new = not (home / CONFIG_NAME).exists()
    if not make_private_dir(home) and new and set(os.listdir(home)) <= HOME_ENTRIES:
        # A home is new until it has a config, even if something made its directory first
        # (the store's first ref, a daemon's lock): nothing of the user's is in it yet, so it
        # is made private now rather than left with the umask's mode.
        os.chmod(home, PRIVATE_DIR_MODE)
    tmp = home / (CONFIG_NAME + ".tmp")
    tmp.write_text(json.dumps({"format": 1, "store": config.store}, indent=2) + "\n")
    os.replace(tmp, home / CONFIG_NAME)


def open_store(home: Path, config: HomeConfig) -> ObjectStore:
    """Instantiate the store that ``config`` names, without any cache (no network I/O here)."""
    kind = config.store.get("type")
    if kind == "local":
        from .store.local import LocalObjectStore

        if is_shared(config):
            # Whatever module creates a blob, a directory or a lock from now on, the group
            # can use it (directories then 0770 and setgid by inheritance, files 0660/0640).
            os.umask(SHARED_UMASK)
        path = Path(config.store.get("path", "store"))
        return LocalObjectStore(path if path.is_absolute() else home / path)
    if kind == "s3":
        from .store.s3 import from_config

        _cache_max_bytes(home, config)  # a bad setting fails before anything is opened
        return from_config(config.store)
    raise InvalidInput(f"unknown store type {kind!r} in {home / CONFIG_NAME}")


def open_read_cache(home: Path, config: HomeConfig, store: ObjectStore) -> CachingStore | None:
    """The local read cache in front of ``store`` for this home, or None: a remote (S3)
    store's immutable blobs are cached in ``<home>/cache/store`` (at most
    ``store.cache_max_bytes``); a local store needs none. The repository holds it and gives
    it to its object reader and writer."""
    if config.store.get("type") != "s3":
        return None
    from .store.cache import CachingStore

    return CachingStore(store, home / "cache" / "store", _cache_max_bytes(home, config))


def _cache_max_bytes(home: Path, config: HomeConfig) -> int:
    from .store.cache import DEFAULT_MAX_BYTES

    max_bytes = config.store.get("cache_max_bytes", DEFAULT_MAX_BYTES)
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
        raise InvalidInput(f"{home / CONFIG_NAME}: store.cache_max_bytes must be an integer")
    return max_bytes
