"""Shared by the service tests: a tiny published model and the test API key."""

import socket
from pathlib import Path

import torch

from training.checkpoint import save_model
from training.export import export
from training.models import PDESurrogate

API_KEY = "test-key-0123"
RESOLUTION = 64
ENVELOPE = {
    "poisson": {"n_examples": 100, "eig": [1.0, 5.0]},
    "advection_diffusion": {"n_examples": 100, "eig": [1.0, 5.0], "psi": [0.2, 1.0]},
    "helmholtz": {"n_examples": 100, "omega": [1.0, 10.0]},
}


def publish_tiny(root: Path | str, name: str, seed: int = 0, workdir: Path | None = None) -> str:
    """An (untrained) small surrogate at 64^2 with the envelope above; returns its ref."""
    torch.manual_seed(seed)
    model = PDESurrogate(8, 6, n_layers=2, fc_dim=16, source_ref=1.0, solution_ref=0.05)
    meta = {"data": {"resolution": RESOLUTION, "envelope": ENVELOPE}}
    ckpt = save_model(model, Path(workdir or root) / f".ckpt-{name}-{seed}", meta)
    return export(ckpt, name, str(root)).ref


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
