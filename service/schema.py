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

from datagen.systems import (
    DIFFUSION_SCALE,
    CoefficientError,
    get_system,
    unified_coefficients,
)
from datagen.systems import diffusion_tensor as _diffusion_tensor
from service.wire import decode_array, encode_array

MIN_N, MAX_N = 32, 512
#: Largest magnitude of a source value or a coefficient: beyond it float32 and the
#: solver's symbols overflow long before a physical problem needs it.
MAX_VALUE = 1e12
MAX_COEFFICIENT = 1e6

Mode = Literal["surrogate", "exact", "validate"]
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


def check_grid(a: np.ndarray, what: str = "source") -> np.ndarray:
    """Shape n x n with n even in [MIN_N, MAX_N], finite, within MAX_VALUE; float64."""
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{what} must be a square n x n grid, got shape {list(a.shape)}")
    n = a.shape[0]
    if n % 2 or not MIN_N <= n <= MAX_N:
        raise ValueError(f"{what}: n must be even and between {MIN_N} and {MAX_N}, got n = {n}")
    # min and max are NaN when any value is (two passes, no temporaries)
    lo, hi = float(a.min()), float(a.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"{what} contains NaN or Inf")
    if max(-lo, hi) > MAX_VALUE:
        raise ValueError(f"{what} has values beyond +-{MAX_VALUE:g}")
    return a


def decode_field(value: FieldValue, what: str = "source") -> np.ndarray:
    """The field as a checked float64 (n, n) array (an encoded one is checked once)."""
    if isinstance(value, EncodedArray):
        if not value._checked:
            check_grid(value.decode(), what)
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


def _finite_bounded(value: float | None, name: str) -> None:
    if value is not None and abs(value) > MAX_COEFFICIENT:
        raise ValueError(f"{name} must be within +-{MAX_COEFFICIENT:g}, got {value:g}")


class DiffusionCoefficients(BaseModel):
    """K as ``k11, k22, k12`` (effective) or as the paper's ``eigenvalue, angle``.

    The second form is K = 0.01 R(-angle) diag(1, eigenvalue) R(angle).
    """

    model_config = _STRICT
    k11: float | None = None
    k22: float | None = None
    k12: float | None = None
    eigenvalue: float | None = None
    angle: float | None = None

    @model_validator(mode="after")
    def _one_parameterisation(self):
        direct = [self.k11, self.k22, self.k12]
        paper = [self.eigenvalue, self.angle]
        if all(v is not None for v in direct) and all(v is None for v in paper):
            pass
        elif all(v is not None for v in paper) and all(v is None for v in direct):
            if self.eigenvalue <= 0:
                raise ValueError(
                    f"eigenvalue must be > 0 for K to be positive definite, got {self.eigenvalue:g}"
                )
        else:
            raise ValueError(
                "give the diffusion tensor either as k11, k22, k12 or as eigenvalue, angle "
                "(all of one form, none of the other)"
            )
        for name in ("k11", "k22", "k12", "eigenvalue", "angle"):
            _finite_bounded(getattr(self, name), name)
        return self

    def diffusion(self) -> tuple[float, float, float]:
        if self.eigenvalue is not None:
            k = DIFFUSION_SCALE * _diffusion_tensor(self.eigenvalue, self.angle)[0]
            return float(k[0]), float(k[1]), float(k[2])
        return self.k11, self.k22, self.k12

    def unified(self) -> np.ndarray:
        k11, k22, k12 = self.diffusion()
        return unified_coefficients(k11, k22, k12)[0]


class AdvectionDiffusionCoefficients(DiffusionCoefficients):
    """K as for Poisson, plus the velocity ``v1, v2``."""

    v1: float
    v2: float

    @model_validator(mode="after")
    def _bounded_velocity(self):
        _finite_bounded(self.v1, "v1")
        _finite_bounded(self.v2, "v2")
        return self

    def unified(self) -> np.ndarray:
        k11, k22, k12 = self.diffusion()
        return unified_coefficients(k11, k22, k12, self.v1, self.v2)[0]


class HelmholtzCoefficients(BaseModel):
    """The wavenumber ``omega`` of -0.01 lap u - omega u = f (the paper trains on 1..10)."""

    model_config = _STRICT
    omega: float = Field(ge=0, le=MAX_COEFFICIENT)

    def unified(self) -> np.ndarray:
        return unified_coefficients(DIFFUSION_SCALE, DIFFUSION_SCALE, w=self.omega)[0]


class _Solve(BaseModel):
    model_config = _STRICT
    source: FieldValue = Field(description="n x n, n even in [32, 512]; base64 form preferred")
    mode: Mode = "surrogate"
    model: str | None = Field(
        default=None, description="name or name@version; default: the configured default"
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
    def _valid_coefficients(self):
        try:
            get_system(self.pde).validate(self.unified())
        except CoefficientError as e:
            raise ValueError(str(e)) from None
        return self

    def source_array(self) -> np.ndarray:
        """The source as float64 (n, n) (base64 is decoded once, during validation)."""
        if self._array is None:
            self._array = decode_field(self.source)
        return self._array

    def unified(self) -> np.ndarray:
        """The coefficients in the unified layout, (6,) float64 (computed once)."""
        if self._unified is None:
            self._unified = self.coefficients.unified()
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


class SolveResponse(BaseModel):
    pde: str
    n: int
    solution: FieldValue
    mode: Literal["surrogate", "exact"]
    reason: str | None = None
    model: str | None = None
    validation: Validation | None = None
    warnings: list[str] = []
    timings_ms: dict[str, float] = {}


class BatchResponse(BaseModel):
    items: list[SolveResponse]


def relative_l2(prediction: np.ndarray, reference: np.ndarray) -> float | None:
    """As datagen's metric, but defined when the reference is zero (0 if both are)."""
    ref = float(np.linalg.norm(reference))
    diff = float(np.linalg.norm(np.asarray(prediction) - reference))
    if ref == 0.0:
        return 0.0 if diff == 0.0 else None
    value = diff / ref
    return value if math.isfinite(value) else None
