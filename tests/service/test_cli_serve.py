"""`pdeserve serve` as a user runs it: a process of its own, Ctrl-C (SIGINT) stops it."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
from service_helpers import wait_ready

from service.embedded import free_port

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "helmholtz.json"


def test_pdeserve_serve_starts_answers_and_stops(registry_root, tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PDESERVE_API_KEYS"}
    env["HOME"] = str(tmp_path)  # Ray writes ~/.ray; keep it out of the user's home
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pdeserve.cli",
            "serve",
            "--port",
            str(port),
            "--registry",
            str(registry_root),
            "--num-cpus",
            "2",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        # The proxy answers before serve.run has returned: wait for the banner, which the
        # command prints once the application is up, so Ctrl-C meets the serving loop.
        deadline = time.monotonic() + 180
        while not any("Ctrl-C stops it" in line for line in lines):
            assert proc.poll() is None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no banner in 180 s"
            time.sleep(0.5)
        wait_ready(url, 120, alive=lambda: proc.poll() is None)
        r = httpx.post(f"{url}/solve", json=json.loads(EXAMPLE.read_text()), timeout=60)
        assert r.status_code == 200, r.text
        out = r.json()
        assert out["model"] == "default@1" and out["validation"]["relative_l2"] >= 0
    finally:
        proc.send_signal(signal.SIGINT)
        t_stop = time.monotonic()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        stop_s = time.monotonic() - t_stop
        reader.join(timeout=10)
    output = "".join(lines)
    assert proc.returncode == 0, output[-2000:]
    # Ctrl-C is prompt: Serve's default keeps a direct-ingress replica open 30 s after a
    # stop for load balancers to deregister it, and there is none here.
    assert stop_s < 25, f"Ctrl-C took {stop_s:.0f} s to stop the service"
    assert f"URL:  {url}" in output and f"{url}/docs" in output and "curl" in output
    # The banner comes once the service is ready, and no Ray log line follows it.
    after = output[output.index("pdeserve is serving") :].split("Ctrl-C stops it")[1]
    assert "pid=" not in after.split("\n", 1)[-1] and "INFO" not in after, after[:1000]
