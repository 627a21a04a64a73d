"""Replicas on other nodes keep working: the application on a Ray cluster of three nodes
(``several_nodes.py``, in a process of its own), with its deployments placed apart (each
asks for a node's whole CPU), answers as one machine does: surrogate answers from the
models in the ingress and in a Surrogate deployment on another node, field solves on the
exact replica's node."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_app import body
from test_fields_http import darcy, field, unified

from datagen.solver import relative_l2, solve

HERE = Path(__file__).parent
REQUESTS = [
    body("helmholtz", 64, mode="surrogate"),
    darcy("smooth", mode="surrogate"),
    darcy("two-phase", mode="exact", tolerance=1e-8),
    body("poisson", 64, mode="exact"),
]


@pytest.fixture(scope="module")
def cluster_answers(registry_root, tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("nodes")
    (work / "requests.json").write_text(json.dumps(REQUESTS))
    out = work / "answers.json"
    run = subprocess.run(
        [sys.executable, str(HERE / "several_nodes.py"), str(registry_root),
         str(work / "requests.json"), str(out)],
        capture_output=True, text=True, timeout=600, cwd=HERE.parents[1],
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    return json.loads(out.read_text())


def test_every_deployment_runs_on_a_node_of_its_own(cluster_answers):
    apart, ingress = cluster_answers["apart"]["replicas"], cluster_answers["ingress"]["replicas"]
    placed = [apart["Ingress"], apart["Surrogate"], apart["ExactSolver"]]
    assert all(len(nodes) == 1 and nodes[0] is not None for nodes in placed), apart
    assert len({nodes[0] for nodes in placed}) == 3, apart
    assert "Surrogate" not in ingress, ingress  # the models run in the ingress
    assert ingress["Ingress"] != ingress["ExactSolver"], ingress


def test_answers_from_other_nodes_match_one_machines(cluster_answers):
    apart = cluster_answers["apart"]["answers"]
    ingress = cluster_answers["ingress"]["answers"]
    assert all(a["status"] == 200 for a in apart + ingress), [a["json"] for a in apart + ingress]
    for a, b in zip(apart, ingress, strict=True):
        assert a["json"]["mode"] == b["json"]["mode"]
        here, there = field(a["json"]["solution"]), field(b["json"]["solution"])
        assert np.allclose(here, there, rtol=0, atol=1e-5)
    # The surrogate answers came from another node's Surrogate replica and from the ingress
    # alike; the field solve from the exact replica's node, checked against datagen's solver.
    solved = [a["json"] for a in (apart[2], ingress[2])]
    assert [a["solver"]["solved_in"] for a in solved] == ["exact replica", "exact replica"]
    request = REQUESTS[2]
    exact = solve("poisson", field(request["source"]), unified(request), mean="project",
                  tolerance=1e-12)  # fmt: skip
    for answer in solved:
        assert relative_l2(field(answer["solution"]), exact) < 1e-6
