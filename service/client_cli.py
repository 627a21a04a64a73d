"""Client-side commands: ``pdeserve solve`` and ``pdeserve emulate`` (no Ray, torch, pydantic)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.client import DEFAULT_URL, Client, PdeserveError

COEFFICIENT_FLAGS = (
    "k11",
    "k22",
    "k12",
    "eigenvalue",
    "angle",
    "conductivity",
    "v1",
    "v2",
    "omega",
)
MODES = ["surrogate", "exact", "validate", "refine", "auto"]


def number_or_field(value: str) -> float | np.ndarray:
    """A coefficient flag: a number, or an (n, n) field in a .npy file."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        return np.load(value, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(
            f"{value!r} is neither a number nor a .npy file ({e})"
        ) from None


def _solver_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tolerance",
        type=float,
        help="field solves: the relative residual (default 1e-8); auto: the error allowed "
        "(default 1e-2)",
    )
    p.add_argument("--max-iterations", type=int, help="Krylov iterations at most (fields)")


def _connection(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"service URL (default {DEFAULT_URL})")
    p.add_argument("--api-key", help="API key (default: $PDESERVE_API_KEY)")
    p.add_argument("--model", help="name[@version] (default: the service's default model)")


def solve_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="pdeserve solve", description="one solve from the shell")
    _connection(p)
    p.add_argument("--pde", required=True, choices=["poisson", "advection_diffusion", "helmholtz"])
    p.add_argument("--source", required=True, help="n x n array (.npy)")
    for name in COEFFICIENT_FLAGS:
        p.add_argument(f"--{name}", type=number_or_field, help="a number or an n x n .npy")
    p.add_argument("--mode", default="surrogate", choices=MODES)
    _solver_options(p)
    p.add_argument("--out", required=True, help="solution (.npy)")
    p.add_argument("--plot", help="PNG of source, solution (and exact and error in validate)")
    args = p.parse_args(argv)
    coefficients = {k: getattr(args, k) for k in COEFFICIENT_FLAGS if getattr(args, k) is not None}
    source = np.load(args.source, allow_pickle=False)
    try:
        with Client(args.url, api_key=args.api_key) as client:
            result = client.solve(
                args.pde,
                source,
                mode=args.mode,
                model=args.model,
                coefficients=coefficients,
                tolerance=args.tolerance,
                max_iterations=args.max_iterations,
            )
    except (PdeserveError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    np.save(args.out, result.solution)
    line = f"{args.pde}: answered by {result.mode}"
    if result.model:
        line += f" ({result.model})"
    if result.reason:
        line += f"; {result.reason}"
    if result.error_estimate is not None:
        line += f"; estimated error {result.error_estimate:.3e}"
    if result.relative_l2 is not None:
        line += f"; relative L2 vs exact {result.relative_l2:.3e}"
    if result.solver is not None:
        report = result.solver
        line += f"; {report['method']} solve, {report['iterations']} iterations"
        if report.get("relative_residual") is not None:
            line += f", relative residual {report['relative_residual']:.2e}"
    timings = ", ".join(f"{k} {v:.1f} ms" for k, v in result.timings_ms.items())
    print(f"{line}; {timings}; wrote {args.out}")
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if args.plot:
        plot_solve(source, result, args.pde, Path(args.plot))
        print(f"wrote {args.plot}")
    return 0


def plot_solve(source: np.ndarray, result, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("source", source), (f"solution ({result.mode})", result.solution)]
    if result.exact_solution is not None:
        panels += [
            ("exact", result.exact_solution),
            (
                f"difference (rel L2 {result.relative_l2:.2e})",
                result.solution - result.exact_solution,
            ),
        ]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, (name, field) in zip(axes[0], panels, strict=True):
        im = ax.imshow(field, origin="lower", extent=(0, 1, 0, 1), cmap="RdBu_r")
        ax.set_title(name, fontsize=10)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def emulate_main(argv: Sequence[str]) -> int:
    from service.emulate import EmulationError, emulate, summary

    p = argparse.ArgumentParser(
        prog="pdeserve emulate",
        description="run a dataset's sources through the service into an HDF5 file; each "
        "batch is kept as it comes back, and an interrupted run continues where it stopped",
    )
    _connection(p)
    p.add_argument("--input", required=True, help="HDF5 dataset (pdeserve's or the authors')")
    p.add_argument("--output", required=True, help="HDF5 file to write")
    p.add_argument(
        "--pde",
        choices=["poisson", "advection_diffusion", "helmholtz"],
        help="the input's system when the file does not say",
    )
    p.add_argument("--mode", default="surrogate", choices=MODES)
    _solver_options(p)
    p.add_argument("--batch-size", type=int, default=32, help="examples per request")
    p.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    try:
        with Client(args.url, api_key=args.api_key) as client:
            out = emulate(
                client,
                args.input,
                args.output,
                pde=args.pde,
                mode=args.mode,
                tolerance=args.tolerance,
                max_iterations=args.max_iterations,
                batch_size=args.batch_size,
                concurrency=args.concurrency,
                progress=not args.quiet,
            )
    except KeyboardInterrupt:
        print(
            f"interrupted: the batches answered so far are kept in {args.output}.partial; "
            "run the same command again to continue (--batch-size and --concurrency may "
            "change)",
            file=sys.stderr,
        )
        return 130
    except (PdeserveError, EmulationError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}: {summary(out)}")
    return 0
