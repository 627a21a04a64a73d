"""Typed training configuration, shared by the CLI, the single-process trainer and the Ray job.

A config names its data either as files or as a datagen spec; a spec is
generated once and cached under ``data.cache_dir`` (keyed by the spec), so
every preset runs from a clean checkout with no other step.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from datagen.media import FIELD_KINDS
from datagen.spec import SPLITS, FieldLaw, SamplingRanges, SplitSpec
from datagen.systems import SYSTEMS
from training.data import PLACEMENTS
from training.layers.normalization import Layout
from training.models.presets import MODEL_PRESETS, preset

CONFIG_DIR = Path(__file__).parent / "configs"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldSpec(Strict):
    """Coefficient fields of a generated dataset (``pdeserve datagen --field``); ranges left
    out take datagen's defaults."""

    kind: Literal[FIELD_KINDS]  # type: ignore[valid-type]
    contrast: tuple[float, float] | None = None
    length: tuple[float, float] | None = None
    variation: tuple[float, float] | None = None
    tolerance: float | None = Field(None, gt=0, lt=1)

    def law(self) -> FieldLaw:
        given = {k: v for k, v in self.model_dump().items() if v is not None}
        return FieldLaw(**given)


class GenerateSpec(Strict):
    """A dataset made by datagen (see ``pdeserve datagen``)."""

    system: Literal[tuple(SYSTEMS)]  # type: ignore[valid-type]
    n_examples: int = Field(ge=1)
    split: Literal[SPLITS] = "train"  # type: ignore[valid-type]
    resolution: int = Field(128, ge=16)
    seed: int = Field(0, ge=0)
    eig: tuple[float, float] | None = None
    ratio: tuple[float, float] | None = None
    omega: tuple[int, int] | None = None
    field: FieldSpec | None = None

    @model_validator(mode="after")
    def _valid_law(self) -> GenerateSpec:
        if self.field is not None:
            try:
                self.field.law()
            except ValueError as e:
                raise ValueError(f"field: {e}") from None
        return self

    def split_spec(self) -> SplitSpec:
        given = {k: getattr(self, k) for k in ("eig", "ratio", "omega") if getattr(self, k)}
        return SplitSpec(
            system=self.system,
            n_examples=self.n_examples,
            split=self.split,
            resolution=self.resolution,
            seed=self.seed,
            ranges=SamplingRanges(**given),
            field_law=None if self.field is None else self.field.law(),
        )

    def key_fields(self) -> dict:
        """What identifies the data; constant-coefficient specs hash as before fields existed
        (their cached files and experiment points stay valid)."""
        fields = self.model_dump()
        if fields["field"] is None:
            del fields["field"]
        return fields

    def cache_name(self) -> str:
        key = hashlib.sha256(json.dumps(self.key_fields(), sort_keys=True).encode()).hexdigest()
        media = "" if self.field is None else f"-{self.field.kind}"
        return (
            f"{self.system}{media}-{self.split}-{self.n_examples}-r{self.resolution}-{key[:12]}.h5"
        )


class DataSource(Strict):
    """Files (either layout) or a datagen spec; ``subsample`` keeps the first N examples."""

    files: list[str] | None = None
    generate: GenerateSpec | None = None
    subsample: int | None = Field(None, ge=1)
    group: str | None = None  # label for per-group metrics; default: the system name

    @model_validator(mode="after")
    def _one_kind(self) -> DataSource:
        if (self.files is None) == (self.generate is None):
            raise ValueError("a data source names exactly one of 'files' or 'generate'")
        if self.files is not None and not self.files:
            raise ValueError("'files' is empty")
        if (
            self.generate is not None
            and self.subsample
            and self.subsample > self.generate.n_examples
        ):
            raise ValueError(f"subsample {self.subsample} > n_examples {self.generate.n_examples}")
        return self


class DataConfig(Strict):
    train: list[DataSource] = Field(min_length=1)
    val: list[DataSource] = Field(min_length=1)
    cache_dir: str = "data/cache"
    placement: Literal[PLACEMENTS] = "auto"  # type: ignore[valid-type]
    chunk_size: int = Field(256, ge=1)


class ModelConfig(Strict):
    """A preset, optionally with fields overridden, or every field given."""

    preset: str | None = None
    width: int | None = Field(None, ge=1)
    modes: int | None = Field(None, ge=1)
    n_layers: int = Field(4, ge=1)
    fc_dim: int = Field(128, ge=1)
    spectral: Literal["auto", "dft", "fft"] = "auto"
    # The input layout (training/layers/normalization.py): "values" (default@2 and
    # earlier), "physical" (log a, the tensor's shape, the physical unit).
    inputs: Layout = "values"
    # A model directory whose weights and references start this model, grown into its
    # input layout (training.trainer.warm_start: layout 1 -> 2 computes the same at first).
    warm_start: str | None = None
    # A model directory (card.json + weights.safetensors) whose architecture, weights and
    # normalisation start the run: fine-tuning. The fields above are then not used.
    init: str | None = None

    @model_validator(mode="after")
    def _complete(self) -> ModelConfig:
        if self.init is not None:
            return self
        if self.preset is not None and self.preset not in MODEL_PRESETS:
            raise ValueError(
                f"unknown model preset {self.preset!r}; known: {sorted(MODEL_PRESETS)}"
            )
        if self.preset is None and (self.width is None or self.modes is None):
            raise ValueError("give a model 'preset' or both 'width' and 'modes'")
        return self

    def constructor_args(self) -> dict:
        args = preset(self.preset) if self.preset else {}
        for key in ("width", "modes"):
            if getattr(self, key) is not None:
                args[key] = getattr(self, key)
        return {**args, "n_layers": self.n_layers, "fc_dim": self.fc_dim, "inputs": self.inputs}


#: Training losses (``OptimConfig.loss``).
Loss = Literal["mse", "relative_l2"]


class OptimConfig(Strict):
    """Adam with cosine decay from ``lr`` to ``lr * min_lr_ratio`` over all steps."""

    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)  # global: split across workers
    epochs: int = Field(ge=1)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    # mse: the paper's loss. relative_l2: the mean of the metric itself, which weighs every
    # example alike where a few solutions are far larger than the rest (SYS-2, Psi > 1).
    loss: Loss = "mse"


class FaultInjection(Strict):
    """Testing only: worker ``rank`` kills itself (SIGKILL) once, after ``after_epoch``."""

    rank: int = Field(1, ge=0)
    after_epoch: int = Field(1, ge=1)


class TrainConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    optim: OptimConfig
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    num_workers: int = Field(1, ge=1)
    max_failures: int = Field(2, ge=0)
    fault: FaultInjection | None = None


class ConfigError(ValueError):
    """A config file that is missing or does not validate; the message says where."""


def config_path(name_or_path: str | Path) -> Path:
    """A path, or the name of a preset under training/configs/."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"no config file at {path}")
        return path
    preset_path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not preset_path.exists():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(f"no config {name_or_path!r}; presets: {known}")
    return preset_path


def load_config(name_or_path: str | Path, **overrides) -> TrainConfig:
    path = config_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{path}: {e}") from None
