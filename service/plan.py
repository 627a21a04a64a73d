"""What runs for one request, decided before anything is computed.

The one place that maps a request's ``mode`` to the work done: the Ingress carries a
:class:`Plan` out and decides nothing itself but auto's one choice that needs the
surrogate's answer first (its error estimate against the tolerance).

- ``exact``: the exact solver (FFT for constant coefficients, Krylov to ``tolerance``
  for fields), cold.
- ``surrogate``: the model, with an error estimate.
- ``validate``: both at once, and the surrogate's error against the exact answer.
- ``refine``: the model's answer starts the exact solver.
- ``auto``: constant coefficients take the FFT solve (exact, and cheaper than the
  model); fields take the surrogate where its error estimate is within ``tolerance``,
  else ``refine``. Outside the model's envelope, ``exact``.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from datagen.solver import MEAN_TOLERANCE
from datagen.systems import get_system
from service.envelope import envelope_reasons
from service.errors import http_error
from service.registry import ModelCard
from service.schema import (
    DEFAULT_AUTO_TOLERANCE,
    DEFAULT_TOLERANCE,
    MIN_TOLERANCE,
    SolveRequest,
)

#: Finds the card of a model reference (None: the default model), raising a 404 naming
#: ``loc`` where there is none.
CardLookup = Callable[[str | None, list[Any]], ModelCard]

#: auto refines to a relative residual of this fraction of its error tolerance: the error
#: of a Krylov answer is at most its residual times the preconditioned operator's
#: condition number, which the contrast bounds (<= 100 in the media served).
AUTO_RESIDUAL_FRACTION = 1e-2


@dataclass
class Plan:
    """What is decided about one request before anything is computed."""

    source: np.ndarray  # float64 (n, n), mean projected where needed
    coefficients: np.ndarray  # unified: (6,), or (6, n, n) fields
    mode: str  # surrogate | exact | validate | refine | auto: what will run
    loc: list[Any]  # where the request sits in the body, for errors
    tolerance: float  # the exact solver's relative residual (fields)
    max_iterations: int
    warnings: list[str] = field(default_factory=list)
    card: ModelCard | None = None
    reason: str | None = None  # why the mode differs from the request's
    error_tolerance: float | None = None  # auto: the relative L2 error allowed
    fallback: bool = False  # outside the envelope: the exact solver instead of the model
    deadline: float | None = None  # time.time() at which the request's budget ends

    @property
    def fields(self) -> bool:
        return self.coefficients.ndim == 3


def projected_source(request: SolveRequest, loc: list[Any], warnings: list[str]) -> np.ndarray:
    """The source, its mean subtracted (with a warning) where the pde needs zero mean."""
    source = request.source_array()
    if not get_system(request.pde).zero_mean:
        return source
    mean = float(source.mean())
    if abs(mean) <= MEAN_TOLERANCE * max(float(np.abs(source).max()), 1e-300):
        return source
    if request.nonzero_mean == "reject":
        raise http_error(
            422,
            [*loc, "source"],
            f"{request.pde} needs a zero-mean source (the operator annihilates "
            f"constants); this one has mean {mean:.4g}",
        )
    warnings.append(f"subtracted the source's mean {mean:.4g} ({request.pde} needs 0)")
    return source - mean


def plan_request(
    request: SolveRequest, loc: list[Any], card: CardLookup, deadline: float | None = None
) -> Plan:
    """Everything decided before computing: source, mode, model, reasons, warnings;
    ``deadline`` (``time.time()``) is when the request's budget ends."""
    warnings: list[str] = []
    source = projected_source(request, loc, warnings)
    plan = Plan(
        source,
        request.unified(),
        request.mode,
        loc,
        tolerance=request.tolerance or DEFAULT_TOLERANCE,
        max_iterations=request.max_iterations,
        warnings=warnings,
        deadline=deadline,
    )
    if plan.mode == "auto":
        plan.error_tolerance = request.tolerance or DEFAULT_AUTO_TOLERANCE
        plan.tolerance = max(MIN_TOLERANCE, AUTO_RESIDUAL_FRACTION * plan.error_tolerance)
        if not plan.fields:
            plan.mode = "exact"
            plan.reason = (
                "auto: constant coefficients, so the FFT solve (exact, and cheaper than the model)"
            )
    if plan.mode == "refine" and not plan.fields:
        plan.mode = "exact"
        plan.reason = (
            "refine: constant coefficients, so the FFT solve (exact; a start would not help)"
        )
    if plan.mode == "exact":
        if request.model is not None:  # named but unused: it must exist all the same
            card(request.model, [*loc, "model"])
        return plan
    plan.card = card(request.model, [*loc, "model"])
    reasons = envelope_reasons(plan.card, request.pde, source, plan.coefficients)
    if reasons:
        why = "; ".join(reasons)
        if request.out_of_envelope == "reject":
            raise http_error(422, [*loc, "coefficients"], f"outside the model's envelope: {why}")
        if request.out_of_envelope == "fallback":
            plan.reason = f"fell back to the exact solver: {why}"
            if plan.mode == "auto":
                plan.reason = f"auto: outside the model's envelope, so the exact solver: {why}"
            plan.mode, plan.fallback = "exact", True
        else:
            warnings.append(f"answered by the surrogate outside its envelope: {why}")
    return plan


def auto_choice(estimate: float, tolerance: float) -> tuple[str, str]:
    """auto on fields, once the surrogate has answered: ``surrogate`` where its error
    estimate is within ``tolerance``, else ``refine``; and the reason, for the response."""
    if estimate <= tolerance:
        return "surrogate", (
            f"auto: the surrogate's estimated error {estimate:.3g} is within the tolerance "
            f"{tolerance:g}"
        )
    return "refine", (
        f"auto: the surrogate's estimated error {estimate:.3g} is above the tolerance "
        f"{tolerance:g}, so the exact solver refined its answer"
    )
