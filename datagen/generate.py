"""Dataset generation: seeded blocks of (source, solution, coefficients).

Each block of ``BLOCK_SIZE`` examples draws from its own random stream,
``SeedSequence(seed, spawn_key=(system, split, block))``, so a dataset is the
same whichever worker makes which block. Sources are built with their
spectrum (no forward FFT); with constant coefficients the solve is one
inverse rfft2 per example.

With a field law (:class:`datagen.spec.FieldLaw`) the coefficients that vary
are drawn as fields after everything else (so a constant-coefficient dataset
is unchanged by the law's existence), rounded to float32 (the stored fields
then define the problem that was solved), and the Krylov solver runs to the
law's tolerance; Helmholtz examples it cannot solve are redrawn like those
whose solution is too large.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from datagen import media, sampling, sources
from datagen.coefficients import COEFFICIENT_NAMES, broadcast_fields, reference, with_fields
from datagen.dataset import PER_EXAMPLE
from datagen.solver import ConvergenceError, Solution, solve_detailed
from datagen.spec import SPLITS, SplitSpec
from datagen.symbol import divide_by_symbol
from datagen.systems import DIFFUSION_SCALE, K11, K12, K22, N_COEFFICIENTS, SYSTEMS, V1, V2, W

#: Helmholtz samples whose solution exceeds this in absolute value are redrawn.
HELMHOLTZ_MAX_ABS = 2.0
_MAX_REDRAW_ROUNDS = 10_000


#: Examples computed together inside a block: small enough that a chunk's arrays
#: stay in cache, large enough to vectorise. Does not change the data.
CHUNK = 32


def extra_columns(spec: SplitSpec) -> tuple[str, ...]:
    """Per-example arrays a block of ``spec`` carries beyond the fixed ones
    (names of :data:`datagen.dataset.PER_EXAMPLE`)."""
    if spec.field_law is None:
        return ()
    law = ("variation",) if spec.pde.name == "helmholtz" else ("contrast",)
    psi = ("psi_field",) if spec.pde.name == "advection_diffusion" else ()
    return (*law, "length", "iterations", "relative_residual", *psi)


@dataclass
class Block:
    """Examples [start, start + len) of one split."""

    start: int
    sources: np.ndarray  # (B, n, n), float32 unless asked otherwise
    solutions: np.ndarray  # (B, n, n)
    coefficients: np.ndarray  # (B, 6) float64, unified (reference values where fields vary)
    sparsity: np.ndarray  # (B,) float32
    psi: np.ndarray | None  # (B,) float64, advection-diffusion only
    coefficient_fields: np.ndarray | None = None  # (B, F, n, n) float32: the varying columns
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # see extra_columns
    field_columns: tuple[str, ...] = ()  # the names of coefficient_fields' columns

    def __len__(self) -> int:
        return self.coefficients.shape[0]

    def unified(self) -> np.ndarray:
        """The coefficients as a request or the solver takes them: (B, 6) or (B, 6, n, n)."""
        return with_fields(self.coefficients, self.coefficient_fields, self.field_columns)

    def without_fields(self) -> Block:
        """The block's small per-example arrays only (what travels back from a worker)."""
        return replace(self, sources=None, solutions=None, coefficient_fields=None)


@dataclass
class _Draws:
    """The random choices of a batch; everything else follows from them."""

    weights: np.ndarray  # (B, 12, 12)
    a: np.ndarray | None = None  # (B, 3) unscaled diffusion tensors
    d: np.ndarray | None = None  # (B, 2) velocity directions
    target: np.ndarray | None = None  # (B,) Psi targets
    omega: np.ndarray | None = None  # (B,) Helmholtz wavenumbers
    g: np.ndarray | None = None  # (B, n, n) Gaussian random fields (field laws)
    law: dict[str, np.ndarray] = field(default_factory=dict)  # length, contrast|variation


def block_rng(spec: SplitSpec, block: int) -> np.random.Generator:
    system_key = list(SYSTEMS).index(spec.system)
    ss = np.random.SeedSequence(spec.seed, spawn_key=(system_key, SPLITS.index(spec.split), block))
    return np.random.default_rng(ss)


def _draw(spec: SplitSpec, rng: np.random.Generator, sparsity: np.ndarray) -> _Draws:
    b, ranges = sparsity.shape[0], spec.ranges
    draws = _Draws(weights=sources.sample_weights(rng, sparsity))
    if spec.pde.name == "helmholtz":
        draws.omega = sampling.sample_omega(rng, b, ranges.omega)
    else:
        draws.a, _, _ = sampling.sample_diffusion(rng, b, ranges.eig)
        if spec.pde.name == "advection_diffusion":
            draws.d = sampling.sample_directions(rng, b)
            draws.target = rng.uniform(ranges.ratio[0], ranges.ratio[1], b)
    law = spec.field_law
    if law is not None:
        if spec.pde.name == "helmholtz":
            draws.law["variation"] = rng.uniform(law.variation[0], law.variation[1], b)
        else:
            draws.law["contrast"] = media.sample_contrast(rng, b, law.contrast)
        draws.law["length"] = rng.uniform(law.length[0], law.length[1], b)
        draws.g = media.gaussian_random_fields(rng, draws.law["length"], spec.resolution)
    return draws


def _coefficients(spec: SplitSpec, draws: _Draws, c: slice, f_hat: np.ndarray):
    """Unified coefficients of the examples ``c`` of ``draws``: (B, 6) scalars, or
    (B, 6, n, n) fields under a field law; and Psi (advection-diffusion)."""
    b, n, law = f_hat.shape[0], spec.resolution, spec.field_law
    coefficients = np.tile(spec.pde.fixed_coefficients(), (b, 1))
    if draws.omega is not None:
        coefficients[:, W] = draws.omega[c]
        if law is None:
            return coefficients, None
        fields = broadcast_fields(coefficients, n)
        fields[:, W] = media.wavenumber_field(
            draws.g[c], draws.omega[c], draws.law["variation"][c], law.kind
        )
        return fields, None
    a_field = None
    tensors = draws.a[c]
    if law is not None:  # K = a(x) K0; Psi is targeted on the reference a_ref K0
        a_field = media.conductivity(draws.g[c], draws.law["contrast"][c], law.kind)
        a_ref = np.exp(np.log(a_field).mean(axis=(1, 2)))
        tensors = tensors * a_ref[:, None]
        a_field /= a_ref[:, None, None]
    scale = np.full(b, DIFFUSION_SCALE)
    psi = None
    if draws.d is not None:
        r, psi = sampling.solve_ratio(f_hat, tensors, draws.d[c], draws.target[c], n)
        lam = sampling.lam_from_ratio(r)
        scale *= 1.0 - lam
        coefficients[:, [V1, V2]] = lam[:, None] * draws.d[c]
    coefficients[:, [K11, K22, K12]] = scale[:, None] * tensors
    if a_field is None:
        return coefficients, psi
    fields = broadcast_fields(coefficients, n)
    fields[:, [K11, K22, K12]] *= a_field[:, None]
    return fields, psi


def _field_psi(f: np.ndarray, u: np.ndarray, fields: np.ndarray) -> np.ndarray:
    """Psi = ||v . grad u|| / ||div(K grad u)|| of solved field problems, with
    div(K grad u) = v . grad u - f from the equation itself."""
    from datagen.field_operator import gradient  # scipy.fft: only field data pays the import

    grad = gradient(u)
    adv = (fields[:, V1] * grad[:, 0] + fields[:, V2] * grad[:, 1]).reshape(len(u), -1)
    return np.linalg.norm(adv, axis=1) / np.linalg.norm(adv - f.reshape(len(u), -1), axis=1)


def _compute(spec: SplitSpec, draws: _Draws, rows: np.ndarray, out: Block) -> np.ndarray | None:
    """Sources and solutions of ``draws`` into ``out`` at ``rows``, chunk by chunk.

    Returns max |u| per example for Helmholtz (its redraw criterion; infinite
    where a field solve did not converge), else None.
    """
    n, zero_mean, law = spec.resolution, spec.pde.zero_mean, spec.field_law
    peak = np.empty(rows.size) if spec.pde.name == "helmholtz" else None
    columns = [] if law is None else [COEFFICIENT_NAMES.index(k) for k in law.columns(spec.pde)]
    for lo in range(0, rows.size, CHUNK):
        c = slice(lo, lo + CHUNK)
        f, f_hat = sources.build_sources(draws.weights[c], n, zero_mean=zero_mean)
        coefficients, psi = _coefficients(spec, draws, c, f_hat)
        at = rows[c]
        if law is None:
            u_hat, projected = divide_by_symbol(f_hat, coefficients, n)
            u = np.fft.irfft2(u_hat, s=(n, n))
            if projected.any():  # resonant modes were zeroed in f_hat: keep the projected source
                f[projected] = np.fft.irfft2(f_hat[projected], s=(n, n))
            converged = None
        else:
            coefficients = coefficients.astype(np.float32).astype(np.float64)
            solution = _solve_fields(spec, f, coefficients)
            u, converged = solution.solutions, solution.converged
            out.coefficient_fields[at] = coefficients[:, columns]
            for name, values in draws.law.items():
                out.extras[name][at] = values[c]
            out.extras["iterations"][at] = solution.iterations
            out.extras["relative_residual"][at] = solution.relative_residual
            if psi is not None:
                out.extras["psi_field"][at] = _field_psi(f, u, coefficients)
            coefficients = reference(coefficients)
        out.sources[at] = f
        out.solutions[at] = u
        out.coefficients[at] = coefficients
        if psi is not None:
            out.psi[at] = psi
        if peak is not None:
            peak[c] = np.abs(u).max(axis=(1, 2))
            if converged is not None:
                peak[c][~converged] = np.inf
    return peak


def _solve_fields(spec: SplitSpec, f: np.ndarray, fields: np.ndarray) -> Solution:
    """Krylov solutions of one chunk (only Helmholtz may fail to converge: it is redrawn;
    any other failure is an error)."""
    try:
        return solve_detailed(spec.system, f, fields, tolerance=spec.field_law.tolerance)
    except ConvergenceError as e:
        if spec.pde.name != "helmholtz":
            raise
        return e.solution


def generate_block(spec: SplitSpec, block: int, *, dtype: np.dtype = np.float32) -> Block:
    """Generate block ``block`` of a split (deterministic in spec and block).

    Everything is computed in float64; ``dtype`` is what the fields are kept
    in (float32, as stored in files, by default).
    """
    start, stop = spec.block_bounds(block)
    b, n = stop - start, spec.resolution
    rng = block_rng(spec, block)
    sparsity = sources.sparsity_for_indices(np.arange(start, stop))
    law = spec.field_law
    out = Block(
        start=start,
        sources=np.empty((b, n, n), dtype=dtype),
        solutions=np.empty((b, n, n), dtype=dtype),
        coefficients=np.empty((b, N_COEFFICIENTS)),
        sparsity=sparsity.astype(np.float32),
        psi=np.empty(b) if spec.pde.name == "advection_diffusion" else None,
        coefficient_fields=None
        if law is None
        else np.empty((b, len(law.columns(spec.pde)), n, n), dtype=np.float32),
        extras={name: np.empty(b, dtype=PER_EXAMPLE[name]) for name in extra_columns(spec)},
        field_columns=() if law is None else law.columns(spec.pde),
    )
    rows = np.arange(b)
    for _ in range(_MAX_REDRAW_ROUNDS):
        peak = _compute(spec, _draw(spec, rng, sparsity[rows]), rows, out)
        if peak is None:
            return out
        # Helmholtz: redraw (source, w and its field) every example whose solution is too
        # large or whose field solve did not converge.
        rows = rows[peak > HELMHOLTZ_MAX_ABS]
        if rows.size == 0:
            return out
    raise RuntimeError("Helmholtz redraw did not finish; is the omega range resonant?")
