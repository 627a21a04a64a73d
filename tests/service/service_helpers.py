"""Shared by the service tests: a tiny published model and the test API key."""

import time
from pathlib import Path

import httpx
import torch

from modelstore.sources import law_envelope
from training.checkpoint import save_model
from training.export import export
from training.models import PDESurrogate

API_KEY = "test-key-0123"
RESOLUTION = 64
MEDIA = {"n_examples": 50, "laws": ["smooth", "two-phase"], "contrast": [1.0, 100.0]}
ENVELOPE = {
    "poisson": {"n_examples": 100, "eig": [1.0, 5.0], "field": MEDIA | {"length": [0.05, 0.3]}},
    "advection_diffusion": {"n_examples": 100, "eig": [1.0, 5.0], "psi": [0.2, 1.0]},
    "helmholtz": {
        "n_examples": 100,
        "omega": [1.0, 10.0],
        "field": {"n_examples": 50, "laws": ["smooth"], "variation": [0.0, 0.3]},
    },
}


def publish_tiny(
    root: Path | str,
    name: str,
    seed: int = 0,
    workdir: Path | None = None,
    metrics: dict[str, float] | None = None,
    sources: bool = False,
) -> str:
    """An (untrained) small surrogate at 64^2 with the envelope above and the card
    ``metrics`` given (errors per band: what auto's planner reads); with ``sources`` the
    envelope records the paper's sources too (the service then checks a request's);
    returns its ref."""
    torch.manual_seed(seed)
    model = PDESurrogate(8, 6, n_layers=2, fc_dim=16, source_ref=1.0, solution_ref=0.05)
    envelope = ENVELOPE
    if sources:
        law = {k: {"source": law_envelope(k, RESOLUTION).model_dump()} for k in ENVELOPE}
        envelope = {k: v | law[k] for k, v in ENVELOPE.items()}
    meta = {"data": {"resolution": RESOLUTION, "envelope": envelope}, "metrics": metrics or {}}
    ckpt = save_model(model, Path(workdir or root) / f".ckpt-{name}-{seed}", meta)
    return export(ckpt, name, str(root)).ref


def wait_ready(url: str, seconds: float, alive=lambda: True) -> None:
    """Poll GET /readyz until 200; fail after ``seconds`` or once ``alive()`` is false."""
    deadline = time.monotonic() + seconds
    while True:
        assert alive(), "the service process ended"
        try:
            if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not become ready in {seconds:g} s"
        time.sleep(0.5)
