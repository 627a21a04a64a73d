"""The three PDE systems and the unified coefficient vector, defined once.

Every system is a special case of one operator on the periodic unit square,

    L u = -div(K grad u) + v . grad u - w u = f,

with the unified coefficient vector ``[k11, k22, k12, v1, v2, w]`` (K is the
effective, already scaled, diffusion tensor). A system fixes which entries are
free and which are zero; Helmholtz carries K = 0.01 I. The authors' HDF5 files
store a per-system ``tensor`` with fewer columns; :meth:`System.to_unified` and
:meth:`System.from_unified` convert between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from datagen.coefficients import (
    COEFFICIENT_NAMES,
    K11,
    K12,
    K22,
    N_COEFFICIENTS,
    V1,
    V2,
    CoefficientError,
    W,
    as_field_batch,
    describe_point,
    first_point,
    is_field,
)

# The layout's names are re-exported: most of pdeserve imports them from here.
__all__ = [
    "ADVECTION_DIFFUSION",
    "COEFFICIENT_NAMES",
    "DIFFUSION_SCALE",
    "HELMHOLTZ",
    "K11",
    "K12",
    "K22",
    "N_COEFFICIENTS",
    "POISSON",
    "SYSTEMS",
    "V1",
    "V2",
    "CoefficientError",
    "System",
    "W",
    "anisotropy",
    "diffusion_tensor",
    "get_system",
    "system_for_tensor_width",
    "unified_coefficients",
]

#: The paper's diffusion scale: K = 0.01 * R(-t) diag(1, e) R(t); Helmholtz uses 0.01 I.
DIFFUSION_SCALE = 0.01

# Relative tolerance for "this coefficient is fixed at this value" checks; files
# store coefficients as float32, so exact equality cannot be asked for.
_FIXED_RTOL = 1e-6


@dataclass(frozen=True)
class System:
    """One PDE system of the paper.

    ``tensor_columns`` describes the authors' per-system ``tensor``: a name per
    column and the unified coefficients it holds (Helmholtz's single ``k``
    column is both k11 and k22). ``free`` lists the unified coefficients the
    system lets vary; the others are fixed at ``fixed`` (0 where not given).
    ``zero_mean``: sources and solutions have their mean removed (the operator
    annihilates constants, so the mean mode has no solution).
    """

    name: str
    label: str
    equation: str
    tensor_columns: tuple[tuple[str, tuple[str, ...]], ...]
    free: tuple[str, ...]
    zero_mean: bool
    fixed: tuple[tuple[str, float], ...] = ()

    @property
    def tensor_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.tensor_columns)

    @property
    def n_tensor_columns(self) -> int:
        return len(self.tensor_columns)

    def fixed_value(self, name: str) -> float:
        """The value a coefficient that is not free takes in this system."""
        return dict(self.fixed).get(name, 0.0)

    def fixed_coefficients(self) -> np.ndarray:
        """The unified vector with every fixed coefficient set and free ones 0, (6,)."""
        return np.array([self.fixed_value(name) for name in COEFFICIENT_NAMES])

    def to_unified(self, tensor: np.ndarray) -> np.ndarray:
        """Authors' ``tensor`` (N, C) -> unified coefficients (N, 6), float64."""
        tensor = np.asarray(tensor, dtype=np.float64)
        if tensor.ndim != 2 or tensor.shape[1] != self.n_tensor_columns:
            raise CoefficientError(
                f"{self.name}: tensor must have shape (N, {self.n_tensor_columns}) "
                f"with columns {list(self.tensor_names)}, got {tensor.shape}"
            )
        out = np.zeros((tensor.shape[0], N_COEFFICIENTS))
        for j, (_, targets) in enumerate(self.tensor_columns):
            for target in targets:
                out[:, COEFFICIENT_NAMES.index(target)] = tensor[:, j]
        return out

    def from_unified(self, coefficients: np.ndarray) -> np.ndarray:
        """Unified coefficients (N, 6) -> the authors' ``tensor`` (N, C)."""
        c = _as_batch(coefficients)
        return c[:, [COEFFICIENT_NAMES.index(targets[0]) for _, targets in self.tensor_columns]]

    def validate(self, coefficients: np.ndarray) -> np.ndarray:
        """Return ``coefficients`` as float64 (B, 6) or (B, 6, n, n) or raise CoefficientError.

        Checks, at every example and (for fields) every grid point: shape,
        finiteness, the fixed values of coefficients the system does not let
        vary (zero where it has no term; Helmholtz's K = 0.01 I), and K
        symmetric positive definite (Poisson, advection-diffusion). A field
        error names the first offending grid point.
        """
        field = is_field(coefficients)
        c = as_field_batch(coefficients) if field else _as_batch(coefficients)
        self._check(c if field else c[:, :, None, None], field)
        return c

    def _off_fixed(self, name: str, values: np.ndarray) -> np.ndarray | None:
        """Where a coefficient the system fixes is off its value (None for free ones)."""
        if name in self.free:
            return None
        expected = self.fixed_value(name)
        if expected == 0.0:
            return values != 0.0
        return np.abs(values - expected) > _FIXED_RTOL * expected

    def _check(self, f: np.ndarray, field: bool) -> None:
        """The checks on (B, 6, n, n) values; scalars come as 1 x 1 fields (``field`` False),
        and the errors then name the example alone."""
        n = f.shape[-1]

        def where(i: int, y: int, x: int) -> str:
            return describe_point(i, y, x, n) if field else f"example {i}"

        bad = ~np.isfinite(f)
        if bad.any():
            i, j, y, x = (int(a) for a in np.unravel_index(np.flatnonzero(bad)[0], bad.shape))
            raise CoefficientError(
                f"{self.name}: coefficient {COEFFICIENT_NAMES[j]!r} is {f[i, j, y, x]} at "
                f"{where(i, y, x)}; coefficients must be finite (no NaN or Inf)"
            )
        everywhere = " everywhere" if field else ""
        for j, name in enumerate(COEFFICIENT_NAMES):
            off = self._off_fixed(name, f[:, j])
            if off is not None and off.any():
                i, y, x = first_point(off)
                raise CoefficientError(
                    f"{self.name}: coefficient {name!r} must be {self.fixed_value(name):g}"
                    f"{everywhere} for this system ({where(i, y, x)} has {f[i, j, y, x]:g}); "
                    f"free coefficients are {list(self.free)}"
                )
        if "k11" in self.free:
            not_spd = ~_positive_definite(f[:, K11], f[:, K22], f[:, K12])
            if not_spd.any():
                i, y, x = first_point(not_spd)
                k = f[i, [K11, K22, K12], y, x]
                raise CoefficientError(
                    f"{self.name}: diffusion tensor {_tensor(*k)} at {where(i, y, x)} {_NOT_SPD}"
                )


_NOT_SPD = "is not symmetric positive definite: need k11 > 0, k22 > 0 and k11*k22 - k12**2 > 0"


def _positive_definite(k11: np.ndarray, k22: np.ndarray, k12: np.ndarray) -> np.ndarray:
    return (k11 > 0) & (k22 > 0) & (k11 * k22 - k12 * k12 > 0)


def _tensor(k11: float, k22: float, k12: float) -> str:
    return f"K = [[{k11:g}, {k12:g}], [{k12:g}, {k22:g}]]"


def _as_batch(coefficients: np.ndarray) -> np.ndarray:
    c = np.asarray(coefficients, dtype=np.float64)
    if c.ndim == 1:
        c = c[None, :]
    if c.ndim != 2 or c.shape[1] != N_COEFFICIENTS:
        raise CoefficientError(
            f"coefficients must have shape (6,) or (B, 6) in the order {list(COEFFICIENT_NAMES)}, "
            f"got {np.shape(coefficients)}"
        )
    return c


def _own_columns(*names: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple((name, (name,)) for name in names)


POISSON = System(
    name="poisson",
    label="SYS-1 Poisson",
    equation="-div(K grad u) = f",
    tensor_columns=_own_columns("k11", "k22", "k12"),
    free=("k11", "k22", "k12"),
    zero_mean=True,
)
ADVECTION_DIFFUSION = System(
    name="advection_diffusion",
    label="SYS-2 advection-diffusion",
    equation="-div(K grad u) + v . grad u = f",
    tensor_columns=_own_columns("k11", "k22", "k12", "v1", "v2"),
    free=("k11", "k22", "k12", "v1", "v2"),
    zero_mean=True,
)
HELMHOLTZ = System(
    name="helmholtz",
    label="SYS-3 Helmholtz",
    equation="-0.01 lap u - w u = f",
    tensor_columns=(("k", ("k11", "k22")), ("w", ("w",))),
    free=("w",),
    zero_mean=False,
    fixed=(("k11", DIFFUSION_SCALE), ("k22", DIFFUSION_SCALE)),
)

SYSTEMS: dict[str, System] = {s.name: s for s in (POISSON, ADVECTION_DIFFUSION, HELMHOLTZ)}


def get_system(system: str | System) -> System:
    """Look a system up by its name (``poisson``, ``advection_diffusion``, ``helmholtz``)."""
    if isinstance(system, System):
        return system
    try:
        return SYSTEMS[system]
    except (KeyError, TypeError):
        raise ValueError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}") from None


def system_for_tensor_width(width: int) -> System:
    """The system whose authors' ``tensor`` has ``width`` columns (3, 5 or 2)."""
    for s in SYSTEMS.values():
        if s.n_tensor_columns == width:
            return s
    raise ValueError(
        f"no system stores {width} tensor columns (poisson 3, advection_diffusion 5, helmholtz 2)"
    )


def unified_coefficients(
    k11: np.ndarray | float = 0.0,
    k22: np.ndarray | float = 0.0,
    k12: np.ndarray | float = 0.0,
    v1: np.ndarray | float = 0.0,
    v2: np.ndarray | float = 0.0,
    w: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Stack named coefficients (scalars or arrays of one length) into (B, 6)."""
    values = (k11, k22, k12, v1, v2, w)
    if all(isinstance(a, (float, int)) for a in values):  # one problem: B = 1, no broadcast
        return np.array([values], dtype=np.float64)
    cols = np.broadcast_arrays(*(np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in values))
    return np.stack(cols, axis=1)


def unified_field(
    k11: np.ndarray | float = 0.0,
    k22: np.ndarray | float = 0.0,
    k12: np.ndarray | float = 0.0,
    v1: np.ndarray | float = 0.0,
    v2: np.ndarray | float = 0.0,
    w: np.ndarray | float = 0.0,
) -> np.ndarray:
    """One problem's named coefficients, each a number or an (n, n) field, as (6, n, n)
    (numbers become constant fields); (6,) when all are numbers."""
    values = [np.asarray(a, dtype=np.float64) for a in (k11, k22, k12, v1, v2, w)]
    grids = {a.shape for a in values if a.ndim}
    if not grids:
        return np.array(values)
    if len(grids) > 1 or len(next(iter(grids))) != 2:
        raise CoefficientError(
            f"coefficient fields must all be n x n on one grid, got shapes {sorted(grids)}"
        )
    return np.stack(np.broadcast_arrays(*values))


def diffusion_tensor(eigenvalue: np.ndarray | float, angle: np.ndarray | float) -> np.ndarray:
    """Unscaled A = R(-t) diag(1, e) R(t) as rows [a11, a22, a12], (B, 3).

    The paper's K is ``DIFFUSION_SCALE * A``.
    """
    e = np.atleast_1d(np.asarray(eigenvalue, dtype=np.float64))
    t = np.atleast_1d(np.asarray(angle, dtype=np.float64))
    c, s = np.cos(t), np.sin(t)
    return np.stack([c * c + e * s * s, s * s + e * c * c, c * s * (e - 1.0)], axis=1)


def anisotropy(coefficients: np.ndarray) -> np.ndarray:
    """Largest over smallest eigenvalue of K (the paper's e) per example, (B,)."""
    c = _as_batch(coefficients)
    mean = (c[:, K11] + c[:, K22]) / 2
    half = np.hypot((c[:, K11] - c[:, K22]) / 2, c[:, K12])
    return (mean + half) / (mean - half)
