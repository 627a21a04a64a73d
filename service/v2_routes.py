"""The KServe v2 protocol around inference (``service/v2.py`` is the wire format): errors in
the protocol's form, the model metadata, and models named by a v2 URL.

Every response of a ``/v2/...`` route that is an error (4xx, 5xx) has the body the v2
protocol gives errors, ``{"error": "<message>"}``, whoever raised it: a route, FastAPI (an
unknown route), the edge (a missing API key, a body over the cap) or an unexpected
exception (a 500). :class:`V2Errors` rewrites them, as a middleware outside the edge's;
the other routes keep ``{"detail": [{loc, msg, type}]}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, get_args

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelstore.registry import ModelCard
from service import v2
from service.edge import _route, api
from service.errors import http_error
from service.schema import SolveRequestTypes

PREFIX = "/v2"
#: The model metadata's platform: the service's own (the inputs are no ONNX graph's).
PLATFORM = "pdeserve"


def is_v2(path: str) -> bool:
    return path == PREFIX or path.startswith(f"{PREFIX}/")


def error_message(detail: Any) -> str:
    """A ``{"detail": ...}`` error's text in one line: each entry as ``where: what``, where
    being its place in the body (``inputs.source.shape``); a path or header entry (the
    URL's model, the API key) is its message alone."""
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for entry in detail:
        if not isinstance(entry, dict):
            parts.append(str(entry))
            continue
        loc = [str(p) for p in entry.get("loc", [])]
        if loc[:1] in (["body"], ["query"]):
            loc = loc[1:]
        msg = str(entry.get("msg", ""))
        parts.append(msg if not loc or loc[0] in ("path", "header") else f"{'.'.join(loc)}: {msg}")
    return "; ".join(parts)


def _error_body(body: bytes, status: int) -> bytes:
    """An error response's body as the v2 protocol's ``{"error": ...}``."""
    try:
        content = json.loads(body)
    except ValueError:
        content = None
    if isinstance(content, dict) and isinstance(content.get("error"), str):
        return body
    if isinstance(content, dict) and "detail" in content:
        message = error_message(content["detail"])
    else:
        message = body.decode(errors="replace").strip() or f"HTTP {status}"
    return json.dumps({"error": message}).encode()


class V2Errors:
    """ASGI middleware: the error responses of ``/v2/...`` routes as ``{"error": ...}``
    (their status and other headers kept); an exception no handler took is a 500 in that
    form (and is raised on, to be logged). Other routes, and answers below 400, pass
    untouched: nothing is held but an error's body."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_v2(_route(scope)):
            return await self.app(scope, receive, send)
        held: list[Message] = []  # an error's start, held until its body is complete
        body = bytearray()
        started = False

        async def rewritten(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400:
                    held.append(message)
                    return
            elif message["type"] == "http.response.body" and held:
                body.extend(message.get("body", b""))
                if not message.get("more_body", False):
                    await _send_error(send, held[0], _error_body(bytes(body), held[0]["status"]))
                return
            await send(message)

        try:
            await self.app(scope, receive, rewritten)
        except Exception:
            if not started:
                start = {"type": "http.response.start", "status": 500, "headers": []}
                await _send_error(send, start, json.dumps({"error": "internal error"}).encode())
            raise


async def _send_error(send: Send, start: Message, body: bytes) -> None:
    kept = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-length", b"content-type")
    ]
    headers = [
        *kept,
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
    ]
    await send({**start, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# Outside the edge's middleware (added last: outermost), so its refusals are rewritten too.
# Before ``service.ingress`` hands ``api`` to Serve, which takes a copy.
api.add_middleware(V2Errors)


def known_card(
    card: Callable[[str, list[Any]], ModelCard],
    names: Callable[[], list[str]],
    name: str,
    version: str | None = None,
) -> ModelCard:
    """The card of the model a v2 URL names (``card``: the ingress's cache of cards); a
    404 that names it, and the published models (``names``), where there is none."""
    try:
        return card(name if version is None else f"{name}@{version}", ["path", "name"])
    except HTTPException as e:
        if e.status_code != 404:
            raise
        what = f"{name!r}" if version is None else f"{name!r} version {version!r}"
        published = ", ".join(names()) or "none"
        msg = f"unknown model {what} ({error_message(e.detail)}); published: {published}"
        raise http_error(404, ["path", "name"], msg) from None


def _coefficients() -> list[str]:
    """Every pde's coefficient names, as ``POST /solve`` takes them, once each."""
    names: dict[str, None] = {}
    for request in get_args(SolveRequestTypes):
        names.update(dict.fromkeys(request.model_fields["coefficients"].annotation.model_fields))
    return list(names)


#: The inputs, in the batch form: ``source`` [B, n, n] (or [n, n]; FP32 or FP64) and each
#: coefficient [B] or [1] (or [B, n, n] or [n, n] fields).
INPUTS = [
    {"name": "source", "datatype": "FP32", "shape": [-1, -1, -1]},
    *({"name": name, "datatype": "FP64", "shape": [-1]} for name in _coefficients()),
]


def model_metadata(name: str, versions: list[int]) -> dict[str, Any]:
    """The v2 model metadata of ``name`` (published ``versions``)."""
    outputs = [
        {"name": output, "datatype": datatype, "shape": list(shape)}
        for output, (datatype, shape) in v2.OUTPUTS.items()
    ]
    return {
        "name": name,
        "versions": [str(v) for v in versions],
        "platform": PLATFORM,
        "inputs": INPUTS,
        "outputs": outputs,
    }
