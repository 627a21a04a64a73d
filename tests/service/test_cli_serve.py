"""`pdeserve serve` as a user runs it: a process of its own, on a Ray instance of its own
whatever the machine holds, listening on loopback only, ready however its clients poll,
gone soon after SIGTERM or SIGINT (about 3 s quiet) and after SIGKILL, every process it started
with it, its port free for the next start at once."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import yaml
from ray_helpers import (
    BIN,
    Command,
    clean_env,
    end_group,
    free_port,
    listening,
    loopback,
    ray_head,
    short_tmp,
    still_running,
)
from service_helpers import wait_ready

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "helmholtz.json"
CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve_config.yaml"
#: A bound against a hang, not a speed figure (quiet, a stop takes about 3 s: docs/serving.md).
#: The stop's own budget is 5 s for the application to drain, then 3 + 1 s for Ray's
#: processes to end; beside two CPU hogs one took 13.6 s.
STOP_S = 30


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


def poll_ready(url: str, service: Command, seconds: float = 240) -> list[str]:
    """GET /readyz from the first second on with a 0.5 s timeout (clients that give up on
    the way), until 200; what each answer was."""
    deadline, seen = time.monotonic() + seconds, []
    while True:
        assert service.process.poll() is None, service.output[-3000:]
        try:
            r = httpx.get(f"{url}/readyz", timeout=0.5)
            seen.append(f"{r.status_code} {r.text[:200]}")
            if r.status_code == 200:
                return seen
        except httpx.TransportError as e:  # not listening yet, or slower than 0.5 s
            seen.append(type(e).__name__)
        assert time.monotonic() < deadline, f"not ready in {seconds:g} s: {seen[-5:]}"
        time.sleep(0.5)


def gone(processes: list, seconds: float) -> list[str]:
    """Waits up to ``seconds`` for ``processes`` to end; those left (then killed)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        alive = [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        if not alive:
            break
        time.sleep(0.5)
    return still_running(processes)


def test_serve_ignores_a_stale_cluster_and_stops_on_sigterm(registry_root):
    """A dead cluster named by RAY_ADDRESS and by a stale ray_current_cluster (what a
    stopped `ray start` leaves): the service starts its own Ray all the same. Readiness
    polled with short timeouts from the first second never sticks; a restart takes the
    port back at once; a SIGKILL leaves no process behind."""
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
        seen = poll_ready(url, service)
        answers = [a for a in seen if a[0].isdigit()]
        assert all(a.startswith("503") and "not ready: " in a for a in answers[:-1]), seen
        service.wait_for("Ctrl-C stops it", 180)
        assert "warning: not ready" not in service.output
        r = httpx.post(f"{url}/solve", json=json.loads(EXAMPLE.read_text()), timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "default@1" and out["validation"]["relative_l2"] >= 0
        # Ray's metrics, from the agent on the port the command chose (on loopback: below)
        metrics = httpx.get(f"{url}/metrics", timeout=30)
        assert metrics.status_code == 200, metrics.text[:500]
        assert metrics.headers["content-type"].startswith("text/plain")
        tree = service.tree()
        names = {p.name() for p in tree}
        assert {"gcs_server", "raylet"} <= names  # its own instance
        sockets = listening(tree)
        assert (("127.0.0.1", port) in {s[:2] for s in sockets}) and len(sockets) > 5
        assert all(loopback(address) for address, _, _ in sockets), sorted(sockets)
        # Ray's fixed ports stay free for a `ray start` (the dashboard agent's taken, a
        # head's job agent could not start).
        assert not {p for _, p, _ in sockets} & {6379, 8265, 10001, 44217, 44227, 52365}
        # Its replicas run at the command's priority, not Ray's nice 15 (README, serving).
        replicas = [p for p in tree if p.name().startswith("ray::ServeReplica")]
        assert len(replicas) == 2 and {p.nice() for p in replicas} == {os.nice(0)}
        for _ in range(3):  # the server closes these: its side waits in TIME-WAIT
            httpx.get(f"{url}/healthz", headers={"Connection": "close"}, timeout=30)
    finally:
        seconds = service.stop(signal.SIGTERM)
    check_stopped(service, tree, signal.SIGTERM, seconds)
    output = service.output
    assert f"URL:  {url}" in output and f"{url}/docs" in output and "curl" in output
    assert f"metrics: {url}/metrics" in output
    # The banner is the only URL shown, and no Ray log line follows it.
    assert output.count("http") == output[output.index("pdeserve is serving") :].count("http")
    after = output[output.index("pdeserve is serving") :].split("Ctrl-C stops it")[1]
    assert "pid=" not in after and "INFO" not in after, after[:1000]

    # At once on the same port, its closed connections still in TIME-WAIT, then SIGKILL.
    waiting = [
        c
        for c in psutil.net_connections(kind="tcp")
        if c.laddr and c.laddr.port == port and c.status == psutil.CONN_TIME_WAIT
    ]
    assert waiting, "no connection of the first run in TIME-WAIT: the restart proves nothing"
    again = serve(registry_root, port, env)
    try:
        again.wait_for("Ctrl-C stops it", 240)
        assert httpx.get(f"{url}/readyz", timeout=30).status_code == 200
        tree = again.tree()
        assert any(p.name().startswith("ray::ServeReplica") for p in tree)
        again.process.kill()  # what an OOM killer or a supervisor's timeout does
        again.process.wait()
        assert not gone(tree, 30), "processes of the killed service outlived it"
    finally:
        end_group(again.process)
    with socket.socket() as s:  # the port is free again
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


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


def test_serve_on_a_cluster_leaves_the_application_it_did_not_start_alone(registry_root):
    """A cluster running the application from deploy/serve_config.yaml (`serve deploy`):
    `pdeserve serve --address` refuses to take it over, naming it and where it answers;
    with --app-name it serves beside it at the URL the proxies answer, and its stop
    deletes its own application only."""
    root = short_tmp("pdc")
    env = clean_env(root)
    with ray_head(root, env, num_cpus=4) as head:  # logical CPUs for two applications
        config = yaml.safe_load(CONFIG.read_text())
        port = free_port()
        config["http_options"] = {"host": "127.0.0.1", "port": port}  # loopback, free
        config["applications"][0]["args"]["registry"] = str(registry_root)
        config["applications"][0]["args"]["api_keys"] = ["cluster-key"]  # required
        path = root / "serve_config.yaml"
        path.write_text(yaml.safe_dump(config))
        deploy = [str(BIN / "serve"), "deploy", str(path), "--address", head.dashboard]
        run = subprocess.run(deploy, env=head.env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout + run.stderr
        theirs = f"http://127.0.0.1:{port}"
        wait_ready(theirs, 240)

        command = [sys.executable, "-m", "pdeserve.cli", "serve", "--address", head.gcs]
        command += ["--registry", str(registry_root)]
        refused = subprocess.run(command, env=head.env, capture_output=True, text=True, timeout=180)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        assert "already runs the application 'pdeserve' at route /" in refused.stderr
        assert f"(answering at {theirs})" in refused.stderr and "--app-name" in refused.stderr
        assert "Traceback" not in refused.stderr
        assert httpx.get(f"{theirs}/readyz", timeout=30).status_code == 200  # untouched

        beside = Command.start([*command, "--app-name", "beside"], head.env)
        try:
            beside.wait_for("Ctrl-C stops it", 240)
            assert f"URL:  {theirs}/beside\n" in beside.output, beside.output[-2000:]
            assert httpx.get(f"{theirs}/beside/readyz", timeout=30).status_code == 200
        finally:
            beside.stop(signal.SIGTERM)
        assert beside.process.returncode == 0, beside.output[-2000:]
        assert httpx.get(f"{theirs}/readyz", timeout=30).status_code == 200
        keyed = {"X-API-Key": "cluster-key"}  # theirs, at /, answers what is not beside's
        assert httpx.get(f"{theirs}/beside/readyz", headers=keyed, timeout=30).status_code == 404


def test_the_banner_names_where_a_clusters_proxies_listen():
    from service.cli import _listening
    from service.embedded import Embedded

    private = Embedded("http://127.0.0.1:8000", "http://127.0.0.1:5001", "127.0.0.1:8000")
    assert _listening(private) == ""
    cluster = Embedded("http://10.0.0.5:8000/beside", "http://10.0.0.5:8000", "0.0.0.0:8000")
    assert _listening(cluster) == "  (Serve's proxies listen on 0.0.0.0:8000)"
