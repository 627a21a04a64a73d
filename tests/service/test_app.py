"""The service over HTTP: modes, encodings, grids, envelope, batch, auth, reload."""

import asyncio
import json

import httpx
import numpy as np
import pytest
from fastapi import HTTPException
from service_helpers import API_KEY, RESOLUTION, publish_tiny

from datagen.resample import resample
from datagen.solver import solve
from modelstore.runner import OnnxSurrogate
from service.schema import EncodedArray

COEFFICIENTS = {
    "poisson": {"eigenvalue": 3.0, "angle": 0.4},
    "advection_diffusion": {
        "k11": 0.02,
        "k22": 0.01,
        "k12": 0.002,
        "v1": 0.1,
        "v2": 0.05,
    },  # Psi 0.43
    "helmholtz": {"omega": 4},
}


def smooth_source(n: int, seed: int = 0, zero_mean: bool = True) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x)
    f = np.zeros((n, n))
    for _ in range(4):
        cx, cy, w = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.2, 1)
        f += w * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 0.06**2))
    return f - f.mean() if zero_mean else f


def body(pde: str, n: int = RESOLUTION, encoding: str = "float64", **extra) -> dict:
    f = smooth_source(n, zero_mean=pde != "helmholtz")
    source = f.tolist() if encoding == "lists" else EncodedArray.encode(f, encoding).model_dump()
    return {"pde": pde, "source": source, "coefficients": COEFFICIENTS[pde], **extra}


def field(value) -> np.ndarray:
    if isinstance(value, dict):
        return EncodedArray.model_validate(value).decode()
    return np.asarray(value, dtype=np.float64)


def unified(pde: str) -> np.ndarray:
    from pydantic import TypeAdapter

    from service.schema import SolveRequest

    return TypeAdapter(SolveRequest).validate_python(body(pde, 32)).unified()


@pytest.fixture(scope="module")
def local_default(registry) -> OnnxSurrogate:
    card, files = registry.read_files("default@1")
    return OnnxSurrogate(card, files["model.onnx"])


def _surrogate_locally(runner: OnnxSurrogate, f: np.ndarray, c: np.ndarray) -> np.ndarray:
    n = f.shape[-1]
    g = resample(f[None], RESOLUTION)
    return resample(runner.predict(g, c[None]).astype(np.float64), n)[0]


@pytest.mark.parametrize("pde", ["poisson", "advection_diffusion", "helmholtz"])
@pytest.mark.parametrize("mode", ["surrogate", "exact", "validate"])
def test_every_mode_of_every_pde(client, local_default, pde, mode):
    r = client.post("/solve", json=body(pde, mode=mode))
    assert r.status_code == 200, r.text
    out = r.json()
    f, c = smooth_source(RESOLUTION, zero_mean=pde != "helmholtz"), unified(pde)
    solution = field(out["solution"])
    assert out["pde"] == pde and out["n"] == RESOLUTION and solution.shape == f.shape
    exact = solve(pde, f, c, mean="project")
    if mode == "exact":
        assert out["mode"] == "exact" and "model" not in out
        assert np.allclose(solution, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
        return
    assert out["mode"] == mode and out["model"] == "default@1"
    want = _surrogate_locally(local_default, f, c)
    assert np.linalg.norm(solution - want) <= 1e-5 * np.linalg.norm(want)
    assert "surrogate" in out["timings_ms"]
    if mode == "validate":
        reference = field(out["validation"]["exact_solution"])
        assert np.allclose(reference, exact, atol=1e-12 * np.abs(exact).max())
        error = np.linalg.norm(solution - reference) / np.linalg.norm(reference)
        assert out["validation"]["relative_l2"] == pytest.approx(error, rel=1e-9)
        assert set(out["timings_ms"]) == {"plan", "surrogate", "exact", "error_estimate"}
        assert out["reason"].startswith("validate: solution is the surrogate's (default@1)")


def test_the_answer_comes_in_the_request_encoding(client):
    answers = {}
    for encoding in ("lists", "float64", "float32"):
        out = client.post("/solve", json=body("helmholtz", encoding=encoding, mode="exact")).json()
        if encoding == "lists":
            assert isinstance(out["solution"], list)
        else:
            assert out["solution"]["dtype"] == encoding
        answers[encoding] = field(out["solution"])
    scale = np.abs(answers["float64"]).max()
    assert np.allclose(answers["lists"], answers["float64"], atol=1e-12 * scale)
    assert np.allclose(answers["float32"], answers["float64"], atol=1e-5 * scale)


@pytest.mark.parametrize("n", [32, 128])
def test_other_grids_are_resampled_to_the_model_and_back(client, local_default, n):
    out = client.post("/solve", json=body("poisson", n=n)).json()
    solution = field(out["solution"])
    f, c = smooth_source(n), unified("poisson")
    want = _surrogate_locally(local_default, f, c)
    assert solution.shape == (n, n) and out["n"] == n
    assert np.linalg.norm(solution - want) <= 1e-5 * np.linalg.norm(want)


def test_outside_the_envelope_falls_back_rejects_or_warns(client):
    far = body("helmholtz") | {"coefficients": {"omega": 14}}
    out = client.post("/solve", json=far).json()
    assert out["mode"] == "exact" and "omega = 14" in out["reason"] and "1..10" in out["reason"]
    r = client.post("/solve", json=far | {"out_of_envelope": "reject"})
    assert r.status_code == 422 and "omega = 14" in r.text
    out = client.post("/solve", json=far | {"out_of_envelope": "surrogate"}).json()
    assert out["mode"] == "surrogate" and "outside its envelope" in out["warnings"][0]
    aniso = body("poisson") | {"coefficients": {"eigenvalue": 8.0, "angle": 0.0}}
    out = client.post("/solve", json=aniso).json()
    assert out["mode"] == "exact" and "eigenvalue ratio = 8" in out["reason"]
    fast = body("advection_diffusion")
    fast["coefficients"] = fast["coefficients"] | {"v1": 2.0}
    out = client.post("/solve", json=fast).json()
    assert out["mode"] == "exact" and "Psi" in out["reason"]


def test_nonzero_mean_is_projected_with_a_warning(client):
    req = body("poisson")
    f = field(req["source"]) + 0.5
    req["source"] = EncodedArray.encode(f, "float64").model_dump()
    out = client.post("/solve", json=req | {"mode": "exact"}).json()
    assert "mean" in out["warnings"][0]
    want = solve("poisson", f - f.mean(), unified("poisson"))
    assert np.allclose(field(out["solution"]), want, atol=1e-12 * np.abs(want).max())


def test_batch_answers_in_order(client):
    items = [
        body("poisson", mode="exact"),
        body("helmholtz", n=32),
        body("advection_diffusion", mode="validate"),
        body("helmholtz", mode="exact") | {"coefficients": {"omega": 7}},
        body("poisson", n=128),
    ]
    r = client.post("/solve/batch", json={"items": items})
    assert r.status_code == 200, r.text
    got = r.json()["items"]
    assert [g["pde"] for g in got] == [i["pde"] for i in items]
    for item, answer in zip(items, got, strict=True):
        single = client.post("/solve", json=item).json()
        assert np.array_equal(field(answer["solution"]), field(single["solution"]))
        assert answer["mode"] == single["mode"]


def test_models_and_health(client, service):
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{service}/readyz").json()
    assert ready["status"] == "ready" and ready["model"] == "default@1"
    cards = client.get("/models").json()
    assert "default" in {c["name"] for c in cards}
    card = client.get("/models/default@1").json()
    assert card["version"] == 1 and card["resolution"] == RESOLUTION
    assert card["envelope"]["helmholtz"]["omega"] == [1.0, 10.0]
    r = client.get("/models/nosuch")
    assert r.status_code == 404 and "nosuch" in r.text


def test_api_keys(service):
    req = body("helmholtz", n=32, mode="exact")
    assert httpx.post(f"{service}/solve", json=req).status_code == 401
    wrong = httpx.post(f"{service}/solve", json=req, headers={"X-API-Key": "nope"})
    assert wrong.status_code == 401 and "API key" in wrong.text
    bearer = {"Authorization": f"Bearer {API_KEY}"}
    assert httpx.post(f"{service}/solve", json=req, headers=bearer).status_code == 200
    assert httpx.post(f"{service}/admin/reload").status_code == 401
    assert httpx.get(f"{service}/openapi.json").status_code == 200  # docs stay open


def test_reload_serves_a_newly_published_version(client, registry_root, tmp_path):
    assert publish_tiny(registry_root, "tuned", seed=1, workdir=tmp_path) == "tuned@1"
    req = body("helmholtz", model="tuned")
    assert client.post("/solve", json=req).json()["model"] == "tuned@1"
    assert publish_tiny(registry_root, "tuned", seed=2, workdir=tmp_path) == "tuned@2"
    assert client.post("/solve", json=req).json()["model"] == "tuned@1"  # cached until reload
    r = client.post("/admin/reload")
    assert r.status_code == 200 and r.json()["models"]["tuned"] == [1, 2]
    first = client.post("/solve", json=req).json()
    assert first["model"] == "tuned@2"
    pinned = client.post("/solve", json=req | {"model": "tuned@1"}).json()
    assert pinned["model"] == "tuned@1"
    assert not np.array_equal(field(first["solution"]), field(pinned["solution"]))


def test_a_slow_answer_is_a_504():
    from service.ingress import Ingress
    from service.settings import ServiceSettings

    ingress = Ingress.func_or_class.__new__(Ingress.func_or_class)
    ingress.settings = ServiceSettings(request_timeout_s=0.05)
    with pytest.raises(HTTPException) as info:
        asyncio.run(ingress._call(asyncio.sleep(5)))
    assert info.value.status_code == 504 and "0.05 s" in json.dumps(info.value.detail)


def test_prometheus_metrics_count_modes_fallbacks_and_validation_errors(client, metrics_url):
    import time

    far = body("helmholtz", n=32) | {"coefficients": {"omega": 30}}
    assert client.post("/solve", json=far).json()["mode"] == "exact"
    assert client.post("/solve", json=body("poisson", n=32, mode="validate")).status_code == 200
    wanted = (
        "ray_pdeserve_fallbacks_total{",
        "ray_pdeserve_validation_relative_l2_count{",
        "ray_pdeserve_solves_total{",
    )
    deadline = time.monotonic() + 60
    while True:  # Ray exports metrics every few seconds
        text = httpx.get(metrics_url, timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("ray_pdeserve")]
        if all(any(line.startswith(w) for line in lines) for w in wanted):
            break
        assert time.monotonic() < deadline, lines
        time.sleep(2)
    fallbacks = [line for line in lines if line.startswith(wanted[0]) and 'pde="helmholtz"' in line]
    assert fallbacks and float(fallbacks[0].rsplit(" ", 1)[1]) >= 1
    solves = [line for line in lines if line.startswith(wanted[2]) and 'mode="exact"' in line]
    assert solves and float(solves[0].rsplit(" ", 1)[1]) >= 1
    assert any(line.startswith("ray_serve_") for line in text.splitlines())  # Serve's own
