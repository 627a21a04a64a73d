"""Field solves under load and faults: the surrogate path keeps its latency while Krylov
solves saturate their replica; a request's time budget stops its solve; a killed exact
replica mid-solve is a 503 to retry, never a lost request."""

import os
import signal
import statistics
import threading
import time

import httpx
import numpy as np
from service_helpers import API_KEY
from test_app import body
from test_fields_http import b64, darcy

from datagen.media import conductivity, gaussian_random_fields
from service import embedded

HEADERS = {"X-API-Key": API_KEY}


def hard_darcy(n: int, **extra) -> dict:
    """A two-phase medium of contrast 1e4 to 1e-12: seconds of CG at this size."""
    g = gaussian_random_fields(np.random.default_rng(1), np.array([0.1]), n)
    a = conductivity(g, np.array([1e4]), "two-phase")[0]
    x = np.arange(n) / n
    f = np.sin(2 * np.pi * x)[None, :] * np.cos(4 * np.pi * x)[:, None]
    return {
        "pde": "poisson",
        "source": b64(f),
        "coefficients": {"k11": 0.01, "k22": 0.01, "k12": 0.0, "conductivity": b64(a)},
        "mode": "exact",
        "tolerance": 1e-12,
        "max_iterations": 10_000,
        **extra,
    }


def _p50(client: httpx.Client, count: int = 25) -> float:
    times = []
    request = body("helmholtz", 32)
    for _ in range(count):
        t0 = time.perf_counter()
        r = client.post("/solve", json=request)
        times.append(time.perf_counter() - t0)
        assert r.status_code == 200 and r.json()["mode"] == "surrogate"
    return statistics.median(times)


def test_surrogate_latency_holds_while_field_solves_saturate_their_replica(client, service):
    idle = _p50(client)
    stop, answered = threading.Event(), []

    def flood():
        with httpx.Client(base_url=service, headers=HEADERS, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/solve", json=darcy("two-phase", 100.0, mode="exact", tolerance=1e-11))
                answered.append(r.status_code)

    threads = [threading.Thread(target=flood) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)  # the exact replica busy with Krylov solves
        loaded = _p50(client)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert answered and set(answered) == {200}
    assert loaded <= 2 * idle, (
        f"surrogate p50 {1e3 * loaded:.1f} ms under load, idle {1e3 * idle:.1f}"
    )


def test_a_time_budget_ends_in_504_and_stops_its_solve(embedded_app, registry_root):
    """A second application with a 2 s budget: the hard solve is cut at it, so the exact
    replica (one Krylov thread) answers the next field request at once."""
    from ray import serve

    from service.app import build_app
    from service.settings import ServiceSettings

    settings = ServiceSettings(
        registry=str(registry_root),
        api_keys=[API_KEY],
        request_timeout_s=2.0,
        ingress_cpus=0.05,
        surrogate_cpus=0.05,
        exact_cpus=0.05,
    )
    serve.run(build_app(settings), name="short", route_prefix="/short")
    url = f"{embedded_app.proxy_url}/short/solve"
    try:
        t0 = time.perf_counter()
        r = httpx.post(url, json=hard_darcy(256), headers=HEADERS, timeout=60)
        assert r.status_code == 504 and "2 s" in r.text, r.text[:300]
        assert time.perf_counter() - t0 < 5
        t0 = time.perf_counter()
        quick = httpx.post(url, json=darcy("smooth", mode="exact"), headers=HEADERS, timeout=60)
        assert quick.status_code == 200, quick.text[:300]
        assert time.perf_counter() - t0 < 1.5, "the cut-off solve kept the replica busy"
    finally:
        serve.delete("short")


def test_a_killed_exact_replica_mid_solve_is_a_503_to_retry(embedded_app):
    (old,) = embedded.replica_pids("ExactSolver")
    answer: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answer.append(
            httpx.post(
                f"{embedded_app.url}/solve", json=hard_darcy(128), headers=HEADERS, timeout=60
            )
        )
    )
    request.start()
    time.sleep(1.0)  # mid-solve
    os.kill(old, signal.SIGKILL)
    request.join(timeout=60)
    (r,) = answer
    assert r.status_code == 503 and r.headers["Retry-After"] == "1", r.text[:300]
    deadline = time.monotonic() + 60
    while True:  # Serve starts another replica; a retry is answered
        again = httpx.post(
            f"{embedded_app.url}/solve", json=darcy("smooth", mode="exact"), headers=HEADERS
        )
        if again.status_code == 200:
            break
        assert again.status_code == 503, again.text[:300]
        assert time.monotonic() < deadline, "no exact replica within 60 s of the kill"
        time.sleep(0.5)
    assert embedded.replica_pids("ExactSolver") != [old]
