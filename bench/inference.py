"""Inference cost per sample: torch eager vs ONNX Runtime (same weights, same threads), and
the exact spectral solver, at batch 1, 8 and 32 on a 128^2 grid.

    .venv/bin/python bench/inference.py [--quick] [--model fno-1m] [--threads 2]

Writes bench/results/inference.json. Goal: ONNX Runtime >= 2x torch eager on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

# bench/datagen.py is named like the package: take this folder off the path first.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH]

from datagen.pipeline import write_split  # noqa: E402
from datagen.solver import solve  # noqa: E402
from datagen.spec import SplitSpec  # noqa: E402
from training.export import export_onnx  # noqa: E402
from training.models import PDESurrogate, preset  # noqa: E402

sys.path.append(str(_BENCH))
from common import goal, write_results  # noqa: E402

BATCHES = (1, 8, 32)
RESOLUTION = 128
TARGET = 2.0


def timed(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default="fno-1m")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import onnxruntime as ort

    torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else 7
    data = Path("/tmp/pdeserve-bench-inference.h5")
    spec = SplitSpec(system="advection_diffusion", n_examples=max(BATCHES), resolution=RESOLUTION)
    write_split(spec, data, progress=False)
    from datagen.dataset import open_dataset

    with open_dataset(data) as reader:
        chunk = reader.read()
    torch.manual_seed(0)
    model = PDESurrogate(**preset(args.model)).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        export_onnx(model, RESOLUTION, {}), options, providers=["CPUExecutionProvider"]
    )
    results, goals = {}, {}
    for batch in BATCHES:
        s, c = chunk.sources[:batch], chunk.coefficients[:batch]
        st, ct = torch.from_numpy(s), torch.from_numpy(c).float()
        feed = {"source": s, "coefficients": c.astype(np.float32)}

        def torch_eager(st=st, ct=ct):
            with torch.inference_mode():
                model(st, ct)

        row = {
            "torch_eager_ms_per_sample": 1e3 * timed(torch_eager, repeats) / batch,
            "onnxruntime_ms_per_sample": 1e3
            * timed(lambda f=feed: session.run(None, f), repeats)
            / batch,
            "exact_solver_ms_per_sample": 1e3
            * timed(lambda s=s, c=c: solve("advection_diffusion", s, c), repeats)
            / batch,
        }
        row["onnxruntime_speedup"] = (
            row["torch_eager_ms_per_sample"] / row["onnxruntime_ms_per_sample"]
        )
        results[f"batch {batch}"] = row
        goals[f"onnxruntime vs torch eager, batch {batch}"] = goal(
            TARGET, row["onnxruntime_speedup"]
        )
        print(
            f"batch {batch:3d}: torch {row['torch_eager_ms_per_sample']:7.2f} ms/sample  "
            f"onnxruntime {row['onnxruntime_ms_per_sample']:7.2f} ms/sample  "
            f"(x{row['onnxruntime_speedup']:.2f})  "
            f"exact solver {row['exact_solver_ms_per_sample']:.3f} ms/sample",
            flush=True,
        )
    results.update(model=args.model, resolution=RESOLUTION, threads=args.threads)
    print(f"wrote {write_results('inference', results, goals)}")


if __name__ == "__main__":
    main()
