"""Fine-tune a published model on few examples, sweeping the learning rate (paper A.4).

    python -m training.finetune --base NAME[@VERSION] --train F --val F --test F \\
        --n-examples N [--lrs 1e-4,3e-4,1e-3,3e-3,1e-2] [--epochs E] [--num-workers W] \\
        [--gpu] [--publish NAME [--publish-registry DIR] [--publish-anyway]] [--scratch] \\
        [--no-ray] [--address ADDR] [--out results.json]

1. The base model is evaluated zero-shot on the test set (its ONNX graph, as served)
   and on the validation set (as every epoch is: "epoch 0").
2. Every learning rate is one training run (a trial) on the first N training examples,
   started from the base model's weights and normalisation (``--scratch``: the same
   architecture from random initialisation, the paper's baseline). On Ray each run
   is a Ray Train job and Ray Tune runs the sweep; ``--no-ray`` runs them in turn.
   Each trial keeps the weights of its best epoch (lowest validation error).
3. The lowest validation error wins, over every trial's best epoch and the base's
   epoch 0; its test error per system goes in the results, and ``--publish`` puts a
   fine-tuned winner in the registry with the base as parent. When no epoch beats the
   base, the summary says so and nothing is published unless ``--publish-anyway``
   (which publishes the best fine-tuned model, said to be worse than its base).

N = 0 evaluates zero-shot only.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import re
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
from training.trainer import train, validate

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
    # --publish when no fine-tuned epoch beats the base: publish the best fine-tuned model
    # all the same (its card says it is worse than its base); without it, nothing is.
    publish_anyway: bool = False
    # Whether the base's zero-shot validation error competes with the trials' epochs
    # ("epoch 0"). The paper's experiments turn it off: their TL curves are of fine-tuned
    # models, whatever the base scores.
    base_candidate: bool = True
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
        if self.publish_anyway and not self.publish:
            raise ValueError("--publish-anyway goes with --publish NAME")
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
        unit_ref=norm.unit_ref,
    )
    return dataclasses.replace(data, stats=stats)


def test_errors(model_dir: Path, resolution: int, test: str) -> dict[str, float]:
    """Mean relative L2 of the model's ONNX graph on the test file: per system and overall."""
    import torch

    card = ModelCard.model_validate_json((model_dir / "card.json").read_text())
    # As many ONNX Runtime threads as torch has: parallel sweeps each get their share.
    metrics = test_metrics(load_model(model_dir), card, [Path(test)], torch.get_num_threads())
    return {key.removeprefix("test_rel_l2/"): value for key, value in metrics.items()}


@dataclasses.dataclass(frozen=True)
class Trial:
    """One learning rate's run: its best epoch, whose weights ``model_dir`` holds."""

    lr: float
    best_epoch: int  # 1-based: epoch 0 is the base, before any step
    best_val: float
    epochs: int
    seconds: float
    model_dir: Path

    def summary(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "best_epoch": self.best_epoch,
            "best_val": self.best_val,
            "epochs": self.epochs,
            "seconds": round(self.seconds, 1),
        }


def sweep_local(
    config: FinetuneConfig, runs: list[TrainConfig], data: PreparedData, root: Path
) -> list[Trial]:
    """Each learning rate in turn in this process."""
    device = default_device(config.gpu)
    out = []
    for run, lr in zip(runs, config.lrs, strict=True):
        run_dir = root / run.name
        context = LocalContext(device=device, run_dir=run_dir, fault_marker=run_dir / "fault")
        t0 = time.perf_counter()
        result = train(run, data, context, progress=False)
        seconds = time.perf_counter() - t0
        best = context.latest / "best"  # the trainer keeps the best epoch's weights there
        epochs = sum(1 for record in result.history if "epoch" in record)
        out.append(Trial(lr, result.best_epoch, result.best_val, epochs, seconds, best))
    return out


#: What a Tune trial reserves for itself: it only drives its Ray Train job, whose
#: controller takes no CPU and whose workers reserve their own. A CPU share, however
#: small, would leave a 2-CPU node short of the second trial's worker (2 x 1.01 > 2),
#: which then waits until Ray Train calls the wait a start-up failure (after 60 s) and
#: fills the log with tracebacks. Tune needs some resource: a token of memory.
TRIAL_RESOURCES = {"memory": 1024**2}


#: The trainer's epoch line (``NAME epoch E/N: ...``). Ray folds alike lines of different
#: processes into one ("[repeated 2x across cluster]"), alike meaning equal once every word
#: with a digit is dropped: to it every epoch line of every trial is alike.
EPOCH_LINE = r"\bepoch \d+/\d+: "


def unfold_epoch_lines() -> None:
    """Ray's log deduplication in this process (it prints the trials' lines) lets epoch
    lines through, as ``RAY_DEDUP_LOGS_ALLOW_REGEX`` would have had it been set before Ray
    was imported. Ray's other repeated lines stay folded."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray._private import ray_logging

        for dedup in (ray_logging.stdout_deduplicator, ray_logging.stderr_deduplicator):
            allow = dedup.allow_re
            if allow is None or EPOCH_LINE not in allow.pattern:
                pattern = EPOCH_LINE if allow is None else f"{allow.pattern}|{EPOCH_LINE}"
                dedup.allow_re = re.compile(pattern)


def quiet_trial_exit() -> None:
    """A trial's process, stopped by Tune once its function returned, ends quietly: Ray's
    SIGTERM handler raises SystemExit wherever the process is, and inside a weakref
    callback Python prints that as 'Exception ignored ... Traceback' (nine lines in a
    finished job's log). Other unraisable exceptions are reported as before."""

    def hook(unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, SystemExit):
            sys.__unraisablehook__(unraisable)

    sys.unraisablehook = hook


def trials_at_once(resources: dict[str, float], num_workers: int, gpu: bool) -> int:
    """As many trials at once as the cluster holds Train workers for (each worker takes a
    CPU, and a GPU with ``gpu``): one more would wait for its workers (see
    ``TRIAL_RESOURCES``)."""
    units = ("CPU", "GPU") if gpu else ("CPU",)
    workers = min(int(resources.get(unit, 0)) for unit in units)
    return max(1, workers // num_workers)


def sweep_ray(
    config: FinetuneConfig, runs: list[TrainConfig], data: PreparedData, root: Path
) -> list[Trial]:
    """Ray Tune over the learning rates, each trial a Ray Train job (TorchTrainer)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from training.ray_train import fit_on_ray

    by_lr = {lr: run for lr, run in zip(config.lrs, runs, strict=True)}
    storage = str(root.resolve())

    def trial(params: dict) -> None:
        quiet_trial_exit()
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
        unfold_epoch_lines()
        at_once = trials_at_once(ray.cluster_resources(), config.num_workers, config.gpu)
        tuner = tune.Tuner(
            tune.with_resources(trial, TRIAL_RESOURCES),
            param_space={"lr": tune.grid_search(list(config.lrs))},
            tune_config=tune.TuneConfig(metric=METRIC, mode="min", max_concurrent_trials=at_once),
            run_config=tune.RunConfig(name="sweep", storage_path=storage, verbose=0),
        )
        grid = tuner.fit()
    return [tune_trial(result) for result in grid]


def tune_trial(result: Any) -> Trial:
    """A Tune trial's result as a ``Trial``: its reports are the epochs' records."""
    if result.error is not None:
        raise RuntimeError(f"trial {result.config} failed: {result.error}")
    history = result.metrics_dataframe
    best = history.loc[history[METRIC].idxmin()]
    # Every checkpoint carries the best model so far: the last one's is the trial's best.
    last = Path(str(history["checkpoint_path"].dropna().iloc[-1]))
    return Trial(
        lr=result.config["lr"],
        best_epoch=int(best["epoch"]),
        best_val=float(best[METRIC]),
        epochs=int(history["epoch"].max()),
        seconds=float(history["time_total_s"].iloc[-1]),  # Tune's: since the trial began
        model_dir=last / "best",
    )


@dataclasses.dataclass(frozen=True)
class Choice:
    """What the sweep hands over: ``trial`` (None: the base, epoch 0, beat every epoch),
    beside the best fine-tuned trial and the base's zero-shot validation error."""

    trial: Trial | None
    best_trial: Trial
    zero_shot_val: float | None

    @property
    def val(self) -> float:
        return self.zero_shot_val if self.trial is None else self.trial.best_val

    def summary(self) -> dict[str, Any]:
        if self.trial is None:
            return {"model": "base", "lr": None, "epoch": 0, "val": self.zero_shot_val}
        return {
            "model": "fine-tuned",
            "lr": self.trial.lr,
            "epoch": self.trial.best_epoch,
            "val": self.trial.best_val,
        }


def choose(trials: list[Trial], zero_shot_val: float | None) -> Choice:
    """The lowest validation error over every trial's best epoch and, where given, the
    base's (epoch 0; it wins a tie: fine-tuning that does not improve keeps the base)."""
    best = min(trials, key=lambda t: t.best_val)
    base_wins = zero_shot_val is not None and zero_shot_val <= best.best_val
    return Choice(None if base_wins else best, best, zero_shot_val)


def summary_lines(config: FinetuneConfig, trials: list[Trial], choice: Choice) -> list[str]:
    """The sweep as a user reads it at the end: a row per trial, then the choice."""
    rows = [f"{'trial':<8}{'lr':>8}  {'best epoch':>10}  {'best val':>9}  {'time':>8}"]
    if choice.zero_shot_val is not None:
        rows.append(f"{'base':<8}{'-':>8}  {'0':>10}  {choice.zero_shot_val:>9.4f}  {'-':>8}")
    for i, t in enumerate(trials, 1):
        epoch = f"{t.best_epoch}/{t.epochs}"
        rows.append(f"{i:<8}{t.lr:>8g}  {epoch:>10}  {t.best_val:>9.4f}  {t.seconds:>7.0f}s")
    best = choice.best_trial
    if choice.trial is None:
        rows.append(
            f"chosen: the base (zero-shot validation error {choice.zero_shot_val:.4f}): no "
            f"fine-tuned epoch beat it (the best, lr {best.lr:g} epoch {best.best_epoch}, "
            f"reached {best.best_val:.4f})"
        )
    else:
        rows.append(
            f"chosen: lr {best.lr:g}, epoch {best.best_epoch}: validation error "
            f"{best.best_val:.4f}" + _against_base(choice)
        )
    return [f"{config.base or config.model}: {METRIC} per trial", *rows]


def _against_base(choice: Choice) -> str:
    if choice.zero_shot_val is None:
        return ""
    return f" (the base's, zero-shot: {choice.zero_shot_val:.4f})"


def zero_shot_validation(config: FinetuneConfig, run: TrainConfig, data: PreparedData) -> float:
    """The base's validation error, measured as the trials' epochs are (epoch 0)."""
    return validate(run, data, default_device(config.gpu))[METRIC]


def finetune_lineage(
    config: FinetuneConfig, card: ModelCard | None, trials: list[Trial], choice: Choice
) -> dict[str, Any]:
    """The card's ``lineage.finetune`` for the best fine-tuned model (the one published):
    its trial and epoch, its validation error beside the base's (``zero_shot_val``, None
    from scratch) and every trial's summary."""
    best = choice.best_trial
    return {
        "base": card.ref if card else None,
        "scratch": config.scratch,
        "n_examples": config.n_examples,
        "metric": METRIC,
        "lr": best.lr,
        "epoch": best.best_epoch,
        "val": best.best_val,
        "zero_shot_val": choice.zero_shot_val,
        "beats_base": choice.trial is not None,
        "trials": [t.summary() for t in trials],
    }


def annotate_card(model_dir: Path, lineage: dict[str, Any], zero_shot: dict | None) -> None:
    """Record the fine-tuning in the model directory's card before it is published:
    ``lineage.finetune``, and the base's errors among the metrics (``zero_shot/`` keys:
    validation, and test per system)."""
    path = model_dir / "card.json"
    card = ModelCard.model_validate_json(path.read_text())
    metrics = dict(card.metrics)
    if lineage["zero_shot_val"] is not None:
        metrics[f"zero_shot/{METRIC}"] = lineage["zero_shot_val"]
    for system, error in (zero_shot or {}).items():
        metrics[f"zero_shot/test_rel_l2/{system}"] = error
    updated = card.model_copy(
        update={"lineage": {**card.lineage, "finetune": lineage}, "metrics": metrics}
    )
    path.write_text(updated.model_dump_json(indent=2, by_alias=True))


def publish(
    config: FinetuneConfig,
    card: ModelCard | None,
    trials: list[Trial],
    choice: Choice,
    zero_shot: dict | None,
    root: Path,
) -> str | None:
    """``--publish``: the chosen fine-tuned model, or with ``--publish-anyway`` the best
    fine-tuned one where the base won; None (and a line that says why) where nothing is."""
    best = choice.best_trial
    notes = None
    if choice.trial is None:
        if not config.publish_anyway:
            print(
                f"nothing published: no fine-tuned model beat the base ({best.best_val:.4f} "
                f"against {choice.zero_shot_val:.4f}); --publish-anyway publishes it all the same"
            )
            return None
        notes = (
            f"Worse than its base on the fine-tuning validation set ({METRIC} "
            f"{best.best_val:.4f} against the base's {choice.zero_shot_val:.4f}, zero-shot): "
            "published with --publish-anyway."
        )
    model_dir = root / "published"
    shutil.copytree(best.model_dir, model_dir)
    annotate_card(model_dir, finetune_lineage(config, card, trials, choice), zero_shot)
    parent = None if config.scratch or card is None else card.ref
    registry = config.publish_registry or config.registry
    published = export(model_dir, config.publish, registry, parent, [Path(config.test)], notes)
    if notes:
        print(f"{published.ref} is worse than its base {parent}: {notes}")
    return published.ref


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
    zero_shot = None if config.scratch else test_errors(base_dir, resolution, config.test)
    results: dict[str, Any] = {
        "base": card.ref if card else None,
        "model": config.model,
        "n_examples": config.n_examples,
        "scratch": config.scratch,
        "zero_shot": zero_shot,
    }
    if config.n_examples == 0:
        return results
    runs = [train_config(config, base_dir, card, lr) for lr in config.lrs]
    data = prepared(runs[0], card, config.scratch)
    compete = config.base_candidate and not config.scratch
    zero_shot_val = zero_shot_validation(config, runs[0], data) if compete else None
    sweep = sweep_ray if config.use_ray else sweep_local
    trials = sorted(sweep(config, runs, data, root), key=lambda t: t.lr)
    choice = choose(trials, zero_shot_val)
    print("\n".join(summary_lines(config, trials, choice)), flush=True)
    chosen = base_dir if choice.trial is None else root / "chosen"
    if choice.trial is not None:
        shutil.copytree(choice.trial.model_dir, chosen)
    results.update(
        validation={f"{t.lr:g}": t.best_val for t in trials},
        zero_shot_val=zero_shot_val,
        trials=[t.summary() for t in trials],
        chosen=choice.summary(),
        chosen_lr=choice.trial.lr if choice.trial else None,
        chosen_val=choice.val,
        test=zero_shot if choice.trial is None else test_errors(chosen, resolution, config.test),
        model_dir=str(chosen),
    )
    if config.publish:
        results["published"] = publish(config, card, trials, choice, zero_shot, root)
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
        "--publish-anyway",
        action="store_true",
        help="with --publish: where no fine-tuned model beat the base, publish the best "
        "fine-tuned one all the same (its card says it is worse)",
    )
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
        publish_anyway=args.publish_anyway,
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
