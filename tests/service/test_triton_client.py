"""A third-party KServe v2 client (Triton's ``tritonclient.http``) drives the running test
service: health, model readiness and metadata, binary inference with requested outputs,
compressed bodies, and errors that reach the user as the server's words."""

import gzip
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from service_helpers import API_KEY
from test_app import body, field
from tritonclient.utils import InferenceServerException

from service import v2

N = 64


def _key() -> dict[str, str]:
    """The API key header, a new dict each call: tritonclient adds its own headers to the
    dict it is given (Content-Encoding would stick to the next request)."""
    return {"X-API-Key": API_KEY}


@pytest.fixture(scope="module")
def triton_client(service):
    client = triton.InferenceServerClient(urlparse(service).netloc, network_timeout=60)
    yield client
    client.close()


def _inputs(source: np.ndarray, omega: float = 4.0) -> list:
    """A helmholtz problem: ``source`` as binary data, omega as JSON data."""
    f = triton.InferInput("source", list(source.shape), "FP32")
    f.set_data_from_numpy(source.astype(np.float32), binary_data=True)
    w = triton.InferInput("omega", [1], "FP64")
    w.set_data_from_numpy(np.array([omega]), binary_data=False)
    return [f, w]


def _source() -> np.ndarray:
    return field(body("helmholtz", N)["source"]).astype(np.float32)


PARAMS = {"pde": "helmholtz", "mode": "validate"}


def test_health_and_model_readiness(triton_client):
    assert triton_client.is_server_live()  # open routes: no key needed
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("default", headers=_key())
    assert triton_client.is_model_ready("default", "1", headers=_key())
    assert not triton_client.is_model_ready("nope", headers=_key())
    assert not triton_client.is_model_ready("default", headers={})  # keys are configured


def test_model_metadata(triton_client):
    meta = triton_client.get_model_metadata("default", headers=_key())
    assert meta["name"] == "default" and meta["versions"] == ["1"]
    assert meta["platform"] == "pdeserve"
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["source"] == {"name": "source", "datatype": "FP32", "shape": [-1, -1, -1]}
    assert {"eigenvalue", "conductivity", "omega", "v1"} <= set(inputs)
    outputs = [t["name"] for t in meta["outputs"]]
    assert outputs == list(v2.OUTPUTS)
    assert triton_client.get_model_metadata("default", "1", headers=_key()) == meta
    with pytest.raises(InferenceServerException) as e:
        triton_client.get_model_metadata("nope", headers=_key())
    assert e.value.status() == "404" and "unknown model 'nope'" in e.value.message()
    assert "default" in e.value.message()  # the published models


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_binary_with_requested_outputs(triton_client, compression):
    source = _source()
    wanted = [
        triton.InferRequestedOutput("relative_l2", binary_data=False),
        triton.InferRequestedOutput("solution", binary_data=True),
    ]
    result = triton_client.infer(
        "default",
        _inputs(source),
        outputs=wanted,
        parameters=PARAMS,
        headers=_key(),
        request_compression_algorithm=compression,
        response_compression_algorithm="gzip",  # may be ignored; must not break
    )
    answered = result.get_response()["outputs"]
    assert [o["name"] for o in answered] == ["relative_l2", "solution"]  # only, in order
    assert "binary_data_size" in answered[1]["parameters"] and "data" in answered[0]
    solution = result.as_numpy("solution")
    assert solution.dtype == np.float32 and solution.shape == (N, N)
    assert result.as_numpy("mode") is None
    assert np.isfinite(result.as_numpy("relative_l2")).all()
    assert result.get_response()["model_name"] == "default"


def test_infer_without_requested_outputs_gets_all_binary(triton_client):
    result = triton_client.infer(
        "default", _inputs(_source()), parameters={"pde": "helmholtz"}, headers=_key()
    )
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names[0] == "solution" and "timings_ms" in names
    assert "binary_data_size" in result.get_response()["outputs"][0]["parameters"]
    assert result.as_numpy("mode")[0] in ("surrogate", b"surrogate")


def test_errors_reach_the_user_as_text(triton_client):
    wrong = np.zeros((3, N), dtype=np.float32)  # not square
    with pytest.raises(InferenceServerException) as e:
        triton_client.infer("default", _inputs(wrong), parameters=PARAMS, headers=_key())
    assert e.value.status() == "422"
    assert "source must be [n, n] or [B, n, n], got [3, 64]" in e.value.message()
    with pytest.raises(InferenceServerException) as e:
        triton_client.infer("nope", _inputs(_source()), parameters=PARAMS, headers=_key())
    assert e.value.status() == "404" and "unknown model 'nope'" in e.value.message()
    unknown = [triton.InferRequestedOutput("speed")]
    with pytest.raises(InferenceServerException) as e:
        triton_client.infer(
            "default", _inputs(_source()), outputs=unknown, parameters=PARAMS, headers=_key()
        )
    assert e.value.status() == "400" and "unknown output 'speed'" in e.value.message()
    assert "solution" in e.value.message()  # the known ones
    with pytest.raises(InferenceServerException) as e:
        triton_client.infer("default", _inputs(_source()), parameters=PARAMS)  # no key
    assert e.value.status() == "401" and "API key" in e.value.message()


# -- the same over plain HTTP: the error format, the open routes, compressed bodies ------


def _body(source: np.ndarray) -> tuple[bytes, dict[str, str]]:
    tensors = {"source": source, "omega": np.array([4.0])}
    data, length = v2.encode({"parameters": PARAMS}, "inputs", tensors, binary=True)
    return data, {"Content-Type": v2.CONTENT_TYPE, v2.HEADER_LENGTH: str(length)}


def test_v2_errors_are_error_objects_and_other_routes_keep_detail(client):
    r = client.get("/v2/models/nope")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    assert r.json()["error"].startswith("unknown model 'nope'")
    assert "/" not in r.json()["error"]  # no server path
    data, headers = _body(_source())
    r = client.post("/v2/models/nope/infer", content=data, headers=headers)
    assert r.status_code == 404 and r.json()["error"].startswith("unknown model 'nope'")
    r = client.post("/v2/models/default/infer", content=b"{", headers={})
    assert r.status_code == 422 and r.json() == {"error": "the inference header is not JSON"}
    assert client.get("/v2/no/such/route").json() == {"error": "Not Found"}
    r = client.get("/models/nope")
    assert r.status_code == 404 and "detail" in r.json()


def test_health_routes_are_open_and_the_rest_need_the_key(service):
    assert httpx.get(f"{service}/v2/health/live").status_code == 200
    assert httpx.get(f"{service}/v2/health/ready").status_code == 200
    r = httpx.get(f"{service}/v2/models/default/ready")
    assert r.status_code == 401 and "API key" in r.json()["error"]


def test_a_compressed_body_is_inflated_up_to_the_cap(client):
    data, headers = _body(_source())
    r = client.post(
        "/v2/models/default/infer",
        content=gzip.compress(data),
        headers=headers | {"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200, r.text[:300]
    # 5 MB of zeros in 5 kB of gzip: over the 4 MiB cap once inflated, never inflated whole
    bomb = gzip.compress(b"\0" * (5 * 2**20))
    r = client.post(
        "/v2/models/default/infer", content=bomb, headers=headers | {"Content-Encoding": "gzip"}
    )
    assert r.status_code == 413 and "once decompressed" in r.json()["error"]
    r = client.post(
        "/v2/models/default/infer", content=data, headers=headers | {"Content-Encoding": "br"}
    )
    assert r.status_code == 415 and "'br' is not supported" in r.json()["error"]
