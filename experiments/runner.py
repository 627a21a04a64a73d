"""Runs an experiment: data, pre-trained bases and points, each made once under ``--out``
(resumable), in this process, in worker processes (``--jobs``) or on Ray."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stdout
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from tqdm import tqdm

from datagen.ray_instance import ray_instance
from experiments.analysis import savings
from experiments.catalogue import DOWNSTREAM_SEED, EXPERIMENTS, PRETRAIN_SEED, Curve, Panel, Task
from experiments.scales import Scale
from modelstore.registry import Registry, RegistryError
from training.config import (
    DataConfig,
    DataSource,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from training.finetune import FinetuneConfig
from training.finetune import run as finetune
from training.prepare import generated_file

# --- running -------------------------------------------------------------------------


def merge_sweeps(a: dict, b: dict) -> dict:
    """Two points of one N over disjoint learning rates as one sweep: the lower validation wins.

    Every trial is picked on validation alone, so this is the point the joint sweep gives.
    """
    best = a if a["chosen_val"] <= b["chosen_val"] else b
    return {
        **best,
        "validation": {**a["validation"], **b["validation"]},
        "seconds": round(a["seconds"] + b["seconds"], 1),
    }


def atomic_write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    tmp.replace(path)


class Runner:
    """Makes data, pre-trained bases and points on demand, each once, under ``out``."""

    def __init__(self, out: Path, scale: Scale, use_ray: bool, gpu: bool = False, jobs: int = 1):
        if jobs > 1 and use_ray:
            raise ValueError("--jobs runs points in local processes; it does not mix with --ray")
        self.out, self.scale, self.use_ray, self.gpu, self.jobs = out, scale, use_ray, gpu, jobs
        self.registry = str(out / "registry")
        self.data_dir = out / "data"

    # data
    def dataset(self, task: Task, split: str, n: int, seed: int) -> Path:
        return generated_file(task.spec(split, n, self.scale.resolution, seed), self.data_dir)

    def downstream(self, task: Task) -> dict[str, str]:
        s = self.scale
        sizes = {"train": s.train_pool or s.largest_n, "val": s.n_val, "test": s.n_test}
        return {k: str(self.dataset(task, k, n, DOWNSTREAM_SEED)) for k, n in sizes.items()}

    # bases
    def pretrain_specs(self, pretrain: tuple[Task, ...]) -> tuple[list, list]:
        s = self.scale
        specs = [
            t.spec("train", s.pretrain_examples, s.resolution, PRETRAIN_SEED) for t in pretrain
        ]
        vals = [t.spec("val", s.pretrain_val, s.resolution, PRETRAIN_SEED) for t in pretrain]
        return specs, vals

    def base_name(self, pretrain: tuple[Task, ...], model: str) -> str:
        specs, vals = self.pretrain_specs(pretrain)
        settings = self.scale.model_dump(
            include={"pretrain_epochs", "pretrain_lr", "pretrain_batch"}
        )
        key = json.dumps([model, [x.key_fields() for x in specs + vals], settings], sort_keys=True)
        return f"base-{model}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"

    def published_base(self, name: str) -> str | None:
        try:
            return Registry(self.registry).card(name).ref
        except RegistryError:
            return None

    def base(self, pretrain: tuple[Task, ...], model: str) -> str:
        """The registry ref of a model pre-trained on ``pretrain``: trained once, then reused."""
        s = self.scale
        specs, vals = self.pretrain_specs(pretrain)
        name = self.base_name(pretrain, model)
        if ref := self.published_base(name):
            return ref
        from training.export import export
        from training.pretrain import pretrain as run_pretrain

        config = TrainConfig(
            name=name,
            seed=PRETRAIN_SEED,
            model=ModelConfig(preset=model),
            data=DataConfig(
                train=[DataSource(generate=x) for x in specs],
                val=[DataSource(generate=x) for x in vals],
                cache_dir=str(self.data_dir),
                chunk_size=64,
            ),
            optim=OptimConfig(
                lr=s.pretrain_lr, batch_size=s.pretrain_batch, epochs=s.pretrain_epochs
            ),
            num_workers=s.num_workers,
        )
        tqdm.write(f"pre-training {name} on {' + '.join(t.label for t in pretrain)} ({model})")
        log = self.out / "runs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as stream, redirect_stdout(stream):
            model_dir = run_pretrain(
                config,
                name,
                storage=str(self.out / "runs"),
                use_ray=self.use_ray,
                gpu=self.gpu,
                progress=False,
            )
            return export(Path(model_dir), name, self.registry).ref

    # points
    def point_path(self, panel: Panel, curve: Curve, n: int) -> Path:
        name = f"n{n:05d}-{self.scale.sweep_key(n)}.json"
        return self.out / "points" / panel.downstream.label / curve.key / name

    def with_lrs(self, lrs: list[float]) -> Runner:
        return Runner(self.out, self.scale.model_copy(update={"lrs": lrs}), self.use_ray, self.gpu)

    def cached_part(self, panel: Panel, curve: Curve, n: int) -> tuple[list[float], dict] | None:
        """The widest point on disk whose sweep is a part of this one's (same N, same runs).

        Widening a sweep (another learning rate) then runs only the rates it adds.
        """
        lrs = self.scale.lrs
        for size in range(len(lrs) - 1, 0, -1):
            for part in itertools.combinations(lrs, size):
                path = self.with_lrs(list(part)).point_path(panel, curve, n)
                if path.exists():
                    return list(part), json.loads(path.read_text())
        return None

    def point(self, panel: Panel, curve: Curve, n: int) -> dict:
        """One sweep (or the zero-shot error at N = 0), run once and kept as JSON."""
        path = self.point_path(panel, curve, n)
        if path.exists():
            return json.loads(path.read_text())
        if cached := self.cached_part(panel, curve, n):
            part, point = cached
            if n:  # N = 0 is the zero-shot error: no sweep, nothing to add
                rest = [lr for lr in self.scale.lrs if lr not in part]
                point = merge_sweeps(point, self.with_lrs(rest).point(panel, curve, n))
            atomic_write_json(path, point)
            return point
        s = self.scale
        storage = path.with_suffix("")
        shutil.rmtree(storage, ignore_errors=True)  # what a killed sweep left
        start = {"base": self.base(curve.pretrain, curve.model)} if curve.kind == "tl" else {}
        config = FinetuneConfig(
            **start,
            model=None if start else curve.model,
            registry=self.registry,
            **self.downstream(panel.downstream),
            n_examples=n,
            lrs=s.lrs,
            epochs=s.epochs_for(n) if n else 1,
            batch_size=s.batch_size,
            num_workers=s.num_workers,
            gpu=self.gpu,
            scratch=curve.kind == "scratch",
            loss=curve.loss,
            use_ray=self.use_ray,
            storage=str(storage),
            base_candidate=False,  # the paper's TL curve: fine-tuned models, best epoch
        )
        t0 = time.perf_counter()
        log = path.with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as stream, redirect_stdout(stream):  # every epoch of every trial
            result = finetune(config)
        shutil.rmtree(storage, ignore_errors=True)  # every trial's checkpoints: not kept
        result.pop("model_dir", None)
        point = {
            **result,
            "n": n,
            "error": (result["test"] if n else result["zero_shot"])["all"],
            "epochs": config.epochs if n else 0,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        atomic_write_json(path, point)
        return point

    def curve_ns(self, curve: Curve) -> list[int]:
        ns = self.scale.n_examples + (self.scale.scratch_extra if curve.kind == "scratch" else [])
        return sorted(n for n in set(ns) if n > 0 or curve.kind == "tl")

    def run(self, name: str, panels: list[Panel]) -> dict:
        """Every point of every panel (cached ones are read back), then the results JSON."""
        todo = [(p, c, n) for p in panels for c in p.curves for n in self.curve_ns(c)]
        results = {
            "experiment": name,
            "scale": self.scale.model_dump(),
            "ray": self.use_ray,
            "panels": [],
        }
        bar = tqdm(total=len(todo), unit="point", desc=name)
        done: dict[tuple, dict] = {}

        def record(panel: Panel, curve: Curve, n: int, point: dict, fresh: bool) -> None:
            done[(panel.title, curve.label, n)] = point
            if fresh:
                lr = f", lr {point['chosen_lr']:g}" if n else ""
                tqdm.write(
                    f"{panel.downstream.label} {curve.label} N={n}: test {point['error']:.4f}"
                    f"{lr} ({point['seconds']:.0f} s)"
                )
            bar.update()

        if self.jobs > 1:
            self.run_parallel(todo, record)
        else:
            for panel, curve, n in todo:
                cached = self.point_path(panel, curve, n).exists()
                record(panel, curve, n, self.point(panel, curve, n), not cached)
        bar.close()
        for panel in panels:
            entry = {
                "title": panel.title,
                "downstream": panel.downstream.label,
                "range": panel.downstream.range_name,
                "curves": [
                    {
                        "label": c.label,
                        "kind": c.kind,
                        "model": c.model,
                        "loss": c.loss,
                        "pretrain": [t.label for t in c.pretrain],
                        "points": [done[(panel.title, c.label, n)] for n in self.curve_ns(c)],
                    }
                    for c in panel.curves
                ],
            }
            entry["savings"] = savings(entry)
            results["panels"].append(entry)
        return results

    def run_parallel(self, todo: list[tuple[Panel, Curve, int]], record: Callable) -> None:
        """Every point not yet on disk in ``jobs`` processes, the longest sweeps first.

        Data is made here first, then the missing bases in the pool beside the scratch
        points; a base's TL points are queued as soon as it is published.
        """
        for panel, curve, n in todo:
            if self.point_path(panel, curve, n).exists():
                record(panel, curve, n, self.point(panel, curve, n), False)
        todo = [t for t in todo if not self.point_path(*t).exists()]
        if not todo:
            return
        for panel in {t[0].downstream for t in todo}:
            self.downstream(panel)

        def base_of(t: tuple[Panel, Curve, int]) -> tuple[tuple[Task, ...], str]:
            return t[1].pretrain, t[1].model

        bases = {base_of(t) for t in todo if t[1].kind == "tl"}
        ready = {b for b in bases if self.published_base(self.base_name(*b))}
        for pretrain, _ in bases - ready:
            for spec in itertools.chain(*self.pretrain_specs(pretrain)):
                generated_file(spec, self.data_dir)
        todo.sort(key=lambda t: self.scale.sweep_steps(t[2]), reverse=True)
        threads = max(1, (os.cpu_count() or 1) // self.jobs)
        job = (self.out, self.scale, self.gpu, threads)
        pool = ProcessPoolExecutor(self.jobs, mp_context=get_context("spawn"))
        try:
            # a future's task: ("base", (pretrain, model)) or ("point", (panel, curve, n))
            running: dict[Future, tuple[str, tuple]] = {
                pool.submit(_make_base, *job, *b): ("base", b) for b in bases - ready
            }
            waiting = list(todo)
            while waiting or running:
                startable = [t for t in waiting if t[1].kind == "scratch" or base_of(t) in ready]
                for t in startable:
                    waiting.remove(t)
                    running[pool.submit(_make_point, *job, *t)] = ("point", t)
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    kind, task = running.pop(future)
                    result = future.result()  # a failed job stops the run, its error shown
                    if kind == "base":
                        ready.add(task)
                        tqdm.write(f"pre-trained {result}")
                    else:
                        record(*task, result, True)
        except BaseException:
            # A failure (or Ctrl-C) stops the run: jobs not yet started are dropped, the
            # running ones finish and keep their points for the next run.
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)


def _worker_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _make_base(
    out: Path, scale: Scale, gpu: bool, threads: int, pretrain: tuple[Task, ...], model: str
) -> str:
    """A worker's job: pre-train and publish one base (its data exists)."""
    _worker_threads(threads)
    return Runner(out, scale, use_ray=False, gpu=gpu).base(pretrain, model)


def _make_point(
    out: Path, scale: Scale, gpu: bool, threads: int, panel: Panel, curve: Curve, n: int
) -> dict:
    """A worker's job: one point (its data and base exist)."""
    _worker_threads(threads)
    return Runner(out, scale, use_ray=False, gpu=gpu).point(panel, curve, n)


def run_experiment(
    name: str,
    out: Path,
    scale: Scale,
    use_ray: bool | None = None,
    gpu: bool = False,
    jobs: int = 1,
) -> dict:
    """Run (or finish) experiment ``name`` under ``out``; writes NAME.json and the plots."""
    from experiments.plots import plot_curves, plot_savings

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; known: {sorted(EXPERIMENTS)}")
    scale = scale.for_experiment(name)
    use_ray = scale.use_ray if use_ray is None else use_ray
    runner = Runner(out, scale, use_ray, gpu, jobs)  # refuses bad settings before Ray starts
    out.mkdir(parents=True, exist_ok=True)
    with ray_instance() if use_ray else contextlib.nullcontext():
        results = runner.run(name, EXPERIMENTS[name](scale))
    results["plots"] = [
        str(plot_curves(results, out / f"{name}.png")),
        str(plot_savings(results, out / f"{name}-savings.png")),
    ]
    atomic_write_json(out / f"{name}.json", results)
    return results
