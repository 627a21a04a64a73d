"""A picture of a dataset: sources (and coefficient fields) and solutions side by side,
by sparsity level."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from datagen.dataset import DatasetReader, open_dataset
from datagen.sources import SPARSITY_LEVELS
from datagen.systems import K11, K12, K22, V1, V2, W


def _levels(reader: DatasetReader) -> np.ndarray:
    """Sparsity of each example: stored by pdeserve; the authors' files hold the levels in
    four consecutive quarters."""
    stored = reader.sparsity()
    if stored is not None:
        return stored
    quarter = np.minimum(np.arange(len(reader)) * len(SPARSITY_LEVELS) // len(reader), 3)
    return np.asarray(SPARSITY_LEVELS)[quarter]


def _coefficient_image(ex, system: str) -> tuple[np.ndarray, str, dict]:
    """The field to show beside the source: sqrt(det K) (log colours) or w, title, style."""
    c = ex.unified()[0]
    if system == "helmholtz":
        w = c[W]
        return (
            w,
            f"w(x), delta = {ex.extras.get('variation', [np.nan])[0]:.2f}",
            {"cmap": "cividis"},
        )
    from matplotlib.colors import LogNorm

    kappa = np.sqrt(c[K11] * c[K22] - c[K12] ** 2)
    title = f"sqrt(det K), contrast {kappa.max() / kappa.min():.3g}"
    return kappa, title, {"cmap": "cividis", "norm": LogNorm(kappa.min(), kappa.max())}


def _describe(system: str, c: np.ndarray, psi: float | None) -> str:
    if system == "helmholtz":
        return f"w = {c[W]:g}"
    k = np.array([[c[K11], c[K12]], [c[K12], c[K22]]])
    lo, hi = np.linalg.eigvalsh(k)
    text = f"eig ratio {hi / lo:.2f}"
    if system == "advection_diffusion":
        text += f", |v| = {np.hypot(c[V1], c[V2]):.3f}"
        if psi is not None:
            text += f", Psi = {psi:.2f}"
    return text


def plot_preview(
    path: str | os.PathLike, out: str | os.PathLike, *, per_level: int = 2, dpi: int = 90
) -> Path:
    """Write a PNG grid: a row per sparsity level, (source, solution) pairs across; files
    with coefficient fields show (source, coefficient field, solution) triples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if per_level < 1:
        raise ValueError(f"per_level must be >= 1, got {per_level}")
    out = Path(out)
    with open_dataset(path) as reader:
        levels = _levels(reader)
        rows = [(s, np.flatnonzero(np.isclose(levels, s))[:per_level]) for s in SPARSITY_LEVELS]
        rows = [(s, idx) for s, idx in rows if idx.size]
        width = 3 if reader.has_fields else 2  # panels per example
        fig, axes = plt.subplots(
            len(rows),
            width * per_level,
            figsize=(3.2 * width * per_level, 3.0 * len(rows)),
            squeeze=False,
        )
        for r, (s, idx) in enumerate(rows):
            for j in range(per_level):
                panels = axes[r, width * j : width * (j + 1)]
                if j >= idx.size:
                    for ax in panels:
                        ax.axis("off")
                    continue
                i = int(idx[j])
                ex = reader.read(i, i + 1)
                psi = None if ex.psi is None else float(ex.psi[0])
                shown = [(ex.sources[0], f"#{i} source, sparsity {s:g}", {"cmap": "viridis"})]
                if reader.has_fields:
                    shown.append(_coefficient_image(ex, reader.system.name))
                lim = float(np.abs(ex.solutions[0]).max()) or 1.0  # diverging, centred on 0
                describe = _describe(reader.system.name, ex.coefficients[0], psi)
                style = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
                if reader.has_fields:  # the coefficients describe the reference
                    describe = f"reference {describe}"
                shown.append((ex.solutions[0], f"solution: {describe}", style))
                for ax, (field, title, style) in zip(panels, shown, strict=True):
                    im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), **style)
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ax.set_title(title, fontsize=9)
        law = ""
        if reader.has_fields:
            law = f", {reader.attrs.get('field_law', 'coefficient')} fields"
        fig.suptitle(
            f"{reader.system.label}: {reader.system.equation}{law}\n"
            f"{Path(path).name}: {len(reader)} examples, {reader.resolution}^2",
            fontsize=11,
        )
        fig.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp.png")
        fig.savefig(tmp, dpi=dpi)
        plt.close(fig)
        os.replace(tmp, out)
    return out
