"""The field half of :mod:`datagen.solver`: velocity fields made divergence-free, and one
batch of field problems through the Krylov solvers. Imported by the solver on first use.
"""

from __future__ import annotations

import numpy as np

from datagen import krylov, preconditioners
from datagen.coefficients import contrast, varying
from datagen.field_operator import DIVERGENCE_TOLERANCE, FieldOperator, divergence_free
from datagen.systems import V1, V2, CoefficientError, System

__all__ = ["FieldOperator", "divergence_free_velocity", "krylov_solve", "symmetric_rows"]


def divergence_free_velocity(system: System, c: np.ndarray) -> np.ndarray:
    """Velocity fields projected onto D . v = 0, or CoefficientError where they are not
    divergence-free (then L^T annihilates some other function than the constants, and
    zero-mean sources have no solution in general)."""
    moving = varying(c)[:, [V1, V2]].any(axis=1)
    if not system.zero_mean or not moving.any():
        return c
    projected, relative = divergence_free(c[moving][:, [V1, V2]])
    bad = relative > DIVERGENCE_TOLERANCE
    if bad.any():
        i = int(np.flatnonzero(moving)[np.flatnonzero(bad)[0]])
        raise CoefficientError(
            f"{system.name}: the velocity field of example {i} is not divergence-free "
            f"(||div v|| / ||grad v|| = {relative[bad][0]:.3g}, more than "
            f"{DIVERGENCE_TOLERANCE:g}); this system needs div v = 0 for zero-mean sources "
            "to have a solution"
        )
    c = c.copy()
    c[np.ix_(moving, [V1, V2])] = projected
    return c


def krylov_solve(
    system: System,
    f: np.ndarray,
    c: np.ndarray,
    guess: np.ndarray | None,
    use_cg: bool,
    tolerance: float,
    max_iterations: int,
    restart: int | None,
    deadline: float | None = None,
    preconditioner: str = "auto",
):
    """One batch of field problems: (solutions, iterations, residuals, converged, the
    preconditioner of each)."""
    op = FieldOperator(c, system.zero_mean)
    names = np.full(len(c), "reference", dtype=object)
    if use_cg and preconditioner != "reference":
        s2 = preconditioners.isotropic_scale(c, op.reference)
        if preconditioner == "scaled":
            chosen = np.ones(len(c), dtype=bool)
        else:
            chosen = preconditioners.choose(c, op.reference, contrast(c))
        if chosen.any():
            op.scale_preconditioner(chosen, s2)
            names[chosen] = "scaled"
    rhs = op.to_spectral(f)
    start = None if guess is None else op.to_spectral(guess)
    if system.zero_mean:  # the mean mode (projected or zero to rounding) is no unknown
        rhs[:, 0, 0] = 0.0
        if start is not None:
            start[:, 0, 0] = 0.0
    options = {"tolerance": tolerance, "max_iterations": max_iterations, "deadline": deadline}
    if use_cg:
        result = krylov.cg(op, rhs, start, **options)
    else:
        result = krylov.gmres(op, rhs, start, restart=restart or krylov.RESTART, **options)
    if system.zero_mean:  # the scaled preconditioner's output has a mean: L ignores it
        result.x[:, 0, 0] = 0.0
    residual, converged = result.relative_residual, result.converged
    return op.to_grid(result.x), result.iterations, residual, converged, names


def symmetric_rows(c: np.ndarray) -> np.ndarray:
    """Field examples (B, 6, n, n) whose operator is symmetric positive definite: no v, no w."""
    return ~np.any(c[:, V1:] != 0, axis=(1, 2, 3))
