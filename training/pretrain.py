"""Pre-train the FNO: ``python -m training.pretrain --config NAME_OR_PATH [options]``.

Runs as a Ray Train job (``--num-workers`` workers, CPU or ``--gpu``) or, with
``--no-ray``, as one plain process that imports nothing from Ray. Either way
the run directory ``STORAGE/RUN`` ends up holding ``model/`` (the best model by
validation error: ``weights.safetensors`` + ``card.json``) and
``metrics.jsonl`` (one line per epoch). A rerun with the same ``--run-name``
resumes from the last checkpoint.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import get_args

from datagen.ray_instance import ray_instance, stops_cleanly
from training.checkpoint import replace_dir
from training.config import ConfigError, Loss, TrainConfig, load_config
from training.context import LocalContext, default_device
from training.layers.normalization import Layout
from training.metrics import MetricsLog, read_log
from training.plots import plot_metrics
from training.prepare import prepare_data
from training.trainer import BEST, HISTORY, check_world, train

DEFAULT_STORAGE = "runs"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.pretrain", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--config", required=True, help="preset name (training/configs/NAME.yaml) or path"
    )
    p.add_argument("--num-workers", type=int, help="Ray Train workers (default: the config's)")
    p.add_argument("--gpu", action="store_true", help="one GPU per worker (NCCL)")
    p.add_argument(
        "--storage", default=DEFAULT_STORAGE, help="run root: a path or a URL Ray can write"
    )
    p.add_argument("--run-name", help="default: CONFIG-TIMESTAMP; an existing run resumes")
    p.add_argument("--no-ray", action="store_true", help="one plain process, no Ray imported")
    p.add_argument(
        "--address",
        help="Ray cluster to train on ('auto': the running one, or HOST:PORT); default: a "
        "private instance here, or the job's cluster when run by `ray job submit`",
    )
    p.add_argument("--epochs", type=int, help="override optim.epochs")
    p.add_argument("--loss", choices=get_args(Loss), help="override optim.loss")
    p.add_argument("--model", help="override the model preset (fno-64k, fno-1m, fno-16m, fno-256m)")
    p.add_argument("--spectral", choices=("auto", "dft", "fft"), help="override model.spectral")
    p.add_argument(
        "--init", help="start from this model directory (RUN/model): its architecture, weights "
        "and normalisation (model.init)",
    )  # fmt: skip
    p.add_argument(
        "--warm-start", help="start from this model directory's weights and references, "
        "grown into the config's input layout (model.warm_start: layout 1 -> 2 exactly)",
    )  # fmt: skip
    p.add_argument("--inputs", choices=get_args(Layout), help="override model.inputs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


def _model_dir(option: str, given: str) -> str:
    """An absolute model directory (Ray workers run elsewhere), checked to hold a card."""
    path = Path(given).expanduser().resolve()
    if not (path / "card.json").is_file():
        raise ValueError(f"{option} {given}: no model directory (card.json) there")
    return str(path)


def _with_overrides(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    update = {}
    optim = {
        key: getattr(args, key) for key in ("epochs", "loss") if getattr(args, key) is not None
    }
    if optim:
        update["optim"] = config.optim.model_copy(update=optim)
    model = {}
    if args.model is not None:
        model["preset"] = args.model
    if args.spectral is not None:
        model["spectral"] = args.spectral
    if args.inputs is not None:
        model["inputs"] = args.inputs
    if args.init is not None:
        model["init"] = _model_dir("--init", args.init)
    warm = args.warm_start or config.model.warm_start
    if warm is not None:
        model["warm_start"] = _model_dir("--warm-start" if args.warm_start else "warm_start", warm)
    if model:
        update["model"] = config.model.model_copy(update=model)
    if args.num_workers is not None:
        update["num_workers"] = args.num_workers
    return TrainConfig.model_validate({**config.model_dump(), **update}) if update else config


def run(args: argparse.Namespace) -> Path | str:
    config = _with_overrides(load_config(args.config), args)
    run_name = args.run_name or f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return pretrain(
        config,
        run_name,
        storage=args.storage,
        use_ray=not args.no_ray,
        gpu=args.gpu,
        address=args.address,
        progress=not args.quiet,
    )


def pretrain(
    config: TrainConfig,
    run_name: str,
    storage: str = DEFAULT_STORAGE,
    use_ray: bool = True,
    gpu: bool = False,
    address: str | None = None,
    progress: bool = True,
) -> Path | str:
    """Train ``config`` into ``STORAGE/RUN_NAME``; returns the model directory (or URL).

    ``use_ray=False`` trains in this process; otherwise a Ray Train job on the cluster at
    ``address`` (or one started here). A rerun with the same run name resumes.
    """
    data = prepare_data(config.data, progress=progress, layout=config.model.inputs)
    check_world(config, data, config.num_workers if use_ray else 1)
    if not use_ray:
        if "://" in storage:
            raise ValueError("--no-ray writes to a local --storage path")
        run_dir = Path(storage).expanduser() / run_name
        context = LocalContext(
            device=default_device(gpu),
            run_dir=run_dir,
            fault_marker=run_dir / "fault-injected",
        )
        result = train(config, data, context, progress=progress)
        _finish(run_dir, context.latest)
        print(f"best val rel L2 {result.best_val:.4f} at epoch {result.best_epoch}")
        return run_dir / "model"
    return _run_ray(config, data, storage, gpu, address, run_name, progress)


def _run_ray(
    config: TrainConfig,
    data,
    storage: str,
    gpu: bool,
    address: str | None,
    run_name: str,
    progress: bool,
) -> Path | str:
    from training.ray_train import fit_on_ray

    storage = storage if "://" in storage else str(Path(storage).resolve())
    with ray_instance(address):
        result = fit_on_ray(
            config,
            data,
            num_workers=config.num_workers,
            use_gpu=gpu,
            storage=storage,
            run_name=run_name,
            progress=progress,
        )
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}") from result.error
    with result.checkpoint.as_directory() as ckpt:
        if "://" in storage:
            return publish_remote(Path(ckpt), storage, run_name)
        run_dir = Path(storage) / run_name
        _finish(run_dir, Path(ckpt))
    return run_dir / "model"


def publish_remote(checkpoint: Path, storage: str, run_name: str) -> str:
    """Copy the best model and the metrics log to STORAGE/RUN on any pyarrow filesystem URL."""
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(storage)
    run_dir = f"{root.rstrip('/')}/{run_name}"
    fs.create_dir(f"{run_dir}/model", recursive=True)
    pafs.copy_files(str(checkpoint / BEST), f"{run_dir}/model", destination_filesystem=fs)
    with fs.open_output_stream(f"{run_dir}/{HISTORY}") as out:
        out.write((checkpoint / HISTORY).read_bytes())
    url = f"{storage.rstrip('/')}/{run_name}/model"
    print(f"model: {url}")
    return url


def _finish(run_dir: Path, checkpoint: Path) -> None:
    """Copy the best model and the metrics history out of the last checkpoint."""
    run_dir.mkdir(parents=True, exist_ok=True)
    staging = run_dir / ".model.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(checkpoint / BEST, staging)
    replace_dir(staging, run_dir / "model")
    MetricsLog(run_dir / HISTORY).write_all(read_log(checkpoint / HISTORY))
    plot_metrics(run_dir / HISTORY, run_dir / "curves.png", title=run_dir.name)
    print(f"model: {run_dir / 'model'}")


@stops_cleanly("training.pretrain")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
