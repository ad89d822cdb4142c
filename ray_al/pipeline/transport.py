"""How a chunk's (s_i, t_i) hop from block i to block i+1: `ray.tensor_transport`.

    object_store  the tensors go to the host and through Ray's object store (Ray's default, any hardware)
    cuda_ipc      Ray Direct Transport (RDT): the receiver maps the sender's GPU memory; blocks sharing one
                  GPU on one node (fractional ray.num_gpus_per_block)
    nccl          RDT over NCCL: one GPU per block, on one node or several
    gloo          RDT over Gloo: CPU tensors, sent process to process without the object store
    auto          cuda_ipc, else nccl, where the blocks' GPUs allow it; on CPUs the object store, as before
                  (Gloo is opt-in: alpha in Ray 2.60, and measured faster only for large chunks,
                  docs/transports.md); the choice and why go into the placement lines

RDT (Ray 2.60, alpha) returns one object per call and a collective transport's objects can only be
read by actors of its group, never by the driver. So on an RDT transport each block's `train_relay`
returns (s_i, t_i, the stats of blocks 1..i) to the next block, and the last block returns the stats
alone, through the object store, to the driver: the driver never fetches an RDT object. The driver
drops each intermediate ObjectRef as soon as it has passed it on, so Ray frees the sender's tensors
once the receiving call has run. Warm-up and inference stay on the object store (small tensors, rare).
A lost block takes its collective group with it: `open_group` builds a new one for the new actors.
"""
from __future__ import annotations

from ray_al.errors import ConfigError

RDT = ("cuda_ipc", "nccl", "gloo")
CPU_AUTO_WHY = "auto on CPU blocks: the object store; gloo is opt-in"


def check_bundles(asked: str, bundles: list[dict]) -> None:
    """Before any actor starts: a CUDA transport for blocks whose bundles hold no GPU is a one-line error."""
    if asked in ("cuda_ipc", "nccl") and not all(b.get("GPU", 0) for b in bundles):
        raise ConfigError(f"ray.tensor_transport={asked} moves CUDA tensors, but the blocks run on the CPU "
                          f"(ray.num_gpus_per_block=0): use gloo or object_store")


def resolve(asked: str, placement: list[dict]) -> tuple[str, str]:
    """(transport, why) for blocks placed as `placement` says (BlockActor.where()); a transport the
    placement cannot use is a one-line ConfigError, or under auto the next one that fits."""
    devices = {p["device_type"] for p in placement}
    if devices == {"cpu"}:
        if asked in ("cuda_ipc", "nccl"):
            raise ConfigError(f"ray.tensor_transport={asked} moves CUDA tensors, but the blocks run on the CPU "
                              f"(ray.num_gpus_per_block=0): use gloo or object_store")
        return ("object_store", CPU_AUTO_WHY) if asked == "auto" else (asked, "asked for")
    if devices != {"cuda"}:
        if asked in RDT:
            raise ConfigError(f"ray.tensor_transport={asked}: blocks run on both CPU and GPU; RDT needs one kind")
        return "object_store", f"{asked}: blocks on both CPU and GPU"
    if asked == "gloo":
        raise ConfigError("ray.tensor_transport=gloo carries CPU tensors, but the blocks run on GPUs: "
                          "use cuda_ipc (blocks sharing a GPU) or nccl (a GPU per block)")
    ipc_ok, ipc_why = _cuda_ipc_fits(placement)
    nccl_ok, nccl_why = _nccl_fits(placement)
    if asked == "cuda_ipc" and not ipc_ok:
        raise ConfigError(f"ray.tensor_transport=cuda_ipc: {ipc_why}")
    if asked == "nccl" and not nccl_ok:
        raise ConfigError(f"ray.tensor_transport=nccl: {nccl_why}")
    if asked != "auto":
        return asked, "asked for"
    if ipc_ok:
        return "cuda_ipc", "auto: every hop stays on one GPU"
    if nccl_ok:
        return "nccl", "auto: a GPU per block"
    return "object_store", f"auto: neither fits ({ipc_why}; {nccl_why})"


def _gpus(p: dict) -> set[tuple[str, int]]:
    return {(p["node"], g) for g in p["gpu_ids"]}


def _cuda_ipc_fits(placement: list[dict]) -> tuple[bool, str]:
    """The receiver must hold the very GPU the sender's tensors are on (its cuda:0), on the same node."""
    for a, b in zip(placement, placement[1:]):
        if (a["node"], a["gpu_ids"][0]) not in _gpus(b):
            return False, (f"block {b['block']} does not share block {a['block']}'s GPU (CUDA IPC maps memory "
                           f"of one GPU between processes of one node)")
    return True, ""


def _nccl_fits(placement: list[dict]) -> tuple[bool, str]:
    """NCCL takes one rank per GPU: no two blocks may share one."""
    seen: set = set()
    for p in placement:
        if seen & _gpus(p):
            return False, (f"block {p['block']} shares a GPU with an earlier block (NCCL needs a GPU per block: "
                           f"ray.num_gpus_per_block=1)")
        seen |= _gpus(p)
    return True, ""


def open_group(actors: list, transport: str):
    """The collective group gloo and nccl need (cuda_ipc needs none); rank = block index."""
    if transport not in ("gloo", "nccl"):
        return None
    from ray.experimental.collective import create_collective_group
    return create_collective_group(actors, backend=transport)


def close_group(group) -> None:
    """Destroy the group (its actors may be dead already: a lost block is why we are here)."""
    if group is None:
        return
    from ray.experimental.collective import destroy_collective_group
    try:
        destroy_collective_group(group)
    except Exception:
        pass  # gone with its actors


def relay(actors: list, first_input, transport: str) -> list:
    """One chunk down the chain over RDT; returns [the ref of every block's stats] from the last block."""
    ref = first_input
    for actor in actors[:-1]:
        ref = actor.train_relay.options(tensor_transport=transport).remote(ref)
    return [actors[-1].train_relay.remote(ref)]
