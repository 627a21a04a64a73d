"""Where a trainer runs: its rank, device, and how it stores and reports checkpoints.

``LocalContext`` is one plain process (no Ray imported): checkpoints go to
``run_dir/checkpoints/latest`` and a rerun resumes from there. The Ray
context (``training.ray_train``) reports through ``ray.train.report``.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from training.checkpoint import replace_dir


@dataclass
class RunContext:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    #: Testing: where the fault-injection hook records that it fired (once per run).
    fault_marker: Path | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def latest_checkpoint(self) -> contextlib.AbstractContextManager[Path | None]:
        raise NotImplementedError

    def staging_dir(self) -> Path:
        """A fresh directory to write the next checkpoint into (main rank only)."""
        raise NotImplementedError

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        raise NotImplementedError


@dataclass
class LocalContext(RunContext):
    run_dir: Path = field(default_factory=lambda: Path("runs/local"))

    @property
    def latest(self) -> Path:
        return self.run_dir / "checkpoints" / "latest"

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        yield self.latest if (self.latest / "state.pt").exists() else None

    def staging_dir(self) -> Path:
        base = self.run_dir / "checkpoints"
        staging = base / ".staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        if checkpoint is not None:
            replace_dir(checkpoint, self.latest)
            # the run's metrics log, readable while it goes on
            history = self.latest / "metrics.jsonl"
            if history.exists():
                tmp = self.run_dir / ".metrics.jsonl.tmp"
                shutil.copyfile(history, tmp)
                tmp.replace(self.run_dir / "metrics.jsonl")


def default_device(use_gpu: bool) -> torch.device:
    if use_gpu:
        if not torch.cuda.is_available():
            raise ValueError("--gpu given but torch sees no CUDA device")
        return torch.device("cuda")
    return torch.device("cpu")
