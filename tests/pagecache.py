"""What of a file is in the page cache (``fincore``, util-linux); the filesystem of a path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# Local disk filesystems that take O_DIRECT (where a test may insist on it).
DIRECT_IO_FILESYSTEMS = {"ext4", "xfs", "btrfs"}


def resident_bytes(path: Path) -> int:
    """How many bytes of ``path`` the page cache holds (skips the test without ``fincore``)."""
    if shutil.which("fincore") is None:
        pytest.skip("fincore (util-linux) is not installed: cannot see the page cache")
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip() or 0)


def filesystem_of(path: Path) -> str:
    """The type of the filesystem ``path`` is on (the mount in effect: the last one listed)."""
    target = str(path.resolve())
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        point = point.encode().decode("unicode_escape")  # spaces are listed as \040
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fstype
    return kind
