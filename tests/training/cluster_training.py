"""Ray Train pre-training on a Ray cluster of several nodes on this machine
(``ray.cluster_utils.Cluster``: a head for the control plane, two worker nodes of one CPU
each, so the two training workers run one per node), run by ``test_cluster_training.py``
in a process of its own.

    python cluster_training.py CONFIG.yaml STORAGE OUT.json

Two runs of the same config on the same cluster: ``whole``, uninterrupted, and ``killed``,
where one worker node's raylet is killed once the run has reported epoch 2 (its second
checkpoint) and a fresh
node joins: Ray Train (``FailureConfig``) restarts the worker group from the last
checkpoint. OUT gets, per run, the node of each worker rank, the log and the best
validation error.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main(config_file: str, storage: str, out_file: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from datagen.ray_instance import WORKER_NICENESS
    from training.config import load_config
    from training.metrics import read_log
    from training.pretrain import pretrain

    config = load_config(config_file)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "_system_config": {"worker_niceness": WORKER_NICENESS},
        },
    )
    nodes = {label: cluster.add_node(num_cpus=1, resources={label: 1}) for label in "ab"}
    cluster.wait_for_nodes()
    results: dict = {}
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        for run in ("whole", "killed"):
            run_dir = Path(storage) / run
            outcome: dict = {}

            def train(run=run, outcome=outcome) -> None:
                try:
                    address = cluster.address
                    outcome["model"] = pretrain(
                        config, run, storage, address=address, progress=False
                    )
                except BaseException as e:  # reported in OUT, the test shows it
                    outcome["error"] = repr(e)

            # Training in a thread: nodes are added and removed from the main thread
            # (Ray's node start-up installs signal handlers).
            trainer = threading.Thread(target=train, daemon=True)
            trainer.start()
            killed_at = None
            while trainer.is_alive():
                trainer.join(timeout=0.2)
                # a checkpoint per epoch, as reported: kill once epoch 2's is there
                if (
                    run == "killed"
                    and killed_at is None
                    and len(list(run_dir.glob("checkpoint_*"))) >= 2
                ):
                    killed_at = time.time()
                    cluster.remove_node(nodes.pop("b"), allow_graceful=False)
                    nodes["c"] = cluster.add_node(num_cpus=1, resources={"c": 1})
            if "error" in outcome:
                raise RuntimeError(f"{run}: {outcome['error']}")
            model = outcome["model"]
            history = read_log(Path(storage) / run / "metrics.jsonl")
            epochs = [h for h in history if "epoch" in h and "event" not in h]
            results[run] = {
                "model": str(model),
                "epochs": [h["epoch"] for h in epochs],
                "val": [h["val_rel_l2/all"] for h in epochs],
                "events": [h for h in history if "event" in h],
                "killed_at": killed_at,
                "nodes_alive": len([n for n in ray.nodes() if n["Alive"]]),
            }
    finally:
        ray.shutdown()
        cluster.shutdown()
    Path(out_file).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:4])
