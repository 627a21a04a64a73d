"""The ingress's batching: problems leave in calls of up to max_size, at most ``window`` in
flight, and whatever queued while the calls were out leaves together in the next one."""

import asyncio

import pytest

from service.batching import CallWindow


class _Surrogate:
    """Records the calls it gets and answers each when told to."""

    def __init__(self):
        self.calls: list[list] = []
        self.pending: list[asyncio.Future] = []

    async def __call__(self, problems: list) -> list:
        self.calls.append(list(problems))
        done = asyncio.get_running_loop().create_future()
        self.pending.append(done)
        error = await done
        if error:
            raise error
        return [f"answer {p}" for p in problems]

    def answer_next(self, error: Exception | None = None) -> None:
        self.pending.pop(0).set_result(error)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_what_queues_while_calls_are_out_travels_together():
    async def scenario():
        surrogate = _Surrogate()
        window = CallWindow(surrogate, window=2, max_size=3)
        callers = [asyncio.create_task(window(i)) for i in range(7)]
        await _settle()
        assert surrogate.calls == [[0], [1]]  # each left as it came, while a slot was free
        surrogate.answer_next()
        await _settle()
        assert surrogate.calls[2] == [2, 3, 4]  # what queued meanwhile, up to max_size
        late = [asyncio.create_task(window(i)) for i in (7, 8)]
        await _settle()
        assert len(surrogate.calls) == 3  # both slots busy: 5 to 8 wait
        surrogate.answer_next()
        await _settle()
        assert surrogate.calls[3] == [5, 6, 7]
        while surrogate.pending:
            surrogate.answer_next()
            await _settle()
        answers = await asyncio.gather(*callers, *late)
        assert answers == [f"answer {i}" for i in range(9)]

    asyncio.run(scenario())


def test_a_failed_call_fails_its_callers_and_frees_its_slot():
    async def scenario():
        surrogate = _Surrogate()
        window = CallWindow(surrogate, window=1, max_size=2)
        first = asyncio.create_task(window(0))
        await _settle()
        queued = [asyncio.create_task(window(i)) for i in (1, 2)]
        await _settle()
        surrogate.answer_next(RuntimeError("replica died"))
        with pytest.raises(RuntimeError, match="replica died"):
            await asyncio.wait_for(first, 5)
        await _settle()
        assert surrogate.calls == [[0], [1, 2]]
        surrogate.answer_next()
        assert await asyncio.wait_for(asyncio.gather(*queued), 5) == ["answer 1", "answer 2"]

    asyncio.run(scenario())


def test_a_caller_that_gave_up_is_not_sent():
    async def scenario():
        surrogate = _Surrogate()
        window = CallWindow(surrogate, window=1, max_size=4)
        patient = asyncio.create_task(window("a"))
        await _settle()
        gave_up = asyncio.create_task(window("b"))
        waits = asyncio.create_task(window("c"))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(gave_up, 0.01)  # cancels it, as the ingress's timeout does
        surrogate.answer_next()
        assert await asyncio.wait_for(patient, 5) == "answer a"
        await _settle()
        assert surrogate.calls == [["a"], ["c"]]
        surrogate.answer_next()
        assert await asyncio.wait_for(waits, 5) == "answer c"

    asyncio.run(scenario())


def test_while_another_call_is_out_a_new_one_waits_for_company_up_to_the_hold():
    async def scenario():
        surrogate = _Surrogate()
        window = CallWindow(surrogate, window=2, max_size=3, hold_s=0.2)
        first = asyncio.create_task(window(0))
        await _settle()
        assert surrogate.calls == [[0]]  # nothing else out: it leaves at once
        held = [asyncio.create_task(window(i)) for i in (1, 2)]
        await _settle()
        assert len(surrogate.calls) == 1  # held: the Surrogate has work
        full = asyncio.create_task(window(3))
        await _settle()
        assert surrogate.calls[1] == [1, 2, 3]  # max_size waiting: no more holding
        surrogate.answer_next()
        await _settle()
        tail = asyncio.create_task(window(4))
        await _settle()
        assert len(surrogate.calls) == 2  # [1, 2, 3] is out: 4 is held...
        t0 = asyncio.get_running_loop().time()
        while len(surrogate.calls) == 2:
            await asyncio.sleep(0.01)
        assert surrogate.calls[2] == [4] and asyncio.get_running_loop().time() - t0 > 0.1
        late = asyncio.create_task(window(5))
        await _settle()
        surrogate.answer_next()  # ...and a call coming back ends the hold at once
        surrogate.answer_next()
        await _settle()
        assert surrogate.calls[3] == [5]
        surrogate.answer_next()
        answers = await asyncio.wait_for(asyncio.gather(first, *held, full, tail, late), 5)
        assert answers == [f"answer {i}" for i in range(6)]

    asyncio.run(scenario())
