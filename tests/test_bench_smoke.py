"""Smoke tests of issue 19's benchmarks at tiny sizes: ``bench_speed.py`` and ``bench_s3.py``
run, print every row with figures (no row failed) and write the JSON that ``bench.sh`` reads,
and ``bench_summary.py`` makes one table of them and of ``bench_mount.py``'s output. No figure
is checked against a target: timing asserts never go into tests."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .s3server import moto_server_binary

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"


def run(*args: str | Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def measured(doc: dict[str, object]) -> dict[str, dict[str, object]]:
    rows = {str(r["name"]): r for r in doc["rows"]}  # type: ignore[attr-defined]
    failed = {name: r["error"] for name, r in rows.items() if "error" in r}
    assert not failed, failed
    for row in rows.values():
        assert float(row["median"]) > 0 and row["min"] <= row["median"] <= row["max"], row
    return rows


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="the disk-write reference needs /dev/shm")
def test_bench_speed_tiny(tmp_path: Path) -> None:
    out = tmp_path / "speed.json"
    work = tmp_path / "work"
    work.mkdir()
    args = ("--size-mib", "8", "--files", "4", "--small-files", "50", "--runs", "2")
    proc = run(SCRIPTS / "bench_speed.py", *args, "--dir", work, "--json", out)
    table = proc.stdout
    labels = ("cp -a", "dd, fsync", "cold read + disk write", "re-put", "get 8 MiB", "cat one")
    for label in labels:
        assert label in table, table
    assert "failed" not in table, table
    rows = measured(json.loads(out.read_text()))
    assert rows["get"]["runs"] == 2
    assert set(rows["get"]["ratios"]) == {"ref-write", "ref-rw", "ref-cp"}  # type: ignore[arg-type]
    assert set(rows["get-file"]["ratios"]) == {"ref-write", "ref-rw"}  # type: ignore[arg-type]
    assert set(rows["cat"]["ratios"]) == {"ref-read"}  # type: ignore[arg-type]
    for name, (lo, hi) in rows["get"]["ratio_range"].items():  # type: ignore[attr-defined]
        assert 0 < lo <= rows["get"]["ratios"][name] <= hi  # type: ignore[index]
    assert rows["put"]["met"] in (True, False)
    assert list(work.iterdir()) == [], "the benchmark left files behind"


def test_bench_speed_pairs_each_run_with_its_own_reference() -> None:
    """A disk that drifts between runs moves a row and its reference alike: each run's
    ratio is taken against the reference measured in the same run, not the medians."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_speed as bs
    finally:
        sys.path.remove(str(SCRIPTS))
    ref = bs.Row("ref-write", "ref", lambda b: bs.Sample(0.0))
    get = bs.Row("get", "get", lambda b: bs.Sample(0.0), reference="ref-write")
    ref.samples = [bs.Sample(1.0, 400e6), bs.Sample(1.0, 1300e6), bs.Sample(2.0, 1000e6)]
    get.samples = [bs.Sample(1.0, 380e6), bs.Sample(1.0, 780e6), bs.Sample(1.0, 450e6)]
    ratios = bs.run_ratios(get, {"ref-write": ref})["ref-write"]
    assert [round(r, 6) for r in ratios] == [0.95, 0.6, 0.9]  # run 1 with run 1, ...
    get.samples = get.samples[:2]  # a row that failed in run 3: two pairs
    ref.error, get.also = "", ("missing",)
    assert list(bs.run_ratios(get, {"ref-write": ref})) == ["ref-write"]
    assert len(bs.run_ratios(get, {"ref-write": ref})["ref-write"]) == 2


@pytest.mark.skipif(moto_server_binary() is None, reason="needs moto_server")
def test_bench_s3_tiny_and_the_summary(tmp_path: Path) -> None:
    s3 = tmp_path / "s3.json"
    proc = run(
        SCRIPTS / "bench_s3.py",
        "--quick",
        "--runs",
        "2",
        "--size-mib",
        "16",
        "--files",
        "200",
        "--json",
        s3,
    )
    assert "pfsfs put (CLI, 1 file)" in proc.stdout, proc.stdout
    rows = measured(json.loads(s3.read_text()))
    assert rows["put"]["runs"] == 2 and rows["put"]["reference"] == "raw-put"
    assert 0 < float(rows["put"]["ratio_median"])  # type: ignore[arg-type]
    assert rows["tree-requests"]["median"] <= 100
    mount_ok = os.geteuid() == 0 and os.path.exists("/dev/fuse") and shutil.which("fusermount3")
    if mount_ok:
        assert rows["mount-read"]["runs"] == 2 and "ratio_median" in rows["mount-read"]
        bench_mount = run(
            SCRIPTS / "bench_mount.py", "--quick", "--only", "reference-write", "--base", tmp_path
        )
        (tmp_path / "mount.txt").write_text(bench_mount.stdout)
    summary = run(SCRIPTS / "bench_summary.py", tmp_path, "--load-before", "1.5").stdout
    lines = summary.splitlines()
    assert lines[0].split()[:3] == ["section", "workload", "min"], summary
    assert any("pfsfs put (CLI, 1 file)" in line and "of raw-put" in line for line in lines)
    assert any(line.startswith("speed") and "not run" in line for line in lines), summary
    if mount_ok:
        assert any(line.startswith("mount") and "seq write" in line for line in lines), summary
    assert "load average (1 min) 1.50 at the start" in summary


MOUNT_TABLES = """\
base /dev/shm (tmpfs); throughputs: best of 3, interleaved
operation                                      tmpfs        reference            pfsfs  pfsfs/ref  target         result
-----------------------------------  ---------------  ---------------  ---------------  ---------  -------------  ------
seq write 1 GiB, bs=1M                    2,308 MB/s       1,162 MB/s       1,161 MB/s       1.00  >= 50% of ref  met

physical references: pfsfs home and disk directories in /var/tmp (ext4); median [min-max] of 3 interleaved run(s)
operation                                 pfsfs (median [min-max])  reference                             reference value  pfsfs/ref  target            result
-------------------------------------  ---------------------------  ------------------  ---------------------------------  ---------  ----------------  ------
create+write 1 KiB+stat, 10,000 files  3,600 files/s [3,500-3,700]  ext4                   11,187 files/s [10,430-27,041]       0.32  >= 5,000 files/s  MISSED
unmount right after cp -a 1 GiB                 0.27 s [0.26-1.12]  -                                                   -          -  <= 2 s            met
"""  # noqa: E501 - bench_mount.py's tables as it prints them


def test_bench_summary_shows_both_mount_tables(tmp_path: Path) -> None:
    """The physical table (issue 19's create, cold read and unmount rows against the disk)
    comes after the reference-filesystem table: the summary shows the rows of both."""
    (tmp_path / "mount.txt").write_text(MOUNT_TABLES)
    lines = run(SCRIPTS / "bench_summary.py", tmp_path).stdout.splitlines()
    seq = [line for line in lines if "seq write 1 GiB, bs=1M" in line]
    assert seq and seq[0].startswith("mount (best of 3)") and "1,161 MB/s" in seq[0], lines
    create = [line for line in lines if "create+write 1 KiB+stat" in line]
    assert create and create[0].startswith("mount, disk (3 runs)"), lines
    assert "3,600 files/s [3,500-3,700]" in create[0] and "0.32 of ext4" in create[0]
    assert create[0].rstrip().endswith(">= 5,000 files/s MISSED"), create
    unmount = [line for line in lines if "unmount right after" in line]
    assert unmount and unmount[0].rstrip().endswith("<= 2 s met"), unmount


def test_bench_machine_notes_round_trips_and_reports_the_steal(tmp_path: Path) -> None:
    """``--start`` measures the wake-up round trips and notes the CPU counters; ``--report``
    says them with the share of CPU the host took since, and the create bound they imply."""
    facts = tmp_path / "machine.json"
    run(SCRIPTS / "bench_machine.py", "--start", facts)
    noted = json.loads(facts.read_text())
    if len(os.sched_getaffinity(0)) >= 2:
        assert 0 < noted["round_trip_two_cpus_us"]
        assert noted["wake_after_work_us"] is not None  # the round trip less the 50 us worked
    assert 0 < noted["round_trip_one_cpu_us"] and noted["ticks"] > 0
    text = run(SCRIPTS / "bench_machine.py", "--report", facts).stdout
    assert text.startswith("machine: a pipe round trip between two processes takes"), text
    assert "% of the CPU time during the run (steal)" in text, text


def test_bench_machine_report_says_what_bounds_a_create(tmp_path: Path) -> None:
    facts = tmp_path / "machine.json"
    facts.write_text(
        json.dumps(
            {
                "round_trip_two_cpus_us": 83.0,
                "round_trip_one_cpu_us": 9.3,
                "wake_after_work_us": 30.0,
                "guest_halt_poll_ns": 0,
                "cpuidle_governor": "haltpoll",
            }
        )
    )
    text = run(SCRIPTS / "bench_machine.py", "--report", facts).stdout
    assert "takes 83 us across two CPUs, 9.3 us on one" in text, text
    assert "guest halt polling off (cpuidle governor haltpoll)" in text, text
    assert "loses 30 us a round trip to sleeping and waking up" in text, text
    assert "~150 us a file, ~2,500 files/s if each request takes 50 us of work." in text, text
    assert "steal" not in text  # no counters noted: no share to tell


def test_bench_machine_report_without_facts_is_one_line(tmp_path: Path) -> None:
    proc = run(SCRIPTS / "bench_machine.py", "--report", tmp_path / "missing.json")
    assert proc.stdout.startswith("machine: no facts noted (") and proc.stdout.count("\n") == 1


def test_bench_machine_bad_input_is_one_line(tmp_path: Path) -> None:
    """Facts that are not an object, or a fact of the wrong type: one line, no traceback; a
    facts file that cannot be written: one line on stderr, exit 1."""
    facts = tmp_path / "machine.json"
    for bad in ("[1]", '{"round_trip_two_cpus_us": "x", "round_trip_one_cpu_us": 1}'):
        facts.write_text(bad)
        proc = run(SCRIPTS / "bench_machine.py", "--report", facts)
        assert proc.stdout.startswith("machine: no facts noted (") and proc.stdout.count("\n") == 1
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_machine.py"), "--start", tmp_path / "no" / "f"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("bench_machine: cannot write ") and proc.stderr.count("\n") == 1


def test_bench_machine_round_trip_to_a_cpu_it_may_not_use_is_none() -> None:
    """The echo child cannot run on the CPU asked for: no figure, and no hang."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        import bench_machine
    finally:
        sys.path.remove(str(SCRIPTS))
    cpu = min(os.sched_getaffinity(0))
    assert bench_machine.round_trip_us((cpu, 4095), count=10) is None
    assert bench_machine.round_trip_us((cpu, cpu), count=10) is not None
