"""What a user pays through the service, against the model and the solver run raw.

    .venv/bin/python -m bench.request_path [--model NAME[@VERSION]] [--quick]

On Darcy problems (a smooth conductivity of contrast 5 times 0.01 I, a Gaussian source)
at 64^2..512^2, the service on a private Ray instance, and in this process the same
model and solver raw, medians of paired rounds:

- raw: the model's fields graph (``modelstore.runner.OnnxSurrogate``) on one problem
  and per problem in a batch (24 at 128^2, 8 at 512^2; 32 at 128^2 for its fixed cost),
  and the Krylov solver (``datagen.solver.solve_detailed``) to a relative residual of
  1e-2;
- served: one surrogate request through the SDK, binary (the KServe v2 protocol) and
  JSON (base64 arrays), its error estimate included; the batches as one binary request;
  one exact request to a residual of 1e-2 (binary);
- inside the service (the answer's ``timings_ms``): the model and the error estimate;
  here, in this process, what the request path does beside them: decode and validate
  the request, plan it (envelope, reference coefficients) and encode the answer.

Writes bench/results/request_path.json. Goals (issue "the service costs what its work
costs"): a served surrogate answer <= 1.5x the raw model per problem in batches (128^2,
512^2) and <= 2x alone at 128^2; a served exact answer <= 1.3x the raw solve at 128^2;
at 512^2 a surrogate request <= 0.25x an exact one; the error estimate <= 0.3x the model
at every grid; the raw model's fixed cost (one problem) <= 2x its cost per problem in a
batch of 32.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from bench.common import finish, goal, timed
from datagen.solver import solve_detailed
from modelstore.registry import BUNDLED_REGISTRY, Registry
from modelstore.runner import OnnxSurrogate
from service import embedded, infer, v2
from service.client import Client, coefficient_rows
from service.costs import CostModel, calibration_problem
from service.edge import SOLVE_REQUEST
from service.plan import Answer, plan_request
from service.schema import SolveResponse, encode_like
from service.settings import ServiceSettings
from service.wire import encode_array

GRIDS = (64, 128, 256, 512)
#: Problems per batch by grid (the issue's cases), and the batch the fixed cost is read in.
BATCHES = {128: 24, 512: 8}
FIXED_COST_BATCH = 32


def problem(n: int) -> tuple[np.ndarray, np.ndarray]:
    source, coefficients = calibration_problem(n, 5.0)
    return source, coefficients[0] / 0.01  # the conductivity a(x): K = a 0.01 I


def named(a: np.ndarray) -> dict:
    return {"k11": 0.01, "k22": 0.01, "k12": 0.0, "conductivity": a}


def raw(runner: OnnxSurrogate, n: int, repeats: int) -> dict[str, float]:
    """ms of the raw model (one problem, and per problem in a batch) and of the raw solve."""
    f, a = problem(n)
    c = _unified(a)
    out = {"raw_model": 1e3 * timed(lambda: runner.predict(f[None], c[None]), repeats)[1]}
    for size in {BATCHES.get(n), FIXED_COST_BATCH if n == 128 else None} - {None}:
        fs, cs = np.repeat(f[None], size, 0), np.repeat(c[None], size, 0)
        ms = 1e3 * timed(lambda fs=fs, cs=cs: runner.predict(fs, cs), repeats)[1]
        out[f"raw_model_batch{size}"] = ms / size
    solve = lambda: solve_detailed("poisson", f[None], c[None].astype(np.float64),  # noqa: E731
                                   mean="project", tolerance=1e-2)  # fmt: skip
    out["raw_exact"] = 1e3 * timed(solve, repeats)[1]
    return out


def _unified(a: np.ndarray) -> np.ndarray:
    from datagen.systems import unified_field

    k = 0.01 * a
    return unified_field(k, k, 0.0 * k).astype(np.float32)


def path_here(n: int, card, repeats: int) -> dict[str, float]:
    """ms of the request path beside the model, in this process: binary and JSON."""
    f, a = problem(n)
    u = 0.9 * f
    named = {"k11": 0.01, "k22": 0.01, "k12": 0.0, "conductivity": a}
    rows = coefficient_rows("poisson", 1, None, named)
    client = Client.__new__(Client)
    client.dtype = "float32"
    data, headers = client._v2_body("poisson", f[None], rows, "surrogate", {}, single=True)
    json_body = json.dumps(
        {
            "pde": "poisson",
            "source": encode_array(f),
            "coefficients": {**{k: v for k, v in named.items() if k != "conductivity"}}
            | {"conductivity": encode_array(a)},
            "mode": "surrogate",
        }
    ).encode()
    costs, lookup = CostModel(), (lambda ref, loc: card)

    def binary() -> None:
        header, tensors = v2.decode(data, headers[v2.HEADER_LENGTH], "inputs")
        items = v2.request_items(header, tensors, 16)
        request = infer.solve_request(items[0], "default", tensors["source"].dtype, 0)
        plan = plan_request(request, ["body"], lookup, None, costs)
        answer = Answer(u.astype(np.float32), "surrogate", estimate=0.05, uses_model=True)
        out = infer.outputs([(plan, answer, {})], np.dtype(np.float32), single=True)
        v2.encode({"model_name": "default"}, "outputs", out, binary=True)

    def plain() -> None:
        request = SOLVE_REQUEST.validate_json(json_body)
        plan_request(request, ["body"], lookup, None, costs)
        SolveResponse(
            pde="poisson", n=n, solution=encode_like(u, request.source), mode="surrogate"
        ).model_dump_json(exclude_none=True)

    return {name: 1e3 * timed(fn, repeats)[1] for name, fn in (("binary", binary), ("json", plain))}


def served(url: str, repeats: int) -> dict[str, dict]:
    """ms of the served answers per grid (medians over rounds; the first round untimed)."""
    results: dict[str, dict] = {}
    with (
        Client(url, timeout=300) as binary,
        Client(url, timeout=300, encoding="json") as plain,
    ):
        for n in GRIDS:
            f, a = problem(n)
            rows: dict[str, list[float]] = {}

            def note(name: str, ms: float, rows=rows) -> None:
                rows.setdefault(name, []).append(ms)

            size = BATCHES.get(n)
            for round_ in range(repeats + 1):
                for name, client, mode in (
                    ("binary", binary, "surrogate"),
                    ("json", plain, "surrogate"),
                    ("exact", binary, "exact"),
                ):
                    tol = 1e-2 if mode == "exact" else None
                    t0 = time.perf_counter()
                    r = client.solve("poisson", f, mode=mode, tolerance=tol, **named(a))
                    if round_:
                        note(name, 1e3 * (time.perf_counter() - t0))
                        if name == "binary":
                            note("model", r.timings_ms["surrogate"])
                            note("estimate", r.timings_ms["error_estimate"])
                if size:
                    fs = np.repeat(f[None], size, 0)
                    t0 = time.perf_counter()
                    binary.solve_batch("poisson", fs, batch_size=size, progress=False, **named(a))
                    if round_:
                        note(f"batch{size}", 1e3 * (time.perf_counter() - t0) / size)
            results[str(n)] = {k: round(statistics.median(v), 2) for k, v in rows.items()}
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="default")
    p.add_argument("--registry", default=str(BUNDLED_REGISTRY))
    p.add_argument("--quick", action="store_true", help="3 rounds, not 9")
    args = p.parse_args()
    repeats = 3 if args.quick else 9
    card = Registry(args.registry).card(args.model)
    settings = ServiceSettings(registry=args.registry, default_model=args.model)
    app = embedded.start(settings, port=embedded.free_port(), num_cpus=2, log_to_driver=False)
    try:
        if (why := embedded.wait_ready(app.url)) is not None:
            raise RuntimeError(f"the service did not become ready: {why}")
        results = served(app.url, repeats)
    finally:
        embedded.stop()
    runner = OnnxSurrogate.load(args.model, args.registry, fields=True)
    for n in GRIDS:
        r = results[str(n)]
        r |= {k: round(v, 2) for k, v in raw(runner, n, repeats).items()}
        r |= {f"path_{k}": round(v, 2) for k, v in path_here(n, card, repeats).items()}
        # what is left of the round trip: HTTP, the SDK, the ingress's event loop
        r["rest"] = round(r["binary"] - r["model"] - r["estimate"] - r["path_binary"], 2)
    print(
        f"{'n':>4} {'raw model':>9} {'binary':>7} {'json':>7} {'model':>6} {'estim.':>6} "
        f"{'path':>5} {'rest':>5} {'raw exact':>9} {'exact':>7}  (ms, one request, medians)"
    )
    for n in GRIDS:
        r = results[str(n)]
        print(
            f"{n:>4} {r['raw_model']:>9.1f} {r['binary']:>7.1f} {r['json']:>7.1f} "
            f"{r['model']:>6.1f} {r['estimate']:>6.1f} {r['path_binary']:>5.1f} "
            f"{r['rest']:>5.1f} {r['raw_exact']:>9.1f} {r['exact']:>7.1f}"
        )
    for n, size in BATCHES.items():
        r = results[str(n)]
        print(
            f"{n:>4} batch of {size}: raw {r[f'raw_model_batch{size}']:.2f} ms per problem, "
            f"served {r[f'batch{size}']:.2f}"
        )
    r128, r512 = results["128"], results["512"]

    def at_most(target: float, measured: float) -> dict:
        return goal(target, round(measured, 3), higher_is_better=False)

    goals = {
        f"served batch of {BATCHES[128]} at 128^2 <= 1.5x raw per problem": at_most(
            1.5, r128["batch24"] / r128["raw_model_batch24"]
        ),
        f"served batch of {BATCHES[512]} at 512^2 <= 1.5x raw per problem": at_most(
            1.5, r512["batch8"] / r512["raw_model_batch8"]
        ),
        "served surrogate request at 128^2 <= 2x the raw model": at_most(
            2.0, r128["binary"] / r128["raw_model"]
        ),
        "served exact request at 128^2 <= 1.3x the raw solve": at_most(
            1.3, r128["exact"] / r128["raw_exact"]
        ),
        "surrogate request at 512^2 <= 0.25x an exact one": at_most(
            0.25, r512["binary"] / r512["exact"]
        ),
        "error estimate <= 0.3x the model at every grid": at_most(
            0.3, max(results[str(n)]["estimate"] / results[str(n)]["model"] for n in GRIDS)
        ),
        f"raw model: one problem <= 2x one in a batch of {FIXED_COST_BATCH} (128^2)": at_most(
            2.0, r128["raw_model"] / r128[f"raw_model_batch{FIXED_COST_BATCH}"]
        ),
    }
    return finish(
        "request_path", {"model": args.model, "repeats": repeats, "grids": results}, goals
    )


if __name__ == "__main__":
    sys.exit(main())
