"""A real Ray head node (`ray start --head --block`) on loopback, with its own ports and temp dir,
for tests that need the job server. Stopped by ending its own process group, never `ray stop`
(which would end every Ray cluster of this user on the machine). Below it, `ray job` from the
command line against any cluster object with `.ray(...)` (a HeadNode, tests/hosts.py's Hosts)."""
from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.helpers import REPO

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env() -> dict:
    """Token auth on, our python first on PATH, and no PYTHONPATH (jobs get code from their upload)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["RAY_AUTH_MODE"] = "token"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


class HeadNode:
    def __init__(self, num_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="rayal-", dir="/tmp")  # short: socket paths have a limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        low = random.randrange(20000, 29000, 100)
        ports = {"--port": self.port, "--dashboard-port": self.dashboard_port,
                 "--ray-client-server-port": free_port(), "--node-manager-port": free_port(),
                 "--object-manager-port": free_port(), "--dashboard-agent-listen-port": free_port(),
                 "--dashboard-agent-grpc-port": free_port(), "--runtime-env-agent-port": free_port(),
                 "--metrics-export-port": free_port(), "--min-worker-port": low, "--max-worker-port": low + 99}
        cmd = [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
               "--include-dashboard=true", f"--num-cpus={num_cpus}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats", *(f"{k}={v}" for k, v in ports.items())]
        self.log = open(Path(self.temp_dir) / "ray-start.log", "w")
        self.env = clean_env()
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited: {self.logs()[-2000:]}")
            if self.ray("job", "list", check=False, timeout=30).returncode == 0:
                return
            time.sleep(1.0)
        raise TimeoutError(f"head node not ready in {timeout}s: {self.logs()[-2000:]}")

    def ray(self, *args, check: bool = True, timeout: float = 120, cwd=None) -> subprocess.CompletedProcess:
        if args[0] == "job":  # the address goes before any `--` that starts the entrypoint
            args = (*args[:2], "--address", self.address, *args[2:])
        out = subprocess.run([RAY, *args],
                             env=self.env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
        if check and out.returncode != 0:
            raise RuntimeError(f"ray {' '.join(args)} failed: {out.stdout[-1500:]} {out.stderr[-1500:]}")
        return out

    def logs(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "ray-start.log").read_text()

    def stop(self) -> None:
        """End `ray start --block` and everything it started (its process group), then any
        process still naming our temp dir (children that made their own session)."""
        # a test cluster holds nothing worth a graceful drain (the raylet takes 30 s or more)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                if self.temp_dir.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
        return pids


# -- `ray job` from the command line -----------------------------------------------------------
def submit(head, job_id: str, args: list[str]) -> None:
    head.ray("job", "submit", "--no-wait", "--submission-id", job_id, "--working-dir", str(REPO),
             "--", "python", "-m", "ray_al", "train", *args, cwd=REPO)


def status(head, job_id: str) -> str:
    out = head.ray("job", "status", job_id).stdout
    found = re.search(r"Status for job '[^']+': (\w+)", out)  # pending / running
    if found:
        return found.group(1)
    for word, state in (("was stopped", "STOPPED"), ("succeeded", "SUCCEEDED"), ("failed", "FAILED")):
        if word in out:  # finished jobs are reported in a sentence
            return state
    return "?"


def wait_for(head, job_id: str, states: set[str], timeout: float) -> str:
    deadline, state = time.time() + timeout, "?"
    while time.time() < deadline:
        state = status(head, job_id)
        if state in states:
            return state
        time.sleep(1.0)
    raise AssertionError(f"job {job_id} still {state} after {timeout}s; logs:\n{logs(head, job_id)[-3000:]}")


def logs(head, job_id: str) -> str:
    return head.ray("job", "logs", job_id, check=False).stdout
