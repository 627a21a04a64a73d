"""``GET /metrics``: Prometheus's text format where a user looks for it, on the service.

pdeserve's counters (``service.ingress._Metrics``) are Ray metrics: each process hands
them to its node's Ray metrics agent, which serves every process's metrics on the node's
metrics export port (a private instance: a free port ``service.embedded.start`` picks,
on 127.0.0.1). The ingress asks that agent, on the node it runs on, and answers with
its text. The agent collects the processes' metrics every few seconds: a counter shows a
request some seconds after its answer.

On a cluster each node's agent has its own: ``/metrics`` shows the node of the ingress
replica that answers (with several ingress replicas, Prometheus's own discovery of Ray's
nodes sees them all)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
from fastapi.responses import Response

from service.errors import http_error

#: Prometheus's text exposition format, as Ray's agent answers it.
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
#: How long a scrape waits for the agent (it answers in milliseconds).
SCRAPE_TIMEOUT_S = 10.0


class MetricsUnavailable(RuntimeError):
    """This node exports no metrics (Ray's metrics collection is off, or the node is gone)."""


def export_url() -> str:
    """The URL of the Ray metrics agent of the node this process runs on: its address and
    ``MetricsExportPort`` in ``ray.nodes()`` (a call to Ray's GCS: blocking)."""
    import ray

    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") != here:
            continue
        port = int(node.get("MetricsExportPort") or 0)
        if port <= 0:
            raise MetricsUnavailable("Ray's metrics export is off on this node")
        host = node.get("NodeManagerAddress") or "127.0.0.1"
        host = f"[{host}]" if ":" in host else host  # IPv6
        return f"http://{host}:{port}/metrics"
    raise MetricsUnavailable("this node is not among Ray's nodes")


class NodeMetrics:
    """The metrics of this node's Ray metrics agent, for ``GET /metrics``; where it
    exports is looked up once (``locate``), and again after a scrape that failed."""

    def __init__(self, locate: Callable[[], str] = export_url, timeout_s: float = SCRAPE_TIMEOUT_S):
        self._locate, self._timeout_s = locate, timeout_s
        self._url: str | None = None

    async def response(self) -> Response:
        """The agent's answer, as it gave it; 503 saying why where there is none (never
        an address: the agent's port is internal)."""
        try:
            if self._url is None:
                self._url = await asyncio.to_thread(self._locate)
            # trust_env off: a proxy named by HTTP_PROXY must not carry a call to this node
            async with httpx.AsyncClient(timeout=self._timeout_s, trust_env=False) as client:
                answer = await client.get(self._url)
            answer.raise_for_status()
        except MetricsUnavailable as e:
            raise http_error(503, ["metrics"], f"no metrics: {e}") from None
        except httpx.HTTPError as e:
            self._url = None
            msg = f"no metrics: Ray's metrics agent did not answer ({type(e).__name__})"
            raise http_error(503, ["metrics"], msg) from None
        media_type = answer.headers.get("content-type", PROMETHEUS_TEXT)
        return Response(answer.content, media_type=media_type)
