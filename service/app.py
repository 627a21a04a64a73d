"""The Ray Serve application: an HTTP ingress, a surrogate deployment and an exact solver.

- ``Ingress`` (FastAPI): authentication and the body cap (``_Guard``), validation,
  then one :class:`~service.plan.Plan` per request (model, envelope, mode; decided in
  ``service/plan.py``), which it carries out; ``validate`` runs both solvers at once.
  Problems that arrive together reach the Surrogate in one call per model and grid
  (``service/batching.py``: a window of calls in flight, not ``@serve.batch``).
- ``Surrogate``: ONNX Runtime sessions, several models per replica
  (``@serve.multiplexed``); the samples of every call join one queue per model that
  the ORT streams work through. The ONNX graph is built for the model's grid, so
  requests at other grids are resampled spectrally to it and back.
- ``ExactSolver``: datagen's solver.

``build_app(settings)`` returns the application; ``app_builder(args)`` is the
same for ``serve run`` / ``serve deploy`` config files.
"""

import asyncio
import contextlib
import hmac
import os
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Body, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, TypeAdapter, ValidationError
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from datagen.solver import ConvergenceError, SolveTimeout, error_estimate, solve_detailed
from datagen.solver import solve as exact_solve
from service.batching import CallWindow, Problems, by_model_and_grid
from service.errors import http_error
from service.plan import Plan, auto_choice, plan_request
from service.registry import ONNX, ModelCard, Registry, RegistryError
from service.runner import OnnxSurrogate
from service.schema import (
    DEFAULT_TOLERANCE,
    BatchRequest,
    BatchResponse,
    SolveRequest,
    SolveRequestTypes,
    SolveResponse,
    SolverReport,
    Validation,
    encode_like,
    relative_l2,
)
from service.settings import ServiceSettings, activate, active, direct_route

HEALTH_ROUTES = {"/healthz", "/readyz"}
OPEN_ROUTES = HEALTH_ROUTES | {"/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
_SOLVE_REQUEST = TypeAdapter(SolveRequest)
_BATCH_REQUEST = TypeAdapter(BatchRequest)


# ---------------------------------------------------------------------------------------
# Surrogate


class LoadedModel:
    """A published model in one replica: its constant graph, and its fields graph once a
    field problem asks for it."""

    def __init__(self, card: ModelCard, files: dict[str, bytes], threads: int | None):
        self.card, self._files, self._threads = card, files, threads
        self.constant = OnnxSurrogate(card, files[card.graphs.get("constant", ONNX)], threads)
        self._fields: OnnxSurrogate | None = None

    def runner(self, fields: bool) -> OnnxSurrogate:
        if not fields:
            return self.constant
        if self._fields is None:
            name = self.card.graphs.get("fields")
            if name is None:  # the ingress checks the card first
                raise ValueError(f"{self.card.ref} has no graph for coefficient fields")
            self._fields = OnnxSurrogate(
                self.card, self._files[name], threads=self._threads, fields=True
            )
        return self._fields


@serve.deployment(name="Surrogate")
class Surrogate:
    """ONNX Runtime for published models. The ingress sends problems in batches; the
    samples of every call join one queue per graph that the ORT streams work through
    (``OnnxSurrogate.submit``), so calls need no merging here and no stream waits for
    one to end."""

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.registry = Registry(settings.registry)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def model(self, ref: str) -> LoadedModel:
        """A pinned ``name@version``: loaded once per replica, checksums verified."""
        card, files = await asyncio.to_thread(self.registry.read_files, ref)
        return LoadedModel(card, files, self.settings.ort_threads)

    async def ready(self, ref: str) -> str:
        loaded = await self.model(ref)
        return ",".join(loaded.constant.providers)

    async def predict(self, ref: str, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """k problems at one grid: (k, n, n), unified (k, 6) or fields (k, 6, n, n) ->
        (k, n, n) float32."""
        loaded = await self.model(ref)
        runner = loaded.runner(fields=coefficients.ndim == 4)
        return await asyncio.wrap_future(runner.submit(sources, coefficients))


# ---------------------------------------------------------------------------------------
# Exact solver


@dataclass
class ExactAnswer:
    """The exact solver's answer and how it got there (``message``: why it did not
    converge, where it did not)."""

    solution: np.ndarray
    method: str
    iterations: int
    relative_residual: float | None  # None for the FFT solve: exact to rounding
    converged: bool = True
    message: str | None = None

    def report(self, started_from_surrogate: bool) -> SolverReport:
        return SolverReport(
            method=self.method,
            iterations=self.iterations,
            relative_residual=self.relative_residual,
            initial_guess="surrogate" if started_from_surrogate else "zero",
        )


@dataclass
class FieldProblem:
    """One field problem for the exact replica's window."""

    pde: str
    source: np.ndarray
    coefficients: np.ndarray  # (6, n, n)
    tolerance: float
    max_iterations: int
    initial_guess: np.ndarray | None
    deadline: float | None  # time.time() at which the request's budget ends

    def group(self) -> tuple:
        """Problems solved together share these."""
        n = self.source.shape[-1]
        return (self.pde, n, self.tolerance, self.max_iterations, self.initial_guess is None)


#: The nice value of Krylov threads (Linux sets it per thread).
KRYLOV_NICE = 10


def _below_the_surrogate() -> None:
    """A Krylov thread runs at a lower CPU priority, so that field solves saturating their
    cores leave the surrogate's streams the CPU when those need it."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux: the default priority
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), KRYLOV_NICE)


@serve.deployment(name="ExactSolver")
class ExactSolver:
    """datagen's solver. Constant coefficients: the FFT solve, at once. Fields: batched
    Krylov in at most ``exact_concurrency`` threads below the surrogate's CPU priority;
    problems that arrive while those are busy are solved together (up to ``exact_batch``
    per solve), and each solve stops at its requests' deadline."""

    def __init__(self, settings: ServiceSettings):
        self._threads = ThreadPoolExecutor(
            settings.exact_concurrency, "krylov", initializer=_below_the_surrogate
        )
        self._window = CallWindow(
            self._solve_together, settings.exact_concurrency, settings.exact_batch
        )

    async def solve(
        self,
        pde: str,
        source: np.ndarray,
        coefficients: np.ndarray,
        tolerance: float = DEFAULT_TOLERANCE,
        max_iterations: int = 1000,
        initial_guess: np.ndarray | None = None,
        deadline: float | None = None,
    ) -> ExactAnswer:
        if coefficients.ndim == 1:  # the FFT solve: no queue, no iterations
            return await asyncio.to_thread(exact_answer, pde, source, coefficients)
        problem = FieldProblem(
            pde, source, coefficients, tolerance, max_iterations, initial_guess, deadline
        )
        return await self._window(problem)

    async def _solve_together(self, problems: list[FieldProblem]) -> list[ExactAnswer]:
        groups: dict[tuple, list[int]] = {}
        for i, problem in enumerate(problems):
            groups.setdefault(problem.group(), []).append(i)
        loop = asyncio.get_running_loop()
        solved = await asyncio.gather(
            *(
                loop.run_in_executor(self._threads, solve_fields, [problems[i] for i in index])
                for index in groups.values()
            )
        )
        out: list[ExactAnswer | None] = [None] * len(problems)
        for index, answers in zip(groups.values(), solved, strict=True):
            for i, answer in zip(index, answers, strict=True):
                out[i] = answer
        return out


def exact_answer(pde: str, source: np.ndarray, coefficients: np.ndarray) -> ExactAnswer:
    """A constant-coefficient problem through the FFT solve."""
    solution = exact_solve(pde, source, coefficients, mean="project")
    return ExactAnswer(solution, "fft", 0, None)


def solve_fields(problems: list[FieldProblem]) -> list[ExactAnswer]:
    """Field problems of one group in one batched solve; each answer says whether its
    problem converged, and if not why (iterations and residual, or the deadline)."""
    first = problems[0]
    guesses = [p.initial_guess for p in problems]
    deadlines = [p.deadline for p in problems if p.deadline is not None]
    try:
        out = solve_detailed(
            first.pde,
            np.stack([p.source for p in problems]),
            np.stack([p.coefficients for p in problems]),
            mean="project",
            tolerance=first.tolerance,
            max_iterations=first.max_iterations,
            initial_guess=None if guesses[0] is None else np.stack(guesses),
            deadline=max(deadlines) if len(deadlines) == len(problems) else None,
        )
        late = False
    except ConvergenceError as e:
        out, late = e.solution, isinstance(e, SolveTimeout)
    answers = []
    for i in range(len(problems)):
        method, its, res = out.method[i], int(out.iterations[i]), float(out.relative_residual[i])
        message = None
        if not out.converged[i]:
            reached = f"relative residual {res:.3g} after {its} iterations"
            message = (
                f"the time allowed ran out before the {method} solve converged ({reached})"
                if late
                else f"the {method} solver did not converge: {reached} (tolerance "
                f"{first.tolerance:g}); raise max_iterations or loosen the tolerance"
            )
        answers.append(
            ExactAnswer(out.solutions[i], method, its, res, bool(out.converged[i]), message)
        )
    return answers


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
        self._to_surrogate = CallWindow(
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
            raise http_error(404, loc, e.public) from None
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
            raise http_error(503, ["default_model"], f"not ready: {e.detail[0]['msg']}") from None
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
        deadline = time.time() + self.settings.request_timeout_s
        plan = plan_request(request, ["body"], self.card, deadline)
        return await self._call(self._run(request, plan))

    async def _solve_batch(self, batch: BatchRequest) -> BatchResponse:
        if len(batch.items) > self.settings.max_batch_items:
            raise http_error(
                413,
                ["body", "items"],
                f"{len(batch.items)} items; at most {self.settings.max_batch_items} per batch",
            )
        deadline = time.time() + self.settings.request_timeout_s
        plans = [
            plan_request(item, ["body", "items", i], self.card, deadline)
            for i, item in enumerate(batch.items)
        ]
        runs = [self._run(item, plan) for item, plan in zip(batch.items, plans, strict=True)]
        return BatchResponse(items=await self._call(asyncio.gather(*runs)))

    async def _run(self, request: SolveRequest, plan: Plan) -> SolveResponse:
        pde, source, coefficients = request.pde, plan.source, plan.coefficients
        card = plan.card
        timings: dict[str, float] = {}

        @contextlib.contextmanager
        def clock(name: str):
            t0 = time.perf_counter()
            yield
            timings[name] = 1e3 * (time.perf_counter() - t0)

        async def timed(name: str, call: Awaitable[Any]) -> Any:
            with clock(name):
                return await call

        def surrogate():
            # float32 is what the model takes, and half the bytes to send
            problem = (card.ref, source.astype(np.float32), coefficients.astype(np.float32))
            return timed("surrogate", self._to_surrogate(problem))

        async def exact(initial_guess: np.ndarray | None = None) -> ExactAnswer:
            call = self.exact.solve.remote(
                pde,
                source,
                coefficients,
                plan.tolerance,
                plan.max_iterations,
                initial_guess,
                plan.deadline,
            )
            answer = await timed("refine" if initial_guess is not None else "exact", call)
            if not answer.converged:
                raise http_error(422, [*plan.loc, "tolerance"], answer.message)
            return answer

        async def estimate(solution: np.ndarray) -> float:
            if not plan.fields:  # two rfft2 and a division (~0.3 ms at 128^2): inline, as a
                with clock("error_estimate"):  # thread hop would cost more than it spares
                    return error_estimate(pde, solution, source, coefficients)
            call = asyncio.to_thread(error_estimate, pde, solution, source, coefficients)
            return await timed("error_estimate", call)

        mode, reason, validation, answer, estimated = plan.mode, plan.reason, None, None, None
        if mode == "exact":
            answer = await exact()
            solution = answer.solution
            if plan.fallback:
                self.metrics.fallbacks.inc(tags={"pde": pde})
        elif mode == "surrogate":
            solution = await surrogate()
            estimated = await estimate(solution)
        elif mode == "validate":
            solution, answer = await asyncio.gather(surrogate(), exact())
            estimated = await estimate(solution)
            error = relative_l2(solution, answer.solution)
            validation = Validation(
                relative_l2=error, exact_solution=encode_like(answer.solution, request.source)
            )
            if error is not None:
                self.metrics.validation.observe(error, tags={"pde": pde})
            reason = (
                f"validate: solution is the surrogate's ({card.ref}), "
                "validation.exact_solution the exact solver's"
            )
        else:  # refine, or auto on fields: the surrogate first
            guess = await surrogate()
            if mode == "auto":
                estimated = await estimate(guess)
                mode, reason = auto_choice(estimated, plan.error_tolerance)
            if mode == "refine":
                answer = await exact(initial_guess=guess.astype(np.float64))
                solution = answer.solution
            else:
                solution = guess
        self._check_output(solution, request, plan.loc)
        self.metrics.solves.inc(tags={"pde": pde, "mode": mode})
        return SolveResponse(
            pde=pde,
            n=source.shape[-1],
            solution=encode_like(solution, request.source),
            mode=mode,
            reason=reason,
            model=card.ref if card is not None and mode != "exact" else None,
            error_estimate=estimated if mode in ("surrogate", "validate") else None,
            solver=None if answer is None else answer.report(mode == "refine"),
            validation=validation,
            warnings=plan.warnings,
            timings_ms=timings,
        )

    async def _surrogate_calls(self, problems: list[Problems]) -> list[np.ndarray]:
        """One Surrogate call per (model, grid) for problems that travel together."""
        groups = by_model_and_grid(problems)
        calls = [
            self.surrogate.options(multiplexed_model_id=ref).predict.remote(
                ref,
                np.stack([problems[i][1] for i in index]),
                np.stack([problems[i][2] for i in index]),
            )
            for (ref, _grid, _fields), index in groups.items()
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
            raise http_error(422, [*loc, "coefficients"], "the problem is too close to singular")
        if getattr(request.source, "dtype", "") == "float32" and (
            np.abs(solution).max() > np.finfo(np.float32).max
        ):
            raise http_error(
                422, [*loc, "source"], "the solution overflows float32; send a float64 source"
            )

    async def _call(self, awaitable: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(awaitable, self.settings.request_timeout_s)
        except asyncio.TimeoutError:
            raise http_error(
                504, ["body"], f"no answer within {self.settings.request_timeout_s:g} s"
            ) from None
        except (RayActorError, ActorUnavailableError):
            # A replica died mid-request (Serve starts another): safe to retry, say so.
            error = http_error(503, ["body"], "a solver replica restarted; retry the request")
            error.headers = {"Retry-After": "1"}
            raise error from None


def build_app(settings: ServiceSettings | None = None) -> serve.Application:
    """The whole application, bound with ``settings`` (defaults: ServiceSettings())."""
    s = settings or ServiceSettings()
    common = {
        "logging_config": {"enable_access_log": s.access_log},
        "health_check_period_s": s.health_check_period_s,
        "max_ongoing_requests": s.max_ongoing_requests,
        "graceful_shutdown_timeout_s": s.drain_timeout_s,
        "graceful_shutdown_wait_loop_s": 0.5,
    }
    surrogate = Surrogate.options(
        num_replicas=s.surrogate_replicas,
        ray_actor_options={"num_cpus": s.surrogate_cpus},
        **common,
    ).bind(s)
    scaling = (
        {"num_replicas": s.exact_replicas}
        if s.exact_autoscaling is None
        else {"autoscaling_config": s.exact_autoscaling.model_dump()}
    )
    exact = ExactSolver.options(
        ray_actor_options={"num_cpus": s.exact_cpus}, **scaling, **common
    ).bind(s)
    return Ingress.options(ray_actor_options={"num_cpus": s.ingress_cpus}, **common).bind(
        surrogate, exact, s
    )


def app_builder(args: dict[str, Any]) -> serve.Application:
    """For ``serve run service.app:app_builder key=value`` and ``serve deploy`` configs."""
    return build_app(ServiceSettings(**args))
