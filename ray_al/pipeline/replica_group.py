"""Inside a block replica's actor process: the torch.distributed group of one block's R replicas and
the gradient average every step makes in it.

Every actor process belongs to one block, so the process's default group is that block's group: rank r
is replica r, rendezvous over TCP at a free port of replica 0's node (the driver passes its address on).
gloo on CPU, NCCL on GPUs (one per replica; replicas.group_backend), gloo on the interface of the
node's Ray IP (use_node_interface). The group's timeout (from
ray.placement_timeout_s) bounds every collective, so a replica that hangs or dies makes its peers fail
with one line (a BlockLost: the run restarts from its last checkpoint) instead of waiting for ever.
"""
from __future__ import annotations

import datetime
import os
import socket
import struct
import sys

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from ray_al.errors import BlockLost, TrainingError


def free_port() -> int:
    """A TCP port free on this node now, for the group's rendezvous (replica 0 listens there)."""
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def interface_of(ip: str) -> str | None:
    """The network interface whose (primary IPv4) address is `ip` on this node; None where not found or not Linux."""
    if sys.platform != "linux":
        return None
    import fcntl

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for _, name in socket.if_nameindex():
            try:  # SIOCGIFADDR: the interface's IPv4 address, bytes 20..24 of the ifreq it fills in
                got = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # no IPv4 address
            if socket.inet_ntoa(got[20:24]) == ip:
                return name
    return None


def use_node_interface(node_ip: str) -> None:
    """Gloo connects the replicas over the address this host's name resolves to, or loopback where that is
    not a local address (the hostname maps to 127.0.x.1 in many images and containers): replicas on other
    nodes could not reach it. Pin gloo to the interface of the node's Ray IP, unless GLOO_SOCKET_IFNAME is set."""
    if "GLOO_SOCKET_IFNAME" not in os.environ and (name := interface_of(node_ip)):
        os.environ["GLOO_SOCKET_IFNAME"] = name


def join(address: str, port: int, rank: int, world: int, backend: str, timeout_s: float, where: str,
         node_ip: str) -> None:
    """Join this block's group as replica `rank` of `world` over `backend` (replicas.group_backend); `node_ip`:
    this node's Ray IP, where gloo listens."""
    if backend == "gloo":
        use_node_interface(node_ip)
    try:
        dist.init_process_group(backend, init_method=f"tcp://{address}:{port}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    except Exception as e:  # a replica that never came: the rendezvous timed out
        raise TrainingError(f"{where}: the block's replicas did not meet at {address}:{port} within "
                            f"{timeout_s:g}s (ray.placement_timeout_s): {_one_line(e)}") from None


def broadcast_from_first(module: torch.nn.Module, where: str) -> None:
    """Every replica takes replica 0's parameters and buffers: built from one seed they are equal
    already, the broadcast makes it a fact (whatever the device's initialisation does)."""
    try:
        for tensor in module.state_dict().values():  # parameters and buffers, sharing their storage
            dist.broadcast(tensor, src=0)
    except RuntimeError as e:
        raise BlockLost(f"{where}: broadcast of replica 0's parameters failed: {_one_line(e)}") from None


class GradientAverage:
    """BlockTrainer.after_backward for a replicated block: all-reduce the sum of every gradient (one flat
    buffer, one collective) and divide by R, so each replica takes the optimizer step of the mean gradient,
    and with it the same step: the replicas stay identical. BatchNorm running statistics are averaged
    too (their batch statistics stay per micro-batch, as in DDP without SyncBatchNorm)."""

    def __init__(self, block: torch.nn.Module, world: int, where: str):
        self.block, self.world, self.where = block, world, where
        self.stats = [t for m in block.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                      and m.track_running_stats for t in (m.running_mean, m.running_var)]

    def __call__(self) -> None:
        tensors = [p.grad for p in self.block.parameters() if p.grad is not None] + self.stats
        if not tensors:
            return
        flat = _flatten_dense_tensors(tensors)
        try:
            dist.all_reduce(flat)
        except RuntimeError as e:  # a peer died, or hangs past the group's timeout
            raise BlockLost(f"{self.where}: gradient all-reduce failed: {_one_line(e)}") from None
        flat /= self.world
        for tensor, mean in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
            tensor.copy_(mean)


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _one_line(e: Exception) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:300]
