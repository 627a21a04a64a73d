"""The surrogate's figure of merit: how many exact-solver iterations its answer is worth,
over how many iterations its cost buys, per medium, contrast band and grid.

    .venv/bin/python -m bench.merit [--registry models] [--grids 128 256 512 1024]
        [--problems 32] [--no-served] [--quick]

(Also run by ``bench/crossover.py``, whose JSON keeps the result under ``merit``.)

For Darcy media (K = a(x) K_SYS-1, the held-out test sets' law: smooth and two-phase, contrast
2..10 and 10..100, correlation length 0.05..0.3, the paper's sources) at each grid:

- worth: the iterations k at which pdeserve's exact solver, as the service runs it (CG from
  zero, the preconditioner chosen per problem), matches the surrogate's mean relative L2
  error; fractional, interpolated in log(error) between k - 1 and k (a zero start has
  error 1);
- bought: the surrogate's ms per sample over the ms of one solver iteration per sample,
  both batched (B problems; at 1024^2 B / 4) and one problem at a time;
- merit = worth / bought: above 1 the surrogate's answer is cheaper than the iterations it
  replaces.

The surrogate is measured raw (the model's fields graph in ONNX Runtime, resampled to and
from its grid) and served (``POST /v2/infer`` through the SDK's binary protocol, mode
surrogate, the error estimate included; a batch as large as the body cap allows), for the
model routing picks for the band (:mod:`service.routing`) and for the foundation model.
Goals (issue 31, 128^2, raw, batch B): merit >= 5 on both contrast-10..100 bands, >= 2 on
both 2..10 bands; (issue 37) served merit >= 0.8x raw merit on every row, batched.
Writes bench/results/merit.json and merit.png.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from bench.common import (
    RESULTS,
    finish,
    goal,
    krylov_solve,
    start_service,
    stop_service,
    timed,
)
from datagen.coefficients import reference as reference_coefficients
from datagen.generate import generate_block
from datagen.solver import relative_l2
from datagen.spec import FieldLaw, SplitSpec
from modelstore.registry import DEFAULT_REGISTRY, Registry
from modelstore.runner import OnnxSurrogate
from service.envelope import field_statistics
from service.routing import route

BANDS = {"2..10": (2.0, 10.0), "10..100": (10.0, 100.0)}
KINDS = ("smooth", "two-phase")
GRIDS = (128, 256, 512, 1024)
#: Beyond this grid the B problems shrink with the grid's area (the reference solves' memory).
FULL_BATCH_GRID = 512
#: Served merit over raw merit at every grid (issue 37), in a batch.
SERVED_SHARE = 0.8
GOALS = {"2..10": 2.0, "10..100": 5.0}
#: Iterations at most when looking for the surrogate's worth.
MAX_WORTH = 4096
#: Iteration cost: the difference of solves capped at these iteration counts.
COST_ITERATIONS = (2, 12)
#: One-at-a-time timings on this many of the B problems.
SINGLE = 4
#: The served batch's body stays under this share of the service's cap.
BODY_SHARE = 0.75


def batch_at(n: int, b: int) -> int:
    """How many problems a row at grid n takes: b up to FULL_BATCH_GRID, then fewer."""
    return b if n <= FULL_BATCH_GRID else max(2, b * FULL_BATCH_GRID**2 // n**2)


def problems(kind: str, band: tuple[float, float], n: int, b: int, seed: int):
    """B held-out problems of the law the cards' test sets use, with their exact solutions."""
    law = FieldLaw(kind=kind, contrast=band)
    spec = SplitSpec("poisson", b, "test", n, seed, field_law=law, block_size=b)
    block = generate_block(spec, 0, dtype=np.float64)
    return block.sources, block.unified(), block.solutions


def capped(f, fields, k: int):
    """The exact solver stopped after ``k`` iterations (its tolerance out of reach)."""
    return krylov_solve(f, fields, 1e-13, preconditioner="auto", max_iterations=k)


def worth(f, fields, reference, target: float) -> dict:
    """The iterations at which the solver's mean error reaches ``target``."""
    errors = {0: 1.0}

    def error(k: int) -> float:
        if k not in errors:
            errors[k] = float(relative_l2(capped(f, fields, k).solutions, reference).mean())
        return errors[k]

    hi = 1
    while error(hi) > target:
        if hi >= MAX_WORTH:
            return {"iterations": None, "errors": errors}
        hi = min(2 * hi, MAX_WORTH)
    lo = hi // 2 if hi > 1 else 0  # error(lo) > target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if error(mid) > target else (lo, mid)
    e_lo, e_hi = error(lo), error(hi)
    frac = np.log(e_lo / target) / np.log(e_lo / e_hi) if e_lo > e_hi else 1.0
    return {"iterations": float(lo + frac), "errors": {k: errors[k] for k in sorted(errors)}}


def iteration_ms(f, fields) -> dict:
    """ms of one solver iteration per sample: batched, and one problem at a time."""
    k1, k2 = COST_ITERATIONS

    def per_iteration(ff, cc) -> float:
        _, t1 = timed(lambda: capped(ff, cc, k1))
        _, t2 = timed(lambda: capped(ff, cc, k2))
        return 1e3 * (t2 - t1) / (k2 - k1) / len(ff)

    single = [per_iteration(f[i : i + 1], fields[i : i + 1]) for i in range(SINGLE)]
    return {"batch": per_iteration(f, fields), "batch_1": float(np.median(single))}


def raw_ms(runner: OnnxSurrogate, f, fields) -> tuple[np.ndarray, dict]:
    b = len(f)
    out, t_batch = timed(lambda: runner.predict(f, fields, batch=b))
    _, t_one = timed(
        lambda: [runner.predict(f[i : i + 1], fields[i : i + 1]) for i in range(SINGLE)]
    )
    return out, {"batch": 1e3 * t_batch / b, "batch_1": 1e3 * t_one / SINGLE}


def served_ms(client, f, fields, model: str | None, cap_bytes: int) -> dict:
    """ms per sample through the service: one request per problem, and one request of as
    many problems as the body cap takes (float32 source and three K fields each)."""
    per_problem = 4 * f[0].size * 4
    batch = max(1, min(len(f), int(BODY_SHARE * cap_bytes) // per_problem))

    def send(count: int, size: int) -> list:
        return client.solve_batch("poisson", f[:count], fields[:count], model=model,
                                  batch_size=size, concurrency=1, progress=False)  # fmt: skip

    out, t_batch = timed(lambda: send(batch, batch))
    _, t_one = timed(lambda: send(SINGLE, 1))
    models = sorted({str(r.model) for r in out.results})
    return {"batch": 1e3 * t_batch / batch, "batch_1": 1e3 * t_one / SINGLE,
            "batch_size": batch, "models": models}  # fmt: skip


def merit(worth_iterations: float | None, surrogate: dict, iteration: dict) -> dict:
    if worth_iterations is None:
        return {"batch": None, "batch_1": None}
    return {k: worth_iterations / (surrogate[k] / iteration[k]) for k in ("batch", "batch_1")}


def routed_model(cards, default, f, fields) -> str:
    """The model routing picks for the band's problems (the first problem's choice; the
    band's problems share it)."""
    c = fields[0]
    stats = field_statistics(c)
    return route(
        cards, default, "poisson", f[0], c, stats, reference_coefficients(c[None])
    ).card.ref


def model_entry(runner: OnnxSurrogate, f, fields, reference, iteration: dict) -> dict:
    """One model on one row: its error, worth, raw cost and merit."""
    out, raw = raw_ms(runner, f, fields)
    error = float(relative_l2(out, reference).mean())
    w = worth(f, fields, reference, error)
    return {
        "model": runner.card.ref,
        "error": error,
        "worth": w["iterations"],
        "raw_ms": raw,
        "raw_merit": merit(w["iterations"], raw, iteration),
        "solver_errors": w["errors"],
    }


class Service:
    """The service on the registry (:func:`bench.common.start_service`) and an SDK client."""

    def __init__(self, registry: str):
        from service.client import Client
        from service.settings import ServiceSettings

        settings = ServiceSettings(registry=registry, default_model="default")
        self.app = start_service(settings)
        self.client = Client(self.app.url, timeout=600, dtype="float32")
        self.cap = settings.max_body_bytes

    def close(self) -> None:
        self.client.close()
        stop_service()


def measure(registry: str, grids, b: int, served: bool = True) -> tuple[dict, dict]:
    reg = Registry(registry)
    cards = [reg.card(name) for name in reg.names()]
    default = reg.card("default")
    runners: dict[str, OnnxSurrogate] = {}
    service = Service(registry) if served else None
    results: dict = {}
    goals: dict = {}
    try:
        for n in grids:
            b_n = batch_at(n, b)
            for kind in KINDS:
                for band_name, band in BANDS.items():
                    f, fields, reference = problems(kind, band, n, b_n, seed=31 + n)
                    iteration = iteration_ms(f, fields)
                    row: dict = {"iteration_ms": iteration, "problems": b_n, "models": {}}
                    chosen = routed_model(cards, default, f, fields)
                    for role, ref in (("routed", chosen), ("foundation", default.ref)):
                        if ref not in runners:
                            runners[ref] = OnnxSurrogate.load(ref, registry, fields=True)
                        entry = model_entry(runners[ref], f, fields, reference, iteration)
                        if service is not None:
                            name = None if role == "routed" else ref  # routed: none named
                            s = served_ms(service.client, f, fields, name, service.cap)
                            entry |= {
                                "served_ms": s,
                                "served_merit": merit(entry["worth"], s, iteration),
                            }
                        row["models"][role] = entry
                    key = f"{n}_{kind}_{band_name}"
                    results[key] = row
                    report(key, row, b_n)
                    routed = row["models"]["routed"]
                    m = routed["raw_merit"]["batch"]
                    if "served_merit" in routed and m:
                        share = (routed["served_merit"]["batch"] or 0.0) / m
                        goals[f"served merit >= {SERVED_SHARE:g}x raw, {key}"] = goal(
                            SERVED_SHARE, share
                        )
                    if n == 128:
                        goals[f"merit >= {GOALS[band_name]:g}, {kind} {band_name}, 128^2"] = goal(
                            GOALS[band_name], m if m is not None else float("nan")
                        )
    finally:
        if service is not None:
            service.close()
    results["problems"] = b
    results["timing"] = (
        "raw: one warm-up, then the median of 3 timed runs; iteration cost: solves capped at "
        f"{COST_ITERATIONS} iterations, differenced"
    )
    return results, goals


def report(key: str, row: dict, b: int) -> None:
    for role, r in row["models"].items():
        served = r.get("served_merit", {}).get("batch")
        raw = r["raw_merit"]["batch"] or float("nan")
        print(
            f"{key:22s} {role:10s} {r['model']}: error {r['error']:.3g} = {r['worth']} "
            f"iterations; an iteration {row['iteration_ms']['batch']:.3f} ms/sample (batch {b}), "
            f"the surrogate {r['raw_ms']['batch']:.2f}: merit {raw:.2f} raw"
            + (f", {served:.2f} served" if served is not None else ""),
            flush=True,
        )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in results if isinstance(results[k], dict) and "models" in results[k]]
    fig, ax = plt.subplots(figsize=(9, 4.2))
    labels = [k.replace("_", " ") for k in keys]
    x = np.arange(len(keys))
    series = [
        ("routed", "raw_merit", "routed model, raw"),
        ("foundation", "raw_merit", "foundation, raw"),
        ("routed", "served_merit", "routed model, served"),
    ]
    width = 0.8 / len(series)
    for i, (role, what, label) in enumerate(series):
        ys = [(results[k]["models"][role].get(what) or {}).get("batch") for k in keys]
        ax.bar(x + i * width, [np.nan if y is None else y for y in ys], width, label=label)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(x + width, labels, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("merit: iterations worth / iterations bought")
    ax.set_title(f"The surrogate's figure of merit (batch {results['problems']})")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--registry", default=DEFAULT_REGISTRY)
    p.add_argument("--grids", type=int, nargs="+", default=list(GRIDS))
    p.add_argument("--problems", type=int, default=32)
    p.add_argument("--no-served", action="store_true", help="raw ONNX Runtime only")
    p.add_argument("--quick", action="store_true", help="128^2, 8 problems, raw only")
    args = p.parse_args()
    grids, b = ((128,), 8) if args.quick else (tuple(args.grids), args.problems)
    t0 = time.perf_counter()
    results, goals = measure(args.registry, grids, b, served=not (args.no_served or args.quick))
    results["seconds"] = round(time.perf_counter() - t0, 1)
    png = RESULTS / "merit.png"
    plot(results, png)
    return finish("merit", results, goals, png)


if __name__ == "__main__":
    raise SystemExit(main())
