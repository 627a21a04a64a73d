"""The KServe v2 inference protocol with binary tensors: the same answers as /solve, bad
bodies refused with a 4xx naming what is wrong, the SDK's default path."""

import json

import numpy as np
import pytest
from service_helpers import API_KEY
from test_app import body, field
from test_fields_http import darcy, medium

from service import v2
from service.client import Client

N = 64


def infer(client, tensors: dict, params: dict, model: str = "default", binary: bool = True):
    data, length = v2.encode({"parameters": params}, "inputs", tensors, binary=binary)
    headers = {"Content-Type": v2.CONTENT_TYPE if length else "application/json"}
    if length:
        headers[v2.HEADER_LENGTH] = str(length)
    return client.post(f"/v2/models/{model}/infer", content=data, headers=headers)


def outputs(response) -> dict:
    assert response.status_code == 200, response.text[:500]
    _, out = v2.decode(response.content, response.headers.get(v2.HEADER_LENGTH), "outputs")
    return out


def test_a_binary_request_gets_the_answer_json_gets(client):
    request = darcy("smooth", mode="validate", tolerance=1e-10)
    f, a = field(request["source"]), field(request["coefficients"]["conductivity"])
    tensors = {
        "source": f.astype(np.float32),
        "eigenvalue": np.array([2.0]),
        "angle": np.array([0.3]),
        "conductivity": a.astype(np.float32),
    }
    response = infer(client, tensors, {"pde": "poisson", "mode": "validate", "tolerance": 1e-10})
    assert response.headers["content-type"] == v2.CONTENT_TYPE
    out = outputs(response)
    assert out["solution"].dtype == np.float32 and out["solution"].shape == (N, N)
    same = request | {
        "source": f.astype(np.float32).tolist(),
        "coefficients": request["coefficients"] | {"conductivity": a.astype(np.float32).tolist()},
    }
    want = client.post("/solve", json=same).json()
    assert np.allclose(out["solution"], field(want["solution"]), rtol=0, atol=1e-6)
    assert np.allclose(
        out["exact_solution"], field(want["validation"]["exact_solution"]), atol=1e-6
    )
    assert out["relative_l2"][0] == pytest.approx(want["validation"]["relative_l2"], rel=1e-5)
    assert out["error_estimate"][0] == pytest.approx(want["error_estimate"], rel=1e-5)
    assert out["mode"] == ["validate"] and out["model"] == ["default@1"]
    assert json.loads(out["solver"][0])["method"] == "cg"


def test_a_batch_with_per_problem_coefficients_and_fields(client):
    rng = np.random.default_rng(0)
    sources = rng.standard_normal((3, N, N))
    sources -= sources.mean(axis=(1, 2), keepdims=True)
    media = np.stack([medium("smooth", c, seed=i) for i, c in enumerate((2.0, 4.0, 8.0))])
    tensors = {
        "source": sources,  # FP64
        "eigenvalue": np.array([1.5, 2.0, 3.0]),
        "angle": np.array([0.0]),  # one for all
        "conductivity": media,
    }
    out = outputs(infer(client, tensors, {"pde": "poisson", "mode": "exact", "tolerance": 1e-10}))
    assert out["solution"].shape == (3, N, N) and out["solution"].dtype == np.float64
    assert out["mode"] == ["exact"] * 3 and np.isnan(out["error_estimate"]).all()
    for i in range(3):  # each as a JSON request of its own
        one = {
            "pde": "poisson",
            "source": sources[i].tolist(),
            "coefficients": {
                "eigenvalue": float(tensors["eigenvalue"][i]),
                "angle": 0.0,
                "conductivity": media[i].tolist(),
            },
            "mode": "exact",
            "tolerance": 1e-10,
        }
        want = field(client.post("/solve", json=one).json()["solution"])
        assert np.allclose(out["solution"][i], want, rtol=0, atol=1e-12)


def test_json_inline_tensors_work_too(client):
    f = field(body("helmholtz", N)["source"])
    tensors = {"source": f, "omega": np.array([4.0])}
    response = infer(client, tensors, {"pde": "helmholtz", "mode": "exact"}, binary=False)
    assert response.headers["content-type"].startswith("application/json")
    out = outputs(response)
    assert out["solution"].shape == (N, N) and out["mode"] == ["exact"]


def _raw(client, head: dict, tail: bytes = b"", length: int | None = None):
    data = json.dumps(head).encode()
    headers = {"Content-Type": v2.CONTENT_TYPE, v2.HEADER_LENGTH: str(length or len(data))}
    return client.post("/v2/models/default/infer", content=data + tail, headers=headers)


def _source(n=N, datatype="FP32", size=None):
    size = n * n * 4 if size is None else size
    return {
        "name": "source",
        "datatype": datatype,
        "shape": [n, n],
        "parameters": {"binary_data_size": size},
    }


OMEGA = {"name": "omega", "datatype": "FP64", "shape": [1], "data": [4.0]}
PARAMS = {"pde": "helmholtz", "mode": "exact"}


@pytest.mark.parametrize(
    ("head", "tail", "words"),
    [
        ({"parameters": PARAMS, "inputs": [_source(), OMEGA]}, b"\0" * 100, "short"),
        ({"parameters": PARAMS, "inputs": [_source(), OMEGA]}, b"\0" * (N * N * 4 + 8), "follow"),
        ({"parameters": PARAMS, "inputs": [_source(size=12), OMEGA]}, b"\0" * 12, "needs"),
        (
            {"parameters": PARAMS, "inputs": [_source(datatype="FP16"), OMEGA]},
            b"\0" * (N * N * 4),
            "datatype must be one of",
        ),
        ({"parameters": PARAMS, "inputs": [OMEGA]}, b"", "named 'source'"),
        (
            {"parameters": PARAMS, "inputs": [_source(), OMEGA | {"name": "omegga"}]},
            b"\0" * (N * N * 4),
            "omegga",
        ),
        (
            {"parameters": PARAMS | {"speed": 1}, "inputs": [_source(), OMEGA]},
            b"\0" * (N * N * 4),
            "unknown parameter 'speed'",
        ),
        (
            {"parameters": PARAMS, "inputs": [_source(n=30), OMEGA]},
            b"\0" * (30 * 30 * 4),
            "n must be even and between",
        ),
    ],
)
def test_bad_binary_bodies_are_refused_naming_what_is_wrong(client, head, tail, words):
    r = _raw(client, head, tail)
    assert r.status_code == 422, r.text[:300]
    assert words in r.text


def test_a_header_length_beyond_the_body_and_a_body_over_the_cap(client):
    r = _raw(client, {"parameters": PARAMS, "inputs": [_source(), OMEGA]}, length=10**6)
    assert r.status_code == 422 and v2.HEADER_LENGTH in r.text
    big = {"parameters": PARAMS, "inputs": [_source(n=512), OMEGA]}
    r = _raw(client, big, b"\0" * (512 * 512 * 4 * 5))  # 5 MB, over the test cap of 4 MiB
    assert r.status_code == 413


def test_the_sdk_speaks_binary_by_default_and_json_on_request(service):
    f = field(body("poisson", N)["source"])
    with (
        Client(service, api_key=API_KEY) as binary,
        Client(service, api_key=API_KEY, encoding="json") as plain,
    ):
        assert binary.encoding == "binary"
        a = binary.solve("poisson", f, k11=0.02, k22=0.01, k12=0.002, mode="validate")
        b = plain.solve("poisson", f, k11=0.02, k22=0.01, k12=0.002, mode="validate")
    assert a.mode == b.mode == "validate" and a.model == b.model == "default@1"
    assert np.allclose(a.solution, b.solution, atol=1e-6)
    assert a.relative_l2 == pytest.approx(b.relative_l2, rel=1e-5)
    assert a.error_estimate == pytest.approx(b.error_estimate, rel=1e-5)
    with pytest.raises(ValueError, match="encoding"):
        Client(service, encoding="npz")


def test_the_sdk_naming_no_model_is_routed_on_both_encodings(service):
    request = darcy("smooth", 5.0)
    f, a = field(request["source"]), field(request["coefficients"]["conductivity"])
    results = []
    for encoding in ("binary", "json"):
        with Client(service, api_key=API_KEY, encoding=encoding) as c:
            # banded's untrained answers belie its card: asked for, the surrogate answers
            results.append(
                c.solve("poisson", f, eigenvalue=2.0, angle=0.3, conductivity=a,
                        out_of_envelope="surrogate")
            )  # fmt: skip
            # a named model is kept
            named = c.solve(
                "poisson", f, eigenvalue=2.0, angle=0.3, conductivity=a, model="default"
            )
            assert named.model == "default@1" and named.routed is None
    binary, plain = results
    assert binary.model == plain.model == "banded@1"  # the only card measuring the band
    assert binary.routed == plain.routed and "lowest measured error" in binary.routed
    assert np.allclose(binary.solution, plain.solution, atol=1e-6)


def test_grids_up_to_1024_on_the_binary_protocol_and_512_in_json(embedded_app, registry_root):
    """An application with the default body cap (64 MiB; the package's is 4 MiB): a 1024^2
    surrogate answer validated by the FFT solve, a 1024^2 field problem solved exactly; JSON
    stops at 512 and says where to go; past 1024 a clear 422."""
    from ray import serve

    from datagen.solver import relative_l2, solve_detailed
    from datagen.systems import unified_field
    from service.app import build_app
    from service.client import RequestError
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        registry=str(registry_root),
        api_keys=[API_KEY],
        ingress_cpus=0.05,
        surrogate_cpus=0.05,
        exact_cpus=0.05,
    )
    serve.run(build_app(settings), name="large", route_prefix="/large")
    url = f"{embedded_app.proxy_url}/large"
    n = 1024
    x = np.arange(n) / n
    f = np.sin(2 * np.pi * x)[None, :] * np.cos(4 * np.pi * x)[:, None]
    a = np.exp(0.5 * np.log(5.0) * np.sin(2 * np.pi * x)[None, :] * np.sin(2 * np.pi * x)[:, None])
    try:
        with Client(url, api_key=API_KEY, dtype="float64") as c:
            r = c.solve("poisson", f, k11=0.02, k22=0.01, k12=0.002, mode="validate")
            assert r.solution.shape == (n, n) and r.mode == "validate"
            assert r.error_estimate == pytest.approx(r.relative_l2, rel=1e-3)
            e = c.solve("poisson", f, k11=0.01, k22=0.01, k12=0.0, conductivity=a,
                        mode="exact", tolerance=1e-8)  # fmt: skip
            k = 0.01 * a
            want = solve_detailed("poisson", f[None], unified_field(k, k, 0 * k)[None],
                                  mean="project", tolerance=1e-8).solutions  # fmt: skip
            assert relative_l2(e.solution[None], want)[0] < 1e-6
            assert e.solver["method"] == "cg"
        with Client(url, api_key=API_KEY, encoding="json") as c, pytest.raises(RequestError) as j:
            c.solve("poisson", f, k11=0.02, k22=0.01, k12=0.002)
        assert j.value.status == 422 and "up to 1024 with the binary protocol" in str(j.value)
        with Client(url, api_key=API_KEY) as c, pytest.raises(RequestError) as big:
            c.solve("poisson", np.zeros((1026, 1026)), k11=0.02, k22=0.01, k12=0.002)
        assert big.value.status == 422 and "between 32 and 1024" in str(big.value)
    finally:
        serve.delete("large")
