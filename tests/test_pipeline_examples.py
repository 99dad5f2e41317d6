"""The shipped examples, run for real: the fruit stand (local runner with a scheduler in the
background, and podman), and the image-quality DAG compared with `make -j2` on a directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .cli import run
from .pipeline_fixtures import ROOT, build_images, ensure_bwrap, require_root
from .test_pipeline_cli import as_json, out, scheduler

FRUIT = ROOT / "examples" / "fruit-stand"
IMAGES = ROOT / "examples" / "image-quality"


@pytest.fixture(scope="module", autouse=True)
def bwrap() -> str:
    require_root()
    return ensure_bwrap()


def totals(home: Path) -> dict[str, int]:
    names = out(run(home, "ls", "sum@master")).split()
    return {n: int(out(run(home, "cat", f"sum@master:/{n}"))) for n in names}


def test_fruit_stand_updates_by_itself(tmp_path: Path) -> None:
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/sales", "-f", str(FRUIT / "sales"))
    with scheduler(home, tmp_path / "scheduler.log"):
        run(home, "pipeline", "create", "-f", str(FRUIT / "sum.yaml"))
        first = out(run(home, "wait", "data@master", "--timeout", "60")).split()
        assert totals(home) == {"apple": 5, "banana": 7, "orange": 5}
        run(home, "put", "data@master:/sales2", "-f", str(FRUIT / "sales2"))
        second = out(run(home, "wait", "data@master", "--timeout", "60")).split()
        assert second != first
        assert totals(home) == {"apple": 15, "banana": 7, "kiwi": 1, "orange": 10}
        run(home, "get", "sum@master:/apple", "-o", str(tmp_path / "apple"))
        assert (tmp_path / "apple").read_text() == "15\n"
    jobs = as_json(home, "job", "list", "--pipeline", "sum")
    assert [j["state"] for j in jobs] == ["success", "success"]
    data_head = as_json(home, "log", "data@master")[0]["id"]
    assert f"data@{data_head}" in out(run(home, "provenance", "sum@master"))
    assert "/pfs/data/sales2" in out(run(home, "why", "sum@master:/kiwi"))


def test_fruit_stand_in_podman(tmp_path: Path) -> None:
    build_images("busybox")
    home = tmp_path / "home"
    run(home, "repo", "create", "data")
    run(home, "put", "data@master:/sales", "-f", str(FRUIT / "sales"))
    run(home, "put", "data@master:/sales2", "-f", str(FRUIT / "sales2"))
    run(home, "pipeline", "create", "-f", str(FRUIT / "sum-podman.yaml"))
    assert "success" in out(run(home, "pipeline", "run"))
    assert totals(home) == {"apple": 15, "banana": 7, "kiwi": 1, "orange": 10}
    prov = as_json(home, "inspect", "commit", "sum@master")["provenance"]
    assert prov["pipeline"] == "sum" and prov["inputs"][0]["repo"] == "data"


def test_image_quality_dag_matches_make(tmp_path: Path) -> None:
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    images = tmp_path / "images"
    subprocess.run([sys.executable, str(IMAGES / "make_images.py"), str(images), "8"], check=True)
    home = tmp_path / "home"
    run(home, "repo", "create", "images")
    run(home, "repo", "create", "code")
    for image in sorted(images.iterdir()):
        run(home, "put", "images@master:/", "-f", str(image))
    run(home, "put", "code@master", "-f", str(IMAGES / "scripts"), "-r")
    steps = ["brightness", "contrast", "sharpness", "classify", "report"]
    for step in steps:
        run(home, "pipeline", "create", "-f", str(IMAGES / f"{step}.yaml"))
    ran = out(run(home, "pipeline", "run"))
    assert [line.split()[3] for line in ran.splitlines()] == [f"{s}:" for s in steps]

    made = tmp_path / "made"
    env = {**os.environ, "PYTHON": sys.executable}
    subprocess.run(
        ["make", "-s", "-j2", "-f", str(IMAGES / "Makefile"), f"IMAGES={images}", f"OUT={made}"],
        check=True,
        cwd=tmp_path,
        env=env,
    )
    for step in steps:
        got = tmp_path / "got" / step
        run(home, "get", f"{step}@master:/", "-o", str(got))
        theirs = {p.name: p.read_text() for p in (made / step).iterdir()}
        ours = {p.name: p.read_text() for p in got.iterdir()}
        assert ours == theirs, step
    report = (made / "report" / "report.txt").read_text()
    assert "blurry: 2" in report and "good: 2" in report
    again = subprocess.run(
        ["make", "-f", str(IMAGES / "Makefile"), f"IMAGES={images}", f"OUT={made}"],
        check=True,
        cwd=tmp_path,
        env=env,
        capture_output=True,
    )
    assert b"Nothing to be done" in again.stdout

    # Changing one image reprocesses exactly that image's datums downstream.
    subprocess.run([sys.executable, str(IMAGES / "make_images.py"), str(tmp_path / "new"), "1"])
    run(home, "put", "images@master:/img005.pgm", "-f", str(tmp_path / "new" / "img000.pgm"))
    ran = out(run(home, "pipeline", "run"))
    assert "brightness: success (1 processed, 7 skipped" in ran
    assert "classify: success (1 processed, 7 skipped" in ran
    assert "img005 good" in out(run(home, "cat", "report@master:/report.txt"))
    why = out(run(home, "why", "classify@master:/img005.txt"))
    assert "/pfs/brightness/img005.txt" in why and "/pfs/sharpness/img005.txt" in why
