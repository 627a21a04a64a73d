"""The application from deploy/serve_config.yaml on a Ray cluster of three nodes
(``cluster_serving.py``, in a process of its own): replicas on both worker nodes, one
registry read by all of them, a reload that reaches every replica, Serve's autoscaling
up and down, and a worker node lost under load."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

HERE = Path(__file__).parent
pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def seen(registry_root, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("cluster")
    out = work / "out.json"
    run = subprocess.run(
        [sys.executable, str(HERE / "cluster_serving.py"), str(registry_root), str(out)],
        capture_output=True, text=True, timeout=900, cwd=HERE.parents[1],
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    return json.loads(out.read_text())


def test_replicas_of_each_deployment_run_on_both_worker_nodes(seen):
    assert seen["placement"] == {
        "Ingress": ["node-a", "node-b"],
        "ExactSolver": ["node-a", "node-b"],
    }
    assert seen["config_args"]["registry"].startswith("file://")


def test_every_replica_reads_the_shared_registry(seen):
    answers = seen["shared"]
    assert {a["status"] for a in answers} == {200}
    assert {a["model"] for a in answers} == {"default@1"}
    assert len({a["by"] for a in answers}) == 2  # both ingress replicas answered


def test_one_reload_reaches_every_replica(seen):
    reload = seen["reload"]
    assert reload["status"] == 200 and reload["by"]
    assert len(reload["seen"]) == 2 and max(reload["seen"].values()) < 10  # within seconds
    assert seen["reference_differs"]  # the new version answers differently


def test_exact_replicas_follow_the_load_within_the_bounds(seen):
    scaling = seen["autoscaling"]
    assert scaling["statuses"] == [200] and scaling["requests"] > 0
    assert scaling["grew_after_s"] < 120 and scaling["shrank_after_s"] < 120
    bounds = seen["config_args"]["exact_autoscaling"]
    assert (bounds["min_replicas"], bounds["max_replicas"]) == (1, 2)


def test_a_node_lost_under_load_loses_no_request(seen):
    loss = seen["node_loss"]
    outcomes = loss["outcomes"]
    counts = Counter(o["status"] for o in outcomes)
    assert counts[200] > 0 and set(counts) <= {200, 503}, counts
    assert all(o["retry_after"] for o in outcomes if o["status"] == 503)
    assert loss["wrong"] == 0  # every 200 is the answer from before the loss
    assert any(o["after_kill"] and o["status"] == 200 for o in outcomes)
    # Only the lost node's proxy dropped connections (sent again, as the SDK does).
    assert all(o["after_kill"] for o in outcomes if o["dropped"])
    assert {a["status"] for a in loss["after"]} == {200}  # the remaining node answers
    # A node joined: the ingress is back to two replicas, on the survivor and the newcomer.
    assert loss["replicas_after"]["Ingress"] == ["node-a", "node-c"]


def test_a_finetuning_job_on_the_cluster_is_served_by_every_replica(seen):
    job = seen["finetune"]
    assert job["status"] == "SUCCEEDED", job.get("logs")
    assert job["reload"] == 200
    assert len(job["served"]) == 2 and set(job["served"].values()) == {"ft@1"}, job["served"]
