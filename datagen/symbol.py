"""The constant-coefficient operator's Fourier symbol on the rfft2 half-spectrum, and its inverse.

    L(k) = 4 pi^2 (k11 kx^2 + k22 ky^2 + 2 k12 kx ky) + 2 pi i (v1 kx + v2 ky) - w.

On an even grid the Nyquist wavenumber -n/2 has no sign, so the odd factors
(the cross term and the advection term) use it as 0; that keeps the symbol
Hermitian, the solution real, and ``apply(solve(f)) == f`` exact to rounding.
Where the symbol vanishes there is no solution: the mean mode of Poisson and
advection-diffusion, and Helmholtz resonances, whose Fourier modes are zeroed
in f and u (the authors' convention).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from datagen.coefficients import K11, K12, K22, V1, V2, W

#: A symbol smaller than this many ulps of its terms counts as exactly zero.
_SINGULAR_ULPS = 64


@lru_cache(maxsize=16)
def wavenumbers(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Integer wavenumbers on the rfft2 half-spectrum of an n x n grid.

    Returns ``(ky, kx, ky_odd, kx_odd)`` shaped (n, 1) and (1, n//2 + 1); the
    ``_odd`` variants have the Nyquist wavenumber set to 0 (for odd factors).
    """
    ky = np.fft.fftfreq(n, 1.0 / n)[:, None]
    kx = np.fft.rfftfreq(n, 1.0 / n)[None, :]
    ky_odd, kx_odd = ky.copy(), kx.copy()
    ky_odd[n // 2, 0] = 0.0
    kx_odd[0, n // 2] = 0.0
    for a in (ky, kx, ky_odd, kx_odd):
        a.setflags(write=False)
    return ky, kx, ky_odd, kx_odd


def symbol_parts(coefficients: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The symbol's real part (diffusion - w) and imaginary part (advection, or None).

    ``coefficients`` is a validated (B, 6) float64 array; both parts are
    (B, n, n//2 + 1).
    """
    ky, kx, ky_odd, kx_odd = wavenumbers(n)
    c = coefficients[:, :, None, None]
    four_pi2 = 4.0 * np.pi**2
    real = (four_pi2 * c[:, K11]) * (kx * kx) + (four_pi2 * c[:, K22]) * (ky * ky)
    if np.any(coefficients[:, K12] != 0):
        real += (2 * four_pi2 * c[:, K12]) * (kx_odd * ky_odd)
    if np.any(coefficients[:, W] != 0):
        real -= c[:, W]
    imag = None
    if np.any(coefficients[:, [V1, V2]] != 0):
        imag = (2 * np.pi * c[:, V1]) * kx_odd + (2 * np.pi * c[:, V2]) * ky_odd
    return real, imag


def symbol(coefficients: np.ndarray, n: int) -> np.ndarray:
    """The operator's Fourier symbol on the rfft2 half-spectrum, (B, n, n//2 + 1)."""
    real, imag = symbol_parts(np.atleast_2d(np.asarray(coefficients, dtype=np.float64)), n)
    return real if imag is None else real + 1j * imag


def singular_modes(coefficients: np.ndarray, n: int) -> np.ndarray:
    """Boolean (B, n, n//2 + 1): where the symbol is zero (to rounding)."""
    coefficients = np.atleast_2d(np.asarray(coefficients, dtype=np.float64))
    real, imag = symbol_parts(coefficients, n)
    rows, masks = _singular_rows(real, imag, coefficients, n)
    singular = np.zeros(real.shape, dtype=bool)
    singular[rows] = masks
    return singular


def _singular_rows(
    real: np.ndarray, imag: np.ndarray | None, coefficients: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The examples whose symbol has zeros, and their zero masks.

    Without w the diffusion part is positive off the mean mode (K is SPD): the
    mean mode is the only zero. With w, a mode counts as zero when the symbol
    is within a few ulps of the terms that cancel (the diffusion part and w);
    only examples whose smallest |symbol| could be that small are looked at.
    """
    b = real.shape[0]
    if not np.any(coefficients[:, W]):
        masks = np.zeros((b, *real.shape[1:]), dtype=bool)
        masks[:, 0, 0] = True
        return np.arange(b), masks
    tol = _SINGULAR_ULPS * np.finfo(np.float64).eps
    magnitude = np.abs(real) if imag is None else np.hypot(real, imag)
    c = np.abs(coefficients)
    largest_terms = (4.0 * np.pi**2) * (c[:, K11] + c[:, K22]) * (n / 2) ** 2 + c[:, W]
    rows = np.flatnonzero(magnitude.min(axis=(1, 2)) <= tol * largest_terms)
    if rows.size == 0:
        return rows, np.zeros((0, *real.shape[1:]), dtype=bool)
    ky, kx, _, _ = wavenumbers(n)
    cr = c[rows, :, None, None]
    scale = (4.0 * np.pi**2) * (cr[:, K11] * (kx * kx) + cr[:, K22] * (ky * ky)) + cr[:, W]
    return rows, magnitude[rows] <= tol * scale


def divide_by_symbol(
    f_hat: np.ndarray, coefficients: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """u_hat = f_hat / L(k), with the zeroed-mode convention where L vanishes.

    Where the symbol is zero, ``f_hat`` is set to zero in place (the source is
    projected onto the solvable modes) and so is ``u_hat``. Returns
    ``(u_hat, projected)`` with ``projected`` (B,) telling which examples had a
    non-zero singular mode removed.
    """
    real, imag = symbol_parts(coefficients, n)
    if not np.any(coefficients[:, W]):  # the mean mode is the only zero: index it directly
        projected = f_hat[:, 0, 0] != 0
        f_hat[:, 0, 0] = 0.0
        real[:, 0, 0] = 1.0
    else:
        rows, masks = _singular_rows(real, imag, coefficients, n)
        projected = np.zeros(real.shape[0], dtype=bool)
        for i, mask in zip(rows, masks, strict=True):
            projected[i] = np.any(f_hat[i][mask] != 0)
            f_hat[i][mask] = 0.0
            real[i][mask] = 1.0
    if imag is None:
        u_hat = np.empty_like(f_hat)
        np.divide(f_hat.real, real, out=u_hat.real)
        np.divide(f_hat.imag, real, out=u_hat.imag)
        return u_hat, projected
    symbol_ = np.empty(f_hat.shape, dtype=np.complex128)
    symbol_.real = real
    symbol_.imag = imag
    np.divide(f_hat, symbol_, out=symbol_)
    return symbol_, projected
