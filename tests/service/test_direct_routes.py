"""POST /solve and /solve/batch with a valid JSON body are answered by the ingress's
middleware (``Direct``) without FastAPI's per-request machinery: the same answers, the
same errors; a body that does not validate still gets FastAPI's report."""

import asyncio
import json

import numpy as np
from fastapi import HTTPException
from test_app import body, field

from service.edge import SOLVE_REQUEST, Direct
from service.schema import SolveResponse
from service.settings import ServiceSettings

SCOPE = {"type": "http", "method": "POST", "path": "/solve", "headers": []}


def _answer(direct: Direct, raw: bytes) -> tuple[bool, list[dict]]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    return asyncio.run(direct.answer(raw, SCOPE, receive, send)), sent


def test_a_valid_body_is_validated_once_and_answered_with_the_response_model():
    seen = []

    async def handle(request):
        seen.append(request)
        return SolveResponse(pde=request.pde, n=32, solution=request.source, mode="surrogate")

    raw = json.dumps(body("helmholtz", n=32, encoding="float32")).encode()
    answered, sent = _answer(Direct(SOLVE_REQUEST, handle), raw)
    assert answered and len(seen) == 1 and seen[0].coefficients.omega == 4
    assert sent[0]["status"] == 200
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    out = json.loads(sent[1]["body"])
    assert "reason" not in out and "validation" not in out  # None left out, as FastAPI does
    want = SolveResponse(pde="helmholtz", n=32, solution=seen[0].source, mode="surrogate")
    assert out == want.model_dump(mode="json", exclude_none=True)


def test_an_invalid_body_is_left_to_fastapi():
    async def handle(request):
        raise AssertionError("not called")

    bad = body("helmholtz", n=32) | {"coefficients": {"omega": 4, "k11": 1}}
    for raw in (json.dumps(bad).encode(), b"{not json", b""):
        answered, sent = _answer(Direct(SOLVE_REQUEST, handle), raw)
        assert not answered and sent == []


def test_an_http_error_is_answered_as_fastapi_answers_it():
    async def handle(request):
        error = HTTPException(503, detail=[{"loc": ["body"], "msg": "retry", "type": "x"}])
        error.headers = {"Retry-After": "1"}
        raise error

    raw = json.dumps(body("helmholtz", n=32)).encode()
    answered, sent = _answer(Direct(SOLVE_REQUEST, handle), raw)
    assert answered and sent[0]["status"] == 503
    assert (b"retry-after", b"1") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == {
        "detail": [{"loc": ["body"], "msg": "retry", "type": "x"}]
    }


def test_the_middleware_answers_valid_json_and_hands_the_rest_to_fastapi():
    """``_Guard`` answers a direct route whose body validates; FastAPI gets, with the body
    replayed, an invalid one and one declared another type."""
    from service import settings as active
    from service.edge import _Guard

    reached: list[bytes] = []

    async def fastapi(scope, receive, send):
        message, raw = {"more_body": True}, b""
        while message.get("more_body"):
            message = await receive()
            raw += message["body"]
        reached.append(raw)

    async def handle(request):
        return SolveResponse(pde=request.pde, n=32, solution=request.source, mode="exact")

    def post(raw: bytes, content_type: str) -> list[dict]:
        headers = [(b"content-type", content_type.encode())]
        scope = SCOPE | {"headers": [*headers, (b"content-length", str(len(raw)).encode())]}
        chunks = [
            {"type": "http.request", "body": raw[:10], "more_body": True},
            {"type": "http.request", "body": raw[10:], "more_body": False},
        ]
        sent: list[dict] = []

        async def receive():
            return chunks.pop(0)

        async def send(message):
            sent.append(message)

        asyncio.run(_Guard(fastapi)(scope, receive, send))
        return sent

    saved = active._ACTIVE[:], dict(active._DIRECT)
    try:
        active.activate(ServiceSettings(), direct={"/solve": Direct(SOLVE_REQUEST, handle)})
        good = json.dumps(body("helmholtz", n=32)).encode()
        sent = post(good, "application/json; charset=utf-8")
        assert sent[0]["status"] == 200 and reached == []
        bad = good.replace(b'"omega"', b'"omegax"')
        for raw, content_type in ((bad, "application/json"), (good, "text/plain")):
            assert post(raw, content_type) == [] and reached[-1] == raw
    finally:
        active._ACTIVE[:], active._DIRECT = saved[0], saved[1]


def _both_ways(client, path: str, payload: dict):
    """The answer to a body sent as application/json (answered directly) and as
    application/vnd.pdeserve+json (JSON to FastAPI, which answers it on its route)."""
    raw = json.dumps(payload)
    direct = client.post(path, content=raw, headers={"Content-Type": "application/json"})
    routed = client.post(
        path, content=raw, headers={"Content-Type": "application/vnd.pdeserve+json"}
    )
    return direct, routed


def _same(a: dict, b: dict) -> None:
    a, b = dict(a), dict(b)
    assert a.pop("timings_ms").keys() == b.pop("timings_ms").keys()
    sa, sb = field(a.pop("solution")), field(b.pop("solution"))
    np.testing.assert_array_equal(sa, sb)
    if "validation" in a:
        va, vb = a.pop("validation"), b.pop("validation")
        np.testing.assert_array_equal(field(va["exact_solution"]), field(vb["exact_solution"]))
        assert va["relative_l2"] == vb["relative_l2"]
    assert a == b


def test_direct_and_fastapi_answers_are_the_same(client):
    for payload in (
        body("helmholtz", encoding="float32"),
        body("poisson", n=32, mode="validate", encoding="lists"),
        body("advection_diffusion", mode="exact")
        | {"coefficients": {"k11": 0.02, "k22": 0.01, "k12": 0.0, "v1": 0.1, "v2": 0.0}},
        body("helmholtz", n=32) | {"coefficients": {"omega": 14}},  # falls back
    ):
        direct, routed = _both_ways(client, "/solve", payload)
        assert direct.status_code == routed.status_code == 200, direct.text
        _same(direct.json(), routed.json())
    items = [body("helmholtz", n=32), body("poisson", n=32, mode="exact")]
    direct, routed = _both_ways(client, "/solve/batch", {"items": items})
    assert direct.status_code == routed.status_code == 200
    for a, b in zip(direct.json()["items"], routed.json()["items"], strict=True):
        _same(a, b)


def test_direct_and_fastapi_errors_are_the_same(client):
    for path, payload in (
        ("/solve", body("helmholtz", n=32, model="nosuch")),  # valid body, 404 model
        (
            "/solve",
            body("helmholtz", n=32, out_of_envelope="reject") | {"coefficients": {"omega": 14}},
        ),
        ("/solve", body("helmholtz", n=33)),  # invalid: FastAPI's 422 both ways
        ("/solve/batch", {"items": [body("helmholtz", n=32)] * 17}),  # over max_batch_items
    ):
        direct, routed = _both_ways(client, path, payload)
        assert direct.status_code == routed.status_code and direct.status_code >= 400
        assert direct.json() == routed.json()
