"""Separate hosts on one Linux machine, for tests and benchmarks that need a real network between
Ray nodes: a worker joining the head by address, a client submitting from another host, a host
lost, a link cut or slowed.

Each host is a network namespace (its own interfaces, addresses, ports and loopback) joined to a
private bridge by a veth pair, 10.77.X.0/24 with X taken from this process's id. The head and the
workers each run a real Ray node (`ray start --block`, token authentication with a fresh token
passed as RAY_AUTH_TOKEN, never the user's ~/.ray); the client host runs no Ray node, only the
commands a user would type on a laptop. The hosts share this machine's filesystem, which stands in
for the shared storage of a real cluster (run folders and checkpoints).

Needs root and iproute2 (`ip`); `unavailable()` says why not. Every name carries this process's id
and a sequence number, so parallel runs never collide. `close()` removes everything: each host's
processes (every pid in its namespace, which is exactly what ran on that host), then the
namespaces, links and the bridge, then the temp dirs.
"""
from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import REPO

BIN = Path(sys.executable).parent
GCS_PORT, DASHBOARD_PORT = 6379, 8265  # every host has its own ports: Ray's defaults never collide
_SEQ = itertools.count()

# Node failure detection much faster than Ray's defaults (3 s period, 10 s timeout, 5 misses):
# a lost or cut-off host is declared dead within about 3 s. Each setting is read by the GCS.
FAST_FAILURE_DETECTION = {"RAY_health_check_initial_delay_ms": "1000", "RAY_health_check_period_ms": "500",
                          "RAY_health_check_timeout_ms": "1000", "RAY_health_check_failure_threshold": "3"}


class HostsError(RuntimeError):
    pass


def sh(*cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise HostsError(f"{' '.join(cmd)}: {(out.stderr or out.stdout).strip()[:500]}")
    return out


def unavailable() -> str | None:
    """Why separate hosts cannot be made here, or None."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, e.g. in a container or CI)"
    if not shutil.which("ip"):
        return "iproute2's `ip` is not installed"
    return None


def netem_available() -> bool:
    """Whether this kernel has the netem queueing discipline (some VM kernels leave it out)."""
    probe = f"rayal-probe-{os.getpid()}-{next(_SEQ)}"
    try:
        sh("ip", "netns", "add", probe)
        return sh("tc", "-n", probe, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms",
                  check=False).returncode == 0
    except (HostsError, OSError):
        return False
    finally:
        sh("ip", "netns", "del", probe, check=False)


@dataclass
class Host:
    role: str                  # head, w1, w2, ..., client
    netns: str
    ip: str
    veth: str                  # the bridge's end of this host's link
    temp_dir: Path             # Ray's temp dir for this host (sockets, logs, session)
    proc: subprocess.Popen | None = None    # `ray start --block` on this host
    starts: int = 0
    stale: bool = False        # killed or cut off by a test: its Ray node is gone or declared dead

    def cmd(self, *args: str) -> list[str]:
        """A command line that runs on this host."""
        return ["ip", "netns", "exec", self.netns, *args]

    def pids(self) -> list[int]:
        out = sh("ip", "netns", "pids", self.netns, check=False)
        return [int(p) for p in out.stdout.split()]

    def kill_all(self, timeout: float = 15.0) -> int:
        """SIGKILL every process of this host (a machine losing power); returns how many."""
        self.stale = True
        killed, deadline = set(), time.time() + timeout
        while (pids := self.pids()) and time.time() < deadline:
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.add(pid)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)  # a raylet may have started a worker in between: look again
        if self.proc is not None:
            self.proc.wait(timeout=5)  # reap our child
        if self.pids():
            raise HostsError(f"host {self.role}: processes {self.pids()} survived SIGKILL")
        return len(killed)


@dataclass
class Hosts:
    """A head, `workers` worker hosts and a client host, all on one private bridge, with Ray up."""

    workers: int = 2
    worker_cpus: float = 1
    env_extra: dict = field(default_factory=dict)   # e.g. FAST_FAILURE_DETECTION, for every Ray node
    object_store_mb: int = 128
    start_ray: bool = True                           # False: the network alone

    def __post_init__(self):
        seq = next(_SEQ)
        self.tag = f"{os.getpid()}x{seq}"  # interface names stay within Linux's 15 characters
        net = (os.getpid() * 7 + seq) % 250 + 1
        self.subnet = f"10.77.{net}.0/24"
        self.bridge = f"rb{self.tag}"
        self.temp_root = Path(tempfile.mkdtemp(prefix=f"rh{self.tag}-", dir="/tmp"))  # short: socket paths
        self.token = secrets.token_hex(32)
        roles = ["head", *(f"w{i + 1}" for i in range(self.workers)), "client"]
        self.hosts = {role: Host(role, f"rayal-{self.tag}-{role}", f"10.77.{net}.{11 + i}", f"rv{self.tag}{i}",
                                 self.temp_root / role) for i, role in enumerate(roles)}
        self.delays: dict[str, subprocess.Popen | None] = {}
        self.env = self._env()
        try:
            self._remove_leftovers()
            self._build_network()
            if self.start_ray:
                self.start_node(self.head)
                for w in self.worker_hosts:
                    self.start_node(w)
                self.wait_for_nodes(1 + self.workers)
        except BaseException:
            self.close()
            raise

    # -- who is who -------------------------------------------------------------------------
    @property
    def head(self) -> Host:
        return self.hosts["head"]

    @property
    def client(self) -> Host:
        return self.hosts["client"]

    @property
    def worker_hosts(self) -> list[Host]:
        return [h for r, h in self.hosts.items() if r.startswith("w")]

    @property
    def gcs_address(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def address(self) -> str:
        """The head's job server (dashboard), as `ray job` takes it."""
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def host_of(self, ip: str) -> Host:
        return next(h for h in self.hosts.values() if h.ip == ip)

    # -- network ----------------------------------------------------------------------------
    def _env(self) -> dict:
        """Token auth on with our own token, our python first on PATH, this checkout importable."""
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token, RAY_USAGE_STATS_ENABLED="0",
                   PYTHONPATH=str(REPO), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **self.env_extra)
        return env

    def _remove_leftovers(self) -> None:
        """Names carry this process's id, so anything already bearing them was left by a dead
        process that had the same id before us: remove it (never anything of another name)."""
        for h in self.hosts.values():
            if Path(f"/run/netns/{h.netns}").exists():
                h.kill_all()
                sh("ip", "netns", "del", h.netns, check=False)
            sh("ip", "link", "del", h.veth, check=False)
        sh("ip", "link", "del", self.bridge, check=False)

    def _build_network(self) -> None:
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        for h in self.hosts.values():
            sh("ip", "netns", "add", h.netns)
            sh("ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns)
            sh("ip", "link", "set", h.veth, "master", self.bridge, "up")
            sh("ip", "-n", h.netns, "addr", "add", f"{h.ip}/24", "dev", "eth0")
            sh("ip", "-n", h.netns, "link", "set", "eth0", "up")
            sh("ip", "-n", h.netns, "link", "set", "lo", "up")  # Ray's processes talk over 127.0.0.1 too

    def link(self, host: Host, up: bool) -> None:
        """Cut (or restore) a host's only link: a network partition of that host."""
        host.stale = host.stale or not up
        sh("ip", "link", "set", host.veth, "up" if up else "down")

    def delay(self, host: Host, ms: float) -> str:
        """Every packet to or from `host` waits `ms` more, until `undelay`. Uses `tc netem` where the
        kernel has it, else a user-space delay line (tests/delay_link.py; at 0 ms it shows the line's
        own cost). Returns which."""
        self.undelay(host)
        if netem_available():
            sh("tc", "qdisc", "add", "dev", host.veth, "root", "netem", "delay", f"{ms}ms")
            sh("tc", "-n", host.netns, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", f"{ms}ms")
            self.delays[host.role] = None
            return "tc netem"
        from tests.delay_link import insert
        self.delays[host.role] = insert(host.veth, self.bridge, f"rd{host.veth[2:]}", ms)
        return "user-space delay line (this kernel has no netem)"

    def undelay(self, host: Host) -> None:
        if host.role not in self.delays:
            return
        proc = self.delays.pop(host.role)
        if proc is None:
            sh("tc", "qdisc", "del", "dev", host.veth, "root", check=False)
            sh("tc", "-n", host.netns, "qdisc", "del", "dev", "eth0", "root", check=False)
        else:
            from tests.delay_link import remove
            remove(proc, host.veth, self.bridge)

    # -- Ray --------------------------------------------------------------------------------
    def start_node(self, host: Host) -> None:
        """`ray start --block` on `host` (head or worker); again after a loss: a fresh node, same address."""
        host.starts += 1
        temp_dir = host.temp_dir / str(host.starts)
        temp_dir.mkdir(parents=True)
        common = [f"--node-ip-address={host.ip}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
                  f"--object-store-memory={self.object_store_mb * 2 ** 20}"]
        if host.role == "head":  # drivers and job supervisors only: blocks go to the workers
            args = ["--head", f"--port={GCS_PORT}", "--dashboard-host=0.0.0.0", "--include-dashboard=true",
                    f"--dashboard-port={DASHBOARD_PORT}", "--num-cpus=0"]
        else:
            args = [f"--address={self.gcs_address}", f"--num-cpus={self.worker_cpus}"]
        with open(temp_dir / "ray-start.log", "w") as log:
            host.proc = subprocess.Popen(host.cmd(str(BIN / "ray"), "start", "--block", *args, *common),
                                         env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        if host.role == "head":
            self._wait_port(host, GCS_PORT)

    def _wait_port(self, host: Host, port: int, timeout: float = 60) -> None:
        probe = f"import socket; socket.create_connection(('{host.ip}', {port}), timeout=1).close()"
        deadline = time.time() + timeout
        while time.time() < deadline:
            if host.proc.poll() is not None:
                raise HostsError(f"ray start on {host.role} exited: {self.start_log(host)[-1500:]}")
            probed = subprocess.run(self.client.cmd(sys.executable, "-c", probe), capture_output=True, check=False)
            if probed.returncode == 0:
                return
            time.sleep(0.3)
        raise HostsError(f"{host.role}:{port} not listening after {timeout}s: {self.start_log(host)[-1500:]}")

    def start_log(self, host: Host) -> str:
        path = host.temp_dir / str(host.starts) / "ray-start.log"
        return path.read_text() if path.is_file() else ""

    def alive_nodes(self) -> list[str]:
        """IPs of the nodes the head counts alive, asked from the client host (state API)."""
        out = self.ray("list", "nodes", "--address", self.address, "--format", "json", "--filter", "state=ALIVE",
                       check=False, timeout=60)
        if out.returncode != 0 or not out.stdout.lstrip().startswith("["):
            return []
        return sorted(n["node_ip"] for n in json.loads(out.stdout))

    def wait_for_nodes(self, n: int, timeout: float = 120) -> list[str]:
        self._wait_port(self.head, DASHBOARD_PORT, timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            for h in [self.head, *self.worker_hosts]:
                if h.proc is not None and h.proc.poll() is not None:
                    raise HostsError(f"ray start on {h.role} exited: {self.start_log(h)[-1500:]}")
            if len(ips := self.alive_nodes()) == n:
                return ips
            time.sleep(0.5)
        raise HostsError(f"{n} Ray nodes not alive after {timeout}s (alive: {self.alive_nodes()})")

    def heal(self) -> None:
        """Every host killed or cut off before gets its link back and a fresh Ray node on the same
        address (whatever was left of the old one ended first); returns once the head counts every
        node alive again."""
        stale = [h for h in self.hosts.values() if h.stale]
        for host in stale:
            self.link(host, up=True)
            host.kill_all()
            host.stale = False
            self.start_node(host)
        if stale:
            self.wait_for_nodes(1 + self.workers)

    def ray(self, *args: str, check: bool = True, timeout: float = 120, cwd=None,
            env: dict | None = None) -> subprocess.CompletedProcess:
        """The `ray` command line on the client host; `ray job ...` goes to the head's job server."""
        if args[0] == "job":  # the address goes before any `--` that starts the entrypoint
            args = (*args[:2], "--address", self.address, *args[2:])
        out = subprocess.run(self.client.cmd(str(BIN / "ray"), *args), env=env or self.env, capture_output=True,
                             text=True, timeout=timeout, cwd=cwd, check=False)
        if check and out.returncode != 0:
            raise HostsError(f"ray {' '.join(args)} failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")
        return out

    def train(self, *overrides: str, log: Path) -> subprocess.Popen:
        """`python -m ray_al train OVERRIDES` on the head, joined to this cluster (as a user logged in
        on the head would run it); stdout and stderr go to `log`."""
        with open(log, "w") as f:
            return subprocess.Popen(
                self.head.cmd(sys.executable, "-m", "ray_al", "train", *overrides, f"ray.address={self.gcs_address}"),
                env=self.env, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)

    # -- teardown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Everything we made, in order: processes of every host, delay lines, namespaces, links,
        bridge, temp dirs. Safe to call twice and after a partial build; raises at the end if a
        process outlived SIGKILL (its namespace is removed all the same)."""
        errors = []
        for host in self.hosts.values():
            if host.role in self.delays:
                self.undelay(host)
            if Path(f"/run/netns/{host.netns}").exists():
                try:
                    host.kill_all()
                except HostsError as e:
                    errors.append(str(e))
            if host.proc is not None and host.proc.poll() is None:
                os.killpg(host.proc.pid, signal.SIGKILL)
                host.proc.wait(timeout=5)
            sh("ip", "netns", "del", host.netns, check=False)
            sh("ip", "link", "del", host.veth, check=False)  # gone with its namespace's end, normally
        sh("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.temp_root, ignore_errors=True)
        if errors:
            raise HostsError("; ".join(errors))

    def leftovers(self) -> list[str]:
        """Anything of ours still there (for tests of the teardown itself)."""
        names = sh("ip", "-o", "link", "show", check=False).stdout
        found = [n for n in (self.bridge, *(h.veth for h in self.hosts.values())) if f" {n}:" in names or
                 f" {n}@" in names]
        found += [h.netns for h in self.hosts.values() if Path(f"/run/netns/{h.netns}").exists()]
        return found + ([str(self.temp_root)] if self.temp_root.exists() else [])


def hosts_for_tests(**kwargs) -> Hosts:
    """Hosts, or a pytest skip that says why they cannot be made here. In CI (CI=true) as root,
    where they can be made, a failure to build them fails the test run instead of skipping."""
    import pytest

    reason = unavailable()
    must_run = os.environ.get("CI") == "true" and getattr(os, "geteuid", lambda: -1)() == 0
    if reason and not must_run:
        pytest.skip(f"separate hosts (network namespaces) unavailable: {reason}")
    try:
        return Hosts(**kwargs)
    except (HostsError, OSError) as e:
        if must_run:
            pytest.fail(f"CI=true and root, but the hosts could not be built: {e}")
        pytest.skip(f"separate hosts (network namespaces) could not be built here: {e}")
