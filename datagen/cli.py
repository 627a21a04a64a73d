"""Command-line entry points of the physics layer: ``datagen``, ``exact``, ``preview``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from datagen.media import FIELD_KINDS
from datagen.spec import (
    DEFAULT_CONTRAST,
    DEFAULT_EIG,
    DEFAULT_FIELD_TOLERANCE,
    DEFAULT_LENGTH,
    DEFAULT_OMEGA,
    DEFAULT_RATIO,
    DEFAULT_VARIATION,
    FieldLaw,
    SamplingRanges,
)
from datagen.systems import SYSTEMS

#: ``exact --check`` fails above this relative L2 difference (the stored files are float32).
DEFAULT_CHECK_TOLERANCE = 1e-5
#: The coefficient-range options: type, systems they apply to, default, what they set.
_RANGE_OPTIONS = {
    "eig": (float, ("poisson", "advection_diffusion"), DEFAULT_EIG, "diffusion eigenvalue range"),
    "ratio": (
        float,
        ("advection_diffusion",),
        DEFAULT_RATIO,
        "advection/diffusion ratio Psi range",
    ),
    "omega": (int, ("helmholtz",), DEFAULT_OMEGA, "Helmholtz wavenumber range, integers"),
}
_DIFFUSION = ("poisson", "advection_diffusion")
#: The field-law options (with --field): type, systems, default, what they set.
_FIELD_OPTIONS = {
    "contrast": (
        float,
        _DIFFUSION,
        DEFAULT_CONTRAST,
        "conductivity contrast max/min (log-uniform)",
    ),
    "length": (float, tuple(SYSTEMS), DEFAULT_LENGTH, "correlation length of the field"),
    "variation": (float, ("helmholtz",), DEFAULT_VARIATION, "relative variation delta of w"),
}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _add_ranges(parser, options: dict) -> None:
    """One ``--NAME A B`` option per entry of a range-option table."""
    for option, (kind, systems, default, what) in options.items():
        parser.add_argument(
            f"--{option}",
            nargs=2,
            type=kind,
            metavar=("A", "B"),
            help=f"{what} ({', '.join(systems)}; default {default[0]:g} {default[1]:g})",
        )


def datagen_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdeserve datagen",
        description="Generate DIR/train.h5, DIR/val.h5 and DIR/test.h5 for one PDE system with "
        "the exact spectral solver (each split seeded apart).",
    )
    p.add_argument("system", choices=list(SYSTEMS), help="PDE system")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n-train", required=True, type=_positive_int, help="training examples")
    p.add_argument("--n-val", required=True, type=_positive_int, help="validation examples")
    p.add_argument("--n-test", required=True, type=_positive_int, help="test examples")
    p.add_argument("--seed", type=_positive_int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--resolution", type=int, default=128, help="grid size n (even, >= 16; default 128)"
    )
    _add_ranges(p, _RANGE_OPTIONS)
    fields = p.add_argument_group(
        "coefficient fields",
        "heterogeneous media: K = a(x) K0 for poisson and advection_diffusion (a conductivity "
        "field of the given contrast), w(x) = w0 (1 + delta s(x)) for helmholtz; solved with "
        "the batched Krylov solver",
    )
    fields.add_argument(
        "--field", choices=FIELD_KINDS, help="field law (default: constant coefficients)"
    )
    _add_ranges(fields, _FIELD_OPTIONS)
    fields.add_argument(
        "--tolerance",
        type=float,
        help=f"relative residual of the field solves (default {DEFAULT_FIELD_TOLERANCE:g})",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="local worker processes (default: one per CPU)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="fan shards out as Ray tasks: 'local' on a private instance started for the run "
        "(loopback only), 'auto' on the running cluster, or HOST:PORT / ray://HOST:10001; "
        "--out must be on storage the nodes share",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def datagen_main(argv: Sequence[str]) -> int:
    from datagen.memory import keep_freed_memory
    from datagen.pipeline import write_splits

    parser = datagen_parser()
    args = parser.parse_args(argv)
    given = [o for o in [*_FIELD_OPTIONS, "tolerance"] if getattr(args, o) is not None]
    if args.field is None and given:
        parser.error(f"--{given[0]} needs --field smooth|two-phase")
    for option, (_, systems, _, _) in {**_RANGE_OPTIONS, **_FIELD_OPTIONS}.items():
        if getattr(args, option) is not None and args.system not in systems:
            parser.error(
                f"--{option} does not apply to {args.system} (only to {', '.join(systems)})"
            )
    try:
        ranges = SamplingRanges(
            eig=tuple(args.eig or DEFAULT_EIG),
            ratio=tuple(args.ratio or DEFAULT_RATIO),
            omega=tuple(args.omega or DEFAULT_OMEGA),
        )
        law = None
        if args.field is not None:
            law = FieldLaw(
                kind=args.field,
                contrast=tuple(args.contrast or DEFAULT_CONTRAST),
                length=tuple(args.length or DEFAULT_LENGTH),
                variation=tuple(args.variation or DEFAULT_VARIATION),
                tolerance=args.tolerance or DEFAULT_FIELD_TOLERANCE,
            )
    except ValueError as e:
        parser.error(str(e))
    if args.n_train + args.n_val + args.n_test == 0:
        parser.error("nothing to generate: --n-train, --n-val and --n-test are all 0")
    if args.resolution < 16 or args.resolution % 2:
        parser.error(f"--resolution must be even and >= 16, got {args.resolution}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    keep_freed_memory()
    t0 = time.perf_counter()
    paths = write_splits(
        args.system,
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        seed=args.seed,
        resolution=args.resolution,
        ranges=ranges,
        field_law=law,
        workers=args.workers,
        ray_address=args.ray_address,
        progress=not args.quiet,
    )
    elapsed = time.perf_counter() - t0
    total = args.n_train + args.n_val + args.n_test
    for split, path in paths.items():
        print(f"{split:>5}: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"{total} examples in {elapsed:.1f} s ({total / elapsed:.0f} examples/s)")
    return 0


def exact_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdeserve exact",
        description="Recompute every solution of a dataset (pdeserve's or the authors' layout) "
        "with the exact solver (the FFT solve, or the Krylov solver where the file has "
        "coefficient fields). With --check, print the relative L2 difference from the stored "
        "solutions as JSON and exit 1 if the largest is above the tolerance.",
    )
    p.add_argument("--input", required=True, type=Path, help="dataset to read")
    p.add_argument("--output", type=Path, help="dataset to write with recomputed solutions")
    p.add_argument("--check", action="store_true", help="compare with the stored solutions")
    p.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_CHECK_TOLERANCE,
        help="largest relative L2 difference --check accepts "
        f"(default {DEFAULT_CHECK_TOLERANCE:g})",
    )
    p.add_argument(
        "--solver-tolerance",
        type=float,
        help="relative residual of the Krylov solves for coefficient fields (default: the "
        f"file's solver_tolerance, else {DEFAULT_FIELD_TOLERANCE:g})",
    )
    p.add_argument("--system", choices=list(SYSTEMS), help="override the system read from the file")
    p.add_argument("--chunk-size", type=int, default=256, help="examples per chunk (default 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def exact_main(argv: Sequence[str]) -> int:
    from tqdm.auto import tqdm

    from datagen.dataset import DatasetWriter, open_dataset
    from datagen.solver import ConvergenceError, relative_l2, solve, solve_detailed

    parser = exact_parser()
    args = parser.parse_args(argv)
    if args.output is None and not args.check:
        parser.error("give --output FILE, --check, or both")
    if args.output is not None and args.output.resolve() == args.input.resolve():
        parser.error("--output must differ from --input")
    try:
        reader = open_dataset(args.input, args.system)
    except (OSError, ValueError) as e:
        print(f"pdeserve exact: {e}", file=sys.stderr)
        return 2
    errors = []
    with reader:
        writer = None
        if args.output is not None:
            attrs = {k: v for k, v in reader.attrs.items() if k not in ("format", "format_version")}
            attrs.update({"recomputed_from": str(args.input), "recomputed_by": "pdeserve exact"})
            writer = DatasetWriter(
                args.output,
                reader.system,
                len(reader),
                reader.resolution,
                attrs,
                field_columns=reader.field_columns,
                extras=reader.extra_columns,
            )
        solver_tolerance = args.solver_tolerance or float(
            reader.attrs.get("solver_tolerance", DEFAULT_FIELD_TOLERANCE)
        )
        try:
            bar = tqdm(
                total=len(reader), unit="ex", desc=f"exact {reader.system.name}", disable=args.quiet
            )
            for chunk in reader.chunks(args.chunk_size):
                # Stored float32 sources are zero-mean only to rounding: project.
                if not reader.has_fields:
                    u = solve(reader.system, chunk.sources, chunk.coefficients, mean="project")
                else:
                    solved = solve_detailed(
                        reader.system,
                        chunk.sources,
                        chunk.unified(),
                        mean="project",
                        tolerance=solver_tolerance,
                    )
                    u = solved.solutions  # and the solves of this run, not of the input's
                    chunk.extras["iterations"] = solved.iterations
                    chunk.extras["relative_residual"] = solved.relative_residual
                if args.check:
                    errors.append(relative_l2(u, chunk.solutions))
                if writer is not None:
                    writer.write(
                        chunk.start,
                        chunk.coefficients,
                        sources=chunk.sources,
                        solutions=u,
                        sparsity=chunk.sparsity,
                        psi=chunk.psi,
                        coefficient_fields=chunk.coefficient_fields,
                        extras=chunk.extras,
                    )
                bar.update(len(chunk))
            bar.close()
            if writer is not None:
                writer.commit()
                print(f"wrote {args.output}", file=sys.stderr)
        except ConvergenceError as e:
            if writer is not None:
                writer.abort()
            print(
                f"pdeserve exact: {args.input}, chunk at example {chunk.start}: {e}",
                file=sys.stderr,
            )
            return 1
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
    if not args.check:
        return 0
    err = np.concatenate(errors)
    report = {
        "input": str(args.input),
        "system": reader.system.name,
        "layout": reader.layout,
        "n": int(err.size),
        "mean_relative_l2": float(err.mean()),
        "max_relative_l2": float(err.max()),
        "tolerance": args.tolerance,
        "ok": bool(err.max() <= args.tolerance),
    }
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


def preview_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pdeserve preview",
        description="Plot sources and solutions side by side, a few examples per sparsity level.",
    )
    p.add_argument("file", type=Path, help="dataset (pdeserve's or the authors' layout)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument(
        "--per-level", type=int, default=2, help="examples per sparsity level (default 2)"
    )
    p.add_argument("--dpi", type=int, default=90, help="resolution of the PNG (default 90)")
    return p


def preview_main(argv: Sequence[str]) -> int:
    from datagen.preview import plot_preview

    args = preview_parser().parse_args(argv)
    try:
        out = plot_preview(args.file, args.out, per_level=args.per_level, dpi=args.dpi)
    except (OSError, ValueError) as e:
        print(f"pdeserve preview: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0
