"""Fine-tune a published model on few examples, sweeping the learning rate (paper A.4).

    python -m training.finetune --base NAME[@VERSION] --train F --val F --test F \\
        --n-examples N [--lrs 1e-4,3e-4,1e-3,3e-3,1e-2] [--epochs E] [--num-workers W] \\
        [--gpu] [--publish NAME [--publish-registry DIR]] [--scratch] [--no-ray] \\
        [--address ADDR] [--out results.json]

1. The base model is evaluated zero-shot on the test set (its ONNX graph, as served).
2. Every learning rate is one training run on the first N training examples,
   started from the base model's weights and normalisation (``--scratch``: the same
   architecture from random initialisation, the paper's baseline). On Ray each run
   is a Ray Train job and Ray Tune runs the sweep; ``--no-ray`` runs them in turn.
3. The run with the lowest validation error wins; its test error per system goes in
   the results, and ``--publish`` puts it in the registry with the base as parent.

N = 0 evaluates zero-shot only.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from datagen.dataset import open_dataset
from datagen.ray_instance import ray_instance, stops_cleanly
from modelstore.registry import DEFAULT_REGISTRY, WEIGHTS, ModelCard, Registry, RegistryError
from training.checkpoint import load_model
from training.config import (
    DataConfig,
    DataSource,
    Loss,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from training.context import LocalContext, default_device
from training.export import export, test_metrics
from training.normalization import NormalizationStats
from training.prepare import PreparedData, prepare_data
from training.trainer import train

DEFAULT_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)
METRIC = "val_rel_l2/all"


class FinetuneConfig(BaseModel):
    """Everything a fine-tuning job needs; the CLI and the Ray job share it."""

    model_config = ConfigDict(extra="forbid")
    base: str | None = None  # NAME[@VERSION]: what TL starts from (scratch: its shape)
    model: str | None = None  # scratch without a base: a model preset (fno-64k, ...)
    registry: str = DEFAULT_REGISTRY
    train: str
    val: str
    test: str
    n_examples: int = Field(ge=0)
    lrs: list[float] = Field(default=list(DEFAULT_LRS), min_length=1)
    epochs: int = Field(default=30, ge=1)
    batch_size: int = Field(default=8, ge=1)
    num_workers: int = Field(default=1, ge=1)
    gpu: bool = False
    scratch: bool = False
    loss: Loss = "mse"
    use_ray: bool = True
    # Ray: None starts a private instance (in a Ray job: the job's cluster); "auto" or
    # HOST:PORT joins a running cluster.
    address: str | None = None
    publish: str | None = None
    # Where --publish writes (None: the base's registry). The bundled registry is a
    # tracked folder of the repository: publish a fine-tuned model elsewhere.
    publish_registry: str | None = None
    storage: str = "runs/finetune"
    seed: int = 0

    @field_validator("lrs")
    @classmethod
    def _positive(cls, lrs: list[float]) -> list[float]:
        if any(lr <= 0 for lr in lrs):
            raise ValueError(f"learning rates must be > 0, got {lrs}")
        return lrs

    @model_validator(mode="after")
    def _starting_point(self) -> FinetuneConfig:
        if not self.scratch and not self.base:
            raise ValueError("fine-tuning needs --base NAME[@VERSION]")
        if self.scratch and not (self.base or self.model):
            raise ValueError("--scratch needs --base (its architecture) or --model PRESET")
        if self.base and self.model:
            raise ValueError("give --base or --model, not both")
        return self


def materialize_base(config: FinetuneConfig, into: Path) -> ModelCard:
    """The base model's card and weights (checksums verified) as a model directory."""
    card, files = Registry(config.registry).read_files(config.base)
    if WEIGHTS not in files:
        raise RegistryError(f"{card.ref} was published without weights: it cannot be fine-tuned")
    into.mkdir(parents=True, exist_ok=True)
    (into / WEIGHTS).write_bytes(files[WEIGHTS])
    (into / "card.json").write_text(card.model_dump_json(indent=2, by_alias=True))
    return card


def check_examples(config: FinetuneConfig) -> int:
    """The number of training examples the file holds; N beyond it is an error."""
    with open_dataset(config.train) as reader:
        available = len(reader)
    if config.n_examples > available:
        raise ValueError(
            f"--n-examples {config.n_examples} but {config.train} holds {available} examples"
        )
    return available


def train_config(
    config: FinetuneConfig, base_dir: Path, card: ModelCard | None, lr: float
) -> TrainConfig:
    """One run of the sweep: TL from the base, or the same architecture from scratch."""
    if card is None:
        model = ModelConfig(preset=config.model)
    elif config.scratch:
        args = card.model.args
        model = ModelConfig(
            width=args["width"],
            modes=args["modes"],
            n_layers=args["n_layers"],
            fc_dim=args["fc_dim"],
        )
    else:
        model = ModelConfig(init=str(base_dir))
    world = config.num_workers
    batch = max(world, min(config.batch_size, config.n_examples) // world * world)
    return TrainConfig(
        name=f"{'scratch' if config.scratch else 'tl'}-n{config.n_examples}-lr{lr:g}",
        seed=config.seed,
        model=model,
        data=DataConfig(
            train=[DataSource(files=[config.train], subsample=config.n_examples)],
            val=[DataSource(files=[config.val])],
            chunk_size=max(1, min(64, config.n_examples)),
        ),
        optim=OptimConfig(lr=lr, batch_size=batch, epochs=config.epochs, loss=config.loss),
        num_workers=world,
    )


def prepared(config: TrainConfig, card: ModelCard | None, scratch: bool) -> PreparedData:
    """The data; TL keeps the base model's normalisation (its weights were trained on it)."""
    data = prepare_data(config.data, progress=False)
    if scratch or card is None:
        return data
    norm = card.normalization
    stats = NormalizationStats(
        source_ref=norm.source_ref,
        coefficient_ref=list(norm.coefficient_ref),
        solution_ref=norm.solution_ref,
    )
    return dataclasses.replace(data, stats=stats)


def test_errors(model_dir: Path, resolution: int, test: str) -> dict[str, float]:
    """Mean relative L2 of the model's ONNX graph on the test file: per system and overall."""
    import torch

    card = ModelCard.model_validate_json((model_dir / "card.json").read_text())
    # As many ONNX Runtime threads as torch has: parallel sweeps each get their share.
    metrics = test_metrics(load_model(model_dir), card, [Path(test)], torch.get_num_threads())
    return {key.removeprefix("test_rel_l2/"): value for key, value in metrics.items()}


def sweep_local(config: FinetuneConfig, runs: list[TrainConfig], data: PreparedData, root: Path):
    """Each learning rate in turn in this process; returns [(lr, best val, model dir)]."""
    device = default_device(config.gpu)
    out = []
    for run, lr in zip(runs, config.lrs, strict=True):
        run_dir = root / run.name
        context = LocalContext(device=device, run_dir=run_dir, fault_marker=run_dir / "fault")
        result = train(run, data, context, progress=False)
        out.append((lr, result.best_val, context.latest / "best"))
    return out


def sweep_ray(config: FinetuneConfig, runs: list[TrainConfig], data: PreparedData, root: Path):
    """Ray Tune over the learning rates, each trial a Ray Train job (TorchTrainer)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.ray_train import fit_on_ray

    by_lr = {lr: run for lr, run in zip(config.lrs, runs, strict=True)}
    storage = str(root.resolve())

    def trial(params: dict) -> None:
        run = by_lr[params["lr"]]
        result = fit_on_ray(
            run,
            data,
            num_workers=config.num_workers,
            use_gpu=config.gpu,
            storage=storage,
            run_name=run.name,
            progress=False,
            callbacks=[TuneReportCallback()],
        )
        if result.error is not None:
            raise result.error

    with ray_instance(config.address) as ray:
        # As many trials at once as the cluster holds Train workers for: a trial beyond
        # that waits for its workers and Ray Train calls the wait a start-up failure
        # (after 60 s, then retries), which fills the log with tracebacks.
        unit = "GPU" if config.gpu else "CPU"
        at_once = max(1, int(ray.cluster_resources().get(unit, 1)) // config.num_workers)
        tuner = tune.Tuner(
            tune.with_resources(trial, {"cpu": 0.01}),  # the trial only drives its Train job
            param_space={"lr": tune.grid_search(list(config.lrs))},
            tune_config=tune.TuneConfig(metric=METRIC, mode="min", max_concurrent_trials=at_once),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0),
        )
        grid = tuner.fit()
    out = []
    for result in grid:
        if result.error is not None:
            raise RuntimeError(f"trial {result.config} failed: {result.error}")
        history = result.metrics_dataframe
        best = float(history[METRIC].min())
        last = Path(str(history["checkpoint_path"].dropna().iloc[-1]))
        out.append((result.config["lr"], best, last / "best"))
    return sorted(out)


def run(config: FinetuneConfig) -> dict[str, Any]:
    """The whole job; returns the results (also what ``--out`` writes)."""
    check_examples(config)
    start = config.base or config.model
    root = Path(config.storage) / f"{start.replace('@', '-')}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True, exist_ok=True)
    base_dir = root / "base"
    card = materialize_base(config, base_dir) if config.base else None
    if card is not None:
        resolution = card.resolution
    else:
        with open_dataset(config.train) as reader:
            resolution = reader.resolution
    results: dict[str, Any] = {
        "base": card.ref if card else None,
        "model": config.model,
        "n_examples": config.n_examples,
        "scratch": config.scratch,
        "zero_shot": None if config.scratch else test_errors(base_dir, resolution, config.test),
    }
    if config.n_examples == 0:
        return results
    runs = [train_config(config, base_dir, card, lr) for lr in config.lrs]
    data = prepared(runs[0], card, config.scratch)
    sweep = sweep_ray if config.use_ray else sweep_local
    trials = sweep(config, runs, data, root)
    lr, best_val, best_dir = min(trials, key=lambda t: t[1])
    chosen = root / "chosen"
    shutil.copytree(best_dir, chosen)
    results.update(
        validation={f"{t[0]:g}": t[1] for t in trials},
        chosen_lr=lr,
        chosen_val=best_val,
        test=test_errors(chosen, resolution, config.test),
        model_dir=str(chosen),
    )
    if config.publish:
        parent = None if config.scratch or card is None else card.ref
        published = export(
            chosen,
            config.publish,
            config.publish_registry or config.registry,
            parent,
            [Path(config.test)],
        )
        results["published"] = published.ref
    return results


def parse_args(argv: list[str] | None) -> tuple[FinetuneConfig, str | None]:
    p = argparse.ArgumentParser(
        prog="python -m training.finetune", description=__doc__.split("\n")[0]
    )
    p.add_argument("--base", help="NAME[@VERSION] in the registry")
    p.add_argument("--model", help="with --scratch and no --base: a model preset")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--train", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--n-examples", type=int, required=True, help="first N training examples")
    p.add_argument("--lrs", default=",".join(f"{lr:g}" for lr in DEFAULT_LRS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--num-workers", type=int, default=1, help="Ray Train workers per trial")
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--scratch", action="store_true", help="random init (the baseline)")
    p.add_argument("--loss", choices=get_args(Loss), default="mse", help="training loss")
    p.add_argument("--no-ray", action="store_true", help="the sweep in this process")
    p.add_argument(
        "--address",
        help="Ray cluster to run on ('auto': the running one, or HOST:PORT); default: a "
        "private instance here, or the job's cluster when run by `ray job submit`",
    )
    p.add_argument("--publish", help="publish the chosen model under this name")
    p.add_argument(
        "--publish-registry",
        help="registry to publish to (folder or URL; default: --registry, the base's)",
    )
    p.add_argument("--storage", default="runs/finetune")
    p.add_argument("--out", help="write the results JSON here")
    args = p.parse_args(argv)
    config = FinetuneConfig(
        base=args.base,
        model=args.model,
        registry=args.registry,
        train=args.train,
        val=args.val,
        test=args.test,
        n_examples=args.n_examples,
        lrs=[float(x) for x in args.lrs.split(",") if x],
        epochs=args.epochs,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        gpu=args.gpu,
        scratch=args.scratch,
        loss=args.loss,
        use_ray=not args.no_ray,
        address=args.address,
        publish=args.publish,
        publish_registry=args.publish_registry,
        storage=args.storage,
    )
    return config, args.out


@stops_cleanly("training.finetune")
def main(argv: list[str] | None = None) -> int:
    try:
        config, out = parse_args(argv)
        results = run(config)
    except (ValueError, RegistryError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2)
    print(text)
    if out:
        tmp = Path(tempfile.mkstemp(dir=Path(out).parent or ".", suffix=".tmp")[1])
        tmp.write_text(text)
        tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
