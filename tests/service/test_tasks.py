"""Work no request owns (service/tasks.py): outside every request's context, shared while it
runs, kept once it succeeded, started again after a failure or a cancellation."""

import asyncio
import contextvars

import pytest

from service.batching import CallWindow
from service.tasks import Shared, detached

#: Stands for Serve's request context (a context variable the replica sets per request).
REQUEST = contextvars.ContextVar("request", default=None)


def test_detached_work_runs_outside_the_request_that_starts_it():
    async def scenario():
        REQUEST.set("request 1")
        seen = await detached(asyncio.sleep(0, result=None))
        inside = await detached(_current())
        return seen, inside, REQUEST.get()

    assert asyncio.run(scenario()) == (None, None, "request 1")


async def _current():
    return REQUEST.get()


def test_a_cancelled_or_failed_task_is_started_again_and_a_success_kept():
    runs = []

    async def scenario():
        shared = Shared()
        gate = asyncio.Event()

        async def work():
            runs.append(len(runs))
            if len(runs) == 2:
                raise RuntimeError("a replica restarted")
            await gate.wait()
            return "calibrated"

        # A caller that gives up (its client timed out) stops its own wait, not the work.
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(shared.run("k", work), 0.01)
        assert len(runs) == 1 and not shared.succeeded("k")
        # The work itself cancelled (what Serve did to a request's child calls): the
        # next caller starts it again instead of meeting the cancellation for ever.
        shared._tasks["k"].cancel()
        await asyncio.sleep(0)
        with pytest.raises(RuntimeError, match="restarted"):
            await shared.run("k", work)
        assert len(runs) == 2 and shared.failed("k") and not shared.succeeded("k")
        gate.set()
        assert await shared.run("k", work) == "calibrated" and len(runs) == 3
        assert await shared.run("k", work) == "calibrated" and len(runs) == 3  # kept
        assert shared.succeeded("k") and not shared.failed("k")
        # keep=False: shared while it runs, run again once it is done
        first, second = shared.run("c", work, keep=False), shared.run("c", work, keep=False)
        assert await asyncio.gather(first, second) == ["calibrated"] * 2 and len(runs) == 4
        await shared.run("c", work, keep=False)
        assert len(runs) == 5

    asyncio.run(scenario())


def test_a_call_window_call_belongs_to_no_caller_and_a_cancelled_one_frees_its_callers():
    contexts = []

    async def scenario():
        calls = []

        async def send(problems):
            contexts.append(REQUEST.get())
            calls.append(asyncio.current_task())
            await asyncio.sleep(10)

        window = CallWindow(send, window=1, max_size=4)

        async def caller(i):
            REQUEST.set(f"request {i}")
            return await window(i)

        callers = [asyncio.create_task(caller(i)) for i in range(3)]
        await asyncio.sleep(0.01)
        calls[0].cancel()  # e.g. Serve cancelled a handle call: its callers must not hang
        done, pending = await asyncio.wait(callers, timeout=1.0)
        assert len(done) == 1 and done.pop().cancelled()
        # the two that queued meanwhile left in the next call
        assert len(calls) == 2
        calls[1].cancel()
        done, pending = await asyncio.wait(pending, timeout=1.0)
        assert not pending and all(c.cancelled() for c in done)

    asyncio.run(scenario())
    assert contexts == [None, None]


def test_a_call_window_failure_reaches_every_caller_of_the_call():
    async def scenario():
        async def send(problems):
            raise ValueError("model failed")

        window = CallWindow(send, window=1, max_size=4)
        results = await asyncio.gather(*(window(i) for i in range(3)), return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results)

    asyncio.run(scenario())
