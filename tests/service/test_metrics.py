"""GET /metrics on the service: Prometheus's text format with pdeserve's counters, fetched
from Ray's metrics agent on the ingress's node; behind the API key like every route but
health and docs; a 503 that names no address where the agent does not answer."""

import asyncio
import http.server
import json
import threading
import time

import httpx
import pytest
from fastapi import HTTPException
from test_app import body

from service.embedded import free_port
from service.metrics import MetricsUnavailable, NodeMetrics

#: Ray's agent collects the processes' metrics every few seconds; a busy 2-core machine
#: can take much longer.
EXPORT_WAIT_S = 90


def _solves(text: str) -> float:
    """pdeserve's solves counted in a scrape, over every pde and mode."""
    prefix = "ray_pdeserve_solves_total{"
    lines = [line for line in text.splitlines() if line.startswith(prefix)]
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines)


def test_metrics_count_a_solve(client, service):
    assert client.post("/solve", json=body("helmholtz", n=32)).status_code == 200
    assert httpx.get(f"{service}/metrics", timeout=30).status_code == 401  # keys are set
    deadline = time.monotonic() + EXPORT_WAIT_S
    while True:
        r = client.get("/metrics")
        assert r.status_code == 200, r.text[:500]
        assert r.headers["content-type"].startswith("text/plain"), r.headers
        if _solves(r.text) >= 1:
            break
        assert time.monotonic() < deadline, [
            line for line in r.text.splitlines() if "pdeserve" in line
        ]
        time.sleep(2)
    assert "# TYPE ray_pdeserve_solves_total counter" in r.text
    assert any(line.startswith("ray_serve_") for line in r.text.splitlines())  # Serve's own


class _Agent(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        data = b"# TYPE ray_x_total counter\nray_x_total 3.0\n"
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def agent():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Agent)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def test_the_agents_answer_is_passed_on_and_its_place_looked_up_once(agent):
    looked_up = []

    def locate():
        looked_up.append(agent)
        return agent

    metrics = NodeMetrics(locate)
    for _ in range(2):
        response = asyncio.run(metrics.response())
        assert response.body.endswith(b"ray_x_total 3.0\n")
        assert response.media_type == "text/plain; version=0.0.4; charset=utf-8"
    assert len(looked_up) == 1


def test_no_agent_is_a_503_naming_no_address_and_looked_up_again():
    port = free_port()
    looked_up = []

    def locate():
        looked_up.append(port)
        return f"http://127.0.0.1:{port}/metrics"

    def off():
        raise MetricsUnavailable("Ray's metrics export is off on this node")

    metrics = NodeMetrics(locate, timeout_s=5)
    for check in (metrics, metrics, NodeMetrics(off)):
        with pytest.raises(HTTPException) as info:
            asyncio.run(check.response())
        detail = json.dumps(info.value.detail)
        assert info.value.status_code == 503 and "no metrics" in detail
        assert str(port) not in detail and "127.0.0.1" not in detail, detail
    assert len(looked_up) == 2  # a failed scrape forgets where the agent was
