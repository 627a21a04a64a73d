"""Generated examples: each one is a solution of its PDE, within its ranges, reproducible."""

import numpy as np
import pytest
from reference import grid_ratio

from datagen import residual
from datagen.generate import HELMHOLTZ_MAX_ABS, generate_block
from datagen.spec import SamplingRanges, SplitSpec
from datagen.systems import DIFFUSION_SCALE, K11, K12, K22, V1, V2, W, get_system


def eig_of(c):
    k = np.stack([np.stack([c[:, K11], c[:, K12]], 1), np.stack([c[:, K12], c[:, K22]], 1)], 1)
    return np.linalg.eigvalsh(k)


@pytest.mark.parametrize("system", ["poisson", "advection_diffusion", "helmholtz"])
def test_blocks_solve_their_pde(system):
    spec = SplitSpec(system=system, n_examples=64, resolution=64)
    b = generate_block(spec, 0, dtype=np.float64)
    assert b.sources.shape == b.solutions.shape == (64, 64, 64)
    get_system(system).validate(b.coefficients)
    r = residual(system, b.solutions, b.sources, b.coefficients)
    assert np.abs(r).max() < 1e-10 * np.abs(b.sources).max()
    if system != "helmholtz":
        assert np.abs(b.sources.mean(axis=(1, 2))).max() < 1e-14
        assert np.abs(b.solutions.mean(axis=(1, 2))).max() < 1e-14


def test_poisson_eigenvalue_range():
    spec = SplitSpec(
        system="poisson", n_examples=512, resolution=32, ranges=SamplingRanges(eig=(5, 10))
    )
    c = generate_block(spec, 0).coefficients
    eig = eig_of(c) / DIFFUSION_SCALE
    assert np.allclose(eig[:, 0], 1.0)
    assert eig[:, 1].min() >= 5 and eig[:, 1].max() <= 10
    assert abs(eig[:, 1].mean() - 7.5) < 0.3


def test_advection_diffusion_ratio_within_one_percent_of_range():
    spec = SplitSpec(
        system="advection_diffusion",
        n_examples=128,
        resolution=64,
        ranges=SamplingRanges(ratio=(1.0, 2.0)),
    )
    b = generate_block(spec, 0, dtype=np.float64)
    assert b.psi.min() >= 1.0 * 0.99 and b.psi.max() <= 2.0 * 1.01
    c = b.coefficients
    lam = np.hypot(c[:, V1], c[:, V2])
    eig = eig_of(c) / (DIFFUSION_SCALE * (1 - lam[:, None]))
    assert np.allclose(eig[:, 0], 1.0) and (eig[:, 1] <= 5 + 1e-9).all()
    for i in range(0, 128, 32):  # stored Psi is the measured one
        measured = grid_ratio(b.solutions[i], *c[i, [K11, K22, K12, V1, V2]])
        assert abs(measured / b.psi[i] - 1) < 1e-6


def test_helmholtz_redraws_large_solutions():
    spec = SplitSpec(system="helmholtz", n_examples=256, resolution=64)
    b = generate_block(spec, 0)
    assert np.abs(b.solutions).max() <= HELMHOLTZ_MAX_ABS
    w = b.coefficients[:, W]
    assert set(np.unique(w)) <= set(range(1, 11)) and np.all(w == np.round(w))
    assert np.allclose(b.coefficients[:, [K11, K22]], DIFFUSION_SCALE)


def test_blocks_are_reproducible_and_independent():
    spec = SplitSpec(system="poisson", n_examples=100, resolution=32, block_size=40)
    a, again = generate_block(spec, 1), generate_block(spec, 1)
    assert np.array_equal(a.sources, again.sources) and np.array_equal(
        a.coefficients, again.coefficients
    )
    assert a.start == 40 and len(a) == 40 and len(generate_block(spec, 2)) == 20
    other_seed = generate_block(
        SplitSpec(system="poisson", n_examples=100, resolution=32, block_size=40, seed=1), 1
    )
    other_split = generate_block(spec.with_split("val", 100), 1)
    assert not np.allclose(a.sources, other_seed.sources)
    assert not np.allclose(a.sources, other_split.sources)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"system": "burgers"}, "unknown system"),
        ({"split": "dev"}, "split"),
        ({"n_examples": 0}, "n_examples"),
        ({"resolution": 33}, "resolution"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_specs(kwargs, match):
    base = {"system": "poisson", "n_examples": 10}
    with pytest.raises(ValueError, match=match):
        SplitSpec(**{**base, **kwargs})


@pytest.mark.parametrize(
    "kwargs,match",
    [({"eig": (5, 1)}, "eigenvalue"), ({"ratio": (0, 1)}, "ratio"), ({"omega": (1.5, 3)}, "omega")],
)
def test_bad_ranges(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingRanges(**kwargs)


@pytest.mark.parametrize("system", ["advection_diffusion", "helmholtz"])
def test_stored_fields_are_the_float64_results_rounded(system):
    spec = SplitSpec(system=system, n_examples=70, resolution=32)
    lo, hi = generate_block(spec, 0), generate_block(spec, 0, dtype=np.float64)
    assert lo.sources.dtype == np.float32
    assert np.array_equal(lo.sources, hi.sources.astype(np.float32))
    assert np.array_equal(lo.solutions, hi.solutions.astype(np.float32))
    assert np.array_equal(lo.coefficients, hi.coefficients)
