"""When does the surrogate pay? Darcy media per contrast: the surrogate's error and cost
against the exact solvers' cost at that same error, and refine against a cold start.

    .venv/bin/python -m bench.crossover --model NAME[@VERSION] [--registry DIR] [--quick]

For each law (smooth, two-phase) and contrast (4, 10, 100, 1000), on B problems at 128^2
(K = a(x) 0.01 I, the paper's Gaussian sources; the reference solved to 1e-11):

- the surrogate (the model's fields graph in ONNX Runtime, all threads): its mean relative
  L2 error, and ms/sample at batch 1 and at batch B;
- pdeserve's batched Krylov solver from a cold start, with the largest tolerance
  (10^-0.5, 10^-1, 10^-1.5, ...) whose answer is as accurate as the surrogate's: ms/sample;
- pyamg (smoothed aggregation + CG on the 5-point discretisation, setup included, one
  sample at a time): ms/sample until its answer is as accurate as the surrogate's;
- refine: the Krylov solver to 1e-6 started from the surrogate's answer, against the same
  from a cold start (ms/sample, and the ratio).

And the rest of what the service accepts, for the README's front table: the three
constant-coefficient systems (the model's constant graph against the FFT solve, exact at
any error) and Helmholtz with w varying by 30% (the fields graph against GMRES at the
surrogate's error), on B problems each.

Then the figure of merit (``bench/merit.py``, under ``merit`` in the JSON): the surrogate's
answer in exact-solver iterations over the iterations its cost buys, per medium, contrast
band and grid (128^2, 256^2, 512^2), raw and served, for the model routing picks and for
the foundation model.

Writes bench/results/crossover.json and crossover.png. Goals, at the largest contrast
the model's envelope holds: the surrogate (batch B) >= 5x faster than the fastest exact
method at the surrogate's own error; refine reaches 1e-6 >= 1.5x faster than a cold start;
and merit's (>= 5 on the contrast-10..100 bands, >= 2 on 2..10, at 128^2).
Served throughput at concurrency 32 is bench/serve.py's; the figure of merit below times
the served surrogate one request at a time.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np

from bench.common import REPEAT, RESULTS, finish, goal, krylov_solve, timed
from bench.fields import diffusion_problems, helmholtz_problems, pyamg_curve
from bench.merit import GRIDS as MERIT_GRIDS
from bench.merit import measure as measure_merit
from bench.merit import plot as plot_merit
from datagen.coefficients import contrast as contrast_of
from datagen.generate import generate_block
from datagen.media import FIELD_KINDS
from datagen.solver import relative_l2, solve
from datagen.spec import SplitSpec
from modelstore.registry import DEFAULT_REGISTRY
from modelstore.runner import OnnxSurrogate

CONTRASTS = (4, 10, 100, 1000)
CONSTANT_SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")
HELMHOLTZ_VARIATION = 0.3
#: Krylov tolerances tried, loosest first (half-decades: the exact cost at the surrogate's
#: error is not overstated by more than a half-decade of tolerance).
TOLERANCES = tuple(10.0 ** (-k / 2) for k in range(1, 21))
REFINE_TO = 1e-6


def surrogate_row(runner: OnnxSurrogate, f, fields, reference) -> dict:
    b = len(f)
    whole, t_batch = timed(lambda: runner.predict(f, fields, batch=b))
    _, t_one = timed(lambda: [runner.predict(f[i : i + 1], fields[i : i + 1]) for i in range(b)])
    return {
        "error": float(relative_l2(whole, reference).mean()),
        "ms_per_sample_batch_1": 1e3 * t_one / b,
        f"ms_per_sample_batch_{b}": 1e3 * t_batch / b,
        "_solutions": whole,
    }


def krylov_at(f, fields, reference, error: float, system: str = "poisson") -> dict:
    """The largest tolerance whose mean error is within ``error``, and its cost."""
    for tolerance in TOLERANCES:
        out, seconds = timed(
            lambda tolerance=tolerance: krylov_solve(f, fields, tolerance, system=system)
        )
        reached = float(relative_l2(out.solutions, reference).mean())
        if reached <= error:
            return {
                "tolerance": tolerance,
                "error": reached,
                "iterations_median": float(np.median(out.iterations)),
                "ms_per_sample": 1e3 * seconds / len(f),
            }
    return {"tolerance": None, "error": None, "ms_per_sample": None}


def pyamg_at(f, fields, reference, error: float, samples: int) -> dict:
    """pyamg's time (setup included) until its answer is within ``error``, per sample."""
    times = []
    for i in range(min(samples, len(f))):
        curve = pyamg_curve(f[i], fields[i, 0], reference[i], maxiter=300)
        times.append(next((ms for ms, e in curve if e <= error), None))
    reached = [t for t in times if t is not None]
    return {
        "ms_per_sample": float(np.mean(reached)) if len(reached) == len(times) else None,
        "reached": f"{len(reached)}/{len(times)}",
    }


def refine_row(f, fields, guess) -> dict:
    """Cold against warm (the surrogate's answer as the start) with each preconditioner;
    the top level is the automatic choice's, the solver's default."""
    out: dict = {}
    for name in ("reference", "auto"):
        cold, t_cold = timed(lambda n=name: krylov_solve(f, fields, REFINE_TO, preconditioner=n))
        warm, t_warm = timed(
            lambda n=name: krylov_solve(
                f, fields, REFINE_TO, guess.astype(np.float64), preconditioner=n
            )
        )
        out[name] = {
            "cold_ms_per_sample": 1e3 * t_cold / len(f),
            "refine_ms_per_sample": 1e3 * t_warm / len(f),
            "cold_iterations_median": float(np.median(cold.iterations)),
            "refine_iterations_median": float(np.median(warm.iterations)),
            "speedup": t_cold / t_warm,
            "scaled": cold.preconditioner.count("scaled"),
        }
    return out["auto"] | {"by_preconditioner": out}


def constant_row(runner: OnnxSurrogate, system: str, b: int, n: int) -> dict:
    """A constant-coefficient system: the surrogate's error and cost against the FFT solve's
    (exact to rounding, so at any error)."""
    spec = SplitSpec(system=system, n_examples=b, split="test", resolution=n, seed=2026)
    block = generate_block(spec, 0)
    f, c = block.sources.astype(np.float64), block.coefficients
    s = surrogate_row(runner, f, c, block.solutions)
    s.pop("_solutions")
    _, seconds = timed(lambda: solve(system, f, c, mean="project"))
    fft = 1e3 * seconds / b
    return {"surrogate": s, "fft_ms_per_sample": fft,
            "exact_over_surrogate": fft / s[f"ms_per_sample_batch_{b}"]}  # fmt: skip


def helmholtz_field_row(runner: OnnxSurrogate, rng, b: int, n: int) -> dict:
    """Helmholtz with w = w0 (1 + 0.3 s(x)): the surrogate against GMRES at its error."""
    f, fields = helmholtz_problems(rng, b, HELMHOLTZ_VARIATION, n=n)
    reference = krylov_solve(f, fields, 1e-11, system="helmholtz").solutions
    s = surrogate_row(runner, f, fields, reference)
    s.pop("_solutions")
    krylov = krylov_at(f, fields, reference, s["error"], system="helmholtz")
    exact = krylov["ms_per_sample"]
    ratio = exact / s[f"ms_per_sample_batch_{b}"] if exact else None
    return {"variation": HELMHOLTZ_VARIATION, "surrogate": s, "krylov": krylov,
            "exact_over_surrogate": ratio}  # fmt: skip


def _print_row(key: str, row: dict, b: int, exact: str) -> None:
    s = row["surrogate"]
    print(
        f"{key:24s} surrogate error {s['error']:.3g}, {s[f'ms_per_sample_batch_{b}']:.2f} "
        f"ms/sample; {exact}",
        flush=True,
    )


def plot(results: dict, batch: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FIELD_KINDS), figsize=(6 * len(FIELD_KINDS), 4.2))
    for ax, kind in zip(np.atleast_1d(axes), FIELD_KINDS, strict=True):
        rows = [
            results[f"{kind}_contrast_{c}"] for c in CONTRASTS if f"{kind}_contrast_{c}" in results
        ]
        cs = [r["contrast"] for r in rows]
        curves = [
            ("surrogate, batch 1", [r["surrogate"]["ms_per_sample_batch_1"] for r in rows], "o-"),
            (
                f"surrogate, batch {batch}",
                [r["surrogate"][f"ms_per_sample_batch_{batch}"] for r in rows],
                "o-",
            ),
            (
                "Krylov (cold) at the surrogate's error",
                [r["krylov"]["ms_per_sample"] for r in rows],
                "s--",
            ),
            (
                "pyamg SA+CG at the surrogate's error",
                [r["pyamg"]["ms_per_sample"] for r in rows],
                "^--",
            ),
        ]
        for label, ys, style in curves:
            ax.plot(cs, [np.nan if y is None else y for y in ys], style, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("contrast")
        ax.set_ylabel("ms per sample")
        twin = ax.twinx()
        twin.plot(cs, [r["surrogate"]["error"] for r in rows], "k:", label="surrogate error")
        twin.set_yscale("log")
        twin.set_ylabel("surrogate mean relative L2 (dotted)")
        ax.set_title(f"{kind} media")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="NAME[@VERSION] or a model folder")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--quick", action="store_true", help="64^2, 8 problems, two contrasts")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--pyamg-samples", type=int, default=4)
    p.add_argument(
        "--merit-grids", type=int, nargs="*", default=list(MERIT_GRIDS),
        help="grids of the figure of merit (bench/merit.py; none: skip it)",
    )  # fmt: skip
    args = p.parse_args()
    warnings.filterwarnings("ignore", module="pyamg")
    n, b = (64, 8) if args.quick else (128, 32)
    contrasts = (10, 100) if args.quick else CONTRASTS
    runner = OnnxSurrogate.load(args.model, args.registry, args.threads, fields=True)
    env = runner.card.envelope.get("poisson")
    trained = env.field.contrast if env is not None and env.field is not None else None
    served = [c for c in contrasts if trained is not None and c <= trained[1] * 1.01]
    top = max(served) if served else None  # the goals' contrast
    rng = np.random.default_rng(2026)
    results: dict = {}
    goals: dict = {}
    for kind in FIELD_KINDS:
        for contrast in contrasts:
            f, fields = diffusion_problems(rng, b, kind, contrast, n=n)
            reference = krylov_solve(f, fields, 1e-11).solutions
            s = surrogate_row(runner, f, fields, reference)
            guess = s.pop("_solutions")
            row = {
                "contrast": float(contrast_of(fields).mean()),
                "surrogate": s,
                "krylov": krylov_at(f, fields, reference, s["error"]),
                "pyamg": pyamg_at(f, fields, reference, s["error"], args.pyamg_samples),
                "refine": refine_row(f, fields, guess),
            }
            exact = [
                v for v in (row["krylov"]["ms_per_sample"], row["pyamg"]["ms_per_sample"]) if v
            ]
            row["surrogate_speedup_vs_fastest_exact"] = (
                min(exact) / s[f"ms_per_sample_batch_{b}"] if exact else None
            )
            key = f"{kind}_contrast_{contrast}"
            results[key] = row
            print(
                f"{key:24s} surrogate error {s['error']:.3g}, {s[f'ms_per_sample_batch_{b}']:.2f} "
                f"ms/sample (batch {b}), {s['ms_per_sample_batch_1']:.2f} (batch 1); Krylov at "
                f"that error {row['krylov']['ms_per_sample']} ms "
                f"(tol {row['krylov']['tolerance']}); "
                f"pyamg {row['pyamg']['ms_per_sample']} ms; refine to {REFINE_TO:g} "
                f"x{row['refine']['speedup']:.2f} over cold",
                flush=True,
            )
            if contrast == top:
                speedup = row["surrogate_speedup_vs_fastest_exact"]
                goals[f"surrogate >= 5x the fastest exact method, {kind}, contrast {contrast}"] = (
                    goal(5.0, speedup if speedup is not None else float("nan"))
                )
                goals[f"refine to 1e-6 >= 1.5x a cold start, {kind}, contrast {contrast}"] = goal(
                    1.5, row["refine"]["speedup"]
                )
    constant = OnnxSurrogate.load(args.model, args.registry, args.threads)
    for system in CONSTANT_SYSTEMS:
        results[system] = row = constant_row(constant, system, b, n)
        _print_row(system, row, b, f"FFT solve {row['fft_ms_per_sample']:.2f} ms/sample")
    key = f"helmholtz_variation_{HELMHOLTZ_VARIATION:g}"
    results[key] = row = helmholtz_field_row(runner, rng, b, n)
    krylov = row["krylov"]
    _print_row(key, row, b, f"GMRES at that error {krylov['ms_per_sample']} ms "
               f"(tol {krylov['tolerance']})")  # fmt: skip
    if args.merit_grids and not args.quick:
        print("the figure of merit: worth in solver iterations over iterations bought")
        results["merit"], merit_goals = measure_merit(args.registry, args.merit_grids, b)
        goals.update(merit_goals)
        plot_merit(results["merit"], RESULTS / "merit.png")
    results.update(
        model=runner.card.ref if runner.card.name else str(args.model),
        model_resolution=runner.card.resolution,
        resolution=n,
        problems=b,
        top_served_contrast=top,
        timing=f"surrogate and Krylov: one warm-up, then the median of {REPEAT} timed runs of "
        "the batch; pyamg: per sample, setup included",
    )
    png = RESULTS / "crossover.png"
    plot(results, b, png)
    return finish("crossover", results, goals, png)


if __name__ == "__main__":
    raise SystemExit(main())
