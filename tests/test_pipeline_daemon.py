"""Pipelines hosted by the mount daemon, and the same scripts run by `make -j2` on mounts.

The daemon keeps the pipeline scheduler running: a `put` to an input branch starts a job with
nobody calling `pfsfs pipeline run`. The image-quality example's Makefile, run on a mount of the
`images` repo with its outputs in a read-write mount, gives exactly the pipelines' files, and a
second `make` after unmount + remount does nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .fusehelpers import Env, env, no_leftovers  # noqa: F401 - fixtures
from .mountmodel import Tree, check_commit

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
FRUIT = EXAMPLES / "fruit-stand"
IMAGES = EXAMPLES / "image-quality"


def totals(e: Env) -> dict[str, int]:
    listing = json.loads(e.out("ls", "sum@master", "--json"))
    return {
        item["path"].lstrip("/"): int(e.cat(f"sum@master:{item['path']}").decode().strip())
        for item in listing
    }


def test_daemon_runs_pipelines_by_itself(env: Env) -> None:  # noqa: F811
    env.run("repo", "create", "data")
    env.run("put", "data@master:/sales", "-f", str(FRUIT / "sales"))
    env.run("pipeline", "create", "-f", str(FRUIT / "sum.yaml"))
    env.run("wait", "data@master", "--timeout", "120")
    assert totals(env) == {"orange": 5, "apple": 5, "banana": 7}
    # A second file: the daemon's scheduler notices the new commit and re-sums by itself.
    env.run("put", "data@master:/sales2", "-f", str(FRUIT / "sales2"))
    env.run("wait", "data@master", "--timeout", "120")
    assert totals(env) == {"apple": 15, "banana": 7, "kiwi": 1, "orange": 10}
    prov = json.loads(env.out("inspect", "commit", "sum@master", "--json"))["provenance"]
    assert prov["inputs"][0]["commit"] == env.head("data@master") or prov["inputs"][0][
        "commit"
    ].startswith(env.head("data@master"))
    # Output repos are read-only to people, through mounts too.
    proc = env.run("mount", "sum@master", str(env.mkdir("out")), check=False)
    assert proc.returncode != 0 and "read-only" in proc.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_on_mounts_matches_the_pipelines(env: Env) -> None:  # noqa: F811
    images = env.root / "images-src"
    subprocess.run([sys.executable, str(IMAGES / "make_images.py"), str(images), "6"], check=True)
    env.run("repo", "create", "images")
    env.run("repo", "create", "code")
    env.run("repo", "create", "scratch")
    for image in sorted(images.iterdir()):
        env.run("put", "images@master:/", "-f", str(image))
    env.run("put", "code@master", "-f", str(IMAGES / "scripts"), "-r")
    steps = ["brightness", "contrast", "sharpness", "classify", "report"]
    for step in steps:
        env.run("pipeline", "create", "-f", str(IMAGES / f"{step}.yaml"))
    make_env = {**os.environ, "PYTHON": sys.executable}

    def make(img: Path, out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["make", "-j2", "-f", str(IMAGES / "Makefile"), f"IMAGES={img}", f"OUT={out}"],
            check=True,
            cwd=env.root,
            env=make_env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    with env.mounted("images@master", "img", "--read-only") as img:
        with env.mounted("scratch@master", "scratch") as scratch:
            make(img, scratch / "out")
            made = {
                step: {p.name: p.read_text() for p in (scratch / "out" / step).iterdir()}
                for step in steps
            }
            view = Tree(scratch)
        # Unmounted (committed); mount both again: a second make has nothing to do.
        with env.mounted("scratch@master", "scratch") as scratch:
            again = make(img, scratch / "out")
            assert "Nothing to be done" in again.stdout, again.stdout
    # the commit is what make wrote, mtimes in ns included
    check_commit(env, view, "scratch@master")
    env.run("wait", "images@master", "--timeout", "300")
    for step in steps:
        got = env.root / "got" / step
        env.run("get", f"{step}@master:/", "-o", str(got))
        assert {p.name: p.read_text() for p in got.iterdir()} == made[step], step
