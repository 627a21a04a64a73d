"""One real Serve instance for the service tests, serving tiny models published here."""

import socket
import time
from pathlib import Path

import httpx
import pytest
import torch

from service.registry import Registry
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="package")
def registry_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    publish_tiny(root, "default", workdir=tmp_path_factory.mktemp("ckpt"))
    return root


@pytest.fixture(scope="package")
def service(registry_root):
    """Base URL of the application on an embedded Ray instance (2 CPUs), API key required."""
    import ray
    from ray import serve

    from service.app import build_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        registry=str(registry_root),
        default_model="default",
        api_keys=[API_KEY],
        max_batch_items=16,
        max_body_bytes=4 * 2**20,
        request_timeout_s=20,
    )
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(serve_app := build_app(settings), name="pdeserve", route_prefix="/")
        del serve_app
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=10).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the service did not become ready in 60 s"
            time.sleep(0.5)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="package")
def client(service):
    with httpx.Client(base_url=service, headers={"X-API-Key": API_KEY}, timeout=60) as c:
        yield c


@pytest.fixture(scope="package")
def registry(registry_root) -> Registry:
    return Registry(registry_root)
