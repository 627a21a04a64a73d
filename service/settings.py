"""Typed settings of the service, shared by ``pdeserve serve``, the Serve config and tests."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from modelstore.registry import DEFAULT_MODEL, DEFAULT_REGISTRY


def keys_from_env() -> list[str]:
    """``PDESERVE_API_KEYS``: comma-separated keys; empty means no key is asked for."""
    return [k.strip() for k in os.environ.get("PDESERVE_API_KEYS", "").split(",") if k.strip()]


class ExactAutoscaling(BaseModel):
    """Serve's autoscaling_config for the exact deployment: replicas follow the requests
    queued per replica (field solves take milliseconds to seconds each)."""

    model_config = ConfigDict(extra="forbid")
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=4, ge=1)
    target_ongoing_requests: float = Field(default=2.0, gt=0)
    upscale_delay_s: float = Field(default=5.0, ge=0)
    downscale_delay_s: float = Field(default=60.0, ge=0)


class ServiceSettings(BaseModel):
    """What the application needs; every field has a default that runs on a laptop."""

    model_config = ConfigDict(extra="forbid")
    registry: str = Field(default=DEFAULT_REGISTRY, description="registry root: folder or URL")
    default_model: str = Field(default=DEFAULT_MODEL, description="name[@version] served")
    routing: bool = Field(
        default=True,
        description="route a request that names no model to the published model covering it "
        "with the lowest measured error on its band (service/routing.py); off: the default",
    )
    api_keys: list[str] = Field(default_factory=keys_from_env, repr=False)
    max_batch_items: int = Field(default=256, ge=1)
    max_body_bytes: int = Field(default=64 * 2**20, ge=1024)
    request_timeout_s: float = Field(default=60.0, gt=0)
    latest_ttl_s: float = Field(default=60.0, ge=0, description="re-resolve name@latest after")
    # Dynamic batching: problems per ingress -> Surrogate call, and calls in flight per
    # Surrogate replica (one queued there keeps its streams busy while the next forms).
    max_batch_size: int = Field(default=32, ge=1)
    surrogate_calls_in_flight: int = Field(default=2, ge=1)
    # While another call is out, a new one waits up to this for max_batch_size problems.
    call_hold_s: float = Field(default=0.004, ge=0)
    ort_threads: int | None = Field(default=None, ge=1)
    # CPUs per replica: fractions, so the whole application fits on 2 CPUs.
    ingress_cpus: float = Field(default=0.25, gt=0)
    surrogate_cpus: float = Field(default=1.0, gt=0)
    exact_cpus: float = Field(default=0.5, gt=0)
    surrogate_deployment: bool = Field(
        default=False,
        description="run the models in a Surrogate deployment of their own (surrogate_replicas "
        "of surrogate_cpus each: scaled apart from the ingress, on GPU nodes) instead of in "
        "the ingress (the default: no call to another replica, ~12 ms on 2 cores)",
    )
    ingress_replicas: int = Field(
        default=1,
        ge=1,
        description="ingress replicas (HTTP, checks, plans and, by default, the models): on "
        "a cluster, one per node that serves; /admin/reload reaches them all",
    )
    max_replicas_per_node: int | None = Field(
        default=None,
        ge=1,
        description="Serve's cap on one deployment's replicas per node (1: spread over nodes)",
    )
    require_api_keys: bool = Field(
        default=False,
        description="refuse to build the application without API keys (serve_config.yaml "
        "sets it: a cluster's port is reachable from its network)",
    )
    surrogate_replicas: int = Field(default=1, ge=1)
    exact_replicas: int = Field(default=1, ge=1)
    exact_autoscaling: ExactAutoscaling | None = Field(
        default=None,
        description="Serve autoscaling of the exact deployment (then exact_replicas is ignored)",
    )
    # Per exact replica: Krylov solves at once (threads, each one core and below the
    # surrogate in CPU priority), and field problems batched into one solve.
    exact_concurrency: int = Field(default=1, ge=1)
    local_solve_ms: float = Field(
        default=100.0,
        ge=0,
        description="field solves predicted to take at most this long run in the ingress "
        "(one Krylov thread, when free) instead of the exact deployment; 0: never",
    )
    exact_batch: int = Field(default=8, ge=1)
    max_ongoing_requests: int = Field(default=128, ge=1)
    # Serve finds a dead replica at its next health check (default every 10 s): two
    # fault runs that killed the Surrogate waited 0.3 and 10.2 s before a restart began.
    health_check_period_s: float = Field(default=2.0, gt=0)
    # A stopping replica finishes the requests it holds for at most this long (Serve's
    # graceful shutdown; its default, 20 s, would hold a SIGTERM past a 10 s stop).
    drain_timeout_s: float = Field(default=3.0, ge=0)
    access_log: bool = Field(default=False, description="Serve's per-request log lines")


# What the ingress replica shares with its HTTP middleware: the settings, and the routes
# the middleware answers itself (path -> handler). Serve ships the deployment class by
# value, so a module global of service.ingress would be a copy; these are shared.
_ACTIVE: list[ServiceSettings] = []
_DIRECT: dict[str, Any] = {}


def activate(settings: ServiceSettings, direct: dict[str, Any] | None = None) -> None:
    _ACTIVE[:] = [settings]
    _DIRECT.clear()
    _DIRECT.update(direct or {})


def active() -> ServiceSettings | None:
    return _ACTIVE[0] if _ACTIVE else None


def direct_route(path: str) -> Any | None:
    return _DIRECT.get(path)
