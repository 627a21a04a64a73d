"""The pieces of KServe v2 conformance alone (no service): compressed bodies and their cap,
requested outputs, errors as ``{"error": ...}``, the model metadata."""

import gzip
import json
import zlib

import numpy as np
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from service import v2
from service.errors import http_error
from service.infer import outputs
from service.v2_routes import V2Errors, error_message, model_metadata

# -- compressed bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("GZip ", gzip.compress)],
)
def test_gzip_and_deflate_bodies_are_inflated(encoding, compress):
    data = b"header and tensors " * 100
    assert v2.decompress(compress(data), encoding, len(data)) == data


@pytest.mark.parametrize("encoding", [None, "", "identity"])
def test_an_uncompressed_body_is_kept(encoding):
    assert v2.decompress(b"\x1f\x8b not gzip", encoding, 10) == b"\x1f\x8b not gzip"


def test_several_gzip_members_are_one_body():
    assert v2.decompress(gzip.compress(b"ab") + gzip.compress(b"cd"), "gzip", 4) == b"abcd"


def test_the_cap_applies_to_the_inflated_size_and_no_more_is_inflated(monkeypatch):
    bomb = gzip.compress(b"\0" * 2**24)  # 16 MiB in 16 kB
    asked = []
    real = zlib.decompressobj

    class Spy:
        def __init__(self, wbits):
            self.inner = real(wbits)

        def decompress(self, data, max_length=0):
            asked.append(max_length)
            return self.inner.decompress(data, max_length)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(zlib, "decompressobj", Spy)
    with pytest.raises(v2.WireError) as e:
        v2.decompress(bomb, "gzip", 1000)
    assert e.value.status == 413 and "larger than 1000 bytes once decompressed" in str(e.value)
    assert asked == [1001]  # never more than the cap + 1 byte
    assert len(v2.decompress(gzip.compress(b"x" * 1000), "gzip", 1000)) == 1000  # at the cap


@pytest.mark.parametrize(
    ("body", "encoding", "status", "words"),
    [
        (b"not gzip at all", "gzip", 422, "not valid gzip data"),
        (gzip.compress(b"x" * 100)[:-12], "gzip", 422, "ends early"),
        (zlib.compress(b"x") + b"tail", "deflate", 422, "4 bytes follow"),
        (gzip.compress(b"x"), "br", 415, "'br' is not supported"),
    ],
)
def test_bad_compressed_bodies_are_refused(body, encoding, status, words):
    with pytest.raises(v2.WireError) as e:
        v2.decompress(body, encoding, 10_000)
    assert e.value.status == status and words in str(e.value)


# -- requested outputs -------------------------------------------------------------------

ANSWER = {
    "solution": np.zeros((2, 2), np.float32),
    "error_estimate": np.array([0.1]),
    "mode": ["surrogate"],
    "timings_ms": ["{}"],
}


def _asked(*entries, **parameters) -> dict:
    return {"parameters": parameters, "outputs": list(entries)}


def test_requested_outputs_come_alone_in_order_binary_as_asked():
    asked = _asked(
        {"name": "mode", "parameters": {"binary_data": True}},
        {"name": "error_estimate", "parameters": {"binary_data": False}},
        {"name": "solution"},  # the request's default
        {"name": "exact_solution"},  # not in this answer (no validation): left out
    )
    chosen, binary = v2.Requested.parse(asked, binary=True).select(ANSWER)
    assert list(chosen) == ["mode", "error_estimate", "solution"]
    assert binary == {"mode", "solution"}
    body, length = v2.encode({}, "outputs", chosen, binary)
    head = json.loads(body[:length])
    assert [o["name"] for o in head["outputs"]] == list(chosen)
    assert head["outputs"][1]["data"] == [0.1]  # JSON, as asked
    assert head["outputs"][0]["data"] == ["surrogate"]  # BYTES are always JSON
    assert head["outputs"][2]["parameters"]["binary_data_size"] == 16


def test_no_outputs_listed_gets_all_binary_or_not_as_the_request():
    for listed in ({}, {"outputs": []}):
        chosen, binary = v2.Requested.parse(listed, binary=False).select(ANSWER)
        assert list(chosen) == list(ANSWER) and binary == set()
    chosen, binary = v2.Requested.parse(_asked(binary_data_output=True), False).select(ANSWER)
    assert list(chosen) == list(ANSWER) and binary == set(ANSWER)
    _, length = v2.encode({}, "outputs", *v2.Requested.parse({}, False).select(ANSWER))
    assert length is None  # plain JSON


@pytest.mark.parametrize(
    ("header", "status", "words"),
    [
        (_asked({"name": "speed"}), 400, "unknown output 'speed'; known: solution, "),
        (_asked({"parameters": {}}), 422, "needs a name"),
        ({"outputs": "solution"}, 422, "must be a list"),
        (_asked({"name": "mode", "parameters": {"binary_data": "yes"}}), 422, "must be a bool"),
        (_asked(binary_data_output=1), 422, "must be a bool"),
    ],
)
def test_bad_requested_outputs_are_refused(header, status, words):
    with pytest.raises(v2.WireError) as e:
        v2.Requested.parse(header, binary=True)
    assert e.value.status == status and words in str(e.value)


def test_the_known_outputs_are_those_answers_have():
    from types import SimpleNamespace as NS

    card = NS(ref="default@1")
    answer = NS(
        solution=np.zeros((4, 4)),
        estimate=None,
        validated=True,
        exact=NS(solution=np.zeros((4, 4)), report=lambda refined: NS(model_dump_json=str)),
        validation_error=0.1,
        mode="validate",
        reason=None,
        uses_model=True,
        refined=False,
    )
    plan = NS(card=card, routed="why", warnings=[])
    answered = outputs([(plan, answer, {})], np.dtype(np.float32), single=True)
    assert list(answered) == list(v2.OUTPUTS)


def test_model_metadata_follows_the_v2_schema():
    meta = model_metadata("default", [1, 2])
    assert meta["name"] == "default" and meta["versions"] == ["1", "2"]
    for tensor in meta["inputs"] + meta["outputs"]:
        assert set(tensor) == {"name", "datatype", "shape"}
        assert all(d == -1 or d > 0 for d in tensor["shape"])
    json.dumps(meta)


# -- errors ------------------------------------------------------------------------------


def test_error_messages_in_one_line():
    detail = [
        {"loc": ["body", "inputs", "source", "shape"], "msg": "source must be [n, n]"},
        {"loc": ["path", "name"], "msg": "unknown model 'x'"},
        {"loc": ["header", "authorization"], "msg": "missing API key"},
    ]
    assert error_message(detail) == (
        "inputs.source.shape: source must be [n, n]; unknown model 'x'; missing API key"
    )
    assert error_message("Not Found") == "Not Found"


def _app() -> FastAPI:
    app = FastAPI()

    @app.get("/v2/models/{name}")
    async def model(name: str):
        if name == "boom":
            raise RuntimeError("/srv/secret/path")
        if name == "plain":
            return JSONResponse({"error": "already in form"}, status_code=400)
        raise http_error(404, ["path", "name"], f"unknown model {name!r}")

    @app.get("/v2/retry")
    async def retry():
        raise HTTPException(503, detail="busy", headers={"Retry-After": "1"})

    @app.get("/v2")
    async def fine():
        return {"name": "pdeserve"}

    @app.get("/models/{name}")
    async def other(name: str):
        raise http_error(404, ["path", "ref"], "no model")

    app.add_middleware(V2Errors)
    return app


@pytest.fixture
def asgi():
    with TestClient(_app(), raise_server_exceptions=False) as c:
        yield c


def test_v2_errors_become_error_objects(asgi):
    r = asgi.get("/v2/models/x")
    assert r.status_code == 404 and r.json() == {"error": "unknown model 'x'"}
    assert int(r.headers["content-length"]) == len(r.content)
    r = asgi.get("/v2/retry")
    assert r.status_code == 503 and r.json() == {"error": "busy"}
    assert r.headers["retry-after"] == "1"
    r = asgi.get("/v2/models/plain")
    assert r.status_code == 400 and r.json() == {"error": "already in form"}
    r = asgi.get("/v2/models/boom")  # an exception: a 500, its text not shown
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    r = asgi.get("/v2/nothing/here")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = asgi.get("/v2/models/x/infer")  # a route FastAPI does not know by method
    assert r.status_code in (404, 405) and set(r.json()) == {"error"}


def test_other_routes_and_answers_pass_untouched(asgi):
    r = asgi.get("/v2")
    assert r.status_code == 200 and r.json() == {"name": "pdeserve"}
    r = asgi.get("/models/x")
    assert r.status_code == 404 and r.json()["detail"][0]["msg"] == "no model"
