"""auto against the fixed strategies a user has, on a mixed workload over HTTP.

    .venv/bin/python -m bench.workload [--model NAME[@VERSION]] [--quick] [--encoding json|binary]

A seeded mix of single requests (concurrency 1, the SDK over HTTP to the service on a
private Ray instance): constant coefficients (the three systems) and Darcy media (smooth
and two-phase conductivities of contrast 1..10, 10..100, 100..1000 times the paper's K0),
grids 64..512, each asked at an error tolerance of 1e-1, 5e-2, 1e-2, 1e-4 or 1e-6 through
three strategies, paired (each request goes through all three, in rotating order):

- auto (``mode=auto``, the tolerance as the error allowed);
- always-exact (``mode=exact`` to the residual auto's exact solves use for the tolerance,
  within exact mode's limit of 1e-2: the loosest a user may ask that still meets it;
  constant problems take the FFT solve either way);
- always-refine (``mode=refine``, the same residual, started from the model's answer).

Every answer's error is checked against a reference solved here to a residual of
1e-10. Writes
bench/results/workload.json and workload.png (time per class and strategy). Goals: per
class, auto within 1.05x of the faster fixed strategy; over the whole mix at tolerances
>= 5e-2, auto >= 1.5x faster than always-exact; at tolerances <= 1e-2, never more than
1.1x slower than always-exact.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bench.common import RESULTS, finish, goal
from datagen import media, sources
from datagen.solver import relative_l2, solve
from modelstore.registry import BUNDLED_REGISTRY
from service import embedded
from service.client import Client
from service.plan import AUTO_MAX_RESIDUAL, AUTO_RESIDUAL_FRACTION
from service.schema import MAX_TOLERANCE, MIN_TOLERANCE
from service.settings import ServiceSettings

KINDS = ("constant", "smooth", "two-phase")
BANDS = ((1.0, 10.0), (10.0, 100.0), (100.0, 1000.0))
GRIDS = (64, 128, 256, 512)
TOLERANCES = (1e-1, 5e-2, 1e-2, 1e-4, 1e-6)
STRATEGIES = ("auto", "exact", "refine")
LENGTH = 0.15


@dataclass
class Request:
    kind: str
    band: tuple[float, float] | None
    n: int
    tolerance: float
    pde: str
    source: np.ndarray
    coefficients: dict
    reference: np.ndarray
    times: dict[str, float] = field(default_factory=dict)
    errors: dict[str, float] = field(default_factory=dict)
    answered: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if self.kind == "constant":
            return "constant"
        return f"{self.kind} {self.band[0]:g}..{self.band[1]:g}"


def make_requests(count: int, seed: int) -> list[Request]:
    """``count`` requests per class (kind and contrast band), grids and tolerances drawn."""
    rng = np.random.default_rng(seed)
    out = []
    classes = [("constant", None)] + [(k, b) for k in KINDS[1:] for b in BANDS]
    for kind, band in classes:
        for _ in range(count):
            n = int(rng.choice(GRIDS, p=[0.3, 0.3, 0.25, 0.15]))
            tol = float(rng.choice(TOLERANCES))
            out.append(_request(rng, kind, band, n, tol))
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _request(rng, kind, band, n, tol) -> Request:
    pde = "poisson" if kind != "constant" else str(rng.choice(["poisson", "helmholtz"]))
    weights = sources.sample_weights(rng, sources.sparsity_for_indices(np.arange(1)))
    f = sources.build_sources(weights, n, zero_mean=pde != "helmholtz")[0][0]
    if pde == "helmholtz":
        coefficients = {"omega": float(rng.integers(1, 11))}
    else:
        coefficients = {"eigenvalue": float(rng.uniform(1, 5)), "angle": float(rng.uniform(0, 6))}
    if kind != "constant":
        c = float(np.exp(rng.uniform(np.log(band[0]), np.log(band[1]))))
        g = media.gaussian_random_fields(rng, np.array([LENGTH]), n)
        coefficients["conductivity"] = media.conductivity(g, np.array([c]), kind)[0]
    reference = _reference(pde, f, coefficients)
    return Request(kind, band, n, tol, pde, f, coefficients, reference)


def _reference(pde: str, f: np.ndarray, coefficients: dict) -> np.ndarray:
    from pydantic import TypeAdapter

    from service.schema import SolveRequest

    body = {"pde": pde, "source": f.tolist(), "coefficients": _listed(coefficients)}
    unified = TypeAdapter(SolveRequest).validate_python(body).unified()
    return solve(pde, f, unified, mean="project", tolerance=1e-10, max_iterations=20_000)


def _listed(coefficients: dict) -> dict:
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in coefficients.items()}


def fixed_residual(r: Request) -> float:
    """The residual a fixed strategy solves to: the one auto's exact solves use for this
    error tolerance (:data:`service.plan.AUTO_RESIDUAL_FRACTION`), within what exact and
    refine accept (at most MAX_TOLERANCE): the loosest that meets the tolerance."""
    method = "gmres" if r.pde != "poisson" else "cg"
    residual = min(AUTO_MAX_RESIDUAL, AUTO_RESIDUAL_FRACTION[method] * r.tolerance)
    return max(MIN_TOLERANCE, min(MAX_TOLERANCE, residual))


def send(client: Client, r: Request, strategy: str) -> None:
    mode = strategy
    tolerance = r.tolerance if strategy == "auto" else fixed_residual(r)
    t0 = time.perf_counter()
    result = client.solve(
        r.pde, r.source, mode=mode, tolerance=tolerance, max_iterations=10_000, **r.coefficients
    )
    r.times[strategy] = 1e3 * (time.perf_counter() - t0)
    r.errors[strategy] = float(relative_l2(result.solution[None], r.reference[None])[0])
    r.answered[strategy] = result.mode


def summarise(requests: list[Request]) -> dict:
    classes: dict[str, list[Request]] = {}
    for r in requests:
        classes.setdefault(r.label, []).append(r)
    per_class = {}
    for label, rs in classes.items():
        totals = {s: sum(r.times[s] for r in rs) for s in STRATEGIES}
        best = min(totals["exact"], totals["refine"])
        per_class[label] = {
            "requests": len(rs),
            "total_ms": {s: round(v, 1) for s, v in totals.items()},
            "auto_over_best_fixed": round(totals["auto"] / best, 3),
            "auto_answered": _counts(r.answered["auto"] for r in rs),
            "within_tolerance": {s: _within(rs, s) for s in STRATEGIES},
        }
    loose = [r for r in requests if r.tolerance >= 5e-2]
    tight = [r for r in requests if r.tolerance <= 1e-2]
    return {
        "classes": per_class,
        "loose_exact_over_auto": round(_total(loose, "exact") / _total(loose, "auto"), 3),
        "tight_auto_over_exact": round(_total(tight, "auto") / _total(tight, "exact"), 3),
        "median_ms": {
            s: round(statistics.median(r.times[s] for r in requests), 2) for s in STRATEGIES
        },
        "auto_within_tolerance": f"{_within(requests, 'auto')}/{len(requests)}",
    }


def _within(rs: list[Request], strategy: str) -> int:
    return sum(r.errors[strategy] <= r.tolerance * 1.0001 for r in rs)


def _total(rs: list[Request], strategy: str) -> float:
    return sum(r.times[strategy] for r in rs)


def _counts(values) -> dict[str, int]:
    out: dict[str, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def plot(summary: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(summary["classes"])
    x = np.arange(len(labels))
    fig, ax = plt.subplots(figsize=(10, 4))
    for i, s in enumerate(STRATEGIES):
        means = [
            summary["classes"][c]["total_ms"][s] / summary["classes"][c]["requests"] for c in labels
        ]
        ax.bar(x + (i - 1) * 0.27, means, 0.27, label=s)
    ax.set_xticks(x, labels, rotation=20, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("mean round trip per request, ms")
    ax.set_title("auto against always-exact and always-refine (single requests over HTTP)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--registry", default=str(BUNDLED_REGISTRY))
    p.add_argument("--quick", action="store_true", help="4 requests per class, not 12")
    p.add_argument("--seed", type=int, default=2029)
    args = p.parse_args()
    count = 4 if args.quick else 12
    print("making the workload and its references ...", flush=True)
    requests = make_requests(count, args.seed)
    settings = ServiceSettings(registry=args.registry, default_model=args.model)
    app = embedded.start(settings, port=embedded.free_port(), num_cpus=2, log_to_driver=False)
    try:
        not_ready = embedded.wait_ready(app.url)
        if not_ready:
            raise RuntimeError(f"the service did not become ready: {not_ready}")
        with Client(app.url, timeout=300) as client:
            for n in GRIDS:  # warm every grid's path once, untimed
                warm = _request(np.random.default_rng(n), "smooth", (2.0, 5.0), n, 1e-2)
                for s in STRATEGIES:
                    send(client, warm, s)
            for i, r in enumerate(requests):
                order = STRATEGIES[i % 3 :] + STRATEGIES[: i % 3]
                for s in order:
                    send(client, r, s)
    finally:
        embedded.stop()
    summary = summarise(requests)
    head = ("class", "n", "auto ms", "exact ms", "refine ms", "auto/best")
    print("{:<22} {:>3} {:>9} {:>9} {:>9} {:>9}  auto answered".format(*head))
    for label, c in summary["classes"].items():
        t = c["total_ms"]
        print(
            f"{label:<22} {c['requests']:>3} {t['auto']:>9.0f} {t['exact']:>9.0f} "
            f"{t['refine']:>9.0f} {c['auto_over_best_fixed']:>9.2f}  {c['auto_answered']}"
        )
    print(
        f"tolerances >= 5e-2: always-exact / auto = {summary['loose_exact_over_auto']}; "
        f"<= 1e-2: auto / always-exact = {summary['tight_auto_over_exact']}; auto within "
        f"tolerance {summary['auto_within_tolerance']}"
    )
    worst = max(c["auto_over_best_fixed"] for c in summary["classes"].values())
    goals = {
        "auto_over_best_fixed_per_class_max": goal(1.05, worst, higher_is_better=False),
        "loose_exact_over_auto": goal(1.5, summary["loose_exact_over_auto"]),
        "tight_auto_over_exact": goal(
            1.1, summary["tight_auto_over_exact"], higher_is_better=False
        ),
    }
    results = {"model": args.model, "requests_per_class": count, "seed": args.seed} | summary
    results["requests"] = [
        {
            "class": r.label,
            "n": r.n,
            "tolerance": r.tolerance,
            "ms": {s: round(v, 2) for s, v in r.times.items()},
            "answered": r.answered,
            "error": {s: float(f"{v:.3g}") for s, v in r.errors.items()},
        }
        for r in requests
    ]
    png = plot(summary, RESULTS / "workload.png")
    return finish("workload", results, goals, png)


if __name__ == "__main__":
    sys.exit(main())
