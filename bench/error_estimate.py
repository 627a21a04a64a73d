"""How well the service's error estimate tracks the surrogate's true error, per system.

    .venv/bin/python -m bench.error_estimate [--constant-model default]
        [--field-model NAME[@VERSION] --registry DIR] [--n 128] [--examples 256]

Held-out problems (a seed no training run uses, 2027) at ``--n``: the constant-coefficient
systems through ``--constant-model``'s graph; Darcy media (smooth and two-phase, contrast
1..100) and Helmholtz with w varying by up to 30% through ``--field-model``'s fields graph
(the bundled model has both graphs: ``--field-model default``). For each answer the estimate (what
``POST /solve`` returns as ``error_estimate``: ``datagen.solver.error_estimate``) is set
against the true relative L2 error from the exact solution. Writes
bench/results/error_estimate.json and error_estimate.png (estimate against truth).
Goal: within a factor of 3 for >= 90% of the examples, per system.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from bench.common import RESULTS, finish, goal
from datagen.dataset import open_dataset
from datagen.pipeline import write_split
from datagen.solver import error_estimate, relative_l2
from datagen.spec import FieldLaw, SplitSpec
from modelstore.registry import DEFAULT_REGISTRY
from modelstore.runner import OnnxSurrogate

SEED = 2027
FACTOR = 3.0
TARGET = 0.9
SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")


def problems(spec: SplitSpec, folder: Path):
    path = write_split(spec, folder / f"{spec.system}-{spec.seed}.h5", progress=False)
    with open_dataset(path) as reader:
        return reader.read()


def row(runner: OnnxSurrogate, pde: str, chunk, fields: bool) -> dict:
    c = chunk.unified() if fields else chunk.coefficients
    predicted = runner.predict(chunk.sources, c).astype(np.float64)
    true = relative_l2(predicted, chunk.solutions)
    estimate = error_estimate(pde, predicted, chunk.sources, c)
    ratio = estimate / true
    within = (ratio <= FACTOR) & (ratio >= 1 / FACTOR)
    return {
        "examples": len(true),
        "true_error_median": float(np.median(true)),
        "estimate_over_true_median": float(np.median(ratio)),
        "estimate_over_true_5_95": [
            float(np.percentile(ratio, 5)),
            float(np.percentile(ratio, 95)),
        ],
        "within_3x": float(within.mean()),
        "_true": true,
        "_estimate": estimate,
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 5))
    lo, hi = 1e9, 0.0
    for key, r in results.items():
        ax.loglog(
            r["_true"],
            r["_estimate"],
            ".",
            ms=3,
            alpha=0.6,
            label=f"{key} ({r['within_3x']:.0%} within 3x)",
        )
        lo, hi = (
            min(lo, r["_true"].min(), r["_estimate"].min()),
            max(hi, r["_true"].max(), r["_estimate"].max()),
        )
    xs = np.array([lo, hi])
    ax.loglog(xs, xs, "k-", lw=0.8)
    ax.loglog(xs, FACTOR * xs, "k:", lw=0.8)
    ax.loglog(xs, xs / FACTOR, "k:", lw=0.8)
    ax.set_xlabel("true relative L2 error of the surrogate")
    ax.set_ylabel("error_estimate")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--constant-model", default="default")
    p.add_argument("--field-model", help="a model with a fields graph trained on field media")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--examples", type=int, default=256)
    args = p.parse_args()
    results, goals = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        constant = OnnxSurrogate.load(args.constant_model, DEFAULT_REGISTRY)
        for pde in SYSTEMS:
            spec = SplitSpec(system=pde, n_examples=args.examples, resolution=args.n, seed=SEED)
            results[pde] = row(constant, pde, problems(spec, folder), fields=False)
        if args.field_model:
            runner = OnnxSurrogate.load(args.field_model, args.registry, fields=True)
            laws = [("poisson", FieldLaw(kind=kind, contrast=(1.0, 100.0)))
                    for kind in ("smooth", "two-phase")]  # fmt: skip
            laws.append(("helmholtz", FieldLaw(kind="smooth", variation=(0.0, 0.3))))
            for pde, law in laws:
                spec = SplitSpec(
                    system=pde, n_examples=args.examples, resolution=args.n, seed=SEED,
                    field_law=law,
                )  # fmt: skip
                results[f"{pde} {law.kind}"] = row(runner, pde, problems(spec, folder), True)
    for key, r in results.items():
        goals[f"estimate within 3x for >= 90%, {key}"] = goal(TARGET, r["within_3x"])
        print(
            f"{key:24s} true error median {r['true_error_median']:.3g}; estimate / true median "
            f"{r['estimate_over_true_median']:.3f} (5-95%: {r['estimate_over_true_5_95'][0]:.2f}"
            f"..{r['estimate_over_true_5_95'][1]:.2f}); within 3x: {r['within_3x']:.1%}",
            flush=True,
        )
    png = RESULTS / "error_estimate.png"
    plot(results, png)
    for r in results.values():
        r.pop("_true")
        r.pop("_estimate")
    results["setup"] = {
        "constant_model": args.constant_model,
        "field_model": args.field_model,
        "resolution": args.n,
        "seed": SEED,
    }
    return finish("error_estimate", results, goals, png)


if __name__ == "__main__":
    raise SystemExit(main())
