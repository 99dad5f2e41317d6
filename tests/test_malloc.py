"""The mount workers' malloc settings: merged into a user's GLIBC_TUNABLES, and the idle trim.

That a real worker starts with them (and glibc accepts them) is checked on a real mount in
``test_mount_basic.py``.
"""

from __future__ import annotations

import pytest
import trio
from pfsfsd import malloc
from pfsfsd.malloc import WORKER_MALLOC_SETTINGS, trim_when_idle, worker_environment

OURS = ":".join(f"{name}={value}" for name, value in WORKER_MALLOC_SETTINGS)


def test_the_worker_gets_our_settings() -> None:
    out = worker_environment({"PATH": "/bin"})
    assert out == {"PATH": "/bin", "GLIBC_TUNABLES": OURS}


def test_a_users_own_settings_are_kept_and_ours_fill_in_the_rest() -> None:
    mine = "glibc.pthread.rseq=0:glibc.malloc.arena_max=4"
    out = worker_environment({"GLIBC_TUNABLES": mine})["GLIBC_TUNABLES"]
    items = out.split(":")
    assert items[:2] == ["glibc.pthread.rseq=0", "glibc.malloc.arena_max=4"]
    assert "glibc.malloc.arena_max=1" not in items  # theirs wins
    for name, value in WORKER_MALLOC_SETTINGS[1:]:
        assert f"{name}={value}" in items


def test_memory_is_trimmed_once_per_idle_spell(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(malloc, "_libc_trim", lambda: lambda: trims.append(counter[0]) or 0)
    counter = [0]

    async def scenario() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trim_when_idle, lambda: counter[0], 0.05)
            await trio.sleep(0.3)
            assert trims == []  # idle since the start: nothing was used, nothing to give back
            counter[0] += 5  # reads
            await trio.sleep(0.3)
            assert trims == [5]  # once idle after them, once only
            counter[0] += 1
            await trio.sleep(0.02)
            counter[0] += 1  # busy again...
            await trio.sleep(0.3)
            assert trims == [5, 7]
            nursery.cancel_scope.cancel()

    trio.run(scenario)
