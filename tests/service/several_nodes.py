"""The application on a Ray cluster of several nodes on this machine (Ray's
``ray.cluster_utils.Cluster``, one CPU a node, all on loopback), run by
``test_several_nodes.py`` in a process of its own (its Ray driver is not the package's).

    python several_nodes.py REGISTRY REQUESTS.json OUT.json

Deploys two placements one after the other, each sized so that its deployments cannot
share a node: ``apart`` (``surrogate_deployment``: ingress, Surrogate and exact solver on
three nodes) and ``ingress`` (the models in the ingress, the exact solver on another
node). Each answers the requests (through Serve's proxy); OUT gets, per placement, the
node of every replica and the answers (status and JSON)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import httpx
import psutil

API_KEY = "several-nodes"
PLACEMENTS = {
    # One CPU a deployment: each needs a node of its own.
    "apart": {"surrogate_deployment": True, "ingress_cpus": 1.0, "surrogate_cpus": 1.0},
    # The ingress asks for ingress_cpus + surrogate_cpus (the models run there).
    "ingress": {"surrogate_deployment": False, "ingress_cpus": 0.5, "surrogate_cpus": 0.5},
}
DEPLOYMENTS = ("Ingress", "Surrogate", "ExactSolver")


def node_of(pid: int, raylets: dict[int, int]) -> int | None:
    """The node (index) whose raylet started process ``pid``."""
    for p in psutil.Process(pid).parents():
        if p.pid in raylets:
            return raylets[p.pid]
    return None


def replicas(app: str, raylets: dict[int, object]) -> dict[str, list]:
    """Deployment -> the sorted nodes of its replicas on this cluster (Ray titles a worker
    after its actor; a replica of another Ray instance, the test run's own, is left out)."""
    out: dict[str, list] = {}
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        for name in DEPLOYMENTS:
            if cmd.startswith(f"ray::ServeReplica:{app}:{name}"):
                with contextlib.suppress(psutil.Error):  # a replica ending as we look
                    node = node_of(p.info["pid"], raylets)
                    if node is not None:
                        out.setdefault(name, []).append(node)
    return {name: sorted(nodes) for name, nodes in out.items()}


@contextlib.contextmanager
def serving_cluster(**head_args):
    """A ``ray.cluster_utils.Cluster`` (the head only: add nodes), this driver connected
    to it; Serve, the driver and every node stopped on the way out."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from datagen.ray_instance import WORKER_NICENESS

    system = {"worker_niceness": WORKER_NICENESS}
    head = {"include_dashboard": False, "_system_config": system} | head_args
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def main(registry: str, requests_file: str, out_file: str) -> None:
    import ray
    from ray import serve

    from datagen.ray_instance import free_port
    from service.app import build_app
    from service.settings import ServiceSettings

    requests = json.loads(Path(requests_file).read_text())
    results: dict = {}
    with serving_cluster(num_cpus=1) as cluster:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        nodes = [cluster.head_node, *cluster.worker_nodes]
        raylets = {n.all_processes["raylet"][0].process.pid: i for i, n in enumerate(nodes)}
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for app, placement in PLACEMENTS.items():
            settings = ServiceSettings(
                registry=registry,
                default_model="default",
                api_keys=[API_KEY],
                exact_cpus=1.0,
                local_solve_ms=0.0,  # field solves go to the exact replica
                request_timeout_s=60,
                **placement,
            )
            serve.run(build_app(settings), name=app, route_prefix=f"/{app}")
            url = f"http://127.0.0.1:{port}/{app}"
            deadline = time.monotonic() + 180
            while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
                assert time.monotonic() < deadline, f"{app}: not ready in 180 s"
                time.sleep(0.5)
            headers = {"X-API-Key": API_KEY}
            answers = []
            for body in requests:
                r = httpx.post(f"{url}/solve", json=body, headers=headers, timeout=120)
                answers.append({"status": r.status_code, "json": r.json()})
            results[app] = {
                "nodes": len(nodes),
                "replicas": replicas(app, raylets),
                "answers": answers,
            }
            serve.delete(app)
    Path(out_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:4])
