"""Coefficient samplers of the paper, vectorised over a batch.

- Diffusion tensors: K = 0.01 R(-t) diag(1, e) R(t), e ~ U(e1, e2), t ~ U(0, 2 pi).
- Advection-diffusion: direction ~ U(0, 2 pi); K_eff = 0.01 (1 - lam) A and
  v = lam d, as in the authors' files, with lam solved per example so that
  Psi = ||v . grad u|| / ||div(K grad u)|| lands on a target ~ U(psi1, psi2).
  Psi depends on (K, v) only through r = lam / (0.01 (1 - lam)), and is
  computed from the source spectrum by Parseval: no inverse FFT.
- Helmholtz wavenumbers: integers ~ U{w1..w2} (the redraw when max |u| > 2 is
  the generator's, since it needs the solution).
"""

from __future__ import annotations

import numpy as np

from datagen.symbol import wavenumbers
from datagen.systems import DIFFUSION_SCALE, K11, K12, K22, V1, V2, diffusion_tensor

#: Newton stops once every Psi is within this fraction of its target (the contract
#: is 1%); the Psi returned is the one reached, evaluated exactly at the final r.
TARGET_RTOL = 1e-3
_MAX_NEWTON = 60
# Modes whose weighted contribution is below this fraction of the largest are
# dropped from the sums (a relative error in Psi below ~1e-7).
_NEGLIGIBLE = 1e-10


def sample_diffusion(
    rng: np.random.Generator, b: int, eig_range: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unscaled tensors A = R(-t) diag(1, e) R(t).

    Returns ``(a, e, t)``: a (B, 3) holding [a11, a22, a12], the eigenvalue e
    and the angle t, each (B,).
    """
    e = rng.uniform(eig_range[0], eig_range[1], b)
    t = rng.uniform(0.0, 2.0 * np.pi, b)
    return diffusion_tensor(e, t), e, t


def sample_directions(rng: np.random.Generator, b: int) -> np.ndarray:
    """Unit velocity directions (B, 2), angle ~ U(0, 2 pi)."""
    phi = rng.uniform(0.0, 2.0 * np.pi, b)
    return np.stack([np.cos(phi), np.sin(phi)], axis=1)


def sample_omega(rng: np.random.Generator, b: int, omega_range: tuple[int, int]) -> np.ndarray:
    """Integer Helmholtz wavenumbers ~ U{w1..w2} (both ends included), as float64."""
    return rng.integers(int(omega_range[0]), int(omega_range[1]) + 1, b).astype(np.float64)


def _half_spectrum_multiplicity(n: int) -> np.ndarray:
    """How many full-spectrum modes each rfft2 column stands for (1 or 2), (1, n//2 + 1)."""
    mult = np.full((1, n // 2 + 1), 2.0)
    mult[0, 0] = mult[0, n // 2] = 1.0
    return mult


def _mode_tables(n: int, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the kept modes: rows [kx^2, ky^2, 2 kx ky] (diffusion) and [kx, ky] (advection)."""
    ky, kx, ky_odd, kx_odd = wavenumbers(n)
    shape = (n, n // 2 + 1)
    kx2, ky2 = np.broadcast_to(kx * kx, shape)[keep], np.broadcast_to(ky * ky, shape)[keep]
    kxo, kyo = np.broadcast_to(kx_odd, shape)[keep], np.broadcast_to(ky_odd, shape)[keep]
    diffusion = (4.0 * np.pi**2) * np.stack([kx2, ky2, 2.0 * kxo * kyo])
    advection = (2.0 * np.pi) * np.stack([kxo, kyo])
    return diffusion, advection


def advection_ratio(
    f_hat: np.ndarray, a: np.ndarray, d: np.ndarray, r: np.ndarray, n: int
) -> np.ndarray:
    """Psi over the whole spectrum for sources f_hat (rfft2), tensors A (B, 3) as
    [a11, a22, a12], directions d (B, 2) and ratios r (B,): the operator is
    proportional to -div(A grad u) + r d . grad u.
    """
    keep = np.ones((n, n // 2 + 1), dtype=bool)
    keep[0, 0] = False
    diffusion, advection = _mode_tables(n, keep)
    w = (np.abs(f_hat) ** 2 * _half_spectrum_multiplicity(n))[:, keep]
    diff = a @ diffusion
    adv = np.asarray(r, dtype=np.float64)[:, None] * (d @ advection)
    den = diff * diff + adv * adv
    return np.sqrt((w * adv * adv / den).sum(axis=1) / (w * diff * diff / den).sum(axis=1))


def advection_psi(sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """Psi = ||v . grad u|| / ||div(K grad u)|| of advection-diffusion problems, (B,).

    sources (B, n, n), unified coefficients (B, 6); computed from the source
    spectrum, without solving.
    """
    f = np.asarray(sources, dtype=np.float64)
    c = np.asarray(coefficients, dtype=np.float64)
    n = f.shape[-1]
    a, v = c[:, [K11, K22, K12]], c[:, [V1, V2]]
    return advection_ratio(np.fft.rfft2(f), a, v, np.ones(len(c)), n)


def solve_ratio(
    f_hat: np.ndarray, a: np.ndarray, d: np.ndarray, target: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The r > 0 per example with advection_ratio(..., r) == target.

    Returns ``(r, psi)``: psi is the ratio reached at r, within TARGET_RTOL of
    the target.
    Psi(r)^2 = r^2 N(r) / M(r) with N = sum w V^2 q, M = sum w D^2 q,
    q = 1 / (D^2 + r^2 V^2): N increases and M decreases in r, so Psi is
    strictly increasing and Newton's method on log Psi vs log r, started from
    the small-r limit, converges in a handful of steps. Modes that carry a
    negligible share for every example (w |k|^4 below 1e-10 of the largest)
    are left out of the sums.
    """
    target = np.asarray(target, dtype=np.float64)
    if np.any(target <= 0):
        raise ValueError("advection/diffusion ratio targets must be > 0")
    ky, kx, _, _ = wavenumbers(n)
    mult = _half_spectrum_multiplicity(n)
    bound = np.square(np.abs(f_hat).max(axis=0)) * mult * (kx * kx + ky * ky) ** 2
    keep = bound > _NEGLIGIBLE * bound.max()
    keep[0, 0] = False
    diffusion, advection = _mode_tables(n, keep)
    kept = f_hat[:, keep]
    w = (kept.real**2 + kept.imag**2) * np.broadcast_to(mult, keep.shape)[keep]
    d2 = np.square(a @ diffusion)
    v2 = np.square(d @ advection)
    wd2, wv2 = w * d2, w * v2
    wv4, wd2v2 = wv2 * v2, wd2 * v2
    small = np.sqrt(np.einsum("bm,bm->b", wv2, 1.0 / d2) / w.sum(axis=1))
    log_r = np.log(target / small)
    log_t = np.log(target)
    for _ in range(_MAX_NEWTON):
        r2 = np.exp(2.0 * log_r)
        q = v2 * r2[:, None]
        q += d2
        np.reciprocal(q, out=q)
        nq = np.einsum("bm,bm->b", wv2, q)
        mq = np.einsum("bm,bm->b", wd2, q)
        g = 0.5 * np.log(r2 * nq / mq) - log_t
        if np.all(np.abs(g) < TARGET_RTOL / 2):  # |log(psi/target)| < rtol/2
            return np.exp(log_r), np.exp(g + log_t)
        q *= q
        slope = 1.0 - r2 * (
            np.einsum("bm,bm->b", wv4, q) / nq - np.einsum("bm,bm->b", wd2v2, q) / mq
        )
        log_r -= np.clip(g / np.maximum(slope, 1e-3), -2.0, 2.0)
    raise RuntimeError("advection ratio solve did not converge")


def lam_from_ratio(r: np.ndarray) -> np.ndarray:
    """lam in (0, 1) with lam / (0.01 (1 - lam)) = r."""
    s = DIFFUSION_SCALE * np.asarray(r, dtype=np.float64)
    return s / (1.0 + s)
