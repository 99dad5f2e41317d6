"""Run the real ``pfsfs`` command in a subprocess, the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PFSFS = [sys.executable, "-m", "pfsfs.cli.main"]


def run(
    home: Path, *args: str, input: bytes | None = None, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PFSFS_HOME": str(home)}
    proc = subprocess.run(
        [*PFSFS, *args], input=input, capture_output=True, env=env, cwd=cwd, timeout=300
    )
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace")
        raise AssertionError(f"pfsfs {' '.join(args)} exited {proc.returncode}: {err}")
    return proc


def fails(home: Path, *args: str, input: bytes | None = None, code: int | None = None) -> str:
    """Run a command that must fail with a one-line error; return that line."""
    proc = run(home, *args, input=input, check=False)
    assert proc.returncode != 0, f"pfsfs {' '.join(args)} unexpectedly succeeded"
    if code is not None:
        assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, f"expected one error line, got: {lines}"
    return lines[0]
