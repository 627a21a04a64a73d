"""The paper's source fields: weighted sums of a 12 x 12 grid of Gaussians.

A Gaussian at (cx, cy) is separable, exp(-(x-cx)^2/2s^2) * exp(-(y-cy)^2/2s^2),
so a whole source is ``f = G^T P G`` with G the (12, n) table of 1-D profiles
and P the (12, 12) weights indexed [row = y centre, column = x centre]. Its
rfft2 is separable the same way, ``F_full^T P F_half``, so the generator never
runs a forward FFT. The Gaussians are not wrapped around the periodic
boundary, as in the authors' generator (their tails there are below 4e-6).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

GRID = 12
N_GAUSSIANS = GRID * GRID
SIGMA = 1.0 / 32.0
SPACING = 2.0 * SIGMA
CENTER = 0.5
#: Sparsity levels (probability that a Gaussian is off), in equal shares.
SPARSITY_LEVELS: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)
#: Active weights are drawn from U(WEIGHT_MIN, WEIGHT_MAX).
WEIGHT_MIN, WEIGHT_MAX = 1e-3, 1.0


def centers() -> np.ndarray:
    """The 12 centre coordinates along one axis, symmetric about 0.5."""
    return CENTER + (np.arange(GRID) - (GRID - 1) / 2.0) * SPACING


@lru_cache(maxsize=8)
def profiles(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """1-D Gaussian profiles on an n-point grid and their DFTs.

    Returns ``(G, G_full, G_half)``: G (12, n) real, G_full = fft(G) (12, n),
    G_half = rfft(G) (12, n//2 + 1).
    """
    x = np.arange(n) / n
    g = np.exp(-((x[None, :] - centers()[:, None]) ** 2) / (2.0 * SIGMA**2))
    out = (g, np.fft.fft(g, axis=1), np.fft.rfft(g, axis=1))
    for a in out:
        a.setflags(write=False)
    return out


def sparsity_for_indices(indices: np.ndarray) -> np.ndarray:
    """Sparsity level of each example, by its index in the split (interleaved, so
    any prefix of a dataset holds the levels in equal shares)."""
    return np.asarray(SPARSITY_LEVELS)[np.asarray(indices) % len(SPARSITY_LEVELS)]


def sample_weights(rng: np.random.Generator, sparsity: np.ndarray) -> np.ndarray:
    """Gaussian weights (B, 12, 12): each on with probability 1 - s, weight ~ U(1e-3, 1).

    An example whose weights all came out zero gets one random Gaussian switched on.
    """
    sparsity = np.asarray(sparsity, dtype=np.float64)
    b = sparsity.shape[0]
    on = rng.random((b, N_GAUSSIANS)) >= sparsity[:, None]
    weights = rng.uniform(WEIGHT_MIN, WEIGHT_MAX, (b, N_GAUSSIANS)) * on
    empty = np.flatnonzero(~on.any(axis=1))
    if empty.size:
        weights[empty, rng.integers(0, N_GAUSSIANS, empty.size)] = rng.uniform(
            WEIGHT_MIN, WEIGHT_MAX, empty.size
        )
    return weights.reshape(b, GRID, GRID)


def build_sources(weights: np.ndarray, n: int, *, zero_mean: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sources and their rfft2 from Gaussian weights (B, 12, 12).

    Each source is divided by its maximum; with ``zero_mean`` its mean is then
    removed. Returns ``(f (B, n, n) float64, f_hat (B, n, n//2 + 1) complex128)``
    with ``f_hat == rfft2(f)`` to rounding.
    """
    g, g_full, g_half = profiles(n)
    p = np.asarray(weights, dtype=np.float64)
    f = np.matmul(g.T, np.matmul(p, g))
    peak = f.max(axis=(1, 2))
    f /= peak[:, None, None]
    f_hat = np.matmul(g_full.T, np.matmul(p / peak[:, None, None], g_half))
    if zero_mean:
        f -= (f_hat[:, 0, 0].real / (n * n))[:, None, None]
        f_hat[:, 0, 0] = 0.0
    return f, f_hat
