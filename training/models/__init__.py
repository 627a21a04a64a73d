"""Models composed from ``training.layers``; each records its arguments (``ModelBase``)."""

from training.models.base import ModelBase, build_model
from training.models.fno import FNO2d
from training.models.presets import MODEL_PRESETS, preset
from training.models.surrogate import PDESurrogate

__all__ = ["MODEL_PRESETS", "FNO2d", "ModelBase", "PDESurrogate", "build_model", "preset"]
