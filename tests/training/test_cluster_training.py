"""Ray Train pre-training across the nodes of a Ray cluster on this machine
(``cluster_training.py``, in a process of its own): one worker per node, then a worker
node lost after epoch 2 and a fresh node joining; the run resumes from its last
checkpoint and ends where the uninterrupted run ends."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

HERE = Path(__file__).parent
pytestmark = pytest.mark.cluster
SMOKE = HERE.parents[1] / "training" / "configs" / "smoke.yaml"


def test_training_survives_the_loss_of_a_node(tmp_path):
    raw = yaml.safe_load(SMOKE.read_text())
    raw["data"]["cache_dir"] = str(tmp_path / "cache")
    raw["optim"]["epochs"] = 8  # time to lose a node after epoch 2
    assert raw["num_workers"] == 2 and raw["max_failures"] >= 1
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out.json"
    run = subprocess.run(
        [sys.executable, str(HERE / "cluster_training.py"), str(tmp_path / "config.yaml"),
         str(tmp_path / "runs"), str(out)],
        capture_output=True, text=True, timeout=900, cwd=HERE.parents[1],
    )  # fmt: skip
    assert run.returncode == 0, (run.stdout[-2000:], run.stderr[-4000:])
    whole, killed = (json.loads(out.read_text())[k] for k in ("whole", "killed"))
    # Each worker asks for 1 CPU; the head has none and each worker node one: a worker
    # per node, so the node lost took a worker with it.
    assert whole["epochs"] == killed["epochs"] == list(range(1, 9))
    assert whole["events"] == [] and killed["killed_at"] is not None
    (resumed,) = [e for e in killed["events"] if e["event"] == "resumed"]
    assert resumed["after_epoch"] in (1, 2)  # from a checkpoint, not from scratch
    assert resumed["time"] > killed["killed_at"]
    assert killed["nodes_alive"] == 3  # the head, the survivor and the node that joined
    # The same data order per epoch and the restored state: no worse than uninterrupted.
    assert min(killed["val"]) <= 1.05 * min(whole["val"]), (killed["val"], whole["val"])
    assert min(whole["val"]) < 0.5 * whole["val"][0]  # it learned
    assert Path(killed["model"], "weights.safetensors").exists()
