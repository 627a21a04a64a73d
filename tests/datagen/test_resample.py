"""Spectral resampling against fields known in closed form, and the coefficient helpers."""

import numpy as np
import pytest

from datagen.media import conductivity, gaussian_random_fields
from datagen.resample import resample, sample_coefficients
from datagen.sampling import advection_psi
from datagen.solver import solve
from datagen.systems import DIFFUSION_SCALE, anisotropy, diffusion_tensor, unified_coefficients


def _wave(n: int) -> np.ndarray:
    """A band-limited field (wavenumbers up to 5) evaluated on an n x n grid."""
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x)
    return (
        np.sin(2 * np.pi * (3 * xx + 2 * yy))
        + 0.5 * np.cos(2 * np.pi * 5 * yy)
        + 0.25 * np.sin(2 * np.pi * (xx - 4 * yy))
        + 0.1
    )


@pytest.mark.parametrize(("n", "m"), [(32, 64), (64, 32), (128, 48), (16, 16)])
def test_resampling_a_band_limited_field_is_exact(n, m):
    assert np.allclose(resample(_wave(n), m), _wave(m), atol=1e-12)


def test_down_then_up_keeps_the_low_modes_and_batches(rng):
    f = rng.standard_normal((3, 64, 64))
    back = resample(resample(f, 32), 64)
    low = np.fft.rfft2(f)
    low[:, 16:-15, :] = 0
    low[:, :, 16:] = 0
    assert back.shape == f.shape
    assert np.allclose(back, np.fft.irfft2(low, s=(64, 64)), atol=1e-12)


def test_resample_rejects_bad_grids():
    with pytest.raises(ValueError, match="square"):
        resample(np.zeros((4, 6)), 4)
    with pytest.raises(ValueError, match="even"):
        resample(np.zeros((4, 4)), 5)


def test_diffusion_tensor_has_the_requested_eigenvalues():
    a = diffusion_tensor([3.0, 7.5], [0.3, 2.0])
    for row, e in zip(a, (3.0, 7.5), strict=True):
        k = np.array([[row[0], row[2]], [row[2], row[1]]])
        assert np.allclose(np.linalg.eigvalsh(k), [1.0, e])
    assert np.allclose(anisotropy(unified_coefficients(*(DIFFUSION_SCALE * a).T)), [3.0, 7.5])


def test_advection_psi_matches_the_solved_fields(rng):
    n = 32
    f = rng.standard_normal((2, n, n))
    f -= f.mean(axis=(1, 2), keepdims=True)
    k = DIFFUSION_SCALE * diffusion_tensor([2.0, 4.0], [0.5, 1.0])
    c = unified_coefficients(k[:, 0], k[:, 1], k[:, 2], [0.05, -0.02], [0.01, 0.03])
    u = solve("advection_diffusion", f, c)
    u_hat = np.fft.fft2(u)
    k_ = np.fft.fftfreq(n, 1 / n)
    ky, kx = np.meshgrid(k_, k_, indexing="ij")
    ky[n // 2, :] = 0  # odd factors use the Nyquist wavenumber as 0, as the solver does
    kx[:, n // 2] = 0
    adv = np.fft.ifft2(2j * np.pi * (c[:, 3, None, None] * kx + c[:, 4, None, None] * ky) * u_hat)
    diff = f - adv.real  # -div(K grad u) = f - v . grad u
    want = np.linalg.norm(adv.real, axis=(1, 2)) / np.linalg.norm(diff, axis=(1, 2))
    assert np.allclose(advection_psi(f, c), want, rtol=1e-6)


def test_coefficient_fields_keep_their_values_on_a_grid_that_divides_theirs():
    """A two-phase conductivity of contrast 100 at 128^2 on the 64^2 grid: point values,
    two phases and positive; spectral resampling rings below zero there. Grids that do not
    divide take the spectral path."""
    rng = np.random.default_rng(0)
    a = conductivity(gaussian_random_fields(rng, np.full(2, 0.1), 128), np.full(2, 100.0),
                     "two-phase")  # fmt: skip
    coarse = sample_coefficients(a, 64)
    np.testing.assert_array_equal(coarse, a[:, ::2, ::2])
    assert set(np.unique(coarse)) == set(np.unique(a)) and coarse.min() > 0
    assert resample(a, 64).min() < 0  # what the point values avoid
    np.testing.assert_array_equal(sample_coefficients(a, 96), resample(a, 96))
    np.testing.assert_array_equal(
        sample_coefficients(a[:, ::2, ::2], 128), resample(a[:, ::2, ::2], 128)
    )
    assert sample_coefficients(a, 128) is a  # its own grid: the field itself, as resample
