"""OnnxSurrogate: a batch runs as one-sample calls on parallel single-thread streams, and
gives what one call of the whole-batch session gives, sample for sample, in order; the
samples of submitted calls share the streams in arrival order."""

import threading
import time
from concurrent.futures import wait

import numpy as np
import pytest

from datagen.systems import unified_coefficients
from modelstore.registry import BUNDLED_REGISTRY
from modelstore.runner import OnnxSurrogate

N = 64


@pytest.fixture(scope="module")
def problems() -> tuple[np.ndarray, np.ndarray]:
    """Nine different problems: an order mix-up shows as a wrong sample."""
    rng = np.random.default_rng(7)
    sources = rng.standard_normal((9, N, N)).astype(np.float32)
    sources -= sources.mean(axis=(1, 2), keepdims=True)
    k = np.linspace(0.005, 0.02, 9)
    w = np.linspace(1.0, 9.0, 9)
    return sources, unified_coefficients(k11=k, k22=0.01, v1=0.2, w=w).astype(np.float32)


def test_a_batch_runs_on_parallel_streams_and_matches_one_session_call(problems):
    sources, coefficients = problems
    model = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=2)
    assert model._stream_session is None and model._threads is None  # made on first use
    whole = model.session.run(None, {"source": sources, "coefficients": coefficients})[0]
    streamed = model.predict(sources, coefficients)
    assert model._stream_session is not None and model._threads._max_workers == 2
    assert streamed.shape == whole.shape == (9, N, N) and streamed.dtype == np.float32
    error = np.linalg.norm(streamed - whole, axis=(1, 2)) / np.linalg.norm(whole, axis=(1, 2))
    assert error.max() <= 1e-5
    # each sample is its own, not a neighbour's
    assert np.linalg.norm(whole[1] - whole[0]) > 100 * np.linalg.norm(streamed[1] - whole[1])


def test_one_problem_and_one_thread_use_the_session_alone(problems):
    sources, coefficients = problems
    model = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=1)
    batch = model.predict(sources, coefficients, batch=4)
    assert model._stream_session is None
    one = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=2)
    lone = one.predict(sources[3:4], coefficients[3:4])
    assert one._stream_session is None
    np.testing.assert_allclose(lone[0], batch[3], rtol=1e-5, atol=1e-6 * np.abs(batch[3]).max())


def test_submitted_calls_give_what_predict_gives(problems):
    sources, coefficients = problems
    model = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=2)
    want = model.predict(sources, coefficients)
    parts = [slice(0, 1), slice(1, 4), slice(4, 5), slice(5, 9)]
    futures = [model.submit(sources[p], coefficients[p]) for p in parts]
    got = np.concatenate([f.result(timeout=60) for f in futures])
    assert got.shape == want.shape and got.dtype == np.float32
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * scale)
    assert model._queued == 0
    # another grid: resampled to the model's and back, as predict does
    coarse = sources[:3, ::2, ::2]
    np.testing.assert_allclose(
        model.submit(coarse, coefficients[:3]).result(timeout=60),
        model.predict(coarse, coefficients[:3]),
        rtol=1e-5,
        atol=1e-6 * scale,
    )


class _Recording:
    """Stands in for an ORT session: records when each sample (its source's value at
    [0, 0]) starts and ends, and takes ``seconds`` per call; ``fail`` raises instead."""

    def __init__(self, seconds: float, fail: float | None = None):
        self.seconds, self.fail = seconds, fail
        self.log: dict[float, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def run(self, _, feeds):
        source = feeds["source"]
        key = float(source[0, 0, 0])
        t0 = time.monotonic()
        time.sleep(self.seconds)
        with self.lock:
            self.log[key] = (t0, time.monotonic())
        if key == self.fail:
            raise RuntimeError(f"sample {key:g} failed")
        return [source * 2]


def _tagged(values: list[float]) -> tuple[np.ndarray, np.ndarray]:
    sources = np.zeros((len(values), N, N), dtype=np.float32)
    sources[:, 0, 0] = values
    return sources, np.zeros((len(values), 6), dtype=np.float32)


def _with_fake_streams(session: _Recording) -> OnnxSurrogate:
    model = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=2)
    model._single_thread_streams()
    model._stream_session = session
    return model


def test_the_samples_of_calls_share_the_streams_in_arrival_order():
    """A call's samples start while an earlier call's last sample still runs: no stream
    waits for a call to end (with whole calls in turn, sample 10 would wait for 2)."""
    session = _Recording(0.1)
    model = _with_fake_streams(session)
    first, second = model.submit(*_tagged([0, 1, 2])), model.submit(*_tagged([10, 11]))
    assert first.result(timeout=10)[:, 0, 0].tolist() == [0, 2, 4]
    assert second.result(timeout=10)[:, 0, 0].tolist() == [20, 22]
    start = {k: t0 for k, (t0, _) in session.log.items()}
    assert sorted(start, key=start.get) == [0, 1, 2, 10, 11]
    assert start[10] < session.log[2][1]  # began before the first call's last sample ended
    assert model._queued == 0


def test_a_failing_sample_fails_its_call_only():
    session = _Recording(0.01, fail=1.0)
    model = _with_fake_streams(session)
    bad, good = model.submit(*_tagged([0, 1, 2])), model.submit(*_tagged([5, 6]))
    wait([bad, good], timeout=10)
    with pytest.raises(RuntimeError, match="sample 1 failed"):
        bad.result()
    assert good.result()[:, 0, 0].tolist() == [10, 12]
    assert model._queued == 0


def test_a_lone_sample_uses_every_thread_unless_the_streams_are_busy(problems):
    sources, coefficients = problems
    session = _Recording(0.2)
    model = _with_fake_streams(session)
    whole = model.session
    lone = model.submit(sources[:1], coefficients[:1]).result(timeout=10)  # idle: all threads
    want = whole.run(None, {"source": sources[:1], "coefficients": coefficients[:1]})[0]
    np.testing.assert_array_equal(lone, want)
    assert session.log == {}
    busy = model.submit(*_tagged([0, 1]))
    queued = model.submit(*_tagged([7]))  # streams busy: joins their queue
    assert queued.result(timeout=10)[0, 0, 0] == 14 and 7.0 in session.log
    busy.result(timeout=10)
