"""Learning curves of a run: ``python -m training.plots RUN/metrics.jsonl [-o curves.png]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.metrics import read_log

PREFIX = "val_rel_l2/"


def plot_metrics(log: Path, out: Path, title: str | None = None) -> Path:
    """Training loss and validation mean relative L2 per group against the epoch (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in read_log(log) if "epoch" in r and "event" not in r]
    if not records:
        raise ValueError(f"{log}: no epoch records")
    epochs = [r["epoch"] for r in records]
    groups = sorted({k[len(PREFIX) :] for r in records for k in r if k.startswith(PREFIX)})
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    loss = "train_relative_l2" if "train_relative_l2" in records[0] else "train_mse"
    ax_loss.semilogy(epochs, [r[loss] for r in records], color="black")
    ylabel = "train MSE (normalised)" if loss == "train_mse" else "train mean relative L2"
    ax_loss.set(xlabel="epoch", ylabel=ylabel, title="training loss")
    for g in groups:
        style = {"color": "black", "linewidth": 2} if g == "all" else {}
        values = [r.get(PREFIX + g, float("nan")) for r in records]
        ax_val.semilogy(epochs, values, label=f"{g} ({values[-1]:.2%})", **style)
    ax_val.set(xlabel="epoch", ylabel="mean relative L2", title="validation")
    ax_val.legend()
    for ax in (ax_loss, ax_val):
        ax.grid(True, which="both", alpha=0.3)
    if title:
        fig.suptitle(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.plots", description=__doc__)
    p.add_argument("log", type=Path)
    p.add_argument("-o", "--out", type=Path, help="default: curves.png beside the log")
    p.add_argument("--title")
    args = p.parse_args(argv)
    try:
        out = plot_metrics(args.log, args.out or args.log.with_name("curves.png"), args.title)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
