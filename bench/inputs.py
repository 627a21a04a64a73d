"""Physics-aware inputs, in short paired runs: does the FNO learn Darcy flow better from
log a and the reference solution u_ref than from the coefficient values?

    .venv/bin/python -m bench.inputs [--examples 2048] [--epochs 10] [--kind smooth]

Three encodings of the same problems (Poisson, K = a(x) K_SYS-1, contrast 1..100 at 64^2,
the served model's grid), each trained from the same seed, on the same examples, for the
same epochs (Adam 3e-3 with cosine decay, batch 16, relative-L2 loss; an FNO of width 16,
12 modes, 4 layers), and measured on the same held-out problems:

- ``values``: the served model's encoding: f / rms(f) and K's three channels over the
  training set's mean conductivity; the solution in units of the training set's rms;
- ``log``: f / rms(f), log a (a = sqrt(det K / det K_ref), K_ref the log-Euclidean mean)
  and K_ref's shape (K_ref / sqrt(det K_ref), three constant channels); the solution in
  the physical unit rms(f) / sqrt(det K_ref);
- ``log+uref``: as ``log``, with u_ref (the FFT solve at K_ref: one FFT pair) as an input
  channel, and the network predicting the correction added to it (the loss on u itself).

Writes bench/results/inputs.json: validation errors per epoch and the final test error per
encoding (the issue-31 lever 1).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.common import finish
from datagen.coefficients import K11, K12, K22, reference
from datagen.generate import generate_block
from datagen.solver import relative_l2 as numpy_relative_l2
from datagen.solver import solve
from datagen.spec import FieldLaw, SplitSpec
from training.metrics import relative_l2
from training.models.fno import FNO2d

N = 64
ENCODINGS = ("values", "log", "log+uref")


def problems(kind: str, count: int, seed: int, split: str):
    spec = SplitSpec("poisson", count, split, N, seed, block_size=count,
                     field_law=FieldLaw(kind=kind, contrast=(1.0, 100.0)))  # fmt: skip
    block = generate_block(spec, 0, dtype=np.float64)
    return block.sources, block.unified(), block.solutions


def _det(k: np.ndarray) -> np.ndarray:
    return k[:, K11] * k[:, K22] - k[:, K12] ** 2


def encode(name: str, f, c, u, kappa_mean: float, u_rms: float):
    """(inputs (B, C, n, n), target (B, n, n), back: output -> u, offset (B, n, n): what
    the network's output is added to before the loss, u_ref for ``log+uref``) per encoding."""
    s = np.sqrt((f**2).mean(axis=(1, 2)))[:, None, None]
    fn = f / s
    if name == "values":
        x = np.concatenate([fn[:, None], c[:, [K11, K22, K12]] / (s[:, None] * kappa_mean)], 1)
        return x, u / (s * u_rms), lambda p: p * s * u_rms, 0.0 * u
    k_ref = reference(c)  # (B, 6) constants
    root = np.sqrt(_det(k_ref))  # (B,): sqrt(det K_ref)
    log_a = 0.5 * np.log(_det(c) / root[:, None, None] ** 2)
    shape = (k_ref[:, [K11, K22, K12]] / root[:, None])[:, :, None, None]
    shape = np.broadcast_to(shape, (len(f), 3, N, N))
    unit = s / root[:, None, None]  # the solution's physical unit
    channels = [fn[:, None], log_a[:, None], shape]
    if name == "log+uref":
        u_ref = solve("poisson", f, k_ref, mean="project") / unit
        channels.append(u_ref[:, None])
        # the network adds a correction to u_ref; the loss is on the whole answer
        return np.concatenate(channels, 1), u / unit, lambda p: (p + u_ref) * unit, u_ref
    return np.concatenate(channels, 1), u / unit, lambda p: p * unit, 0.0 * u


def train_one(name: str, data: dict, epochs: int, seed: int) -> dict:
    (x, y, _, offset), (xv, _, back_v, _, uv), (xt, _, back_t, _, ut) = (
        data["train"],
        data["val"],
        data["test"],
    )
    torch.manual_seed(seed)
    model = FNO2d(x.shape[1], 16, 12, 4, 64, 1, "fft")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = 16
    steps = epochs * (len(x) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    xt_, yt_ = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    off_ = torch.tensor(offset, dtype=torch.float32)
    rng = np.random.default_rng(seed)

    def error(inputs, back, exact) -> float:
        with torch.no_grad():
            p = model(torch.tensor(inputs, dtype=torch.float32))[:, 0].double().numpy()
        return float(np.mean(numpy_relative_l2(back(p), exact)))

    history, t0 = [], time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        for i in range(len(x) // batch):
            idx = order[i * batch : (i + 1) * batch]
            loss = relative_l2(model(xt_[idx])[:, 0] + off_[idx], yt_[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        history.append(error(xv, back_v, uv))
        print(f"{name:9s} epoch {epoch + 1}: validation {history[-1]:.4f}", flush=True)
    return {"validation": history, "test": error(xt, back_t, ut),
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--kind", choices=["smooth", "two-phase"], default="smooth")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    raw = {
        "train": problems(args.kind, args.examples, 21, "train"),
        "val": problems(args.kind, 256, 22, "val"),
        "test": problems(args.kind, 256, 23, "test"),
    }
    f, c, u = raw["train"]
    kappa_mean = float(np.sqrt(_det(c)).mean())
    u_rms = float(np.sqrt(((u / np.sqrt((f**2).mean(axis=(1, 2)))[:, None, None]) ** 2).mean()))
    results = {"kind": args.kind, "examples": args.examples, "epochs": args.epochs}
    for name in ENCODINGS:
        data = {}
        for split, (fs, cs, us) in raw.items():
            x, y, back, offset = encode(name, fs, cs, us, kappa_mean, u_rms)
            data[split] = (x, y, back, offset, us)
        data["train"] = (data["train"][0], data["train"][1], None, data["train"][3])
        results[name] = train_one(name, data, args.epochs, args.seed)
    base = results["values"]["test"]
    for name in ENCODINGS[1:]:
        results[name]["test_over_values"] = round(results[name]["test"] / base, 3)
    print({name: round(results[name]["test"], 4) for name in ENCODINGS})
    return finish("inputs", results, {})


if __name__ == "__main__":
    raise SystemExit(main())
