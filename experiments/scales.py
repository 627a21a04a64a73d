"""How big every run of an experiment is: ``Scale``, and the named scales in scales.yaml."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Scale(Strict):
    """How big every run of an experiment is; ``small`` fits 2 CPUs, ``paper`` is the paper."""

    name: str
    resolution: int
    model: str  # the preset of every experiment but model-scaling
    ladder: list[str]  # model-scaling's presets
    pretrain_examples: int = Field(ge=1)  # per system
    pretrain_val: int = Field(ge=1)
    pretrain_epochs: int = Field(ge=1)
    pretrain_lr: float
    pretrain_batch: int
    n_examples: list[int]  # downstream N, TL and scratch
    scratch_extra: list[int]  # larger N for scratch only: its curve must reach TL's errors
    n_val: int
    n_test: int
    lrs: list[float]
    batch_size: int
    epochs: int  # at least this many epochs per fine-tuning run...
    min_steps: int  # ...and at least this many optimiser steps...
    max_epochs: int  # ...but never more epochs than this
    use_ray: bool
    num_workers: int = 1
    # Per experiment, fields that differ (fewer N where an experiment has many panels).
    overrides: dict[str, dict[str, Any]] = {}
    # Examples in each downstream training file (N takes its first N); 0: the largest N.
    # Points are shared between experiments, so all draw on the same file.
    train_pool: int = Field(0, ge=0)

    def for_experiment(self, name: str) -> Scale:
        if not self.overrides.get(name):
            return self
        # Fewer N, same downstream file: a point means the same data in every experiment.
        keep = {"train_pool": self.train_pool or self.largest_n}
        return Scale.model_validate(self.model_dump() | self.overrides[name] | keep)

    def sweep_key(self, n: int) -> str:
        """What a point's sweep depends on beyond its curve, N and downstream task."""
        fields = {
            "resolution": self.resolution,
            "lrs": self.lrs,
            "batch_size": self.batch_size,
            "epochs": self.epochs_for(n),
            "n_val": self.n_val,
            "n_test": self.n_test,
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:8]

    def steps_per_epoch(self, n: int) -> int:
        return max(1, n // min(self.batch_size, n)) if n else 0

    def epochs_for(self, n: int) -> int:
        """Few examples make short epochs: give them enough steps to converge (N = 0: none)."""
        if n == 0:
            return 0
        steps = self.steps_per_epoch(n)
        return min(self.max_epochs, max(self.epochs, math.ceil(self.min_steps / steps)))

    def sweep_steps(self, n: int) -> int:
        """Optimiser steps of a point's whole sweep: what orders the work of parallel jobs."""
        return self.epochs_for(n) * self.steps_per_epoch(n) * len(self.lrs)

    @property
    def largest_n(self) -> int:
        return max(self.n_examples + self.scratch_extra)


SCALES_FILE = Path(__file__).with_name("scales.yaml")


def load_scales(path: Path = SCALES_FILE) -> dict[str, Scale]:
    """The named scales: ``small`` fits 2 CPUs, ``gpu`` a few minutes of one GPU, ``smoke``
    the tests, ``paper`` the paper."""
    raw = yaml.safe_load(path.read_text())
    return {name: Scale.model_validate({"name": name, **fields}) for name, fields in raw.items()}


SCALES = load_scales()
