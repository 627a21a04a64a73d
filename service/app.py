"""The Ray Serve application: an HTTP ingress, a surrogate deployment and an exact solver.

- ``Ingress`` (FastAPI): validation, authentication, model resolution, the
  envelope check, and routing by ``mode``; ``validate`` runs both solvers at
  once. Requests that arrive together reach the Surrogate in one call per model
  and grid (``@serve.batch`` here too).
- ``Surrogate``: ONNX Runtime sessions, several models per replica
  (``@serve.multiplexed``), requests batched dynamically (``@serve.batch``)
  per model and grid. The ONNX graph is built for the model's grid, so
  requests at other grids are resampled spectrally to it and back.
- ``ExactSolver``: datagen's spectral solver.

``build_app(settings)`` returns the application; ``app_builder(args)`` is the
same for ``serve run`` / ``serve deploy`` config files.
"""

import asyncio
import collections
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from datagen.solver import MEAN_TOLERANCE
from datagen.solver import solve as exact_solve
from datagen.systems import get_system
from service.envelope import envelope_reasons
from service.registry import ModelCard, Registry, RegistryError
from service.runner import OnnxSurrogate
from service.schema import (
    BatchRequest,
    BatchResponse,
    SolveRequest,
    SolveRequestTypes,
    SolveResponse,
    Validation,
    encode_like,
    relative_l2,
)
from service.settings import ServiceSettings, activate, active, direct_route

HEALTH_ROUTES = {"/healthz", "/readyz"}
OPEN_ROUTES = HEALTH_ROUTES | {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
_SOLVE_REQUEST = TypeAdapter(SolveRequest)
_BATCH_REQUEST = TypeAdapter(BatchRequest)


def _error(status: int, loc: list[Any], msg: str) -> HTTPException:
    """An HTTP error in FastAPI's validation layout: {"detail": [{"loc", "msg", "type"}]}."""
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": f"http_{status}"}])


# ---------------------------------------------------------------------------------------
# Surrogate


#: A model ref, source(s) and unified coefficients: one problem, (n, n) and (6,), in the
#: ingress; k problems at one grid, (k, n, n) and (k, 6) float32, sent to the Surrogate.
Problems = tuple[str, np.ndarray, np.ndarray]


def _by_model_and_grid(items: list[Problems]) -> dict[tuple[str, int], list[int]]:
    """The indices of ``items`` per (model ref, grid n), in order."""
    groups: dict[tuple[str, int], list[int]] = {}
    for i, (ref, source, _) in enumerate(items):
        groups.setdefault((ref, source.shape[-1]), []).append(i)
    return groups


class _CallWindow:
    """Problems queue here and leave in calls of up to ``max_size``, at most ``window``
    calls in flight: when one returns, everything that queued meanwhile goes in the next.

    The Surrogate works through the samples of all calls in order, so one call waiting
    there keeps its streams busy while another travels; what arrives meanwhile waits here
    and travels together. While another call is out, a new one also waits up to ``hold_s``
    for ``max_size`` problems: the Surrogate has work, and fewer, larger calls cost less
    (at concurrency 32, waiting for 8 problems gave +2.6% req/s over five paired runs,
    waiting for max_size 218.6 and 219.4 against 196.1 and 218.2 in two; the idle CPU
    stayed at 0.01 cores). Serve's ``@serve.batch`` forms a batch before it waits for a
    free slot, so under load its calls held one to a few problems.
    """

    def __init__(
        self,
        send: Callable[[list[Problems]], Awaitable[list[np.ndarray]]],
        window: int,
        max_size: int,
        hold_s: float = 0.0,
    ):
        self._send = send
        self._window = self._free = window
        self._max_size = max_size
        self._hold_s = hold_s
        self._queue: collections.deque[tuple[Problems, asyncio.Future]] = collections.deque()
        self._calls: set[asyncio.Task] = set()
        self._held: asyncio.TimerHandle | None = None

    async def __call__(self, problem: Problems) -> np.ndarray:
        answer = asyncio.get_running_loop().create_future()
        self._queue.append((problem, answer))
        self._start_calls()
        return await answer

    def _start_calls(self, held_enough: bool = False) -> None:
        while self._free and self._queue:
            other_call_out = self._free < self._window
            if (
                self._hold_s
                and other_call_out
                and not held_enough
                and len(self._queue) < self._max_size
            ):
                if self._held is None:
                    loop = asyncio.get_running_loop()
                    self._held = loop.call_later(self._hold_s, self._hold_over)
                return
            if self._held is not None:
                self._held.cancel()
                self._held = None
            items = []
            while self._queue and len(items) < self._max_size:
                item = self._queue.popleft()
                if not item[1].done():  # a caller that timed out has cancelled its own
                    items.append(item)
            if not items:
                return
            self._free -= 1
            call = asyncio.create_task(self._call(items))
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    def _hold_over(self) -> None:
        self._held = None
        self._start_calls(held_enough=True)

    async def _call(self, items: list[tuple[Problems, asyncio.Future]]) -> None:
        try:
            results = await self._send([problem for problem, _ in items])
            for (_, answer), result in zip(items, results, strict=True):
                if not answer.done():  # a caller that timed out has cancelled its own
                    answer.set_result(result)
        except Exception as e:
            for _, answer in items:
                if not answer.done():
                    answer.set_exception(e)
        finally:
            self._free += 1
            self._start_calls()


@serve.deployment(name="Surrogate")
class Surrogate:
    """ONNX Runtime for published models. The ingress sends problems in batches; the
    samples of every call join one queue per model that the ORT streams work through
    (``OnnxSurrogate.submit``), so calls need no merging here and no stream waits for
    one to end."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.registry = Registry(settings.registry)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def model(self, ref: str) -> OnnxSurrogate:
        """A pinned ``name@version``: loaded once per replica, checksums verified."""
        card, files = await asyncio.to_thread(self.registry.read_files, ref)
        return OnnxSurrogate(card, files["model.onnx"], threads=self.settings.ort_threads)

    async def ready(self, ref: str) -> str:
        runner = await self.model(ref)
        return ",".join(runner.providers)

    async def predict(self, ref: str, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """k problems at one grid: (k, n, n), unified (k, 6) -> (k, n, n) float32."""
        runner = await self.model(ref)
        return await asyncio.wrap_future(runner.submit(sources, coefficients))


# ---------------------------------------------------------------------------------------
# Exact solver


@serve.deployment(name="ExactSolver")
class ExactSolver:
    async def solve(self, pde: str, source: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        return await asyncio.to_thread(exact_solve, pde, source, coefficients, mean="project")


# ---------------------------------------------------------------------------------------
# Ingress

api = FastAPI(
    title="pdeserve",
    version="0.1.0",
    description="Surrogate PDE solver: a pre-trained Fourier Neural Operator in ONNX Runtime, "
    "checked on request against an exact spectral solver.",
)


class _Guard:
    """ASGI middleware: API keys; the body size cap (413) on the declared length and on the
    bytes actually received (a chunked body has no Content-Length); and the direct routes
    (``_Direct``), answered here when their body validates."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        settings = active()
        if scope["type"] != "http" or settings is None:
            return await self.app(scope, receive, send)
        request = Request(scope)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return await _reject(413, ["body"], _too_large(settings), scope, receive, send)
        path = request.url.path
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


def _json(request: Request) -> bool:
    """Whether the body is declared JSON, as FastAPI requires to parse it as such."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0]
    return media_type.strip().lower() == "application/json"


@dataclass(frozen=True)
class _Direct:
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


@dataclass
class _Plan:
    """What is decided about one request before anything is computed."""

    source: np.ndarray  # float64 (n, n), mean projected where needed
    coefficients: np.ndarray  # unified (6,)
    mode: str  # surrogate | exact | validate: what will run
    loc: list[Any]  # where the request sits in the body, for errors
    warnings: list[str] = field(default_factory=list)
    card: ModelCard | None = None
    reason: str | None = None  # why the mode differs from the request's


class _Metrics:
    """Counters and a histogram exported with Ray Serve's Prometheus metrics."""

    def __init__(self):
        from ray.serve import metrics

        self.solves = metrics.Counter(
            "pdeserve_solves", "Solves answered, by pde and mode used", ("pde", "mode")
        )
        self.fallbacks = metrics.Counter(
            "pdeserve_fallbacks", "Surrogate requests answered exactly (envelope)", ("pde",)
        )
        self.validation = metrics.Histogram(
            "pdeserve_validation_relative_l2",
            "Relative L2 of the surrogate against the exact solver in validate mode",
            boundaries=[1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0],
            tag_keys=("pde",),
        )


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(
        self, surrogate: DeploymentHandle, exact: DeploymentHandle, settings: ServiceSettings
    ):
        self.surrogate = surrogate
        self.exact = exact
        self.settings = settings
        self.registry = Registry(settings.registry)
        self._cards: dict[str, tuple[float, ModelCard]] = {}
        self.metrics = _Metrics()
        # Concurrent requests reach the Surrogate together: one call per batch, not each.
        # Awaited with one problem (ref, source (n, n), coefficients (6,)).
        self._to_surrogate = _CallWindow(
            self._surrogate_calls,
            settings.surrogate_calls_in_flight * settings.surrogate_replicas,
            settings.max_batch_size,
            settings.call_hold_s,
        )
        activate(
            settings,
            direct={
                "/solve": _Direct(_SOLVE_REQUEST, self._solve),
                "/solve/batch": _Direct(_BATCH_REQUEST, self._solve_batch),
            },
        )

    # -- models --------------------------------------------------------------------------

    def card(self, ref: str | None, loc: list[Any]) -> ModelCard:
        """The card a reference names now; ``name`` / ``@latest`` re-resolved after a TTL."""
        ref = ref or self.settings.default_model
        now = time.monotonic()
        hit = self._cards.get(ref)
        pinned = "@" in ref and not ref.endswith("@latest")
        if hit and (pinned or now - hit[0] < self.settings.latest_ttl_s):
            return hit[1]
        try:
            card = self.registry.card(ref)
        except RegistryError as e:
            raise _error(404, loc, str(e)) from None
        self._cards[ref] = (now, card)
        return card

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict[str, str]:
        """Ready once the default model answers in a surrogate replica."""
        try:
            card = self.card(None, ["default_model"])
            providers = await self._call(
                self.surrogate.options(multiplexed_model_id=card.ref).ready.remote(card.ref)
            )
        except HTTPException as e:
            raise _error(503, ["default_model"], f"not ready: {e.detail[0]['msg']}") from None
        return {"status": "ready", "model": card.ref, "providers": providers}

    @api.get("/models")
    async def models(self) -> list[ModelCard]:
        """The newest card of every model in the registry."""
        return [self.registry.card(name) for name in self.registry.names()]

    @api.get("/models/{ref}")
    async def model(self, ref: str) -> ModelCard:
        """The card of ``name`` (newest) or ``name@version``."""
        return self.card(ref, ["path", "ref"])

    @api.post("/admin/reload")
    async def reload(self) -> dict[str, Any]:
        """Forget resolved references: new versions are served from the next request on."""
        self._cards.clear()
        names = self.registry.names()
        return {"models": {name: self.registry.versions(name) for name in names}}

    # -- solving -------------------------------------------------------------------------

    @api.post("/solve", response_model=SolveResponse, response_model_exclude_none=True)
    async def solve(
        self, request: Annotated[SolveRequestTypes, Body(discriminator="pde")]
    ) -> SolveResponse:
        """One problem. (Valid JSON bodies are answered by ``_Guard``, with ``_solve``.)"""
        return await self._solve(request)

    @api.post("/solve/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def solve_batch(self, batch: Annotated[BatchRequest, Body()]) -> BatchResponse:
        """Up to ``max_batch_items`` problems, in order. (As ``solve``, with ``_solve_batch``.)"""
        return await self._solve_batch(batch)

    async def _solve(self, request: SolveRequest) -> SolveResponse:
        plan = self._plan(request, ["body"])
        return await self._call(self._run(request, plan))

    async def _solve_batch(self, batch: BatchRequest) -> BatchResponse:
        if len(batch.items) > self.settings.max_batch_items:
            raise _error(
                413,
                ["body", "items"],
                f"{len(batch.items)} items; at most {self.settings.max_batch_items} per batch",
            )
        plans = [self._plan(item, ["body", "items", i]) for i, item in enumerate(batch.items)]
        runs = [self._run(item, plan) for item, plan in zip(batch.items, plans, strict=True)]
        return BatchResponse(items=await self._call(asyncio.gather(*runs)))

    def _plan(self, request: SolveRequest, loc: list[Any]) -> _Plan:
        """Everything decided before computing: source, mode, model, reasons, warnings."""
        system = get_system(request.pde)
        source = request.source_array()
        warnings: list[str] = []
        if system.zero_mean:
            mean = float(source.mean())
            if abs(mean) > MEAN_TOLERANCE * max(float(np.abs(source).max()), 1e-300):
                if request.nonzero_mean == "reject":
                    raise _error(
                        422,
                        [*loc, "source"],
                        f"{request.pde} needs a zero-mean source (the operator annihilates "
                        f"constants); this one has mean {mean:.4g}",
                    )
                source = source - mean
                warnings.append(f"subtracted the source's mean {mean:.4g} ({request.pde} needs 0)")
        coefficients = request.unified()
        plan = _Plan(source, coefficients, request.mode, loc, warnings)
        if request.mode == "exact":
            return plan
        card = self.card(request.model, [*loc, "model"])
        plan.card = card
        reasons = envelope_reasons(card, request.pde, source, coefficients)
        if reasons:
            why = "; ".join(reasons)
            if request.out_of_envelope == "reject":
                raise _error(422, [*loc, "coefficients"], f"outside the model's envelope: {why}")
            if request.out_of_envelope == "fallback":
                plan.mode = "exact"
                plan.reason = f"fell back to the exact solver: {why}"
            else:
                warnings.append(f"answered by the surrogate outside its envelope: {why}")
        return plan

    async def _run(self, request: SolveRequest, plan: _Plan) -> SolveResponse:
        pde, source, coefficients = request.pde, plan.source, plan.coefficients
        card = plan.card
        timings: dict[str, float] = {}

        async def timed(name: str, call: Awaitable[np.ndarray]) -> np.ndarray:
            t0 = time.perf_counter()
            result = await call
            timings[name] = 1e3 * (time.perf_counter() - t0)
            return result

        def surrogate():
            # float32 is what the model takes, and half the bytes to send
            problem = (card.ref, source.astype(np.float32), coefficients.astype(np.float32))
            return timed("surrogate", self._to_surrogate(problem))

        def exact():
            return timed("exact", self.exact.solve.remote(pde, source, coefficients))

        mode, validation = plan.mode, None
        if mode == "exact":
            solution = await exact()
            if plan.reason:
                self.metrics.fallbacks.inc(tags={"pde": pde})
        elif mode == "surrogate":
            solution = await surrogate()
        else:
            solution, reference = await asyncio.gather(surrogate(), exact())
            error = relative_l2(solution, reference)
            validation = Validation(
                relative_l2=error, exact_solution=encode_like(reference, request.source)
            )
            if error is not None:
                self.metrics.validation.observe(error, tags={"pde": pde})
            mode = "surrogate"
        self._check_output(solution, request, plan.loc)
        used = "exact" if mode == "exact" else "surrogate"
        self.metrics.solves.inc(tags={"pde": pde, "mode": used})
        return SolveResponse(
            pde=pde,
            n=source.shape[-1],
            solution=encode_like(solution, request.source),
            mode=used,
            reason=plan.reason,
            model=card.ref if card is not None and used == "surrogate" else None,
            validation=validation,
            warnings=plan.warnings,
            timings_ms=timings,
        )

    async def _surrogate_calls(self, problems: list[Problems]) -> list[np.ndarray]:
        """One Surrogate call per (model, grid) for problems that travel together."""
        groups = _by_model_and_grid(problems)
        calls = [
            self.surrogate.options(multiplexed_model_id=ref).predict.remote(
                ref,
                np.stack([problems[i][1] for i in index]),
                np.stack([problems[i][2] for i in index]),
            )
            for (ref, _grid), index in groups.items()
        ]
        out: list[np.ndarray | None] = [None] * len(problems)
        for index, solutions in zip(groups.values(), await asyncio.gather(*calls), strict=True):
            for i, solution in zip(index, solutions, strict=True):
                out[i] = solution
        return out

    @staticmethod
    def _check_output(solution: np.ndarray, request: SolveRequest, loc: list[Any]) -> None:
        """A 422, not a broken response, for solutions that overflow (near-singular problems)."""
        if not np.isfinite(solution).all():
            raise _error(422, [*loc, "coefficients"], "the problem is too close to singular")
        if getattr(request.source, "dtype", "") == "float32" and (
            np.abs(solution).max() > np.finfo(np.float32).max
        ):
            raise _error(
                422, [*loc, "source"], "the solution overflows float32; send a float64 source"
            )

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise _error(
                504, ["body"], f"no answer within {self.settings.request_timeout_s:g} s"
            ) from None
        except (RayActorError, ActorUnavailableError):
            # A replica died mid-request (Serve starts another): safe to retry, say so.
            error = _error(503, ["body"], "a solver replica restarted; retry the request")
            error.headers = {"Retry-After": "1"}
            raise error from None


def build_app(settings: ServiceSettings | None = None) -> serve.Application:
    """The whole application, bound with ``settings`` (defaults: ServiceSettings())."""
    s = settings or ServiceSettings()
    common = {
        "logging_config": {"enable_access_log": s.access_log},
        "health_check_period_s": s.health_check_period_s,
        "max_ongoing_requests": s.max_ongoing_requests,
    }
    surrogate = Surrogate.options(
        num_replicas=s.surrogate_replicas,
        ray_actor_options={"num_cpus": s.surrogate_cpus},
        **common,
    ).bind(s)
    exact = ExactSolver.options(
        num_replicas=s.exact_replicas, ray_actor_options={"num_cpus": s.exact_cpus}, **common
    ).bind()
    return Ingress.options(ray_actor_options={"num_cpus": s.ingress_cpus}, **common).bind(
        surrogate, exact, s
    )


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run service.app:app_builder key=value`` and ``serve deploy`` configs."""
    return build_app(ServiceSettings(**args))
