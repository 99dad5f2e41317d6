"""Every command the READMEs tell a newcomer to type works when followed literally.

The fenced ```sh blocks of README.md and of each examples/*/README.md run in order, in one bash
session per README (`set -e -o pipefail`: a failing command fails the test), from a fresh
directory holding a copy of examples/ (as the repository root does), with a fresh PFSFS_HOME
and the daemon free to start by itself as it does for a user. Whatever it mounted or started
is cleaned up afterwards. A block marked `<!-- not run: REASON -->` on the line before it is
skipped: the set-up commands (they are what CI runs), and blocks that need a server elsewhere.

Also here: `source scripts/setup.sh`, which the README recommends, leaves the caller's shell as
it was (no `set -euo pipefail` that closes a terminal on the next failing command).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from .fusehelpers import force_unmount, fuse_mounts, no_leftovers, stop_any_daemon  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
READMES = [ROOT / "README.md", *sorted(ROOT.glob("examples/*/README.md"))]
NOT_RUN = re.compile(r"<!--\s*not run:\s*(.+?)\s*-->")
#: The few blocks allowed to be skipped, per README (keep this short).
MAX_NOT_RUN = {"README.md": 3}


@dataclass
class Block:
    line: int  # where the block starts, for messages
    code: str
    not_run: str | None  # the reason given, if marked


def sh_blocks(text: str) -> list[Block]:
    """The ```sh blocks of a Markdown text, each with the not-run reason of the line before."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() in ("```sh", "```bash"):
            before = next((x for x in reversed(lines[:i]) if x.strip()), "")
            marked = NOT_RUN.search(before)
            end = i + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            blocks.append(Block(i + 1, "\n".join(lines[i + 1 : end]), marked and marked[1]))
            i = end
        i += 1
    return blocks


def test_the_block_parser_honours_not_run_markers() -> None:
    text = "a\n```sh\necho 1\n```\n<!-- not run: needs a cluster -->\n\n```sh\necho 2\n```\n"
    assert [(b.code, b.not_run) for b in sh_blocks(text)] == [
        ("echo 1", None),
        ("echo 2", "needs a cluster"),
    ]


def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PFSFS_")}
    (tmp_path / "tmp").mkdir()
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}",
        PFSFS_HOME=str(tmp_path / "home"),
        TMPDIR=str(tmp_path / "tmp"),  # mktemp -d lands in tmp_path: cleaned up, mounts found
    )
    return env


@pytest.mark.parametrize("readme", READMES, ids=[str(p.relative_to(ROOT)) for p in READMES])
def test_readme_commands_run(readme: Path, tmp_path: Path, no_leftovers: None) -> None:  # noqa: F811
    blocks = sh_blocks(readme.read_text())
    skipped = [b for b in blocks if b.not_run]
    runs = [b for b in blocks if not b.not_run]
    assert runs, f"{readme} has no ```sh block to run"
    assert len(skipped) <= MAX_NOT_RUN.get(readme.name if readme.parent == ROOT else "", 0), (
        f"too many blocks marked not run in {readme}: {[b.line for b in skipped]}"
    )
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples")
    script = "set -e -o pipefail -x\n" + "\n".join(
        f"# --- {readme.name} line {b.line}\n{b.code}" for b in runs
    )
    env = user_env(tmp_path)
    try:
        proc = subprocess.run(
            ["bash", "-c", script],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=900,
        )
        assert proc.returncode == 0, (
            f"{readme.relative_to(ROOT)}: a command failed (exit {proc.returncode}); the "
            f"trace ends:\n{proc.stderr[-3000:]}\n--- stdout ends:\n{proc.stdout[-1500:]}"
        )
        assert "Traceback" not in proc.stderr, proc.stderr
    finally:
        for mp in fuse_mounts(str(tmp_path)):
            force_unmount(mp)
        stop_any_daemon(tmp_path / "home")
        for mp in fuse_mounts(str(tmp_path)):
            subprocess.run(["fusermount3", "-uz", mp], capture_output=True)


# -- source scripts/setup.sh ------------------------------------------------------------------


def bash(script: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env={**os.environ, "PFSFS_SETUP_EXTRA_DEBS": "", **env},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=600,
    )


def test_sourcing_setup_keeps_the_callers_shell_options() -> None:
    proc = bash(
        'before="$(set +o; shopt -p)"\n'
        "source scripts/setup.sh\n"
        "source scripts/setup.sh\n"  # twice: idempotent, PATH not doubled
        '[ "$before" = "$(set +o; shopt -p)" ] || { echo "options changed"; exit 9; }\n'
        "false\n"  # with a leaked `set -e`, the shell would end here
        "echo still-here\n"
        "command -v pfsfs\n"
        'echo "$PATH" | tr : "\\n" | grep -c "^$PWD/.venv/bin$"\n'
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.split() == ["still-here", str(ROOT / ".venv/bin/pfsfs"), "1"], proc.stdout


def test_a_failing_setup_returns_non_zero_but_keeps_the_shell(tmp_path: Path) -> None:
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    # A tree without .venv and a Python that cannot make one: the setup fails.
    kept = bash("source scripts/setup.sh; echo rc=$?; echo still-here", tmp_path, PYTHON="false")
    assert kept.stdout.split() == ["rc=1", "still-here"], kept.stdout + kept.stderr
    assert "setup: failed" in kept.stderr
    # A script that sources it with `set -e` (quickstart.sh, test.sh) stops there.
    stopped = bash("set -e; source scripts/setup.sh; echo not-reached", tmp_path, PYTHON="false")
    assert stopped.returncode != 0 and "not-reached" not in stopped.stdout
