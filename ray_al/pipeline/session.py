"""The Ray session of a driver: join (or start) a cluster, and stop cleanly on SIGTERM.

The CLI, a Tune sweep and the pipeline all join Ray through `connect`, so an unreachable
address is the same one-line error everywhere.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import threading

import ray

from ray_al.config import RayConfig
from ray_al.errors import ConfigError


def connect(ray_cfg: RayConfig) -> None:
    """Join ray.address (or RAY_ADDRESS, which Ray jobs set), else start a new local cluster
    (no dashboard: it costs seconds). `ray.address: auto` joins a `ray start` cluster here."""
    if ray.is_initialized():
        _say_what_is_ignored(ray_cfg)
        return
    address = ray_cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        check_reachable(address)
    kwargs = {"address": address} if address else {"address": "local", "num_cpus": ray_cfg.num_cpus,
                                                   "include_dashboard": False}
    if ray_cfg.runtime_env:  # this driver's job: local folders and files (py_modules, working_dir) are uploaded
        kwargs["runtime_env"] = ray_cfg.runtime_env
    _quiet_token_auth_notice()
    try:
        ray.init(logging_level="WARNING", **kwargs)
    except (ConnectionError, TimeoutError, ValueError, RuntimeError) as e:
        if ray_cfg.runtime_env and isinstance(e, ValueError):
            raise ConfigError(f"ray.runtime_env: {str(e).splitlines()[0]}") from None
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {str(e).splitlines()[0]}") from None


def _quiet_token_auth_notice() -> None:
    """Ray announces on every start that token authentication is on (RAY_AUTH_MODE unset, a token on
    disk): that is the safe default, so say nothing. Its warning that authentication is off stays."""
    import logging

    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _DropTokenAuthEnabled) for f in logger.filters):
        logger.addFilter(_DropTokenAuthEnabled())


class _DropTokenAuthEnabled:
    def filter(self, record) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


_said: set[str] = set()


def _say_what_is_ignored(ray_cfg: RayConfig) -> None:
    """Settings that only ray.init takes, given to a process that already joined Ray: said once, not dropped
    in silence. Only a driver says it (a Tune trial or an actor runs where its driver put it)."""
    from ray._private.worker import SCRIPT_MODE, global_worker

    if global_worker.mode != SCRIPT_MODE:
        return
    if ray_cfg.num_cpus is None:
        return
    have = ray.cluster_resources().get("CPU", 0)
    line = (f"ray-al: ray.num_cpus={ray_cfg.num_cpus} ignored: this process already joined a Ray cluster with "
            f"{have:g} CPUs (ray.init ran before)")
    if ray_cfg.num_cpus != have and line not in _said:
        _said.add(line)
        print(line, file=sys.stderr)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """ray.init retries an unreachable GCS for minutes; a TCP probe answers in seconds."""
    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms: let Ray resolve them
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {e.strerror or e}") from None


def gcs_reachable(timeout: float = 2.0) -> bool:
    """Whether the cluster's GCS still answers: once it is gone, every call that needs it (killing an actor,
    removing a placement group, ray.shutdown) blocks until Ray ends the process with exit 1 a minute later."""
    try:
        host, _, port = ray.get_runtime_context().gcs_address.rpartition(":")
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except (OSError, ValueError, RuntimeError):
        return False


_cluster_gone = False  # a session of this process found its cluster gone after the work was done


def cluster_gone() -> bool:
    """Whether the cluster went away after the work was done: the CLI then exits without Ray's shutdown
    (which would wait for it, then exit 1)."""
    return _cluster_gone


@contextlib.contextmanager
def ray_session(ray_cfg: RayConfig | None):
    """Join Ray for the block (None: a run that needs no Ray) and leave a Ray joined here at its end,
    so in-process callers (tests) get Ray back as they had it."""
    global _cluster_gone
    joined_here = ray_cfg is not None and not ray.is_initialized()
    if ray_cfg is not None:
        connect(ray_cfg)
    try:
        yield
    finally:
        if joined_here:
            if gcs_reachable():
                ray.shutdown()
            else:
                _cluster_gone = True


@contextlib.contextmanager
def on_sigterm(action):
    """`ray job stop` sends SIGTERM, which makes a Ray driver abort (Ray's own handler, installed by
    ray.init: enter this after joining Ray). Inside this block SIGTERM calls `action()` instead, and the
    handler before it comes back after. Signal handlers belong to the main thread: elsewhere, nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: action())
    try:
        yield
    finally:
        if previous is not None:  # None: the old handler was not installed from Python
            signal.signal(signal.SIGTERM, previous)


def _interrupt():
    raise KeyboardInterrupt


def sigterm_raises_interrupt():
    """SIGTERM as Ctrl-C in this process: the run closes its actors and placement group and exits 130
    within the job server's grace period."""
    return on_sigterm(_interrupt)


def sigterm_sends_sigint():
    """SIGTERM turned into a real SIGINT, for code (Ray Tune) that ends cleanly on SIGINT's own handler."""
    return on_sigterm(lambda: os.kill(os.getpid(), signal.SIGINT))
