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
        # Serve kills a proxy that misses a 5 s ready check; on a machine whose cores are
        # busy (a training run beside it) start-up takes longer.
        "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
        # Batches between the ingress and the Surrogate (2 MB for 32 solves at 128^2) go
        # inside the call's message instead of through the object store: at concurrency
        # 32 the raylet's CPU per request fell from 0.36 to 0.11 ms. Ray still puts what
        # is over its per-call inline budget (10 MB) in the store.
        "RAY_max_direct_call_object_size": str(INLINE_BYTES),
    }


@dataclass(frozen=True)
class Embedded:
    url: str  # the application, answered by its ingress replica
    proxy_url: str  # Serve's proxy: every application, by route prefix


def start(
    settings: ServiceSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    address: str | None = None,
    verbose: bool = False,
    **ray_init: Any,
) -> Embedded:
    """Start Ray (:func:`datagen.ray_instance.start`: ``address``, ``verbose`` and
    ``ray.init``'s arguments), Serve and the application. ``verbose=False`` keeps Ray's and
    Serve's start-up lines off the terminal (they name Serve's internal proxy URL)."""
    from ray import serve

    from service.app import build_app

    if ray_instance.is_private(address):
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
        proxy_port = free_port(host)
    else:  # a cluster's Serve: its proxy answers on every node, on ``port``
        proxy_port = port
    ray_instance.start(address, verbose=verbose, **ray_init)
    _QUIET[:] = [] if verbose else [True]
    with _quiet_serve():
        serve.start(http_options={"host": host, "port": proxy_port})
        serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
    return Embedded(url=f"http://{host}:{port}", proxy_url=f"http://{host}:{proxy_port}")


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


def replica_pids(deployment: str = "") -> list[int]:
    """PIDs of this instance's replica processes of ``deployment`` (all when empty), from
    ``ps``: Ray titles a worker process after its actor. (``ray.util.state`` needs the
    dashboard, off here.) Only descendants of this process count: another Ray instance on
    the machine may serve a "pdeserve" too."""
    title = f"ray::ServeReplica:{APP_NAME}:{deployment}"
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
    """Stop the application, then Ray (every process of a private instance), and take
    back the environment ``start`` set. The application's replicas get ``grace_s`` to
    finish their requests (deleting it waits for them); past that Ray ends them."""
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            try:
                with _quiet_serve():
                    _within(grace_s, lambda: serve.delete(APP_NAME))
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
