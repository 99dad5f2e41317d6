"""Command modules are imported when one of their commands runs, not all at start-up.

``pfsfs.cli.main`` names each command's module (``PfsGroup.lazy``). These tests catch the table
drifting from the modules (a command nobody can run, or one listed in the wrong module) and
the start-up importing every module again.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .cli import run


def test_the_table_names_every_command_of_every_module_and_no_other() -> None:
    from pfsfs.cli.main import _command_modules

    table = _command_modules()
    cli_dir = Path(importlib.import_module("pfsfs.cli").__file__).parent  # type: ignore[arg-type]
    on_disk = {f"pfsfs.cli.{p.stem}" for p in cli_dir.glob("*_cmds.py")}
    assert on_disk <= set(table.values()), "a command module the table does not name"
    for module_name in sorted(set(table.values())):
        module = importlib.import_module(module_name)
        names = {c.name for c in module.COMMANDS}
        assert names == {n for n, m in table.items() if m == module_name}, module_name


def _modules_after(home: Path, *args: str) -> set[str]:
    """The pfsfs.cli modules imported by the time ``pfsfs ARGS`` finished."""
    code = (
        "import sys, atexit\n"
        "atexit.register(lambda: print('MODULES', *sorted(m for m in sys.modules "
        "if m.startswith('pfsfs.cli.')), file=sys.stderr))\n"
        "from pfsfs.cli.main import main\n"
        f"sys.argv = ['pfsfs', *{list(args)!r}]\n"
        "main()\n"
    )
    env = {**os.environ, "PFSFS_HOME": str(home)}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = [x for x in proc.stderr.decode().splitlines() if x.startswith("MODULES")]
    return set(line.split()[1:])


def test_a_command_imports_its_own_module_only(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    src = tmp_path / "f"
    src.write_bytes(b"x")
    run(home, "put", "data@master:/f", "-f", str(src))
    loaded = _modules_after(home, "get", "data@master:/f", "-o", str(tmp_path / "out"))
    assert (tmp_path / "out").read_bytes() == b"x"
    assert {m for m in loaded if m.endswith("_cmds")} == {"pfsfs.cli.data_cmds"}
    assert "pfsfs.cli.mount_cmds" in _modules_after(home, "mounts", "--help")  # no daemon


def test_help_lists_every_command_and_a_typo_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pfsfs.cli.main import _command_modules

    monkeypatch.setenv("COLUMNS", "200")  # one line per command
    out = run(tmp_path / "home", "--help").stdout.decode()
    listed = {line.split()[0] for line in out.split("Commands:")[1].splitlines() if line.strip()}
    assert set(_command_modules()) | {"init"} == listed
    proc = run(tmp_path / "home", "gett", check=False)
    assert proc.returncode == 2 and b"No such command 'gett'" in proc.stderr
