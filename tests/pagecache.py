"""What of a file is in the page cache (``fincore``, util-linux); the filesystem of a path."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pfsfsd import mountinfo

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
    """The type of the filesystem ``path`` is on (the daemon's own reading of the mount table)."""
    return mountinfo.filesystem_of(path)
