"""The coefficient layout, defined once: scalars per example or fields on the grid.

Every problem carries the unified coefficients ``[k11, k22, k12, v1, v2, w]``
of one operator (:mod:`datagen.systems` says which each system fixes). Each
is either one number per example or an n x n field on the source's grid, in
one of two shapes:

- scalars: ``(6,)`` for one problem, ``(B, 6)`` for a batch;
- fields: ``(6, n, n)`` for one problem, ``(B, 6, n, n)`` for a batch. A
  coefficient that does not vary is a constant field; an example whose six
  fields are all constant is the same problem as its scalars, and the solver
  gives it exactly the scalar path's answer.

The reference coefficients of a field example (:func:`reference`) are the
constant coefficients the field solver splits off and preconditions with:
the log-Euclidean mean of K (for K = a(x) K0 that is the geometric mean of a
times K0), the grid means of v and w, and the values themselves where a
coefficient is constant.
"""

from __future__ import annotations

import numpy as np

COEFFICIENT_NAMES: tuple[str, ...] = ("k11", "k22", "k12", "v1", "v2", "w")
K11, K22, K12, V1, V2, W = range(6)
N_COEFFICIENTS = len(COEFFICIENT_NAMES)


class CoefficientError(ValueError):
    """Coefficients that describe no well-posed problem of the named system."""


def is_field(coefficients: np.ndarray) -> bool:
    """True for the field shapes (6, n, n) and (B, 6, n, n), False for (6,) and (B, 6)."""
    return np.ndim(coefficients) in (3, 4)


def as_field_batch(coefficients: np.ndarray) -> np.ndarray:
    """Field coefficients as a float64 (B, 6, n, n) array (a single (6, n, n) gets B = 1)."""
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim == 3:
        c = c[None]
    if c.ndim != 4 or c.shape[1] != N_COEFFICIENTS or c.shape[2] != c.shape[3]:
        raise CoefficientError(
            "coefficient fields must have shape (6, n, n) or (B, 6, n, n), one n x n field per "
            f"coefficient of [k11, k22, k12, v1, v2, w], got {np.shape(coefficients)}"
        )
    return c


def constant_examples(fields: np.ndarray) -> np.ndarray:
    """Boolean (B,): the examples of (B, 6, n, n) whose six fields are all constant."""
    flat = fields.reshape(*fields.shape[:2], -1)
    return (flat.max(axis=2) == flat.min(axis=2)).all(axis=1)


def varying(fields: np.ndarray) -> np.ndarray:
    """Boolean (B, 6): which coefficients of each example vary over the grid."""
    flat = fields.reshape(*fields.shape[:2], -1)
    return (flat != flat[:, :, :1]).any(axis=2)  # one pass; max != min took two


def scalars_of(fields: np.ndarray) -> np.ndarray:
    """The (B, 6) scalars of constant fields (the value at grid point [0, 0])."""
    return np.ascontiguousarray(fields[:, :, 0, 0])


def broadcast_fields(scalars: np.ndarray, n: int) -> np.ndarray:
    """(B, 6) scalars as constant (B, 6, n, n) fields."""
    s = np.atleast_2d(np.asarray(scalars, dtype=np.float64))
    return np.broadcast_to(s[:, :, None, None], (*s.shape, n, n)).copy()


def with_fields(
    scalars: np.ndarray, fields: np.ndarray | None, columns: tuple[str, ...]
) -> np.ndarray:
    """A dataset's coefficients in the solver's layout: (B, 6) scalars where nothing varies,
    else (B, 6, n, n) float64 with the (B, F, n, n) ``fields`` in their named ``columns``
    and the other coefficients as constant fields."""
    if fields is None:
        return scalars
    out = broadcast_fields(scalars, fields.shape[-1])
    out[:, [COEFFICIENT_NAMES.index(c) for c in columns]] = fields
    return out


def _sym_log_exp(k11, k22, k12, fn, derivative):
    """fn applied to the symmetric 2 x 2 matrices [[k11, k12], [k12, k22]] through their
    eigenvalues, in closed form: (m, h) = mean and half-spread of the eigenvalues, and
    fn(K) = (fn(m+h) + fn(m-h))/2 I + s (K - m I) with s = (fn(m+h) - fn(m-h))/(2h),
    or fn'(m) where the eigenvalues (nearly) coincide (to O(h^2), below rounding)."""
    m = (k11 + k22) / 2
    h = np.hypot((k11 - k22) / 2, k12)
    hi, lo = fn(m + h), fn(m - h)
    mean = (hi + lo) / 2
    apart = h > 1e-8 * np.abs(m)
    slope = derivative(m)
    np.divide(hi - lo, 2 * h, out=slope, where=apart)
    return mean + slope * (k11 - m), mean + slope * (k22 - m), slope * k12


def reference(fields: np.ndarray) -> np.ndarray:
    """Reference coefficients (B, 6) of validated fields (B, 6, n, n).

    K: the log-Euclidean mean exp(mean log K(x)) (symmetric positive definite
    whenever K(x) is); v and w: grid means; a constant coefficient keeps its
    value exactly.
    """
    flat = fields.reshape(*fields.shape[:2], -1)
    var = varying(fields)
    out = scalars_of(fields)  # a grid mean of a constant is not exact
    k_var = var[:, [K11, K22, K12]].any(axis=1)
    for i, j in np.argwhere(var):  # means of the varying fields alone
        if not (k_var[i] and j in (K11, K22, K12)):
            out[i, j] = flat[i, j].mean()
    for i in np.flatnonzero(k_var):  # the matrix mean couples the three entries
        out[i, [K11, K22, K12]] = _log_euclidean_mean(
            fields[i, K11], fields[i, K22], fields[i, K12]
        )
    return out


def _log_euclidean_mean(k11: np.ndarray, k22: np.ndarray, k12: np.ndarray) -> list[float]:
    """exp(mean log K(x)) of one field of symmetric positive definite 2 x 2 matrices.

    Where K = a(x) K0 with K0 constant (the Darcy form: the ratios k22/k11 and k12/k11
    are constant), log K = log a I + log K0, so the mean is the geometric mean of a times
    K0: a few passes instead of an eigen-decomposition per grid point (12 ms at 512^2)."""
    r22, r12 = k22 / k11, k12 / k11
    if np.ptp(r22) <= 1e-12 * abs(r22.flat[0]) and np.ptp(r12) <= 1e-12 * max(
        abs(r12.flat[0]), abs(r22.flat[0])
    ):
        scale = float(np.exp(np.log(k11).mean()))
        return [scale, scale * float(r22.flat[0]), scale * float(r12.flat[0])]
    logs = _sym_log_exp(k11, k22, k12, np.log, np.reciprocal)
    means = [np.array([a.mean()]) for a in logs]
    return [float(v[0]) for v in _sym_log_exp(*means, np.exp, np.exp)]


def contrast(fields: np.ndarray) -> np.ndarray:
    """Contrast of K per example of (B, 6, n, n): max over min of sqrt(det K(x)), the
    isotropic conductivity (for K = a(x) K0, max a / min a: the field laws' c)."""
    kappa = np.sqrt(fields[:, K11] * fields[:, K22] - fields[:, K12] ** 2)
    return kappa.max(axis=(1, 2)) / kappa.min(axis=(1, 2))


def variation(fields: np.ndarray) -> np.ndarray:
    """Relative variation of w per example of (B, 6, n, n): max |w / mean w - 1| (the
    smooth Helmholtz law's delta; 0 where w is constant or zero)."""
    w = fields[:, W]
    mean = w.mean(axis=(1, 2))
    safe = np.where(mean != 0, mean, 1.0)[:, None, None]
    return np.where(mean != 0, np.abs(w / safe - 1).max(axis=(1, 2)), 0.0)


def first_point(mask: np.ndarray) -> tuple[int, int, int]:
    """(example, row, column) of the first True entry of a (B, n, n) mask."""
    i, y, x = np.unravel_index(int(np.flatnonzero(mask.ravel())[0]), mask.shape)
    return int(i), int(y), int(x)


def describe_point(i: int, y: int, x: int, n: int) -> str:
    """'example i, grid point [y, x] (x = .., y = ..)' for error messages."""
    return f"example {i}, grid point [{y}, {x}] (x = {x / n:.4g}, y = {y / n:.4g})"
