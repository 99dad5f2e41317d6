"""Pipelines through the real CLI: bad specs, the pipeline/job/datum/logs commands, the
scheduler in a subprocess (new commits trigger jobs, DAGs chain, SIGKILL mid-job), and the
lineage commands."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from pfsfs.pipeline.scheduler import scheduler_pid

from .cli import fails, run
from .pipeline_fixtures import ensure_bwrap, require_root


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    require_root()
    return ensure_bwrap()


@contextmanager
def scheduler(home: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``python -m pfsfs.pipeline.scheduler`` in the background; always stopped on exit."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PFSFS_HOME": str(home)}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pfsfs.pipeline.scheduler", "--home", str(home)]
            + ["--poll-interval", "0.1"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while scheduler_pid(home) is None:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "the scheduler did not start"
            time.sleep(0.05)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def out(proc: subprocess.CompletedProcess[bytes]) -> str:
    return proc.stdout.decode()


def as_json(home: Path, *args: str) -> Any:
    return json.loads(out(run(home, *args, "--json")))


def write_spec(path: Path, name: str, cmd: str, repo: str = "data", **extra: Any) -> str:
    d: dict[str, Any] = {
        "pipeline": {"name": name},
        "input": {"pfs": {"repo": repo, "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", cmd]},
        "runner": "local",
    }
    d.update(extra)
    path.write_text(json.dumps(d))
    return str(path)


def put_text(home: Path, ref: str, text: str) -> None:
    run(home, "put", ref, "-f", "-", input=text.encode())


def test_bad_specs_are_refused_with_the_field_named(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "repo", "create", "mine")
    good = {
        "pipeline": {"name": "p"},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["true"]},
        "runner": "local",
    }

    def refused(spec: Any, *, raw: str | None = None) -> str:
        path = tmp_path / "spec.json"
        path.write_text(raw if raw is not None else json.dumps(spec))
        return fails(home, "pipeline", "create", "-f", str(path))

    assert "bogus: unknown field" in refused({**good, "bogus": 1})
    assert "input.pfs.repo: required" in refused({**good, "input": {"pfs": {"glob": "/"}}})
    msg = refused({**good, "input": {"pfs": {"repo": "nope"}}})
    assert "input.pfs.repo" in msg and "does not exist" in msg
    assert "input.pfs.glob: bad glob" in refused(
        {**good, "input": {"pfs": {"repo": "data", "glob": "*"}}}
    )
    assert "already exists" in refused({**good, "pipeline": {"name": "mine"}})
    assert "not valid YAML" in refused(None, raw="pipeline: [unclosed")
    assert "cannot read spec" in fails(home, "pipeline", "create", "-f", str(tmp_path / "missing"))
    # A pipeline cannot take over a repo that another pipeline reads.
    run(home, "pipeline", "create", "-f", write_spec(tmp_path / "a.json", "a", "true"))
    msg = refused({**good, "pipeline": {"name": "data"}, "input": {"pfs": {"repo": "mine"}}})
    assert "pipeline.name" in msg and "already exists as an input of 'a'" in msg
    # Cycles: b reads a; a may not then read b.
    run(home, "pipeline", "create", "-f", write_spec(tmp_path / "b.json", "b", "true", repo="a"))
    msg = fails(
        home, "pipeline", "update", "-f", write_spec(tmp_path / "a2.json", "a", "true", repo="b")
    )
    assert "cycle" in msg and "input.pfs.repo" in msg
    assert "already exists" in fails(home, "pipeline", "create", "-f", str(tmp_path / "a.json"))
    assert "does not exist" in fails(home, "pipeline", "inspect", "zzz")
    assert "no job" in fails(home, "job", "inspect", "abcdef")


def test_pipeline_lifecycle_jobs_datums_and_logs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    put_text(home, "data@master:/a.txt", "alpha\n")
    put_text(home, "data@master:/b.txt", "beta\n")
    spec = write_spec(
        tmp_path / "copy.json", "copy", 'echo "copying $(ls /pfs/data)"; cp /pfs/data/* /pfs/out/'
    )
    created = run(home, "pipeline", "create", "-f", spec)
    assert "created pipeline copy" in out(created)
    assert b"nothing is processing" in created.stderr  # no scheduler: a hint
    listed = as_json(home, "pipeline", "list")
    assert listed[0]["name"] == "copy" and listed[0]["state"] == "running"
    # The output repo is read-only to people.
    assert "read-only" in fails(home, "put", "copy@master:/x", "-f", "-", input=b"x", code=8)

    ran = out(run(home, "pipeline", "run"))
    assert "job" in ran and "success (2 processed" in ran
    assert "up to date" in out(run(home, "pipeline", "run", "copy"))
    assert out(run(home, "cat", "copy@master:/b.txt")) == "beta\n"
    jobs = as_json(home, "job", "list", "--pipeline", "copy")
    assert len(jobs) == 1 and jobs[0]["state"] == "success"
    job_id = jobs[0]["id"]
    info = as_json(home, "job", "inspect", job_id[:10])
    assert info["counts"]["processed"] == 2 and info["output"]
    assert "inputs:" in out(run(home, "job", "inspect", job_id))
    datums = as_json(home, "datum", "list", job_id)
    assert sorted(d["desc"] for d in datums) == ["data:/a.txt", "data:/b.txt"]
    assert "processed" in out(run(home, "datum", "list", job_id))
    logs = out(run(home, "logs", job_id))
    assert "copying a.txt" in logs and "copying b.txt" in logs
    one = next(d for d in datums if d["desc"] == "data:/a.txt")
    logs = out(run(home, "logs", job_id, "--datum", one["id"][:8]))
    assert "copying a.txt" in logs and "copying b.txt" not in logs

    run(home, "pipeline", "stop", "copy")
    assert "is stopped" in fails(home, "pipeline", "run", "copy")
    run(home, "pipeline", "start", "copy")
    assert "unchanged" in out(run(home, "pipeline", "update", "-f", spec))
    assert "version 1" in out(run(home, "pipeline", "update", "-f", spec, "--reprocess"))
    assert "success (2 processed" in out(run(home, "pipeline", "run"))
    detail = as_json(home, "pipeline", "inspect", "copy")
    assert detail["jobs"] == 2 and detail["spec"]["runner"] == "local"
    assert "spec:" in out(run(home, "pipeline", "inspect", "copy"))

    # A pipeline whose output another reads cannot lose its repo; --keep-repo keeps it, and
    # creating the pipeline again adopts it (still read-only to people).
    down = write_spec(tmp_path / "down.json", "down", "cp /pfs/copy/* /pfs/out/", repo="copy")
    run(home, "pipeline", "create", "-f", down)
    assert "reads repo copy" in fails(home, "pipeline", "delete", "copy", "--force")
    run(home, "pipeline", "run", "down")
    run(home, "pipeline", "delete", "down", "--force", "--keep-repo")
    assert out(run(home, "cat", "down@master:/a.txt")) == "alpha\n"
    assert "read-only" in fails(home, "put", "down@master:/x", "-f", "-", input=b"x")
    run(home, "pipeline", "create", "-f", down)
    assert "up to date" not in out(run(home, "pipeline", "run", "down"))
    run(home, "pipeline", "delete", "down", "--force")

    # delete asks (no answer: aborted), --force deletes the pipeline and its output repo
    assert run(home, "pipeline", "delete", "copy", check=False).returncode != 0
    run(home, "pipeline", "delete", "copy", "--force")
    assert as_json(home, "pipeline", "list") == []
    assert [r["name"] for r in as_json(home, "repo", "list")] == ["data"]
    assert "no job" in fails(home, "logs", job_id)


def test_failed_job_exits_non_zero_and_keeps_the_branch(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    put_text(home, "data@master:/x", "1\n")
    spec = write_spec(tmp_path / "f.json", "fail", "echo bad input >&2; exit 4", datum_tries=2)
    run(home, "pipeline", "create", "-f", spec)
    proc = run(home, "pipeline", "run", check=False)
    assert proc.returncode != 0
    assert b"see `pfsfs logs" in proc.stderr and b"Traceback" not in proc.stderr
    assert as_json(home, "branch", "list", "fail") == {"master": None}
    job_id = as_json(home, "job", "list")[0]["id"]
    logs = out(run(home, "logs", job_id))
    assert logs.count("bad input") == 2 and "try-2 stderr" in logs
    assert as_json(home, "datum", "list", job_id)[0]["state"] == "failed"


def _wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_scheduler_killed_mid_job_reruns_it_without_partial_commits(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    for i in range(4):
        put_text(home, f"data@master:/f{i}", f"{i}\n")
    spec = write_spec(tmp_path / "slow.json", "slow", "sleep 1; cp /pfs/data/* /pfs/out/")
    run(home, "pipeline", "create", "-f", spec)
    with scheduler(home, tmp_path / "sched1.log") as proc:

        def progressed() -> bool:
            jobs = as_json(home, "job", "list")
            return bool(jobs) and jobs[0]["counts"].get("processed", 0) >= 1

        _wait_for(progressed)
        proc.kill()  # SIGKILL: no cleanup at all
        proc.wait()
    job = as_json(home, "job", "list")[0]
    assert job["state"] == "running"
    assert as_json(home, "branch", "list", "slow") == {"master": None}  # nothing partial
    with scheduler(home, tmp_path / "sched2.log"):
        outputs = out(run(home, "wait", "data@master", "--timeout", "60")).split()
    jobs = as_json(home, "job", "list")
    assert len(jobs) == 1 and jobs[0]["id"] == job["id"]
    assert jobs[0]["state"] == "success" and jobs[0]["restarts"] == 1
    assert outputs == [f"slow@{jobs[0]['output']}"]
    assert len(as_json(home, "log", "slow@master")) == 1
    datums = as_json(home, "datum", "list", job["id"])
    assert len(datums) == 4 and all(d["state"] == "processed" for d in datums)
    assert any(d["attempts"] == 0 for d in datums)  # finished before the kill: not run again
    assert out(run(home, "cat", "slow@master:/f3")) == "3\n"


def test_stop_and_update_kill_the_running_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    put_text(home, "data@master:/x", "1\n")
    spec = write_spec(tmp_path / "hang.json", "hang", "sleep 600")

    def states() -> list[str]:
        return [j["state"] for j in as_json(home, "job", "list", "--pipeline", "hang")]

    with scheduler(home, tmp_path / "sched.log"):
        run(home, "pipeline", "create", "-f", spec)
        _wait_for(lambda: states() == ["running"])
        run(home, "pipeline", "stop", "hang")
        _wait_for(lambda: states() == ["killed"], timeout=15)
        assert "stopped" in as_json(home, "job", "list")[0]["reason"]
        run(home, "pipeline", "start", "hang")  # a killed job does not count: runs again
        _wait_for(lambda: states() == ["running", "killed"])
        write_spec(tmp_path / "hang.json", "hang", "cp /pfs/data/* /pfs/out/")
        run(home, "pipeline", "update", "-f", spec)
        run(home, "wait", "data@master", "--timeout", "60")
        assert states() == ["success", "killed", "killed"]
        assert "updated to version 2" in as_json(home, "job", "list")[1]["reason"]
    assert out(run(home, "cat", "hang@master:/x")) == "1\n"
    assert len(as_json(home, "log", "hang@master")) == 1


def test_scheduler_chains_a_dag_and_lineage_commands(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    upper = write_spec(
        tmp_path / "upper.json",
        "upper",
        "for f in /pfs/data/*; do tr a-z A-Z < $f > /pfs/out/${f##*/}; done",
    )
    count = write_spec(
        tmp_path / "count.json", "count", "cat /pfs/upper/* | wc -l > /pfs/out/lines", repo="upper"
    )
    with scheduler(home, tmp_path / "sched.log"):
        run(home, "pipeline", "create", "-f", upper)
        created = run(home, "pipeline", "create", "-f", count)
        assert b"nothing is processing" not in created.stderr
        count_spec = json.loads(Path(count).read_text())
        count_spec["input"]["pfs"]["glob"] = "/"
        Path(count).write_text(json.dumps(count_spec))
        run(home, "pipeline", "update", "-f", count)
        put_text(home, "data@master:/a.txt", "one\ntwo\n")
        outputs = out(run(home, "wait", "data@master", "--timeout", "60")).split()
        assert [o.split("@")[0] for o in outputs] == ["upper", "count"]
        assert out(run(home, "cat", "count@master:/lines")).strip() == "2"
        put_text(home, "data@master:/b.txt", "three\n")  # triggers both, by itself
        outputs = out(run(home, "wait", "data@master", "--timeout", "60")).split()
        assert out(run(home, "cat", "count@master:/lines")).strip() == "3"
        assert out(run(home, "cat", "upper@master:/b.txt")) == "THREE\n"
        data_commit = as_json(home, "log", "data@master")[0]["id"]

        prov = out(run(home, "provenance", "count@master"))
        assert f"data@{data_commit}" in prov and "upper@" in prov
        edges = as_json(home, "provenance", "count@master")["edges"]
        assert {e["pipeline"] for e in edges} == {"upper", "count"}
        sub = out(run(home, "subvenance", "data@master"))
        assert outputs[0] in sub and outputs[1] in sub
        why = out(run(home, "why", "upper@master:/b.txt"))
        assert "/pfs/data/b.txt" in why and data_commit[:12] in why
        assert as_json(home, "why", "upper@master:/b.txt")["datums"][0]["state"] == "processed"
        assert "was not made by a pipeline" in fails(home, "why", "data@master:/a.txt")
        assert "does not exist" in fails(home, "why", "upper@master:/zzz")
        dot = out(run(home, "lineage", "count@master", "--dot"))
        assert dot.startswith("digraph") and "data (master)" in dot and "upper" in dot
        mermaid = out(run(home, "lineage", "data@master", "--mermaid"))
        assert mermaid.startswith("flowchart LR") and "count" in mermaid

        # A stopped pipeline: wait says so instead of blocking.
        run(home, "pipeline", "stop", "count")
        put_text(home, "data@master:/c.txt", "four\n")
        msg = fails(home, "wait", "data@master", "--timeout", "30")
        assert "pipeline count is stopped" in msg
        run(home, "pipeline", "start", "count")
        run(home, "wait", "data@master", "--timeout", "60")
        assert out(run(home, "cat", "count@master:/lines")).strip() == "4"
    jobs = as_json(home, "job", "list", "--pipeline", "count")
    assert all(j["state"] == "success" for j in jobs)


def test_wait_times_out_when_nothing_processes(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "pipeline", "create", "-f", write_spec(tmp_path / "p.json", "p", "true"))
    put_text(home, "data@master:/x", "1")
    proc = run(home, "wait", "data@master", "--timeout", "0.5", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.decode().strip().splitlines()
    assert "nothing is processing" in lines[0] and "timed out" in lines[-1]
