"""The surrogate deployment, where models live apart from the ingress
(``ServiceSettings.surrogate_deployment``: replicas of their own, scaled out, GPU nodes):
ONNX Runtime sessions of published models, several per replica (``@serve.multiplexed``),
running :mod:`service.models` as the ingress does itself by default. The samples of every
call join one queue per graph that the ORT streams work through; the ONNX graph is built
for the model's grid, so requests at other grids are resampled spectrally to it and back
(:mod:`modelstore.runner`)."""

import numpy as np
from ray import serve

from modelstore.registry import Registry
from service import models
from service.settings import ServiceSettings


@serve.deployment(name="Surrogate")
class Surrogate:
    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.registry = Registry(settings.registry)

    @serve.multiplexed(max_num_models_per_replica=4)
    async def model(self, ref: str) -> models.LoadedModel:
        """A pinned ``name@version``: loaded once per replica, checksums verified."""
        return await models.load(self.registry, ref, self.settings.ort_threads)

    async def ready(self, ref: str) -> str:
        return await models.ready(await self.model(ref))

    async def calibrate(self, ref: str, grids: tuple[int, ...]) -> dict[tuple[int, bool], float]:
        return await models.calibrate(await self.model(ref), grids)

    async def predict(self, ref: str, sources: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        return await models.predict(await self.model(ref), sources, coefficients)
