"""Worker processes that make blocks and write their fields straight into the output file.

Each worker writes one block (O_DIRECT, mostly waiting on the disk) in a
thread while it makes the next, so the cores never sit idle on I/O. Blocks
are dealt round-robin onto per-worker queues; a ``flush`` message makes a
worker finish its last write and say so, which is how the parent knows a file
is complete before committing it. Only small per-example arrays travel back.
"""

from __future__ import annotations

import queue
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing import get_context

from datagen.dataset import BlockTargets
from datagen.generate import Block, generate_block
from datagen.memory import keep_freed_memory
from datagen.spec import SplitSpec

Job = tuple[SplitSpec, int, BlockTargets, int]  # spec, block, where, offset of the file's first
_POLL_S = 0.5


def _worker_loop(inbox, outbox) -> None:
    # The processes are the parallelism: one BLAS thread each, freed memory kept for reuse.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    keep_freed_memory()
    writer = ThreadPoolExecutor(max_workers=1)
    pending: Future | None = None
    try:
        while (message := inbox.get()) is not None:
            if message == "flush":
                if pending is not None:
                    pending.result()
                    pending = None
                outbox.put(("flushed", None))
                continue
            spec, block, targets, offset = message
            made = generate_block(spec, block)
            if pending is not None:
                pending.result()  # one write in flight at a time (it owns the aligned buffer)
            pending = writer.submit(
                targets.write,
                made.start - offset,
                made.sources,
                made.solutions,
                made.coefficient_fields,
            )
            outbox.put(("block", made.without_fields()))
        if pending is not None:
            pending.result()
    except BaseException:
        outbox.put(("error", traceback.format_exc()))
    finally:
        writer.shutdown(wait=True)


class WorkerError(RuntimeError):
    """A generation worker failed or died."""


class GenerationWorkers:
    """``k`` spawned processes running :func:`_worker_loop`; use as a context manager."""

    def __init__(self, k: int):
        if k < 1:
            raise ValueError(f"need at least one worker, got {k}")
        ctx = get_context("spawn")
        self._outbox = ctx.Queue()
        self._inboxes = [ctx.Queue() for _ in range(k)]
        self._processes = [
            ctx.Process(target=_worker_loop, args=(inbox, self._outbox), daemon=True)
            for inbox in self._inboxes
        ]
        for p in self._processes:
            p.start()

    def __len__(self) -> int:
        return len(self._processes)

    def run(self, jobs: Sequence[Job], on_block: Callable[[Block], None]) -> None:
        """Make every job's block; call ``on_block`` (in this process) as each arrives.

        Returns once every block's fields are on disk.
        """
        for i, job in enumerate(jobs):
            self._inboxes[i % len(self)].put(job)
        for inbox in self._inboxes:
            inbox.put("flush")
        blocks, flushed = 0, 0
        while blocks < len(jobs) or flushed < len(self):
            try:
                kind, payload = self._outbox.get(timeout=_POLL_S)
            except queue.Empty:
                dead = [p.exitcode for p in self._processes if not p.is_alive()]
                if dead:
                    raise WorkerError(f"a generation worker died (exit codes {dead})") from None
                continue
            if kind == "error":
                raise WorkerError(f"a generation worker failed:\n{payload}")
            if kind == "block":
                blocks += 1
                on_block(payload)
            else:
                flushed += 1

    def close(self, *, force: bool = False) -> None:
        if not force:
            for inbox in self._inboxes:
                inbox.put(None)
        for p in self._processes:
            if not force:
                p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()

    def __enter__(self) -> GenerationWorkers:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(force=exc_type is not None)
