"""Transform runners: run one datum in a sandbox and report how it went.

`make_runner(kind)` builds one by its spec name (`podman`, `local`, `kubernetes`: whole jobs
as Kubernetes Jobs, through `run_batch`); `run_with_retries` applies
`datum_tries`; `run_datum_async` runs a datum from trio in a worker thread and kills it when the
surrounding scope is cancelled.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import trio

from ...errors import InvalidInput
from .base import DatumContext, DatumResult, Runner
from .kubernetes import KubernetesRunner
from .local import LocalRunner
from .podman import CONTAINERS_CONF, PodmanRunner

log = logging.getLogger(__name__)

__all__ = [
    "CONTAINERS_CONF",
    "DatumContext",
    "DatumResult",
    "KubernetesRunner",
    "LocalRunner",
    "PodmanRunner",
    "Runner",
    "make_runner",
    "run_datum_async",
    "run_with_retries",
]

RUNNER_CLASSES: dict[str, Any] = {
    "podman": PodmanRunner,
    "local": LocalRunner,
    "kubernetes": KubernetesRunner,
}


def make_runner(kind: str, **options: Any) -> Runner:
    """The runner named by a spec's `runner:` field; `options` go to its constructor."""
    try:
        cls = RUNNER_CLASSES[kind]
    except KeyError:
        raise InvalidInput(f"runner: unknown runner {kind!r}") from None
    runner: Runner = cls(**options)
    return runner


def _clear(directory: Path) -> None:
    for child in directory.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def run_with_retries(runner: Runner, ctx: DatumContext, tries: int = 1) -> DatumResult:
    """Run up to `tries` times until success; the output directory is emptied before each
    retry and each attempt logs to `ctx.log_dir/try-<n>/`. Returns the last attempt."""
    result: DatumResult | None = None
    for attempt in range(1, max(tries, 1) + 1):
        if attempt > 1:
            if ctx.cancel.is_set():
                break
            log.info("datum %s: attempt %d of %d", ctx.datum_id[:12], attempt, tries)
            _clear(ctx.output_dir)
        result = runner.run_datum(replace(ctx, log_dir=ctx.log_dir / f"try-{attempt}"))
        result = replace(result, attempts=attempt)
        if result.ok or result.error == "cancelled":
            break
        log.info("datum %s: %s", ctx.datum_id[:12], result.summary())
    assert result is not None
    return result


async def run_datum_async(
    runner: Runner,
    ctx: DatumContext,
    tries: int = 1,
    limiter: trio.CapacityLimiter | None = None,
) -> DatumResult:
    """`run_with_retries` in a worker thread (at most `limiter` at once: the pipeline's
    parallelism). Cancelling the caller kills the run."""
    try:
        return await trio.to_thread.run_sync(
            run_with_retries, runner, ctx, tries, abandon_on_cancel=True, limiter=limiter
        )
    except trio.Cancelled:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(runner.kill, ctx)
        raise
