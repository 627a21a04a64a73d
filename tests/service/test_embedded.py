"""service.embedded: the ingress replica answers HTTP itself; Serve's proxy runs beside it."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service import embedded
from service.app import build_app
from service.settings import ServiceSettings


def environ(pid: int) -> dict[str, str]:
    pairs = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace").split("\0")
    return dict(p.split("=", 1) for p in pairs if "=" in p)


def listener(port: int) -> str:
    """The command line of the process listening on TCP ``port`` here (Linux /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        try:
            if os.readlink(fd).removeprefix("socket:[").rstrip("]") in inodes:
                return (fd.parents[1] / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
    raise AssertionError(f"nothing listens on port {port}")


def test_the_application_port_is_the_ingress_replica_not_serve_proxy(embedded_app):
    port = int(embedded_app.url.rsplit(":", 1)[1])
    proxy_port = int(embedded_app.proxy_url.rsplit(":", 1)[1])
    assert "ServeReplica:pdeserve:Ingress" in listener(port)
    assert "ProxyActor" in listener(proxy_port)
    for url in (embedded_app.url, embedded_app.proxy_url):
        assert httpx.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}


def test_the_replicas_carry_batches_in_their_call_messages(embedded_app):
    """Ray's inline limit reaches the replica processes (they read it at start)."""
    replicas = embedded.replica_pids()
    assert len(replicas) >= 2  # Ingress (the models run there), ExactSolver
    for pid in replicas:
        assert environ(pid)["RAY_max_direct_call_object_size"] == str(embedded.INLINE_BYTES)


@pytest.mark.parametrize("apart", [False, True])
def test_every_deployment_is_health_checked_at_the_configured_period(apart):
    settings = ServiceSettings(health_check_period_s=1.5, surrogate_deployment=apart)
    ingress = build_app(settings)._bound_deployment
    surrogate, exact = ingress.init_args[:2]
    deployments = [ingress, exact._bound_deployment]
    if apart:
        deployments.insert(1, surrogate._bound_deployment)
    else:
        assert surrogate is None  # the models run in the ingress
    names = ["Ingress", "Surrogate", "ExactSolver"] if apart else ["Ingress", "ExactSolver"]
    assert [d.name for d in deployments] == names
    for deployment in deployments:
        assert deployment._deployment_config.health_check_period_s == 1.5


def test_a_taken_port_is_refused_before_anything_starts():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot serve on 127.0.0.1:{port}"):
            embedded.start(ServiceSettings(), port=port)
    assert os.environ.get("RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT") != str(port)


def test_serve_on_a_taken_port_says_so_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "pdeserve.cli", "serve", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"error: cannot serve on 127.0.0.1:{port}" in run.stderr
    assert "Traceback" not in run.stderr and "stopped" not in run.stdout


def test_the_ingress_gets_the_first_port_of_its_range():
    env = embedded.direct_ingress_environment(8000)
    assert env["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert env["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"] == "8000"
    assert int(env["RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT"]) == 8001 + embedded.EXTRA_APPLICATIONS
