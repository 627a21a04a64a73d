"""Spectral resampling of periodic fields between grid sizes.

A field on an n x n periodic grid is a trigonometric polynomial; resampling
to m x m keeps its Fourier modes with |k| < min(n, m) / 2 and drops the rest
(the Nyquist modes too, whose sign is ambiguous on an even grid). A field
band-limited below both Nyquist frequencies is resampled exactly, and
``resample(resample(f, m), n) == f`` for such a field.
"""

from __future__ import annotations

import numpy as np
import scipy.fft as sfft


def resample(fields: np.ndarray, m: int) -> np.ndarray:
    """(..., n, n) periodic fields -> (..., m, m), float64 (float32 for float32 fields, in
    single precision throughout: a model's inputs and answers); the same array if n == m."""
    single = np.asarray(fields).dtype == np.float32
    f = np.asarray(fields, dtype=np.float32 if single else np.float64)
    n = f.shape[-1]
    if f.shape[-2] != n:
        raise ValueError(f"expected square fields (..., n, n), got {f.shape}")
    if m < 2 or m % 2:
        raise ValueError(f"the target grid size must be even and >= 2, got {m}")
    if m == n:
        return f
    keep = min(n, m) // 2  # wavenumbers 0..keep-1 of either sign; the Nyquist mode goes
    f_hat = sfft.rfft2(f)
    out = np.zeros((*f.shape[:-2], m, m // 2 + 1), dtype=f_hat.dtype)
    out[..., :keep, :keep] = f_hat[..., :keep, :keep]
    out[..., m - keep + 1 :, :keep] = f_hat[..., n - keep + 1 :, :keep]
    out *= (m / n) ** 2
    return sfft.irfft2(out, s=(m, m), overwrite_x=True)


def sample_coefficients(fields: np.ndarray, m: int) -> np.ndarray:
    """(..., n, n) coefficient fields -> (..., m, m), float64: their point values on the
    coarser grid where m divides n, else :func:`resample`.

    Why not always spectral: coefficient fields jump (two-phase media), and a truncated
    spectrum rings at a jump by about 9% of it, which takes a conductivity of contrast
    above ~12 below zero. Point values keep every value the field takes, as datagen makes
    fields on the grid they are used on.
    """
    f = np.asarray(fields, dtype=np.float64)
    n = f.shape[-1]
    if n == m:
        return f
    if m < n and n % m == 0 and f.shape[-2] == n:
        step = n // m
        return f[..., ::step, ::step]
    return resample(f, m)
