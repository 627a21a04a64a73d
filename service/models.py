"""Published models at work in a process: ONNX Runtime sessions of the registry's models,
loaded once each, and what is asked of them (ready, calibrate, predict).

The ingress runs them itself by default (:class:`ModelHost`): a call to another replica
cost about 12 ms on a 2-core machine, twice the model's own 6 ms at 128^2, and ONNX
Runtime sessions are thread-safe. The Surrogate deployment (``service/surrogate.py``)
runs the same functions where models live apart (``surrogate_deployment``: replicas of
their own, scaled out, on GPU nodes).
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time

import numpy as np

from modelstore.registry import ModelCard, Registry
from modelstore.runner import OnnxSurrogate
from service.costs import calibration_problem
from service.tasks import Shared


class LoadedModel:
    """A published model in one process: a graph per kind of coefficients, each loaded when
    a problem first asks for it (a model that never sees fields keeps no fields graph's
    threads); a specialist may ship one kind only."""

    def __init__(self, card: ModelCard, files: dict[str, bytes], threads: int | None):
        self.card, self._files, self._threads = card, files, threads
        self._runners: dict[bool, OnnxSurrogate] = {}
        self._lock = threading.Lock()

    @property
    def first_kind(self) -> bool:
        """The graph a readiness check loads: the constant one, where the model has it."""
        return "constant" not in self.card.graphs

    def runner(self, fields: bool) -> OnnxSurrogate:
        with self._lock:
            if fields not in self._runners:
                kind = "fields" if fields else "constant"
                name = self.card.graphs.get(kind)
                if name is None:  # the ingress checks the card first
                    raise ValueError(f"{self.card.ref} has no graph for {kind} coefficients")
                self._runners[fields] = OnnxSurrogate(
                    self.card, self._files[name], threads=self._threads, fields=fields
                )
            return self._runners[fields]

    async def graph(self, fields: bool) -> OnnxSurrogate:
        """:meth:`runner`, its session made in a thread the first time (not on the event
        loop, which serves other requests meanwhile)."""
        hit = self._runners.get(fields)
        return hit if hit is not None else await asyncio.to_thread(self.runner, fields)


async def load(registry: Registry, ref: str, threads: int | None) -> LoadedModel:
    """A pinned ``name@version``, its checksums verified (read in a thread)."""
    card, files = await asyncio.to_thread(registry.read_files, ref)
    return LoadedModel(card, files, threads)


async def ready(loaded: LoadedModel) -> str:
    """Its first graph loaded: the execution providers, comma-separated."""
    return ",".join((await loaded.graph(loaded.first_kind)).providers)


async def calibrate(loaded: LoadedModel, grids: tuple[int, ...]) -> dict[tuple[int, bool], float]:
    """ms of one field problem through the model's fields graph per grid (the best of
    three, after one to warm up): auto's cost model starts from these."""
    runner = await loaded.graph(fields=True)
    out = {}
    for n in grids:
        source, coefficients = calibration_problem(n)
        args = (source[None].astype(np.float32), coefficients[None].astype(np.float32))
        times = []
        for _ in range(4):
            t0 = time.perf_counter()
            await asyncio.wrap_future(runner.submit(*args))
            times.append(1e3 * (time.perf_counter() - t0))
        out[(n, True)] = min(times[1:])
    return out


async def predict(loaded: LoadedModel, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
    """k problems at one grid: (k, n, n), unified (k, 6) or fields (k, 6, n, n) ->
    (k, n, n) float32. The samples join the graph's streams (``OnnxSurrogate.submit``)."""
    runner = await loaded.graph(fields=coefficients.ndim == 4)
    return await asyncio.wrap_future(runner.submit(sources, coefficients))


class ModelHost:
    """Models loaded in this process, at most ``max_models`` (the least recently used goes
    first); a model that several requests ask for at once is loaded once."""

    def __init__(self, registry: Registry, threads: int | None = None, max_models: int = 4):
        self.registry, self.threads, self.max_models = registry, threads, max_models
        self._loaded: collections.OrderedDict[str, LoadedModel] = collections.OrderedDict()
        self._loading = Shared()

    async def model(self, ref: str) -> LoadedModel:
        loaded = self._loaded.get(ref)
        if loaded is None:
            loaded = await self._loading.run(ref, lambda: load(self.registry, ref, self.threads))
            self._loaded[ref] = loaded
            while len(self._loaded) > self.max_models:
                gone, _ = self._loaded.popitem(last=False)
                self._loading.forget(gone)
        self._loaded.move_to_end(ref)
        return loaded

    async def ready(self, ref: str) -> str:
        return await ready(await self.model(ref))

    async def calibrate(self, ref: str, grids: tuple[int, ...]) -> dict[tuple[int, bool], float]:
        return await calibrate(await self.model(ref), grids)

    async def predict(self, ref: str, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        return await predict(await self.model(ref), sources, coefficients)


class ModelReplicas:
    """The same calls on the Surrogate deployment's replicas (``surrogate_deployment``),
    each routed to a replica that has the model loaded (Serve's model multiplexing)."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def _to(self, ref: str):
        return self.handle.options(multiplexed_model_id=ref)

    async def ready(self, ref: str) -> str:
        return await self._to(ref).ready.remote(ref)

    async def calibrate(self, ref: str, grids: tuple[int, ...]) -> dict[tuple[int, bool], float]:
        return await self._to(ref).calibrate.remote(ref, grids)

    async def predict(self, ref: str, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        return await self._to(ref).predict.remote(ref, sources, coefficients)
