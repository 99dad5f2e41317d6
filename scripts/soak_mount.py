#!/usr/bin/env python3
"""Soak the mount against a reference directory (tests/mountmodel.py) with any seeds.

    .venv/bin/python scripts/soak_mount.py --seed 7 --ops 100000
    .venv/bin/python scripts/soak_mount.py --seeds 1-20 --ops 5000 [--xattrs]

Each seed runs on a fresh home with its own daemon. On a mismatch it prints the seed, the
failure, then shrinks the operations that ran (delta debugging, each candidate replayed on a
fresh home) and prints a minimal list that still fails, as Python source for a regression test
(also written to ``soak-seed<N>.ops.py`` in the current directory). Exit status 1 if any seed
failed. Needs root and FUSE, like the mount tests.
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test helpers live in tests/ of this checkout

from tests.fusehelpers import running_env  # noqa: E402
from tests.mountmodel import (  # noqa: E402
    Mismatch,
    Op,
    model_run,
    random_ops,
    replay_source,
    run_ops,
    shrink,
)


@contextmanager
def fresh_env() -> Any:
    with tempfile.TemporaryDirectory(prefix="pfsfs-soak-") as tmp, running_env(Path(tmp)) as e:
        yield e


def soak(seed: int, count: int, every: int, xattrs: bool) -> tuple[list[Op], str] | None:
    """Run one seed; on a mismatch, the operations that ran and the message."""
    with fresh_env() as env, model_run(env, env.root, xattrs=xattrs) as m:
        try:
            for op in random_ops(seed, count, m, checkpoint_every=every):
                m.step(op)
        except Mismatch as exc:
            return list(m.log), str(exc)
        counts = ", ".join(f"{k} {v}" for k, v in sorted(m.stats.items()))
        print(f"seed {seed}: {len(m.log)} operations, 0 mismatches ({counts})", flush=True)
    return None


def main() -> int:
    # a SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the mount and daemon go too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, help="one seed")
    ap.add_argument("--seeds", help="a range of seeds, A-B")
    ap.add_argument("--ops", type=int, default=10_000, help="operations per seed")
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--xattrs", action="store_true", help="mount with --xattrs, use xattrs")
    ap.add_argument("--no-shrink", action="store_true")
    args = ap.parse_args()
    if args.seeds:
        a, _, b = args.seeds.partition("-")
        seeds = list(range(int(a), int(b or a) + 1))
    else:
        seeds = [args.seed if args.seed is not None else int(time.time())]
    failed = 0
    total = 0
    for seed in seeds:
        t0 = time.monotonic()
        result = soak(seed, args.ops, args.checkpoint_every, args.xattrs)
        total += args.ops
        if result is None:
            print(f"  {time.monotonic() - t0:.0f} s", flush=True)
            continue
        failed += 1
        ops, message = result
        print(f"seed {seed}: MISMATCH after {len(ops)} operations: {message}", flush=True)
        if args.no_shrink:
            continue
        print("shrinking (each try replays on a fresh home)...", flush=True)
        tries = 0

        def still_fails(candidate: list[Op]) -> bool:
            nonlocal tries
            tries += 1
            return run_ops(fresh_env, candidate, xattrs=args.xattrs) is not None

        minimal = shrink(still_fails, ops)
        source = replay_source(minimal)
        out = Path(f"soak-seed{seed}.ops.py")
        out.write_text(f"# seed {seed}: {run_ops(fresh_env, minimal, xattrs=args.xattrs)}\n"
                       f"OPS = {source}\n")
        print(f"minimal reproduction ({len(minimal)} operations, {tries} tries), also in {out}:")
        print(replay_source(minimal, short=True))
    print(f"{len(seeds)} seeds, {total} operations requested, {failed} seeds with mismatches")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
