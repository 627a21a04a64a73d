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
from datagen.spec import SPLITS, SplitSpec
from datagen.symbol import divide_by_symbol
from datagen.systems import DIFFUSION_SCALE, K11, K12, K22, N_COEFFICIENTS, SYSTEMS, V1, V2, W

#: Helmholtz samples whose solution exceeds this in absolute value are redrawn.
HELMHOLTZ_MAX_ABS = 2.0
_MAX_REDRAW_ROUNDS = 10_000


#: Examples computed together inside a block: small enough that a chunk's arrays
#: stay in cache, large enough to vectorise. Does not change the data.
CHUNK = 32


@dataclass
class Block:
    """Examples [start, start + len) of one split."""

    start: int
    sources: np.ndarray  # (B, n, n), float32 unless asked otherwise
    solutions: np.ndarray  # (B, n, n)
    coefficients: np.ndarray  # (B, 6) float64, unified
    sparsity: np.ndarray  # (B,) float32
    psi: np.ndarray | None  # (B,) float64, advection-diffusion only

    def __len__(self) -> int:
        return self.sources.shape[0]


@dataclass
class _Draws:
    """The random choices of a batch; everything else follows from them."""

    weights: np.ndarray  # (B, 12, 12)
    a: np.ndarray | None = None  # (B, 3) unscaled diffusion tensors
    d: np.ndarray | None = None  # (B, 2) velocity directions
    target: np.ndarray | None = None  # (B,) Psi targets
    omega: np.ndarray | None = None  # (B,) Helmholtz wavenumbers


def block_rng(spec: SplitSpec, block: int) -> np.random.Generator:
    system_key = list(SYSTEMS).index(spec.system)
    ss = np.random.SeedSequence(spec.seed, spawn_key=(system_key, SPLITS.index(spec.split), block))
    return np.random.default_rng(ss)


def _draw(spec: SplitSpec, rng: np.random.Generator, sparsity: np.ndarray) -> _Draws:
    b, ranges = sparsity.shape[0], spec.ranges
    draws = _Draws(weights=sources.sample_weights(rng, sparsity))
    if spec.pde.name == "helmholtz":
        draws.omega = sampling.sample_omega(rng, b, ranges.omega)
        return draws
    draws.a, _, _ = sampling.sample_diffusion(rng, b, ranges.eig)
    if spec.pde.name == "advection_diffusion":
        draws.d = sampling.sample_directions(rng, b)
        draws.target = rng.uniform(ranges.ratio[0], ranges.ratio[1], b)
    return draws


def _coefficients(spec: SplitSpec, draws: _Draws, c: slice, f_hat: np.ndarray):
    """Unified coefficients (and Psi) of the examples ``c`` of ``draws``."""
    b, n = f_hat.shape[0], spec.resolution
    coefficients = np.tile(spec.pde.fixed_coefficients(), (b, 1))
    if draws.omega is not None:
        coefficients[:, W] = draws.omega[c]
        return coefficients, None
    scale = np.full(b, DIFFUSION_SCALE)
    psi = None
    if draws.d is not None:
        r, psi = sampling.solve_ratio(f_hat, draws.a[c], draws.d[c], draws.target[c], n)
        lam = sampling.lam_from_ratio(r)
        scale *= 1.0 - lam
        coefficients[:, [V1, V2]] = lam[:, None] * draws.d[c]
    coefficients[:, [K11, K22, K12]] = scale[:, None] * draws.a[c]
    return coefficients, psi


def _compute(spec: SplitSpec, draws: _Draws, rows: np.ndarray, out: Block) -> np.ndarray | None:
    """Sources and solutions of ``draws`` into ``out`` at ``rows``, chunk by chunk.

    Returns max |u| per example for Helmholtz (its redraw criterion), else None.
    """
    n, zero_mean = spec.resolution, spec.pde.zero_mean
    peak = np.empty(rows.size) if spec.pde.name == "helmholtz" else None
    for lo in range(0, rows.size, CHUNK):
        c = slice(lo, lo + CHUNK)
        f, f_hat = sources.build_sources(draws.weights[c], n, zero_mean=zero_mean)
        coefficients, psi = _coefficients(spec, draws, c, f_hat)
        u_hat, projected = divide_by_symbol(f_hat, coefficients, n)
        u = np.fft.irfft2(u_hat, s=(n, n))
        if projected.any():  # resonant modes were zeroed in f_hat: keep the projected source
            f[projected] = np.fft.irfft2(f_hat[projected], s=(n, n))
        at = rows[c]
        out.sources[at] = f
        out.solutions[at] = u
        out.coefficients[at] = coefficients
        if psi is not None:
            out.psi[at] = psi
        if peak is not None:
            peak[c] = np.abs(u).max(axis=(1, 2))
    return peak


def generate_block(spec: SplitSpec, block: int, *, dtype: np.dtype = np.float32) -> Block:
    """Generate block ``block`` of a split (deterministic in spec and block).

    Everything is computed in float64; ``dtype`` is what the fields are kept
    in (float32, as stored in files, by default).
    """
    start, stop = spec.block_bounds(block)
    b, n = stop - start, spec.resolution
    rng = block_rng(spec, block)
    sparsity = sources.sparsity_for_indices(np.arange(start, stop))
    out = Block(
        start=start,
        sources=np.empty((b, n, n), dtype=dtype),
        solutions=np.empty((b, n, n), dtype=dtype),
        coefficients=np.empty((b, N_COEFFICIENTS)),
        sparsity=sparsity.astype(np.float32),
        psi=np.empty(b) if spec.pde.name == "advection_diffusion" else None,
    )
    rows = np.arange(b)
    for _ in range(_MAX_REDRAW_ROUNDS):
        peak = _compute(spec, _draw(spec, rng, sparsity[rows]), rows, out)
        if peak is None:
            return out
        # Helmholtz: redraw (source and w) every example whose solution is too large.
        rows = rows[peak > HELMHOLTZ_MAX_ABS]
        if rows.size == 0:
            return out
    raise RuntimeError("Helmholtz redraw did not finish; is the omega range resonant?")
