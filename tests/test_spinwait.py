"""The request loop's polling window (``pfsfsd.spinwait``): how it learns, how long it polls,
and when it is off. What it buys is measured by ``scripts/bench_mount.py``, not here; every
mount test runs with it (on the 2 CPUs CI has)."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest
from pfsfsd.spinwait import SpinWindow, usable_cpus


def test_the_window_grows_while_requests_come_just_after_it() -> None:
    w = SpinWindow(enabled=True)
    assert w.ns == SpinWindow.START_NS
    w.learn(w.ns + 10_000)  # a longer poll would have caught it
    assert w.ns == 2 * SpinWindow.START_NS
    for _ in range(10):
        w.learn(SpinWindow.MAX_NS)
    assert w.ns == SpinWindow.MAX_NS  # never past the longest


def test_the_window_shrinks_to_nothing_when_requests_come_late_and_grows_back() -> None:
    w = SpinWindow(enabled=True)
    w.learn(None)  # none came within the blocking wait
    assert w.ns == SpinWindow.START_NS // 2
    w.learn(SpinWindow.MAX_NS + 1)  # came, but later than any poll would wait
    assert w.ns == 0  # below MIN_NS: off
    w.learn(30_000)  # a burst starts: the next came soon after the wait began
    assert w.ns == SpinWindow.START_NS


def test_a_disabled_window_never_polls() -> None:
    w = SpinWindow(enabled=False)
    assert w.ns == 0
    w.learn(1_000)
    assert w.ns == 0


def test_poll_returns_at_once_when_something_is_ready_else_after_the_window() -> None:
    r, wfd = os.pipe()
    try:
        poller = select.poll()
        poller.register(r, select.POLLIN)
        w = SpinWindow(enabled=True)
        w.ns = 20_000_000  # 20 ms: long enough to tell apart from "at once"
        start = time.monotonic_ns()
        assert w.poll(poller, start) == []  # nothing came: the whole window polled
        assert time.monotonic_ns() - start >= w.ns
        os.write(wfd, b"x")
        start = time.monotonic_ns()
        assert w.poll(poller, start) == [(r, select.POLLIN)]
        assert time.monotonic_ns() - start < w.ns
    finally:
        os.close(r)
        os.close(wfd)


def _cgroup(tmp_path: Path, limits: dict[str, str]) -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    for rel, text in limits.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(text + "\n")
    (root / "pod" / "ctr").mkdir(parents=True, exist_ok=True)
    membership = tmp_path / "self-cgroup"
    membership.write_text("0::/pod/ctr\n")
    return root, membership


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="needs sched_getaffinity")
def test_usable_cpus_is_capped_by_the_tightest_quota_above(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))
    root, membership = _cgroup(tmp_path, {"pod": "50000 100000", "pod/ctr": "max 100000"})
    assert usable_cpus(root, membership) == min(affinity, 0.5)  # the pod's limit: 500m
    root, membership = _cgroup(tmp_path / "b", {"pod/ctr": "max 100000"})
    assert usable_cpus(root, membership) == affinity  # no limit anywhere
    (tmp_path / "none").write_text("")
    assert usable_cpus(root, tmp_path / "none") == affinity  # cgroup v1 or none: affinity
