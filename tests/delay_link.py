"""A delay line in user space, for kernels without `tc netem` (some VM kernels leave it out).

`insert()` puts it into a host's link: the host's frames, entering the bridge's end of its veth,
are redirected by `tc ... mirred` (ingress qdisc, u32 match-all) to a tap device; this process
reads them there and writes them, `ms` later, into a second tap that is a port of the bridge. The
other way round, frames the bridge sends to the second tap come back `ms` later through the first
tap, whose ingress is redirected to the veth. The veth leaves the bridge meanwhile, so nothing
bypasses the line. Frames keep their order. `remove()` undoes it; the taps vanish with the process.

Run as a script it is the forwarder: `python delay_link.py TAP_A TAP_B MS`.
"""
from __future__ import annotations

import fcntl
import os
import queue
import signal
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF, IFF_TAP, IFF_NO_PI = 0x400454CA, 0x0002, 0x1000


def _sh(*cmd: str) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {out.stderr.strip()}")


def _redirect(src: str, dst: str) -> None:
    """Every frame that arrives on `src` leaves through `dst` instead."""
    _sh("tc", "qdisc", "add", "dev", src, "ingress")
    _sh("tc", "filter", "add", "dev", src, "parent", "ffff:", "protocol", "all", "u32", "match", "u32", "0", "0",
        "action", "mirred", "egress", "redirect", "dev", dst)


def insert(veth: str, bridge: str, prefix: str, ms: float) -> subprocess.Popen:
    tap_host, tap_bridge = f"{prefix}a", f"{prefix}b"
    proc = subprocess.Popen([sys.executable, __file__, tap_host, tap_bridge, str(ms)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"delay line on {veth} did not start (exit {proc.wait()})")
        _sh("ip", "link", "set", tap_host, "up")
        _sh("ip", "link", "set", tap_bridge, "master", bridge, "up")
        _redirect(veth, tap_host)       # host -> line -> bridge
        _redirect(tap_host, veth)       # bridge -> line -> host
        _sh("ip", "link", "set", veth, "nomaster")
    except BaseException:
        remove(proc, veth, bridge)
        raise
    return proc


def remove(proc: subprocess.Popen, veth: str, bridge: str) -> None:
    subprocess.run(["ip", "link", "set", veth, "master", bridge], capture_output=True, check=False)
    subprocess.run(["tc", "qdisc", "del", "dev", veth, "ingress"], capture_output=True, check=False)
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _open_tap(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    return fd


def _pipe(src: int, dst: int, delay: float) -> None:
    """Read frames from src, write each to dst `delay` seconds after it arrived, in order."""
    line: queue.SimpleQueue = queue.SimpleQueue()

    def read():
        while True:
            frame = os.read(src, 65536)
            line.put((time.monotonic() + delay, frame))

    def write():
        while True:
            due, frame = line.get()
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            try:
                os.write(dst, frame)
            except OSError:
                pass  # the far tap is down for a moment: the frame is lost, as on a wire

    for fn in (read, write):
        threading.Thread(target=fn, daemon=True).start()


def main(argv: list[str]) -> None:
    tap_host, tap_bridge, ms = argv[0], argv[1], float(argv[2])
    fd_host, fd_bridge = _open_tap(tap_host), _open_tap(tap_bridge)
    _pipe(fd_host, fd_bridge, ms / 1000)
    _pipe(fd_bridge, fd_host, ms / 1000)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    print("ready", flush=True)
    signal.pause()


if __name__ == "__main__":
    main(sys.argv[1:])
