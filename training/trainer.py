"""The trainer: Adam, cosine decay, MSE, per-epoch validation, best and latest checkpoints.

One function, ``train(config, data, context)``, serves the single process and
every Ray Train worker alike; the context says where it runs and how
checkpoints travel. A checkpoint directory holds ``state.pt`` (optimiser,
schedule, epoch, random states), ``best/`` (the best model so far, a model
directory) and ``metrics.jsonl`` (the history), so resuming restores all three.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from training.checkpoint import STATE, load_model, load_state, save_model, save_state
from training.config import OptimConfig, TrainConfig
from training.context import RunContext
from training.data import BatchLoader
from training.metrics import MetricsLog, read_log, relative_l2
from training.models.surrogate import N_COEFFICIENTS, PDESurrogate
from training.prepare import PreparedData

BEST = "best"
FAULT_DELAY_S = 5.0
HISTORY = "metrics.jsonl"


@dataclass
class TrainResult:
    history: list[dict]
    best_epoch: int
    best_val: float


def choose_spectral(config: TrainConfig, device: torch.device, modes: int | None = None) -> str:
    """The faster training path, as bench/train.py measured it (the export is always DFT).

    CPU: DFT-matmul for every preset. H100: rfft2 for m = 16 (fno-1m), DFT-matmul
    for m = 32 (fno-16m).
    """
    if config.model.spectral != "auto":
        return config.model.spectral
    modes = modes or config.model.constructor_args()["modes"]
    return "fft" if device.type == "cuda" and modes < 32 else "dft"


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    if config.precision == "bf16":
        return True
    if config.precision == "fp32":
        return False
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


def build_model(config: TrainConfig, data: PreparedData, device: torch.device) -> PDESurrogate:
    torch.manual_seed(config.seed)
    if config.model.init is not None:  # fine-tuning: the architecture and weights given
        model = load_model(config.model.init)
        if not isinstance(model, PDESurrogate):
            raise ValueError(f"{config.model.init} holds a {type(model).__name__}")
        modes = model.fno.blocks[0].spectral.modes
        model.set_spectral_path(choose_spectral(config, device, modes))
        return model.to(device)
    stats = data.stats.as_dict()
    source = None
    if config.model.warm_start is not None:
        source = load_model(config.model.warm_start)
        stats = warm_stats(stats, source.init_args)
    model = PDESurrogate(
        **config.model.constructor_args(), spectral=choose_spectral(config, device), **stats
    )
    if source is not None:
        warm_start(model, source)
    return model.to(device)


def warm_stats(stats: dict, source_args: dict) -> dict:
    """The references a warm-started model keeps from its source: the channels and the
    output they share were learnt in the source's units (the new channels' from the data),
    so the grown model starts computing exactly what the source did."""
    refs = list(stats["coefficient_ref"])
    # a model built without references has ones (PDESurrogate's default)
    shared = list(source_args["coefficient_ref"] or [1.0] * N_COEFFICIENTS)[: len(refs)]
    return stats | {
        "source_ref": source_args["source_ref"],
        "solution_ref": source_args["solution_ref"],
        "coefficient_ref": shared + refs[len(shared) :],
    }


def warm_start(model: torch.nn.Module, source: torch.nn.Module) -> list[str]:
    """Start ``model`` from ``source``'s parameters of the same names: equal shapes are
    copied; a parameter that grew (a lifting layer with more input channels, a head with
    more outputs) gets ``source``'s values in its leading block and zeros elsewhere, so
    ``model`` computes what ``source`` did where the new inputs and outputs are zero-
    weighted (layout 1 -> 2). Returns the names that grew; other shapes are an error."""
    theirs, grown = source.state_dict(), []
    with torch.no_grad():
        for name, mine in model.state_dict().items():
            if name not in theirs:
                raise ValueError(f"warm_start: the source model has no {name}")
            old = theirs[name]
            if old.shape == mine.shape:
                mine.copy_(old)
                continue
            if old.dim() != mine.dim() or any(
                a > b for a, b in zip(old.shape, mine.shape, strict=True)
            ):
                raise ValueError(
                    f"warm_start: {name} is {tuple(old.shape)} in the source and "
                    f"{tuple(mine.shape)} here: only growing is supported"
                )
            mine.zero_()
            mine[tuple(slice(0, n) for n in old.shape)] = old
            grown.append(name)
    return grown


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int, min_ratio: float):
    def factor(step: int) -> float:
        progress = min(step, total_steps) / max(1, total_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, loader: BatchLoader, groups: list[str], autocast: bool
) -> dict[str, float]:
    """Mean relative L2 per group and overall, summed across workers."""
    model.eval()
    sums = torch.zeros(2, len(groups) + 1, dtype=torch.float64, device=loader.device)
    for batch in loader.epoch(0):
        with torch.autocast(loader.device.type, dtype=torch.bfloat16, enabled=autocast):
            pred = model(batch.source, batch.model_coefficients())
        err = relative_l2(pred, batch.solution).double()
        sums[0, : len(groups)].index_add_(0, batch.group, err)
        sums[1, : len(groups)].index_add_(0, batch.group, torch.ones_like(err))
    sums[:, -1] = sums[:, :-1].sum(dim=1)
    sums = all_sum(sums).cpu()
    model.train()
    names = [*groups, "all"]
    return {
        f"val_rel_l2/{name}": float(s / c)
        for name, s, c in zip(names, sums[0], sums[1], strict=True)
        if c > 0
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def check_world(config: TrainConfig, data: PreparedData, world: int) -> None:
    """Fail before any worker starts if the data or the batch cannot be shared by ``world``."""
    if config.optim.batch_size % world:
        raise ValueError(
            f"batch_size {config.optim.batch_size} does not split over {world} workers"
        )
    shard = data.train.shard(0, world, config.data.chunk_size)
    if len(shard) < config.optim.batch_size // world:
        raise ValueError(
            f"each of {world} workers holds {len(shard)} training examples, "
            f"fewer than its batch of {config.optim.batch_size // world}"
        )
    data.val.eval_shard(0, world, config.data.chunk_size)


def validation_loader(
    config: TrainConfig, data: PreparedData, device: torch.device, rank: int = 0, world: int = 1
) -> BatchLoader:
    """This rank's share of the validation set, in order, every example once."""
    return BatchLoader(
        data.val.eval_shard(rank, world, config.data.chunk_size),
        config.optim.batch_size // world,
        device,
        shuffle=False,
        drop_last=False,
        placement=config.data.placement,
        chunk_size=config.data.chunk_size,
    )


def validate(config: TrainConfig, data: PreparedData, device: torch.device) -> dict[str, float]:
    """The validation errors of the model the run starts from, before any step (epoch 0),
    measured as every epoch's are: fine-tuning's base competes with its epochs on them."""
    model = build_model(config, data, device)
    loader = validation_loader(config, data, device)
    return evaluate(model, loader, data.train.groups, use_bf16(config, device))


def train(
    config: TrainConfig, data: PreparedData, context: RunContext, progress: bool = True
) -> TrainResult:
    device, rank, world = context.device, context.rank, context.world_size
    check_world(config, data, world)
    local_batch = config.optim.batch_size // world
    model = build_model(config, data, device)
    train_loader = BatchLoader(
        data.train.shard(rank, world, config.data.chunk_size),
        local_batch,
        device,
        seed=config.seed * 1_000_003 + rank,
        placement=config.data.placement,
        chunk_size=config.data.chunk_size,
    )
    val_loader = validation_loader(config, data, device, rank, world)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.optim.lr, weight_decay=config.optim.weight_decay
    )
    steps = len(train_loader)
    scheduler = cosine_schedule(optimizer, steps * config.optim.epochs, config.optim.min_lr_ratio)

    # The main rank keeps the best model so far in a scratch directory of its own;
    # each checkpoint carries a copy, so a resumed run starts from it again.
    scratch = Path(tempfile.mkdtemp(prefix="pdeserve-best-")) if context.is_main else None
    best_dir = scratch / BEST if scratch is not None else None
    run = _RunState(model, optimizer, scheduler)
    with context.latest_checkpoint() as ckpt:
        if ckpt is not None:
            run.resume(ckpt, device, best_dir)
    # Tiny activations early in training: ~10% on CPU. Only while training: the flag is the
    # process's (the FPU's), and whatever runs next in it expects IEEE subnormals.
    flush = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        return _epochs(config, data, context, run, train_loader, val_loader, best_dir, progress)
    finally:
        if flush:
            torch.set_flush_denormal(False)
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


@dataclass
class _RunState:
    """What a checkpoint restores: model, optimiser, schedule, progress and history."""

    model: PDESurrogate
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    start_epoch: int = 0
    best_val: float = math.inf
    best_epoch: int = -1
    history: list = field(default_factory=list)

    def resume(self, ckpt: Path, device: torch.device, best_dir: Path | None) -> None:
        state = load_state(ckpt / STATE, device)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _restore_rng(state["rng"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best_val, self.best_epoch = float(state["best_val"]), int(state["best_epoch"])
        self.history = read_log(ckpt / HISTORY)
        self.history.append(
            {"event": "resumed", "after_epoch": self.start_epoch, "time": time.time()}
        )
        if best_dir is not None and (ckpt / BEST).exists():
            shutil.copytree(ckpt / BEST, best_dir)

    def save(self, checkpoint: Path, epoch: int, best_dir: Path) -> None:
        shutil.copytree(best_dir, checkpoint / BEST)
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(),
            "epoch": epoch,
            "best_val": self.best_val,
            "best_epoch": self.best_epoch,
        }
        save_state(state, checkpoint / STATE)
        MetricsLog(checkpoint / HISTORY).write_all(self.history)


def training_loss(
    name: str, pred: torch.Tensor, target: torch.Tensor, solution_ref: torch.Tensor
) -> torch.Tensor:
    """``mse``: the paper's loss, in units of the solution reference; ``relative_l2``: the
    batch mean of the per-example metric."""
    if name == "relative_l2":
        return relative_l2(pred, target).mean()
    return torch.nn.functional.mse_loss(pred / solution_ref, target / solution_ref)


def _train_epoch(
    net: torch.nn.Module,
    run: _RunState,
    batches,
    solution_ref: torch.Tensor,
    bf16: bool,
    optim: OptimConfig,
) -> torch.Tensor:
    """One pass of optimiser steps; returns the sum of the batch losses."""
    net.train()
    grad_clip = optim.grad_clip
    loss_sum = torch.zeros((), device=solution_ref.device, dtype=torch.float64)
    for batch in batches:
        with torch.autocast(batch.source.device.type, dtype=torch.bfloat16, enabled=bf16):
            pred = net(batch.source, batch.model_coefficients())
        loss = training_loss(optim.loss, pred, batch.solution, solution_ref)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        loss_sum += loss.detach()
    batches.close()
    return loss_sum


def _epochs(
    config: TrainConfig,
    data: PreparedData,
    context: RunContext,
    run: _RunState,
    train_loader: BatchLoader,
    val_loader: BatchLoader,
    best_dir: Path | None,
    progress: bool,
) -> TrainResult:
    device, world = context.device, context.world_size
    model, scheduler = run.model, run.scheduler
    groups = data.train.groups
    bf16 = use_bf16(config, device)
    steps = len(train_loader)
    net: torch.nn.Module = model
    if world > 1:
        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    solution_ref = model.normalize.solution_ref
    card_meta = {"normalization": data.stats.as_dict(), "data": data.lineage, "run": config.name}

    for epoch in range(run.start_epoch, config.optim.epochs):
        t0 = time.perf_counter()
        bar = tqdm(
            train_loader.epoch(epoch),
            total=steps,
            desc=f"epoch {epoch + 1}/{config.optim.epochs}",
            disable=not (progress and context.is_main),
            mininterval=2,
            leave=False,
        )
        loss_sum = _train_epoch(net, run, bar, solution_ref, bf16, config.optim)
        train_time = time.perf_counter() - t0
        train_loss = float(all_sum(loss_sum.clone()) / (steps * world))
        val = evaluate(net, val_loader, groups, bf16)
        record = {
            "epoch": epoch + 1,
            f"train_{config.optim.loss}": train_loss,
            **val,
            "lr": scheduler.get_last_lr()[0],
            "train_samples_per_s": steps * config.optim.batch_size / train_time,
            "time": time.time(),
        }
        run.history.append(record)
        improved = val["val_rel_l2/all"] < run.best_val
        if improved:
            run.best_val, run.best_epoch = val["val_rel_l2/all"], epoch + 1
        checkpoint = None
        if context.is_main:
            if improved:
                save_model(model, best_dir, {**card_meta, "metrics": val, "epoch": epoch + 1})
            checkpoint = context.staging_dir()
            run.save(checkpoint, epoch, best_dir)
        if context.is_main:
            shown = " ".join(f"{k.split('/')[-1]}={v:.4f}" for k, v in val.items())
            loss = f"train_{config.optim.loss}={train_loss:.4g}"
            where = f"{config.name} epoch {epoch + 1}/{config.optim.epochs}"
            print(f"{where}: {loss} val rel L2 {shown}", flush=True)
        context.report(record, checkpoint)
        _maybe_fail(config, context.rank, epoch + 1, context)
    return TrainResult(run.history, run.best_epoch, run.best_val)


def _maybe_fail(config: TrainConfig, rank: int, epoch: int, context: RunContext) -> None:
    """Testing hook: the named rank dies by SIGKILL once, after the named epoch's checkpoint."""
    fault = config.fault
    if fault is None or fault.rank != rank or fault.after_epoch != epoch:
        return
    marker = context.fault_marker
    if marker is None or marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"killed rank {rank} after epoch {epoch} (pid {os.getpid()})\n")
    # A real failure comes mid-epoch, long after the last report; smoke epochs take a
    # fraction of a second, so let the Ray controller register that report first.
    time.sleep(FAULT_DELAY_S)
    os.kill(os.getpid(), signal.SIGKILL)
