"""The HTTP edge of the ingress: the FastAPI app, API keys, the body cap, and the direct
routes that answer valid JSON bodies without FastAPI's machinery."""

import functools
import hmac
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from ray import serve
from ray.serve.exceptions import RayServeException

from service.docs_assets import DOCS_ROUTES, add_docs
from service.schema import BatchRequest, SolveRequest
from service.settings import ServiceSettings, active, direct_route

HEALTH_ROUTES = {"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"}
OPEN_ROUTES = HEALTH_ROUTES | DOCS_ROUTES
SOLVE_REQUEST = TypeAdapter(SolveRequest)
BATCH_REQUEST = TypeAdapter(BatchRequest)

api = FastAPI(
    title="pdeserve",
    version="0.1.0",
    description="Surrogate PDE solver: a pre-trained Fourier Neural Operator in ONNX Runtime, "
    "checked on request against an exact spectral solver.",
    docs_url=None,  # Swagger UI from the service's own files: service/docs_assets.py
    redoc_url=None,
)
add_docs(api)


class _Guard:
    """ASGI middleware: API keys; the body size cap (413) on the declared length and on the
    bytes actually received (a chunked body has no Content-Length); and the direct routes
    (``Direct``), answered here when their body validates."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        settings = active()
        if scope["type"] != "http" or settings is None:
            return await self.app(scope, receive, send)
        send = _served_by(send)
        request = Request(scope)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return await _reject(413, ["body"], _too_large(settings), scope, receive, send)
        path = _route(scope)
        needs_key = path.startswith("/admin/") or (
            bool(settings.api_keys) and path not in OPEN_ROUTES
        )
        if needs_key and not _authorised(request, settings):
            msg = (
                "admin endpoints need an API key, and none is configured (set PDESERVE_API_KEYS)"
                if not settings.api_keys
                else "missing or wrong API key: send 'Authorization: Bearer KEY' or "
                "'X-API-Key: KEY'"
            )
            loc = ["header", "authorization"]
            return await _reject(401, loc, msg, scope, receive, send)
        method = scope.get("method")
        direct = direct_route(path) if method == "POST" and _json(request) else None
        if direct is None and (length is not None or method not in ("POST", "PUT", "PATCH")):
            return await self.app(scope, receive, send)
        # Read the body here, up to the cap, then answer it or hand it on.
        chunks, seen, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            more = message.get("more_body", False)
            if seen > settings.max_body_bytes:
                return await _reject(413, ["body"], _too_large(settings), scope, receive, send)
        body = b"".join(chunks)
        if direct is not None and await direct.answer(body, scope, receive, send):
            return
        replay = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed():
            return replay.pop() if replay else await receive()

        return await self.app(scope, replayed, send)


@functools.cache
def replica_tag() -> bytes:
    """This ingress replica's id (Serve's), sent as ``X-Served-By`` on every answer: which
    replica of several answered is what a client reporting a problem, and the cluster
    tests, need to know. Empty outside a replica."""
    try:
        return serve.get_replica_context().replica_id.unique_id.encode()
    except RayServeException:
        return b""


def _served_by(send):
    tag = replica_tag()
    if not tag:
        return send

    async def tagged(message):
        if message["type"] == "http.response.start":
            headers = [*message.get("headers", []), (b"x-served-by", tag)]
            message = {**message, "headers": headers}
        await send(message)

    return tagged


def _route(scope) -> str:
    """The request's path within the application: under a route prefix (an application
    beside others on a cluster's proxy) the prefix is the scope's ``root_path``."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _json(request: Request) -> bool:
    """Whether the body is declared JSON, as FastAPI requires to parse it as such."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0]
    return media_type.strip().lower() == "application/json"


@dataclass(frozen=True)
class Direct:
    """A POST route answered by ``_Guard`` itself when its body validates.

    FastAPI spends about 0.4 ms of the ingress's 2 ms per solve on its own machinery
    (json.loads, then validating the objects, dependency resolution, the response model's
    second validation, json.dumps); pydantic's Rust parser validates the raw JSON in one
    pass and writes the response itself. A body that does not validate goes on to the
    FastAPI route, which reports it in its usual form; FastAPI still documents the route.
    """

    request: TypeAdapter
    handle: Callable[[Any], Awaitable[BaseModel]]

    async def answer(self, body: bytes, scope, receive, send) -> bool:
        """Validate and answer; False (nothing sent) where the body does not validate."""
        try:
            parsed = self.request.validate_json(body)
        except ValidationError:
            return False
        try:
            result = await self.handle(parsed)
        except HTTPException as e:
            content = {"detail": e.detail}
            response = JSONResponse(content, status_code=e.status_code, headers=e.headers)
        else:
            response = Response(
                result.model_dump_json(exclude_none=True), media_type="application/json"
            )
        await response(scope, receive, send)
        return True


async def _reject(status: int, loc: list[Any], msg: str, scope, receive, send) -> None:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    content = {"detail": [{"loc": loc, "msg": msg, "type": f"http_{status}"}]}
    await JSONResponse(status_code=status, content=content, headers=headers)(scope, receive, send)


api.add_middleware(_Guard)


def _too_large(settings: ServiceSettings) -> str:
    return f"request body larger than {settings.max_body_bytes} bytes"


def _authorised(request: Request, settings: ServiceSettings) -> bool:
    given = request.headers.get("x-api-key", "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    return bool(given) and any(hmac.compare_digest(given, k) for k in settings.api_keys)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError):
    """422 with every error's location and message; no input echoed back (it can be MBs)."""
    errors = [
        {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": e.get("type", "")}
        for e in exc.errors()
    ]
    return JSONResponse(status_code=422, content={"detail": errors})


def reuse_freed_port() -> None:
    """The ingress replica's own HTTP server (Serve's direct ingress) binds its port with
    SO_REUSEADDR, as servers do. Without it, the connections that server closed (in
    TIME-WAIT for about a minute after a stop) kept a restarted service off its port
    ("Address already in use"): an address is reused only where the new socket and every
    socket still holding it allow it. Serve binds that socket itself, after the ingress's
    constructor (which calls this) and without the option; this turns it on, without
    SO_REUSEPORT (which would let a second service share the port)."""
    from ray.serve._private import http_util, replica

    start = getattr(replica, "start_asgi_http_server", None)
    if start is None or getattr(start, "reuses_address", False):
        return

    async def start_reusing(app, http_options, *, event_loop, enable_so_reuseport=False):
        return await start(app, http_options, event_loop=event_loop, enable_so_reuseport=True)

    start_reusing.reuses_address = True  # type: ignore[attr-defined]
    http_util.set_socket_reuse_port = _reuse_address
    replica.start_asgi_http_server = start_reusing


def _reuse_address(sock: socket.socket) -> bool:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return True
