"""Inference cost per sample: torch eager vs ONNX Runtime (same weights, same threads), and
the exact solver, at batch 1, 8 and 32 on a 128^2 grid, for constant coefficients (the
FFT solve) and for coefficient fields (Poisson with smooth conductivity fields of contrast
1..100: the fields graph, and the Krylov solver to 1e-8).

    .venv/bin/python -m bench.inference [--quick] [--model fno-1m] [--threads 2]
        [--baseline-graph OLD.onnx]

Writes bench/results/inference.json. Goal: ONNX Runtime >= 2x torch eager on CPU, for
constant inputs (the fields graph's own ratio is reported beside it).

``--baseline-graph`` times a constant graph exported by an older commit in the same
rounds, so a change to the model is checked for a slowdown of constant inputs in paired
runs (ratio ``constant_graph_over_baseline``). Make one with, for example::

    git worktree add /tmp/base d1eb231 && cd /tmp/base && PYTHONPATH=. \
      /work/main/.venv/bin/python -c "import torch; from training.export import export_onnx; \
      from training.models import PDESurrogate, preset; torch.manual_seed(0); \
      open('/tmp/base.onnx', 'wb').write(export_onnx(PDESurrogate(**preset('fno-1m')), 128, {}))"
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.common import goal, write_results
from datagen.pipeline import write_split
from datagen.solver import solve
from datagen.spec import FieldLaw, SplitSpec
from training.export import export_onnx
from training.models import PDESurrogate, preset

BATCHES = (1, 8, 32)
RESOLUTION = 128
TARGET = 2.0
PAUSE_S = 0.3


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
HEAP_BLOCKS_UP_TO = 32 << 20  # glibc's largest mmap threshold
KEEP_UP_TO = 1 << 30  # free memory at the heap's top kept, not given back (mallopt's int)


def keep_freed_memory() -> str:
    """glibc malloc: blocks up to 32 MiB come from the heap, which is never trimmed.

    torch eager takes its tensors from malloc. With glibc's defaults a large one (the
    head's 8 MB at batch 1) may be mapped afresh, and page-faulted, at every call, and
    whether it is depends on what the process allocated before: torch's batch-1 time
    measured 14, 25 or 49 ms/sample by allocator settings alone (defaults, and the trim
    threshold alone set: 25 and 49). Fixed here at torch's fastest, so the comparison
    does not flatter ONNX Runtime, whose arena keeps its memory anyway.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        ok = libc.mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS_UP_TO) and libc.mallopt(
            M_TRIM_THRESHOLD, KEEP_UP_TO
        )
    except (OSError, AttributeError):
        ok = False
    if not ok:
        return "allocator defaults (no glibc mallopt here)"
    return "glibc mallopt: M_MMAP_THRESHOLD 32 MiB, M_TRIM_THRESHOLD 1 GiB (torch at its fastest)"


def timed(
    fns: dict[str, Callable[[], object]], rounds: int, per_block: int
) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns`` in every round, timed in alternating blocks.

    Each round times a block of ``per_block`` calls of every function in turn, after a
    pause: a runtime's pool threads spin for a while after a call, and would slow the
    next runtime's block. A block's figure is the median of its calls.
    """
    for fn in fns.values():
        fn()
    blocks: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            time.sleep(PAUSE_S)
            fn()
            times = []
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            blocks[name].append(statistics.median(times))
    return blocks


def round_ratios(slow: list[float], fast: list[float]) -> list[float]:
    """``slow / fast`` of each round; the goal takes their median.

    This VM runs whole stretches of seconds at up to half speed; blocks of one round
    are adjacent in time, so their ratio cancels most of it, where a ratio of the two
    overall medians can pair a fast stretch with a slow one.
    """
    return [a / b for a, b in zip(slow, fast, strict=True)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--model", default="fno-1m")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--baseline-graph", type=Path, help="a constant graph from an older commit")
    args = p.parse_args()
    import onnxruntime as ort

    allocator = keep_freed_memory()
    torch.set_num_threads(args.threads)
    rounds = 3 if args.quick else 15
    data = Path("/tmp/pdeserve-bench-inference.h5")
    spec = SplitSpec(system="advection_diffusion", n_examples=max(BATCHES), resolution=RESOLUTION)
    write_split(spec, data, progress=False)
    darcy = Path("/tmp/pdeserve-bench-inference-fields.h5")
    darcy_spec = SplitSpec(
        system="poisson", n_examples=max(BATCHES), resolution=RESOLUTION, field_law=FieldLaw()
    )
    write_split(darcy_spec, darcy, progress=False)
    from datagen.dataset import open_dataset

    with open_dataset(data) as reader:
        chunk = reader.read()
    with open_dataset(darcy) as reader:
        darcy_chunk = reader.read()
        darcy_fields = darcy_chunk.unified()
    torch.manual_seed(0)
    model = PDESurrogate(**preset(args.model)).eval()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        export_onnx(model, RESOLUTION, {}), options, providers=["CPUExecutionProvider"]
    )
    field_session = ort.InferenceSession(
        export_onnx(model, RESOLUTION, {}, fields=True), options, providers=["CPUExecutionProvider"]
    )
    baseline = None
    if args.baseline_graph is not None:
        baseline = ort.InferenceSession(
            str(args.baseline_graph), options, providers=["CPUExecutionProvider"]
        )
    results, goals = {}, {}
    for batch in BATCHES:
        s, c = chunk.sources[:batch], chunk.coefficients[:batch]
        st, ct = torch.from_numpy(s), torch.from_numpy(c).float()
        feed = {"source": s, "coefficients": c.astype(np.float32)}

        fs, fc = darcy_chunk.sources[:batch], darcy_fields[:batch]
        fst, fct = torch.from_numpy(fs), torch.from_numpy(fc).float()
        field_feed = {"source": fs, "coefficients": fc.astype(np.float32)}

        def torch_eager(st=st, ct=ct):
            with torch.inference_mode():
                model(st, ct)

        def torch_eager_fields(st=fst, ct=fct):
            with torch.inference_mode():
                model(st, ct)

        fns = {
            "torch_eager": torch_eager,
            "onnxruntime": lambda f=feed: session.run(None, f),
            "exact_solver": lambda s=s, c=c: solve("advection_diffusion", s, c),
            "torch_eager_fields": torch_eager_fields,
            "onnxruntime_fields": lambda f=field_feed: field_session.run(None, f),
            "exact_solver_fields": lambda s=fs, c=fc: solve("poisson", s, c, mean="project"),
        }
        pairs = {
            "onnxruntime_fields_speedup": ("torch_eager_fields", "onnxruntime_fields"),
            "fields_graph_over_constant_graph": ("onnxruntime_fields", "onnxruntime"),
            "krylov_over_fields_graph": ("exact_solver_fields", "onnxruntime_fields"),
        }
        if baseline is not None:
            fns["onnxruntime_baseline"] = lambda f=feed: baseline.run(None, f)
            pairs["constant_graph_over_baseline"] = ("onnxruntime", "onnxruntime_baseline")
        seconds = timed(
            fns,
            rounds,
            max(1, 8 // batch) if args.quick else max(2, 32 // batch),
        )
        row = {
            f"{name}_ms_per_sample": 1e3 * statistics.median(t) / batch
            for name, t in seconds.items()
        }
        ratios = round_ratios(seconds["torch_eager"], seconds["onnxruntime"])
        row["onnxruntime_speedup"] = statistics.median(ratios)
        row["onnxruntime_speedup_range"] = [min(ratios), max(ratios)]
        for key, (slow, fast) in pairs.items():
            ratios = round_ratios(seconds[slow], seconds[fast])
            row[key] = statistics.median(ratios)
            row[f"{key}_range"] = [min(ratios), max(ratios)]
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
        print(
            f"  fields: torch {row['torch_eager_fields_ms_per_sample']:7.2f}  onnxruntime "
            f"{row['onnxruntime_fields_ms_per_sample']:7.2f} ms/sample "
            f"(x{row['onnxruntime_fields_speedup']:.2f}; "
            f"{row['fields_graph_over_constant_graph']:.2f} x the constant graph)  Krylov "
            f"{row['exact_solver_fields_ms_per_sample']:.2f} ms/sample "
            f"({row['krylov_over_fields_graph']:.1f} x the fields graph)",
            flush=True,
        )
        if baseline is not None:
            print(
                f"  constant graph / baseline graph: {row['constant_graph_over_baseline']:.3f} "
                f"(range {row['constant_graph_over_baseline_range'][0]:.3f}.."
                f"{row['constant_graph_over_baseline_range'][1]:.3f})",
                flush=True,
            )
    results.update(
        model=args.model,
        resolution=RESOLUTION,
        threads=args.threads,
        allocator=allocator,
        baseline_graph=None if args.baseline_graph is None else args.baseline_graph.name,
        timing=(
            f"median of {rounds} rounds of alternating blocks, {PAUSE_S:g} s pause before "
            "each; the speedup is the median of the rounds' torch / ONNX Runtime ratios"
        ),
    )
    print(f"wrote {write_results('inference', results, goals)}")


if __name__ == "__main__":
    main()
