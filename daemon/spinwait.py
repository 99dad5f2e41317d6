"""How long the FUSE request loop polls for the next request before it goes to sleep.

A program working file after file (``cp -a``, ``tar x``, a create loop) sends its next request
a few tens of microseconds after our reply. If the loop is asleep by then, the kernel has to
wake it on the other CPU, and in a VM whose idle vCPUs halt at once (no guest halt polling:
``/sys/module/haltpoll/parameters/guest_halt_poll_ns`` is 0 on this machine kind) that wake-up
costs ~45 µs (a pipe ping-pong between two processes on two CPUs: 48 µs, on one CPU: 3.6 µs;
with halt polling at the kernel's default of 200 µs: 5.8 µs). Creating a file takes five
requests the program waits for (LOOKUP, CREATE, WRITE at close, GETATTR of the directory for
the permission check, GETATTR of the file for ``stat``), so it paid that five times:
create+write 1 KiB+stat ran at ~2,300 files/s. Polling for up to ``SpinWindow.MAX_NS`` before
sleeping, as the kernel's own halt polling does, keeps the loop awake for the next request:
~3,700 files/s (``scripts/bench_mount.py --worker-create-1k``, 5,000 files, fresh mounts,
interleaved). What is left is the program's own wake-up for each reply, which is not ours.

The window adapts like the kernel's haltpoll governor: it grows while requests come just
after it ends (a longer poll would have caught them) and shrinks while none comes within the
longest window (polling only burned CPU). It is off where polling would take the CPU the
program needs: fewer than two CPUs usable, or a cgroup CPU limit under two CPUs (a sidecar
with a CPU limit would spend its quota polling).
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

#: Below this many usable CPUs (affinity, cgroup quota) the loop never polls.
MIN_CPUS = 2


class SpinWindow:
    """The current polling window in nanoseconds, learnt from how soon requests come."""

    MAX_NS = 200_000  # the longest poll (the kernel's default guest halt polling)
    START_NS = 50_000  # the window's first size and the size it grows back from
    MIN_NS = START_NS // 2  # shrunk below this, the window is 0: no polling until it grows

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.ns = self.START_NS if enabled else 0

    def learn(self, waited_ns: int | None) -> None:
        """After a wait the window did not cover: the next request came ``waited_ns`` after
        the wait began (None: none came before the blocking wait gave up)."""
        if not self.enabled:
            return
        if waited_ns is not None and waited_ns <= self.MAX_NS:
            self.ns = min(self.MAX_NS, max(self.START_NS, self.ns * 2))
        else:
            self.ns //= 2
            if self.ns < self.MIN_NS:
                self.ns = 0

    def poll(self, poller: select.poll, start_ns: int) -> list[tuple[int, int]]:
        """Poll (without sleeping) until the window from ``start_ns`` has passed: the first
        events seen, or none. ``poll`` gives the GIL up on each call: other threads run
        meanwhile."""
        until = start_ns + self.ns
        while time.monotonic_ns() < until:
            events = poller.poll(0)
            if events:
                return events
        return []


def usable_cpus(
    cgroup_root: Path = Path("/sys/fs/cgroup"), membership: Path = Path("/proc/self/cgroup")
) -> float:
    """How many CPUs this process may use: its affinity, capped by the CPU quota (``cpu.max``)
    of its cgroup (v2, named in ``membership``) and of every cgroup above it."""
    cpus: float = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    try:
        lines = membership.read_text().splitlines()
    except OSError:
        return cpus
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return cpus
    group = cgroup_root / path.lstrip("/")
    while True:
        try:
            quota, period = (group / "cpu.max").read_text().split()[:2]
            if quota != "max":
                cpus = min(cpus, int(quota) / int(period))
        except (OSError, ValueError, ZeroDivisionError):
            pass  # no cpu controller here, or an odd file: no limit known at this level
        if group == cgroup_root or cgroup_root not in group.parents:
            return cpus
        group = group.parent


def spin_enabled() -> bool:
    """Whether the request loop may poll: only with ``MIN_CPUS`` usable, so the program it
    waits for keeps a CPU of its own."""
    return usable_cpus() >= MIN_CPUS
