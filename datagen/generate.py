"""Dataset generation: seeded blocks of (source, solution, coefficients).

Each block of ``BLOCK_SIZE`` examples draws from its own random stream,
``SeedSequence(seed, spawn_key=(system, split, block))``, so a dataset is the
same whichever worker makes which block. Sources are built with their
spectrum (no forward FFT), the solve is one inverse rfft2 per example.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datagen import sampling, sources
from datagen.solver import divide_by_symbol
from datagen.spec import SPLITS, SplitSpec
from datagen.systems import DIFFUSION_SCALE, K11, K12, K22, N_COEFFICIENTS, SYSTEMS, V1, V2, W

#: Helmholtz samples whose solution exceeds this in absolute value are redrawn.
HELMHOLTZ_MAX_ABS = 2.0
_MAX_REDRAW_ROUNDS = 10_000


@dataclass
class Block:
    """Examples [start, start + len) of one split (float64; files store fields as float32)."""

    start: int
    sources: np.ndarray  # (B, n, n)
    solutions: np.ndarray  # (B, n, n)
    coefficients: np.ndarray  # (B, 6) float64, unified
    sparsity: np.ndarray  # (B,) float32
    psi: np.ndarray | None  # (B,) float64, advection-diffusion only

    def __len__(self) -> int:
        return self.sources.shape[0]


def block_rng(spec: SplitSpec, block: int) -> np.random.Generator:
    system_key = list(SYSTEMS).index(spec.system)
    ss = np.random.SeedSequence(spec.seed, spawn_key=(system_key, SPLITS.index(spec.split), block))
    return np.random.default_rng(ss)


def _solve_spectral(f_hat: np.ndarray, coefficients: np.ndarray, n: int):
    u_hat, projected = divide_by_symbol(f_hat, coefficients, n)
    return np.fft.irfft2(u_hat, s=(n, n)), projected


def _draw(spec: SplitSpec, rng: np.random.Generator, sparsity: np.ndarray):
    """Draw sources and coefficients for one batch: (f, f_hat, coefficients, psi)."""
    system, n, ranges = spec.pde, spec.resolution, spec.ranges
    b = sparsity.shape[0]
    weights = sources.sample_weights(rng, sparsity)
    coefficients = np.zeros((b, N_COEFFICIENTS))
    psi = None
    if system.name == "helmholtz":
        coefficients[:, K11] = coefficients[:, K22] = DIFFUSION_SCALE
        coefficients[:, W] = sampling.sample_omega(rng, b, ranges.omega)
        f, f_hat = sources.build_sources(weights, n, zero_mean=False)
        return f, f_hat, coefficients, psi
    a, _, _ = sampling.sample_diffusion(rng, b, ranges.eig)
    f, f_hat = sources.build_sources(weights, n, zero_mean=True)
    scale = np.full(b, DIFFUSION_SCALE)
    if system.name == "advection_diffusion":
        d = sampling.sample_directions(rng, b)
        target = rng.uniform(ranges.ratio[0], ranges.ratio[1], b)
        r, psi = sampling.solve_ratio(f_hat, a, d, target, n)
        lam = sampling.lam_from_ratio(r)
        scale *= 1.0 - lam
        coefficients[:, [V1, V2]] = lam[:, None] * d
    coefficients[:, [K11, K22, K12]] = scale[:, None] * a
    return f, f_hat, coefficients, psi


def generate_block(spec: SplitSpec, block: int) -> Block:
    """Generate block ``block`` of a split (deterministic in spec and block)."""
    start, stop = spec.block_bounds(block)
    n = spec.resolution
    rng = block_rng(spec, block)
    sparsity = sources.sparsity_for_indices(np.arange(start, stop))
    f, f_hat, coefficients, psi = _draw(spec, rng, sparsity)
    u, projected = _solve_spectral(f_hat, coefficients, n)
    if spec.pde.name == "helmholtz":
        # Redraw (source and w) every example whose solution is too large.
        for _ in range(_MAX_REDRAW_ROUNDS):
            bad = np.flatnonzero(np.abs(u).max(axis=(1, 2)) > HELMHOLTZ_MAX_ABS)
            if bad.size == 0:
                break
            f[bad], redrawn_hat, coefficients[bad], _ = _draw(spec, rng, sparsity[bad])
            u[bad], projected[bad] = _solve_spectral(redrawn_hat, coefficients[bad], n)
            f_hat[bad] = redrawn_hat
        else:
            raise RuntimeError("Helmholtz redraw did not finish; is the omega range resonant?")
        if projected.any():
            # Resonant modes were zeroed in f_hat: store the projected source.
            f[projected] = np.fft.irfft2(f_hat[projected], s=(n, n))
    return Block(
        start=start,
        sources=f,
        solutions=u,
        coefficients=coefficients,
        sparsity=sparsity.astype(np.float32),
        psi=psi,
    )
