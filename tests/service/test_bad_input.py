"""The bad-input catalogue: each case a 4xx whose message names the field and the reason."""

import json

import httpx
import numpy as np
import pytest
from test_app import body

from service.schema import EncodedArray


def b64(a: np.ndarray, dtype: str = "float32") -> dict:
    return EncodedArray.encode(a, dtype).model_dump()


def with_source(source, pde="helmholtz", **extra) -> dict:
    return body(pde, n=32) | {"source": source} | extra


def with_coefficients(pde: str, coefficients: dict, **extra) -> dict:
    return body(pde, n=32) | {"coefficients": coefficients} | extra


ZERO_MEAN = np.outer(np.sin(2 * np.pi * np.arange(32) / 32), np.ones(32))
NAN = ZERO_MEAN.copy()
NAN[3, 4] = np.nan
INF = ZERO_MEAN.copy()
INF[0, 0] = np.inf

GRID = np.arange(32) / 32
X, Y = np.meshgrid(GRID, GRID)  # [y, x]
SMOOTH = 1 + 0.5 * np.sin(2 * np.pi * X) * np.cos(2 * np.pi * Y)  # in (0.5, 1.5)


def spoiled(a: np.ndarray, value: float, y: int = 5, x: int = 7) -> np.ndarray:
    a = a.copy()
    a[y, x] = value
    return a


def poisson_fields(**coefficients) -> dict:
    return with_coefficients("poisson", coefficients)


K0 = {"eigenvalue": 2.0, "angle": 0.3}
POINT = ["grid point [5, 7]"]  # where spoiled() puts the bad value

# Bad coefficient fields: each names the coefficient and the first offending grid point.
FIELD_CASES = [
    (
        "K not SPD at a point",
        poisson_fields(k11=b64(0.01 * SMOOTH), k22=0.01, k12=b64(spoiled(0 * SMOOTH, 0.02))),
        422,
        ["positive definite", *POINT],
    ),
    (
        "k11 <= 0 at a point",
        poisson_fields(k11=b64(spoiled(0.01 * SMOOTH, -0.01)), k22=0.01, k12=0),
        422,
        ["positive definite", *POINT],
    ),
    (
        "eigenvalue <= 0 at a point",
        poisson_fields(eigenvalue=b64(spoiled(SMOOTH, 0.0)), angle=0.1),
        422,
        ["eigenvalue", "> 0", *POINT],
    ),
    (
        "conductivity <= 0 at a point",
        poisson_fields(**K0, conductivity=b64(spoiled(SMOOTH, -1.0))),
        422,
        ["conductivity", "> 0", *POINT],
    ),
    (
        "NaN in a field",
        poisson_fields(**K0, conductivity=b64(spoiled(SMOOTH, np.nan))),
        422,
        ["conductivity", "NaN", *POINT],
    ),
    (
        "Inf in a field",
        poisson_fields(**K0, conductivity=b64(spoiled(SMOOTH, np.inf), "float64")),
        422,
        ["conductivity", "Inf", *POINT],
    ),
    (
        "NaN in a list field",
        with_coefficients("helmholtz", {"omega": spoiled(4 * SMOOTH, np.nan).tolist()}),
        422,
        ["omega"],
    ),
    (
        "field beyond the bounds",
        poisson_fields(**K0, conductivity=b64(spoiled(SMOOTH, 1e8), "float64")),
        422,
        ["conductivity", "1e+06", *POINT],
    ),
    (
        "omega < 0 at a point",
        with_coefficients("helmholtz", {"omega": b64(spoiled(4 * SMOOTH, -1.0))}),
        422,
        ["omega", ">= 0", *POINT],
    ),
    (
        "field on another grid",
        poisson_fields(**K0, conductivity=b64(np.ones((64, 64)))),
        422,
        ["conductivity", "64 x 64", "32 x 32"],
    ),
    (
        "field not square",
        poisson_fields(**K0, conductivity=np.ones((32, 30)).tolist()),
        422,
        ["conductivity", "square"],
    ),
    (
        "field rows ragged",
        poisson_fields(**K0, conductivity=[[1.0] * 32] * 31 + [[1.0] * 30]),
        422,
        ["conductivity", "same length"],
    ),
    (
        "field bad base64",
        poisson_fields(**K0, conductivity=b64(SMOOTH) | {"data": "%%"}),
        422,
        ["conductivity", "base64"],
    ),
    (
        "field bytes and shape disagree",
        poisson_fields(**K0, conductivity=b64(SMOOTH) | {"shape": [16, 16]}),
        422,
        ["conductivity", "bytes"],
    ),
    (
        "conductivity times a varying tensor",
        poisson_fields(eigenvalue=b64(2 * SMOOTH), angle=0.1, conductivity=b64(SMOOTH)),
        422,
        ["conductivity", "eigenvalue", "numbers"],
    ),
    (
        "velocity field not divergence-free",
        with_coefficients(
            "advection_diffusion",
            {"k11": 0.01, "k22": 0.01, "k12": 0, "v1": b64(0.1 * np.sin(2 * np.pi * X)), "v2": 0},
        ),
        422,
        ["velocity", "divergence-free"],
    ),
    (
        "field of a string",
        poisson_fields(**K0, conductivity="high"),
        422,
        ["conductivity"],
    ),
]

# (id, payload or raw bytes, status, fragments the message must hold)
CASES = [
    *FIELD_CASES,
    ("unknown pde", body("helmholtz", n=32) | {"pde": "heat"}, 422, ["pde", "heat"]),
    ("no pde", {k: v for k, v in body("helmholtz", n=32).items() if k != "pde"}, 422, ["pde"]),
    (
        "no source",
        {k: v for k, v in body("helmholtz", n=32).items() if k != "source"},
        422,
        ["source", "required"],
    ),
    ("odd n", with_source(b64(np.zeros((33, 33)))), 422, ["source", "even"]),
    ("n too small", with_source(b64(np.zeros((30, 30)))), 422, ["source", "between 32 and 512"]),
    ("n too large", with_source(b64(np.zeros((514, 514)))), 422, ["source", "514"]),
    ("not square", with_source(np.zeros((32, 34)).tolist()), 422, ["source", "square"]),
    ("ragged rows", with_source([[0.0] * 32] * 31 + [[0.0] * 31]), 422, ["source", "same length"]),
    ("NaN", with_source(b64(NAN)), 422, ["source", "NaN"]),
    ("Inf", with_source(b64(INF, "float64")), 422, ["source", "Inf"]),
    (
        "bad base64",
        with_source(b64(ZERO_MEAN) | {"data": "not base64!"}),
        422,
        ["source", "base64"],
    ),
    ("bad dtype", with_source(b64(ZERO_MEAN) | {"dtype": "int8"}), 422, ["dtype"]),
    (
        "shape and data disagree",
        with_source(b64(ZERO_MEAN) | {"shape": [64, 64]}),
        422,
        ["source", "bytes"],
    ),
    ("huge values", with_source(b64(ZERO_MEAN * 1e20, "float64")), 422, ["source", "beyond"]),
    ("source is a string", with_source("zeros"), 422, ["source"]),
    (
        "unknown coefficient",
        with_coefficients("helmholtz", {"omega": 2, "k": 1}),
        422,
        ["coefficients", "k", "Extra inputs"],
    ),
    (
        "two forms of K",
        with_coefficients("poisson", {"k11": 0.01, "k22": 0.01, "k12": 0, "eigenvalue": 2}),
        422,
        ["either"],
    ),
    (
        "K incomplete",
        with_coefficients("poisson", {"k11": 0.01, "k22": 0.01}),
        422,
        ["k11, k22, k12"],
    ),
    (
        "K not positive definite",
        with_coefficients("poisson", {"k11": 0.01, "k22": 0.01, "k12": 0.02}),
        422,
        ["positive definite"],
    ),
    (
        "K negative",
        with_coefficients("poisson", {"k11": -0.01, "k22": -0.01, "k12": 0}),
        422,
        ["positive definite"],
    ),
    (
        "eigenvalue <= 0",
        with_coefficients("poisson", {"eigenvalue": -1, "angle": 0}),
        422,
        ["eigenvalue", "> 0"],
    ),
    ("negative omega", with_coefficients("helmholtz", {"omega": -2}), 422, ["omega"]),
    ("infinite omega", with_coefficients("helmholtz", {"omega": float("inf")}), 422, ["omega"]),
    ("coefficient not a number", with_coefficients("helmholtz", {"omega": "four"}), 422, ["omega"]),
    (
        "missing velocity",
        with_coefficients("advection_diffusion", {"eigenvalue": 2, "angle": 0, "v1": 0.1}),
        422,
        ["v2"],
    ),
    ("unknown mode", body("helmholtz", n=32) | {"mode": "fast"}, 422, ["mode"]),
    (
        "unknown envelope policy",
        body("helmholtz", n=32) | {"out_of_envelope": "ignore"},
        422,
        ["out_of_envelope"],
    ),
    (
        "unknown top-level field",
        body("helmholtz", n=32) | {"precision": "high"},
        422,
        ["precision"],
    ),
    ("unknown model", body("helmholtz", n=32) | {"model": "nosuch"}, 404, ["model", "nosuch"]),
    (
        "unknown model in exact mode",
        body("helmholtz", n=32) | {"model": "nosuch", "mode": "exact"},
        404,
        ["model", "nosuch"],
    ),
    (
        "invalid model name",
        body("helmholtz", n=32) | {"model": "Bad Name!"},
        404,
        ["invalid model name"],
    ),
    ("missing version", body("helmholtz", n=32) | {"model": "default@99"}, 404, ["no version 99"]),
    (
        "non-zero mean rejected",
        with_source(
            b64(ZERO_MEAN + 1),
            "poisson",
            nonzero_mean="reject",
            coefficients={"eigenvalue": 2, "angle": 0},
        ),
        422,
        ["source", "zero-mean"],
    ),
    (
        "outside envelope rejected",
        with_coefficients("helmholtz", {"omega": 40}, out_of_envelope="reject"),
        422,
        ["coefficients", "omega = 40"],
    ),
    ("not JSON", b"{pde: helmholtz", 422, ["JSON"]),
    ("body too large", b"[" + b"0," * (3 * 2**20) + b"0]", 413, ["larger than"]),
    ("too many batch items", {"items": [body("helmholtz", n=32)] * 17}, 413, ["17 items"]),
    ("empty batch", {"items": []}, 422, ["items"]),
    (
        "bad batch item by index",
        {"items": [body("helmholtz", n=32)] * 2 + [with_coefficients("helmholtz", {"omega": -1})]},
        422,
        ["items", "2", "omega"],
    ),
]


@pytest.mark.parametrize(
    ("payload", "status", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_4xx_naming_the_problem(client, registry_root, payload, status, fragments):
    path = "/solve/batch" if isinstance(payload, dict) and "items" in payload else "/solve"
    if isinstance(payload, bytes):
        r = client.post(path, content=payload, headers={"Content-Type": "application/json"})
    else:
        r = client.post(
            path, content=json.dumps(payload), headers={"Content-Type": "application/json"}
        )
    assert r.status_code == status, r.text[:500]
    detail = r.json()["detail"]
    assert detail and all("msg" in d and "loc" in d for d in detail)
    text = json.dumps(detail)
    for fragment in fragments:
        assert fragment in text, (fragment, text[:500])
    assert str(registry_root) not in r.text  # the model is named, never the server's paths


def test_the_catalogue_is_large_and_the_service_survives_it(client, service):
    assert len(CASES) >= 40 and len(FIELD_CASES) >= 15
    for _, payload, _, _ in CASES:  # all of them again, back to back
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        path = "/solve/batch" if b'"items"' in content[:20] else "/solve"
        r = client.post(path, content=content, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500
    assert httpx.get(f"{service}/healthz").status_code == 200
    good = client.post("/solve", json=body("helmholtz", n=32))
    assert good.status_code == 200 and good.json()["mode"] == "surrogate"


def test_a_request_without_content_length_is_still_capped(client):
    def chunks():
        yield b'{"pde": "helmholtz", "source": ['
        for _ in range(600):
            yield b"[" + b"0.0," * 2000 + b"0.0],"
        yield b"[0.0]]}"

    r = client.post("/solve", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than" in r.text
