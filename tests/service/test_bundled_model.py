"""The model that ships in models/: it loads, its card tells the truth, it fits the budget."""

import numpy as np
import pytest

from datagen.generate import generate_block
from datagen.solver import relative_l2
from datagen.spec import SplitSpec
from service.registry import BUNDLED_REGISTRY, Registry
from service.runner import DEFAULT_MODEL, OnnxSurrogate

SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")
BUDGET_BYTES = 15 * 2**20


def test_the_bundled_registry_holds_the_default_model_within_budget():
    registry = Registry(BUNDLED_REGISTRY)
    card = registry.card(DEFAULT_MODEL)
    assert card.ref == "default@1"
    size = sum(f.stat().st_size for f in BUNDLED_REGISTRY.rglob("*") if f.is_file())
    assert size <= BUDGET_BYTES
    assert set(card.envelope) == set(SYSTEMS)
    for system in SYSTEMS:
        assert 0 < card.metrics[f"test_rel_l2/{system}"] < 1
    assert card.notes and "CPU scale" in card.notes and "seed 1234" in card.notes


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_bundled_model_errors_match_its_card_at_128(system):
    """Fresh held-out examples at 128^2 against the exact solver: the card's error holds."""
    model = OnnxSurrogate.load(None, str(BUNDLED_REGISTRY))
    block = generate_block(
        SplitSpec(system=system, n_examples=64, split="test", resolution=128, seed=4321), 0
    )
    prediction = model.predict(block.sources, block.coefficients)
    assert prediction.shape == block.solutions.shape == (64, 128, 128)
    error = float(np.mean(relative_l2(prediction, block.solutions)))
    card_error = model.card.metrics[f"test_rel_l2/{system}"]
    # 64 examples scatter around the mean of 4,096: within a factor of 1.5 either way.
    assert card_error / 1.5 < error < card_error * 1.5
