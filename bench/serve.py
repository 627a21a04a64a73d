"""Served throughput and latency of POST /solve against raw ONNX Runtime, same model, same run.

    .venv/bin/python -m bench.serve [--quick] [--max-batch-size 32] [--surrogate-calls-in-flight 2]
        [--call-hold-s 0.004] [--ort-threads N] [--surrogate-cpus 1.0] [--ingress-cpus 0.25]
        [--max-ongoing-requests 128]
    .venv/bin/python -m bench.serve --fault [--quick]
    .venv/bin/python -m bench.serve --fields [--quick]

Normal mode writes bench/results/serve.json: requests/s, p50/p99 latency and errors of single
base64 Helmholtz solves (omega = 4, inside the envelope, so the surrogate answers) on a 128^2
grid at concurrency 1, 8 and 32 over loopback HTTP, and the raw ONNX Runtime figures of the
same model.onnx, measured in this process before Ray starts (so they do not share the CPUs):
batch-1 latency and the best samples/s over batches 1, 8 and 32 ("raw throughput").
The application runs as ``pdeserve serve`` runs it (``service.embedded``: the ingress
replica answers HTTP itself); each level is also measured through Serve's proxy, the
default path of Ray Serve, for comparison.
Goals (2 cores): served req/s at concurrency 32 >= 0.7 x raw throughput (0.85 with
``--fields``); p50 at concurrency 1 <= raw batch-1 p50 + 15 ms.

``--fields`` does the same for Darcy requests (poisson, K = a(x) K0 with a smooth
conductivity field of contrast 10 sent as base64 float32 beside the source) through the
model's fields graph, raw and served: bench/results/serve-fields.json.

``--fault`` writes bench/results/serve-fault.json: a load at concurrency 8 whose clients
retry connection errors and 5xx with exponential backoff (up to 8 tries), while the
Surrogate replica's process is killed (SIGKILL) after ~8 s; Serve has to restart it. It
records requests sent, answered, lost, retries, and the time until a new replica runs and
until requests succeed again.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
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
    wait_quiet,
    write_results,
)
from datagen.media import conductivity, gaussian_random_fields
from modelstore.registry import Registry
from modelstore.runner import OnnxSurrogate
from service import embedded
from service.embedded import replica_pids
from service.schema import EncodedArray, HelmholtzRequest, PoissonRequest
from service.settings import ServiceSettings

OMEGA = 4.0
CONCURRENCY = (1, 8, 32)
RAW_BATCHES = (1, 8, 32)
THROUGHPUT_RATIO = 0.7
FIELDS_THROUGHPUT_RATIO = 0.85
LATENCY_MARGIN_MS = 15.0
SURROGATE = "Surrogate"


# ---------------------------------------------------------------------------------------
# Model, request and raw ONNX Runtime


def request_body(ref: str, fields: bool = False) -> tuple[bytes, np.ndarray, np.ndarray]:
    """The JSON body of one solve, and its source and unified coefficients."""
    rng = np.random.default_rng(0)
    source = rng.standard_normal((RESOLUTION, RESOLUTION)).astype(np.float32)
    common = {"mode": "surrogate", "model": ref, "out_of_envelope": "reject"}
    if fields:
        g = gaussian_random_fields(rng, np.array([0.15]), RESOLUTION)
        a = conductivity(g, np.array([10.0]), "smooth")[0]
        request = PoissonRequest(
            pde="poisson",
            coefficients={"eigenvalue": 2.0, "angle": 0.0, "conductivity": EncodedArray.encode(a)},
            source=EncodedArray.encode(source - source.mean()),
            **common,
        )
    else:
        request = HelmholtzRequest(
            pde="helmholtz",
            coefficients={"omega": OMEGA},
            source=EncodedArray.encode(source),
            **common,
        )
    body = request.model_dump_json(exclude_none=True).encode()
    return body, source, request.unified()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def raw_onnxruntime(
    registry: str, ref: str, source, coefficients, threads: int | None, seconds: float
) -> dict:
    """Batch-1 latency and samples/s at batches 1, 8, 32 of the registry's model.onnx."""
    card, files = Registry(registry).read_files(ref)
    fields = coefficients.ndim == 3
    graph = files[card.graphs["fields" if fields else "constant"]]
    runner = OnnxSurrogate(card, graph, threads=threads, fields=fields)
    out: dict = {
        "threads": threads if threads else "ORT default (intra-op = physical cores)",
        "providers": runner.providers,
    }
    for batch in RAW_BATCHES:
        s = np.repeat(source[None], batch, axis=0)
        c = np.repeat(coefficients[None], batch, axis=0)
        for _ in range(2):
            runner.predict(s, c, batch=batch)
        times = []
        foreign = ForeignCPU().start()
        t_end = time.perf_counter() + seconds
        while time.perf_counter() < t_end or len(times) < 5:
            t0 = time.perf_counter()
            runner.predict(s, c, batch=batch)
            times.append(time.perf_counter() - t0)
        row = {
            "calls": len(times),
            "p50_ms": 1e3 * statistics.median(times),
            "samples_per_s": batch * len(times) / sum(times),
            "other_processes_cores": foreign.stop(),
        }
        if batch == 1:
            row["p99_ms"] = 1e3 * percentile(times, 99)
        out[f"batch {batch}"] = row
        print(
            f"raw ORT batch {batch:2d}: p50 {row['p50_ms']:7.2f} ms/call  "
            f"{row['samples_per_s']:7.1f} samples/s  "
            f"(others used {row['other_processes_cores']:.2f} cores)",
            flush=True,
        )
    best = max(RAW_BATCHES, key=lambda b: out[f"batch {b}"]["samples_per_s"])
    out["throughput_samples_per_s"] = out[f"batch {best}"]["samples_per_s"]
    out["throughput_definition"] = (
        f"best samples/s over batches {list(RAW_BATCHES)} (here batch {best})"
    )
    out["latency_p50_ms"] = out["batch 1"]["p50_ms"]
    return out


# ---------------------------------------------------------------------------------------
# The service


def check_answer(url: str, body: bytes) -> dict:
    """One solve, decoded: the surrogate must answer, at the request's grid."""
    headers = {"X-API-Key": API_KEY, "Content-Type": "application/json"}
    r = httpx.post(f"{url}/solve", content=body, headers=headers)
    r.raise_for_status()
    doc = r.json()
    solution = EncodedArray.model_validate(doc["solution"]).decode()
    assert doc["mode"] == "surrogate", doc.get("reason")
    assert solution.shape == (RESOLUTION, RESOLUTION) and np.isfinite(solution).all()
    return {"model": doc["model"], "timings_ms": doc["timings_ms"]}


class Load:
    """``bench/loadgen.py`` posting ``body`` to ``url/solve`` in a process of its own.

    ``t_start`` is the ``time.monotonic()`` instant its load began; ``result()`` waits for
    it and returns its records (see loadgen's docstring)."""

    def __init__(self, url: str, body_file: Path, concurrency: int, seconds: float, tries: int = 1):
        cmd = [
            sys.executable,
            "-m",
            "bench.loadgen",
            f"--url={url}/solve",
            f"--body={body_file}",
            f"--concurrency={concurrency}",
            f"--seconds={seconds}",
            f"--tries={tries}",
            f"--header=X-API-Key:{API_KEY}",
            "--header=Content-Type:application/json",
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ready "):
            self.proc.kill()
            raise RuntimeError(f"the load generator did not start: {line!r}")
        self.t_start = float(line.split()[1])

    def result(self) -> dict:
        out, _ = self.proc.communicate()
        if self.proc.returncode:
            raise RuntimeError(f"the load generator failed with exit code {self.proc.returncode}")
        return json.loads(out)


def sleep_until(t: float) -> None:
    time.sleep(max(0.0, t - time.monotonic()))


def load(url: str, body_file: Path, concurrency: int, seconds: float, warmup: float) -> dict:
    """``concurrency`` workers posting back to back; counts what starts in the window."""
    gen = Load(url, body_file, concurrency, warmup + seconds)
    t_measure = gen.t_start + warmup
    sleep_until(t_measure)
    foreign = ForeignCPU().start()
    doc = gen.result()
    others = foreign.stop()
    measured = [r for r in doc["requests"] if r["start"] >= t_measure]
    ok = [r for r in measured if r["ok"]]
    errors = Counter(r["failures"][-1] for r in measured if not r["ok"])
    latencies = [r["end"] - r["start"] for r in ok]
    inner = [r["surrogate_ms"] for r in ok if r["surrogate_ms"] is not None]
    elapsed = doc["t_end"] - t_measure
    return {
        "other_processes_cores": others,
        "requests_per_s": len(ok) / elapsed,
        "p50_ms": 1e3 * percentile(latencies, 50),
        "p99_ms": 1e3 * percentile(latencies, 99),
        "surrogate_call_p50_ms": percentile(inner, 50),
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": dict(errors),
        "seconds": elapsed,
    }


def settings_from(args, registry: str, ref: str) -> ServiceSettings:
    return ServiceSettings(
        registry=registry,
        default_model=ref,
        api_keys=[API_KEY],
        max_batch_size=args.max_batch_size,
        surrogate_calls_in_flight=args.surrogate_calls_in_flight,
        call_hold_s=args.call_hold_s,
        ort_threads=args.ort_threads,
        ingress_cpus=args.ingress_cpus,
        surrogate_cpus=args.surrogate_cpus,
        max_ongoing_requests=args.max_ongoing_requests,
        request_timeout_s=60.0,
        # --fault kills a model replica under load: the models in a deployment of their own
        surrogate_deployment=args.fault or args.surrogate_deployment,
    )


def bench(args, registry: str, ref: str, body_file: Path, source, coefficients) -> None:
    seconds = 4.0 if args.quick else args.seconds
    wait_quiet()
    raw = raw_onnxruntime(
        registry, ref, source, coefficients, args.ort_threads, 2.0 if args.quick else 5.0
    )
    settings = settings_from(args, registry, ref)
    served: dict = {}
    proxied: dict = {}
    app = start_service(settings)
    try:
        first = check_answer(app.url, body_file.read_bytes())
        print(f"service ready at {app.url}: {first}", flush=True)
        for c in CONCURRENCY:
            for path, url, rows in (("direct", app.url, served), ("proxy", app.proxy_url, proxied)):
                wait_quiet()
                row = load(url, body_file, c, seconds, warmup=1.0 if args.quick else 3.0)
                rows[f"concurrency {c}"] = row
                print(
                    f"{path:6s} concurrency {c:2d}: {row['requests_per_s']:7.1f} req/s  "
                    f"p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                    f"(ingress->Surrogate p50 {row['surrogate_call_p50_ms']:.1f} ms)  "
                    f"errors {row['errors']}  (others used {row['other_processes_cores']:.2f} "
                    "cores)",
                    flush=True,
                )
    finally:
        embedded.stop()
    top = served[f"concurrency {CONCURRENCY[-1]}"]
    one = served[f"concurrency {CONCURRENCY[0]}"]
    ratio = top["requests_per_s"] / raw["throughput_samples_per_s"]
    results = {
        "model": MODEL,
        "resolution": RESOLUTION,
        "request": (
            "POST /solve, poisson K = a(x) K0 (a smooth, contrast 10, float32 base64 beside "
            "the source), surrogate, fields graph"
            if args.fields
            else f"POST /solve, helmholtz omega={OMEGA:g}, float32 base64 source, surrogate"
        ),
        "body_bytes": body_file.stat().st_size,
        "seconds_per_level": seconds,
        "loadavg_at_start": LOADAVG,
        "client": "bench/loadgen.py in its own process: asyncio transports and httptools, "
        "a kept-alive connection each",
        "settings": settings.model_dump(exclude={"api_keys", "registry", "default_model"}),
        "raw_onnxruntime": raw,
        "served": served,
        "served_through_serve_proxy": proxied,
        "served_vs_raw_throughput_at_32": ratio,
    }
    wanted = FIELDS_THROUGHPUT_RATIO if args.fields else THROUGHPUT_RATIO
    goals = {
        f"served req/s at concurrency 32 >= {wanted} x raw ORT samples/s": goal(wanted, ratio),
        f"p50 at concurrency 1 <= raw ORT batch-1 p50 + {LATENCY_MARGIN_MS:g} ms": goal(
            raw["latency_p50_ms"] + LATENCY_MARGIN_MS, one["p50_ms"], higher_is_better=False
        ),
    }
    for name, g in goals.items():
        print(f"goal {name}: target {g['target']:.3g}, measured {g['measured']:.3g}, {g['met']=}")
    default = "serve-fields" if args.fields else "serve"
    print(f"wrote {write_results(args.name or default, results, goals)}")


# ---------------------------------------------------------------------------------------
# Fault: kill the Surrogate replica under load


class StatusWatch(threading.Thread):
    """Polls serve.status() and the replica PIDs; notes when each comes back after a kill."""

    def __init__(self, old_pid: int):
        super().__init__(daemon=True)
        self.old_pid = old_pid
        self.t_kill: float | None = None
        self.new_pid: int | None = None
        self.t_new_process: float | None = None
        self.t_unhealthy: float | None = None
        self.t_running: float | None = None
        self.states: list[tuple[float, str]] = []
        self.stop = threading.Event()

    def run(self):
        from ray import serve

        last = None
        while not self.stop.wait(0.2):
            now = time.monotonic()
            try:
                d = serve.status().applications["pdeserve"].deployments["Surrogate"]
                running = d.replica_states.get("RUNNING", 0)
                state = f"{d.status} running={running} {dict(d.replica_states)}"
            except Exception as e:  # the controller can be busy
                state, running = f"status error {type(e).__name__}", None
            if state != last:
                self.states.append((now, state))
                last = state
            if self.t_kill is None:
                continue
            pids = [p for p in replica_pids(SURROGATE) if p != self.old_pid]
            if pids and self.t_new_process is None:
                self.new_pid, self.t_new_process = pids[0], now
            if running == 0 and self.t_unhealthy is None:
                self.t_unhealthy = now
            if running and self.t_unhealthy is not None and self.t_running is None:
                self.t_running = now


def fault_load(
    url: str,
    body_file: Path,
    concurrency: int,
    seconds: float,
    kill_after: float,
    watch: StatusWatch,
    tries: int,
) -> dict:
    """A retrying load; the Surrogate replica is killed ``kill_after`` s into it."""
    gen = Load(url, body_file, concurrency, seconds, tries=tries)
    sleep_until(gen.t_start + kill_after)
    killed = {"pids_before": replica_pids(SURROGATE)}
    watch.t_kill = time.monotonic()
    os.kill(watch.old_pid, signal.SIGKILL)
    killed["pid"] = watch.old_pid
    killed["at_s"] = watch.t_kill - gen.t_start
    print(f"killed Surrogate replica pid {watch.old_pid} at {killed['at_s']:.1f} s", flush=True)
    doc = gen.result()
    requests = doc["requests"]
    ok = [r for r in requests if r["ok"]]
    attempts = [a for r in requests for a in r["attempts"]]
    failures = Counter(f for r in requests for f in r["failures"])
    latencies = [r["end"] - r["start"] for r in ok]
    elapsed = doc["t_end"] - gen.t_start
    t_kill = watch.t_kill
    first_ok = min((end for start, end, good in attempts if good and start >= t_kill), default=None)
    last_fail = max((end for _, end, good in attempts if not good and end >= t_kill), default=None)
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests_sent": len(requests),
        "answered_ok": len(ok),
        "lost": len(requests) - len(ok),
        "attempts": len(attempts),
        "retries": len(attempts) - len(requests),
        "failed_attempts": dict(failures),
        "max_tries": tries,
        "backoff": "0.1 s x 2^k between tries",
        "kill": killed,
        "p50_ms": 1e3 * percentile(latencies, 50),
        "p99_ms": 1e3 * percentile(latencies, 99),
        "max_ms": 1e3 * max(latencies) if latencies else None,
        "requests_per_s": len(ok) / elapsed,
        "first_ok_attempt_started_after_kill_s": None if first_ok is None else first_ok - t_kill,
        "last_failed_attempt_after_kill_s": None if last_fail is None else last_fail - t_kill,
    }


def fault(args, registry: str, ref: str, body_file: Path) -> None:
    settings = settings_from(args, registry, ref)
    seconds = 20.0 if args.quick else 30.0
    app = start_service(settings)
    url = app.url
    try:
        check_answer(url, body_file.read_bytes())
        pids = replica_pids(SURROGATE)
        print(f"service ready at {url}; Surrogate replica pids {pids}", flush=True)
        if len(pids) != 1:
            raise RuntimeError(f"expected one Surrogate replica process, found {pids}")
        watch = StatusWatch(pids[0])
        watch.start()
        row = fault_load(url, body_file, 8, seconds, 8.0, watch, tries=8)
        # Wait (a little) for serve.status() to report RUNNING if it has not yet.
        deadline = time.perf_counter() + 30
        while watch.t_running is None and time.perf_counter() < deadline:
            time.sleep(0.2)
        watch.stop.set()
        watch.join()
        t_kill = watch.t_kill
        rel = lambda t: None if t is None else t - t_kill  # noqa: E731
        row.update(
            new_replica_pid=watch.new_pid,
            new_replica_process_after_s=rel(watch.t_new_process),
            serve_status_unhealthy_after_s=rel(watch.t_unhealthy),
            serve_status_running_again_after_s=rel(watch.t_running),
            serve_status_timeline=[(round(t - t_kill, 2), s) for t, s in watch.states],
        )
        after = check_answer(url, body_file.read_bytes())
        row["answer_after_recovery"] = after
    finally:
        embedded.stop()
    for k in (
        "requests_sent",
        "answered_ok",
        "lost",
        "retries",
        "failed_attempts",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "new_replica_process_after_s",
        "serve_status_running_again_after_s",
        "first_ok_attempt_started_after_kill_s",
        "last_failed_attempt_after_kill_s",
    ):
        print(f"{k:40s} {row[k]}")
    for t, s in row["serve_status_timeline"]:
        print(f"  {t:+7.2f} s  {s}")
    results = {
        "model": MODEL,
        "resolution": RESOLUTION,
        "settings": settings.model_dump(exclude={"api_keys", "registry", "default_model"}),
        **row,
    }
    goals = {"no request lost": goal(0, row["lost"], higher_is_better=False)}
    print(f"wrote {write_results(args.name or 'serve-fault', results, goals)}")


LOADAVG = os.getloadavg()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--fault", action="store_true", help="kill the Surrogate replica under load")
    p.add_argument("--fields", action="store_true", help="Darcy requests through the fields graph")
    p.add_argument("--seconds", type=float, default=12.0, help="measured seconds per level")
    p.add_argument("--name", help="results file name (default serve / serve-fault)")
    d = ServiceSettings.model_fields
    p.add_argument("--max-batch-size", type=int, default=d["max_batch_size"].default)
    p.add_argument(
        "--surrogate-calls-in-flight", type=int, default=d["surrogate_calls_in_flight"].default
    )
    p.add_argument("--call-hold-s", type=float, default=d["call_hold_s"].default)
    p.add_argument("--ort-threads", type=int, default=d["ort_threads"].default)
    p.add_argument("--ingress-cpus", type=float, default=d["ingress_cpus"].default)
    p.add_argument("--surrogate-cpus", type=float, default=d["surrogate_cpus"].default)
    p.add_argument("--max-ongoing-requests", type=int, default=d["max_ongoing_requests"].default)
    p.add_argument(
        "--surrogate-deployment", action="store_true",
        help="the models in a deployment of their own (default: in the ingress)",
    )  # fmt: skip
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="pdeserve-bench-serve-") as tmp:
        work = Path(tmp)
        ref = publish(work)
        registry = str(work / "registry")
        body, source, coefficients = request_body(ref, fields=args.fields)
        body_file = work / "request.json"
        body_file.write_bytes(body)
        if args.fault:
            fault(args, registry, ref, body_file)
        else:
            bench(args, registry, ref, body_file, source, coefficients)


if __name__ == "__main__":
    main()
