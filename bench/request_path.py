"""The path around the model: what a single request costs beside the model, per grid.

    .venv/bin/python -m bench.request_path [--model NAME[@VERSION]] [--quick]

On Darcy problems (a smooth conductivity of contrast 5 times 0.01 I, a Gaussian source)
at 64^2..512^2, single requests over HTTP to the service on a private Ray instance:

- the surrogate's round trip through the SDK, binary (the KServe v2 protocol) and JSON
  (base64 arrays); the exact solver's round trip to a relative residual of 1e-2 (JSON);
- inside the service (the answer's ``timings_ms``): the model call and the error
  estimate;
- here, in this process, what the request path does beside the model: decode and
  validate the request, plan it (envelope, reference coefficients) and encode the answer,
  for both encodings.

Medians of --repeats paired rounds. Writes bench/results/request_path.json. Goals: at
512^2 the binary path's decode, validation, plan and encoding <= 20% of the binary
surrogate round trip; the JSON surrogate round trip <= 0.35x the exact solve's; the error
estimate <= 0.5x the model's own time at every grid.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import numpy as np

from bench.common import finish, goal, timed
from modelstore.registry import BUNDLED_REGISTRY, Registry
from service import embedded, infer, v2
from service.client import Client, coefficient_rows
from service.costs import CostModel, calibration_problem
from service.edge import SOLVE_REQUEST
from service.plan import Answer, plan_request
from service.schema import SolveResponse, encode_like
from service.settings import ServiceSettings
from service.wire import encode_array

GRIDS = (64, 128, 256, 512)


def problem(n: int) -> tuple[np.ndarray, np.ndarray]:
    source, coefficients = calibration_problem(n, 5.0)
    return source, coefficients[0] / 0.01  # the conductivity a(x): K = a 0.01 I


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
    results: dict[str, dict] = {}
    try:
        if (why := embedded.wait_ready(app.url)) is not None:
            raise RuntimeError(f"the service did not become ready: {why}")
        with (
            Client(app.url, timeout=300) as binary,
            Client(app.url, timeout=300, encoding="json") as plain,
        ):
            for n in GRIDS:
                f, a = problem(n)
                coefficients = {"k11": 0.01, "k22": 0.01, "k12": 0.0, "conductivity": a}
                rows: dict[str, list[float]] = {
                    k: [] for k in ("binary", "json", "exact", "model", "estimate")
                }
                for round_ in range(repeats + 1):  # the first round warms up, untimed
                    for name, client, mode in (
                        ("binary", binary, "surrogate"),
                        ("json", plain, "surrogate"),
                        ("exact", plain, "exact"),
                    ):
                        tol = 1e-2 if mode == "exact" else None
                        t0 = time.perf_counter()
                        r = client.solve("poisson", f, mode=mode, tolerance=tol, **coefficients)
                        ms = 1e3 * (time.perf_counter() - t0)
                        if round_:
                            rows[name].append(ms)
                            if name == "binary":
                                rows["model"].append(r.timings_ms["surrogate"])
                                rows["estimate"].append(r.timings_ms["error_estimate"])
                results[str(n)] = {k: round(statistics.median(v), 2) for k, v in rows.items()}
    finally:
        embedded.stop()
    for n in GRIDS:
        here = path_here(n, card, repeats)
        results[str(n)] |= {f"path_{k}": round(v, 2) for k, v in here.items()}
    print(
        f"{'n':>4} {'binary':>8} {'json':>8} {'exact':>8} {'model':>7} {'estimate':>8} "
        f"{'path bin':>8} {'path json':>9}  (ms, medians)"
    )
    for n in GRIDS:
        r = results[str(n)]
        print(
            f"{n:>4} {r['binary']:>8.1f} {r['json']:>8.1f} {r['exact']:>8.1f} {r['model']:>7.1f} "
            f"{r['estimate']:>8.1f} {r['path_binary']:>8.1f} {r['path_json']:>9.1f}"
        )
    big = results["512"]
    worst_estimate = max(results[str(n)]["estimate"] / results[str(n)]["model"] for n in GRIDS)
    goals = {
        "binary_path_share_512": goal(
            0.2, round(big["path_binary"] / big["binary"], 3), higher_is_better=False
        ),
        "json_surrogate_over_exact_512": goal(
            0.35, round(big["json"] / big["exact"], 3), higher_is_better=False
        ),
        "estimate_over_model_max": goal(0.5, round(worst_estimate, 3), higher_is_better=False),
    }
    return finish(
        "request_path", {"model": args.model, "repeats": repeats, "grids": results}, goals
    )


if __name__ == "__main__":
    sys.exit(main())
