import os
import time

import numpy as np
import psutil
import pytest

#: What a Ray instance runs: its servers and its workers (titled ``ray::...``).
RAY_PROCESSES = ("raylet", "gcs_server", "ray::")


def ray_processes() -> dict[int, str]:
    """Every Ray process on this machine: pid -> what it is."""
    found = {}
    for p in psutil.process_iter(["pid", "name", "cmdline", "status"]):
        if p.info["status"] == psutil.STATUS_ZOMBIE:  # ended, not yet reaped
            continue
        with_args = " ".join(p.info["cmdline"] or []) or (p.info["name"] or "")
        head = with_args.split(" ", 1)[0].rsplit("/", 1)[-1]
        if head.startswith(RAY_PROCESSES):
            found[p.info["pid"]] = with_args[:120]
    return found


def pytest_sessionstart(session):
    session.config._ray_before = set(ray_processes())  # another run's are not ours


def pytest_sessionfinish(session, exitstatus):
    """No test leaves a Ray process behind: what started during the run must be gone
    (after a grace period for workers still exiting), or the run fails naming them."""
    before = getattr(session.config, "_ray_before", set())
    deadline = time.monotonic() + float(os.environ.get("PDESERVE_RAY_GRACE_S", "30"))
    while True:
        left = {pid: what for pid, what in ray_processes().items() if pid not in before}
        if not left or time.monotonic() > deadline:
            break
        time.sleep(1)
    if left:
        lines = "\n".join(f"  {pid}: {what}" for pid, what in sorted(left.items()))
        session.config.get_terminal_writer().line(
            f"Ray processes left behind by the tests:\n{lines}", red=True
        )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
