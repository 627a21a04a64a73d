"""Figures of the transfer experiments, in the style of the paper's Fig. 3-6 and B.1."""

from __future__ import annotations

import math
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grid(n_panels: int):
    plt = _pyplot()
    cols = min(n_panels, 4)  # one panel: wide enough for the figure title
    rows = math.ceil(n_panels / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(max(4.2 * cols, 7.5), 3.6 * rows), layout="constrained", squeeze=False
    )
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return plt, fig, list(axes.flat[:n_panels])


def _label_log_y(ax) -> None:
    """Ticks at 1, 2 and 5 per decade, labelled: errors often span less than a decade."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def zero_position(ns: list[int]) -> float:
    """Where N = 0 (zero-shot) sits on the log axis: a factor 4 left of the smallest N."""
    positive = [n for n in ns if n > 0]
    return (min(positive) if positive else 1) / 4


def plot_curves(results: dict, out: Path) -> Path:
    """Test error against downstream examples, one panel per downstream task (log-log)."""
    panels = results["panels"]
    plt, fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        ns = sorted({p["n"] for c in panel["curves"] for p in c["points"]})
        x0 = zero_position(ns)
        for curve in panel["curves"]:
            xs = [p["n"] if p["n"] > 0 else x0 for p in curve["points"]]
            ys = [p["error"] for p in curve["points"]]
            style = "-o" if curve["kind"] == "tl" else "--s"
            ax.loglog(xs, ys, style, label=curve["label"], markersize=4)
        ax.set_xticks([x0] + [n for n in ns if n > 0])
        ax.set_xticklabels(["0"] + [str(n) for n in ns if n > 0], fontsize=8)
        ax.minorticks_off()
        _label_log_y(ax)
        ax.set(title=panel["title"], xlabel="downstream examples N", ylabel="test rel. L2")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    scale = results["scale"]
    models = ", ".join(dict.fromkeys(c["model"] for p in results["panels"] for c in p["curves"]))
    fig.suptitle(
        f"{results['experiment']} ({scale['name']} scale: {scale['resolution']}², "
        f"{models}, {scale['pretrain_examples']} pre-training examples per system)"
    )
    return _save(plt, fig, out)


def plot_savings(results: dict, out: Path) -> Path:
    """From-scratch examples reaching TL's error against TL's examples (Fig. B.1).

    Points above the dashed diagonal are examples saved; TL points better than every
    scratch run, or worse than the smallest, have no equivalent and are left out.
    """
    from matplotlib.ticker import NullLocator

    panels = results["panels"]
    plt, fig, axes = _grid(len(panels))
    for ax, panel in zip(axes, panels, strict=True):
        rows = [s for s in panel["savings"] if s["scratch_equivalent"] is not None]
        ns = sorted({s["n"] for s in panel["savings"]})
        x0 = zero_position(ns)
        for label in dict.fromkeys(s["curve"] for s in rows):
            mine = [s for s in rows if s["curve"] == label]
            xs = [s["n"] if s["n"] > 0 else x0 for s in mine]
            ax.loglog(xs, [s["scratch_equivalent"] for s in mine], "-o", label=label)
        lim = [x0, max(ns + [s["scratch_equivalent"] for s in rows] + [1]) * 2]
        ax.loglog(lim, lim, "k--", linewidth=1, label="no saving")
        ax.set_xticks([x0] + [n for n in ns if n > 0])
        ax.set_xticklabels(["0"] + [str(n) for n in ns if n > 0], fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set(
            title=panel["title"],
            xlabel="TL examples N",
            ylabel="scratch examples for the same error",
        )
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results['experiment']}: data savings of transfer learning")
    return _save(plt, fig, out)


def _save(plt, fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    return out
