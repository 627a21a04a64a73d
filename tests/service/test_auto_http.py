"""auto over HTTP against the real service: an answer within the tolerance, whatever it,
the problem and the model's card; the surrogate called only where its card's error for
the problem's band is within the tolerance; mispredictions counted."""

import time

import httpx
import numpy as np
import pytest
from test_app import body, field
from test_fields_http import b64, darcy, unified

from datagen.solver import relative_l2, solve

PROBLEMS = {
    "constant": lambda **e: body("poisson", 64, **e),
    "smooth": lambda **e: darcy("smooth", contrast=5.0, **e),
    "two-phase": lambda **e: darcy("two-phase", contrast=5.0, **e),
}


@pytest.mark.parametrize("tolerance", [1e-1, 1e-2, 1e-6])
@pytest.mark.parametrize("problem", list(PROBLEMS))
def test_auto_answers_within_its_tolerance_and_says_why(client, problem, tolerance):
    request = PROBLEMS[problem](mode="auto", tolerance=tolerance, model="banded")
    r = client.post("/solve", json=request)
    assert r.status_code == 200, r.text[:500]
    out = r.json()
    source, c = field(request["source"]), unified(request)
    exact = solve("poisson", source, c, mean="project", tolerance=1e-13)
    assert relative_l2(field(out["solution"]), exact) <= tolerance
    assert out["reason"].startswith("auto:")
    if problem == "constant":
        assert out["mode"] == "exact" and out["solver"]["method"] == "fft"
        return
    # banded's card claims 0.04 (smooth) and 0.06 (two-phase) for contrast 1..10: below
    # those tolerances it is never tried; at 0.1 it is where the attempt pays on this
    # machine's measured costs (being untrained, its own error estimate then rejects it).
    tried = "tried the surrogate" in out["reason"]
    assert ("surrogate" in out["timings_ms"]) == tried, out["reason"]
    assert out["mode"] == "exact" and out["solver"]["method"] == "cg"
    if tolerance < 0.04:
        assert (
            not tried and "auto: the exact solver; predicted: surrogate error 0.0" in out["reason"]
        )
    if tried:
        assert "was above 0.1" in out["reason"]


def test_auto_without_a_band_for_the_problem_does_not_try_the_model(client):
    # contrast 50: inside the envelope (1..100), in none of banded's bands (1..10)
    out = client.post("/solve", json=darcy("smooth", 50.0, mode="auto", model="banded")).json()
    assert out["mode"] == "exact" and "surrogate" not in out["timings_ms"]
    assert "card has no measured error for poisson smooth media of contrast 50" in out["reason"]


def test_auto_takes_an_error_tolerance_up_to_a_half_the_others_a_residual(client):
    ok = client.post("/solve", json=darcy("smooth", mode="auto", tolerance=0.5))
    assert ok.status_code == 200
    too_loose = client.post("/solve", json=darcy("smooth", mode="auto", tolerance=0.6))
    assert too_loose.status_code == 422
    residual = client.post("/solve", json=darcy("smooth", mode="exact", tolerance=0.05))
    assert residual.status_code == 422
    assert "in exact mode it is the solve's relative residual, at most 0.01" in residual.text


def test_auto_mispredictions_are_counted(client, metrics_url):
    # 256^2, two-phase, contrast 80: the solve needs many dear iterations, the card claims
    # 0.08 for two-phase 10..100, so auto tries the model first
    n = 256
    x = np.arange(n) / n
    gx, gy = np.meshgrid(x, x)
    a = np.where(np.sin(2 * np.pi * gx) * np.sin(2 * np.pi * gy) > 0, np.sqrt(80), 1 / np.sqrt(80))
    f = np.exp(-((gx - 0.4) ** 2 + (gy - 0.55) ** 2) / 0.005)
    request = {
        "pde": "poisson",
        "source": b64(f - f.mean()),
        "coefficients": {"eigenvalue": 2.0, "angle": 0.3, "conductivity": b64(a)},
        "mode": "auto",
        "tolerance": 0.1,
        "model": "banded",
    }
    out = client.post("/solve", json=request).json()
    assert "tried the surrogate" in out["reason"] and "was above 0.1" in out["reason"], out
    assert out["timings_ms"]["surrogate"] > 0 and out["mode"] == "exact"
    deadline = time.monotonic() + 60
    while True:  # Ray exports metrics every few seconds
        lines = [
            line
            for line in httpx.get(metrics_url, timeout=10).text.splitlines()
            if line.startswith("ray_pdeserve_auto_mispredictions_total{") and "error" in line
        ]
        if lines:
            break
        assert time.monotonic() < deadline, "no misprediction counted"
        time.sleep(2)
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1 and 'pde="poisson"' in lines[0]


def test_a_request_naming_no_model_is_routed_to_the_lowest_measured_error(client):
    # banded's card measured poisson-smooth(1,10) (0.04); default's measured nothing. Its
    # untrained model's estimate is far above that: asked for, the surrogate answers anyway
    # (under the default fallback the exact solver would: test_envelope_http.py)
    routed = darcy("smooth", 5.0, mode="surrogate", out_of_envelope="surrogate")
    out = client.post("/solve", json=routed).json()
    assert out["model"] == "banded@1"
    assert out["routed"] == (
        "routed to banded@1: the lowest measured error on poisson-smooth(1,10) (0.04)"
    )
    # contrast 50: no card measured that band, so the configured default
    out = client.post("/solve", json=darcy("smooth", 50.0, mode="surrogate")).json()
    assert out["model"] == "default@1" and "by default" in out["routed"]
    # a named model is kept, and says nothing of routing
    out = client.post("/solve", json=darcy("smooth", 5.0, mode="surrogate", model="default"))
    assert out.json()["model"] == "default@1" and "routed" not in out.json()
    # the exact solver uses no model: nothing routed
    out = client.post("/solve", json=darcy("smooth", 5.0, mode="exact")).json()
    assert "model" not in out and "routed" not in out
