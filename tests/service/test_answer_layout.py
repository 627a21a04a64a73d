"""What a user reads first: an answer's small fields before its arrays, and a reason
wherever the mode that answered is not the one asked."""

import numpy as np
import pytest
from service_helpers import API_KEY
from test_app import COEFFICIENTS, body, smooth_source
from test_fields_http import darcy

from service.client import Client


@pytest.mark.parametrize("encoding", ["float32", "lists"])
def test_the_head_of_an_answer_says_what_it_is(client, encoding):
    """A 64^2 answer is tens of KB on one line; mode, model and error estimate come before
    the solution (and validation's exact solution after it), so `curl | head -c 300`
    shows them."""
    r = client.post("/solve", json=body("poisson", 64, encoding=encoding, mode="validate"))
    assert r.status_code == 200, r.text[:300]
    text = r.text
    first_array = text.index('"solution"')
    for small in ('"mode"', '"model"', '"error_estimate"', '"reason"', '"timings_ms"'):
        assert text.index(small) < first_array, small
    assert first_array < text.index('"validation"')
    assert len(text[:first_array]) < 2000


@pytest.mark.parametrize(
    ("request_", "words"),
    [
        (body("helmholtz", 64, mode="refine"), "constant coefficients"),
        (body("poisson", 64, mode="auto"), "constant coefficients"),
        (darcy("smooth", contrast=1e4, mode="surrogate"), "training range"),
    ],
    ids=["refine-constant", "auto-constant", "surrogate-outside"],
)
def test_a_mode_other_than_the_one_asked_says_why(client, request_, words):
    r = client.post("/solve", json=request_)
    assert r.status_code == 200, r.text[:300]
    out = r.json()
    assert out["mode"] != request_["mode"]
    assert out.get("reason") and words in out["reason"], out.get("reason")


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_the_sdk_carries_the_reason_alone_and_in_batches(service, encoding):
    f = smooth_source(64, zero_mean=False)
    omega = COEFFICIENTS["helmholtz"]["omega"]
    with Client(service, api_key=API_KEY, encoding=encoding) as client:
        one = client.solve("helmholtz", f, omega=omega, mode="refine")
        batch = client.solve_batch("helmholtz", np.stack([f, f]), omega=omega, mode="refine",
                                   progress=False)  # fmt: skip
    assert one.mode == "exact" and "constant coefficients" in (one.reason or "")
    assert batch.modes == ["exact", "exact"]
    assert all("constant coefficients" in (r.reason or "") for r in batch.results)
