"""Batched, matrix-free Krylov solvers: each example of a batch stops at its own convergence.

- :func:`cg`: preconditioned conjugate gradients, for symmetric positive
  definite operators (diffusion alone).
- :func:`gmres`: restarted GMRES(m), right-preconditioned, for the rest
  (advection, Helmholtz with a varying w): right preconditioning makes the
  residual it minimises the true one, ||f - L u||.

Both work on a :class:`~datagen.field_operator.FieldOperator`'s scaled
half-spectra, in float64, over the whole batch at once: the operator's FFTs
and every vector operation are batched, and examples that have converged
leave the batch (the arrays are compacted), so the others do not pay for
them. Convergence is always judged on the true relative residual
||f - L u|| / ||f||, recomputed from u before an example is let go; an example
that misses the tolerance within ``max_iterations`` (or whose GMRES stagnates)
comes back with ``converged`` False and the residual it reached, as does every
example still running when the wall-clock ``deadline`` (``time.time()``) passes,
checked every CG iteration and every GMRES cycle. Deciding what that means is the
caller's job (:func:`datagen.solver.solve` raises).
"""

from __future__ import annotations

import functools
import threading
import time
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas
from threadpoolctl import threadpool_limits

from datagen.field_operator import FieldOperator

#: GMRES(m) restart length: memory is (m + 1) spectra per example.
RESTART = 30
#: A GMRES cycle that shrinks the residual by less than this factor counts as stagnation.
STAGNATION = 0.999


_single_thread = threading.Lock()
_solves_running = 0
_limiter = None


def _one_blas_thread(method):
    """Run with single-threaded BLAS: the per-example vector operations are small, and
    BLAS threads woken for each of them cost ten times the operation (measured here).
    Solves running at once in several threads share one limit, lifted by the last."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        global _solves_running, _limiter
        with _single_thread:
            if _solves_running == 0:
                _limiter = threadpool_limits(limits=1, user_api="blas")
            _solves_running += 1
        try:
            return method(*args, **kwargs)
        finally:
            with _single_thread:
                _solves_running -= 1
                if _solves_running == 0:
                    _limiter.restore_original_limits()

    return wrapper


@dataclass
class KrylovResult:
    """Scaled half-spectra of the solutions and, per example, how they were reached."""

    x: np.ndarray  # (B, n, n//2 + 1) complex, FieldOperator coordinates
    iterations: np.ndarray  # (B,) int: operator applications inside the method
    relative_residual: np.ndarray  # (B,) true ||f - L u|| / ||f|| of x
    converged: np.ndarray  # (B,) bool

    @staticmethod
    def empty(shape: tuple[int, ...]) -> KrylovResult:
        b = shape[0]
        return KrylovResult(
            np.zeros(shape, dtype=complex),
            np.zeros(b, dtype=np.int64),
            np.zeros(b),
            np.zeros(b, dtype=bool),
        )


def _flat(x: np.ndarray) -> np.ndarray:
    """The real view of a batch of spectra, (B, 2 * n * (n//2 + 1))."""
    return x.view(np.float64).reshape(x.shape[0], -1)


def dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-example real inner products of scaled spectra, (B,)."""
    return np.matmul(_flat(a)[:, None, :], _flat(b)[:, :, None]).reshape(-1)


def axpy(alpha: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """y += alpha x per example, in place (BLAS: a third of numpy's memory traffic)."""
    xf, yf = _flat(x), _flat(y)
    for i, a in enumerate(alpha):
        blas.daxpy(xf[i], yf[i], a=a)


def scale(alpha: np.ndarray, x: np.ndarray) -> None:
    """x *= alpha per example, in place."""
    xf = _flat(x)
    for i, a in enumerate(alpha):
        blas.dscal(a, xf[i])


def norm(a: np.ndarray) -> np.ndarray:
    return np.sqrt(dot(a, a))


def _past(deadline: float | None) -> bool:
    return deadline is not None and time.time() > deadline


def _start(op: FieldOperator, f: np.ndarray, x0: np.ndarray | None):
    """Initial iterate, residual and ||f||."""
    x = np.zeros_like(f) if x0 is None else x0.copy()
    r = f.copy() if x0 is None else f - op.apply(x)
    f_norm = norm(f)
    return x, r, f_norm


def _true_residual(op: FieldOperator, f: np.ndarray, x: np.ndarray, f_norm: np.ndarray):
    r = f - op.apply(x)
    return r, norm(r) / np.where(f_norm > 0, f_norm, 1.0)


@_one_blas_thread
def cg(
    op: FieldOperator,
    f: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    tolerance: float,
    max_iterations: int,
    deadline: float | None = None,
) -> KrylovResult:
    """Preconditioned CG on ``L x = f`` for every example of the batch."""
    out = KrylovResult.empty(f.shape)
    rows = np.arange(len(op))  # original index of each example still in the batch
    x, r, f_norm = _start(op, f, x0)
    safe_norm = np.where(f_norm > 0, f_norm, 1.0)
    z = op.precondition(r)
    p = z.copy()
    rz = dot(r, z)
    its = np.zeros(len(rows), dtype=np.int64)
    res = norm(r) / safe_norm
    while rows.size:
        late = _past(deadline)
        done = (res <= tolerance) | (its >= max_iterations) | late
        if done.any():
            # Judge on the true residual (the recurrence drifts from it near 1e-12).
            idx = np.flatnonzero(done)
            sub = op.take(idx)
            true_r, true_res = _true_residual(sub, f[idx], x[idx], f_norm[idx])
            ok = true_res <= tolerance
            final = ok | (its[idx] >= max_iterations) | late
            leave = idx[final]
            out.x[rows[leave]] = x[leave]
            out.iterations[rows[leave]] = its[leave]
            out.relative_residual[rows[leave]] = true_res[final]
            out.converged[rows[leave]] = ok[final]
            restart = idx[~final]  # the recurrence said yes, the true residual no: restart
            if restart.size:
                r[restart] = true_r[~final]
                z[restart] = sub.take(np.flatnonzero(~final)).precondition(r[restart])
                p[restart] = z[restart]
                rz[restart] = dot(r[restart], z[restart])
                res[restart] = true_res[~final]
            keep = np.setdiff1d(np.arange(rows.size), leave)
            if keep.size < rows.size:
                rows, x, r, z, p, f = rows[keep], x[keep], r[keep], z[keep], p[keep], f[keep]
                rz, its, res = rz[keep], its[keep], res[keep]
                f_norm, safe_norm = f_norm[keep], safe_norm[keep]
                op = op.take(keep)
            if not rows.size:
                break
        q = op.apply(p)
        pq = dot(p, q)
        alpha = rz / np.where(pq != 0, pq, 1.0)
        axpy(alpha, p, x)
        axpy(-alpha, q, r)
        z = op.precondition(r)
        rz_new = dot(r, z)
        scale(rz_new / np.where(rz != 0, rz, 1.0), p)
        axpy(np.ones(rows.size), z, p)
        rz = rz_new
        its += 1
        res = norm(r) / safe_norm
    return out


@_one_blas_thread
def gmres(
    op: FieldOperator,
    f: np.ndarray,
    x0: np.ndarray | None = None,
    *,
    tolerance: float,
    max_iterations: int,
    restart: int = RESTART,
    deadline: float | None = None,
) -> KrylovResult:
    """Restarted, right-preconditioned GMRES(m) on ``L x = f`` for every example."""
    out = KrylovResult.empty(f.shape)
    x, r, f_norm = _start(op, f, x0)
    safe_norm = np.where(f_norm > 0, f_norm, 1.0)
    its = np.zeros(len(op), dtype=np.int64)
    res = norm(r) / safe_norm
    active = np.ones(len(op), dtype=bool)
    while active.any():
        # Examples that are done before a cycle starts: converged, out of iterations.
        done = active & ((res <= tolerance) | (its >= max_iterations) | _past(deadline))
        for i in np.flatnonzero(done):
            out.x[i], out.iterations[i] = x[i], its[i]
            out.relative_residual[i], out.converged[i] = res[i], res[i] <= tolerance
        active &= ~done
        rows = np.flatnonzero(active)
        if not rows.size:
            break
        sub = op.take(rows)
        steps = int(min(restart, (max_iterations - its[rows]).max()))
        dx, cycle_its = _gmres_cycle(
            sub, r[rows], tolerance * safe_norm[rows], steps, max_iterations - its[rows]
        )
        x[rows] += dx
        its[rows] += cycle_its
        r[rows], new_res = _true_residual(sub, f[rows], x[rows], f_norm[rows])
        stalled = new_res > STAGNATION * res[rows]
        res[rows] = new_res
        for j in np.flatnonzero(stalled & (new_res > tolerance)):  # no progress: give up
            i = rows[j]
            out.x[i], out.iterations[i] = x[i], its[i]
            out.relative_residual[i], out.converged[i] = res[i], False
            active[i] = False
    return out


def _gmres_cycle(
    op: FieldOperator, r: np.ndarray, target: np.ndarray, steps: int, budget: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One GMRES cycle of at most ``steps`` Arnoldi steps from residuals ``r`` (B, ...).

    An example stops early once its least-squares residual is below ``target``
    (absolute) or it has used its ``budget`` of steps; its correction is then
    formed and it leaves the cycle's arrays. Returns the corrections to x and
    the steps each example took.
    """
    dx = np.zeros_like(r)
    taken = np.zeros(len(op), dtype=np.int64)
    beta = norm(r)
    ids = np.flatnonzero((beta > target) & (budget > 0))  # examples in the cycle
    if not ids.size:
        return dx, taken
    op, target, budget = op.take(ids), target[ids], budget[ids]
    b = ids.size
    basis = np.empty((b, steps + 1, *r.shape[1:]), dtype=complex)
    basis[:, 0] = r[ids] / beta[ids, None, None]
    h = np.zeros((b, steps + 1, steps))
    cs, sn = np.zeros((b, steps)), np.zeros((b, steps))
    g = np.zeros((b, steps + 1))
    g[:, 0] = beta[ids]
    for j in range(steps):
        # L M^-1 v_j = v_j + E v_j with E = (L - L_ref) L_ref^-1: orthogonalise E v_j,
        # and add the identity to the Hessenberg column afterwards.
        w = op.apply(op.precondition(basis[:, j]), remainder=True)
        hcol = np.empty((b, j + 1))
        for i in range(j + 1):  # modified Gram-Schmidt: backward stable for GMRES
            hcol[:, i] = dot(basis[:, i], w)
            axpy(-hcol[:, i], basis[:, i], w)
        hnext = norm(w)
        hcol[:, j] += 1.0
        basis[:, j + 1] = w / np.where(hnext > 0, hnext, 1.0)[:, None, None]
        # Apply the earlier Givens rotations to the new column, then make a new one.
        for k in range(j):
            a, bk = hcol[:, k].copy(), hcol[:, k + 1].copy()
            hcol[:, k] = cs[:, k] * a + sn[:, k] * bk
            hcol[:, k + 1] = -sn[:, k] * a + cs[:, k] * bk
        denom = np.hypot(hcol[:, j], hnext)
        safe = np.where(denom > 0, denom, 1.0)
        cs[:, j] = np.where(denom > 0, hcol[:, j] / safe, 1.0)
        sn[:, j] = hnext / safe
        hcol[:, j] = denom
        h[:, : j + 1, j] = hcol[:, : j + 1]
        g[:, j + 1] = -sn[:, j] * g[:, j]
        g[:, j] = cs[:, j] * g[:, j]
        taken[ids] += 1
        stop = (np.abs(g[:, j + 1]) <= target) | (taken[ids] >= budget) | (j + 1 == steps)
        if stop.any():
            k = j + 1
            y = _back_substitute(h[stop, :k, :k], g[stop, :k])
            combo = np.einsum("bk,bk...->b...", y, basis[stop, :k])
            dx[ids[stop]] = op.take(np.flatnonzero(stop)).precondition(combo)
            keep = ~stop
            if not keep.any():
                break
            ids, target, budget, op = ids[keep], target[keep], budget[keep], op.take(keep)
            basis, h, cs, sn, g = basis[keep], h[keep], cs[keep], sn[keep], g[keep]
            b = ids.size
    return dx, taken


def _back_substitute(r: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Solve the upper-triangular systems r y = g, batched: (B, k, k), (B, k) -> (B, k)."""
    k = r.shape[1]
    y = np.zeros_like(g)
    for i in range(k - 1, -1, -1):
        diag = r[:, i, i]
        y[:, i] = (g[:, i] - np.einsum("bj,bj->b", r[:, i, i + 1 :], y[:, i + 1 :])) / np.where(
            diag != 0, diag, 1.0
        )
    return y


def scipy_operators(op: FieldOperator, example: int):
    """The same operator and preconditioner for one example as scipy LinearOperators on
    flattened grid fields (n * n,): the independent check and the benchmark's baseline."""
    from scipy.sparse.linalg import LinearOperator

    one = op.take(np.array([example]))
    n = op.n

    def matvec(u):
        return one.apply_grid(np.reshape(u, (1, n, n))).ravel()

    def psolve(r):
        return one.to_grid(one.precondition(one.to_spectral(np.reshape(r, (1, n, n))))).ravel()

    shape = (n * n, n * n)
    return LinearOperator(shape, matvec, dtype=float), LinearOperator(shape, psolve, dtype=float)
