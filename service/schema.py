"""The public request and response schema of the service, defined once.

``POST /solve`` takes a :data:`SolveRequest`, a union discriminated by
``pde``. Each pde has its own flat coefficient model whose field names are
the public contract; unknown fields are an error. A field is either nested
lists of numbers or :class:`EncodedArray` (base64 of little-endian float32 or
float64, the compact form). Everything here is checked before any solver
runs, so bad input gets a 422 naming the field, never a 5xx.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from datagen.field_solver import divergence_free_velocity
from datagen.solver import relative_l2 as datagen_relative_l2
from datagen.systems import (
    DIFFUSION_SCALE,
    CoefficientError,
    get_system,
    unified_field,
)
from datagen.systems import diffusion_tensor as _diffusion_tensor
from service.wire import decode_array, encode_array

MIN_N, MAX_N = 32, 512
#: The largest grid of the binary protocol (KServe v2, raw tensors): a 1024^2 problem is
#: 8 MB there, 11 MB of base64 in JSON, which keeps MAX_N.
MAX_N_BINARY = 1024
#: Largest magnitude of a source value or a coefficient: beyond it float32 and the
#: solver's symbols overflow long before a physical problem needs it.
MAX_VALUE = 1e12
MAX_COEFFICIENT = 1e6

Mode = Literal["surrogate", "exact", "validate", "refine", "auto"]
#: What answered: the surrogate alone, the exact solver, the exact solver started from the
#: surrogate's answer, or both (validate: ``solution`` is the surrogate's, checked
#: against the exact solver's in ``validation``).
Answered = Literal["surrogate", "exact", "refine", "validate"]
#: The exact solver's relative-residual tolerance for coefficient fields (exact, validate
#: and refine), and auto's tolerance on the relative L2 error, where the request names none.
DEFAULT_TOLERANCE = 1e-8
DEFAULT_AUTO_TOLERANCE = 1e-2
MIN_TOLERANCE, MAX_TOLERANCE = 1e-12, 1e-2
#: auto's tolerance is an error, not a residual: a user may accept up to 50%.
MAX_AUTO_TOLERANCE = 0.5
MAX_ITERATIONS = 10_000
EnvelopePolicy = Literal["fallback", "surrogate", "reject"]
MeanPolicy = Literal["project", "reject"]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


class EncodedArray(BaseModel):
    """An n x n array as base64 of its little-endian bytes, row-major ([y, x])."""

    model_config = _STRICT
    dtype: Literal["float32", "float64"]
    shape: tuple[int, int]
    data: str
    _array: np.ndarray | None = PrivateAttr(default=None)
    _checked: bool = PrivateAttr(default=False)  # by check_grid, through decode_field
    _max_n: int = PrivateAttr(default=MAX_N)  # MAX_N_BINARY for a binary tensor

    @classmethod
    def encode(cls, array: np.ndarray, dtype: str = "float32") -> EncodedArray:
        return cls(**encode_array(array, dtype))

    def decode(self) -> np.ndarray:
        """float64 (n, n); decoded once per instance."""
        if self._array is None:
            self._array = self._decode()
        return self._array

    def _decode(self) -> np.ndarray:
        return decode_array(self.dtype, self.shape, self.data)


FieldValue = EncodedArray | list[list[float]]


def _where(index: int, n: int) -> str:
    y, x = divmod(index, n)
    return f"grid point [{y}, {x}] (x = {x / n:.4g}, y = {y / n:.4g})"


def check_grid(a: np.ndarray, what: str = "source", max_n: int = MAX_N) -> np.ndarray:
    """Shape n x n with n even in [MIN_N, max_n], finite, within MAX_VALUE; float64."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be a square n x n grid, got shape {list(a.shape)}")
    n = a.shape[0]
    if n % 2 or not MIN_N <= n <= max_n:
        more = (
            f" (up to {MAX_N_BINARY} with the binary protocol, POST /v2/...infer)"
            if max_n < MAX_N_BINARY and n <= MAX_N_BINARY and n % 2 == 0
            else ""
        )
        raise ValueError(
            f"{what}: n must be even and between {MIN_N} and {max_n}, got n = {n}{more}"
        )
    # min and max are NaN when any value is (two passes, no temporaries)
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        i = int(np.flatnonzero(~np.isfinite(a))[0])
        raise ValueError(f"{what} contains NaN or Inf ({a.flat[i]} at {_where(i, n)})")
    if max(-lo, hi) > MAX_VALUE:
        i = int(np.flatnonzero(np.abs(a) > MAX_VALUE)[0])
        raise ValueError(
            f"{what} has values beyond +-{MAX_VALUE:g} ({a.flat[i]:g} at {_where(i, n)})"
        )
    return a


def decode_field(value: FieldValue, what: str = "source") -> np.ndarray:
    """The field as a checked float64 (n, n) array (an encoded one is checked once)."""
    if isinstance(value, EncodedArray):
        if not value._checked:
            try:
                array = value.decode()
            except ValueError as e:
                raise ValueError(f"{what}: {e}") from None
            check_grid(array, what, value._max_n)
            value._checked = True
        return value.decode()
    if not value or any(len(row) != len(value[0]) for row in value):
        raise ValueError(f"{what} rows must all have the same length")
    return check_grid(np.asarray(value, dtype=np.float64), what)


def encode_like(array: np.ndarray, like: FieldValue) -> FieldValue:
    """``array`` in the request's encoding: base64 of the same dtype, or nested lists."""
    if isinstance(like, EncodedArray):
        return EncodedArray.encode(array, like.dtype)
    return np.asarray(array, dtype=np.float64).tolist()


#: A coefficient: one number, or an n x n field on the source's grid (the source's
#: encodings: nested lists or base64).
Coefficient = float | FieldValue

#: Coefficients that must be > 0 (``positive``) or >= 0 everywhere.
_POSITIVE = ("eigenvalue", "conductivity")
_NON_NEGATIVE = ("omega",)


def _coefficient(value: Coefficient | None, name: str) -> float | np.ndarray | None:
    """A coefficient as a float or a checked float64 (n, n) field; ValueError naming it and
    the first offending grid point."""
    if value is None:
        return None
    field = not isinstance(value, (int, float))
    a = decode_field(value, name) if field else float(value)
    values = np.asarray(a).ravel()

    def refuse(bad: np.ndarray, what: str) -> None:
        i = int(np.flatnonzero(bad)[0])
        at = f" at {_where(i, a.shape[-1])}" if field else ""
        raise ValueError(f"{name} must be {what}, got {values[i]:g}{at}")

    if (np.abs(values) > MAX_COEFFICIENT).any():
        refuse(np.abs(values) > MAX_COEFFICIENT, f"within +-{MAX_COEFFICIENT:g}")
    if name in _POSITIVE and (values <= 0).any():
        refuse(values <= 0, "> 0")
    if name in _NON_NEGATIVE and (values < 0).any():
        refuse(values < 0, ">= 0")
    return a


class _Coefficients(BaseModel):
    """Coefficients, each a number or an n x n field on the source's grid."""

    model_config = _STRICT
    _values: dict[str, float | np.ndarray] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _decode(self):
        for name in type(self).model_fields:
            value = _coefficient(getattr(self, name), name)
            if value is not None:
                self._values[name] = value
        return self

    def value(self, name: str) -> float | np.ndarray | None:
        """A coefficient as given: a float, a float64 (n, n) field, or None."""
        return self._values.get(name)

    def grids(self) -> dict[str, tuple[int, ...]]:
        """The shape of every coefficient given as a field."""
        return {k: v.shape for k, v in self._values.items() if isinstance(v, np.ndarray)}


class DiffusionCoefficients(_Coefficients):
    """K as ``k11, k22, k12`` (effective) or as the paper's ``eigenvalue, angle``, each a
    number or a field; optionally times a ``conductivity``.

    The second form is K = 0.01 R(-angle) diag(1, eigenvalue) R(angle). The Darcy form:
    ``conductivity`` a(x) (> 0, usually a field) multiplies a constant tensor K0 given in
    either form: K(x) = a(x) K0, the heterogeneous medium of Darcy flow.
    """

    k11: Coefficient | None = None
    k22: Coefficient | None = None
    k12: Coefficient | None = None
    eigenvalue: Coefficient | None = None
    angle: Coefficient | None = None
    conductivity: Coefficient | None = Field(
        default=None,
        description="Darcy form: K(x) = conductivity(x) K0, K0 constant (k11, k22, k12 or "
        "eigenvalue, angle as numbers)",
    )

    @model_validator(mode="after")
    def _one_parameterisation(self):
        direct = [self.k11, self.k22, self.k12]
        paper = [self.eigenvalue, self.angle]
        if not (
            (all(v is not None for v in direct) and all(v is None for v in paper))
            or (all(v is not None for v in paper) and all(v is None for v in direct))
        ):
            raise ValueError(
                "give the diffusion tensor either as k11, k22, k12 or as eigenvalue, angle "
                "(all of one form, none of the other)"
            )
        if self.conductivity is not None:
            fields = sorted(set(self.grids()) & set(_TENSOR_NAMES))
            if fields:
                raise ValueError(
                    f"with a conductivity, the tensor K0 it multiplies is constant: give "
                    f"{', '.join(fields)} as numbers"
                )
        return self

    def diffusion(self) -> tuple[float | np.ndarray, float | np.ndarray, float | np.ndarray]:
        """(k11, k22, k12), each a float or an (n, n) field, the conductivity applied."""
        if self.eigenvalue is not None:
            e, t = np.broadcast_arrays(self.value("eigenvalue"), self.value("angle"))
            k = DIFFUSION_SCALE * _diffusion_tensor(e.ravel(), t.ravel())
            entries = [k[:, j].reshape(e.shape) if e.ndim else float(k[0, j]) for j in range(3)]
        else:
            entries = [self.value(name) for name in ("k11", "k22", "k12")]
        a = self.value("conductivity")
        if a is not None:
            entries = [a * k for k in entries]
        return tuple(entries)

    def unified(self) -> np.ndarray:
        """(6,) for numbers, (6, n, n) where any coefficient is a field."""
        return unified_field(*self.diffusion())


_TENSOR_NAMES = ("k11", "k22", "k12", "eigenvalue", "angle")


class AdvectionDiffusionCoefficients(DiffusionCoefficients):
    """K as for Poisson, plus the velocity ``v1, v2`` (numbers or a divergence-free field:
    one that is not, to 1%, is refused; the rest of its divergence is projected out)."""

    v1: Coefficient
    v2: Coefficient

    def unified(self) -> np.ndarray:
        return unified_field(*self.diffusion(), self.value("v1"), self.value("v2"))


class HelmholtzCoefficients(_Coefficients):
    """The wavenumber ``omega`` of -0.01 lap u - omega u = f (the paper trains on 1..10): a
    number, or a field omega(x) >= 0 (a varying medium)."""

    omega: Coefficient

    def unified(self) -> np.ndarray:
        return unified_field(DIFFUSION_SCALE, DIFFUSION_SCALE, w=self.value("omega"))


class _Solve(BaseModel):
    model_config = _STRICT
    source: FieldValue = Field(
        description="n x n, n even in [32, 512] (1024 in the binary protocol); base64 form "
        "preferred"
    )
    mode: Mode = Field(
        default="surrogate",
        description="surrogate: the model, with an error estimate; exact: the exact solver "
        "(FFT for constant coefficients, Krylov to `tolerance` for fields); validate: both; "
        "refine: the exact solver started from the model's answer; auto: the cheapest answer "
        "whose error is within `tolerance`",
    )
    tolerance: float | None = Field(
        default=None,
        ge=MIN_TOLERANCE,
        le=MAX_AUTO_TOLERANCE,
        description=f"exact, validate, refine: the relative residual ||f - L u|| / ||f|| a "
        f"field solve must reach ({MIN_TOLERANCE:g}..{MAX_TOLERANCE:g}, default "
        f"{DEFAULT_TOLERANCE:g}; constant coefficients are solved exactly by FFT); auto: the "
        f"relative L2 error ||u - u*|| / ||u*|| allowed in the answer ({MIN_TOLERANCE:g}.."
        f"{MAX_AUTO_TOLERANCE:g}, default {DEFAULT_AUTO_TOLERANCE:g})",
    )
    max_iterations: int = Field(
        default=1000, ge=1, le=MAX_ITERATIONS, description="Krylov iterations at most (fields)"
    )
    model: str | None = Field(
        default=None,
        description="name or name@version, kept as named; default: the published model whose "
        "envelope covers the problem and whose card measured the lowest error on its band "
        "(the configured default where none did)",
    )
    out_of_envelope: EnvelopePolicy = "fallback"
    nonzero_mean: MeanPolicy = Field(
        default="project",
        description="poisson and advection_diffusion need zero-mean sources: subtract the "
        "mean (with a warning) or reject the request",
    )

    _array: np.ndarray | None = PrivateAttr(default=None)
    _unified: np.ndarray | None = PrivateAttr(default=None)

    @field_validator("source")
    @classmethod
    def _valid_source(cls, value: FieldValue) -> FieldValue:
        decode_field(value)  # shape, range and encoding errors name the field here
        return value

    @model_validator(mode="after")
    def _residual_tolerance(self):
        if self.mode != "auto" and self.tolerance is not None and self.tolerance > MAX_TOLERANCE:
            raise ValueError(
                f"tolerance {self.tolerance:g}: in {self.mode} mode it is the solve's relative "
                f"residual, at most {MAX_TOLERANCE:g} (auto takes an error up to "
                f"{MAX_AUTO_TOLERANCE:g})"
            )
        return self

    @model_validator(mode="after")
    def _valid_coefficients(self):
        n = self.source_array().shape
        for name, grid in self.coefficients.grids().items():
            if grid != n:
                raise ValueError(
                    f"coefficient {name} is a {grid[0]} x {grid[1]} field, but the source's "
                    f"grid is {n[0]} x {n[1]}: fields lie on the source's grid"
                )
        system = get_system(self.pde)
        try:
            c = system.validate(self.coefficients.unified())
            if c.ndim == 4:
                c = divergence_free_velocity(system, c)
        except CoefficientError as e:
            message = str(e).replace("example 0, ", "").replace(" of example 0", "")
            raise ValueError(message) from None
        self._unified = c[0]
        return self

    def source_array(self) -> np.ndarray:
        """The source as float64 (n, n) (base64 is decoded once, during validation)."""
        if self._array is None:
            self._array = decode_field(self.source)
        return self._array

    def unified(self) -> np.ndarray:
        """The coefficients in the unified layout, float64: (6,) for numbers, (6, n, n)
        where any is a field (validated once, velocity fields made divergence-free)."""
        return self._unified


class PoissonRequest(_Solve):
    pde: Literal["poisson"]
    coefficients: DiffusionCoefficients


class AdvectionDiffusionRequest(_Solve):
    pde: Literal["advection_diffusion"]
    coefficients: AdvectionDiffusionCoefficients


class HelmholtzRequest(_Solve):
    pde: Literal["helmholtz"]
    coefficients: HelmholtzCoefficients


SolveRequestTypes = PoissonRequest | AdvectionDiffusionRequest | HelmholtzRequest
SolveRequest = Annotated[SolveRequestTypes, Field(discriminator="pde")]


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[SolveRequest] = Field(min_length=1)


class Validation(BaseModel):
    relative_l2: float | None = Field(
        description="||surrogate - exact|| / ||exact||; null when the exact solution is zero "
        "and the surrogate's is not"
    )
    exact_solution: FieldValue


class SolverReport(BaseModel):
    """How the exact solver reached its answer."""

    method: Literal["fft", "cg", "gmres"]
    iterations: int = Field(description="Krylov iterations (0 for the FFT solve)")
    relative_residual: float | None = Field(
        description="||f - L u|| / ||f|| of the answer; null for the FFT solve (exact to "
        "rounding, not computed)"
    )
    initial_guess: Literal["zero", "surrogate"] = "zero"
    preconditioner: Literal["reference", "scaled"] | None = Field(
        default=None,
        description="CG and GMRES: the FFT inverse of the reference operator, or the scaled "
        "Green operator (chosen per problem on smooth media); null for the FFT solve",
    )
    solved_in: Literal["ingress", "exact replica"] = Field(
        default="exact replica",
        description="where it was solved: in the ingress (FFT solves, and field solves "
        "predicted to be short: no call to another replica) or an exact-solver replica",
    )


class SolveResponse(BaseModel):
    """One answer. The fields come in this order on the wire: what answered and how well
    first, the arrays last, so the head of a long answer (curl, a log) says what it is."""

    pde: str
    n: int
    mode: Answered = Field(
        description="what answered: surrogate, exact or refine (for auto, the one it chose; "
        "an out-of-envelope fallback is exact), or validate (solution: the surrogate's)"
    )
    reason: str | None = Field(default=None, description="why this mode answered, in words")
    model: str | None = None
    routed: str | None = Field(
        default=None,
        description="a request that names no model: which published model was chosen and why "
        "(the one covering it with the lowest measured error on its band)",
    )
    error_estimate: float | None = Field(
        default=None,
        description="surrogate answers: an a-posteriori estimate of the relative L2 error, "
        "from the preconditioned residual (exact for constant coefficients)",
    )
    solver: SolverReport | None = None
    warnings: list[str] = []
    timings_ms: dict[str, float] = {}
    solution: FieldValue
    validation: Validation | None = None


class BatchResponse(BaseModel):
    items: list[SolveResponse]


def relative_l2(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """datagen's metric for one (n, n) answer, defined where the reference is zero too (0 if
    both are, None if only the reference is); None where it is not finite."""
    if not np.any(reference):
        return 0.0 if not np.any(prediction) else None
    with np.errstate(over="ignore", invalid="ignore"):
        value = float(datagen_relative_l2(prediction, reference))
    return value if math.isfinite(value) else None
