"""``pfsfs pipeline run`` while the daemon's scheduler is processing the same pipeline waits for
it and reports the job, instead of failing with exit 5 (what following the image-quality
README literally hit: `pipeline create` had started the daemon, which was already at work)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from .fusehelpers import Env, env, no_leftovers  # noqa: F401 - fixtures


def slow_spec(path: Path, cmd: str) -> str:
    spec = {
        "pipeline": {"name": "slow"},
        "input": {"pfs": {"repo": "data", "glob": "/*"}},
        "transform": {"cmd": ["sh", "-c", cmd]},
        "runner": "local",
        "datum_tries": 1,
    }
    path.write_text(json.dumps(spec))
    return str(path)


def wait_for_a_running_job(e: Env) -> str:
    deadline = time.monotonic() + 60
    while True:
        jobs = json.loads(e.out("job", "list", "--json"))
        if any(j["state"] == "running" for j in jobs):
            return jobs[0]["id"]
        assert time.monotonic() < deadline, f"the daemon started no job: {jobs}"
        time.sleep(0.1)


def test_pipeline_run_waits_for_the_daemons_job_and_reports_it(env: Env) -> None:  # noqa: F811
    env.run("repo", "create", "data")
    env.run("put", "data@master:/x", "-f", "-", input=b"x\n")
    env.run(
        "pipeline",
        "create",
        "-f",
        slow_spec(env.root / "s.json", "sleep 3; cp /pfs/data/x /pfs/out/"),
    )
    job_id = wait_for_a_running_job(env)
    proc = env.run("pipeline", "run")
    assert "being processed by the scheduler" in proc.stderr and "waiting" in proc.stderr
    assert f"job {job_id} of slow: success" in proc.stdout, proc.stdout
    assert env.cat("slow@master:/x") == b"x\n"  # done when `pipeline run` returns
    assert "slow: up to date" in env.run("pipeline", "run").stdout


def test_pipeline_run_fails_when_the_job_it_waited_for_failed(env: Env) -> None:  # noqa: F811
    env.run("repo", "create", "data")
    env.run("put", "data@master:/x", "-f", "-", input=b"x\n")
    env.run("pipeline", "create", "-f", slow_spec(env.root / "s.json", "sleep 3; exit 1"))
    job_id = wait_for_a_running_job(env)
    err = env.fails("pipeline", "run")
    assert err.splitlines()[-1] == (
        f"pfsfs: error: job {job_id} of pipeline slow failure; see `pfsfs logs {job_id}`"
    )
