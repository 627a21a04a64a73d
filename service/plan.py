"""What runs for one request: decided before anything is computed, and carried out here.

The one place that maps a request to the work done. :func:`plan_request` decides the
source, the model, the envelope, the mode, and for ``auto`` which answer to try first;
:func:`carry_out` runs the plan's mode, one small function each (:data:`STRATEGIES`),
against the ingress's solvers (:class:`Solvers`), and returns an :class:`Answer`. A new
mode is a function and an entry there.

- ``exact``: the exact solver (FFT for constant coefficients, Krylov to ``tolerance``
  for fields), cold.
- ``surrogate``: the model, with an error estimate.
- ``validate``: both at once, and the surrogate's error against the exact answer.
- ``refine``: the model's answer starts the exact solver.
- ``auto`` (``tolerance``: the relative L2 error allowed): constant coefficients take
  the FFT solve (exact, and cheaper than the model). For fields the plan predicts, before
  anything runs, each candidate's error and cost (:func:`decide`): the surrogate's error
  from the model card's measured error on the problem's band (:mod:`modelstore.bands`),
  the costs from what this service measured (:mod:`service.costs`). It tries the
  surrogate only where its predicted error is within the tolerance and the attempt pays
  on average (its cost, plus the exact solve it may still need, below the exact solve's
  alone); the surrogate's error estimate then decides whether its answer is returned.
  Otherwise the exact solver answers, cold, to the residual that keeps its error within
  a tenth of the tolerance (:data:`AUTO_RESIDUAL_FRACTION`). Refine (the model's answer
  as the solver's start) is no candidate: its answers' residuals are 1.6-40x the
  source's, so it saved 1-3 of 17-52 iterations and cost the model's call besides; on
  bench/workload.py always-refine was the slowest strategy in every class.
  Outside the model's envelope: ``exact``.

Outside the model's envelope (its coefficients, or its source where the card records
the training sources: :mod:`service.envelope`) the request's ``out_of_envelope`` decides,
before anything runs (:func:`plan_request`): ``fallback`` to the exact solver, answer
with the ``surrogate`` anyway, or ``reject`` (422); either answer carries a warning that
names what lies outside. After the model has run, its answer's own evidence is judged
the same way (:func:`_judged`): an error estimate above
:data:`~service.envelope.ESTIMATE_FACTOR` times the card's error on the problem's band
is a warning, and under ``fallback`` the exact solver answers instead (a second step,
``reason`` says so); ``reject`` is a 422. ``validate`` keeps its answer (its validation
holds the exact solver's), with the warning; ``auto`` judges the estimate against the
request's own tolerance instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from datagen.coefficients import reference
from datagen.preconditioners import SCALED_COST, isotropic_scale, predicted_iterations, roughness
from datagen.solver import MEAN_TOLERANCE
from datagen.systems import get_system
from modelstore.bands import Band, band_for
from modelstore.registry import ModelCard
from modelstore.sources import source_statistics
from service.costs import SCALED, CostModel, kappa
from service.envelope import (
    envelope_reasons,
    estimate_reason,
    field_statistics,
    source_reasons,
)
from service.errors import http_error
from service.routing import route
from service.schema import (
    DEFAULT_AUTO_TOLERANCE,
    DEFAULT_TOLERANCE,
    MIN_TOLERANCE,
    SolveRequest,
    relative_l2,
)

#: Finds the card of a model reference (None: the default model), raising a 404 naming
#: ``loc`` where there is none.
CardLookup = Callable[[str | None, list[Any]], ModelCard]

#: auto solves to a relative residual of this fraction of its error tolerance, per Krylov
#: method. The error of an answer is far below its relative residual for the diffusion
#: operator (the residual weighs the high frequencies that L amplifies): solved to a
#: residual r, smooth and two-phase media of contrast 4..1000 at 128^2 had errors of at
#: most 0.1 r (8 problems each, r = 0.3..1e-3). Not so for GMRES: advection-diffusion
#: reached 0.7 r and Helmholtz with a varying w 5 r (near resonance the operator barely
#: holds the error down), hence 0.02 there. Either way the answer keeps a 10x margin.
AUTO_RESIDUAL_FRACTION = {"cg": 1.0, "gmres": 0.02}
#: ... and to no residual looser than this (the largest measured above).
AUTO_MAX_RESIDUAL = 0.3


@dataclass
class Prediction:
    """What one candidate answer is predicted to cost and how good it will be."""

    error: float | None  # predicted relative L2 error (None: unknown)
    chance: float  # P(the error is within the tolerance)
    ms: float | None  # predicted time (None: not measured yet)
    words: str


@dataclass
class Decision:
    """auto's choice for a field problem, made before anything runs."""

    first: str  # "surrogate" or "exact"
    surrogate: Prediction
    exact: Prediction
    band: Band | None

    def words(self) -> str:
        tried = "tried the surrogate" if self.first == "surrogate" else "the exact solver"
        return f"auto: {tried}; predicted: {self.surrogate.words}; {self.exact.words}"


@dataclass
class Plan:
    """What is decided about one request before anything is computed."""

    pde: str
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
    stats: dict[str, Any] | None = None  # fields: law, contrast, variation, length
    reference: np.ndarray | None = None  # fields: reference coefficients (1, 6), once
    scalar: np.ndarray | None = None  # the Darcy form: a(x) / a_ref, with K = a(x) K0
    roughness: float | None = None  # CG: how fast the medium varies (the scaled's law)
    decision: Decision | None = None  # auto on fields
    routed: str | None = None  # why this model, where the request named none
    planned_ms: float = 0.0  # how long checking and planning took (the answer's timings)
    policy: str = "fallback"  # the request's out_of_envelope
    source_stats: dict[str, Any] | None = None  # the source's (modelstore.sources), once

    @property
    def fields(self) -> bool:
        return self.coefficients.ndim == 3

    @property
    def n(self) -> int:
        return self.source.shape[-1]

    @property
    def method(self) -> str:
        """The Krylov method a field solve takes: CG where the operator is symmetric."""
        return "cg" if not np.any(self.coefficients[3:] != 0) else "gmres"

    @property
    def kappa(self) -> float:
        stats = self.stats or {}
        return kappa(stats.get("contrast"), stats.get("variation"))


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
    request: SolveRequest,
    loc: list[Any],
    card: CardLookup,
    deadline: float | None = None,
    costs: CostModel | None = None,
    candidates: Callable[[], list[ModelCard]] | None = None,
) -> Plan:
    """Everything decided before computing: source, mode, model, reasons, warnings, and
    for auto on fields the candidate to try first; ``deadline`` (``time.time()``) is when
    the request's budget ends, ``costs`` what this service measured, ``candidates`` the
    published models a request that names none is routed among (:mod:`service.routing`;
    None: the default answers it)."""
    warnings: list[str] = []
    source = projected_source(request, loc, warnings)
    plan = Plan(
        request.pde,
        source,
        request.unified(),
        request.mode,
        loc,
        tolerance=request.tolerance or DEFAULT_TOLERANCE,
        max_iterations=request.max_iterations,
        warnings=warnings,
        deadline=deadline,
        policy=request.out_of_envelope,
    )
    if plan.fields:  # the envelope checks the correlation length; exact needs none of it
        plan.stats = field_statistics(plan.coefficients, length=plan.mode != "exact")
    if plan.mode == "auto":
        plan.error_tolerance = request.tolerance or DEFAULT_AUTO_TOLERANCE
        residual = AUTO_RESIDUAL_FRACTION[plan.method] * plan.error_tolerance
        plan.tolerance = min(AUTO_MAX_RESIDUAL, max(MIN_TOLERANCE, residual))
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
    if plan.fields:  # the envelope, routing and the error estimate all need it
        plan.reference = reference(plan.coefficients[None])
    plan.source_stats = source_statistics(source)
    plan.card = card(request.model, [*loc, "model"])
    # what the envelope checks, for routing's candidates and the chosen card alike
    problem = (
        request.pde,
        source,
        plan.coefficients,
        plan.stats,
        plan.reference,
        plan.source_stats,
    )
    if request.model is None and candidates is not None:
        routed = route(candidates(), plan.card, *problem)
        plan.card, plan.routed = routed.card, routed.why
        if getattr(request.coefficients, "conductivity", None) is not None:
            # K = a(x) K0 with K0 constant (the schema's Darcy form): K11 / K11_ref is a / a_ref
            plan.scalar = plan.coefficients[0] / plan.reference[0, 0]
    reasons = envelope_reasons(plan.card, *problem)
    if reasons:
        why = "; ".join(reasons)
        if request.out_of_envelope == "reject":
            only = reasons == source_reasons(plan.card, request.pde, source, plan.source_stats)
            where = [*loc, "source" if only else "coefficients"]
            raise http_error(422, where, f"outside the model's envelope: {why}")
        if request.out_of_envelope == "fallback":
            plan.reason = f"fell back to the exact solver: {why}"
            if plan.mode == "auto":
                plan.reason = f"auto: outside the model's envelope, so the exact solver: {why}"
            warnings.append(f"outside the model's envelope, so the exact solver answered: {why}")
            plan.mode, plan.fallback = "exact", True
            return plan
        warnings.append(f"answered by the surrogate outside its envelope: {why}")
    if plan.mode == "auto":
        plan.decision = decide(plan, costs or CostModel())
    return plan


def decide(plan: Plan, costs: CostModel) -> Decision:
    """auto on a field problem: predict the surrogate's error and both candidates' costs,
    and choose which to try first (see the module docstring)."""
    tol = plan.error_tolerance
    stats = plan.stats or {}
    measure = stats.get("contrast") if plan.pde != "helmholtz" else stats.get("variation")
    band = band_for(plan.card, plan.pde, stats.get("law"), measure)
    key = solver_key(plan)
    iterations = costs.iterations(key, stats.get("law"), plan.kappa, plan.tolerance, plan.roughness)
    exact_ms = costs.krylov_ms(plan.n, key, iterations)
    exact = Prediction(
        0.0,
        1.0,
        exact_ms,
        f"exact solver {_ms(exact_ms)} ({iterations:.0f} {plan.method.upper()} iterations "
        f"to a residual of {plan.tolerance:.2g}"
        + (", scaled Green preconditioner)" if key == SCALED else ")"),
    )
    surrogate_ms = costs.surrogate_ms(plan.n, True)
    if band is None:
        where = (
            f"{plan.card.ref}'s card has no measured error for {plan.pde} "
            f"{stats.get('law')} media of {_measure_words(plan.pde, measure)}"
        )
        surrogate = Prediction(None, 0.0, surrogate_ms, f"surrogate error unknown ({where})")
        return Decision("exact", surrogate, exact, band)
    chance = band.chance_within(tol)
    surrogate = Prediction(
        band.error,
        chance,
        surrogate_ms,
        f"surrogate error {band.error:.3g} (the card's mean on {band.key}; within "
        f"{tol:g} with probability {chance:.2f}) {_ms(surrogate_ms)}",
    )
    pays = (
        surrogate_ms is not None
        and exact_ms is not None
        and surrogate_ms + (1 - chance) * exact_ms < exact_ms
    )
    first = "surrogate" if band.error <= tol and pays else "exact"
    return Decision(first, surrogate, exact, band)


def solver_key(plan: Plan) -> str:
    """How the exact solver will go at this problem, as the cost model keys it: "gmres",
    "cg", or "cg-scaled" where the solver will choose the scaled Green preconditioner (the
    same choice, :func:`datagen.preconditioners.choose`)."""
    if plan.method != "cg" or not plan.fields:
        return plan.method
    c = plan.coefficients[None]
    if plan.reference is None:  # exact mode plans skip it: computed when asked
        plan.reference = reference(c)
    plan.roughness = float(roughness(isotropic_scale(c, plan.reference))[0])
    reference_its, scaled_its = predicted_iterations(
        np.array([plan.roughness]), np.array([plan.kappa])
    )
    return SCALED if reference_its[0] > SCALED_COST * scaled_its[0] else "cg"


def _ms(ms: float | None) -> str:
    return "in ? ms (not measured yet)" if ms is None else f"in ~{ms:.3g} ms"


def _measure_words(pde: str, measure: float | None) -> str:
    if measure is None:
        return "this kind"
    return f"variation {measure:.3g}" if pde == "helmholtz" else f"contrast {measure:.3g}"


# ---------------------------------------------------------------------------------------
# Carrying a plan out


class ExactResult(Protocol):
    solution: np.ndarray
    method: str
    iterations: int


class Solvers(Protocol):
    """What the ingress gives a plan to run with; each call records its own time."""

    def surrogate(self, plan: Plan) -> Awaitable[np.ndarray]: ...

    def exact(
        self, plan: Plan, initial_guess: np.ndarray | None = None
    ) -> Awaitable[ExactResult]: ...

    def estimate(self, plan: Plan, solution: np.ndarray) -> Awaitable[float]: ...


@dataclass
class Answer:
    """What a plan produced."""

    solution: np.ndarray
    mode: str  # what answered: surrogate | exact | refine | validate
    reason: str | None = None
    estimate: float | None = None  # the surrogate's error estimate, where it answered
    exact: ExactResult | None = None  # the exact solver's answer, where one ran
    refined: bool = False  # the exact solver started from the surrogate's answer
    uses_model: bool = False  # the answer is (or starts from) the model's
    validation_error: float | None = None  # validate: surrogate against exact
    validated: bool = False
    mispredicted: str | None = None  # auto: "error" where the surrogate was tried in vain


async def _judged(plan: Plan, s: Solvers, answer: Answer) -> Answer:
    """The surrogate's answer judged by its own error estimate against the card's error on
    the problem's band (:func:`service.envelope.estimate_reason`), under the request's
    ``out_of_envelope``: a warning, and with ``fallback`` the exact solver's answer
    (``validate`` keeps its own: its validation holds the exact answer already)."""
    why = estimate_reason(plan.card, plan.pde, plan.stats, answer.estimate)
    if why is None:
        return answer
    if answer.mode == "validate" or plan.policy == "surrogate":
        plan.warnings.append(f"the surrogate answered, but {why}")
        return answer
    if plan.policy == "reject":
        raise http_error(422, plan.loc, f"the surrogate's answer is not to be trusted: {why}")
    exact = await s.exact(plan)
    plan.warnings.append(f"the exact solver answered after the surrogate: {why}")
    plan.fallback = True
    reason = f"fell back to the exact solver after the surrogate ({plan.card.ref}): {why}"
    return Answer(exact.solution, "exact", reason, exact=exact)


async def _surrogate(plan: Plan, s: Solvers) -> Answer:
    u = await s.surrogate(plan)
    answer = Answer(u, "surrogate", plan.reason, await s.estimate(plan, u), uses_model=True)
    return await _judged(plan, s, answer)


async def _exact(plan: Plan, s: Solvers) -> Answer:
    answer = await s.exact(plan)
    return Answer(answer.solution, "exact", plan.reason, exact=answer)


async def _validate(plan: Plan, s: Solvers) -> Answer:
    u, answer = await asyncio.gather(s.surrogate(plan), s.exact(plan))
    validated = Answer(
        u,
        "validate",
        f"validate: solution is the surrogate's ({plan.card.ref}), "
        "validation.exact_solution the exact solver's",
        await s.estimate(plan, u),
        exact=answer,
        uses_model=True,
        validation_error=relative_l2(u, answer.solution),
        validated=True,
    )
    return await _judged(plan, s, validated)


async def _refine(plan: Plan, s: Solvers) -> Answer:
    u = await s.surrogate(plan)
    answer = await s.exact(plan, initial_guess=u.astype(np.float64))
    return Answer(
        answer.solution, "refine", plan.reason, exact=answer, refined=True, uses_model=True
    )


async def _auto(plan: Plan, s: Solvers) -> Answer:
    """Fields inside the envelope (the plan made anything else ``exact``)."""
    decision, tol = plan.decision, plan.error_tolerance
    if decision.first == "exact":
        answer = await s.exact(plan)
        return Answer(answer.solution, "exact", decision.words(), exact=answer)
    u = await s.surrogate(plan)
    estimate = await s.estimate(plan, u)
    if estimate <= tol:
        why = f"{decision.words()}; its error estimate {estimate:.3g} is within {tol:g}"
        return Answer(u, "surrogate", why, estimate, uses_model=True)
    answer = await s.exact(plan)
    why = (
        f"{decision.words()}; its error estimate {estimate:.3g} was above {tol:g}, so the "
        "exact solver answered"
    )
    return Answer(answer.solution, "exact", why, exact=answer, mispredicted="error")


#: Each mode's strategy. A plan's mode names one.
STRATEGIES: dict[str, Callable[[Plan, Solvers], Awaitable[Answer]]] = {
    "surrogate": _surrogate,
    "exact": _exact,
    "validate": _validate,
    "refine": _refine,
    "auto": _auto,
}


async def carry_out(plan: Plan, solvers: Solvers) -> Answer:
    """Run the plan's mode."""
    return await STRATEGIES[plan.mode](plan, solvers)
