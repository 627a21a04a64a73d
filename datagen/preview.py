"""A picture of a dataset: sources and solutions side by side, by sparsity level."""

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
    """Write a PNG grid: a row per sparsity level, (source, solution) pairs across."""
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
        fig, axes = plt.subplots(
            len(rows), 2 * per_level, figsize=(3.2 * 2 * per_level, 3.0 * len(rows)), squeeze=False
        )
        for r, (s, idx) in enumerate(rows):
            for j in range(per_level):
                ax_f, ax_u = axes[r, 2 * j], axes[r, 2 * j + 1]
                if j >= idx.size:
                    ax_f.axis("off")
                    ax_u.axis("off")
                    continue
                i = int(idx[j])
                ex = reader.read(i, i + 1)
                psi = None if ex.psi is None else float(ex.psi[0])
                for ax, field, name in (
                    (ax_f, ex.sources[0], "source"),
                    (ax_u, ex.solutions[0], "solution"),
                ):
                    if name == "solution":  # diverging colours centred on 0
                        lim = float(np.abs(field).max()) or 1.0
                        style = {"cmap": "RdBu_r", "vmin": -lim, "vmax": lim}
                    else:
                        style = {"cmap": "viridis"}
                    im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), **style)
                    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
                    ax.set_xticks([])
                    ax.set_yticks([])
                ax_f.set_title(f"#{i} source, sparsity {s:g}", fontsize=9)
                ax_u.set_title(
                    f"solution: {_describe(reader.system.name, ex.coefficients[0], psi)}",
                    fontsize=9,
                )
        fig.suptitle(
            f"{reader.system.label}: {reader.system.equation}\n"
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
