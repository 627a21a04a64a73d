"""One real Serve instance for the service tests, serving tiny models published here."""

from pathlib import Path

import httpx
import pytest
from service_helpers import API_KEY, publish_tiny, wait_ready

from modelstore.registry import Registry
from service.embedded import free_port


@pytest.fixture(scope="package")
def registry_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("registry")
    publish_tiny(root, "default", workdir=tmp_path_factory.mktemp("ckpt"))
    # A card that claims errors per band (the tiny model is far off, so its error
    # estimate disagrees): auto tries it where the claim is within the tolerance.
    claims = {
        "test_rel_l2/poisson-smooth(1,10)": 0.04,
        "test_rel_l2/poisson-two-phase(1,10)": 0.06,
        "test_rel_l2/poisson-two-phase(10,100)": 0.08,
    }
    publish_tiny(root, "banded", workdir=tmp_path_factory.mktemp("ckpt"), metrics=claims)
    return root


@pytest.fixture(scope="package")
def ports() -> dict[str, int]:
    return {"http": free_port(), "metrics": free_port()}


@pytest.fixture(scope="package")
def embedded_app(registry_root, ports):
    """The application on an embedded Ray instance (2 CPUs), as ``pdeserve serve`` runs it."""
    from service import embedded
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        registry=str(registry_root),
        default_model="default",
        api_keys=[API_KEY],
        max_batch_items=16,
        max_body_bytes=4 * 2**20,
        request_timeout_s=20,
    )
    _STOP.append(embedded.stop)
    try:
        app = embedded.start(
            settings,
            port=ports["http"],
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _metrics_export_port=ports["metrics"],
        )
        wait_ready(app.url, 60)
        yield app
    finally:
        embedded.stop()


@pytest.fixture(scope="package")
def service(embedded_app) -> str:
    """Base URL of the application (answered by its ingress replica), API key required."""
    return embedded_app.url


# This folder is no Python package, so "package" scope lasts the whole session here:
# the Ray instance is stopped after the folder's last test instead (other tests start
# Ray instances of their own, and 2 CPUs do not hold two).
_STOP: list = []


def pytest_runtest_teardown(item, nextitem):
    here = Path(__file__).parent
    if _STOP and (nextitem is None or here not in Path(nextitem.path).parents):
        _STOP.pop()()


@pytest.fixture(scope="package")
def client(service):
    with httpx.Client(base_url=service, headers={"X-API-Key": API_KEY}, timeout=60) as c:
        yield c


@pytest.fixture(scope="package")
def registry(registry_root) -> Registry:
    return Registry(registry_root)


@pytest.fixture(scope="package")
def metrics_url(service, ports) -> str:
    """Ray's Prometheus endpoint, where Serve's and pdeserve's metrics are exported."""
    return f"http://127.0.0.1:{ports['metrics']}/metrics"
