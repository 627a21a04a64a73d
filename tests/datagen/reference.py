"""A second, deliberately plain implementation of the paper's data generation.

One example at a time, a Python loop over the 144 Gaussians, full complex
``fft2`` with the authors' wavenumber convention (+n/2 at Nyquist, real part
of the inverse). It shares no code with ``datagen`` beyond numpy, so tests can
check the batched solver, the separable source builder and the files against
it, and it writes files in the authors' exact layout.
"""

from __future__ import annotations

import numpy as np


def wavenumbers_authors(n: int) -> np.ndarray:
    return np.concatenate([np.arange(0, n // 2 + 1), np.arange(-n // 2 + 1, 0)]).astype(float)


def gaussian_source(weights: np.ndarray, n: int, zero_mean: bool) -> np.ndarray:
    """Sum of 144 Gaussians on a 12 x 12 grid of centres, by a loop over the Gaussians."""
    sigma, spacing = 1 / 32, 2 / 32
    x = np.arange(n) / n
    xg, yg = np.meshgrid(x, x)
    cs = 0.5 + (np.arange(12) - 5.5) * spacing
    cx, cy = np.meshgrid(cs, cs)
    f = np.zeros((n, n))
    for p, x0, y0 in zip(np.ravel(weights), cx.ravel(), cy.ravel(), strict=True):
        f += p * np.exp(-((xg - x0) ** 2 + (yg - y0) ** 2) / (2 * sigma**2))
    f /= f.max()
    if zero_mean:
        f -= f.mean()
    return f


def solve_one(f: np.ndarray, k11, k22, k12, v1=0.0, v2=0.0, w=0.0) -> np.ndarray:
    """-div(K grad u) + v . grad u - w u = f for one field, authors' conventions."""
    n = f.shape[0]
    k = wavenumbers_authors(n)
    kx, ky = k[None, :], k[:, None]
    symbol = (
        4 * np.pi**2 * (k11 * kx**2 + k22 * ky**2 + 2 * k12 * kx * ky)
        + 2j * np.pi * (v1 * kx + v2 * ky)
        - w
    )
    f_hat = np.fft.fft2(f)
    with np.errstate(divide="ignore", invalid="ignore"):
        u_hat = np.where(symbol == 0, 0, f_hat / symbol)
    return np.real(np.fft.ifft2(u_hat))


def diffusion_tensor(e: float, theta: float) -> np.ndarray:
    """R(-t) diag(1, e) R(t) by explicit matrix products."""

    def rot(t):
        return np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])

    return rot(-theta) @ np.diag([1.0, e]) @ rot(theta)


def grid_ratio(u: np.ndarray, k11, k22, k12, v1, v2) -> float:
    """Psi = ||v . grad u|| / ||div(K grad u)|| with derivatives taken one at a time."""
    n = u.shape[0]
    k = wavenumbers_authors(n)
    kx, ky = k[None, :], k[:, None]
    u_hat = np.fft.fft2(u)

    def d(field_hat, kk):
        return np.real(np.fft.ifft2(2j * np.pi * kk * field_hat))

    ux, uy = d(u_hat, kx), d(u_hat, ky)
    qx, qy = k11 * ux + k12 * uy, k12 * ux + k22 * uy
    div = d(np.fft.fft2(qx), kx) + d(np.fft.fft2(qy), ky)
    return float(np.linalg.norm(v1 * ux + v2 * uy) / np.linalg.norm(div))
