"""Data generation throughput: samples/s per system at 128^2, end to end into HDF5.

Baseline measured in the same run (the "floor"): a batched float64 rfft2 +
irfft2 per sample, on the same worker processes, nothing else. pdeserve builds
the source spectrum without a forward FFT, so it can beat the floor.

    .venv/bin/python -m bench.datagen [--quick] [--examples N] [--workers K]

Writes bench/results/datagen.json. Goals: >= 3,000 samples/s for every system
and >= 0.5 of the floor.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from bench.common import finish, goal

# This file is named like the package it measures: take its folder off the path
# before importing the package, and load the shared helpers by file.
from datagen.memory import keep_freed_memory
from datagen.pipeline import write_split
from datagen.spec import SplitSpec

SYSTEMS = ("poisson", "advection_diffusion", "helmholtz")
_fields: dict[tuple[int, int], np.ndarray] = {}


def fft_floor_block(batch: int, n: int) -> int:
    """One block of the floor: rfft2 + irfft2 of ``batch`` float64 fields (made once per worker)."""
    x = _fields.get((batch, n))
    if x is None:
        x = _fields[(batch, n)] = np.random.default_rng(0).standard_normal((batch, n, n))
    np.fft.irfft2(np.fft.rfft2(x), s=(n, n))
    return batch


def _init_floor_worker() -> None:
    # Same set-up as the generation workers (datagen.workers): one BLAS thread, memory kept.
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    keep_freed_memory()


def measure_floor(examples: int, n: int, workers: int, batch: int = 256) -> float:
    blocks = [batch] * (examples // batch)
    spawn = get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn, initializer=_init_floor_worker) as pool:
        list(pool.map(fft_floor_block, [batch] * workers, [n] * workers))  # start + warm up
        t0 = time.perf_counter()
        done = sum(pool.map(fft_floor_block, blocks, [n] * len(blocks)))
        return done / (time.perf_counter() - t0)


def measure_generation(system: str, examples: int, n: int, workers: int, folder: Path) -> float:
    spec = SplitSpec(system=system, n_examples=examples, resolution=n, seed=1)
    path = folder / f"{system}.h5"
    t0 = time.perf_counter()
    write_split(spec, path, workers=workers, progress=False)
    rate = examples / (time.perf_counter() - t0)
    path.unlink()
    return rate


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="8,192 examples, one repeat")
    p.add_argument("--examples", type=int, default=None, help="examples per run (default 32,768)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per system (default 3)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--resolution", type=int, default=128)
    p.add_argument(
        "--dir", type=Path, default=None, help="where to write the files (default: a temp dir)"
    )
    args = p.parse_args()
    examples = args.examples or (8192 if args.quick else 32768)
    repeats = args.repeats or (1 if args.quick else 3)
    n, workers = args.resolution, args.workers
    keep_freed_memory()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        folder = Path(tmp)
        floor = statistics.median(measure_floor(examples, n, workers) for _ in range(repeats))
        print(f"floor (rfft2 + irfft2, float64, {workers} processes): {floor:8.0f} samples/s")
        results = {
            "resolution": n,
            "examples_per_run": examples,
            "workers": workers,
            "repeats": repeats,
            "floor_samples_per_s": round(floor, 1),
            "systems": {},
        }
        goals = {}
        for system in SYSTEMS:
            measure_generation(system, min(examples, 4096), n, workers, folder)  # warm-up, untimed
            runs = [
                measure_generation(system, examples, n, workers, folder) for _ in range(repeats)
            ]
            rate = statistics.median(runs)
            results["systems"][system] = {
                "samples_per_s": round(rate, 1),
                "runs_samples_per_s": [round(r, 1) for r in runs],
                "ratio_to_floor": round(rate / floor, 3),
            }
            print(
                f"{system:>20}: {rate:8.0f} samples/s  ({rate / floor:.2f} x floor)  "
                f"runs {[round(r) for r in runs]}"
            )
            goals[f"{system}_samples_per_s"] = goal(3000, round(rate, 1))
            goals[f"{system}_ratio_to_floor"] = goal(0.5, round(rate / floor, 3))
    return finish("datagen", results, goals)


if __name__ == "__main__":
    sys.exit(main())
