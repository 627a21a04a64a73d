"""What a killed command's private Ray instance leaves is ended (datagen/ray_reaper.py): by
its watchdog when the command's pipe closes, or at the next start when the owner is gone;
sessions with a live owner, clusters without an owner file, and processes that are not
Ray's are left alone. (The whole path, SIGKILL to `pdeserve serve`: test_cli_serve.py.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from datagen import ray_reaper

#: A stand-in for a Ray process: a file of the session open, "/ray/" in its command line.
HOLDER = "import sys, time; f = open(sys.argv[1], 'a'); print('open', flush=True); time.sleep(120)"


def hold(path: Path, ray: bool = True) -> subprocess.Popen:
    path.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-c", HOLDER, str(path)] + (["/site-packages/ray/fake"] if ray else [])
    process = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "open"
    return process


@pytest.fixture
def processes():
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        p.kill()
        p.wait()


def ended(process: subprocess.Popen, timeout: float = 30) -> bool:
    try:
        process.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_the_next_start_ends_sessions_whose_owner_is_gone(tmp_path, processes):
    orphan, owned, cluster = (tmp_path / f"session_2026_{i}" for i in (1, 2, 3))
    for session in (orphan, owned, cluster):
        processes.append(hold(session / "logs" / "worker.out"))
    reader = hold(orphan / "logs" / "raylet.out", ray=False)  # someone's `tail -f`
    processes.append(reader)
    # the orphan's owner: this pid, but not this process (another start time)
    (orphan / ray_reaper.OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "create_time": 1}))
    ray_reaper.claim(owned)  # owned by this live process; `cluster`: no owner file
    assert ray_reaper.reap_orphans(tmp_path) == [str(orphan)]
    assert ended(processes[0]) and not (orphan / ray_reaper.OWNER_FILE).exists()
    assert processes[1].poll() is None and processes[2].poll() is None
    assert reader.poll() is None
    assert ray_reaper.reap_orphans(tmp_path) == []


def test_the_watchdog_ends_the_announced_session_when_its_pipe_closes(tmp_path, processes):
    session = tmp_path / "session_2026_a"
    write, watchdog = ray_reaper.start_watchdog(tmp_path)
    assert psutil.Process(watchdog.pid).ppid() == os.getpid()
    assert os.getsid(watchdog.pid) != os.getsid(0)  # a group signal to us spares it
    processes.append(hold(session / "logs" / "raylet.err"))
    other = hold(tmp_path / "session_2026_b" / "logs" / "raylet.err")
    processes.append(other)
    ray_reaper.announce(write, str(session))
    assert watchdog.poll() is None and processes[0].poll() is None  # while the owner runs
    os.close(write)  # what the owner's death does
    assert ended(watchdog) and ended(processes[0])
    assert other.poll() is None


def test_a_watchdog_told_nothing_ends_the_sessions_named_after_its_owner(tmp_path, processes):
    """The owner died inside ray.init, before it could name its session."""
    write, watchdog = ray_reaper.start_watchdog(tmp_path)
    ours = hold(tmp_path / f"session_2026-12-07_{os.getpid()}" / "logs" / "gcs_server.out")
    not_ours = hold(tmp_path / f"session_2026-12-07_{os.getpid() + 1}" / "logs" / "gcs.out")
    processes += [ours, not_ours]
    os.close(write)
    assert ended(watchdog) and ended(ours)
    assert not_ours.poll() is None


def test_a_private_start_that_timed_out_is_ended_and_tried_once_more(tmp_path, processes, capsys):
    from datagen import ray_instance

    class Ray:
        """ray.init times out once, after starting a session's processes (as Ray does)."""

        calls = 0

        def init(self, address, **init):
            self.calls += 1
            if self.calls == 1:
                session = tmp_path / f"session_2026-12-07_{os.getpid()}"
                processes.append(hold(session / "logs" / "raylet.out"))
                raise Exception("The current node timed out during startup. ...")

        def shutdown(self):
            pass

    ray = Ray()
    ray_instance._init(ray, "local", {}, True, str(tmp_path))
    assert ray.calls == 2 and ended(processes[0])
    assert "trying once more" in capsys.readouterr().err
    with pytest.raises(Exception, match="timed out"):  # a cluster's is not retried
        ray_instance._init(Ray(), "10.0.0.1:6379", {}, False, "")
