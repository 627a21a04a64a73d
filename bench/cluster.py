"""What distribution costs, and how fast a lost node's requests are served again: the
application on a Ray cluster of one worker node with 2 CPUs and of two worker nodes with
1 CPU each (the same CPUs split, so the ratio is the cost of distribution, not a speed-up),
on this machine (``ray.cluster_utils.Cluster``, a head with no CPU for the control plane,
everything on loopback).

    .venv/bin/python -m bench.cluster [--seconds 20] [--threads 8] [--rounds 2]

Per layout and round: served surrogate throughput (Helmholtz at 64^2 on the bundled default
model, JSON through Serve's proxy, ``threads`` clients for ``seconds``), an ingress replica
per node. On two nodes, then: one node's raylet killed under the same load and a node added;
the time until every request in flight at the kill was answered (connections the lost
node's proxy dropped are sent again, as the SDK does), and until the ingress is back to
two replicas. Writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

import httpx
import numpy as np

from bench.common import finish
from datagen.ray_instance import WORKER_NICENESS, free_port

API_KEY = "bench-cluster"


def request() -> dict:
    x = np.arange(64) / 64
    f = np.sin(2 * np.pi * x)[:, None] * np.cos(4 * np.pi * x)[None, :]
    return {"pde": "helmholtz", "coefficients": {"omega": 3.0}, "source": f.tolist(),
            "mode": "surrogate"}  # fmt: skip


class Load:
    def __init__(self, url: str, threads: int):
        self.url, self.done = url, []  # (start, end, status, dropped)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        body = request()
        with httpx.Client(headers={"X-API-Key": API_KEY}, timeout=120) as client:
            while not self._stop.is_set():
                start, dropped, status = time.monotonic(), 0, None
                while status is None and dropped < 10:
                    try:
                        status = client.post(f"{self.url}/solve", json=body).status_code
                    except httpx.TransportError:
                        dropped += 1
                        time.sleep(0.1)
                self.done.append((start, time.monotonic(), status, dropped))

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


def layout(nodes: int, seconds: float, threads: int, lose_one: bool) -> dict:
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from service.app import build_app
    from service.settings import ServiceSettings

    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False,
                        "_system_config": {"worker_niceness": WORKER_NICENESS}},
    )  # fmt: skip
    workers = [cluster.add_node(num_cpus=2 // nodes) for _ in range(nodes)]
    cluster.wait_for_nodes()
    out: dict = {"nodes": nodes, "cpus_per_node": 2 // nodes}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        settings = ServiceSettings(
            api_keys=[API_KEY], ingress_replicas=nodes, max_replicas_per_node=1,
            ingress_cpus=0.25, surrogate_cpus=0.5, exact_cpus=0.25,  # fits a 1-CPU node
        )  # fmt: skip
        serve.run(build_app(settings), name="bench", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 300
        while httpx.get(f"{url}/readyz", timeout=30).status_code != 200:
            assert time.monotonic() < deadline, "not ready in 300 s"
            time.sleep(0.5)
        with Load(url, threads) as load:
            time.sleep(2.0)  # warm
            start = time.monotonic()
            time.sleep(seconds)
            end = time.monotonic()
        steady = [d for d in load.done if start <= d[0] and d[1] <= end]
        out["requests_per_s"] = len([d for d in steady if d[2] == 200]) / (end - start)
        out["latency_ms_p50"] = 1e3 * statistics.median(d[1] - d[0] for d in steady)
        if lose_one:
            with Load(url, threads) as load:
                time.sleep(3.0)
                killed = time.monotonic()
                cluster.remove_node(workers.pop(), allow_graceful=False)
                workers.append(cluster.add_node(num_cpus=2 // nodes))
                while True:
                    running = serve.status().applications["bench"].deployments["Ingress"]
                    if running.replica_states.get("RUNNING", 0) == nodes:
                        break
                    time.sleep(0.25)
                back = time.monotonic() - killed
                time.sleep(2.0)
            in_flight = [d for d in load.done if d[0] <= killed <= d[1] or
                         (killed <= d[0] <= killed + 1.0)]  # fmt: skip
            out["lost_node"] = {
                "in_flight_answered_after_s": max(d[1] for d in in_flight) - killed,
                "statuses": sorted({str(d[2]) for d in load.done}),
                "dropped_connections_resent": sum(d[3] for d in load.done),
                "ingress_back_after_s": back,
            }
        serve.delete("bench")
    finally:
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--rounds", type=int, default=2, help="ABAB: one, two, one, two nodes")
    args = p.parse_args()
    runs: dict[int, list[dict]] = {1: [], 2: []}
    for r in range(args.rounds):
        for nodes in (1, 2):
            lose = nodes == 2 and r == args.rounds - 1
            runs[nodes].append(layout(nodes, args.seconds, args.threads, lose))
            print(nodes, "node(s):", {k: v for k, v in runs[nodes][-1].items() if k != "lost_node"},
                  runs[nodes][-1].get("lost_node", ""), flush=True)  # fmt: skip
    one = [r["requests_per_s"] for r in runs[1]]
    two = [r["requests_per_s"] for r in runs[2]]
    results = {
        "seconds": args.seconds, "threads": args.threads, "runs": runs,
        "two_over_one": [b / a for a, b in zip(one, two, strict=True)],
        "lost_node": runs[2][-1]["lost_node"],
    }  # fmt: skip
    return finish("cluster", results, {})


if __name__ == "__main__":
    raise SystemExit(main())
