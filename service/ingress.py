"""The ingress deployment: the HTTP routes, the models' cards, and for each request a
:class:`~service.plan.Plan` (``service/plan.py``) that it carries out. Problems that
arrive together reach the Surrogate in one call per model and grid
(``service/batching.py``: a window of calls in flight, not ``@serve.batch``)."""

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import Body, HTTPException, Request
from fastapi.responses import PlainTextResponse, Response
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle

from datagen.resample import sample_coefficients
from datagen.solver import error_estimate
from modelstore.registry import ModelCard, Registry, RegistryError
from service import infer, v2, v2_routes
from service.batching import CallWindow, Problems, by_model_and_grid
from service.costs import GRIDS, SCALED, CostModel, calibrate_estimate
from service.edge import BATCH_REQUEST, SOLVE_REQUEST, Direct, api, reuse_freed_port
from service.errors import http_error
from service.exact import ExactAnswer, Solves
from service.metrics import NodeMetrics
from service.models import ModelHost, ModelReplicas
from service.plan import Answer, Plan, carry_out, plan_request, solver_key
from service.reload import ReloadSignal
from service.schema import (
    BatchRequest,
    BatchResponse,
    SolveRequest,
    SolveRequestTypes,
    SolveResponse,
    Validation,
    encode_like,
)
from service.settings import ServiceSettings, activate
from service.tasks import Shared

#: How long ``/readyz`` waits for readiness before it answers 503 with what it waits for.
READY_WAIT_S = 0.5
#: The key of the solvers' calibration among the ingress's shared tasks.
CALIBRATION = ("calibrate", "")


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
        self.mispredictions = metrics.Counter(
            "pdeserve_auto_mispredictions",
            "auto's predictions that proved wrong: 'error' where the surrogate was tried "
            "and its estimate missed the tolerance, 'cost' where the answer took over "
            "twice the predicted time",
            ("pde", "kind"),
        )


class _Solvers:
    """The ingress's solvers for one request's plan (:class:`service.plan.Solvers`),
    each call timed into ``timings``."""

    def __init__(self, ingress: "Ingress", timings: dict[str, float]):
        self.ingress, self.timings = ingress, timings

    async def _timed(self, name: str, call: Awaitable[Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return await call
        finally:
            self.timings[name] = 1e3 * (time.perf_counter() - t0)

    def surrogate(self, plan: Plan) -> Awaitable[np.ndarray]:
        # float32 is what the model takes, and half the bytes to send; coefficient fields
        # go as the model takes them, point values on its grid where that divides the
        # request's (the runner's own rule): at 512^2 on a 64^2 model, 100 KB, not 6 MB
        coefficients = plan.coefficients
        grid = plan.card.resolution
        if plan.fields and grid and grid < plan.n and plan.n % grid == 0:
            coefficients = sample_coefficients(coefficients, grid)
        problem = (
            plan.card.ref,
            plan.source.astype(np.float32),
            coefficients.astype(np.float32),
        )
        return self._timed("surrogate", self.ingress._to_surrogate(problem))

    async def exact(self, plan: Plan, initial_guess: np.ndarray | None = None) -> ExactAnswer:
        solve = self.ingress.solves.solve if self.ingress.solve_here(plan) else None
        args = (
            plan.pde,
            plan.source,
            plan.coefficients,
            plan.tolerance,
            plan.max_iterations,
            initial_guess,
            plan.deadline,
        )
        call = solve(*args) if solve else self.ingress.exact.solve.remote(*args)
        answer = await self._timed("refine" if initial_guess is not None else "exact", call)
        if solve:
            answer.solved_in = "ingress"
        if not answer.converged:
            raise http_error(422, [*plan.loc, "tolerance"], answer.message)
        return answer

    async def estimate(self, plan: Plan, solution: np.ndarray) -> float:
        # The request's coefficients are validated and their reference values known; a
        # surrogate answer (errors of 1e-3 and up) needs no double precision for it.
        args = (plan.pde, solution, plan.source, plan.coefficients)
        options = {
            "checked": True,
            "reference": plan.reference,
            "single": True,
            "scalar": plan.scalar,
        }
        if not plan.fields:  # two rfft2 and a division (~0.3 ms at 128^2): inline, as a
            t0 = time.perf_counter()  # thread hop would cost more than it spares
            value = error_estimate(*args, checked=True)
            self.timings["error_estimate"] = 1e3 * (time.perf_counter() - t0)
            return value
        call = asyncio.to_thread(functools.partial(error_estimate, *args, **options))
        return await self._timed("error_estimate", call)


def _app_name() -> str:
    """The Serve application this replica belongs to ("" outside a replica: a test's)."""
    try:
        return serve.get_replica_context().app_name
    except RayServeException:
        return ""


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(
        self,
        surrogate: DeploymentHandle | None,
        exact: DeploymentHandle,
        settings: ServiceSettings,
    ):
        reuse_freed_port()  # before Serve binds this replica's HTTP port
        self.exact = exact
        self.settings = settings
        self.registry = Registry(settings.registry)
        # The models run here unless they live in a deployment of their own.
        self.models: ModelHost | ModelReplicas = (
            ModelHost(self.registry, settings.ort_threads)
            if surrogate is None
            else ModelReplicas(surrogate)
        )
        self._cards: dict[str, tuple[float, ModelCard]] = {}
        self._published: tuple[float, list[ModelCard]] | None = None
        self._reloads = ReloadSignal(_app_name())  # /admin/reload on any replica
        self.metrics = _Metrics()
        self.node_metrics = NodeMetrics()  # GET /metrics
        self.costs = CostModel()
        self._shared = Shared()  # readiness and calibrations: see service/tasks.py
        # Short solves run here (one Krylov thread); the exact deployment takes the rest.
        self.solves = Solves(1, settings.exact_batch)
        # Awaited with one problem (ref, source (n, n), coefficients (6,)). Here, each joins
        # the model's streams at once; on the Surrogate deployment's replicas, concurrent
        # problems travel together: one call per batch, not each.
        self._to_surrogate = (
            self._surrogate_here
            if surrogate is None
            else CallWindow(
                self._surrogate_calls,
                settings.surrogate_calls_in_flight * settings.surrogate_replicas,
                settings.max_batch_size,
                settings.call_hold_s,
            )
        )
        activate(
            settings,
            direct={
                "/solve": Direct(SOLVE_REQUEST, self._solve),
                "/solve/batch": Direct(BATCH_REQUEST, self._solve_batch),
            },
        )

    def solve_here(self, plan: Plan) -> bool:
        """Whether this process solves the plan's exact problem itself, sparing the call to
        the exact deployment: an FFT solve always; a field solve predicted to take at most
        ``local_solve_ms`` while this process's Krylov thread is free."""
        if not plan.fields:
            return True
        limit = self.settings.local_solve_ms
        if limit <= 0 or self.solves.field_solves:
            return False
        ms = plan.decision.exact.ms if plan.decision is not None else None
        if ms is None:
            stats = plan.stats or {}
            key = solver_key(plan)
            its = self.costs.iterations(
                key, stats.get("law"), plan.kappa, plan.tolerance, plan.roughness
            )
            ms = self.costs.krylov_ms(plan.n, key, its)
        return ms is not None and ms <= limit

    # -- models --------------------------------------------------------------------------

    def card(self, ref: str | None, loc: list[Any]) -> ModelCard:
        """The card a reference names now; ``name`` / ``@latest`` re-resolved after a TTL."""
        ref = ref or self.settings.default_model
        self._forget_if_reloaded()
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

    def published(self) -> list[ModelCard]:
        """The newest card of every published model (routing's candidates), re-read after
        the TTL of ``@latest``; a name whose card cannot be read is left out."""
        self._forget_if_reloaded()
        now = time.monotonic()
        if self._published and now - self._published[0] < self.settings.latest_ttl_s:
            return self._published[1]
        cards = []
        for name in self.registry.names():
            with contextlib.suppress(HTTPException):  # a card that cannot be read: 404
                cards.append(self.card(name, ["model"]))
        self._published = (now, cards)
        return cards

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/readyz")
    async def readyz(self) -> dict[str, str]:
        """200 once the default model answers (here, or in a Surrogate replica) and auto's
        cost model is measured; until then, within about ``READY_WAIT_S``, 503 saying what
        it waits for. That work runs detached (``service/tasks.py``): a client that gives up stops
        none of it, and what failed is tried again at the next check."""
        try:
            card = self.card(None, ["default_model"])
        except HTTPException as e:
            raise http_error(503, ["default_model"], f"not ready: {e.detail[0]['msg']}") from None
        key = ("ready", card.ref)
        ready = self._shared.run(key, lambda: self._ready(card.ref), keep=False)
        try:
            providers, _ = await asyncio.wait_for(
                asyncio.gather(ready, self.calibrated(None)), READY_WAIT_S
            )
        except HTTPException as e:
            raise http_error(503, ["default_model"], f"not ready: {e.detail[0]['msg']}") from None
        except Exception as e:  # a time-out, or a replica's error: its type, never its text
            steps = {key: f"loading the default model {card.ref}"}
            steps[CALIBRATION] = "measuring the solvers' costs"
            if isinstance(e, asyncio.TimeoutError):
                pending = [w for k, w in steps.items() if not self._shared.succeeded(k)]
                what = " and ".join(pending) or "starting"
            else:
                failed = [w for k, w in steps.items() if self._shared.failed(k)]
                what = f"{' and '.join(failed) or 'starting'} failed ({type(e).__name__}); "
                what += "trying again"
            raise http_error(503, ["default_model"], f"not ready: {what}") from None
        return {"status": "ready", "model": card.ref, "providers": providers}

    @api.get("/metrics", response_class=PlainTextResponse)
    async def prometheus(self) -> Response:
        """Prometheus's text format: pdeserve's metrics (``ray_pdeserve_*``), Serve's and
        Ray's, as Ray exports them on the node this replica runs on (``service/metrics.py``);
        a request counts some seconds after its answer."""
        return await self.node_metrics.response()

    async def _ready(self, ref: str) -> str:
        """The default model loaded where it runs: its execution providers."""
        return await asyncio.wait_for(self.models.ready(ref), self.settings.request_timeout_s)

    def calibrated(self, card: ModelCard | None) -> Awaitable[None]:
        """auto's cost model, measured on this service's replicas once: the exact solver
        and the error estimate (``card`` None: at the first readiness check), a model's
        call (at the first auto request on fields that names it: it loads the model's
        fields graph, whose idle threads would slow a service that never needs it).
        Later answers refine both. Detached from the request that asks; a calibration
        that failed or was cancelled is started again by the next."""
        if card is None:
            return self._shared.run(CALIBRATION, self._calibrate_solver)
        return self._shared.run(("calibrate", card.ref), lambda: self._calibrate_model(card))

    async def _calibrate_solver(self) -> None:
        exact = self.exact.calibrate.remote(GRIDS)
        estimate = await asyncio.to_thread(calibrate_estimate, GRIDS)
        self.costs.load((await exact) | {"estimate": estimate})

    async def _calibrate_model(self, card: ModelCard) -> None:
        if "fields" in card.graphs:
            self.costs.load({"surrogate": await self.models.calibrate(card.ref, GRIDS)})

    @api.get("/models")
    async def models(self) -> list[ModelCard]:
        """The newest card of every model in the registry."""
        return [self.registry.card(name) for name in self.registry.names()]

    @api.get("/models/{ref}")
    async def model(self, ref: str) -> ModelCard:
        """The card of ``name`` (newest) or ``name@version``."""
        return self.card(ref, ["path", "ref"])

    def _forget_if_reloaded(self) -> None:
        if self._reloads.moved():
            self._cards.clear()
            self._published = None

    @api.post("/admin/reload")
    async def reload(self) -> dict[str, Any]:
        """Forget resolved references, here at once and on every other ingress replica
        within a second (service/reload.py): new versions are served from then on."""
        self._reloads.bump()
        self._cards.clear()
        self._published = None
        names = self.registry.names()
        return {"models": {name: self.registry.versions(name) for name in names}}

    # -- solving -------------------------------------------------------------------------

    @api.post("/solve", response_model=SolveResponse, response_model_exclude_none=True)
    async def solve(
        self, request: Annotated[SolveRequestTypes, Body(discriminator="pde")]
    ) -> SolveResponse:
        """One problem. (Valid JSON bodies are answered by ``_Guard``, with ``_solve``.)"""
        return await self._solve(request)

    @api.get("/v2")
    async def v2_metadata(self) -> dict[str, Any]:
        """The KServe v2 server metadata, and the model answering by default."""
        return {
            "name": "pdeserve",
            "version": api.version,
            "extensions": ["binary_tensor_data"],
            "default_model": self.settings.default_model,
        }

    @api.get("/v2/health/live")
    async def v2_live(self) -> Response:
        """200 while the ingress runs (as ``/healthz``)."""
        return Response()

    @api.get("/v2/health/ready")
    async def v2_ready(self) -> Response:
        """200 when ready, else 503 saying what it waits for (as ``/readyz``)."""
        await self.readyz()
        return Response()

    @api.get("/v2/models/{name}")
    async def v2_model(self, name: str) -> dict[str, Any]:
        """The model's v2 metadata: its versions, inputs and outputs."""
        card = v2_routes.known_card(self.card, self.registry.names, name)
        return v2_routes.model_metadata(name, self.registry.versions(card.name))

    @api.get("/v2/models/{name}/versions/{version}")
    async def v2_model_version(self, name: str, version: str) -> dict[str, Any]:
        """As ``/v2/models/{name}``, for one version of the model."""
        card = v2_routes.known_card(self.card, self.registry.names, name, version)
        return v2_routes.model_metadata(name, self.registry.versions(card.name))

    @api.get("/v2/models/{name}/ready")
    async def v2_model_ready(self, name: str) -> Response:
        """200 once the model (its newest version) is loaded where it runs; 404 for an
        unknown model, 400 while it loads or where it fails to."""
        return await self._v2_model_ready(name, None)

    @api.get("/v2/models/{name}/versions/{version}/ready")
    async def v2_model_version_ready(self, name: str, version: str) -> Response:
        """As ``/v2/models/{name}/ready``, for one version of the model."""
        return await self._v2_model_ready(name, version)

    async def _v2_model_ready(self, name: str, version: str | None) -> Response:
        card = v2_routes.known_card(self.card, self.registry.names, name, version)
        ready = self._shared.run(("ready", card.ref), lambda: self._ready(card.ref), keep=False)
        try:
            await asyncio.wait_for(ready, READY_WAIT_S)
        except Exception as e:  # a time-out, or a load's error: its type, never its text
            why = "loading" if isinstance(e, asyncio.TimeoutError) else type(e).__name__
            raise http_error(400, ["path", "name"], f"{card.ref} is not ready ({why})") from None
        return Response()

    @api.post("/v2/infer")
    async def v2_infer_routed(self, request: Request) -> Response:
        """As ``/v2/models/{name}/infer`` with no model named: each problem goes to the
        published model routing chooses (as ``/solve`` without ``model``); the ``model``
        output names it per problem."""
        return await self._infer(None, await request.body(), request.headers)

    @api.post("/v2/models/{name}/infer")
    async def v2_infer(self, name: str, request: Request) -> Response:
        """The KServe v2 inference protocol with binary tensors (``service/v2.py``): the
        same problems and answers as ``/solve`` and ``/solve/batch``, arrays as raw bytes."""
        return await self._infer(name, await request.body(), request.headers)

    @api.post("/v2/models/{name}/versions/{version}/infer")
    async def v2_infer_version(self, name: str, version: str, request: Request) -> Response:
        """As ``/v2/models/{name}/infer``, for one version of the model."""
        return await self._infer(f"{name}@{version}", await request.body(), request.headers)

    @api.post("/solve/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def solve_batch(self, batch: Annotated[BatchRequest, Body()]) -> BatchResponse:
        """Up to ``max_batch_items`` problems, in order. (As ``solve``, with ``_solve_batch``.)"""
        return await self._solve_batch(batch)

    async def _solve(self, request: SolveRequest) -> SolveResponse:
        deadline = time.time() + self.settings.request_timeout_s
        plan = await self._plan(request, ["body"], deadline)
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
            await self._plan(item, ["body", "items", i], deadline)
            for i, item in enumerate(batch.items)
        ]
        runs = [self._run(item, plan) for item, plan in zip(batch.items, plans, strict=True)]
        return BatchResponse(items=await self._call(asyncio.gather(*runs)))

    async def _infer(self, ref: str | None, body: bytes, headers: Mapping[str, str]) -> Response:
        if ref is not None:  # the URL's model, named as the URL does
            v2_routes.known_card(self.card, self.registry.names, *ref.split("@", 1))
        binary = headers.get(v2.HEADER_LENGTH.lower()) is not None
        try:
            body = v2.decompress(
                body, headers.get("content-encoding"), self.settings.max_body_bytes
            )
            header, tensors = v2.decode(body, headers.get(v2.HEADER_LENGTH.lower()), "inputs")
            items = v2.request_items(header, tensors, self.settings.max_batch_items)
            requested = v2.Requested.parse(header, binary)
        except v2.WireError as e:
            raise http_error(e.status, e.loc, str(e)) from None
        wire = tensors["source"].dtype
        requests = [infer.solve_request(item, ref, wire, i) for i, item in enumerate(items)]
        deadline = time.time() + self.settings.request_timeout_s
        plans = [
            await self._plan(r, ["body", "inputs", "source", i], deadline)
            for i, r in enumerate(requests)
        ]
        runs = [self._answer(r, p) for r, p in zip(requests, plans, strict=True)]
        answers = await self._call(asyncio.gather(*runs))
        outputs = infer.outputs(answers, wire, single=tensors["source"].ndim == 2)
        card = next((p.card for p, _, _ in answers if p.card is not None), None)
        name = (ref or (card.ref if card else self.settings.default_model)).split("@")[0]
        head = {"model_name": name, "id": header.get("id", "")}
        if card is not None:
            head["model_version"] = str(card.version)
        data, length = v2.encode(head, "outputs", *requested.select(outputs))
        if length is None:
            return Response(data, media_type="application/json")
        return Response(data, media_type=v2.CONTENT_TYPE, headers={v2.HEADER_LENGTH: str(length)})

    async def _plan(self, request: SolveRequest, loc: list[Any], deadline: float) -> Plan:
        if request.mode == "auto" and request.unified().ndim == 3:
            with contextlib.suppress(Exception):  # uncalibrated, auto answers exactly
                card = self.card(request.model, [*loc, "model"])
                await self._call(asyncio.gather(self.calibrated(None), self.calibrated(card)))
        candidates = self.published if self.settings.routing else None
        t0 = time.perf_counter()
        plan = plan_request(request, loc, self.card, deadline, self.costs, candidates)
        plan.planned_ms = 1e3 * (time.perf_counter() - t0)
        return plan

    async def _answer(
        self, request: SolveRequest, plan: Plan
    ) -> tuple[Plan, Answer, dict[str, float]]:
        timings: dict[str, float] = {"plan": plan.planned_ms}
        answer = await carry_out(plan, _Solvers(self, timings))
        self._check_output(answer.solution, request, plan.loc)
        self._record(plan, answer, timings)
        return plan, answer, timings

    async def _run(self, request: SolveRequest, plan: Plan) -> SolveResponse:
        _, answer, timings = await self._answer(request, plan)
        validation = None
        if answer.validated:
            validation = Validation(
                relative_l2=answer.validation_error,
                exact_solution=encode_like(answer.exact.solution, request.source),
            )
        return SolveResponse(
            pde=plan.pde,
            n=plan.n,
            solution=encode_like(answer.solution, request.source),
            mode=answer.mode,
            reason=answer.reason,
            model=plan.card.ref if answer.uses_model else None,
            routed=plan.routed if answer.uses_model else None,
            error_estimate=answer.estimate,
            solver=None if answer.exact is None else answer.exact.report(answer.refined),
            validation=validation,
            warnings=plan.warnings,
            timings_ms=timings,
        )

    def _record(self, plan: Plan, answer: Answer, timings: dict[str, float]) -> None:
        """Metrics, and what the answer teaches the cost model."""
        pde = plan.pde
        self.metrics.solves.inc(tags={"pde": pde, "mode": answer.mode})
        if plan.fallback:
            self.metrics.fallbacks.inc(tags={"pde": pde})
        if answer.validated and answer.validation_error is not None:
            self.metrics.validation.observe(answer.validation_error, tags={"pde": pde})
        if not plan.fields:
            return
        if "surrogate" in timings and "error_estimate" in timings:
            self.costs.observe_surrogate(
                plan.n, True, timings["surrogate"], timings["error_estimate"]
            )
        solved = answer.exact
        if solved is not None and not answer.refined and "exact" in timings:
            scaled = solved.method == "cg" and solved.preconditioner == "scaled"
            if scaled and plan.roughness is None:
                solver_key(plan)  # the roughness the scaled law takes
            self.costs.observe_solve(
                plan.n,
                SCALED if scaled else solved.method,
                (plan.stats or {}).get("law"),
                plan.kappa,
                plan.tolerance,
                solved.iterations,
                timings["exact"],
                plan.roughness,
            )
        decision = plan.decision
        if decision is None:
            return
        if answer.mispredicted:
            self.metrics.mispredictions.inc(tags={"pde": pde, "kind": answer.mispredicted})
        chosen = decision.surrogate if decision.first == "surrogate" else decision.exact
        spent = sum(v for k, v in timings.items() if k != "plan")  # as predicted: the solvers
        if chosen.ms is not None and spent > 2 * chosen.ms + 5:
            self.metrics.mispredictions.inc(tags={"pde": pde, "kind": "cost"})

    async def _surrogate_here(self, problem: Problems) -> np.ndarray:
        ref, source, coefficients = problem
        return (await self.models.predict(ref, source[None], coefficients[None]))[0]

    async def _surrogate_calls(self, problems: list[Problems]) -> list[np.ndarray]:
        """One Surrogate call per (model, grid) for problems that travel together."""
        groups = by_model_and_grid(problems)
        calls = [
            self.models.predict(
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
