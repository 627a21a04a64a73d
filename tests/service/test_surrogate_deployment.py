"""The models in a deployment of their own (``surrogate_deployment``): the same answers as
the ingress gives running them itself, readiness through it, and a killed Surrogate
replica replaced while solves go on."""

import os
import signal
import time

import httpx
import numpy as np
import pytest
from service_helpers import API_KEY
from test_app import body
from test_fields_http import darcy

from service import embedded
from service.schema import EncodedArray

HEADERS = {"X-API-Key": API_KEY}
APP = "apart"


@pytest.fixture(scope="module")
def apart(embedded_app, registry_root):
    """A second application beside the package's, its models in a Surrogate deployment."""
    import ray
    from ray import serve

    from service.app import build_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        registry=str(registry_root),
        default_model="default",
        api_keys=[API_KEY],
        request_timeout_s=20,
        surrogate_deployment=True,
        ingress_cpus=0.05,
        surrogate_cpus=0.05,
        exact_cpus=0.05,
    )
    serve.run(build_app(settings), name=APP, route_prefix=f"/{APP}")
    url = f"{embedded_app.proxy_url}/{APP}"
    try:
        deadline = time.monotonic() + 120
        while (r := httpx.get(f"{url}/readyz", timeout=30)).status_code != 200:
            assert time.monotonic() < deadline, f"not ready in 120 s: {r.text[:300]}"
            time.sleep(0.5)
        yield url
    finally:
        if ray.is_initialized():  # run alone, the package's instance may be gone already
            serve.delete(APP)


def field(value) -> np.ndarray:
    return EncodedArray.model_validate(value).decode() if isinstance(value, dict) else value


@pytest.mark.parametrize(
    "request_",
    [body("helmholtz", 64, mode="validate"), darcy("smooth", mode="surrogate")],
    ids=["constant", "fields"],
)
def test_the_deployment_answers_as_the_ingress_does(apart, service, request_):
    here = httpx.post(f"{service}/solve", json=request_, headers=HEADERS, timeout=60)
    there = httpx.post(f"{apart}/solve", json=request_, headers=HEADERS, timeout=60)
    assert here.status_code == there.status_code == 200, (here.text[:300], there.text[:300])
    a, b = here.json(), there.json()
    assert a["mode"] == b["mode"] == request_["mode"] and a["model"] == b["model"]
    assert np.allclose(field(a["solution"]), field(b["solution"]), rtol=0, atol=1e-6)
    assert a["error_estimate"] == pytest.approx(b["error_estimate"], rel=1e-4)
    assert len(embedded.replica_pids("Surrogate", app=APP)) == 1
    assert not embedded.replica_pids("Surrogate")  # the package's application has none


def test_a_killed_surrogate_replica_is_replaced_and_solves_go_on(apart):
    """SIGKILL the Surrogate: Serve notices at its next health check (every 2 s) and starts
    another; a client that retries a 503 or a dropped connection gets its answer."""
    (old,) = embedded.replica_pids("Surrogate", app=APP)
    os.kill(old, signal.SIGKILL)
    request = body("helmholtz", 64)
    for _ in range(20):  # each answered within its 20 s deadline, or a 503 to retry
        try:
            r = httpx.post(f"{apart}/solve", json=request, headers=HEADERS, timeout=20 + 30)
            if r.status_code == 200:
                break
            assert r.status_code in (503, 504), r.text[:300]
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    assert r.status_code == 200 and r.json()["mode"] == "surrogate", r.text[:300]
    (new,) = embedded.replica_pids("Surrogate", app=APP)
    assert new != old
