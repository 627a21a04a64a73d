"""The application on a Ray instance started here, its ingress answering HTTP itself.

Serve's default path runs every request through an HTTP proxy actor, which hands it
to the ingress replica over a Ray actor call: one more process, and several ms of
CPU per request. With direct ingress (Ray >= 2.55) the ingress replica runs the HTTP
server itself, and calls between replicas go over gRPC. On a 2-core machine that
halved the latency of a single solve (bench/serve.py). Serve still starts its proxy,
on a port of its own (``proxy_url``); it routes by prefix to every application.

Serve reads these switches when its processes start, so they are set before
``ray.init``: the Ray processes started here inherit them. A cluster started
elsewhere (``pdeserve serve --address``) keeps its own settings.

Ray itself comes from :mod:`datagen.ray_instance`: a private instance on loopback unless
an address is given, whatever ``RAY_ADDRESS`` or ``/tmp/ray`` hold.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
import subprocess
from dataclasses import dataclass
from typing import Any

from datagen import ray_instance
from datagen.ray_instance import free_port
from service.settings import ServiceSettings

APP_NAME = "pdeserve"

#: Largest object a Ray call carries in its message (Ray's default: 100 KiB).
INLINE_BYTES = 16 * 2**20

#: Largest message between Serve's processes over gRPC (Serve's default: 4 MiB).
GRPC_MESSAGE_BYTES = 2**30

#: Seconds a stopping service waits for its application to go (its replicas drain for
#: ``ServiceSettings.drain_timeout_s``, 3 s by default) before Ray is shut down anyway.
STOP_GRACE_S = 5.0

#: Ports after the application's, for ingress replicas of other applications.
EXTRA_APPLICATIONS = 7

# Whether start() was asked to keep Serve's INFO lines off the terminal ([True]).
_QUIET: list[bool] = []

# What start() changed in os.environ, and the values it replaced (None: unset).
_SET: dict[str, str | None] = {}


def direct_ingress_environment(port: int) -> dict[str, str]:
    """Serve's switches for an ingress replica that answers on ``port`` itself, and Ray's
    inline limit for the calls between replicas."""
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
        # Ingress replicas take the lowest free port of the range (the upper bound is
        # exclusive): the application's, started first, gets ``port``; the rest are for
        # other applications deployed beside it.
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(port + EXTRA_APPLICATIONS + 1),
        # A restarted ingress replica takes its port back at once (the default holds a
        # freed port for minutes, for HAProxy's sake, which is not in use here).
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
        # A stopping ingress replica still finishes its requests, but need not stay open
        # 30 s more for a load balancer to deregister it: there is none in front of it
        # (with the default, every stop took 30 s).
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        # The replicas' code runs on the event loop that serves their HTTP and gRPC, not on
        # a loop in a thread of its own: every message of a request crossed threads twice
        # (a 128^2 surrogate request 10.4 -> 8.8 ms, /healthz 1.03 -> 0.75 ms). pdeserve's
        # handlers await their heavy work in threads, so the loop stays free.
        "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
        # Serve kills a proxy that misses a 5 s ready check; on a machine whose cores are
        # busy (a training run beside it) start-up takes longer.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
        # Batches between the ingress and the Surrogate (2 MB for 32 solves at 128^2) go
        # inside the call's message instead of through the object store: at concurrency
        # 32 the raylet's CPU per request fell from 0.36 to 0.11 ms. Ray still puts what
        # is over its per-call inline budget (10 MB) in the store.
        "RAY_max_direct_call_object_size": str(INLINE_BYTES),
        # With gRPC between Serve's processes a message to a replica may carry at most
        # 4 MiB by default: Serve's proxy failed (500) an application's 1024^2 answer
        # (16 MB in float64) and would a 512^2 one validated. Requests are capped by
        # max_body_bytes (64 MiB); the answers of a batch can be larger.
        "RAY_SERVE_REPLICA_GRPC_MAX_MESSAGE_LENGTH": str(GRPC_MESSAGE_BYTES),
    }


@dataclass(frozen=True)
class Embedded:
    url: str  # the application, answered by its ingress replica (a cluster: its proxies)
    proxy_url: str  # Serve's proxy: every application, by route prefix
    listen: str = ""  # HOST:PORT the answering servers bind (a cluster: on every node)


class ApplicationTaken(RuntimeError):
    """The cluster already runs an application of that name or at that route prefix, one
    this command did not create: it is left as it is."""


#: The applications this process deployed (and so may delete).
_CREATED: list[str] = []


def start(
    settings: ServiceSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    address: str | None = None,
    verbose: bool = False,
    app_name: str = APP_NAME,
    route_prefix: str = "/",
    **ray_init: Any,
) -> Embedded:
    """Start Ray (:func:`datagen.ray_instance.start`: ``address``, ``verbose`` and
    ``ray.init``'s arguments), Serve and the application. ``verbose=False`` keeps Ray's and
    Serve's start-up lines off the terminal (they name Serve's internal proxy URL).

    On a cluster (``address``) the application is ``app_name`` at ``route_prefix`` beside
    whatever runs there: :class:`ApplicationTaken` if either is in use, and Serve's HTTP
    options stay the cluster's (``host``/``port`` only where this starts Serve)."""
    from ray import serve

    from service.app import build_app

    private = ray_instance.is_private(address)
    if private:
        if (app_name, route_prefix) != (APP_NAME, "/"):
            raise ValueError("a private instance serves one application: name and route are set")
        try:  # taken, the ingress would quietly take the next port of its range
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
                s.bind((host, port))
        except OSError as e:
            raise OSError(f"cannot serve on {host}:{port}: {e.strerror}") from None
        for key, value in direct_ingress_environment(port).items():
            if "_PORT" in key or key not in os.environ:  # a switch the user set stays as set
                _SET[key] = os.environ.get(key)
                os.environ[key] = value
        # Where Ray's metrics agent serves the node's metrics (the ingress's GET /metrics
        # asks it, service/metrics.py): a free port, on loopback as the instance.
        ray_init.setdefault("_metrics_export_port", free_port())
    ray_instance.start(address, verbose=verbose, **ray_init)
    _QUIET[:] = [] if verbose else [True]
    with _quiet_serve():
        if private:
            proxy = (host, free_port(host))
            serve.start(http_options={"host": host, "port": proxy[1]})
        else:
            proxy = _cluster_proxies(host, port, app_name, route_prefix)
        serve.run(build_app(settings), name=app_name, route_prefix=route_prefix)
        _CREATED.append(app_name)
    if private:
        return Embedded(f"http://{host}:{port}", f"http://{host}:{proxy[1]}", f"{host}:{port}")
    shown = f"http://{_reachable(proxy[0])}:{proxy[1]}"
    path = "" if route_prefix == "/" else route_prefix
    return Embedded(f"{shown}{path}", shown, f"{proxy[0]}:{proxy[1]}")


def _cluster_proxies(host: str, port: int, app_name: str, route_prefix: str) -> tuple[str, int]:
    """The host and port the cluster's Serve proxies bind (Serve started here with
    ``host``/``port`` where it is not running), once ``app_name`` and ``route_prefix``
    are known to be free."""
    from ray import serve

    details = _serve_details()
    if details is None:
        serve.start(http_options={"host": host, "port": port})
        details = _serve_details() or {}
    http = details.get("http_options") or {}
    listen = (http.get("host", host), int(http.get("port", port)))
    for name, app in (details.get("applications") or {}).items():
        prefix = app.get("route_prefix")
        if name == app_name or prefix == route_prefix:
            url = f"http://{_reachable(listen[0])}:{listen[1]}{'' if prefix == '/' else prefix}"
            raise ApplicationTaken(
                f"the cluster already runs the application {name!r} at route {prefix} "
                f"(answering at {url}), which this command did not start and leaves as it "
                "is; to serve another beside it, pass --app-name NAME and --route-prefix "
                "/PREFIX"
            )
    return listen


def _serve_details() -> dict | None:
    """Serve's view of the cluster (applications, HTTP options); None if Serve is off."""
    from ray.serve.context import _get_global_client

    client = _get_global_client(raise_if_no_controller_running=False)
    return None if client is None else client.get_serve_details()


def _reachable(listen_host: str) -> str:
    """A host to reach servers binding ``listen_host`` at: on every interface, the
    cluster's own address (the GCS's host)."""
    if listen_host not in ("0.0.0.0", "::", "[::]", ""):
        return listen_host
    import ray

    return ray.get_runtime_context().gcs_address.rpartition(":")[0] or "127.0.0.1"


def _quiet_serve() -> contextlib.AbstractContextManager:
    """Serve's INFO lines off, unless ``start`` was verbose."""
    if not _QUIET:
        return contextlib.nullcontext()
    return ray_instance.quieter("ray.serve", logging.WARNING)


def wait_ready(url: str, timeout_s: float = 120.0) -> str | None:
    """Poll ``GET url/readyz`` until it answers 200: None then, else what it said last."""
    import time

    import httpx

    deadline, last = time.monotonic() + timeout_s, "no answer"
    while True:
        try:
            r = httpx.get(f"{url}/readyz", timeout=10)
            if r.status_code == 200:
                return None
            last = f"{r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            return last
        time.sleep(0.5)


def replica_pids(deployment: str = "", app: str = APP_NAME) -> list[int]:
    """PIDs of this instance's replica processes of ``deployment`` of application ``app``
    (all when empty), from ``ps``: Ray titles a worker process after its actor.
    (``ray.util.state`` needs the dashboard, off here.) Only descendants of this process
    count: another Ray instance on the machine may serve a "pdeserve" too."""
    title = f"ray::ServeReplica:{app}:{deployment}"
    out = subprocess.run(["ps", "-eo", "pid,ppid,args"], capture_output=True, text=True).stdout
    parents, found = {}, []
    for line in out.splitlines()[1:]:
        pid, ppid, *cmd = line.split(None, 2)
        parents[int(pid)] = int(ppid)
        if cmd and cmd[0].startswith(title):
            found.append(int(pid))
    me, mine = os.getpid(), []
    for pid in found:
        p = pid
        while p > 1 and p != me:
            p = parents.get(p, 0)
        if p == me:
            mine.append(pid)
    return sorted(mine)


def stop(grace_s: float = STOP_GRACE_S) -> None:
    """Stop the applications ``start`` deployed (none other), then Ray (every process of a
    private instance), and take back the environment ``start`` set. The applications'
    replicas get ``grace_s`` to finish their requests (deleting one waits for them); past
    that Ray ends them."""
    import ray
    from ray import serve

    created, _CREATED[:] = list(_CREATED), []
    try:
        if ray.is_initialized():
            try:
                with _quiet_serve():
                    for name in created:
                        _within(grace_s, functools.partial(serve.delete, name))
            finally:
                ray_instance.stop()
    finally:
        for key, value in _SET.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _SET.clear()


def _within(seconds: float, call: Any) -> None:
    """``call()`` in a daemon thread, waited for at most ``seconds`` (errors ignored: the
    caller shuts Ray down next either way)."""
    import threading

    def run() -> None:
        with contextlib.suppress(Exception):
            call()

    thread = threading.Thread(target=run, daemon=True, name="pdeserve-stop")
    thread.start()
    thread.join(seconds)
