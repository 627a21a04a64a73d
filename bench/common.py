"""Shared by the benchmarks: machine description and the JSON result file."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
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
