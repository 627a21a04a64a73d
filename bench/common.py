"""Shared by the benchmarks: machine description and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpu() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        return None


def machine() -> dict:
    return {
        "cpu": _cpu(),
        "cores": os.cpu_count(),
        "gpu": _gpu(),
        "python": platform.python_version(),
        "numpy": _version("numpy"),
        "torch": _version("torch"),
        "ort": _version("onnxruntime") or _version("onnxruntime-gpu"),
        "ray": _version("ray"),
    }


def goal(target: float, measured: float, higher_is_better: bool = True) -> dict:
    met = measured >= target if higher_is_better else measured <= target
    return {"target": target, "measured": measured, "met": bool(met)}


def _invocation() -> list[str]:
    """The command line that ran this benchmark, as the README writes it (``-m bench.NAME``)."""
    script = Path(sys.argv[0])
    if script.suffix == ".py" and script.resolve().parent == RESULTS.parent:
        return ["-m", f"bench.{script.stem}", *sys.argv[1:]]
    return list(sys.argv)


def write_results(name: str, results: dict, goals: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    doc = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *_invocation()]),
        "results": results,
        "goals": goals,
    }
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, out)
    return out


def finish(name: str, results: dict, goals: dict, *also: Path) -> int:
    """Write the JSON, say where it went (and the other files named), list missed goals."""
    out = write_results(name, results, goals)
    print("wrote " + " and ".join(str(p) for p in (out, *also)))
    missed = [k for k, g in goals.items() if not g["met"]]
    if missed:
        print("goals missed: " + ", ".join(missed))
    return 0


#: Timed runs per measurement; the median counts (this VM has slow stretches of seconds).
REPEAT = 3


def timed(fn, repeat: int = REPEAT) -> tuple[object, float]:
    """The result of ``fn`` and the median of ``repeat`` timed calls after a warm one."""
    fn()  # warm: sessions, FFT plans, caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def krylov_solve(
    f, fields, tolerance, guess=None, system="poisson", preconditioner="auto", max_iterations=20_000
):
    """pdeserve's Krylov solver; where it stops short of ``tolerance``, its last iterate."""
    from datagen.solver import ConvergenceError, solve_detailed

    try:
        return solve_detailed(
            system,
            f,
            fields,
            mean="project",
            tolerance=tolerance,
            max_iterations=max_iterations,
            initial_guess=guess,
            preconditioner=preconditioner,
        )
    except ConvergenceError as e:
        return e.solution


# ---------------------------------------------------------------------------------------
# The service harness: a bench model, the service on an embedded Ray, and a quiet machine

MODEL = "fno-1m"
RESOLUTION = 128
API_KEY = "bench-key-0123"


def _busy_and_ours() -> tuple[float, float]:
    """CPU seconds: the whole machine's busy time, and that of this process tree."""
    tick = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    busy = sum(values) - values[3] - values[4]  # minus idle and iowait
    parents, times = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        parents[int(d)] = int(rest[1])
        times[int(d)] = int(rest[11]) + int(rest[12])
    ours, me = 0, os.getpid()
    for pid, t in times.items():
        p = pid
        while p > 1 and p != me:
            p = parents.get(p, 0)
        if p == me:
            ours += t
    return busy / tick, ours / tick


class ForeignCPU:
    """Cores used by processes outside this one's tree between ``start()`` and ``stop()``."""

    def start(self):
        self.t0, (self.busy0, self.ours0) = time.perf_counter(), _busy_and_ours()
        return self

    def stop(self) -> float:
        busy, ours = _busy_and_ours()
        dt = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0) - (ours - self.ours0)) / dt


def wait_quiet(limit: float = 0.15, patience: float = 30.0) -> float:
    """Wait (up to ``patience`` s) until others use under ``limit`` cores for 3 s; returns it."""
    deadline = time.perf_counter() + patience
    while True:
        probe = ForeignCPU().start()
        time.sleep(3.0)
        used = probe.stop()
        if used < limit or time.perf_counter() > deadline:
            if used >= limit:
                print(f"warning: other processes use {used:.2f} cores; measuring anyway")
            return used
        print(f"waiting: other processes use {used:.2f} cores", flush=True)


#: The envelope of the benchmark's model: the requests below are inside it.
ENVELOPE = {
    "helmholtz": {"n_examples": 1, "omega": [1, 10]},
    "poisson": {
        "n_examples": 1,
        "eig": [1, 5],
        "field": {"n_examples": 1, "laws": ["smooth"], "contrast": [1, 100], "length": [0.05, 0.3]},
    },
}


def publish(root: Path) -> str:
    """fno-1m (untrained weights: throughput does not care) at 128^2; returns its ref."""
    import torch

    from training.checkpoint import save_model
    from training.export import export
    from training.models import PDESurrogate, preset

    torch.manual_seed(0)
    model = PDESurrogate(**preset(MODEL), source_ref=1.0, solution_ref=0.05)
    meta = {"data": {"resolution": RESOLUTION, "envelope": ENVELOPE}}
    ckpt = save_model(model, root / ".ckpt", meta)
    return export(ckpt, "bench", str(root / "registry")).ref


def start_service(settings):
    """The application as ``pdeserve serve`` runs it (direct ingress), once ready."""
    import httpx

    from service import embedded
    from service.embedded import free_port

    app = embedded.start(
        settings, port=free_port(), num_cpus=2, include_dashboard=False, log_to_driver=False
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{app.url}/readyz", timeout=10).status_code == 200:
                return app
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not become ready in 120 s")
        time.sleep(0.5)


def stop_service() -> None:
    """Stop what :func:`start_service` started (the application and its Ray instance)."""
    from service import embedded

    embedded.stop()
