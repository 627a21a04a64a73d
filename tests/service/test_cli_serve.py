"""`pdeserve serve` as a user runs it: a process of its own, on a Ray instance of its own
whatever the machine holds, listening on loopback only, and gone within 10 s of SIGTERM or
SIGINT, every process it started with it."""

import json
import signal
import sys
from pathlib import Path

import httpx
from ray_helpers import (
    Command,
    clean_env,
    free_port,
    listening,
    loopback,
    ray_head,
    short_tmp,
    still_running,
)
from service_helpers import wait_ready

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "helmholtz.json"
#: The issue's bound, with room for a loaded 2-core machine.
STOP_S = 10


def serve(registry_root: Path, port: int, env: dict[str, str]) -> Command:
    command = [sys.executable, "-m", "pdeserve.cli", "serve", "--port", str(port)]
    command += ["--registry", str(registry_root), "--num-cpus", "2"]
    return Command.start(command, env)


def check_stopped(service: Command, tree: list, signum: int, seconds: float) -> None:
    output = service.output
    name = signal.Signals(signum).name
    assert service.process.returncode == 0, output[-2000:]
    assert seconds < STOP_S, f"{name} took {seconds:.1f} s to stop the service"
    assert output.rstrip().splitlines()[-1].startswith(f"pdeserve serve: stopped ({name})")
    assert "received at time" not in output and "Traceback" not in output, output[-2000:]
    assert not still_running(tree), "processes of the service outlived it"


def test_serve_ignores_a_stale_cluster_and_stops_on_sigterm(registry_root):
    """A dead cluster named by RAY_ADDRESS and by a stale ray_current_cluster (what a
    stopped `ray start` leaves): the service starts its own Ray all the same."""
    root = short_tmp("pds")
    env = clean_env(root)
    (root / "ray").mkdir()
    dead = f"127.0.0.1:{free_port()}"
    (root / "ray" / "ray_current_cluster").write_text(dead)
    env["RAY_ADDRESS"] = dead
    port = free_port()
    service = serve(registry_root, port, env)
    url = f"http://127.0.0.1:{port}"
    try:
        service.wait_for("Ctrl-C stops it", 180)
        wait_ready(url, 120, alive=lambda: service.process.poll() is None)
        r = httpx.post(f"{url}/solve", json=json.loads(EXAMPLE.read_text()), timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "default@1" and out["validation"]["relative_l2"] >= 0
        tree = service.tree()
        names = {p.name() for p in tree}
        assert {"gcs_server", "raylet"} <= names  # its own instance
        sockets = listening(tree)
        assert (("127.0.0.1", port) in {s[:2] for s in sockets}) and len(sockets) > 5
        assert all(loopback(address) for address, _, _ in sockets), sorted(sockets)
        # Ray's fixed ports stay free for a `ray start` (the dashboard agent's taken, a
        # head's job agent could not start).
        assert not {p for _, p, _ in sockets} & {6379, 8265, 10001, 44217, 44227, 52365}
    finally:
        seconds = service.stop(signal.SIGTERM)
    check_stopped(service, tree, signal.SIGTERM, seconds)
    output = service.output
    assert f"URL:  {url}" in output and f"{url}/docs" in output and "curl" in output
    # The banner is the only URL shown, and no Ray log line follows it.
    assert output.count("http") == output[output.index("pdeserve is serving") :].count("http")
    after = output[output.index("pdeserve is serving") :].split("Ctrl-C stops it")[1]
    assert "pid=" not in after and "INFO" not in after, after[:1000]


def test_serve_beside_a_running_cluster_uses_its_own_and_stops_on_sigint(registry_root):
    """A live head started by `ray start` (the fine-tuning journey): the service neither
    joins nor disturbs it, and SIGINT to its process alone (not a terminal's Ctrl-C to
    the group) stops it."""
    root = short_tmp("pdh")
    env = clean_env(root)
    with ray_head(root, env) as head:
        assert (root / "ray" / "ray_current_cluster").read_text().strip() == head.gcs
        port = free_port()
        service = serve(registry_root, port, env | {"RAY_ADDRESS": head.gcs})
        try:
            service.wait_for("Ctrl-C stops it", 180)
            tree = service.tree()
            assert {"gcs_server", "raylet"} <= {p.name() for p in tree}
            on_head = [p.name() for p in Command(head.process).tree()]
            assert not [n for n in on_head if n.startswith("ray::Serve")], on_head
        finally:
            seconds = service.stop(signal.SIGINT)
        check_stopped(service, tree, signal.SIGINT, seconds)
        assert head.process.poll() is None, "stopping the service stopped the cluster"
