"""What runs for one request, decided before anything is computed.

The one place that maps a request's ``mode`` to the work done: the Ingress carries a
:class:`Plan` out and never decides anything itself, so a new mode touches
:func:`plan_request` only.
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
from service.schema import SolveRequest

#: Finds the card of a model reference (None: the default model), raising a 404 naming
#: ``loc`` where there is none.
CardLookup = Callable[[str | None, list[Any]], ModelCard]


@dataclass
class Plan:
    """What is decided about one request before anything is computed."""

    source: np.ndarray  # float64 (n, n), mean projected where needed
    coefficients: np.ndarray  # unified (6,)
    mode: str  # surrogate | exact | validate: what will run
    loc: list[Any]  # where the request sits in the body, for errors
    warnings: list[str] = field(default_factory=list)
    card: ModelCard | None = None
    reason: str | None = None  # why the mode differs from the request's


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


def plan_request(request: SolveRequest, loc: list[Any], card: CardLookup) -> Plan:
    """Everything decided before computing: source, mode, model, reasons, warnings."""
    warnings: list[str] = []
    source = projected_source(request, loc, warnings)
    plan = Plan(source, request.unified(), request.mode, loc, warnings)
    if request.mode == "exact":
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
            plan.mode = "exact"
            plan.reason = f"fell back to the exact solver: {why}"
        else:
            warnings.append(f"answered by the surrogate outside its envelope: {why}")
    return plan
