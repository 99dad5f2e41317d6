"""Chunking closed files in the background, so that a snapshot (and an unmount) has little left.

Without this, every byte written to a mount is chunked, hashed and stored when the mount is
snapshot or unmounted: 1 GiB written meant an unmount of several seconds. Here a file is queued
when its last handle is closed (``release``) and a job starts as soon as ``EAGER_BYTES`` or
``EAGER_FILES`` wait (a writer that never pauses, such as ``cp -a`` of a big tree, still gets
its closed files chunked while it goes on), or once the mount has been idle for ``IDLE``
seconds (no mutation) for the rest. A thread of its own at the lowest CPU priority (nice 19)
reads the staged data, chunks it,
stores the chunks and the manifest in a write session of its own and makes them durable. The
snapshot then uses that manifest instead of chunking the file again — only if the file has not
changed since: every write, truncation or failed write bumps the node's ``gen``, and a result
is used only when it was made from the very generation the node still has.

Only whole new content qualifies (``base_len`` 0: a new file or one truncated to zero), dense
(no holes: the snapshot has its own path for sparse files) and up to ``MAX_FILE`` bytes (read
whole into memory; a bigger file is chunked by the snapshot as before). The thread never maps
the data file (a truncation under a mapping would kill the process with SIGBUS): it copies it
with ``pread``, and a file that changed meanwhile simply fails the generation check.

Until a snapshot commits them, what the thread stored is referenced by nothing: the thread
declares it in the mount's gc roots (``mount:<id>``, beside the base commits) inside its write
session, so gc — which waits for write sessions — never sees it unreferenced. A job never runs
during a snapshot (both hold the worker's lock). Nothing here is journaled: after a crash,
recovery chunks the files itself, as it did before.

The priority is how the work yields to foreground requests: the chunker, BLAKE3 and the file
I/O release the GIL, so the thread uses the CPU the mount's request loop leaves idle, and the
kernel runs it last when both cores are busy. Jobs are small (``BATCH_BYTES``) so that a
snapshot, which waits for the running job, never waits long.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import trio

from pfsfs.model import FILE, Locator, ManifestChunk

from .tree import Node, Tree

log = logging.getLogger(__name__)

MAX_FILE = 64 << 20  # bigger files are left to the snapshot (read whole here)
BATCH_BYTES = 32 << 20  # one job: at most this much data...
BATCH_FILES = 2048  # ...or this many files
# A job starts at once when this much waits (closed files), whatever the writers do...
EAGER_BYTES = 16 << 20
EAGER_FILES = 256
# ...and for less after this many seconds without mutations.
IDLE = 0.2
TICK = 0.05

T = TypeVar("T")


def _lowest_priority() -> None:
    """Run the calling thread at nice 19 (Linux: a thread's own priority)."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except OSError:
        pass


@dataclass(frozen=True)
class Precomputed:
    """A file's manifest, stored and durable, made from generation ``gen`` of its content."""

    gen: int
    size: int
    ref: Locator
    roots: tuple[Locator, ...]  # what must stay alive for it until it is committed


def eligible(tree: Tree, node: Node) -> bool:
    return (
        node.kind == FILE
        and node.staged
        and node.dirty
        and not node.base_len
        and not node.failed
        and node.opens == 0
        and node.nlink > 0
        and 0 < node.size <= MAX_FILE
        and tree.staging is not None
        and node.vol >= 0
        and not tree.volumes[node.vol].read_only
    )


def usable(tree: Tree, node: Node) -> Locator | None:
    """The precomputed manifest of ``node`` if it still is the node's content."""
    done = tree.precomputed.get(node.ino)
    if done is None:
        return None
    if done.gen != node.gen or done.size != node.size or not node.staged or node.base_len:
        return None
    if node.failed:
        return None
    return done.ref


def _root_key(loc: Locator) -> bytes:
    """One root per pack keeps the whole pack alive; standalone chunks need one each."""
    return loc.pack or loc.id


class Precommitter:
    """The queue of closed files and the task that chunks them (one job at a time)."""

    def __init__(
        self,
        tree: Tree,
        owner: str,
        bases: Callable[[], list[str]],
        lock: trio.Lock,
        busy: Callable[[], bool],
    ) -> None:
        self.tree = tree
        self.owner = owner
        self.bases = bases  # the mount's base commits (hex), the other half of its gc roots
        self.lock = lock  # the worker's snapshot lock
        self.busy = busy  # True while the worker unmounts (no new jobs then)
        self.roots: dict[bytes, Locator] = {}
        self.jobs = 0
        self.files_done = 0
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the low-priority thread. Not cancellable: the worker commits only
        after its tasks ended, so never while a job still stores (shielded, as
        ``trio.to_thread.run_sync`` would wait too)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                1, thread_name_prefix="precommit", initializer=_lowest_priority
            )
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: token.run_sync_soon(done.set))
        with trio.CancelScope(shield=True):
            await done.wait()
        return future.result()

    # -- the queue (trio thread) ------------------------------------------------------------
    def pending(self) -> list[Node]:
        """Queued files that still qualify, oldest first (stale entries are dropped)."""
        tree = self.tree
        out = []
        for ino in list(tree.closed_files):
            node = tree.nodes.get(ino)
            if node is None or not eligible(tree, node) or usable(tree, node) is not None:
                del tree.closed_files[ino]
                continue
            out.append(node)
        return out

    def _eager(self) -> bool:
        """Enough closed files wait to start a job without waiting for the mount to idle."""
        closed = self.tree.closed_files
        return len(closed) >= EAGER_FILES or sum(closed.values()) >= EAGER_BYTES

    def root_locators(self) -> list[Locator]:
        return list(self.roots.values())

    def after_snapshot(self) -> None:
        """Forget results the snapshot consumed (or that went stale) and their roots."""
        tree = self.tree
        for ino in list(tree.precomputed):
            node = tree.nodes.get(ino)
            if node is None or usable(tree, node) is None:
                del tree.precomputed[ino]
        self.roots = {_root_key(loc): loc for d in tree.precomputed.values() for loc in d.roots}

    # -- the task ----------------------------------------------------------------------------
    async def run(self) -> None:
        tree = self.tree
        seen, quiet_since = tree.changes, trio.current_time()
        while True:
            await trio.sleep(TICK)
            now = trio.current_time()
            if tree.changes != seen:
                seen, quiet_since = tree.changes, now
            if not tree.closed_files or self.busy():
                continue
            if now - quiet_since < IDLE and not self._eager():
                continue
            nodes = self.pending()
            if nodes:
                await self.job(nodes)

    async def job(self, nodes: list[Node]) -> None:
        async with self.lock:
            if self.busy():
                return
            batch: list[tuple[int, int, int]] = []
            total = 0
            for node in nodes:
                if usable(self.tree, node) is not None or not eligible(self.tree, node):
                    continue
                batch.append((node.ino, node.gen, node.size))
                total += node.size
                if total >= BATCH_BYTES or len(batch) >= BATCH_FILES:
                    break
            if not batch:
                return
            for ino, _, _ in batch:
                self.tree.closed_files.pop(ino, None)
            bases = self.bases()
            roots = dict(self.roots)
            try:
                results = await self._in_thread(self._work, batch, bases, roots)
            except Exception as exc:  # noqa: BLE001 - the snapshot will chunk them itself
                log.warning("background chunking failed (the snapshot will do it): %s", exc)
                return
            self.roots = roots
            self.jobs += 1
            for ino, done in results.items():
                node = self.tree.nodes.get(ino)
                if node is not None and node.gen == done.gen and node.size == done.size:
                    self.tree.precomputed[ino] = done
                    self.files_done += 1
            for ino, gen, _ in batch:
                # Written again while it was read (the kernel's writeback of a closed file can
                # come after the release): queue it again, or it waited for the snapshot.
                node = self.tree.nodes.get(ino)
                if node is not None and node.gen != gen and eligible(self.tree, node):
                    self.tree.closed_files[ino] = node.size

    # -- the thread --------------------------------------------------------------------------
    def _work(
        self, batch: list[tuple[int, int, int]], bases: list[str], roots: dict[bytes, Locator]
    ) -> dict[int, Precomputed]:
        tree = self.tree
        staging = tree.staging
        assert staging is not None
        repo = tree.repo
        chunker = repo.chunker()
        out: dict[int, Precomputed] = {}
        with repo.writer() as w:
            for ino, gen, size in batch:
                data = _read_dense(staging.data_path(ino), size)
                if data is None:
                    continue
                chunks: list[ManifestChunk] = []
                mine: dict[bytes, Locator] = {}
                for piece in chunker.cut_buffer(data):
                    loc = w.put_chunk(piece)
                    chunks.append(ManifestChunk(loc, len(piece)))
                    mine.setdefault(_root_key(loc), loc)
                ref = w.put_manifest(chunks)
                mine.setdefault(_root_key(ref), ref)
                roots.update(mine)
                out[ino] = Precomputed(gen, size, ref, tuple(mine.values()))
            w.finish()  # durable and indexed...
            # ...and a gc root before the session (the shared gc lock) ends
            repo.index.set_gc_roots(self.owner, bases, list(roots.values()))
        return out


def _read_dense(path: os.PathLike[str] | str, size: int) -> bytes | None:
    """The first ``size`` bytes of a staged data file, or None if it is shorter or has holes
    (those files are left to the snapshot, which stores holes as zero chunks)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if st.st_size < size or st.st_blocks * 512 < size:
            return None
        parts = []
        pos = 0
        while pos < size:
            piece = os.pread(fd, min(size - pos, 8 << 20), pos)
            if not piece:
                return None
            parts.append(piece)
            pos += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    except OSError:
        return None
    finally:
        os.close(fd)


