"""The paper's transfer-learning experiments (Q1 to Q4 and the data savings of Fig. B.1).

    python -m training.experiments NAME --out DIR [--scale small|gpu|paper]
        [--ray | --no-ray [--jobs K]] [--gpu]

NAME is one of ``data-scaling`` (Fig. 3), ``model-scaling`` (Fig. 4), ``ood-shift``
(Fig. 5, Table 1), ``mixed`` (Fig. 6), ``data-savings`` (Fig. B.1), ``loss`` (not in
the paper: SYS-2 fine-tuned with MSE and with a relative-L2 loss), and two on
coefficient fields, one step beyond the paper: ``operator-shift`` (a base pre-trained
on constant coefficients fine-tuned to Darcy flow, smooth and two-phase media) and
``field-shift`` (Q3 on the new axis: a base pre-trained on smooth fields of contrast
1..10 fine-tuned to contrast 10..100 and to two-phase media). Every experiment
is a set of panels; a panel is one downstream task with curves of test error against
the number of downstream examples N: fine-tuning a pre-trained model (TL) and
training the same architecture from scratch, each point with its own learning-rate
sweep picked on validation error (paper A.4, through ``training.finetune``).

Everything lands under ``--out``: generated data (``data/``), pre-trained bases
(``registry/``), one JSON per point (``points/``, so a killed run resumes where it
stopped and experiments share the points they have in common), and per experiment
``NAME.json`` and ``NAME.png`` (with ``NAME-savings.png``: the from-scratch examples
that reach TL's error, by log-log interpolation of the scratch curve).

Without Ray, ``--jobs K`` runs K points at once in worker processes (the data and the
pre-trained bases are made first, so workers never race to make the same file): small
models leave most of a GPU, or of a core's worth of threads, idle in a single process.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import redirect_stdout
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer
from tqdm import tqdm

from datagen.ray_instance import ray_instance, stops_cleanly
from datagen.spec import DEFAULT_EIG, DEFAULT_OMEGA, DEFAULT_RATIO
from modelstore.registry import Registry, RegistryError
from training.config import (
    DataConfig,
    DataSource,
    FieldSpec,
    GenerateSpec,
    Loss,
    ModelConfig,
    OptimConfig,
    TrainConfig,
)
from training.finetune import FinetuneConfig
from training.finetune import run as finetune
from training.prepare import generated_file

PRETRAIN_SEED = 0
DOWNSTREAM_SEED = 7  # downstream sources never repeat the pre-training ones


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- tasks: a system and the coefficient range that defines its distribution ---------

#: The paper's name for each system and the range that distinguishes its tasks.
SYSTEM_NAMES = {
    "poisson": ("SYS-1", "eig"),
    "advection_diffusion": ("SYS-2", "ratio"),
    "helmholtz": ("SYS-3", "omega"),
}


class Task(Strict):
    """A data distribution: ``SYS-1(5,10)`` is Poisson with diffusion eigenvalue e in (5, 10);
    ``SYS-1 smooth(1,10)`` is Poisson with a smooth conductivity field of contrast 1..10."""

    system: str
    eig: tuple[float, float] = DEFAULT_EIG
    ratio: tuple[float, float] = DEFAULT_RATIO
    omega: tuple[int, int] = DEFAULT_OMEGA
    field: FieldSpec | None = None

    @model_serializer(mode="wrap")
    def _without_absent_field(self, handler: SerializerFunctionWrapHandler) -> dict:
        # Constant-coefficient tasks dump as before fields existed: their curve and base
        # keys, and so their cached points and bases, stay what they were.
        out = handler(self)
        if out.get("field") is None:
            out.pop("field", None)
        return out

    @property
    def label(self) -> str:
        name, key = SYSTEM_NAMES[self.system]
        if self.field is not None:
            low, high = self._field_range
            return f"{name} {self.field.kind}({low:g},{high:g})"
        low, high = getattr(self, key)
        return f"{name}({low:g},{high:g})"

    @property
    def _field_range(self) -> tuple[float, float]:
        law = self.field.law()
        return law.variation if self.system == "helmholtz" else law.contrast

    @property
    def range_name(self) -> str:
        if self.field is not None:
            return "δ" if self.system == "helmholtz" else "contrast"
        return {"eig": "e", "ratio": "Ψ", "omega": "ω"}[SYSTEM_NAMES[self.system][1]]

    def spec(self, split: str, n: int, resolution: int, seed: int) -> GenerateSpec:
        return GenerateSpec(
            system=self.system,
            n_examples=n,
            split=split,
            resolution=resolution,
            seed=seed,
            eig=self.eig,
            ratio=self.ratio,
            omega=self.omega,
            field=self.field,
        )


def darcy(kind: str, low: float, high: float) -> Task:
    """Poisson (K0 from SYS-1's pre-training law) with a conductivity field of ``kind`` and
    contrast in (low, high)."""
    return Task(system="poisson", field=FieldSpec(kind=kind, contrast=(low, high)))


def sys1(low: float, high: float) -> Task:
    return Task(system="poisson", eig=(low, high))


def sys2(low: float, high: float) -> Task:
    return Task(system="advection_diffusion", ratio=(low, high))


def sys3(low: int, high: int) -> Task:
    return Task(system="helmholtz", omega=(low, high))


# --- scales --------------------------------------------------------------------------


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


SCALES = {
    # About 45 minutes per experiment on 2 CPUs: 32x32 grids, the 64K model, 2,048
    # pre-training examples per system, 3 learning rates, Ray skipped (its start-up per
    # trial costs more than a small trial).
    "small": Scale(
        name="small",
        resolution=32,
        model="fno-64k",
        ladder=["fno-64k", "fno-1m"],
        pretrain_examples=2048,
        pretrain_val=256,
        pretrain_epochs=30,
        pretrain_lr=3e-3,
        pretrain_batch=32,
        n_examples=[0, 8, 32, 128, 512],
        scratch_extra=[2048],
        n_val=128,
        n_test=256,
        lrs=[1e-3, 3e-3, 1e-2],
        batch_size=16,
        epochs=30,
        min_steps=200,
        max_epochs=100,
        use_ray=False,
        # Many panels: fewer N each (points shared with data-scaling are reused).
        overrides={
            "ood-shift": {"n_examples": [0, 8, 128], "scratch_extra": [512]},
            "data-savings": {"n_examples": [0, 8, 128], "scratch_extra": [512]},
            "mixed": {"n_examples": [0, 8, 128], "scratch_extra": [512]},
            "model-scaling": {"n_examples": [0, 8, 128], "scratch_extra": [512]},
            "loss": {"n_examples": [0, 8, 128], "scratch_extra": [512]},
            # The fields' questions ask about N up to 2,048 for TL too.
            "operator-shift": {"n_examples": [0, 8, 32, 128, 512, 2048], "scratch_extra": []},
        },
    ),
    # A few minutes on one H100/H200 with --jobs 8 (16 cores): 64x64 grids, the 1M model,
    # 8,192 pre-training examples per system, scratch up to 8,192 downstream examples.
    "gpu": Scale(
        name="gpu",
        resolution=64,
        model="fno-1m",
        ladder=["fno-64k", "fno-1m", "fno-16m"],
        pretrain_examples=8192,
        pretrain_val=512,
        pretrain_epochs=40,
        pretrain_lr=3e-3,
        pretrain_batch=32,
        n_examples=[0, 8, 32, 128, 512, 2048],
        scratch_extra=[8192],
        n_val=256,
        n_test=512,
        lrs=[3e-4, 1e-3, 3e-3, 1e-2],  # TL wants the low end, scratch the high one
        batch_size=32,
        epochs=30,
        min_steps=300,
        max_epochs=150,
        use_ray=False,
        overrides={"loss": {"n_examples": [0, 8, 128, 2048], "scratch_extra": []}},
    ),
    # Seconds: what the tests run.
    "smoke": Scale(
        name="smoke",
        resolution=32,
        model="fno-64k",
        ladder=["fno-64k"],
        pretrain_examples=128,
        pretrain_val=32,
        pretrain_epochs=2,
        pretrain_lr=3e-3,
        pretrain_batch=32,
        n_examples=[0, 8],
        scratch_extra=[32],
        n_val=32,
        n_test=32,
        lrs=[1e-3, 1e-2],
        batch_size=8,
        epochs=2,
        min_steps=4,
        max_epochs=4,
        use_ray=False,
    ),
    # The paper (A.3, A.4): 128x128, 32K pre-training examples, 500 epochs, five learning
    # rates, downstream N up to 32K, the 64K..256M ladder; each sweep a Ray Tune job.
    "paper": Scale(
        name="paper",
        resolution=128,
        model="fno-16m",
        ladder=["fno-64k", "fno-1m", "fno-16m", "fno-256m"],
        pretrain_examples=32768,
        pretrain_val=4096,
        pretrain_epochs=500,
        pretrain_lr=1e-3,
        pretrain_batch=128,
        n_examples=[0, 8, 32, 128, 512, 2048, 8192, 32768],
        scratch_extra=[],
        n_val=4096,
        n_test=4096,
        lrs=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
        batch_size=32,
        epochs=500,
        min_steps=2000,
        max_epochs=5000,
        use_ray=True,
        num_workers=4,
    ),
}


# --- panels and curves ---------------------------------------------------------------


class Curve(Strict):
    """Test error against N: fine-tuned from a base pre-trained on ``pretrain``, or scratch."""

    kind: Literal["tl", "scratch"]
    model: str
    pretrain: tuple[Task, ...] = ()  # empty for scratch
    label: str
    loss: Loss = "mse"  # of the fine-tuning (the bases are pre-trained with MSE)

    @property
    def key(self) -> str:
        # The paper's loss leaves the key as it was before losses could differ.
        skip = {"label"} | ({"loss"} if self.loss == "mse" else set())
        text = json.dumps(self.model_dump(exclude=skip), sort_keys=True)
        return f"{self.kind}-{self.model}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


class Panel(Strict):
    title: str
    downstream: Task
    curves: list[Curve]


def tl(
    pretrain: tuple[Task, ...], model: str, label: str | None = None, loss: Loss = "mse"
) -> Curve:
    name = label or f"TL from {' + '.join(t.label for t in pretrain)}"
    return Curve(kind="tl", model=model, pretrain=pretrain, label=name, loss=loss)


def scratch(model: str, label: str = "from scratch", loss: Loss = "mse") -> Curve:
    return Curve(kind="scratch", model=model, label=label, loss=loss)


SYS1_BASE, SYS2_BASE, SYS3_BASE = sys1(1, 5), sys2(0.2, 1), sys3(1, 10)
MIXED = (SYS1_BASE, SYS2_BASE, SYS3_BASE)


def transfer_panel(base: Task, downstream: Task, model: str, title: str) -> Panel:
    return Panel(title=title, downstream=downstream, curves=[tl((base,), model), scratch(model)])


def data_scaling(scale: Scale) -> list[Panel]:
    """Q1, Fig. 3: moderate OOD shifts, SYS-1 (1,5) -> (5,10) and SYS-2 (0.2,1) -> (1,2)."""
    return [
        transfer_panel(SYS1_BASE, sys1(5, 10), scale.model, "SYS-1: e (1,5) → (5,10)"),
        transfer_panel(SYS2_BASE, sys2(1, 2), scale.model, "SYS-2: Ψ (0.2,1) → (1,2)"),
    ]


def model_scaling(scale: Scale) -> list[Panel]:
    """Q2, Fig. 4: the data-scaling curves for every model of the size ladder."""
    panels = []
    for base, downstream in ((SYS1_BASE, sys1(5, 10)), (SYS2_BASE, sys2(1, 2))):
        curves = []
        for model in scale.ladder:
            curves += [tl((base,), model, f"TL {model}"), scratch(model, f"scratch {model}")]
        panels.append(
            Panel(title=f"{base.label} → {downstream.label}", downstream=downstream, curves=curves)
        )
    return panels


#: Table 1. The paper's table repeats SYS-2's "None" row for "Mild"; Psi in (0.6, 1.4),
#: half inside the pre-training range like SYS-1's mild shift, stands in for it here.
SHIFTS = {
    "poisson": {
        "none": sys1(1, 2.5),
        "mild": sys1(2.5, 7.5),
        "med": sys1(5, 10),
        "large": sys1(10, 20),
    },
    "advection_diffusion": {
        "none": sys2(0.2, 0.4),
        "mild": sys2(0.6, 1.4),
        "med": sys2(1, 2),
        "large": sys2(2, 5),
    },
}


def ood_shift(scale: Scale) -> list[Panel]:
    """Q3, Fig. 5 and A.2: none, mild, med and large shifts from each pre-training set."""
    panels = []
    for base in (SYS1_BASE, SYS2_BASE):
        for shift, downstream in SHIFTS[base.system].items():
            title = f"{shift}: {base.label} → {downstream.label}"
            panels.append(transfer_panel(base, downstream, scale.model, title))
    return panels


def mixed(scale: Scale) -> list[Panel]:
    """Q4, Fig. 6: one model pre-trained on all three systems against system-specific ones."""
    model = scale.model
    panels = []
    for base, downstream in (
        (SYS1_BASE, sys1(1, 2.5)),
        (SYS2_BASE, sys2(0.2, 0.4)),
        (SYS3_BASE, sys3(1, 5)),
    ):
        curves = [tl(MIXED, model, "TL from mixed"), tl((base,), model), scratch(model)]
        panels.append(Panel(title=downstream.label, downstream=downstream, curves=curves))
    return panels


def loss(scale: Scale) -> list[Panel]:
    """Not in the paper: Q1's SYS-2 panel fine-tuned with the paper's MSE and with the mean
    relative L2 itself. Psi in (1,2) has a few solutions far larger than the rest; MSE
    spends the fit on them while the metric weighs every example alike."""
    model = scale.model
    curves = [
        tl((SYS2_BASE,), model, "TL, MSE loss"),
        tl((SYS2_BASE,), model, "TL, relative-L2 loss", loss="relative_l2"),
        scratch(model, "scratch, MSE loss"),
        scratch(model, "scratch, relative-L2 loss", loss="relative_l2"),
    ]
    title = f"{SYS2_BASE.label} → {sys2(1, 2).label}: training loss"
    return [Panel(title=title, downstream=sys2(1, 2), curves=curves)]


def operator_shift(scale: Scale) -> list[Panel]:
    """Not in the paper: the operator's form changes, not its parameters. The mixed base
    saw constant coefficients only (the network's coefficient channels were constant
    images); downstream they are fields, smooth or two-phase, of contrast 1..10."""
    model = scale.model
    panels = []
    for downstream in (darcy("smooth", 1, 10), darcy("two-phase", 1, 10)):
        curves = [tl(MIXED, model, "TL from mixed (constant coefficients)"), scratch(model)]
        title = f"constant coefficients → {downstream.label}"
        panels.append(Panel(title=title, downstream=downstream, curves=curves))
    return panels


DARCY_BASE = darcy("smooth", 1, 10)


def field_shift(scale: Scale) -> list[Panel]:
    """Q3 on the new axis: a base pre-trained on smooth fields of contrast 1..10, fine-tuned
    to ten times the contrast and to binary media of the same contrast."""
    return [
        transfer_panel(
            DARCY_BASE, downstream, scale.model, f"{DARCY_BASE.label} → {downstream.label}"
        )
        for downstream in (darcy("smooth", 10, 100), darcy("two-phase", 1, 10))
    ]


EXPERIMENTS: dict[str, Callable[[Scale], list[Panel]]] = {
    "data-scaling": data_scaling,
    "model-scaling": model_scaling,
    "ood-shift": ood_shift,
    "mixed": mixed,
    "loss": loss,
    # Fig. B.1 reads the Table 1 shifts; its points are the ood-shift ones.
    "data-savings": ood_shift,
    "operator-shift": operator_shift,
    "field-shift": field_shift,
}


# --- data savings (Fig. B.1) ---------------------------------------------------------


def scratch_equivalent(scratch_points: list[tuple[int, float]], error: float) -> float | None:
    """The N at which training from scratch reaches ``error``, log-log interpolated.

    The scratch curve is made monotone (its running minimum); None where ``error`` lies
    below the best scratch error (TL beats every scratch run) or above the first.
    """
    points = sorted((n, e) for n, e in scratch_points if n > 0)
    best, envelope = math.inf, []
    for n, e in points:
        best = min(best, e)
        envelope.append((n, best))
    for (n0, e0), (n1, e1) in itertools.pairwise(envelope):
        if e1 <= error <= e0:
            if e0 == e1:
                return float(n0)
            t = (math.log(e0) - math.log(error)) / (math.log(e0) - math.log(e1))
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0))))
    return None


def savings(panel: dict) -> list[dict]:
    """For each TL point of a panel: the from-scratch examples that reach its error."""
    scratch_curves = [c for c in panel["curves"] if c["kind"] == "scratch"]
    out = []
    for curve in panel["curves"]:
        if curve["kind"] != "tl":
            continue
        same = ("model", "loss")
        ref = next((s for s in scratch_curves if all(s.get(k) == curve.get(k) for k in same)), None)
        if ref is None:
            continue
        scratch_points = [(p["n"], p["error"]) for p in ref["points"]]
        best = min(e for _, e in scratch_points)
        for p in curve["points"]:
            n_eq = scratch_equivalent(scratch_points, p["error"])
            out.append(
                {
                    "curve": curve["label"],
                    "n": p["n"],
                    "error": p["error"],
                    "scratch_equivalent": n_eq,
                    "saving": None if n_eq is None else n_eq - p["n"],
                    # TL beat every scratch run: the saving is more than the curve shows
                    "beats_scratch": n_eq is None and p["error"] < best,
                    "largest_scratch_n": max(n for n, _ in scratch_points),
                }
            )
    return out


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
    from training.experiment_plots import plot_curves, plot_savings

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


def markdown(results: dict) -> str:
    """The results as Markdown: per panel, test error by N for every curve, then savings."""
    out = []
    for panel in results["panels"]:
        ns = sorted({p["n"] for c in panel["curves"] for p in c["points"]})
        out += [f"**{panel['title']}**", ""]
        out.append("| curve | " + " | ".join(f"N={n}" for n in ns) + " |")
        out.append("| --- |" + " --- |" * len(ns))
        for curve in panel["curves"]:
            by_n = {p["n"]: p["error"] for p in curve["points"]}
            cells = [f"{by_n[n]:.3f}" if n in by_n else "" for n in ns]
            out.append(f"| {curve['label']} | " + " | ".join(cells) + " |")
        saved = [s for s in panel["savings"] if s["n"] > 0]
        for label in dict.fromkeys(s["curve"] for s in saved):
            text = ", ".join(
                f"N={s['n']}: "
                + (
                    f"{s['scratch_equivalent']:.0f}"
                    if s["scratch_equivalent"]
                    else f"> {s['largest_scratch_n']} (TL beats every scratch run)"
                    if s["beats_scratch"]
                    else "n/a"
                )
                for s in saved
                if s["curve"] == label
            )
            out += ["", f"From-scratch examples reaching the error of {label}: {text}"]
        out.append("")
    return "\n".join(out)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m training.experiments", description=__doc__.split("\n")[0]
    )
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--out", type=Path, required=True, help="results, plots, data, models")
    p.add_argument("--scale", choices=sorted(SCALES), default="small")
    ray = p.add_mutually_exclusive_group()
    ray.add_argument(
        "--ray",
        dest="ray",
        action="store_true",
        default=None,
        help="each sweep a Ray Tune job (default at paper scale)",
    )
    ray.add_argument(
        "--no-ray",
        dest="ray",
        action="store_false",
        help="every run in this process (default at small scale)",
    )
    p.add_argument("--gpu", action="store_true")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="K",
        help="without Ray: K points at once, each in its own process (default 1)",
    )
    args = p.parse_args(argv)
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    return args


@stops_cleanly("training.experiments")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        results = run_experiment(
            args.name, args.out, SCALES[args.scale], args.ray, args.gpu, args.jobs
        )
    except (ValueError, FileNotFoundError, RegistryError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(markdown(results))
    print("\n".join(results["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
