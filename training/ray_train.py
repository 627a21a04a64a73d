"""Pre-training as a Ray Train ``TorchTrainer`` job (DDP; gloo on CPU, NCCL on GPU).

Each worker runs ``training.trainer.train`` on its shard; the main rank
reports a checkpoint every epoch through ``ray.train.report``. A failed
worker (up to ``max_failures`` times) restarts the group, which resumes from
the last reported checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.train
import ray.train.torch
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig

from training.config import TrainConfig
from training.context import RunContext
from training.prepare import PreparedData
from training.trainer import train

#: Ray Train sends a worker's ``print`` to its logger as well as to the worker's stdout
#: (replaced by Ray's log file: not ``sys.__stdout__``), and Ray forwards both: every epoch
#: line came twice. Off, it is printed once. Read by Ray Train where ``fit`` is called and
#: passed on to its controller and workers.
PRINT_PATCH = "RAY_TRAIN_ENABLE_PRINT_PATCH"


@dataclass
class RayContext(RunContext):
    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as directory:
            yield Path(directory)

    def staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="pdeserve-ckpt-"))

    def report(self, metrics: dict, checkpoint: Path | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(str(checkpoint)) if checkpoint else None
        # Ray copies the directory into storage and removes the local one after upload.
        ray.train.report(metrics, checkpoint=ckpt, delete_local_checkpoint_after_upload=True)


def _quiet_train_console() -> None:
    """Ray Train's per-report lines (checkpoint created, reporting result N) stay in its
    log files, off the console: an epoch is the trainer's one line."""
    for handler in logging.getLogger("ray.train").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.WARNING)


def _worker_loop(payload: dict) -> None:
    _quiet_train_console()
    context = ray.train.get_context()
    run = RayContext(
        device=ray.train.torch.get_device(),
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        fault_marker=Path(payload["fault_marker"]),
    )
    train(payload["config"], payload["data"], run, progress=payload["progress"])


def fault_marker(storage: str, run_name: str) -> Path:
    """Local path the fault-injection hook writes (tests run with local storage)."""
    if "://" in storage:
        return Path(tempfile.gettempdir()) / f"pdeserve-{run_name}-fault-injected"
    return Path(storage).expanduser().resolve() / run_name / "fault-injected"


def fit_on_ray(
    config: TrainConfig,
    data: PreparedData,
    *,
    num_workers: int,
    use_gpu: bool,
    storage: str,
    run_name: str,
    progress: bool = True,
    callbacks: list | None = None,
) -> ray.train.Result:
    """Run the job; returns Ray's result (its ``checkpoint`` is the last one reported)."""
    os.environ.setdefault(PRINT_PATCH, "0")
    marker = fault_marker(storage, run_name)
    trainer = ray.train.torch.TorchTrainer(
        _worker_loop,
        train_loop_config={
            "config": config,
            "data": data,
            "progress": progress,
            "fault_marker": str(marker),
        },
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=run_name,
            storage_path=storage,
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )
    return trainer.fit()
