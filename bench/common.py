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


def write_results(name: str, results: dict, goals: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    doc = {
        "machine": machine(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv]),
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
