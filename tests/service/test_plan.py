"""auto's planner without a service: the bundled model's card, a cost model loaded with
fixed numbers, and solvers that count their calls."""

import asyncio
import math

import numpy as np
import pytest

from modelstore.bands import Band, band_for, band_key, bands
from modelstore.registry import BUNDLED_REGISTRY, Registry
from modelstore.sources import law_sources
from service.costs import CostModel, iterations_formula
from service.edge import SOLVE_REQUEST
from service.plan import carry_out, plan_request

N = 64


@pytest.fixture(scope="module")
def card():
    return Registry(BUNDLED_REGISTRY).card("default")


def costs(surrogate_ms=5.0, estimate_ms=2.0, iteration_ms=1.0, setup_ms=5.0) -> CostModel:
    model = CostModel()
    model.load(
        {
            "surrogate": {(N, True): surrogate_ms},
            "estimate": {(N, True): estimate_ms},
            "iteration": {(N, "cg"): iteration_ms, (N, "gmres"): iteration_ms},
            "setup": {(N, "cg"): setup_ms, (N, "gmres"): setup_ms},
        }
    )
    return model


def darcy(contrast: float, law: str = "smooth", tolerance: float = 0.1, **extra) -> dict:
    x = np.arange(N) / N
    gx, gy = np.meshgrid(x, x)
    s = np.sin(2 * np.pi * gx) * np.sin(2 * np.pi * gy)
    if law == "two-phase":
        s = np.where(s > 0, 1.0, -1.0)
    a = np.exp(0.5 * np.log(contrast) * s)
    f = law_sources("poisson", N, 1)[0]  # the paper's: inside the card's source envelope
    return {
        "pde": "poisson",
        "source": (f - f.mean()).tolist(),
        "coefficients": {"eigenvalue": 2.0, "angle": 0.3, "conductivity": a.tolist()},
        "mode": "auto",
        "tolerance": tolerance,
    } | extra


def plan(card, body: dict, model: CostModel | None = None):
    request = SOLVE_REQUEST.validate_python(body)
    return plan_request(request, ["body"], lambda ref, loc: card, None, model or costs())


class Counting:
    """Solvers that answer at once and count their calls."""

    def __init__(self, estimate: float):
        self.calls = {"surrogate": 0, "exact": 0, "estimate": 0}
        self._estimate = estimate

    async def surrogate(self, plan):
        self.calls["surrogate"] += 1
        return np.zeros_like(plan.source)

    async def exact(self, plan, initial_guess=None):
        self.calls["exact"] += 1

        class Solved:
            solution = np.ones_like(plan.source)
            method, iterations = plan.method, 9

        return Solved()

    async def estimate(self, plan, solution):
        self.calls["estimate"] += 1
        return self._estimate


def test_the_cards_bands_are_the_metrics_export_wrote(card):
    found = {b.key: b for b in bands(card)}
    assert set(found) >= {
        "poisson",
        "advection_diffusion",
        "helmholtz",
        "poisson-smooth(1,10)",
        "poisson-two-phase(10,100)",
        "helmholtz-smooth(0,0.3)",
    }
    smooth = found["poisson-smooth(1,10)"]
    assert smooth.error == card.metrics["test_rel_l2/poisson-smooth(1,10)"]
    assert band_for(card, "poisson", "smooth", 4.0) == smooth
    assert band_for(card, "poisson", "smooth", 400.0) is None  # in no band
    assert band_for(card, "poisson", None, None).key == "poisson"
    assert band_key("poisson", "two-phase", (10.0, 100.0)) == "poisson-two-phase(10,100)"


def test_the_chance_of_meeting_a_tolerance_follows_a_log_normal():
    band = Band("poisson", "smooth", 1.0, 10.0, error=0.05)
    assert band.chance_within(0.05) == pytest.approx(0.5 + math.erf(0.3 / math.sqrt(2)) / 2)
    assert band.chance_within(1.0) > 0.999 and band.chance_within(0.005) < 0.001


def test_the_iteration_formula_matches_the_measured_counts():
    # CG with the reference preconditioner to a 1e-8 residual on smooth media (measured)
    for contrast, measured in ((10, 29), (100, 87), (1000, 252)):
        assert 0.8 < iterations_formula(contrast, 1e-8) / measured < 1.25


def test_auto_tries_the_surrogate_where_the_card_says_it_is_good_enough(card):
    p = plan(card, darcy(4.0, tolerance=0.1))
    d = p.decision
    assert d.first == "surrogate" and d.band.key == "poisson-smooth(1,10)"
    assert d.surrogate.chance > 0.9 and d.surrogate.ms == 7.0
    solvers = Counting(estimate=0.04)
    answer = asyncio.run(carry_out(p, solvers))
    assert answer.mode == "surrogate" and answer.uses_model and answer.estimate == 0.04
    assert solvers.calls == {"surrogate": 1, "exact": 0, "estimate": 1}
    assert "tried the surrogate" in answer.reason and "within 0.1" in answer.reason
    assert "poisson-smooth(1,10)" in answer.reason and "CG iterations" in answer.reason


def test_a_surrogate_answer_above_the_tolerance_is_replaced_and_counted(card):
    solvers = Counting(estimate=0.3)
    answer = asyncio.run(carry_out(plan(card, darcy(4.0, tolerance=0.1)), solvers))
    assert answer.mode == "exact" and answer.mispredicted == "error" and not answer.uses_model
    assert solvers.calls == {"surrogate": 1, "exact": 1, "estimate": 1}
    assert "0.3 was above 0.1" in answer.reason


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (darcy(4.0, tolerance=1e-2), "the card's error, 0.045, exceeds the tolerance"),
        (darcy(50.0, law="two-phase", tolerance=0.1), "two-phase 10..100: 0.26 > 0.1"),
        (darcy(4.0, tolerance=1e-6), "far below any model's error"),
    ],
)
def test_auto_skips_the_surrogate_where_its_error_exceeds_the_tolerance(card, body, why):
    p = plan(card, body)
    assert p.decision.first == "exact", why
    solvers = Counting(estimate=0.0)
    answer = asyncio.run(carry_out(p, solvers))
    assert solvers.calls["surrogate"] == 0 and answer.mode == "exact"
    assert answer.reason.startswith("auto: the exact solver; predicted: surrogate error")


def test_the_surrogate_is_tried_only_where_the_attempt_pays(card):
    # a model that costs more than the solve it would spare
    p = plan(card, darcy(4.0, tolerance=0.1), costs(surrogate_ms=80.0))
    assert p.decision.first == "exact" and p.decision.surrogate.error <= 0.1


def test_without_measured_costs_or_bands_auto_answers_exactly(card):
    assert plan(card, darcy(4.0), CostModel()).decision.first == "exact"  # not calibrated
    bare = card.model_copy(update={"metrics": {}})
    p = plan(bare, darcy(4.0))
    assert p.decision.first == "exact" and p.decision.surrogate.error is None
    assert "card has no measured error" in p.decision.words()
    # a contrast inside the envelope (1..100) but in no band of the card
    banded = card.model_copy(update={"metrics": {"test_rel_l2/poisson-smooth(1,10)": 0.01}})
    p = plan(banded, darcy(50.0))
    assert p.decision.first == "exact" and "contrast 50" in p.decision.words()


def test_outside_the_envelope_auto_is_exact_before_any_prediction(card):
    p = plan(card, darcy(400.0))
    assert p.mode == "exact" and p.fallback and p.decision is None
    assert "outside the model's envelope" in p.reason


def test_the_cost_model_learns_from_solves():
    model = costs()
    before = model.iterations("cg", "two-phase", 50.0, 1e-3)
    for _ in range(20):  # two-phase media take 1.5x the formula's iterations
        its = round(1.5 * iterations_formula(50.0, 1e-3))
        model.observe_solve(N, "cg", "two-phase", 50.0, 1e-3, its, 5.0 + 2.0 * its)
    after = model.iterations("cg", "two-phase", 50.0, 1e-3)
    assert after == pytest.approx(1.5 * before, rel=0.05)
    assert model.krylov_ms(N, "cg", 10) == pytest.approx(5.0 + 10 * 2.0, rel=0.1)
    assert model.krylov_ms(2 * N, "cg", 10) > 3 * model.krylov_ms(N, "cg", 10)  # n^2 log n


def test_the_exact_prediction_follows_the_solvers_preconditioner(card):
    # a very smooth medium of contrast 80: the solver will take the scaled Green
    # preconditioner, and the prediction its law (fewer, dearer iterations)
    smooth = plan(card, darcy(80.0, tolerance=1e-2))
    assert "scaled Green preconditioner" in smooth.decision.exact.words
    assert smooth.roughness is not None and smooth.roughness < 5.0
    jumps = plan(card, darcy(80.0, law="two-phase", tolerance=1e-2))
    assert "scaled Green" not in jumps.decision.exact.words
    model = costs()
    before = model.krylov_ms(N, "cg-scaled", 10)
    assert before == pytest.approx(5.0 + 10 * 1.0 * 1.9)  # SCALED_COST plain iterations
    model.observe_solve(N, "cg-scaled", "smooth", 80.0, 1e-2, 10, 5.0 + 10 * 3.0, 0.5)
    assert model.krylov_ms(N, "cg-scaled", 10) > before  # now measured


# -- routing: a request that names no model -----------------------------------------------


def specialist(card, name: str, law: str, errors: dict[str, float], graphs=("fields",)):
    """The bundled card as a Darcy specialist: Poisson fields of one law only, its own
    errors per band, and only the graphs named."""
    env = card.envelope["poisson"]
    field = env.field.model_copy(update={"laws": [law]})
    return card.model_copy(
        update={
            "name": name,
            "version": 1,
            "envelope": {"poisson": env.model_copy(update={"field": field})},
            "metrics": {f"test_rel_l2/poisson-{k}": v for k, v in errors.items()},
            "graphs": {g: f"model-{g}.onnx" for g in graphs},
        }
    )


def routed(card, candidates, body: dict):
    request = SOLVE_REQUEST.validate_python(body)
    return plan_request(request, ["body"], lambda ref, loc: card, None, costs(), lambda: candidates)


def test_routing_picks_the_covering_model_with_the_lowest_error_on_the_band(card):
    smooth = specialist(
        card, "darcy-smooth", "smooth", {"smooth(1,10)": 0.02, "smooth(10,100)": 0.2}
    )
    published = [card, smooth]
    # contrast 4: the specialist's 0.02 against the foundation's 0.042
    p = routed(card, published, darcy(4.0, mode="surrogate", tolerance=None))
    assert p.card.ref == "darcy-smooth@1"
    assert "lowest measured error on poisson-smooth(1,10) (0.02)" in p.routed
    # contrast 50: the specialist measured 0.2 there, the foundation 0.093
    assert (
        routed(card, published, darcy(50.0, mode="surrogate", tolerance=None)).card.ref == card.ref
    )
    # two-phase media are outside the specialist's envelope
    p = routed(card, published, darcy(4.0, law="two-phase", mode="surrogate", tolerance=None))
    assert p.card.ref == card.ref and card.ref in p.routed
    # constant coefficients: the specialist has no graph for them
    constant = darcy(4.0, mode="surrogate", tolerance=None)
    constant["coefficients"] = {"eigenvalue": 2.0, "angle": 0.3}
    assert routed(card, published, constant).card.ref == card.ref


def test_a_named_model_is_kept_and_routing_can_be_off(card):
    smooth = specialist(card, "darcy-smooth", "smooth", {"smooth(1,10)": 0.001})
    lookup = {"default": card, card.ref: card, "darcy-smooth": smooth}
    request = SOLVE_REQUEST.validate_python(
        darcy(4.0, mode="surrogate", tolerance=None, model="default")
    )
    p = plan_request(
        request, ["body"], lambda ref, loc: lookup[ref], None, costs(), lambda: [card, smooth]
    )
    assert p.card.ref == card.ref and p.routed is None
    request = SOLVE_REQUEST.validate_python(darcy(4.0, mode="surrogate", tolerance=None))
    p = plan_request(request, ["body"], lambda ref, loc: card, None, costs(), None)
    assert p.card.ref == card.ref and p.routed is None


def test_routing_without_a_measured_band_prefers_the_default_then_the_narrowest(card):
    bare = card.model_copy(update={"metrics": {}})
    smooth = specialist(card, "darcy-smooth", "smooth", {})
    p = routed(bare, [bare, smooth], darcy(4.0, mode="surrogate", tolerance=None))
    assert p.card.ref == card.ref and "no covering model measured this band" in p.routed
    # a default that does not cover the request: the most specific that does
    constants_only = bare.model_copy(update={"graphs": {"constant": "model.onnx"}})
    p = routed(
        constants_only, [constants_only, smooth], darcy(4.0, mode="surrogate", tolerance=None)
    )
    assert p.card.ref == "darcy-smooth@1" and "most specific" in p.routed
    # nothing covers contrast 400: the default, whose envelope policy then applies
    p = routed(card, [card, smooth], darcy(400.0, mode="surrogate", tolerance=None))
    assert p.card.ref == card.ref and p.fallback and "no published model covers" in p.routed
