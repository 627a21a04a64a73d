"""The experiments as data: tasks (a system and the coefficient range of its distribution),
curves, panels, and per experiment the panels it asks for."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Literal

from pydantic import SerializerFunctionWrapHandler, model_serializer

from datagen.spec import DEFAULT_EIG, DEFAULT_OMEGA, DEFAULT_RATIO
from experiments.scales import Scale, Strict
from training.config import (
    FieldSpec,
    GenerateSpec,
    Loss,
)

PRETRAIN_SEED = 0
DOWNSTREAM_SEED = 7  # downstream sources never repeat the pre-training ones


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
