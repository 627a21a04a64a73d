"""A published model's own cost against another's: both graphs (constant coefficients and
fields) in ONNX Runtime through the runner the service uses, at batch 1 and 32 on a 128^2
grid (resampled to the models' grid and back, as served), in alternating rounds.

    .venv/bin/python -m bench.model_cost [--new default@3] [--old default@2] [--rounds 5]

Writes bench/results/model_cost.json. Goal (issue 39): the new model's ms per sample
within 1.5x of the old one's at batch 1 and 32, both graphs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bench.common import finish, goal
from datagen.generate import generate_block
from datagen.spec import FieldLaw, SplitSpec
from modelstore.registry import BUNDLED_REGISTRY
from modelstore.runner import OnnxSurrogate

BATCHES = (1, 32)


def problems(n: int = 128, count: int = 32):
    spec = SplitSpec("poisson", count, "test", n, 99, block_size=count,
                     field_law=FieldLaw(kind="smooth", contrast=(2.0, 50.0)))  # fmt: skip
    block = generate_block(spec, 0)
    fields = block.unified().astype(np.float32)
    constants = fields.mean(axis=(2, 3))  # the same problems with constant coefficients
    return block.sources.astype(np.float32), constants, fields


def ms_per_sample(model: OnnxSurrogate, f, c, batch: int, repeat: int = 5) -> float:
    model.predict(f[:batch], c[:batch], batch=batch)  # warm
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        model.predict(f[:batch], c[:batch], batch=batch)
        times.append(time.perf_counter() - t)
    return 1e3 * min(times) / batch


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--new", default="default@3")
    p.add_argument("--old", default="default@2")
    p.add_argument("--registry", default=str(BUNDLED_REGISTRY))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    f, constants, fields = problems()
    graphs = {
        (ref, kind): OnnxSurrogate.load(ref, args.registry, fields=kind == "fields")
        for ref in (args.new, args.old)
        for kind in ("constant", "fields")
    }
    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):  # new, old, new, old: the machine's drift shared
        for (ref, kind), model in graphs.items():
            c = fields if kind == "fields" else constants
            for batch in BATCHES:
                key = f"{ref} {kind} batch {batch}"
                samples.setdefault(key, []).append(ms_per_sample(model, f, c, batch))
    medians = {k: statistics.median(v) for k, v in samples.items()}
    ratios = {
        f"{kind} batch {batch}": medians[f"{args.new} {kind} batch {batch}"]
        / medians[f"{args.old} {kind} batch {batch}"]
        for kind in ("constant", "fields")
        for batch in BATCHES
    }
    for k, v in ratios.items():
        print(f"{k}: {args.new} / {args.old} = {v:.2f}")
    results = {"new": args.new, "old": args.old, "ms_per_sample": samples,
               "median_ms_per_sample": medians, "new_over_old": ratios}  # fmt: skip
    goals = {f"cost {k}": goal(1.5, v, higher_is_better=False) for k, v in ratios.items()}
    return finish("model_cost", results, goals)


if __name__ == "__main__":
    raise SystemExit(main())
