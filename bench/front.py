"""What a user pays per answer, raw and through the service, per row of the README's table.

    .venv/bin/python -m bench.front [--model NAME[@VERSION]] [--registry DIR] [--quick]

For each row of the README's front table, on B problems at 128^2 (32; ``--quick``: 8): the
three constant-coefficient systems (their test law), Darcy media (K = a(x) 0.01 I, smooth
and two-phase at contrasts 10 and 100, ``bench/crossover.py``'s problems) and Helmholtz
with w varying by 30%:

- raw: the model in ONNX Runtime in this process (before the service starts), ms per
  answer in a batch of B and one problem at a time; the exact solver one problem at a time
  (the FFT solve, or pdeserve's Krylov solver to a residual of 1e-2);
- served: the SDK over the binary protocol to the service on a private Ray instance, mode
  surrogate (the error estimate included) in one request of B problems and in one request
  per problem, and mode exact one request per problem (1e-2, the loosest residual exact
  mode takes; constant coefficients: the FFT solve), no model named (routed).

"Pays" compares what a user waits for one answer through the service: the surrogate's
(its error the card's) against the exact solver's. Writes bench/results/front.json.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.common import finish, krylov_solve, timed
from bench.crossover import CONSTANT_SYSTEMS, HELMHOLTZ_VARIATION
from bench.fields import diffusion_problems, helmholtz_problems
from bench.merit import Service
from datagen.generate import generate_block
from datagen.solver import solve
from datagen.spec import SplitSpec
from modelstore.registry import DEFAULT_REGISTRY
from modelstore.runner import OnnxSurrogate

N = 128
#: Problems timed one at a time (of the B).
SINGLE = 8
#: The residual of served exact answers and raw Krylov solves: exact mode's loosest.
EXACT_TOLERANCE = 1e-2
MEDIA = (("smooth", 10), ("smooth", 100), ("two-phase", 10), ("two-phase", 100))


def rows(b: int, n: int) -> dict[str, tuple[str, np.ndarray, np.ndarray]]:
    """name -> (pde, sources (B, n, n), coefficients (B, 6) or (B, 6, n, n))."""
    out = {}
    for system in CONSTANT_SYSTEMS:
        block = generate_block(SplitSpec(system, b, "test", n, 2026), 0)
        out[system] = (system, block.sources.astype(np.float64), block.coefficients)
    rng = np.random.default_rng(2026)
    for kind, contrast in MEDIA:
        f, fields = diffusion_problems(rng, b, kind, contrast, n=n)
        out[f"{kind}_contrast_{contrast}"] = ("poisson", f, fields)
    f, fields = helmholtz_problems(rng, b, HELMHOLTZ_VARIATION, n=n)
    out[f"helmholtz_variation_{HELMHOLTZ_VARIATION:g}"] = ("helmholtz", f, fields)
    return out


def one_at_a_time(fn, count: int) -> float:
    """ms per call of fn(i) over i < count, the median of three passes after a warm one."""
    _, seconds = timed(lambda: [fn(i) for i in range(count)])
    return 1e3 * seconds / count


def raw(runner: OnnxSurrogate, pde: str, f, c) -> dict:
    b = len(f)
    _, t_batch = timed(lambda: runner.predict(f, c, batch=b))
    field = c.ndim == 4

    def exact(i: int):
        if field:
            return krylov_solve(f[i : i + 1], c[i : i + 1], EXACT_TOLERANCE, system=pde)
        return solve(pde, f[i : i + 1], c[i : i + 1], mean="project")

    return {
        "surrogate_batch": 1e3 * t_batch / b,
        "surrogate_alone": one_at_a_time(
            lambda i: runner.predict(f[i : i + 1], c[i : i + 1]), SINGLE
        ),
        "exact_alone": one_at_a_time(exact, SINGLE),
    }


def served(client, pde: str, f, c) -> dict:
    b = len(f)
    field = c.ndim == 4

    def send(count: int, size: int, mode: str = "surrogate"):
        tolerance = EXACT_TOLERANCE if mode == "exact" and field else None
        return client.solve_batch(pde, f[:count], c[:count], mode=mode, batch_size=size,
                                  concurrency=1, progress=False, tolerance=tolerance)  # fmt: skip

    out, t_batch = timed(lambda: send(b, b))
    return {
        "surrogate_batch": 1e3 * t_batch / b,
        "surrogate_alone": 1e3 * timed(lambda: send(SINGLE, 1))[1] / SINGLE,
        "exact_alone": 1e3 * timed(lambda: send(SINGLE, 1, "exact"))[1] / SINGLE,
        "models": sorted({str(r.model) for r in out.results}),
    }


def verdict(s: dict) -> str:
    """Does the surrogate pay, one answer through the service?"""
    ratio = s["exact_alone"] / s["surrogate_alone"]
    return f"yes, {ratio:.1f}x" if ratio > 1 else f"no: exact is {1 / ratio:.1f}x cheaper"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default", help="the raw figures' model (NAME[@VERSION])")
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--quick", action="store_true", help="8 problems a row")
    args = p.parse_args()
    b = 8 if args.quick else 32
    t0 = time.perf_counter()
    problems = rows(b, N)
    runners = {
        field: OnnxSurrogate.load(args.model, args.registry, fields=field) for field in (0, 1)
    }
    results: dict = {name: {"raw": raw(runners[c.ndim == 4], pde, f, c)}
                     for name, (pde, f, c) in problems.items()}  # fmt: skip
    service = Service(args.registry)
    try:
        for name, (pde, f, c) in problems.items():
            row = results[name]
            row["served"] = s = served(service.client, pde, f, c)
            row["served_over_raw"] = {k: s[k] / row["raw"][k] for k in row["raw"]}
            row["surrogate_pays"] = verdict(s)
            r = row["raw"]
            print(
                f"{name:24s} surrogate raw {r['surrogate_batch']:.1f} (batch {b}) "
                f"{r['surrogate_alone']:.1f} (alone), served {s['surrogate_batch']:.1f} / "
                f"{s['surrogate_alone']:.1f}; exact raw {r['exact_alone']:.1f}, served "
                f"{s['exact_alone']:.1f} ms/answer; pays: {row['surrogate_pays']}",
                flush=True,
            )
    finally:
        service.close()
    ratios = [v for row in results.values() for v in row["served_over_raw"].values()]
    results.update(
        model=args.model,
        resolution=N,
        problems=b,
        served_over_raw_median=statistics.median(ratios),
        seconds=round(time.perf_counter() - t0, 1),
        timing="one warm-up, then the median of 3 timed runs (of the batch, or of "
        f"{SINGLE} problems one at a time)",
    )
    return finish("front", results, {})


if __name__ == "__main__":
    raise SystemExit(main())
