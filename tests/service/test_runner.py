"""OnnxSurrogate: a batch runs as one-sample calls on parallel single-thread streams, and
gives what one call of the whole-batch session gives, sample for sample, in order."""

import numpy as np
import pytest

from datagen.systems import unified_coefficients
from service.registry import BUNDLED_REGISTRY
from service.runner import OnnxSurrogate

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
    assert model._streams is None  # made on first use only
    whole = model.session.run(None, {"source": sources, "coefficients": coefficients})[0]
    streamed = model.predict(sources, coefficients)
    assert model._streams is not None and model._streams[1]._max_workers == 2
    assert streamed.shape == whole.shape == (9, N, N) and streamed.dtype == np.float32
    error = np.linalg.norm(streamed - whole, axis=(1, 2)) / np.linalg.norm(whole, axis=(1, 2))
    assert error.max() <= 1e-5
    # each sample is its own, not a neighbour's
    assert np.linalg.norm(whole[1] - whole[0]) > 100 * np.linalg.norm(streamed[1] - whole[1])


def test_one_problem_and_one_thread_use_the_session_alone(problems):
    sources, coefficients = problems
    model = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=1)
    batch = model.predict(sources, coefficients, batch=4)
    assert model._streams is None
    one = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY), threads=2)
    lone = one.predict(sources[3:4], coefficients[3:4])
    assert one._streams is None
    np.testing.assert_allclose(lone[0], batch[3], rtol=1e-5, atol=1e-6 * np.abs(batch[3]).max())
