"""The models that ship in models/: they load, their cards tell the truth, they fit the
budget; the foundation model answers every system, specialists their regime."""

import re

import numpy as np
import pytest

from datagen.generate import generate_block
from datagen.solver import relative_l2
from datagen.spec import FieldLaw, SplitSpec
from modelstore.registry import BUNDLED_REGISTRY, DEFAULT_MODEL, Registry
from modelstore.runner import OnnxSurrogate

SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")
# Two foundation versions (default@2 stays published beside default@3: its graphs and
# weights) and the two specialists' fields graphs.
BUDGET_BYTES = 40 * 2**20
REGISTRY = Registry(BUNDLED_REGISTRY)
CARD = REGISTRY.card(DEFAULT_MODEL)
PREVIOUS = REGISTRY.card("default@2")  # what the specialists were fine-tuned from
CARDS = [REGISTRY.card(name) for name in REGISTRY.names()]


def measured_bands(card) -> list[str]:
    """Every test set a card reports on: a system, or a system with a field law and range."""
    return sorted(
        key.split("/", 1)[1]
        for key in card.metrics
        if key.startswith("test_rel_l2/") and key != "test_rel_l2/all"
    )


TESTED = measured_bands(CARD)
FIELD_NAME = re.compile(r"^(?P<system>\w+)-(?P<kind>[a-z-]+)\((?P<lo>[\d.]+),(?P<hi>[\d.]+)\)$")


def test_the_bundled_registry_holds_the_default_model_within_budget():
    assert CARD.ref == "default@3" and CARD.inputs == 2  # the physical input layout
    assert REGISTRY.versions(DEFAULT_MODEL) == [2, 3] and PREVIOUS.inputs == 1
    size = sum(f.stat().st_size for f in BUNDLED_REGISTRY.rglob("*") if f.is_file())
    assert size <= BUDGET_BYTES
    assert set(CARD.envelope) == set(SYSTEMS)
    assert set(CARD.graphs) == {"constant", "fields"}
    assert {"poisson-smooth", "poisson-two-phase", "helmholtz-smooth"} <= {
        FIELD_NAME.match(name)["system"] + "-" + FIELD_NAME.match(name)["kind"]
        for name in TESTED
        if "(" in name
    }
    for system in SYSTEMS:
        assert 0 < CARD.metrics[f"test_rel_l2/{system}"] < 1
    # Every target has its measurement beside it; the notes say the scale and the test seed.
    assert len(CARD.targets) == 7 and set(CARD.targets) <= set(CARD.metrics)
    assert CARD.notes and "CPU scale" in CARD.notes and "seed 1234" in CARD.notes
    # every band at or below default@2's, on the same held-out sets
    for band in measured_bands(PREVIOUS):
        key = f"test_rel_l2/{band}"
        assert CARD.metrics[key] <= PREVIOUS.metrics[key], key


def fresh_examples(name: str, n: int) -> SplitSpec:
    """A test set like the card's ``name`` from a seed neither training nor the card used."""
    match = FIELD_NAME.match(name)
    if match is None:
        return SplitSpec(system=name, n_examples=n, split="test", resolution=128, seed=4321)
    span = (float(match["lo"]), float(match["hi"]))
    law = {"variation": span} if match["system"] == "helmholtz" else {"contrast": span}
    return SplitSpec(
        system=match["system"], n_examples=n, split="test", resolution=128, seed=4321,
        field_law=FieldLaw(kind=match["kind"], **law),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "name"),
    [(card.ref, name) for card in [*CARDS, PREVIOUS] for name in measured_bands(card)],
)
def test_the_bundled_models_errors_match_their_cards_at_128(ref, name):
    """Fresh held-out examples at 128^2 against the exact solver (spectral for constant
    coefficients, Krylov for fields): each card's error holds, through the graph that
    serves that kind of coefficients."""
    spec = fresh_examples(name, 64)
    model = OnnxSurrogate.load(ref, str(BUNDLED_REGISTRY), fields=spec.field_law is not None)
    block = generate_block(spec, 0)
    prediction = model.predict(block.sources, block.unified())
    assert prediction.shape == block.solutions.shape == (64, 128, 128)
    error = float(np.mean(relative_l2(prediction, block.solutions)))
    card_error = REGISTRY.card(ref).metrics[f"test_rel_l2/{name}"]
    # 64 examples scatter around the mean of the card's test set: within 1.5x either way.
    assert card_error / 1.5 < error < card_error * 1.5


def test_the_specialists_are_fine_tuned_from_the_foundation_and_routed_where_they_beat_it():
    specialists = [card for card in CARDS if card.name != DEFAULT_MODEL]
    assert {card.name for card in specialists} == {"darcy-smooth", "darcy-two-phase"}
    for card in specialists:
        law = card.name.removeprefix("darcy-")
        assert card.parent == PREVIOUS.ref and card.graphs == {"fields": "model-fields.onnx"}
        assert set(card.envelope) == {"poisson"} and card.envelope["poisson"].field.laws == [law]
        bands = measured_bands(card)
        assert bands == [f"poisson-{law}(1,10)", f"poisson-{law}(10,100)"]
        # the same held-out sets as its base's card: better at high contrast
        high = f"test_rel_l2/poisson-{law}(10,100)"
        assert card.metrics[high] < 0.9 * PREVIOUS.metrics[high]
        assert set(card.targets) == {f"test_rel_l2/{band}" for band in bands}
        assert "fine-tuned on 4,096" in card.notes and "seed 1234" in card.notes
    # routing sends each band to the lower measured error: darcy-two-phase measured
    # 0.079 on two-phase media of contrast <= 10, the foundation (default@3) 0.073
    from datagen.coefficients import reference
    from service.envelope import field_statistics
    from service.routing import route

    for kind, contrast, expected in [
        ("smooth", (1, 10), "darcy-smooth@1"),
        ("smooth", (10, 100), "darcy-smooth@1"),
        ("two-phase", (1, 10), "default@3"),
        ("two-phase", (10, 100), "darcy-two-phase@1"),
    ]:
        spec = SplitSpec(system="poisson", n_examples=1, split="test", resolution=64,
                         seed=4321, field_law=FieldLaw(kind=kind, contrast=contrast))  # fmt: skip
        block = generate_block(spec, 0, dtype=np.float64)
        f, c = block.sources[0], block.unified()[0]
        routed = route(CARDS, CARD, "poisson", f, c, field_statistics(c), reference(c[None]))
        assert routed.card.ref == expected, routed.why
