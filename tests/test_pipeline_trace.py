"""Traced reads (issue 18): the input files a transform actually opened, per datum, recorded
by inotify watches on the materialised inputs; shown by `datum inspect`, `why`, and as warnings
in `job inspect` for an input the transform never read. Real runs: local (bubblewrap) and
podman runners."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .cli import run
from .pipeline_fixtures import build_images, ensure_bwrap, require_root
from .test_pipeline_cli import as_json, out, put_text


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    require_root()
    return ensure_bwrap()


def spec(path: Path, cmd: str, runner: str = "local") -> str:
    d = {
        "pipeline": {"name": "p"},
        "input": {
            "cross": [
                {"pfs": {"repo": "data", "glob": "/*"}},
                {"pfs": {"repo": "extra", "glob": "/"}},
            ]
        },
        "transform": {"cmd": ["sh", "-c", cmd]},
        "runner": runner,
    }
    if runner == "podman":
        d["transform"]["image"] = "pfsfs/busybox"
    path.write_text(json.dumps(d))
    return str(path)


def setup(home: Path) -> None:
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "extra")
    for name in ("a", "b"):
        put_text(home, f"data@master:/{name}/in.txt", f"{name}\n")
        put_text(home, f"data@master:/{name}/unused.txt", "unused\n")
    put_text(home, "extra@master:/notes/readme", "never read\n")


# Reads in.txt of its datum (cat), lists the directory (ls: an open of the directory, not of
# a file), stats unused.txt (no open) and never touches /pfs/extra.
CMD = (
    "for d in /pfs/data/*; do ls $d >/dev/null; test -e $d/unused.txt; cat $d/in.txt; done"
    " > /pfs/out/$(ls /pfs/data)"
)


def check_traced(home: Path) -> None:
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "success", job
    assert job["warnings"] == [
        "input extra: the transform read none of its files in 2 traced datums (2 offered); "
        "is it needed?"
    ]
    text = out(run(home, "job", "inspect", job["id"]))
    assert "warning: input extra: the transform read none of its files" in text
    datums = as_json(home, "datum", "list", job["id"])
    by_desc = {d["desc"].split()[0]: d for d in datums}
    a = by_desc["data:/a"]
    assert a["trace"] == "ok" and a["read"] == ["/pfs/data/a/in.txt"]
    shown = out(run(home, "datum", "inspect", job["id"], a["id"][:10]))
    assert "  * /pfs/data/a/in.txt" in shown
    assert "    /pfs/data/a/unused.txt" in shown and "    /pfs/extra/notes/readme" in shown
    assert "wrote:\n    /pfs/out/a" in shown
    why = out(run(home, "why", "p@master:/b"))
    assert "read (traced):" in why and "/pfs/data/b/in.txt  <-  data@" in why
    assert "unused.txt" not in why and "/pfs/extra/notes/readme" not in why
    assert "offered but not read: 2 file(s)" in why


def test_local_runner_records_what_the_transform_read(tmp_path: Path) -> None:
    home = tmp_path / "home"
    setup(home)
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", CMD))
    run(home, "pipeline", "run")
    check_traced(home)
    # A reused datum keeps the trace of the run that made its output.
    put_text(home, "data@master:/c/in.txt", "c\n")
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    datums = {d["desc"].split()[0]: d for d in as_json(home, "datum", "list", job["id"])}
    assert datums["data:/a"]["state"] == "skipped"
    assert datums["data:/a"]["read"] == ["/pfs/data/a/in.txt"]
    assert datums["data:/c"]["read"] == ["/pfs/data/c/in.txt"]
    assert job["warnings"][0].startswith("input extra: the transform read none of its files in 1")


def test_reading_every_input_gives_no_warning(tmp_path: Path) -> None:
    home = tmp_path / "home"
    setup(home)
    cmd = "cat /pfs/extra/notes/readme /pfs/data/*/in.txt > /pfs/out/$(ls /pfs/data)"
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", cmd))
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    assert job["warnings"] == []
    datum = as_json(home, "datum", "list", job["id"])[0]
    assert "/pfs/extra/notes/readme" in datum["read"]


def test_podman_runner_records_what_the_transform_read(tmp_path: Path) -> None:
    build_images("busybox")
    home = tmp_path / "home"
    setup(home)
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", CMD, runner="podman"))
    run(home, "pipeline", "run")
    check_traced(home)
