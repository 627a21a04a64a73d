"""Work in a replica that no single request owns.

Ray Serve cancels the handle calls a request made when that request is cancelled (its
client went away, or timed out): a call made in the request's context is its child. Work
that serves several requests, or outlives the one that started it (a batch carrying other
requests' problems, the start-up calibration, loading the default model), must not be a
child of any: :func:`detached` starts it in an empty context. :class:`Shared` keeps such
work while it runs or once it succeeded, and starts it again after a failure or a
cancellation, so that no outcome sticks.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any


def detached(work: Coroutine[Any, Any, Any]) -> asyncio.Task:
    """``work`` as a task outside every request's context (Serve's request context is a
    context variable): a client that goes away cancels nothing of it."""
    return asyncio.get_running_loop().create_task(work, context=contextvars.Context())


def failed(task: asyncio.Future) -> bool:
    """Whether a finished ``task`` was cancelled or raised."""
    return task.cancelled() or task.exception() is not None


class Shared:
    """Detached tasks by key, awaited by any number of requests (each through a shield: a
    request that gives up cancels only its own wait)."""

    def __init__(self) -> None:
        self._tasks: dict[Any, asyncio.Task] = {}

    def run(
        self, key: Any, work: Callable[[], Coroutine[Any, Any, Any]], keep: bool = True
    ) -> Awaitable[Any]:
        """The task under ``key``, started (``work()``) if there is none, if the last one
        failed or was cancelled, or if it finished and ``keep`` is False (a check that is
        shared while it runs, made again afterwards)."""
        task = self._tasks.get(key)
        if task is None or (task.done() and (not keep or failed(task))):
            task = self._tasks[key] = detached(work())
        return asyncio.shield(task)

    def forget(self, key: Any) -> None:
        """Drop what is kept under ``key`` (the next :meth:`run` starts it again)."""
        self._tasks.pop(key, None)

    def succeeded(self, key: Any) -> bool:
        task = self._tasks.get(key)
        return task is not None and task.done() and not failed(task)

    def failed(self, key: Any) -> bool:
        """Whether the last task under ``key`` failed or was cancelled (until started again)."""
        task = self._tasks.get(key)
        return task is not None and task.done() and failed(task)
