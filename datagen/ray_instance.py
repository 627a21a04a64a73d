"""How pdeserve's commands get Ray: a private instance on loopback unless told otherwise.

``ray.init()`` without an address joins whatever ``RAY_ADDRESS`` or the last ``ray start``
(``/tmp/ray/ray_current_cluster``, left behind when that cluster stops) names: a command
could deploy onto someone's cluster, or hang on a dead one. Here the address decides:

- ``None`` or ``"local"``: a private instance, started here and stopped on the way out,
  whatever the environment and ``/tmp/ray`` hold. Its processes listen on 127.0.0.1 only:
  Ray binds its servers to the node's IP address, and takes the loopback address for it
  only where multi-machine clusters are off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read
  into ``ray._private.ray_constants.ENABLE_RAY_CLUSTER``), which is set for the instance's
  lifetime. ``ray.init(_node_ip_address="127.0.0.1")`` does not do it: Ray replaces a
  loopback address by the machine's. Servers that Ray's Python code binds to every
  interface itself (Serve's inter-replica gRPC, ``[::]:0``) are bound to 127.0.0.1 by a
  worker set-up hook, :func:`loopback_worker`. Nor does a private instance take the
  fixed ports a ``ray start`` on the machine wants: the dashboard agent's (52365; taken,
  a later head's job agent cannot start and ``ray job submit`` answers "No available
  agent"), the autoscaler's and the dashboard's metrics ports (44217, 44227); they get
  free ones.
- ``"auto"``: a running cluster on purpose (``RAY_ADDRESS``, else the last ``ray start``);
  ``HOST:PORT`` and ``ray://HOST:PORT`` as given.
- ``None`` in a Ray job's entrypoint (``ray job submit``): the job's own cluster.

Stopping: Ray's core worker installs a handler for SIGTERM that aborts the process with a
stack dump and leaves the instance's dashboard and runtime-env agents running. Once Ray
is up, Python's handlers go back in: SIGTERM and SIGINT raise :class:`Stopped` (a
``KeyboardInterrupt``) in the main thread, the caller's ``finally`` shuts the instance
down, and processes of a private instance that outlive ``ray.shutdown`` are killed. Ray
Tune's own SIGINT handler (which ends a sweep "gracefully" and returns half a result) is
kept off (``TUNE_DISABLE_SIGINT_HANDLER``).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Ray's switch for multi-machine clusters; off, the node's address is the loopback one.
CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Set in a job entrypoint's environment by Ray's job supervisor.
JOB_MARKER = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: How long the processes of a private instance get to end after ``ray.shutdown``.
EXIT_GRACE_S = 3.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The nice value (added to the command's) of a private instance's workers: Serve replicas,
#: Train and Tune workers. Ray's default, 15, left replicas a few percent of a core beside
#: a CPU-bound neighbour at 0 (see ``WORKER_NICENESS`` in the README's serving notes); a
#: private instance is the command's own work, at the command's priority. ``nice`` the
#: command to put all of it below other work.
WORKER_NICENESS = 0
#: The logger of Ray's notice that token authentication is on.
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; ``signal_name`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.signal_name = signal.Signals(signum).name


@dataclass
class _Changes:
    """What :func:`start` changed, for :func:`stop` to undo."""

    private: bool = False
    environ: dict[str, str | None] = field(default_factory=dict)
    cluster_switch: Any = None
    handlers: dict[int, Any] = field(default_factory=dict)
    watchdog: tuple[int, Any] | None = None  # the pipe's writing end, the process
    session: str | None = None  # a private instance's session folder


_STATE = _Changes()


def in_ray_job() -> bool:
    """Whether this process is a Ray job's entrypoint (``ray job submit``)."""
    return JOB_MARKER in os.environ


def is_private(address: str | None) -> bool:
    """Whether ``address`` asks for a private instance here (see the module docstring)."""
    return address == "local" or (address is None and not in_ray_job())


def start(address: str | None = None, *, verbose: bool = False, **init: Any) -> bool:
    """``ray.init`` as the module docstring says; ``init``: more of its arguments
    (``num_cpus`` only for a private instance). Returns whether the instance is private.
    ``verbose=False`` keeps Ray's start-up lines (the token notice) off the terminal."""
    private = is_private(address)
    if private:
        _set_env(CLUSTER_SWITCH, "0")
    _set_env("TUNE_DISABLE_SIGINT_HANDLER", "1")
    _remember_signals()  # before ray.init puts its own in
    import ray
    from ray._private import ray_constants

    init.setdefault("include_dashboard", False)
    temp_root = ""
    if private:
        from ray._common.utils import get_default_ray_temp_dir

        from datagen import ray_reaper

        temp_root = init.get("_temp_dir") or get_default_ray_temp_dir()
        ray_reaper.reap_orphans(temp_root)  # what a killed command (and its watchdog) left
        _STATE.watchdog = ray_reaper.start_watchdog(temp_root)
        system = init["_system_config"] = dict(init.get("_system_config") or {})
        system.setdefault("worker_niceness", WORKER_NICENESS)
        for name in ("AUTOSCALER_METRIC_PORT", "DASHBOARD_METRIC_PORT"):
            if name not in os.environ:
                _set_env(name, str(free_port()))
        _STATE.cluster_switch = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False  # ray was imported before the switch
        runtime_env = dict(init.pop("runtime_env", None) or {})
        runtime_env.setdefault("worker_process_setup_hook", f"{__name__}.private_worker")
        init["runtime_env"] = runtime_env
        target = "local"
    else:
        init.pop("num_cpus", None)  # a cluster has its own
        target = address  # None in a job: Ray reads the job's RAY_ADDRESS
        init["runtime_env"] = joined_runtime_env(address, init.get("runtime_env"))
    try:
        # Ray's notice that token authentication is on (its default since 2.60) names a
        # URL, and a private instance on loopback asks nothing of the user.
        quiet = quieter(TOKEN_NOTICE_LOGGER, logging.ERROR)
        ports = _own_agent_port() if private else contextlib.nullcontext()
        with contextlib.nullcontext() if verbose else quiet, ports:
            _init(ray, target, init, private, temp_root)
        if private:
            _own_session()
    except BaseException:
        with contextlib.suppress(Exception):
            ray.shutdown()
        _restore()
        raise
    _STATE.private = private
    _take_back_signals()
    return private


def stop() -> None:
    """``ray.shutdown``; for a private instance, also end what outlived it. Signals that
    arrive meanwhile are ignored; the handlers from before :func:`start` come back."""
    import ray

    with _signals_ignored():
        leftovers: list = []
        try:
            if ray.is_initialized():
                if _STATE.private:
                    leftovers = _descendants()
                ray.shutdown()
        finally:
            _end(leftovers)
            _restore()


@contextlib.contextmanager
def ray_instance(address: str | None = None, **start_args: Any) -> Iterator[Any]:
    """Ray for the ``with`` block (the ``ray`` module): started by :func:`start` and
    stopped on the way out, or the caller's when this process is connected already."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    start(address, **start_args)
    try:
        yield ray
    finally:
        stop()


#: What names a process's cluster to Ray's lookups (``ray.util.state``, ``ray.init()``).
ADDRESS_VAR = "RAY_ADDRESS"


def joined_runtime_env(address: str | None, runtime_env: dict | None) -> dict | None:
    """The runtime environment for a cluster joined at ``address`` (None in a job: the
    job's): its workers get the cluster's address as ``RAY_ADDRESS``.

    Without it, Ray code in a worker that looks its cluster up (Ray Train's placement
    group cleaner asks the state API every second) scans the machine's Ray instances and,
    finding several, logs "Found multiple active Ray instances" each time. Left alone
    where the address is unknown here (``auto`` outside a job, a ``ray://`` client) or
    the job's own runtime environment names one."""
    known = os.environ.get(ADDRESS_VAR) if address in (None, "auto") else address
    if not known or "://" in known or ADDRESS_VAR in _job_env_vars():
        return runtime_env
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {ADDRESS_VAR: known, **(runtime_env.get("env_vars") or {})}
    return runtime_env


def _job_env_vars() -> dict:
    """The environment variables of a job's runtime environment (``ray job submit
    --runtime-env``): ``ray.init`` refuses one of them named again."""
    import json

    config = json.loads(os.environ.get(JOB_MARKER) or "{}")
    return (config.get("runtime_env") or {}).get("env_vars") or {}


def private_worker() -> None:
    """Worker set-up hook of a private instance: :func:`loopback_worker`, and the worker's
    ``RAY_ADDRESS`` is its instance's (see :func:`joined_runtime_env`)."""
    import ray

    loopback_worker()
    os.environ[ADDRESS_VAR] = ray.get_runtime_context().gcs_address  # not the shell's


def loopback_worker() -> None:
    """Worker set-up hook of a private instance: gRPC servers that Ray's Python code would
    bind to every interface (``[::]``, ``0.0.0.0``) listen on 127.0.0.1 instead. Patches
    the helper Serve's replicas import (``ray._common.tls_utils``), before they do."""
    from ray._common import tls_utils

    bind = tls_utils.add_port_to_grpc_server
    if getattr(bind, "loopback", False):
        return

    def add_port(server: Any, address: str) -> int:
        host, _, port = address.rpartition(":")
        if host in ("[::]", "0.0.0.0", ""):
            address = f"127.0.0.1:{port}"
        return bind(server, address)

    add_port.loopback = True  # type: ignore[attr-defined]
    tls_utils.add_port_to_grpc_server = add_port


@contextlib.contextmanager
def stop_signals_raise() -> Iterator[None]:
    """In the ``with`` block SIGTERM, like SIGINT, raises :class:`Stopped` (main thread
    only): for commands that run Ray in a child process of their own (``pdeserve demo``
    starts ``pdeserve serve``), so that their ``finally`` stops it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    for signum in STOP_SIGNALS:
        signal.signal(signum, _raise_stopped)
    try:
        yield
    finally:
        for signum, handler in before.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def stops_cleanly(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """For a command's main: a :class:`Stopped` becomes one line and exit 128 + signal."""

    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args: Any, **kwargs: Any) -> int:
            try:
                return main(*args, **kwargs)
            except KeyboardInterrupt as e:
                return report_stop(prog, e)

        return run

    return wrap


def report_stop(prog: str, interrupt: KeyboardInterrupt) -> int:
    """One line on standard error for a stop; the exit status (128 + the signal). Ray's
    calls turn a signal that arrives while they wait into a plain KeyboardInterrupt: the
    signal is then the last one the handlers saw."""
    signum = stop_signal(interrupt)
    print(f"{prog}: stopped by {signal.Signals(signum).name}", file=sys.stderr, flush=True)
    return 128 + signum


def stop_signal(interrupt: KeyboardInterrupt) -> int:
    """The signal behind ``interrupt`` (see :func:`report_stop`)."""
    return interrupt.signum if isinstance(interrupt, Stopped) else _LAST_SIGNAL[0]


#: The last stop signal that arrived (SIGINT until one has).
_LAST_SIGNAL = [int(signal.SIGINT)]


def _raise_stopped(signum: int, _frame: Any) -> None:
    _LAST_SIGNAL[0] = signum
    raise Stopped(signum)


def _remember_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            _STATE.handlers.setdefault(signum, signal.getsignal(signum))


def _take_back_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            signal.signal(signum, _raise_stopped)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is threading.main_thread():
        _remember_signals()
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
    yield


def _set_env(key: str, value: str) -> None:
    _STATE.environ.setdefault(key, os.environ.get(key))
    os.environ[key] = value


def _init(ray: Any, target: str | None, init: dict, private: bool, temp_root: str) -> None:
    """``ray.init``; a private instance whose start-up timed out is started once more.

    Ray gives its raylet 30 s to register (a constant of ``ray._private.node``), and on a
    2-core machine beside two CPU-bound processes, with another Ray instance running, a
    start took longer about one time in three (the raylet waits for Ray's agents, Python
    processes that import much of Ray). What the first try started is ended first."""
    since = time.time()
    try:
        ray.init(address=target, **init)
    except Exception as e:
        if not private or "timed out during startup" not in str(e):
            raise
        from datagen import ray_reaper

        with contextlib.suppress(Exception):
            ray.shutdown()
        for session in ray_reaper.started_sessions(temp_root, os.getpid(), since):
            ray_reaper.end_session(session)
        print(
            "Ray's start-up timed out (a busy machine?): trying once more",
            file=sys.stderr,
            flush=True,
        )
        ray.init(address=target, **init)


def _own_session() -> None:
    """Name this process the owner of its private instance's session, to the watchdog and
    in the session folder (:mod:`datagen.ray_reaper`)."""
    from ray._private import worker

    from datagen import ray_reaper

    session = worker._global_node.get_session_dir_path()
    ray_reaper.claim(session)
    _STATE.session = session
    ray_reaper.announce(_STATE.watchdog[0], session)


def _release_watchdog() -> None:
    """The instance is stopped: its owner file goes, and the watchdog, told by the end of
    its pipe, ends whatever is left and exits."""
    if _STATE.session is not None:
        from datagen.ray_reaper import OWNER_FILE

        with contextlib.suppress(OSError):
            os.unlink(os.path.join(_STATE.session, OWNER_FILE))
        _STATE.session = None
    if _STATE.watchdog is not None:
        write, process = _STATE.watchdog
        _STATE.watchdog = None
        os.close(write)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # never hold a stop up for it
            process.kill()


def _restore() -> None:
    _release_watchdog()
    for key, value in _STATE.environ.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _STATE.environ = {}
    if _STATE.cluster_switch is not None:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = _STATE.cluster_switch
        _STATE.cluster_switch = None
    if threading.current_thread() is threading.main_thread():
        for signum, handler in _STATE.handlers.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    _STATE.handlers = {}
    _STATE.private = False


@contextlib.contextmanager
def quieter(logger_name: str, level: int) -> Iterator[None]:
    """The logger ``logger_name`` shows only ``level`` and above in the ``with`` block."""
    logger = logging.getLogger(logger_name)
    before = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(before)


def free_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _own_agent_port() -> Iterator[None]:
    """``ray.init`` gives its node the dashboard agent's default port, 52365, and takes no
    argument for it: for the call, its parameters get a free one instead."""
    from ray._private import parameter

    original = parameter.RayParams
    port = free_port()

    class Params(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("dashboard_agent_listen_port", port)
            super().__init__(*args, **kwargs)

    parameter.RayParams = Params
    try:
        yield
    finally:
        parameter.RayParams = original


def _descendants() -> list:
    """This process's descendants but the watchdog (which ends once the pipe closes)."""
    import psutil

    watchdog = _STATE.watchdog[1].pid if _STATE.watchdog else None
    return [p for p in psutil.Process().children(recursive=True) if p.pid != watchdog]


def _end(processes: list) -> None:
    """Terminate, then kill, those of ``processes`` still running after ``EXIT_GRACE_S``."""
    import psutil

    if not processes:
        return
    _gone, alive = psutil.wait_procs(processes, timeout=EXIT_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _gone, alive = psutil.wait_procs(alive, timeout=1.0)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if alive:
        time.sleep(0.1)
