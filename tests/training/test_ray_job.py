"""A fine-tune submitted through the Ray Jobs API to a cluster this test starts and stops."""

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from service.embedded import free_port

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


def test_finetune_runs_as_a_ray_job(base, shifted):
    # Short paths: Ray's socket names must fit in 107 characters.
    root = Path(tempfile.mkdtemp(prefix="pdj", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    # Ray 2.60 clusters use token authentication; this one's token is made here and
    # given to the head and to `ray job submit` alike (and HOME keeps ~/.ray apart).
    env |= {
        "HOME": str(root / "home"),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
    }
    client_env = env
    port, dashboard = free_port(), free_port()
    # Every port of our own: a Ray instance of another test or user may hold the defaults.
    ports = [
        f"--{name}={free_port()}"
        for name in (
            "dashboard-agent-listen-port",
            "dashboard-agent-grpc-port",
            "metrics-export-port",
            "runtime-env-agent-port",
            "ray-client-server-port",
        )
    ]
    head = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            f"--temp-dir={root / 'ray'}",
            "--disable-usage-stats",
            *ports,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    address = f"http://127.0.0.1:{dashboard}"
    out = root / "results.json"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert head.poll() is None, head.stdout.read()
            try:
                if httpx.get(f"{address}/api/version", timeout=5).status_code in (200, 401):
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(1)
        for _ in range(30):  # the dashboard answers before its job agent is up
            job = subprocess.run(
                [
                    RAY,
                    "job",
                    "submit",
                    "--address",
                    address,
                    "--working-dir",
                    str(REPO),
                    "--",
                    sys.executable,  # the cluster's Python: the one Ray runs from
                    "-m",
                    "training.finetune",
                    "--base",
                    "smoke",
                    "--registry",
                    base,
                    "--train",
                    shifted["train"],
                    "--val",
                    shifted["val"],
                    "--test",
                    shifted["test"],
                    "--n-examples",
                    "8",
                    "--lrs",
                    "0.003",
                    "--epochs",
                    "2",
                    "--storage",
                    str(root / "runs"),
                    "--out",
                    str(out),
                ],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if "No available agent" not in job.stdout + job.stderr:
                break
            time.sleep(2)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout.lower()
        results = json.loads(out.read_text())
        assert results["chosen_lr"] == 0.003 and results["test"]["poisson"] > 0
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
