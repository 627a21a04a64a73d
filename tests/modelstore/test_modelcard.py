"""The model card for people: each bundled model's README is what its card renders."""

import pytest

from modelstore.modelcard import README, render
from modelstore.registry import BUNDLED_REGISTRY, Registry

REGISTRY = Registry(BUNDLED_REGISTRY)


@pytest.mark.parametrize("name", REGISTRY.names())
def test_each_bundled_model_has_the_readme_its_card_renders(name):
    card = REGISTRY.card(name)
    text = (BUNDLED_REGISTRY / name / README).read_text()
    assert text == render(card), f"{name}/README.md differs from its card: export it again"
    # what a reader needs: use, data, errors per band beside targets, limitations
    for heading in ("## Intended use", "## Model and data", "## Error per band", "## Limitations"):
        assert heading in text
    for key, target in card.targets.items():
        band = key.split("/", 1)[1]
        row = next(line for line in text.splitlines() if line.startswith(f"| {band} |"))
        assert ("**missed**" in row) == (card.metrics[key] > target)
