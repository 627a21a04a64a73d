"""The source's envelope and the answer's own evidence over HTTP, against the running test
service (issue 38): a source unlike the card's training sources falls back to the exact
solver with a warning, and so does an answer whose error estimate belies the card."""

import numpy as np
import pytest
from service_helpers import publish_tiny
from test_app import field
from test_fields_http import b64, darcy, unified

from datagen.solver import relative_l2, solve
from modelstore.sources import law_sources

N = 64


@pytest.fixture(scope="module")
def sourced(registry_root, tmp_path_factory) -> str:
    """A tiny model whose card records the paper's sources (and no errors per band, so
    routing never prefers it and its estimates are not judged)."""
    workdir = tmp_path_factory.mktemp("ckpt")
    return publish_tiny(registry_root, "sourced", workdir=workdir, sources=True)


def test_a_source_outside_the_cards_falls_back_with_a_warning(client, sourced):
    x = np.arange(N) / N
    sin_cos = np.sin(2 * np.pi * x)[None, :] * np.cos(2 * np.pi * x)[:, None]
    request = {
        "pde": "poisson",
        "source": b64(sin_cos),
        "coefficients": {"eigenvalue": 2.0, "angle": 0.3},
        "mode": "validate",
        "model": sourced,
    }
    out = client.post("/solve", json=request).json()
    assert out["mode"] == "exact" and "model" not in out and "validation" not in out
    why = "the source's share of energy at |k| <= 2.5 = 1 is outside the model's training range"
    assert out["reason"].startswith("fell back to the exact solver: ") and why in out["reason"]
    assert len(out["warnings"]) == 1 and why in out["warnings"][0]
    exact = solve("poisson", sin_cos, unified(request), mean="project")
    assert relative_l2(field(out["solution"]), exact) < 1e-10
    # the paper's law: the model answers, and says nothing
    law = law_sources("poisson", N, 1, seed=11)[0]
    out = client.post("/solve", json=request | {"source": b64(law)}).json()
    assert out["mode"] == "validate" and out["model"] == sourced and out["warnings"] == []


def test_an_answer_whose_estimate_belies_the_card_falls_back_or_warns(client):
    # banded's card claims 0.04 on poisson-smooth(1,10); its untrained model is far off
    request = darcy("smooth", 5.0, mode="surrogate", model="banded", tolerance=1e-10)
    r = client.post("/solve", json=request)
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    assert out["mode"] == "exact" and out["solver"]["method"] == "cg" and "model" not in out
    assert out["reason"].startswith("fell back to the exact solver after the surrogate (banded@1)")
    assert (
        "banded@1's measured error on poisson-smooth(1,10) (0.04; flagged above 3x)"
        in (out["reason"])
    )
    assert {"surrogate", "error_estimate", "exact"} <= set(out["timings_ms"])
    assert out["warnings"][0].startswith("the exact solver answered after the surrogate")
    exact = solve("poisson", field(request["source"]), unified(request), tolerance=1e-12)
    assert relative_l2(field(out["solution"]), exact) < 1e-7
    # asked for the surrogate whatever happens: its answer, with the warning
    out = client.post("/solve", json=request | {"out_of_envelope": "surrogate"}).json()
    assert out["mode"] == "surrogate" and out["model"] == "banded@1"
    assert out["error_estimate"] > 3 * 0.04
    assert out["warnings"][0].startswith("the surrogate answered, but the surrogate's error")
    r = client.post("/solve", json=request | {"out_of_envelope": "reject"})
    assert r.status_code == 422 and "not to be trusted" in r.text
