"""Training throughput and peak memory: pdeserve's FNO step against a plain PyTorch baseline.

The baseline is the same network written the way the paper's code writes it:
channels-first, complex weights, rfft2/irfft2 and a complex einsum, 1x1
Conv1d for W, and the 7 input channels built per example in a Dataset
(source + 6 constant images, normalised in numpy) and collated by a
DataLoader. pdeserve: channels-last, the DFT-matmul (or FFT) spectral path,
constant channels as a per-example bias on the device, the data set in one
tensor (on the GPU when there is one), bf16 autocast on GPU.

Each measurement runs in its own process so its peak memory is its own.

    .venv/bin/python -m bench.train [--quick] [--device cpu|cuda] [--name train]

Writes bench/results/NAME.json. Goal: pdeserve >= 1.5x the baseline's
training samples/s for fno-1m and fno-16m at 128^2.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench.common import goal, write_results
from datagen.pipeline import write_split
from datagen.spec import SplitSpec
from training.data import BatchLoader, FieldData
from training.models import PDESurrogate, preset
from training.normalization import compute_stats

MODELS = ("fno-1m", "fno-16m")
RESOLUTION = 128
TARGET = 1.5


# ---- the baseline: the paper's way -------------------------------------------------------------


class BaselineSpectralConv(nn.Module):
    def __init__(self, c_in: int, c_out: int, modes: int):
        super().__init__()
        self.modes = modes
        scale = 1 / (c_in * c_out)
        self.w1 = nn.Parameter(scale * torch.rand(c_in, c_out, modes, modes, dtype=torch.cfloat))
        self.w2 = nn.Parameter(scale * torch.rand(c_in, c_out, modes, modes, dtype=torch.cfloat))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        m = self.modes
        x_ft = torch.fft.rfft2(x)
        out = torch.zeros(b, self.w1.shape[1], h, w // 2 + 1, dtype=torch.cfloat, device=x.device)
        out[:, :, :m, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m, :m], self.w1)
        out[:, :, -m:, :m] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m:, :m], self.w2)
        return torch.fft.irfft2(out, s=(h, w))


class BaselineFNO(nn.Module):
    def __init__(self, width: int, modes: int, n_layers: int = 4, fc_dim: int = 128):
        super().__init__()
        self.fc0 = nn.Linear(7, width)
        self.convs = nn.ModuleList(
            BaselineSpectralConv(width, width, modes) for _ in range(n_layers)
        )
        self.ws = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(n_layers))
        self.fc1 = nn.Linear(width, fc_dim)
        self.fc2 = nn.Linear(fc_dim, 1)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        x = self.fc0(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for i, (conv, pw) in enumerate(zip(self.convs, self.ws, strict=True)):
            x = conv(x) + pw(x.reshape(b, x.shape[1], -1)).reshape(b, -1, h, w)
            if i < len(self.convs) - 1:
                x = self.act(x)
        x = self.fc2(self.act(self.fc1(x.permute(0, 2, 3, 1))))
        return x.permute(0, 3, 1, 2)


class PerExampleDataset(torch.utils.data.Dataset):
    """Builds the 7-channel input image per example, as the paper's loader does."""

    def __init__(self, sources, solutions, coefficients, f_ref: float, c_ref: np.ndarray):
        self.sources, self.solutions, self.coefficients = sources, solutions, coefficients
        self.f_ref, self.c_ref = f_ref, c_ref

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        f = self.sources[i][None]
        n = f.shape[-1]
        channels = [np.full((1, n, n), c) for c in self.coefficients[i]]
        x = np.concatenate([f, *channels], axis=0).astype(np.float32)
        scale = np.sqrt(np.mean(np.square(x[0]))) / self.f_ref
        x = x / scale
        x[1:] = x[1:] / self.c_ref[:, None, None]
        return torch.from_numpy(x), torch.from_numpy(self.solutions[i][None])


# ---- one measurement -----------------------------------------------------------------------------


def make_data(path: Path, n: int) -> Path:
    return write_split(
        SplitSpec(system="advection_diffusion", n_examples=n, resolution=RESOLUTION),
        path,
        progress=False,
    )


def measure(variant: str, model_name: str, device: str, data_path: str, steps: int, batch: int):
    torch.manual_seed(0)
    dev = torch.device(device)
    data = FieldData.from_files([data_path])
    stats = compute_stats(data)
    args = preset(model_name)
    bf16 = dev.type == "cuda"
    if variant == "baseline":
        ex = data.load()
        ds = PerExampleDataset(
            ex.source.numpy(),
            ex.solution.numpy(),
            ex.coefficients.numpy(),
            stats.source_ref,
            np.asarray(stats.coefficient_ref, np.float32),
        )
        workers = 4 if dev.type == "cuda" else 0
        loader = torch.utils.data.DataLoader(
            ds,
            batch_size=batch,
            shuffle=True,
            drop_last=True,
            num_workers=workers,
            pin_memory=dev.type == "cuda",
            persistent_workers=workers > 0,
        )
        model = BaselineFNO(**args).to(dev)

        def batches():
            while True:
                for x, y in loader:
                    yield x.to(dev, non_blocking=True), None, y.to(dev, non_blocking=True)

        def step_loss(x, _c, y):
            return nn.functional.mse_loss(model(x), y)

        bf16 = False  # the paper's code trains in float32
    else:
        spectral = variant.split("-", 1)[1]
        if dev.type == "cpu":
            torch.set_flush_denormal(True)  # as training.trainer does
        model = PDESurrogate(**args, spectral=spectral, **stats.as_dict()).to(dev)
        loader = BatchLoader(data, batch, dev, placement="auto")
        ref = stats.solution_ref

        def batches():
            epoch = 0
            while True:
                for b in loader.epoch(epoch):
                    yield b.source, b.coefficients, b.solution
                epoch += 1

        def step_loss(s, c, u):
            return nn.functional.mse_loss(model(s, c) / ref, u / ref)

    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    it = batches()

    def step():
        x, c, y = next(it)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = step_loss(x, c, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    warmup = 3
    for _ in range(warmup):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    peak = (
        torch.cuda.max_memory_allocated()
        if dev.type == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    return {
        "samples_per_s": steps * batch / elapsed,
        "peak_memory_mb": peak / 2**20,
        "memory_kind": "cuda max_memory_allocated" if dev.type == "cuda" else "process max RSS",
        "batch": batch,
        "steps": steps,
        "bf16": bf16,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def run_one(variant, model, device, data_path, steps, batch) -> dict:
    cmd = [sys.executable, __file__, "--one", variant, model, device, str(data_path)]
    cmd += ["--steps", str(steps), "--batch", str(batch)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{variant} {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--name", default=None, help="results name (default: train or train-gpu)")
    p.add_argument("--one", nargs=4, metavar=("VARIANT", "MODEL", "DEVICE", "DATA"))
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    args = p.parse_args()
    if args.one:
        variant, model, device, data = args.one
        print(json.dumps(measure(variant, model, device, data, args.steps, args.batch)))
        return
    gpu = args.device == "cuda"
    batch = args.batch or (32 if gpu else 8)
    steps = args.steps or ((10 if args.quick else 40) if gpu else (2 if args.quick else 6))
    variants = ("baseline", "pdeserve-dft", "pdeserve-fft")
    results, goals = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = make_data(Path(tmp) / "bench.h5", max(256, 4 * batch))
        for model in MODELS:
            row = {v: run_one(v, model, args.device, data, steps, batch) for v in variants}
            best = max(("pdeserve-dft", "pdeserve-fft"), key=lambda v: row[v]["samples_per_s"])
            base = row["baseline"]["samples_per_s"]
            row["speedup"] = {v: row[v]["samples_per_s"] / base for v in variants[1:]}
            row["best"] = best
            results[model] = row
            goals[f"{model} {args.device} samples/s vs baseline"] = goal(
                TARGET, row[best]["samples_per_s"] / base
            )
            print(
                f"{model:8s} {args.device}: baseline {base:8.1f}/s "
                + " ".join(f"{v} {row[v]['samples_per_s']:8.1f}/s" for v in variants[1:])
                + f"  best x{row[best]['samples_per_s'] / base:.2f}"
                + "  peak MB: "
                + " ".join(f"{row[v]['peak_memory_mb']:.0f}" for v in variants),
                flush=True,
            )
    results["resolution"] = RESOLUTION
    out = write_results(args.name or ("train-gpu" if gpu else "train"), results, goals)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
