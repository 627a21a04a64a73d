"""Samplers: ranges, distributions (fixed seeds), the separable source builder and Psi."""

import numpy as np
import pytest
from reference import diffusion_tensor, gaussian_source, grid_ratio, solve_one
from scipy import stats

from datagen import sampling, sources
from datagen.systems import DIFFUSION_SCALE


def test_diffusion_tensors_have_the_drawn_eigenvalues_and_angles(rng):
    a, e, t = sampling.sample_diffusion(rng, 20000, (2.5, 7.5))
    assert e.min() >= 2.5 and e.max() <= 7.5
    assert t.min() >= 0 and t.max() < 2 * np.pi
    # eigenvalues of [[a11, a12], [a12, a22]] are {1, e}
    mats = np.stack([np.stack([a[:, 0], a[:, 2]], 1), np.stack([a[:, 2], a[:, 1]], 1)], 1)
    eig = np.linalg.eigvalsh(mats)
    assert np.allclose(eig[:, 0], 1.0) and np.allclose(eig[:, 1], e)
    # against explicit rotation products
    for i in range(5):
        m = diffusion_tensor(e[i], t[i])
        assert np.allclose([m[0, 0], m[1, 1], m[0, 1]], a[i]) and np.isclose(m[0, 1], m[1, 0])
    assert stats.kstest(e, stats.uniform(2.5, 5.0).cdf).pvalue > 1e-3
    assert stats.kstest(t, stats.uniform(0, 2 * np.pi).cdf).pvalue > 1e-3


def test_directions_are_unit_and_uniform(rng):
    d = sampling.sample_directions(rng, 20000)
    assert np.allclose(np.hypot(d[:, 0], d[:, 1]), 1.0)
    angle = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * np.pi)
    assert stats.kstest(angle, stats.uniform(0, 2 * np.pi).cdf).pvalue > 1e-3


def test_omega_integers_cover_the_range(rng):
    w = sampling.sample_omega(rng, 5000, (1, 10))
    assert set(np.unique(w)) == set(range(1, 11))
    counts = np.bincount(w.astype(int))[1:]
    assert stats.chisquare(counts).pvalue > 1e-3


def test_sparsity_levels_in_equal_shares_and_active_fraction(rng):
    s = sources.sparsity_for_indices(np.arange(40000))
    levels, counts = np.unique(s, return_counts=True)
    assert list(levels) == list(sources.SPARSITY_LEVELS) and set(counts) == {10000}
    assert list(sources.sparsity_for_indices(np.arange(8))) == [0.2, 0.4, 0.6, 0.8] * 2
    p = sources.sample_weights(rng, s).reshape(40000, -1)
    for level in sources.SPARSITY_LEVELS:
        off = (p[s == level] == 0).mean()
        assert abs(off - level) < 0.01
    on = p[p > 0]
    assert on.min() >= 1e-3 and on.max() <= 1.0
    assert stats.kstest(on, stats.uniform(1e-3, 1 - 1e-3).cdf).pvalue > 1e-3


def test_all_zero_weights_get_one_gaussian(rng):
    p = sources.sample_weights(rng, np.full(500, 0.9999))
    assert ((p > 0).reshape(500, -1).sum(axis=1) >= 1).all()


@pytest.mark.parametrize("zero_mean", [True, False])
def test_separable_sources_match_a_loop_over_gaussians(rng, zero_mean):
    p = sources.sample_weights(rng, np.array([0.2, 0.8, 0.5]))
    f, f_hat = sources.build_sources(p, 64, zero_mean=zero_mean)
    for i in range(3):
        assert np.allclose(f[i], gaussian_source(p[i], 64, zero_mean), atol=1e-13)
    assert np.allclose(f_hat, np.fft.rfft2(f), atol=1e-10)
    if zero_mean:
        assert np.abs(f.mean(axis=(1, 2))).max() < 1e-15
    else:
        assert np.allclose(f.max(axis=(1, 2)), 1.0)


def test_ratio_solve_hits_target_by_independent_measurement(rng):
    n, b = 64, 24
    p = sources.sample_weights(rng, sources.sparsity_for_indices(np.arange(b)))
    f, f_hat = sources.build_sources(p, n, zero_mean=True)
    a, _, _ = sampling.sample_diffusion(rng, b, (1, 5))
    d = sampling.sample_directions(rng, b)
    target = rng.uniform(0.2, 5.0, b)
    r, psi = sampling.solve_ratio(f_hat, a, d, target, n)
    assert np.allclose(psi, target, rtol=sampling.TARGET_RTOL)
    assert np.allclose(sampling.advection_ratio(f_hat, a, d, r, n), psi, rtol=1e-9)
    lam = sampling.lam_from_ratio(r)
    assert ((lam > 0) & (lam < 1)).all()
    assert np.allclose(lam / (DIFFUSION_SCALE * (1 - lam)), r)
    for i in range(4):  # the definition, on the grid, derivative by derivative
        k = DIFFUSION_SCALE * (1 - lam[i]) * a[i]
        v = lam[i] * d[i]
        u = solve_one(f[i], k[0], k[1], k[2], v[0], v[1])
        measured = grid_ratio(u, k[0], k[1], k[2], v[0], v[1])
        assert abs(measured / psi[i] - 1) < 1e-9


def test_ratio_targets_must_be_positive(rng):
    p = sources.sample_weights(rng, np.array([0.2]))
    _, f_hat = sources.build_sources(p, 32, zero_mean=True)
    with pytest.raises(ValueError, match="> 0"):
        sampling.solve_ratio(f_hat, np.array([[1.0, 1.0, 0.0]]), np.array([[1.0, 0.0]]), [0.0], 32)
