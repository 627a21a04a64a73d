"""How commands get Ray: a private instance on loopback whatever the environment names;
SIGTERM and SIGINT end it and every process it started."""

import os
import signal
import sys

import pytest
from ray_helpers import Command, clean_env, free_port, short_tmp, still_running

from datagen import ray_instance


def test_the_address_decides_private_or_not(monkeypatch):
    monkeypatch.delenv(ray_instance.JOB_MARKER, raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # ignored unless asked for
    assert ray_instance.is_private(None) and ray_instance.is_private("local")
    assert not ray_instance.is_private("auto") and not ray_instance.is_private("h:6379")
    monkeypatch.setenv(ray_instance.JOB_MARKER, "{}")  # a `ray job submit` entrypoint
    assert not ray_instance.is_private(None) and ray_instance.is_private("local")


def test_the_worker_hook_binds_wildcard_grpc_servers_to_loopback(monkeypatch):
    from ray._common import tls_utils

    bound = []
    monkeypatch.setattr(tls_utils, "add_port_to_grpc_server", lambda s, a: bound.append(a) or 1)
    ray_instance.loopback_worker()
    ray_instance.loopback_worker()  # twice is once
    for address in ("[::]:0", "0.0.0.0:5000", "10.1.2.3:7"):
        tls_utils.add_port_to_grpc_server(None, address)
    assert bound == ["127.0.0.1:0", "127.0.0.1:5000", "10.1.2.3:7"]


def test_a_private_instance_ignores_ray_address_and_is_undone_after(monkeypatch):
    import ray
    from ray._private import ray_constants

    root = short_tmp("pdi")
    (root / "ray").mkdir()
    dead = f"127.0.0.1:{free_port()}"
    (root / "ray" / "ray_current_cluster").write_text(dead)  # a stopped `ray start`
    monkeypatch.setenv("RAY_TMPDIR", str(root))
    monkeypatch.setenv("RAY_ADDRESS", dead)
    monkeypatch.delenv(ray_instance.CLUSTER_SWITCH, raising=False)
    handler = signal.getsignal(signal.SIGTERM)
    with ray_instance.ray_instance(num_cpus=1) as r:
        assert r.get(r.remote(lambda: 6 * 7).remote()) == 42
        gcs = r.get_runtime_context().gcs_address
        assert gcs.startswith("127.0.0.1:") and gcs != dead
        assert signal.getsignal(signal.SIGTERM) is not handler  # Python's, not Ray's abort
    assert not ray.is_initialized()
    assert ray_constants.ENABLE_RAY_CLUSTER and ray_instance.CLUSTER_SWITCH not in os.environ
    assert signal.getsignal(signal.SIGTERM) is handler


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_ray_backed_command_and_all_it_started(signum):
    """`pdeserve datagen --ray-address local` mid-run: one line, 128 + the signal, and no
    process of its Ray instance left."""
    root = short_tmp("pdg")
    command = [sys.executable, "-m", "pdeserve.cli", "datagen", "poisson", "--out", str(root)]
    command += ["--n-train", "4096", "--n-val", "0", "--n-test", "0", "--resolution", "64"]
    command += ["--field", "two-phase", "--ray-address", "local"]
    run = Command.start(command, clean_env(root))
    try:
        run.wait_for_process("write_shard", 120)  # Ray is up and its tasks run
        tree = run.tree()
        assert {"raylet", "gcs_server"} <= {p.name() for p in tree}
    finally:
        seconds = run.stop(signum)
    name = signal.Signals(signum).name
    assert run.process.returncode == 128 + signum, run.output[-2000:]
    assert seconds < 30, f"{name} took {seconds:.1f} s"  # a hang bound (quiet: ~3 s)
    assert run.output.rstrip().splitlines()[-1] == f"pdeserve datagen: stopped by {name}"
    assert "received at time" not in run.output and "Traceback" not in run.output
    assert not still_running(tree)
    assert not list(root.glob("*.h5")), "a half-written dataset was left under its name"
