"""Traced reads (issue 18): the input files a transform actually opened, per datum, recorded
by inotify watches on the materialised inputs; shown by `datum inspect`, `why`, and as warnings
in `job inspect` for an input the transform never read. Real runs: local (bubblewrap) and
podman runners."""

from __future__ import annotations

import json
import shutil
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


# --- opens outside /pfs (strace) ----------------------------------------------------------------

# A host file that exists (outside every system root and outside the sandbox), and a
# hard-coded path that exists nowhere.
HOST_FILE = "/var/lib/dpkg/status"
MISSING = "/data/pfsfs-trace-test/x.csv"
OUTSIDE_CMD = (
    "cat /pfs/data/*/in.txt > /pfs/out/$(ls /pfs/data); "
    f"cat {HOST_FILE} > /dev/null 2>&1; cat {MISSING} 2>/dev/null; "
    "cat relative.txt 2>/dev/null; true"
)
# Only system reads besides its inputs: python starting and importing modules.
CLEAN_PY = (
    "import json, csv, email.parser, glob, os\n"
    "for d in sorted(glob.glob('/pfs/data/*')):\n"
    "    name = os.path.basename(d)\n"
    "    with open(d + '/in.txt') as f, open('/pfs/out/' + name, 'w') as out:\n"
    "        out.write(json.dumps(f.read()))\n"
)


@pytest.fixture(scope="module")
def strace() -> str:
    path = shutil.which("strace")
    assert path is not None, "strace is not installed: scripts/setup.sh installs it"
    return path


def check_outside_warned(home: Path, runner: str, expected: list[str]) -> None:
    """Both datums' warnings name the paths outside /pfs; datum inspect lists them."""
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "success", job
    outside = [w for w in job["warnings"] if "outside /pfs" in w]
    assert len(outside) == 2, job["warnings"]  # one per datum (a and b)
    for w in outside:
        assert w.startswith("datum ") and " (data:/" in w and "opened outside /pfs: " in w, w
        named = w.split("opened outside /pfs: ", 1)[1].split(";", 1)[0].split(", ")
        assert sorted(named) == sorted(expected), w
    text = out(run(home, "job", "inspect", job["id"]))
    assert "warning: datum " in text and MISSING in text and HOST_FILE in text
    assert as_json(home, "job", "inspect", job["id"])["warnings"] == job["warnings"]
    datum = as_json(home, "datum", "list", job["id"])[0]
    assert datum["outside_trace"] == "ok", datum
    assert sorted(datum["outside"]) == sorted(expected)
    text = out(run(home, "datum", "inspect", job["id"], datum["id"][:10]))
    assert "opened outside /pfs (not declared inputs):" in text
    assert all(f"    {path}" in text for path in expected), text
    assert f"runner {runner}" not in text


def test_local_runner_warns_about_opens_outside_pfs(tmp_path: Path, strace: str) -> None:
    home = tmp_path / "home"
    setup(home)
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", OUTSIDE_CMD))
    run(home, "pipeline", "run")
    # relative.txt is relative to the working directory, /pfs/out: inside /pfs.
    check_outside_warned(home, "local", [HOST_FILE, MISSING])
    # The reads of /pfs are still traced as before.
    datum = as_json(home, "datum", "list", as_json(home, "job", "list")[0]["id"])[0]
    assert datum["read"] and datum["read"][0].startswith("/pfs/data/")


def test_python_importing_modules_is_not_outside(tmp_path: Path, strace: str) -> None:
    home = tmp_path / "home"
    setup(home)
    d = json.loads(Path(spec(tmp_path / "s.json", "")).read_text())
    d["transform"]["cmd"] = ["python3", "-c", CLEAN_PY]
    (tmp_path / "s.json").write_text(json.dumps(d))
    run(home, "pipeline", "create", "-f", str(tmp_path / "s.json"))
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "success", job
    assert not [w for w in job["warnings"] if "outside /pfs" in w], job["warnings"]
    for datum in as_json(home, "datum", "list", job["id"]):
        assert datum["outside_trace"] == "ok" and datum["outside"] == [], datum
    text = out(run(home, "datum", "inspect", job["id"], datum["id"][:10]))
    assert "outside /pfs: none opened" in text


def test_without_strace_the_job_says_outside_opens_are_not_traced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFSFS_STRACE", str(tmp_path / "no-such-strace"))
    home = tmp_path / "home"
    setup(home)
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", OUTSIDE_CMD))
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "success", job
    assert (
        "reads outside /pfs not traced for runner local (2 of 2 datums): strace is not "
        "installed (apt-get install strace)"
    ) in job["warnings"]
    assert not [w for w in job["warnings"] if "opened outside" in w]
    datum = as_json(home, "datum", "list", job["id"])[0]
    text = out(run(home, "datum", "inspect", job["id"], datum["id"][:10]))
    assert "outside /pfs: not traced: strace is not installed" in text


def test_podman_runner_warns_about_opens_outside_pfs(tmp_path: Path, strace: str) -> None:
    build_images("busybox")
    home = tmp_path / "home"
    setup(home)
    s = spec(tmp_path / "s.json", OUTSIDE_CMD, runner="podman")
    run(home, "pipeline", "create", "-f", s)
    run(home, "pipeline", "run")
    # The container's working directory is the image's, /: relative.txt is not there either.
    check_outside_warned(home, "podman", [HOST_FILE, MISSING, "/relative.txt"])


def test_podman_clean_transform_gets_no_outside_warning(tmp_path: Path, strace: str) -> None:
    build_images("busybox")
    home = tmp_path / "home"
    setup(home)
    cmd = "cat /pfs/data/*/in.txt /pfs/extra/notes/readme > /pfs/out/$(ls /pfs/data)"
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", cmd, runner="podman"))
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "success", job
    assert job["warnings"] == []
    datum = as_json(home, "datum", "list", job["id"])[0]
    assert datum["outside_trace"] == "ok" and datum["outside"] == []


def many(home: Path, n: int) -> None:
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "extra")
    put_text(home, "extra@master:/notes/readme", "x\n")
    for i in range(n):
        put_text(home, f"data@master:/d{i:02d}/in.txt", f"{i}\n")


def test_a_big_clean_job_traces_a_sample_outside_pfs(tmp_path: Path, strace: str) -> None:
    """20 datums: the first 8 traced, then 1 in 100 (none more here); job inspect says so."""
    home = tmp_path / "home"
    many(home, 20)
    cmd = "cat /pfs/data/*/in.txt /pfs/extra/notes/readme > /pfs/out/$(ls /pfs/data)"
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", cmd))
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "success" and job["warnings"] == [], job
    datums = as_json(home, "datum", "list", job["id"])
    assert sorted(d["outside_trace"] for d in datums) == ["off"] * 12 + ["ok"] * 8
    assert as_json(home, "job", "inspect", job["id"])["outside_traced"] == {
        "traced": 8,
        "run": 20,
    }
    text = out(run(home, "job", "inspect", job["id"]))
    assert "outside:   opens outside /pfs traced in 8 of 20 datums run" in text
    untraced = next(d for d in datums if d["outside_trace"] == "off")
    shown = out(run(home, "datum", "inspect", job["id"], untraced["id"][:10]))
    assert "outside /pfs: not traced for this datum (a job traces a sample" in shown


def test_once_a_datum_opened_outside_pfs_every_datum_is_traced(tmp_path: Path, strace: str) -> None:
    home = tmp_path / "home"
    many(home, 20)
    run(home, "pipeline", "create", "-f", spec(tmp_path / "s.json", OUTSIDE_CMD))
    run(home, "pipeline", "run")
    job = as_json(home, "job", "list")[0]
    datums = as_json(home, "datum", "list", job["id"])
    assert all(d["outside_trace"] == "ok" and d["outside"] for d in datums), datums
    outside = [w for w in job["warnings"] if "outside /pfs" in w]
    assert len(outside) == 6 and outside[-1] == "15 more datums opened paths outside /pfs"


def test_outside_paths_are_read_back_exactly_from_the_strace_log(tmp_path: Path) -> None:
    """A path with a quote, a space, a backslash and non-ASCII bytes, an open relative to a
    directory fd, and a call strace split in two lines (another process ran in between)."""
    from pfsfs.pipeline.trace import outside_opens

    log = tmp_path / "opens.strace"
    log.write_text(
        '7     openat(AT_FDCWD</pfs/out>, "/data/\\xc3\\xbc \\"q\\" \\\\.csv", O_RDONLY) = -1 '
        "ENOENT (No such file or directory)\n"
        '7     openat(AT_FDCWD</pfs/out>, "x.txt", O_RDONLY) = -1 ENOENT (No such file)\n'
        '8     openat(3</home/me>, "data.csv", O_RDONLY <unfinished ...>\n'
        '9     openat(AT_FDCWD</srv>, "../opt/y", O_RDONLY) = -1 ENOENT (No such file)\n'
        "8     <... openat resumed>) = -1 ENOENT (No such file or directory)\n"
        '8     open("/usr/lib/x.so.1", O_RDONLY) = -1 ENOENT (No such file or directory)\n'
        '8     open("/opt/lib/libz.so.1", O_RDONLY) = -1 ENOENT (No such file or directory)\n'
        '9     openat(AT_FDCWD</pfs/out>, "/home/me/ok.csv", O_RDONLY) = 3</home/me/ok.csv>\n'
    )
    paths, count = outside_opens(log, cwd="/pfs/out", sandboxed=True)
    assert paths == ['/data/ü "q" \\.csv', "/opt/y", "/home/me/data.csv"] and count == 3
    # Unsandboxed, a successful open counts too; host directories read as /pfs/<name>.
    paths, _ = outside_opens(log, cwd="/pfs/out", sandboxed=False, host_dirs={"/home": "/pfs/h"})
    assert paths == ['/data/ü "q" \\.csv', "/opt/y"]
