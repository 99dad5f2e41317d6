"""The mount against a reference directory: random operations, fixed seeds (see mountmodel).

Each seed runs a few hundred operations with checkpoints (snapshot + ``pfsfs get`` of the commit,
unmount + remount, ``kill -9`` + recover, an old commit mounted read-only), so every write is
checked by reading the commit back, not only the live view. A failure names the seed and the
operations that ran; ``scripts/soak_mount.py --seed N`` replays and shrinks it.
"""

from __future__ import annotations

import pytest

from .fusehelpers import Env, env, no_leftovers
from .mountmodel import Mismatch, model_run, random_ops, replay_source

__all__ = ["env", "no_leftovers"]

SEEDS = [1, 2, 3, 4]


def _run(env: Env, seed: int, count: int, **kw: object) -> None:
    with model_run(env, env.root, **kw) as m:
        try:
            for op in random_ops(seed, count, m, checkpoint_every=40):
                m.step(op)
        except Mismatch as exc:
            tail = replay_source(m.log[-15:], short=True)
            raise AssertionError(
                f"seed {seed}, operation {len(m.log)}: {exc}\nlast operations:\n{tail}\n"
                f"reproduce and shrink: .venv/bin/python scripts/soak_mount.py --seed {seed} "
                f"--ops {count} --checkpoint-every 40"
            ) from None


@pytest.mark.parametrize("seed", SEEDS)
def test_random_operations_match_reference(env: Env, seed: int) -> None:
    _run(env, seed, 400)


def test_random_operations_with_xattrs(env: Env) -> None:
    _run(env, 100, 300, xattrs=True)


def test_overwrite_shorter_commits_new_bytes_only(env: Env) -> None:
    """The reproduction of issue 13: shell `>` over a longer file."""
    with model_run(env, env.root) as m:
        for op in [
            ("write_trunc", b"f", b"hello world long line\n"),
            ("snapshot",),
            ("write_trunc", b"f", b"yy\n"),
            ("snapshot",),
            ("reopen_trunc", b"f", b"z"),
            ("trunc_append", b"f", b"q"),
            ("kill",),
            ("remount",),
        ]:
            m.step(op)
    assert env.cat("model@master:/f") == b"q"
