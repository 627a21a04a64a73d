"""For tests that run commands which start Ray: a head node of the test's own, process
trees, and their listening sockets. (Tests never run `ray stop`: it ends every Ray
process of the user on the machine.)"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from datagen.ray_instance import WORKER_NICENESS, free_port

RAY = str(Path(sys.executable).with_name("ray"))
#: The commands' own Python (a project venv's ``bin``).
BIN = Path(sys.executable).parent


def init_ray(**kwargs) -> object:
    """A test's own Ray instance (``ray.init``): 2 CPUs, no dashboard, its workers at this
    process's priority as a pdeserve command's are (at Ray's nice 15 they starve beside
    CPU-bound work: a Ray Train test stalled for minutes beside two CPU hogs)."""
    import ray

    system = {"worker_niceness": WORKER_NICENESS}
    return ray.init(
        address="local", num_cpus=2, include_dashboard=False, _system_config=system, **kwargs
    )


def short_tmp(prefix: str) -> Path:
    """A folder with a short path: Ray's socket names must fit in 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def clean_env(root: Path) -> dict[str, str]:
    """The environment minus Ray's and pdeserve's switches, HOME in ``root`` (Ray writes
    ~/.ray there), and Ray's temporary folder in ``root`` (RAY_TMPDIR: where a ``ray
    start`` leaves ``ray/ray_current_cluster``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RAY_", "PDESERVE_", "TUNE_")) and k != "TMPDIR"
    }
    (root / "home").mkdir(exist_ok=True)
    return env | {"HOME": str(root / "home"), "RAY_TMPDIR": str(root)}


@dataclass
class Head:
    process: subprocess.Popen
    gcs: str  # HOST:PORT, what RAY_ADDRESS takes
    dashboard: str  # http://HOST:PORT, what `ray job submit --address` takes
    env: dict[str, str]  # with the cluster's token, for its clients


@contextlib.contextmanager
def ray_head(root: Path, env: dict[str, str], num_cpus: int = 2) -> Iterator[Head]:
    """``ray start --head --block`` in a process group of its own, with free ports and
    ``root/ray`` as its temporary folder; ended with its group."""
    env = env | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env["RAY_worker_niceness"] = str(WORKER_NICENESS)  # as init_ray's workers
    port, dashboard = free_port(), free_port()
    # Every port of our own: another Ray instance on the machine may hold the defaults.
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
    command = [RAY, "start", "--head", "--block", f"--port={port}", f"--num-cpus={num_cpus}"]
    command += ["--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}"]
    command += [f"--temp-dir={root / 'ray'}", "--disable-usage-stats", *ports]
    head = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.monotonic() + 90
        address = root / "ray" / "ray_current_cluster"  # written last
        while True:
            assert head.poll() is None, head.stdout.read()
            with contextlib.suppress(httpx.HTTPError):
                if address.exists() and httpx.get(f"{url}/api/version", timeout=5).status_code in (
                    200,
                    401,
                ):
                    break
            assert time.monotonic() < deadline, "the head node did not come up"
            time.sleep(0.5)
        yield Head(head, address.read_text().strip(), url, env)
    finally:
        end_group(head)


def end_group(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM to the process (its group all at once held a `ray start --block` head up
    for 34 s, against 2 s), then SIGKILL to whatever of its group is left."""
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@dataclass
class Command:
    """A command in a session of its own, its output collected as it comes."""

    process: subprocess.Popen
    lines: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, args: list[str], env: dict[str, str], cwd: Path | None = None) -> Command:
        process = subprocess.Popen(
            args,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        command = cls(process)
        threading.Thread(target=lambda: command.lines.extend(process.stdout), daemon=True).start()
        return command

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, self.output[-3000:]
            assert time.monotonic() < deadline, f"no {text!r} in {seconds:g} s"
            time.sleep(0.3)

    def wait_for_process(self, name: str, seconds: float) -> None:
        """Until a process whose name holds ``name`` runs in the command's tree."""
        deadline = time.monotonic() + seconds
        while True:
            assert self.process.poll() is None, self.output[-3000:]
            with contextlib.suppress(psutil.Error):
                if any(name in p.name() for p in self.tree()):
                    return
            assert time.monotonic() < deadline, f"no process {name!r} in {seconds:g} s"
            time.sleep(0.3)

    def tree(self) -> list[psutil.Process]:
        """The command's process and its descendants, now."""
        me = psutil.Process(self.process.pid)
        return [me, *me.children(recursive=True)]

    def stop(self, signum: int, seconds: float = 60) -> float:
        """Send ``signum`` to the command's process alone (not its group); seconds to exit."""
        t0 = time.monotonic()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            end_group(self.process)
        time.sleep(0.5)  # the reader thread takes the last lines
        return time.monotonic() - t0


def still_running(processes: list[psutil.Process]) -> list[str]:
    """Those of ``processes`` still alive (zombies count as gone), killed, as names."""
    left = []
    for p in processes:
        with contextlib.suppress(psutil.Error):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {p.name()}")
                p.kill()
    return left


def listening(processes: list[psutil.Process]) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket these processes listen on."""
    by_pid = {p.pid: p for p in processes}
    out = set()
    for c in psutil.net_connections(kind="inet"):
        if c.status == psutil.CONN_LISTEN and c.pid in by_pid:
            with contextlib.suppress(psutil.Error):
                out.add((c.laddr.ip, c.laddr.port, by_pid[c.pid].name()))
    return out


def loopback(address: str) -> bool:
    return address in ("127.0.0.1", "::1", "::ffff:127.0.0.1")
