"""Pipelines that behave like Make across a DAG (issue 18): code inputs (`transform.code`),
commit sets (one id from the commit that starts a run to every job and output commit made from
it; downstream waits for a settled upstream) and the bad inputs around them. Real `pfsfs`
processes, a real scheduler, the local (bubblewrap) runner."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from .cli import fails, run
from .pipeline_fixtures import ROOT, ensure_bwrap, require_root
from .test_pipeline_cli import as_json, out, put_text, scheduler, write_spec

EXAMPLE = ROOT / "examples" / "image-quality"
STEPS = ["brightness", "contrast", "sharpness", "classify", "report"]
FEATURES = STEPS[:3]


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    require_root()
    return ensure_bwrap()


def jobs_by_pipeline(home: Path) -> dict[str, list[dict[str, Any]]]:
    jobs = as_json(home, "job", "list")
    by: dict[str, list[dict[str, Any]]] = {}
    for j in reversed(jobs):  # oldest first
        by.setdefault(j["pipeline"], []).append(j)
    return by


def image_quality(tmp_path: Path, home: Path) -> None:
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(EXAMPLE / "make_images.py"), str(images), "8"], check=True)
    run(home, "repo", "create", "images")
    run(home, "repo", "create", "code")
    for image in sorted(images.iterdir()):
        run(home, "put", "images@master:/", "-f", str(image))
    run(home, "put", "code@master", "-f", str(EXAMPLE / "scripts"), "-r")
    for step in STEPS:
        run(home, "pipeline", "create", "-f", str(EXAMPLE / f"{step}.yaml"))


def head(home: Path, ref: str) -> str:
    return as_json(home, "log", ref)[0]["id"]


def test_one_image_edit_runs_each_pipeline_once_in_one_commit_set(tmp_path: Path) -> None:
    home = tmp_path / "home"
    image_quality(tmp_path, home)
    with scheduler(home, tmp_path / "scheduler.log"):
        run(home, "wait", "images@master", "--timeout", "120")
        before = jobs_by_pipeline(home)
        assert {p: len(js) for p, js in before.items()} == {s: 1 for s in STEPS}, before

        subprocess.run([sys.executable, str(EXAMPLE / "make_images.py"), str(tmp_path / "n"), "1"])
        run(home, "put", "images@master:/img005.pgm", "-f", str(tmp_path / "n" / "img000.pgm"))
        origin = head(home, "images@master")
        printed = out(run(home, "wait", origin[:12], "--timeout", "120")).split()

    after = jobs_by_pipeline(home)
    new = {p: js[len(before[p]) :] for p, js in after.items()}
    assert {p: len(js) for p, js in new.items()} == {s: 1 for s in STEPS}, new
    for step in FEATURES + ["classify"]:
        assert new[step][0]["counts"]["processed"] == 1, (step, new[step][0]["counts"])
        assert new[step][0]["counts"]["skipped"] == 7, (step, new[step][0]["counts"])
    assert new["report"][0]["counts"]["processed"] == 1
    assert {js[0]["commitset"] for js in new.values()} == {origin}
    # wait ID printed each output commit once, and they carry the commit set id.
    assert sorted(printed) == sorted(f"{s}@{new[s][0]['output']}" for s in STEPS)
    for step in STEPS:
        prov = as_json(home, "inspect", "commit", f"{step}@master")["provenance"]
        assert prov["commitset"] == origin and prov["origins"]["images@master"] == origin
    cs = as_json(home, "inspect", "commitset", origin)
    assert cs["done"] and [j["pipeline"] for j in cs["jobs"]] == sorted(FEATURES) + STEPS[3:]
    assert {c["repo"] for c in cs["commits"]} == {"images", *STEPS}
    text = out(run(home, "inspect", "commitset", origin[:10]))
    assert f"origin  images@{origin} (master)" in text and "classify" in text
    assert "img005 good" in out(run(home, "cat", "report@master:/report.txt"))


def test_editing_one_script_reprocesses_only_its_pipelines(tmp_path: Path) -> None:
    home = tmp_path / "home"
    image_quality(tmp_path, home)
    run(home, "pipeline", "run")
    before = jobs_by_pipeline(home)
    report_before = out(run(home, "cat", "report@master:/report.txt"))

    # classify.py: same labels, one more line of code. Only classify (8 datums) and, as its
    # output commit is new, report (its one datum is skipped: same input files, same code).
    script = (EXAMPLE / "scripts" / "classify.py").read_text() + "\n# reviewed\n"
    put_text(home, "code@master:/scripts/classify.py", script)
    ran = out(run(home, "pipeline", "run"))
    for step in FEATURES:
        assert f"pipeline {step}: up to date" in ran, ran
    assert "classify: success (8 processed, 0 skipped" in ran, ran
    assert "report: success (0 processed, 1 skipped" in ran, ran
    after = jobs_by_pipeline(home)
    assert [len(after[s]) - len(before[s]) for s in STEPS] == [0, 0, 0, 1, 1]
    assert out(run(home, "cat", "report@master:/report.txt")) == report_before
    waited = out(run(home, "wait", "code@master", "--timeout", "30")).split()
    assert [w.split("@")[0] for w in waited] == ["classify", "report"]

    # pgm.py is code of the three feature pipelines: all their datums run again.
    pgm = (EXAMPLE / "scripts" / "pgm.py").read_text() + "\n# reviewed\n"
    put_text(home, "code@master:/scripts/pgm.py", pgm)
    ran = out(run(home, "pipeline", "run"))
    for step in FEATURES:
        assert f"{step}: success (8 processed, 0 skipped" in ran, ran
    assert "classify: success (0 processed, 8 skipped" in ran, ran

    # A cmd change reprocesses the whole pipeline even though no code file changed.
    spec = (
        (EXAMPLE / "report.yaml").read_text().replace("report.py /pfs/out", "report.py  /pfs/out")
    )
    (tmp_path / "report.yaml").write_text(spec)
    run(home, "pipeline", "update", "-f", str(tmp_path / "report.yaml"))
    assert "report: success (1 processed, 0 skipped" in out(run(home, "pipeline", "run", "report"))


def code_spec(path: Path, code: Any, name: str = "p") -> str:
    d = {
        "pipeline": {"name": name},
        "input": {
            "cross": [
                {"pfs": {"repo": "data", "glob": "/*"}},
                {"pfs": {"repo": "code", "glob": "/"}},
            ]
        },
        "transform": {"cmd": ["sh", "/pfs/code/run.sh"], "code": code},
        "runner": "local",
        "datum_tries": 1,
    }
    path.write_text(json.dumps(d))
    return str(path)


def test_a_code_path_that_does_not_exist_is_one_line_naming_the_field(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "code")
    put_text(home, "data@master:/a", "a\n")
    put_text(home, "code@master:/run.sh", "cp /pfs/data/* /pfs/out/\n")
    spec = code_spec(tmp_path / "s.json", ["/pfs/code/run.sh", "/pfs/code/lib.sh"])
    err = fails(home, "pipeline", "create", "-f", spec, code=2)
    code_head = head(home, "code@master")
    assert err == (
        "pfsfs: error: transform.code[1]: /pfs/code/lib.sh does not exist in "
        f"code@{code_head[:12]} (master)"
    )
    err = fails(home, "pipeline", "create", "-f", code_spec(tmp_path / "t.json", "/pfs/cod/x"))
    assert err.startswith("pfsfs: error: transform.code: /pfs/cod/x: /pfs/cod is not an input")
    assert "pipeline" not in out(run(home, "repo", "list"))

    # Declared when it existed, removed later: the job fails naming the field; no commit.
    put_text(home, "code@master:/lib.sh", "true\n")
    run(home, "pipeline", "create", "-f", spec)
    run(home, "pipeline", "run")
    first = head(home, "p@master")
    run(home, "rollback", "code@master", "--to", code_head)  # a new commit without lib.sh
    proc = run(home, "pipeline", "run", check=False)
    assert proc.returncode != 0
    assert "transform.code[1]: /pfs/code/lib.sh does not exist in code@" in out(proc)
    assert head(home, "p@master") == first


def test_burst_of_commits_downstream_runs_once_on_consistent_inputs(tmp_path: Path) -> None:
    """data -> slow, data -> fast, (slow, fast) -> both. Three commits in a burst: `both` must
    not run on fast's newer output with slow's older one."""
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    put_text(home, "data@master:/x", "0\n")
    slow = write_spec(tmp_path / "slow.json", "slow", "sleep 1.5; cp /pfs/data/* /pfs/out/")
    fast = write_spec(tmp_path / "fast.json", "fast", "cp /pfs/data/* /pfs/out/")
    both = {
        "pipeline": {"name": "both"},
        "input": {
            "cross": [
                {"pfs": {"repo": "slow", "glob": "/"}},
                {"pfs": {"repo": "fast", "glob": "/"}},
            ]
        },
        "transform": {"cmd": ["sh", "-c", "cat /pfs/slow/x /pfs/fast/x > /pfs/out/x"]},
        "runner": "local",
    }
    (tmp_path / "both.json").write_text(json.dumps(both))
    for spec in (slow, fast, str(tmp_path / "both.json")):
        run(home, "pipeline", "create", "-f", spec)
    with scheduler(home, tmp_path / "scheduler.log"):
        run(home, "wait", "data@master", "--timeout", "60")
        assert len(jobs_by_pipeline(home)["both"]) == 1
        for n in (1, 2, 3):
            put_text(home, "data@master:/x", f"{n}\n")
        last = head(home, "data@master")
        run(home, "wait", last, "--timeout", "60")
        time.sleep(1)  # nothing else may start
    jobs = jobs_by_pipeline(home)
    assert len(jobs["both"]) == 2, jobs["both"]
    assert len(jobs["slow"]) <= 3  # the first commit and the coalesced rest
    assert out(run(home, "cat", "both@master:/x")) == "3\n3\n"
    assert jobs["both"][-1]["origins"] == {"data@master": last}


def test_input_commit_deleted_mid_run_fails_without_commit(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    put_text(home, "data@master:/x", "0\n")
    first = head(home, "data@master")
    spec = write_spec(tmp_path / "s.json", "p", "sleep 2; cp /pfs/data/* /pfs/out/")
    run(home, "pipeline", "create", "-f", spec)
    run(home, "pipeline", "run")
    made = head(home, "p@master")
    put_text(home, "data@master:/x", "1\n")
    second = head(home, "data@master")
    with scheduler(home, tmp_path / "scheduler.log"):
        deadline = time.monotonic() + 30
        while (job := as_json(home, "job", "list")[0])["state"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        run(home, "rollback", "data@master", "--to", first, "--hard")
        deadline = time.monotonic() + 30
        while (job := as_json(home, "job", "inspect", job["id"]))["state"] == "running":
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert job["state"] == "failure"
    assert job["reason"] == (
        f"cannot commit the output: input commit data@{second[:12]} (master) was deleted "
        "while the job ran"
    )
    assert made in [c["id"] for c in as_json(home, "log", "p@master")]
    assert job["output"] is None and all(
        c["provenance"]["job"] != job["id"] for c in as_json(home, "log", "p@master")
    )


def test_a_cycle_through_commit_sets_is_one_line(tmp_path: Path) -> None:
    """a reads data, b reads a; b is deleted (its repo kept) and a updated to read b too: a's
    next input descends from a's own output."""
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    put_text(home, "data@master:/x", "0\n")
    run(
        home,
        "pipeline",
        "create",
        "-f",
        write_spec(tmp_path / "a.json", "a", "cp /pfs/data/x /pfs/out/"),
    )
    run(
        home,
        "pipeline",
        "create",
        "-f",
        write_spec(tmp_path / "b.json", "b", "cp /pfs/a/x /pfs/out/", repo="a"),
    )
    run(home, "pipeline", "run")
    run(home, "pipeline", "delete", "b", "--force", "--keep-repo")
    b_head = head(home, "b@master")
    looped = {
        "pipeline": {"name": "a"},
        "input": {"cross": [{"pfs": {"repo": "data", "glob": "/*"}}, {"pfs": {"repo": "b"}}]},
        "transform": {"cmd": ["sh", "-c", "cp /pfs/data/x /pfs/out/"]},
        "runner": "local",
    }
    (tmp_path / "a2.json").write_text(json.dumps(looped))
    before = head(home, "a@master")
    run(home, "pipeline", "update", "-f", str(tmp_path / "a2.json"))
    proc = run(home, "pipeline", "run", check=False)
    assert proc.returncode != 0
    assert (
        f"commit set cycle: input b@{b_head[:12]} of pipeline a was made from a's own output"
        in out(proc)
    )
    assert head(home, "a@master") == before


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("scripts/a.py", "transform.code: 'scripts/a.py' is not a path in an input"),
        (["/pfs/code/a.py", 3], "transform.code[1]: must be a string, not int"),
        (["/pfs/code/a.py", "/pfs/code/a.py/"], "transform.code[1]: '/pfs/code/a.py/' is listed"),
        ("/pfs/out/a.py", "transform.code: /pfs/out/a.py: /pfs/out is not an input"),
        (["image", "/pfs/code/a.py"], "transform.code: 'image' cannot be combined"),
        ("image", "transform.code: 'image' but the local runner has no transform.image"),
        ([], "transform.code: must be a path like /pfs/code/run.py"),
    ],
)
def test_bad_transform_code_names_the_field(code: Any, error: str) -> None:
    from pfsfs.errors import InvalidInput
    from pfsfs.pipeline.spec import parse_spec_dict

    raw = {
        "pipeline": {"name": "p"},
        "input": {"cross": [{"pfs": {"repo": "data"}}, {"pfs": {"repo": "code"}}]},
        "transform": {"cmd": ["true"], "code": code},
        "runner": "local",
    }
    with pytest.raises(InvalidInput) as exc:
        parse_spec_dict(raw)
    assert str(exc.value).startswith(error), str(exc.value)


def test_transform_code_errors_are_reported_with_the_other_field_errors(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    spec = tmp_path / "p.json"
    raw = {
        "pipeline": {"name": "p"},
        "input": {"cross": [{"pfs": {"repo": "data"}}, {"pfs": {"repo": "nope"}}]},
        "transform": {"cmd": ["true"], "code": ["/pfs/cod/x", "/pfs/out/y"]},
    }
    spec.write_text(json.dumps(raw))
    line = fails(home, "pipeline", "create", "-f", str(spec), code=2)
    assert line == (
        "pfsfs: error: 4 problems: input.cross[1].pfs.repo: repo 'nope' does not exist; "
        "transform.code[0]: /pfs/cod/x: /pfs/cod is not an input (inputs: data, nope); "
        "transform.code[1]: /pfs/out/y: /pfs/out is not an input (inputs: data, nope); "
        "transform.image: required by the podman runner"
    )
    assert "pipeline" not in out(run(home, "repo", "list"))
