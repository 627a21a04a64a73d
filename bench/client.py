"""Client throughput: the SDK's ``solve_batch`` against a naive loop of single JSON-list requests.

    .venv/bin/python -m bench.client [--quick] [--examples 4096] [--naive 256]

Writes bench/results/client.json. One local service (the model of bench/serve.py: an
untrained fno-1m at 128^2, Ray + Serve in this process, default ServiceSettings) answers
both clients, in the same run:

- naive: one plain ``httpx.Client``, one ``POST /solve`` at a time, the source as nested
  JSON lists (``source.tolist()``) and the answer read back from nested lists; timed over
  the first ``--naive`` examples (a full 4,096 would take minutes), reported as examples/s.
- solve_batch: ``service.client.Client.solve_batch`` with its defaults (base64 float32,
  ``POST /solve/batch``); a few (batch_size, concurrency) pairs are tried on a subset and
  the best one then solves all ``--examples`` examples.

Examples: Helmholtz problems from datagen (omega integers 1..10, inside the model's
envelope, so the surrogate answers every one). Correctness: solve_batch's solutions of the
naive subset must match the naive loop's (max |a - b| / max |b| <= 1e-5). The machine is
shared: each measurement waits for quiet (bench/serve.py's wait_quiet) and is redone when
other processes used more than 0.25 cores meanwhile ("tries", "other_processes_cores"); the
naive loop does so per segment of 32 requests.
Goal: solve_batch examples/s >= 5 x the naive loop's.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import (
    API_KEY,
    MODEL,
    RESOLUTION,
    ForeignCPU,
    goal,
    publish,
    start_service,
    stop_service,
    wait_quiet,
    write_results,
)
from datagen.dataset import open_dataset
from datagen.pipeline import write_split
from datagen.spec import SplitSpec
from service.client import Client
from service.settings import ServiceSettings
from service.wire import decode_array, encode_array

TARGET = 5.0
TOLERANCE = 1e-5
#: (batch_size, concurrency) pairs tried on a subset; the best solves everything.
COMBOS = ((32, 4), (64, 2), (16, 8), (64, 4), (128, 2))
#: A measurement is redone when other processes used more cores than this meanwhile.
QUIET = 0.25
PATIENCE = 120.0
SEGMENT = 32
SEGMENT_TRIES = 4


def examples(n: int, work: Path) -> tuple[np.ndarray, np.ndarray]:
    """``n`` Helmholtz problems at 128^2: sources (n, 128, 128) float32, unified (n, 6)."""
    spec = SplitSpec(system="helmholtz", n_examples=n, resolution=RESOLUTION, seed=0)
    path = write_split(spec, work / "helmholtz.h5", progress=False)
    with open_dataset(path) as data:
        chunk = data.read()
    return chunk.sources, chunk.coefficients


def naive_loop(url: str, sources: np.ndarray, omegas: np.ndarray, json_lists: bool) -> dict:
    """One request at a time, plain httpx: nested JSON lists (or base64 float32, for scale).

    Timed in segments of SEGMENT requests, each after the machine is quiet and redone (up
    to SEGMENT_TRIES) when other processes used more than QUIET cores during it: a slow
    sequential loop leaves idle CPU that a neighbour's job fills, and that would flatter
    the ratio. examples/s = examples / the summed time of the kept segments.
    """
    headers = {"X-API-Key": API_KEY}
    solutions = np.empty(sources.shape, dtype=np.float32)
    modes: set[str] = set()
    kept: list[dict] = []
    with httpx.Client(base_url=url, headers=headers, timeout=60.0) as http:

        def one(i: int) -> None:
            encoded = sources[i].tolist() if json_lists else encode_array(sources[i], "float32")
            body = {"pde": "helmholtz", "source": encoded, "coefficients": {"omega": omegas[i]}}
            r = http.post("/solve", json=body)
            r.raise_for_status()
            doc = r.json()
            if json_lists:
                solutions[i] = np.asarray(doc["solution"], dtype=np.float32)
            else:
                s = doc["solution"]
                solutions[i] = decode_array(s["dtype"], s["shape"], s["data"])
            modes.add(doc["mode"])

        omegas = [float(w) for w in omegas]
        one(0), one(1)  # warm the connection and the code paths
        for start in range(0, len(sources), SEGMENT):
            part = range(start, min(len(sources), start + SEGMENT))
            tries = []
            for _ in range(SEGMENT_TRIES):
                wait_quiet(patience=PATIENCE / 2)
                latencies = []
                foreign = ForeignCPU().start()
                t0 = time.perf_counter()
                for i in part:
                    t = time.perf_counter()
                    one(i)
                    latencies.append(time.perf_counter() - t)
                seconds = time.perf_counter() - t0
                tries.append({"seconds": seconds, "others": foreign.stop(), "lat": latencies})
                if tries[-1]["others"] <= QUIET:
                    break
            best = min(tries, key=lambda t: t["others"])
            kept.append({**best, "n": len(part), "tries": len(tries)})
    seconds = sum(k["seconds"] for k in kept)
    latencies = [x for k in kept for x in k["lat"]]
    return {
        "examples": len(sources),
        "seconds": seconds,
        "examples_per_s": len(sources) / seconds,
        "p50_ms": 1e3 * statistics.median(latencies),
        "p99_ms": 1e3 * float(np.percentile(latencies, 99)),
        "modes": sorted(modes),
        "segments": len(kept),
        "segment_size": SEGMENT,
        "segment_tries": sum(k["tries"] for k in kept),
        "other_processes_cores": sum(k["others"] * k["seconds"] for k in kept) / seconds,
        "other_processes_cores_worst_segment": max(k["others"] for k in kept),
        "segment_examples_per_s": [round(k["n"] / k["seconds"], 2) for k in kept],
        "solutions": solutions,
    }


def sdk_run(
    url: str, sources: np.ndarray, coefficients: np.ndarray, batch_size: int, concurrency: int
) -> dict:
    with Client(url, api_key=API_KEY, dtype="float32") as client:
        foreign = ForeignCPU().start()
        t0 = time.perf_counter()
        result = client.solve_batch(
            "helmholtz",
            sources,
            coefficients,
            batch_size=batch_size,
            concurrency=concurrency,
            progress=False,
        )
        elapsed = time.perf_counter() - t0
    return {
        "batch_size": batch_size,
        "concurrency": concurrency,
        "examples": len(sources),
        "seconds": elapsed,
        "examples_per_s": len(sources) / elapsed,
        "modes": sorted(set(result.modes)),
        "other_processes_cores": foreign.stop(),
        "solutions": result.solutions,
    }


def quiet_run(run, tries: int) -> dict:
    """``run()`` after the machine is quiet; again (up to ``tries``) if others used more
    than QUIET cores meanwhile. Keeps the least disturbed run and counts the tries."""
    rows = []
    for _ in range(tries):
        wait_quiet(patience=PATIENCE)
        rows.append(run())
        if rows[-1]["other_processes_cores"] <= QUIET:
            break
    row = min(rows, key=lambda r: r["other_processes_cores"])
    row["tries"] = len(rows)
    return row


def public(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "solutions"}


def show(name: str, row: dict) -> None:
    print(
        f"{name:28s} {row['examples']:5d} examples in {row['seconds']:6.1f} s: "
        f"{row['examples_per_s']:7.1f} examples/s  modes {row['modes']}  "
        f"(others used {row['other_processes_cores']:.2f} cores)",
        flush=True,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="512 examples, naive on 64")
    p.add_argument("--examples", type=int, help="solve_batch examples (default 4096)")
    p.add_argument("--naive", type=int, help="naive-loop examples (default 256)")
    p.add_argument("--sweep", type=int, help="examples per sweep combo (default 512)")
    p.add_argument("--name", default="client", help="results file name")
    args = p.parse_args()
    n = args.examples or (512 if args.quick else 4096)
    n_naive = min(n, args.naive or (64 if args.quick else 256))
    n_sweep = min(n, args.sweep or (128 if args.quick else 512))
    n_b64 = min(n_naive, 32 if args.quick else 128)

    with tempfile.TemporaryDirectory(prefix="pdeserve-bench-client-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        sources, coefficients = examples(n, work)
        print(f"{n} helmholtz examples in {time.perf_counter() - t0:.1f} s", flush=True)
        omegas = coefficients[:, 5]
        ref = publish(work)
        settings = ServiceSettings(
            registry=str(work / "registry"),
            default_model=ref,
            api_keys=[API_KEY],
            request_timeout_s=60.0,
        )
        url = start_service(settings)
        try:
            print(f"service ready at {url}", flush=True)
            # Warm the replica and the client code paths once.
            sdk_run(url, sources[:64], coefficients[:64], 32, 2)

            naive = naive_loop(url, sources[:n_naive], omegas[:n_naive], json_lists=True)
            show("naive loop, JSON lists", naive)
            naive_b64 = naive_loop(url, sources[:n_b64], omegas[:n_b64], json_lists=False)
            show("naive loop, base64 (context)", naive_b64)

            sweep = []
            for batch_size, concurrency in COMBOS:
                row = quiet_run(
                    lambda b=batch_size, c=concurrency: sdk_run(
                        url, sources[:n_sweep], coefficients[:n_sweep], b, c
                    ),
                    2,
                )
                show(f"sweep {batch_size:3d} x {concurrency}", row)
                sweep.append(public(row))
            best = max(sweep, key=lambda r: r["examples_per_s"])

            b, c = best["batch_size"], best["concurrency"]
            full = quiet_run(lambda: sdk_run(url, sources, coefficients, b, c), 2)
            show(f"solve_batch {b} x {c}", full)
        finally:
            stop_service()

    a = full["solutions"][:n_naive].astype(np.float64)
    b = naive["solutions"].astype(np.float64)
    max_rel = float(np.abs(a - b).max() / np.abs(b).max())
    per_example = np.abs(a - b).max(axis=(1, 2)) / np.abs(b).max(axis=(1, 2))
    b64 = naive_b64["solutions"].astype(np.float64)
    max_rel_b64 = float(np.abs(a[:n_b64] - b64).max() / np.abs(b64).max())
    ratio = full["examples_per_s"] / naive["examples_per_s"]
    print(f"solve_batch / naive: {ratio:.2f}x; max relative difference {max_rel:.3g}")

    results = {
        "model": MODEL,
        "resolution": RESOLUTION,
        "problems": "helmholtz from datagen (seed 0), omega integers 1..10, smooth sources",
        "examples": n,
        "settings": settings.model_dump(exclude={"api_keys", "registry", "default_model"}),
        "quiet_rule": f"wait_quiet(patience={PATIENCE:g} s); redo when others > {QUIET} cores",
        "client_process": "the Ray driver (same 2 cores as the service), loopback HTTP",
        "naive": {
            "how": "httpx.Client, sequential POST /solve, source.tolist() nested JSON lists, "
            "answer decoded from nested lists; timed on the first examples only",
            "subset": n_naive,
            **public(naive),
        },
        "naive_base64_context": {
            "how": "the same loop with base64 float32 bodies: what batching adds over encoding",
            "subset": n_b64,
            **public(naive_b64),
        },
        "solve_batch_sweep": {"examples_each": n_sweep, "runs": sweep},
        "solve_batch": {
            "how": "service.client.Client.solve_batch, base64 float32, POST /solve/batch, "
            "best sweep pair",
            **public(full),
        },
        "ratio_solve_batch_to_naive": ratio,
        "correctness": {
            "compared": f"solve_batch vs naive loop on the first {n_naive} examples",
            "max_abs_diff_over_max_abs": max_rel,
            "worst_example_relative": float(per_example.max()),
            "base64_loop_vs_solve_batch": max_rel_b64,
            "tolerance": TOLERANCE,
            "allclose": bool(max_rel <= TOLERANCE),
        },
    }
    goals = {
        f"solve_batch examples/s >= {TARGET:g} x naive JSON-list loop": goal(TARGET, ratio),
        f"solve_batch == naive loop (max rel diff <= {TOLERANCE:g})": goal(
            TOLERANCE, max_rel, higher_is_better=False
        ),
    }
    for name, g in goals.items():
        print(f"goal {name}: target {g['target']:.3g}, measured {g['measured']:.3g}, {g['met']=}")
    print(f"wrote {write_results(args.name, results, goals)}")


if __name__ == "__main__":
    main()
