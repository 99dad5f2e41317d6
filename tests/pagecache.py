"""What of a file is in the page cache (``fincore``, util-linux), and whether a path is on tmpfs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def resident_bytes(path: Path) -> int:
    """How many bytes of ``path`` the page cache holds."""
    if shutil.which("fincore") is None:
        raise RuntimeError("fincore (util-linux) is needed to see the page cache")
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.strip() or 0)


def on_tmpfs(path: Path) -> bool:
    """Whether ``path`` lives on a tmpfs (whose files are their page cache)."""
    best, kind = "", ""
    for line in Path("/proc/mounts").read_text().splitlines():
        _, point, fstype, *_ = line.split()
        inside = str(path.resolve()).startswith(point.rstrip("/") + "/")
        if inside and len(point) > len(best):
            best, kind = point, fstype
    return kind == "tmpfs"
