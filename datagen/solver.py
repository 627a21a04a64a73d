"""Exact batched solvers for the unified operator on the periodic unit square.

    L u = -div(K grad u) + v . grad u - w u = f

Fields are (n, n) arrays indexed ``[y, x]`` with x_j = j / n; derivatives are
spectral (d/dx <-> 2 pi i kx, kx from ``fftfreq(n, 1/n)``).

- Constant coefficients ((B, 6) scalars, or fields that are constant): one
  division by the Fourier symbol (:mod:`datagen.symbol`), exact to rounding.
  The authors' generator uses +n/2 at the Nyquist wavenumber and keeps the
  real part; the two differ only in Nyquist modes, where the paper's Gaussian
  sources carry ~1e-30 of their energy. Where the symbol vanishes there is
  no solution: the mean mode of Poisson and advection-diffusion (their
  sources must have zero mean: rejected or projected, the caller's choice)
  and Helmholtz resonances, which follow the authors' convention: those
  Fourier modes are zeroed in f and u.
- Coefficient fields ((B, 6, n, n)): the pseudo-spectral operator of
  :mod:`datagen.field_operator` (derivatives by FFT, products on the grid, a
  constant reference part split off and applied with the symbol, so constant
  fields give the symbol exactly), solved with batched preconditioned Krylov
  methods (:mod:`datagen.krylov`): CG where L is symmetric positive definite
  (diffusion alone), GMRES otherwise, each preconditioned with the FFT inverse
  of the reference operator, to a tolerance on the relative residual.

Everything runs in float64 on rfft2 half-spectra, vectorised over the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import numpy as np

from datagen.coefficients import constant_examples, is_field, scalars_of
from datagen.symbol import divide_by_symbol, singular_modes, symbol, symbol_parts, wavenumbers
from datagen.systems import System, get_system

__all__ = [
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_TOLERANCE",
    "ConvergenceError",
    "FieldError",
    "Solution",
    "SolveTimeout",
    "apply",
    "check_fields",
    "divide_by_symbol",
    "error_estimate",
    "relative_l2",
    "residual",
    "singular_modes",
    "solve",
    "solve_detailed",
    "symbol",
    "symbol_parts",
    "wavenumbers",
]

MeanPolicy = Literal["reject", "project"]

#: |mean(f)| above this fraction of max|f| counts as a non-zero mean.
MEAN_TOLERANCE = 1e-6
#: Field problems: the relative residual ||f - L u|| / ||f|| a solve must reach, and the
#: Krylov iterations it may take.
DEFAULT_TOLERANCE = 1e-8
DEFAULT_MAX_ITERATIONS = 1000
#: Field problems are solved this many at a time: the cost per example and iteration is
#: lowest for small batches (the arrays stay in cache), and memory stays bounded.
KRYLOV_BATCH = 8


def _field_solver():
    """The field machinery (:mod:`datagen.field_solver`), imported on first use: it brings
    scipy.linalg and scipy.fft, 0.3 s of imports that constant-coefficient users (datagen
    worker processes, the service's exact replica) need not pay."""
    from datagen import field_solver

    return field_solver


class FieldError(ValueError):
    """A field that the solver cannot take (shape, grid size, NaN/Inf, mean)."""


@dataclass
class Solution:
    """Solutions and, per example, how the solver reached them.

    ``method`` is ``"fft"`` (constant coefficients: exact, 0 iterations),
    ``"cg"`` or ``"gmres"``; ``relative_residual`` is ||f - L u|| / ||f|| of
    the returned solution (against the source with its mean or resonant
    modes removed, where those were projected away).
    """

    solutions: np.ndarray  # shaped like the sources
    method: tuple[str, ...]
    iterations: np.ndarray  # (B,) int
    relative_residual: np.ndarray  # (B,)
    converged: np.ndarray  # (B,) bool
    # per example: "none" (FFT), "reference" or "scaled" (datagen.preconditioners)
    preconditioner: tuple[str, ...] = ()


class ConvergenceError(RuntimeError):
    """A field problem the Krylov solver did not solve to its tolerance.

    ``solution`` holds what was reached (``converged`` says which examples
    made it); ``examples`` lists the ones that did not.
    """

    def __init__(self, message: str, solution: Solution):
        super().__init__(message)
        self.solution = solution
        self.examples = [int(i) for i in np.flatnonzero(~solution.converged)]


class SolveTimeout(ConvergenceError):
    """The ``deadline`` passed before every field problem was solved."""


def check_fields(fields: np.ndarray, name: str = "sources") -> tuple[np.ndarray, bool]:
    """Return (float64 (B, n, n) array, was_single) or raise FieldError."""
    a = np.asarray(fields)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise FieldError(f"{name} must be real numbers, got dtype {a.dtype}")
    single = a.ndim == 2
    if single:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise FieldError(f"{name} must have shape (n, n) or (B, n, n), got {np.shape(fields)}")
    n = a.shape[-1]
    if n < 16 or n % 2:
        raise FieldError(f"{name}: the grid size n must be even and >= 16, got n = {n}")
    a = np.asarray(a, dtype=np.float64)
    finite = np.isfinite(a).all(axis=(1, 2))
    if not finite.all():
        raise FieldError(f"{name} contain NaN or Inf (example {int(np.flatnonzero(~finite)[0])})")
    return a, single


def _check_batch(fields: np.ndarray, coefficients: np.ndarray, system: System, name: str):
    a, single = check_fields(fields, name)
    c = system.validate(coefficients)
    if c.ndim == 4:
        if c.shape[-1] != a.shape[-1]:
            raise FieldError(
                f"coefficient fields are {c.shape[-1]} x {c.shape[-1]} but {name} are "
                f"{a.shape[-1]} x {a.shape[-1]}; fields must lie on the {name}' grid"
            )
        c = _field_solver().divergence_free_velocity(system, c)
    if c.shape[0] == 1 and a.shape[0] > 1:
        c = np.repeat(c, a.shape[0], axis=0)
    if c.shape[0] != a.shape[0]:
        raise FieldError(
            f"{a.shape[0]} {name} but {c.shape[0]} coefficient vectors; give one per example "
            "(or one for all)"
        )
    return a, c, single


def _check_mean(system: System, f: np.ndarray, mean: MeanPolicy) -> None:
    if mean not in ("reject", "project"):
        raise ValueError(f"mean must be 'reject' or 'project', got {mean!r}")
    if not (system.zero_mean and mean == "reject"):
        return
    m = f.mean(axis=(1, 2))
    bad = np.abs(m) > MEAN_TOLERANCE * np.maximum(np.abs(f).max(axis=(1, 2)), np.finfo(float).tiny)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FieldError(
            f"{system.name}: source {i} has mean {m[i]:.3g}, but the operator annihilates "
            "constants, so only zero-mean sources have a solution; subtract the mean "
            "or pass mean='project'"
        )


def solve(
    system: str | System,
    sources: np.ndarray,
    coefficients: np.ndarray,
    *,
    mean: MeanPolicy = "reject",
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    initial_guess: np.ndarray | None = None,
) -> np.ndarray:
    """Solve ``L u = f`` for a batch: exactly by FFT where the coefficients are constant,
    with a preconditioned Krylov method to ``tolerance`` where they vary.

    sources: (n, n) or (B, n, n), any even n >= 16. coefficients: unified
    scalars (6,) or (B, 6), or fields (6, n, n) or (B, 6, n, n) on the
    sources' grid (:mod:`datagen.coefficients`; one set may serve the whole
    batch). ``mean`` says what to do with Poisson/advection-diffusion sources
    whose mean is not zero: ``"reject"`` (raise FieldError) or ``"project"``
    (subtract it). Field problems only: ``tolerance`` on the relative
    residual ||f - L u|| / ||f||, ``max_iterations``, and ``initial_guess``
    (shaped like ``sources``) to start from. Returns float64 solutions shaped
    like ``sources``; Poisson and advection-diffusion solutions have zero
    mean. A field problem that does not converge raises ConvergenceError
    (:func:`solve_detailed` gives the iterations and residuals too).
    """
    if is_field(coefficients):
        return solve_detailed(
            system,
            sources,
            coefficients,
            mean=mean,
            tolerance=tolerance,
            max_iterations=max_iterations,
            initial_guess=initial_guess,
        ).solutions
    system = get_system(system)
    f, c, single = _check_batch(sources, coefficients, system, "sources")
    _check_mean(system, f, mean)
    n = f.shape[-1]
    u_hat, _ = divide_by_symbol(np.fft.rfft2(f), c, n)
    u = np.fft.irfft2(u_hat, s=(n, n))
    return u[0] if single else u


def solve_detailed(
    system: str | System,
    sources: np.ndarray,
    coefficients: np.ndarray,
    *,
    mean: MeanPolicy = "reject",
    tolerance: float = DEFAULT_TOLERANCE,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    initial_guess: np.ndarray | None = None,
    restart: int | None = None,
    deadline: float | None = None,
    preconditioner: str = "auto",
) -> Solution:
    """:func:`solve`, returning a :class:`Solution` with the method, iterations, relative
    residual and preconditioner of every example. ``restart``: GMRES(m)'s m (default
    :data:`datagen.krylov.RESTART`). ``preconditioner``: for CG, ``"auto"`` (chosen per
    example, :func:`datagen.preconditioners.choose`), ``"reference"`` or ``"scaled"``;
    GMRES always takes the reference one.

    Examples whose coefficients are constant (scalars, or fields that do not
    vary) take the FFT path; the others are split into a CG group (diffusion
    alone) and a GMRES group, each solved batched. Raises ConvergenceError
    when any example misses ``tolerance`` within ``max_iterations``, and
    SolveTimeout where the wall-clock ``deadline`` (``time.time()``) passed first
    (the solvers stop at it).
    """
    system = get_system(system)
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance must be in (0, 1), got {tolerance:g}")
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    f, c, single = _check_batch(sources, coefficients, system, "sources")
    _check_mean(system, f, mean)
    b, n = f.shape[0], f.shape[-1]
    u = np.empty_like(f)
    if preconditioner not in ("auto", "reference", "scaled"):
        raise ValueError(
            f"preconditioner must be 'auto', 'reference' or 'scaled', got {preconditioner!r}"
        )
    method = np.full(b, "fft", dtype=object)
    used = np.full(b, "none", dtype=object)
    iterations = np.zeros(b, dtype=np.int64)
    rel = np.zeros(b)
    converged = np.ones(b, dtype=bool)
    fft_rows = np.arange(b) if c.ndim == 2 else np.flatnonzero(constant_examples(c))
    if fft_rows.size:
        scalars = c[fft_rows] if c.ndim == 2 else scalars_of(c[fft_rows])
        u[fft_rows], rel[fft_rows] = _fft_solve(f[fft_rows], scalars, n)
    field_rows = np.setdiff1d(np.arange(b), fft_rows)
    if field_rows.size:
        x0 = None
        if initial_guess is not None:
            guess, _ = check_fields(initial_guess, "initial_guess")
            if guess.shape[0] == 1 and b > 1:
                guess = np.repeat(guess, b, axis=0)
            if guess.shape != f.shape:
                expected = f.shape[1:] if single else f.shape
                raise FieldError(
                    f"initial_guess must be shaped like the sources {expected}, "
                    f"got {np.shape(initial_guess)}"
                )
            x0 = guess
        fields = _field_solver()
        symmetric = fields.symmetric_rows(c[field_rows])
        for use_cg in (True, False):
            group = field_rows[symmetric == use_cg]
            for lo in range(0, group.size, KRYLOV_BATCH):
                at = group[lo : lo + KRYLOV_BATCH]
                result = fields.krylov_solve(
                    system,
                    f[at],
                    c[at],
                    None if x0 is None else x0[at],
                    use_cg,
                    tolerance,
                    max_iterations,
                    restart,
                    deadline,
                    preconditioner,
                )
                u[at], iterations[at], rel[at], converged[at], used[at] = result
                method[at] = "cg" if use_cg else "gmres"
    out = Solution(u[0] if single else u, tuple(method), iterations, rel, converged, tuple(used))
    if not converged.all():
        if deadline is not None and time.time() > deadline:
            late = int(np.flatnonzero(~converged)[0])
            raise SolveTimeout(
                f"{system.name}: the time allowed ran out before example {late} was solved "
                f"(relative residual {rel[late]:.3g} after {iterations[late]} iterations)",
                out,
            )
        raise ConvergenceError(_not_converged(system, out, tolerance), out)
    return out


def _energy(a_hat: np.ndarray) -> np.ndarray:
    """The grid L2 norm (times n) of fields (B, n, n) from their rfft2 half-spectra."""
    n = a_hat.shape[-2]
    weights = np.full(n // 2 + 1, 2.0)
    weights[0] = weights[n // 2] = 1.0
    return np.sqrt((np.abs(a_hat) ** 2 * weights).sum(axis=(1, 2)))


def _ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return a / np.where(b > 0, b, 1.0)


def _fft_solve(f: np.ndarray, c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Solutions by the symbol and their relative residuals (computed on the spectra)."""
    f_hat = np.fft.rfft2(f)
    u_hat, _ = divide_by_symbol(f_hat, c, n)  # projects f_hat in place where L vanishes
    r_hat = f_hat - symbol(c, n) * u_hat
    return np.fft.irfft2(u_hat, s=(n, n)), _ratio(_energy(r_hat), _energy(f_hat))


def error_estimate(
    system: str | System,
    solutions: np.ndarray,
    sources: np.ndarray,
    coefficients: np.ndarray,
    *,
    checked: bool = False,
    reference: np.ndarray | None = None,
    single: bool = False,
    scalar: np.ndarray | None = None,
) -> np.ndarray:
    """An a-posteriori estimate of each solution's relative L2 error, (B,) (a float for
    one (n, n) solution): ||e|| / ||u + e|| with e = L_ref^-1 (f - L u).

    e is the residual taken through the FFT inverse of the reference operator: for
    constant coefficients L_ref = L, so u + e is the exact solution and the estimate is
    the true error to rounding; for fields e approximates L^-1 (f - L u), to within the
    preconditioner's spread (a factor that grows with the contrast). The error includes
    what the exact solution leaves out: the mean of Poisson and advection-diffusion
    solutions, Helmholtz's resonant modes. Sources with a mean where the system needs
    none are taken with it projected out. Costs one operator application and one FFT
    solve (two FFT pairs for fields, one rfft2 each of u and f for constants).

    A caller that has validated the coefficients already (``checked``: the solver's
    layout, velocity fields divergence-free) skips that, and may give their
    :func:`~datagen.coefficients.reference` values and, where K = a(x) K0, a / a_ref
    (``scalar``, (n, n) or (B, n, n)). ``single``: the field operator in
    float32, about twice as fast at 512^2; the estimate moves by ~1e-6 of itself, far
    below what it is for (an answer's error, 1e-4 and up), but the residual of a
    solution accurate to 1e-7 or better drowns in float32 rounding.
    """
    system = get_system(system)
    if checked:
        u = np.asarray(solutions, dtype=np.float64)
        c = np.asarray(coefficients, dtype=np.float64)
        one = u.ndim == 2
        u = u[None] if one else u
        c = c[None] if c.ndim in (1, 3) else c
        if c.shape[0] == 1 and u.shape[0] > 1:
            c = np.repeat(c, u.shape[0], axis=0)
    else:
        u, c, one = _check_batch(solutions, coefficients, system, "solutions")
    f, _ = check_fields(sources, "sources")
    if f.shape[0] == 1 and u.shape[0] > 1:
        f = np.repeat(f, u.shape[0], axis=0)
    if f.shape != u.shape:
        raise FieldError(f"sources {f.shape} and solutions {u.shape} must have one shape")
    b, n = u.shape[0], u.shape[-1]
    out = np.empty(b)
    if c.ndim == 2:
        constant = np.arange(b)
    elif scalar is not None:  # K = a(x) K0 with a varying: no FFT shortcut
        constant = np.arange(b)[:0]
    else:
        constant = np.flatnonzero(constant_examples(c))
    if constant.size:
        scalars = c[constant] if c.ndim == 2 else scalars_of(c[constant])
        # L_ref = L: u + e is the exact solution (zero on the modes where L vanishes), so
        # e = u* - u, and u* is one division by the symbol.
        exact_hat, _ = divide_by_symbol(np.fft.rfft2(f[constant]), scalars, n)
        u_hat = np.fft.rfft2(u[constant])
        out[constant] = _ratio(_energy(exact_hat - u_hat), _energy(exact_hat))
    varying_rows = constant[:0] if constant.size == b else np.setdiff1d(np.arange(b), constant)
    if varying_rows.size:
        every = varying_rows.size == b  # the arrays as they are: a row index would copy
        rows = slice(None) if every else varying_rows  # them (48 MB of fields at 1024^2)
        ref = None if reference is None else np.asarray(reference, dtype=np.float64)
        if ref is not None:
            ref = ref.reshape(-1, ref.shape[-1])
            ref = ref if every and len(ref) == b else ref[varying_rows % len(ref)]
        if scalar is not None:
            scalar = np.asarray(scalar).reshape(-1, n, n)
            scalar = scalar if every and len(scalar) == b else scalar[varying_rows % len(scalar)]
        op = _field_solver().FieldOperator(
            c[rows], system.zero_mean, ref, np.float32 if single else np.float64, scalar
        )
        x = op.to_spectral(u[rows])
        f_hat = op.to_spectral(f[rows])
        if system.zero_mean:
            f_hat[:, 0, 0] = 0.0
        e = op.precondition(f_hat - op.apply(x))
        if system.zero_mean:
            e[:, 0, 0] = -x[:, 0, 0]
        norm = lambda a: np.sqrt((np.abs(a) ** 2).sum(axis=(1, 2), dtype=np.float64))  # noqa: E731
        out[varying_rows] = _ratio(norm(e), norm(x + e))
    return float(out[0]) if one else out


def _not_converged(system: System, out: Solution, tolerance: float) -> str:
    bad = np.flatnonzero(~out.converged)
    i = int(bad[0])
    text = (
        f"{system.name}: the {out.method[i]} solver did not converge for example {i}: relative "
        f"residual {out.relative_residual[i]:.3g} after {out.iterations[i]} iterations "
        f"(tolerance {tolerance:g})"
    )
    if bad.size > 1:
        more = ", ".join(str(int(j)) for j in bad[1:6]) + (", ..." if bad.size > 6 else "")
        text += f"; {bad.size - 1} more: example {more}"
    if system.name == "helmholtz":
        text += "; Helmholtz problems near a resonance converge slowly or not at all"
    return text + "; raise max_iterations or loosen the tolerance"


def apply(system: str | System, solutions: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """The forward operator ``L u`` for a batch, float64, shaped like ``solutions``.

    ``coefficients`` as in :func:`solve`, scalars or fields.
    """
    system = get_system(system)
    u, c, single = _check_batch(solutions, coefficients, system, "solutions")
    n = u.shape[-1]
    if c.ndim == 4:
        f = _field_solver().FieldOperator(c, system.zero_mean).apply_grid(u)
    else:
        f = np.fft.irfft2(np.fft.rfft2(u) * symbol(c, n), s=(n, n))
    return f[0] if single else f


def residual(
    system: str | System,
    solutions: np.ndarray,
    sources: np.ndarray,
    coefficients: np.ndarray,
) -> np.ndarray:
    """``L u - f`` for a batch."""
    f, _ = check_fields(sources, "sources")
    r = apply(system, solutions, coefficients)
    return r - (f[0] if np.ndim(sources) == 2 else f)


def relative_l2(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-example ||prediction - reference||_2 / ||reference||_2 over the last two axes."""
    p = np.asarray(prediction, dtype=np.float64)
    r = np.asarray(reference, dtype=np.float64)
    return np.linalg.norm((p - r).reshape(*p.shape[:-2], -1), axis=-1) / np.linalg.norm(
        r.reshape(*r.shape[:-2], -1), axis=-1
    )
