"""The processes of a private Ray instance end with the command that started it, however
that command ends (SIGKILL included).

Ray's fate sharing ends the GCS and the raylet with the process that started them, but
not everything: a SIGKILL to ``pdeserve serve`` left Ray's dashboard and runtime-env
agents running under init, and Serve replicas outlived their raylet for minutes, the
ingress still holding the service's port. Two nets, both run from
:mod:`datagen.ray_instance` for private instances only:

- a watchdog, this file run as a script (psutil only: no package to import), in a
  session of its own so that a signal to the command's process group spares it. It
  reads a pipe whose writing end only the command holds: the command sends the
  instance's session folder, and at the end of the file (the command ended, however)
  the watchdog ends every process of that session;
- while its command runs, the session folder holds :data:`OWNER_FILE` naming it: each
  private start first ends the processes of any session whose owner is gone (for the
  case where the watchdog was killed too).

A process of a session: a Ray process (titled ``ray::...`` or run from Ray's package)
with a file of the session's folder open (every one keeps its logs there). A Ray
cluster started by ``ray start`` writes no owner file, so neither net touches it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

#: In a private instance's session folder while the command that owns it runs.
OWNER_FILE = "pdeserve-owner.json"
#: Seconds between SIGTERM and SIGKILL for what is left of an instance.
TERM_GRACE_S = 1.0


def _is_ray(process: psutil.Process) -> bool:
    cmdline = process.cmdline()
    return bool(cmdline) and (
        cmdline[0].startswith("ray::") or any(f"{os.sep}ray{os.sep}" in a for a in cmdline)
    )


def session_processes(session: str | Path) -> list[psutil.Process]:
    """The Ray processes with a file of ``session``'s folder open, this one excepted."""
    prefix = str(session).rstrip(os.sep) + os.sep
    found = []
    for process in psutil.process_iter():
        if process.pid == os.getpid():
            continue
        with contextlib.suppress(psutil.Error):
            if any(f.path.startswith(prefix) for f in process.open_files()) and _is_ray(process):
                found.append(process)
    return found


def end(processes: list[psutil.Process], grace_s: float = TERM_GRACE_S) -> None:
    """SIGTERM, then SIGKILL to those still running after ``grace_s``."""
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _gone, alive = psutil.wait_procs(processes, timeout=grace_s)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def end_session(session: str | Path) -> None:
    """End the processes of ``session`` and take its owner file away."""
    end(session_processes(session))
    with contextlib.suppress(OSError):
        (Path(session) / OWNER_FILE).unlink()


def _identity(pid: int) -> dict:
    return {"pid": pid, "create_time": psutil.Process(pid).create_time()}


def _alive(owner: dict) -> bool:
    try:
        return psutil.Process(owner["pid"]).create_time() == owner["create_time"]
    except (psutil.Error, KeyError, TypeError):
        return False


def claim(session: str | Path, pid: int | None = None) -> None:
    """Write ``session``'s owner file: this process (or ``pid``) runs the instance."""
    path = Path(session) / OWNER_FILE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_identity(pid or os.getpid())))
    tmp.replace(path)


def reap_orphans(temp_root: str | Path) -> list[str]:
    """End every session under ``temp_root`` whose owner file names a process that is
    gone; the sessions ended."""
    ended = []
    for owner_file in Path(temp_root).glob(f"session_*/{OWNER_FILE}"):
        try:
            owner = json.loads(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if not _alive(owner):
            end_session(owner_file.parent)
            ended.append(str(owner_file.parent))
    return ended


def start_watchdog(temp_root: str | Path) -> tuple[int, subprocess.Popen]:
    """Start the watchdog of this process's instance; the pipe's writing end to send the
    session to (:func:`announce`) and to keep open for as long as the instance runs."""
    read, write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, __file__, str(read), str(os.getpid()), str(temp_root)],
            pass_fds=(read,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write)
        raise
    finally:
        os.close(read)
    return write, process


def announce(write: int, session: str) -> None:
    os.write(write, f"{session}\n".encode())


def watch(read: int, owner_pid: int, temp_root: str) -> None:
    """The watchdog: wait for the end of the pipe, then end the owner's sessions (those it
    announced, else those Ray named after it since the watchdog started)."""
    started = time.time()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # only the pipe's end counts
    data = b""
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(4096):
            data += chunk
    sessions = [line for line in data.decode().splitlines() if line]
    for session in sessions or started_sessions(temp_root, owner_pid, started):
        end_session(session)


def started_sessions(temp_root: str | Path, pid: int, since: float) -> list[str]:
    """The session folders that the process ``pid`` started since ``since`` (a time):
    Ray names a session after the process that starts it. (For an owner that died, or
    gave up, inside ``ray.init``, before it could name its session.)"""
    return [
        str(p) for p in Path(temp_root).glob(f"session_*_{pid}") if p.stat().st_mtime >= since - 1
    ]


if __name__ == "__main__":
    watch(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
