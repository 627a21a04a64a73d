"""The surrogate deployment: ONNX Runtime sessions of published models, several per replica
(``@serve.multiplexed``); the samples of every call join one queue per graph that the
ORT streams work through. The ONNX graph is built for the model's grid, so requests at
other grids are resampled spectrally to it and back (:mod:`modelstore.runner`)."""

import asyncio
import time

import numpy as np
from ray import serve

from modelstore.registry import ModelCard, Registry
from modelstore.runner import OnnxSurrogate
from service.costs import calibration_problem
from service.settings import ServiceSettings


class LoadedModel:
    """A published model in one replica: a graph per kind of coefficients, each loaded when
    a problem first asks for it (a model that never sees fields keeps no fields graph's
    threads); a specialist may ship one kind only."""

    def __init__(self, card: ModelCard, files: dict[str, bytes], threads: int | None):
        self.card, self._files, self._threads = card, files, threads
        self._runners: dict[bool, OnnxSurrogate] = {}

    @property
    def first(self) -> OnnxSurrogate:
        """The graph a readiness check loads: the constant one, where the model has it."""
        return self.runner(fields="constant" not in self.card.graphs)

    def runner(self, fields: bool) -> OnnxSurrogate:
        if fields not in self._runners:
            kind = "fields" if fields else "constant"
            name = self.card.graphs.get(kind)
            if name is None:  # the ingress checks the card first
                raise ValueError(f"{self.card.ref} has no graph for {kind} coefficients")
            self._runners[fields] = OnnxSurrogate(
                self.card, self._files[name], threads=self._threads, fields=fields
            )
        return self._runners[fields]


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
        return ",".join(loaded.first.providers)

    async def calibrate(self, ref: str, grids: tuple[int, ...]) -> dict[tuple[int, bool], float]:
        """ms of one field problem through the model's fields graph per grid (the best of
        three, after one to warm up): auto's cost model starts from these."""
        loaded = await self.model(ref)
        runner = loaded.runner(fields=True)
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

    async def predict(self, ref: str, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """k problems at one grid: (k, n, n), unified (k, 6) or fields (k, 6, n, n) ->
        (k, n, n) float32."""
        loaded = await self.model(ref)
        runner = loaded.runner(fields=coefficients.ndim == 4)
        return await asyncio.wrap_future(runner.submit(sources, coefficients))
