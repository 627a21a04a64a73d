"""Field laws for heterogeneous media, vectorised over a batch.

All laws start from g, a zero-mean Gaussian random field on the periodic grid
with the squared-exponential covariance exp(-r^2 / (2 l^2)) of correlation
length l: its spectral density on the torus is proportional to
exp(-2 pi^2 l^2 |k|^2), so g is white noise filtered by the square root of
that density (one FFT pair; the mean mode set to zero, so the grid mean of g
is exactly 0).

- Conductivity a(x), multiplying a system's constant tensor K0 (K = a K0):
  ``smooth`` a = exp(ln(c)/2 s) with s = g mapped affinely onto [-1, 1], so
  min a = 1/sqrt(c), max a = sqrt(c) and the contrast max a / min a is
  exactly c; ``two-phase`` a = sqrt(c) where g > 0 and 1/sqrt(c) elsewhere
  (binary media of contrast c, the classic Darcy benchmark's kind).
- Helmholtz wavenumber w(x) = w0 (1 + delta s): ``smooth`` s = g / max|g|
  (zero grid mean, so mean w = w0, and |w - w0| <= delta w0); ``two-phase``
  s = sign(g) (two layers-like phases w0 (1 +- delta)).

Parameters per example: contrast c log-uniform in its range, length l and
variation delta uniform in theirs.
"""

from __future__ import annotations

import numpy as np

FIELD_KINDS: tuple[str, ...] = ("smooth", "two-phase")


def gaussian_random_fields(rng: np.random.Generator, length: np.ndarray, n: int) -> np.ndarray:
    """Zero-mean Gaussian random fields (B, n, n), one per correlation length in ``length``."""
    length = np.asarray(length, dtype=np.float64)
    b = length.shape[0]
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]
    kx = np.fft.rfftfreq(n, 1.0 / n)[None, :]
    k2 = kx * kx + ky * ky
    amplitude = np.exp(-(np.pi**2) * length[:, None, None] ** 2 * k2)  # sqrt of the density
    # The spectrum of real white noise has the symmetries a real field needs (complex noise
    # drawn on the half-spectrum would lose half the variance of the kx = 0 column).
    spectrum = np.fft.rfft2(rng.standard_normal((b, n, n))) * amplitude
    spectrum[:, 0, 0] = 0.0
    return np.fft.irfft2(spectrum, s=(n, n))


def conductivity(g: np.ndarray, contrast: np.ndarray, kind: str) -> np.ndarray:
    """Conductivity fields a (B, n, n) of contrast exactly ``contrast`` (B,) from fields g."""
    half = np.log(np.asarray(contrast, dtype=np.float64))[:, None, None] / 2
    if kind == "smooth":
        lo = g.min(axis=(1, 2), keepdims=True)
        hi = g.max(axis=(1, 2), keepdims=True)
        return np.exp(half * (2.0 * (g - lo) / (hi - lo) - 1.0))
    if kind == "two-phase":
        return np.exp(np.where(g > 0, half, -half))
    raise ValueError(f"unknown field law {kind!r}; choose one of {', '.join(FIELD_KINDS)}")


def wavenumber_field(g: np.ndarray, w0: np.ndarray, variation: np.ndarray, kind: str) -> np.ndarray:
    """Helmholtz wavenumber fields w0 (1 + delta s) (B, n, n) from fields g."""
    if kind == "smooth":
        s = g / np.abs(g).max(axis=(1, 2), keepdims=True)
    elif kind == "two-phase":
        s = np.where(g > 0, 1.0, -1.0)
    else:
        raise ValueError(f"unknown field law {kind!r}; choose one of {', '.join(FIELD_KINDS)}")
    w0 = np.asarray(w0, dtype=np.float64)[:, None, None]
    return w0 * (1.0 + np.asarray(variation, dtype=np.float64)[:, None, None] * s)


def sample_contrast(rng: np.random.Generator, b: int, contrast: tuple[float, float]) -> np.ndarray:
    """Contrasts log-uniform in [c1, c2], (B,)."""
    lo, hi = np.log(contrast[0]), np.log(contrast[1])
    return np.exp(rng.uniform(lo, hi, b))
