"""The application from deploy/serve_config.yaml on a Ray cluster of several nodes on this
machine (``ray.cluster_utils.Cluster``: a head for the control plane and two worker nodes
of one CPU each, every node labelled by a resource of its own, all on loopback), run by
``test_cluster.py`` in a process of its own (its Ray driver is not the package's).

    python cluster_serving.py REGISTRY OUT.json

One cluster, in order; OUT gets what each step saw:

1. ``placement``: the config's application with an ingress on each worker node and the
   exact deployment spread the same way (``max_replicas_per_node: 1``): the node of every
   replica, from the raylet that started it;
2. ``shared``: the registry as a ``file://`` URL every node reads: answers from both
   ingress replicas (``X-Served-By``) name the same model;
3. ``reload``: a new version published into that registry, ``POST /admin/reload`` sent
   once: how long until every replica answers with it;
4. ``autoscaling``: exact replicas under a load generator and after it (Serve's
   ``autoscaling_config``: target 1 ongoing request, 1..2 replicas);
5. ``node_loss``: a worker node's raylet killed while a load generator runs: every
   status and Retry-After (connections the lost node's proxy dropped are sent again and
   counted), answers compared with one from before, the remaining node's answers, then
   a node added and the replica counts once they are back;
6. ``finetune``: a node for training joins, a fine-tuning ``ray job submit`` (Ray's job
   API on the head's dashboard) publishes into the shared registry, one
   ``POST /admin/reload``, and both ingress replicas answer with the new model.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from several_nodes import replicas, serving_cluster  # noqa: E402
from test_app import body, field  # noqa: E402
from test_fields_http import darcy  # noqa: E402

API_KEY = "cluster-key"
APP = "pdeserve"
CONFIG = HERE.parents[1] / "deploy" / "serve_config.yaml"
SURROGATE = body("helmholtz", 32, mode="surrogate")
EXACT = darcy("smooth", mode="exact", tolerance=1e-6)


class Load:
    """Threads posting ``request`` until stopped; every outcome kept (status, Retry-After,
    replica, solution or error)."""

    def __init__(self, url: str, request: dict, threads: int):
        self.url, self.request, self.outcomes = url, request, []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(headers={"X-API-Key": API_KEY}, timeout=120) as client:
            while not self._stop.is_set():
                self.outcomes.append(self._one(client))

    def _one(self, client: httpx.Client) -> dict:
        """One request to its end. Every node's proxy shares the port here, so some
        connections go to the node that is lost; one it drops before any answer is
        sent again, as the SDK does (a solve is idempotent), and counted."""
        t, dropped = time.monotonic(), []
        for _ in range(4):
            try:
                r = client.post(f"{self.url}/solve", json=self.request)
            except httpx.TransportError as e:
                dropped.append(repr(e)[:200])
                time.sleep(0.2)
                continue
            out = {"status": r.status_code, "retry_after": r.headers.get("retry-after"),
                   "by": r.headers.get("x-served-by"), "t": t, "dropped": dropped}  # fmt: skip
            payload = r.json()
            if r.status_code == 200:
                out["solution"] = field(payload["solution"])
                out["model"] = payload.get("model")
            else:
                out["error"] = str(payload)[:300]
            return out
        return {"status": None, "t": t, "dropped": dropped}  # lost

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=180)


def running(deployment: str) -> int:
    from ray import serve

    status = serve.status().applications[APP].deployments[deployment]
    return int(status.replica_states.get("RUNNING", 0))


def wait_for(predicate, seconds: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > seconds:
            raise TimeoutError(f"{what}: not within {seconds:g} s")
        time.sleep(0.25)
    return time.monotonic() - start


def finetune_job(dashboard: str, registry: Path, work: Path, url: str, headers: dict) -> dict:
    """Data for a new regime, ``training.finetune`` submitted as a Ray job publishing
    ``ft`` into ``registry``, one reload, then which replicas answer with ``ft@1``."""
    import subprocess

    from ray.job_submission import JobStatus, JobSubmissionClient

    data = work / "data"
    subprocess.run(
        [sys.executable, "-m", "pdeserve.cli", "datagen", "poisson", "--out", str(data),
         "--eig", "5", "10", "--resolution", "64", "--n-train", "8", "--n-val", "8",
         "--n-test", "8", "--quiet"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    entrypoint = " ".join([
        sys.executable, "-m", "training.finetune", "--base", "default",
        "--registry", str(registry), "--n-examples", "8", "--lrs", "1e-3", "--epochs", "1",
        "--publish-anyway", "--train", str(data / "train.h5"), "--val", str(data / "val.h5"),
        "--test", str(data / "test.h5"), "--storage", str(work / "runs"), "--publish", "ft",
        "--publish-registry", str(registry), "--out", str(work / "ft.json"),
    ])  # fmt: skip
    client = JobSubmissionClient(f"http://{dashboard}")
    start = time.monotonic()
    job = client.submit_job(entrypoint=entrypoint)
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    wait_for(lambda: client.get_job_status(job) in terminal, 600, "the fine-tuning job")
    status = str(client.get_job_status(job))
    out: dict = {"status": status, "job_s": time.monotonic() - start}
    if status != "SUCCEEDED":
        out["logs"] = client.get_job_logs(job)[-3000:]
        return out
    # A Poisson problem outside ft's narrow envelope: answered by the model all the same.
    request = body("poisson", 32, mode="surrogate", model="ft", out_of_envelope="surrogate")
    before = httpx.post(f"{url}/solve", json=request, headers=headers, timeout=120)
    r = httpx.post(f"{url}/admin/reload", headers=headers, timeout=60)
    served: dict[str, str] = {}
    for _ in range(24):
        a = httpx.post(f"{url}/solve", json=request, headers=headers, timeout=120)
        served[a.headers.get("x-served-by")] = a.json().get("model", str(a.status_code))
    out |= {"before_reload": before.json().get("model", before.status_code),
            "reload": r.status_code, "served": served}  # fmt: skip
    return out


def main(registry: str, out_file: str) -> None:
    shared = Path(out_file).parent / "registry"
    shutil.copytree(registry, shared)
    with serving_cluster(num_cpus=0, include_dashboard=True) as cluster:
        results = scenarios(cluster, shared, Path(out_file).parent)
    Path(out_file).write_text(json.dumps(results))


def scenarios(cluster, shared: Path, work: Path) -> dict:
    """Steps 1-6 of the module docstring on ``cluster`` (the head only, so far)."""
    import ray
    from ray import serve
    from service_helpers import publish_tiny

    from datagen.ray_instance import free_port
    from service.app import app_builder

    results: dict = {}
    nodes = {}
    for label in ("node-a", "node-b"):
        nodes[label] = cluster.add_node(num_cpus=1, resources={label: 1})
    cluster.wait_for_nodes()

    def raylets() -> dict[int, str]:
        live = {"head": cluster.head_node, **nodes}
        return {n.all_processes["raylet"][0].process.pid: label for label, n in live.items()}

    context = ray.init(address=cluster.address, log_to_driver=False)
    port = free_port()
    config = yaml.safe_load(CONFIG.read_text())
    serve.start(http_options={"host": config["http_options"]["host"], "port": port})
    (app,) = config["applications"]
    args = dict(app["args"]) | {
        "registry": shared.as_uri(),  # file://: an fsspec URL every node reads
        "api_keys": [API_KEY],
        "ingress_replicas": 2,
        "max_replicas_per_node": 1,
        "ingress_cpus": 0.3,
        "surrogate_cpus": 0.2,
        "exact_cpus": 0.5,
        "local_solve_ms": 0.0,  # field solves go to the exact deployment
        "latest_ttl_s": 3600.0,  # only /admin/reload makes a new version servable
        "exact_autoscaling": {
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 1.0,
            "downscale_delay_s": 3.0,
        },
    }
    results["config_args"] = {k: v for k, v in args.items() if k != "api_keys"}
    serve.run(app_builder(args), name=APP, route_prefix="/")
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=30).status_code == 200, 240, "ready")
    headers = {"X-API-Key": API_KEY}

    def ask(request: dict, times: int) -> list[dict]:
        out = []
        for _ in range(times):
            r = httpx.post(f"{url}/solve", json=request, headers=headers, timeout=120)
            payload = r.json()
            solution = payload.get("solution")
            out.append(
                {
                    "status": r.status_code,
                    "by": r.headers.get("x-served-by"),
                    "model": payload.get("model"),
                    "solution": None if solution is None else field(solution),
                }
            )
        return out

    # 2. both ingress replicas answer from the shared registry
    answers = ask(SURROGATE, 24)
    results["shared"] = [{k: a[k] for k in ("status", "by", "model")} for a in answers]
    reference = answers[0]["solution"]
    # 4. autoscaling (its second replica lands on the other node: placement, 1.)
    with Load(url, EXACT, threads=6) as load:
        grew = wait_for(lambda: running("ExactSolver") == 2, 120, "exact replicas grow")
        time.sleep(1.0)
    results["placement"] = replicas(APP, raylets())
    shrank = wait_for(lambda: running("ExactSolver") == 1, 120, "exact replicas shrink")
    results["autoscaling"] = {"grew_after_s": grew, "shrank_after_s": shrank,
                              "statuses": sorted({o["status"] for o in load.outcomes}, key=str),
                              "requests": len(load.outcomes)}  # fmt: skip
    # 3. a new version, one reload, every replica serves it
    publish_tiny(shared, "default", seed=7, workdir=work)
    assert ask(SURROGATE, 1)[0]["model"] == "default@1"  # cached until the reload
    r = httpx.post(f"{url}/admin/reload", headers=headers, timeout=60)
    reloaded_by, sent = r.headers.get("x-served-by"), time.monotonic()
    seen: dict[str, float] = {}

    def everyone_serves_v2() -> bool:
        for a in ask(SURROGATE, 4):
            if a["model"] == "default@2":
                seen.setdefault(a["by"], time.monotonic() - sent)
        return len(seen) == 2

    wait_for(everyone_serves_v2, 60, "every replica serves default@2")
    results["reload"] = {"status": r.status_code, "by": reloaded_by, "seen": seen}
    reference_v2 = ask(SURROGATE, 1)[0]["solution"]
    # 5. a node lost under load, then a node added
    with Load(url, SURROGATE, threads=4) as load:
        time.sleep(2.0)
        killed_at = time.monotonic()
        cluster.remove_node(nodes.pop("node-b"), allow_graceful=False)
        time.sleep(8.0)
    after = ask(SURROGATE, 8)
    nodes["node-c"] = cluster.add_node(num_cpus=1, resources={"node-c": 1})
    back = wait_for(lambda: running("Ingress") == 2, 180, "the ingress replicas come back")
    wrong = [
        o for o in load.outcomes
        if o["status"] == 200 and not np.allclose(o["solution"], reference_v2, atol=1e-6)
    ]  # fmt: skip
    results["node_loss"] = {
        "outcomes": [{k: o.get(k) for k in ("status", "retry_after", "by", "error", "dropped")}
                     | {"after_kill": o["t"] >= killed_at} for o in load.outcomes],
        "wrong": len(wrong),
        "after": [{k: a[k] for k in ("status", "by", "model")} for a in after],
        "ingress_back_after_s": back,
        "replicas_after": replicas(APP, raylets()),
    }  # fmt: skip
    results["reference_differs"] = bool(not np.allclose(reference, reference_v2))
    # 6. a fine-tuning job on the cluster, published to the shared registry, served
    cluster.add_node(num_cpus=1, resources={"training": 1})
    results["finetune"] = finetune_job(context.dashboard_url, shared, work, url, headers)
    serve.delete(APP)
    return results


if __name__ == "__main__":
    main(*sys.argv[1:3])
