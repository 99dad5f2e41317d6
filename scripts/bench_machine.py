#!/usr/bin/env python3
"""The machine facts that bound issue 19's figures, measured where the benchmarks run.

A create in a mount is five FUSE requests the program waits for (LOOKUP, CREATE, the WRITE at
close, the GETATTR of the directory for the permission check, the GETATTR of ``stat``), each a
round trip between the program and the daemon. In a VM without guest halt polling
(``/sys/module/haltpoll/parameters/guest_halt_poll_ns`` 0) an idle vCPU halts, and waking it
goes through the host: the longer it was halted, the longer it takes. The mount's request loop
polls for a while after each reply (``pfsfsd.spinwait``), so its side is awake when the next
request comes; the program's side still sleeps while the daemon works. On a 2-CPU firecracker
VM a pipe round trip between two processes took 75-94 us across the CPUs, 7-10 us on one;
with the other side polling and working 50 us before it answered, the waiting side lost
30-60 us a round trip to sleeping and waking up (60-250 us in a busier hour) and 23-34 us
when a process at ``SCHED_IDLE`` kept its CPU from halting. Five of those a file are most of
a create's ~0.5 ms there (2,000 files/s). CPU time the host takes (``steal`` in
``/proc/stat``) slows every row, unevenly.

``--start FILE`` measures the round trips and notes the CPU counters in FILE (JSON);
``--report FILE`` prints what FILE holds and the CPU stolen since it was written, as one
paragraph (``bench.sh`` calls it after the summary). Without options: both at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROUND_TRIPS = 5000
ECHO_WORK_US = 50  # about what the daemon spends on a create's request before it answers
HALT_POLL = Path("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
GOVERNOR = Path("/sys/devices/system/cpu/cpuidle/current_governor")


def cpu_ticks() -> tuple[int, int]:
    """(all ticks, steal ticks) of the ``cpu`` line of ``/proc/stat`` (0, 0 elsewhere)."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return 0, 0
    if not fields or fields[0] != "cpu":
        return 0, 0
    ticks = [int(x) for x in fields[1:]]
    # guest and guest_nice (fields 9 and 10) are already counted in user and nice
    total = sum(ticks[:8])
    steal = ticks[7] if len(ticks) > 7 else 0
    return total, steal


def round_trip_us(
    cpus: tuple[int, int], *, echo_work_us: float | None = None, count: int = ROUND_TRIPS
) -> float | None:
    """The mean of ``count`` one-byte pipe round trips between this process, on ``cpus[0]``,
    and a child echoing on ``cpus[1]``; None where it cannot be measured. ``echo_work_us``:
    the child polls its pipe without sleeping (as the mount's request loop does after each
    reply) and works that long before it answers (as the daemon does on a request), and the
    figure is the round trip less that work: what this side's waiting and waking cost."""
    if not hasattr(os, "fork") or not hasattr(os, "sched_setaffinity"):
        return None
    mine = os.sched_getaffinity(0)
    child_in, to_child = os.pipe()  # (read end, write end)
    parent_in, to_parent = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        for fd in (child_in, to_child, parent_in, to_parent):
            os.close(fd)
        return None
    if pid == 0:  # the echo side: its ends only, so the parent's going away is an end of file
        code = 1
        try:
            os.close(to_child)
            os.close(parent_in)
            os.sched_setaffinity(0, {cpus[1]})
            os.set_blocking(child_in, echo_work_us is None)
            work = (echo_work_us or 0) / 1e6
            while True:
                try:
                    if not os.read(child_in, 1):
                        break  # the parent closed its end
                except BlockingIOError:
                    continue
                until = time.perf_counter() + work
                while time.perf_counter() < until:
                    pass
                os.write(to_parent, b".")
            code = 0
        finally:  # whatever happens here (^C too), the child never runs the parent's code
            os._exit(code)
    os.close(child_in)
    os.close(to_parent)
    try:
        os.sched_setaffinity(0, {cpus[0]})
        os.write(to_child, b".")  # one unmeasured trip: both sides are running
        if not os.read(parent_in, 1):
            return None  # the child could not run where asked
        start = time.perf_counter()
        for _ in range(count):
            os.write(to_child, b".")
            if not os.read(parent_in, 1):
                return None
        return (time.perf_counter() - start) / count * 1e6 - (echo_work_us or 0)
    except OSError:
        return None
    finally:
        os.sched_setaffinity(0, mine)
        os.close(to_child)  # the child reads an end of file and leaves
        os.close(parent_in)
        os.waitpid(pid, 0)


def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def measure() -> dict[str, Any]:
    """The facts at the start of a benchmark run."""
    usable = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    facts: dict[str, Any] = {}
    if len(usable) >= 2:
        facts["round_trip_two_cpus_us"] = round_trip_us((usable[0], usable[1]))
        facts["wake_after_work_us"] = round_trip_us(
            (usable[0], usable[1]), echo_work_us=ECHO_WORK_US
        )
    if usable:
        facts["round_trip_one_cpu_us"] = round_trip_us((usable[0], usable[0]))
    facts["guest_halt_poll_ns"] = read_int(HALT_POLL)
    try:
        facts["cpuidle_governor"] = GOVERNOR.read_text().strip()
    except OSError:
        facts["cpuidle_governor"] = None
    facts["ticks"], facts["steal_ticks"] = cpu_ticks()
    return facts


def report(facts: dict[str, Any]) -> str:
    """One paragraph: the round trips, halt polling, and the CPU stolen since ``facts``."""
    parts = []
    two, one = facts.get("round_trip_two_cpus_us"), facts.get("round_trip_one_cpu_us")
    if two is not None and one is not None:
        parts.append(
            f"a pipe round trip between two processes takes {two:.0f} us across two CPUs, "
            f"{one:.1f} us on one"
        )
    poll = facts.get("guest_halt_poll_ns")
    if poll is not None:
        governor = facts.get("cpuidle_governor") or "?"
        state = "off" if poll == 0 else f"{poll:,} ns"
        parts.append(f"guest halt polling {state} (cpuidle governor {governor})")
    total, steal = cpu_ticks()
    spent = total - int(facts.get("ticks") or 0)
    if facts.get("ticks") and spent > 0:
        stolen = (steal - int(facts.get("steal_ticks") or 0)) / spent * 100
        parts.append(f"the host took {stolen:.1f}% of the CPU time during the run (steal)")
    if not parts:
        return "machine: no facts to be had here"
    text = "machine: " + "; ".join(parts) + "."
    woke = facts.get("wake_after_work_us")
    if woke is not None:
        text += (
            f" A process that waits {ECHO_WORK_US} us for another CPU to answer (that CPU"
            f" polling, as the mount's request loop does) loses {woke:.0f} us a round trip to"
            f" sleeping and waking up; a create in a mount waits for five FUSE requests:"
            f" ~{5 * woke:.0f} us a file, ~{1e6 / (5 * (woke + ECHO_WORK_US)):,.0f} files/s if"
            f" each request takes {ECHO_WORK_US} us of work."
        )
    return text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--start", type=Path, help="measure and note the facts in this file")
    ap.add_argument("--report", type=Path, help="print the facts noted in this file")
    args = ap.parse_args()
    if args.start is not None:
        try:
            args.start.write_text(json.dumps(measure()))
        except OSError as exc:
            print(f"bench_machine: cannot write {args.start}: {exc.strerror}", file=sys.stderr)
            return 1
    if args.report is not None:
        try:
            facts = json.loads(args.report.read_text())
            if not isinstance(facts, dict):
                raise ValueError("not an object of facts")
            print(report(facts))
        except (OSError, ValueError, TypeError) as exc:  # TypeError: a fact of the wrong type
            print(f"machine: no facts noted ({exc})")
    if args.start is None and args.report is None:
        print(report(measure()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
