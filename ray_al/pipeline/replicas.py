"""`ray.replicas_per_block: R > 1`: every block as R BlockActors, R chains of the pipeline side by side.

A step takes one batch of R x B samples (B = data.batch_size, core/batches.step_batch_size) and splits
it into R micro-batches in order; replica r of every block works on micro-batch r and passes its
(s_i, t_i) to replica r of the next block, so each chain is one more stream of calls through the same
driver loop. The R replicas of a block average their gradients in a torch.distributed all-reduce before
the same optimizer step (replica_group.py), so they stay identical and the arithmetic is AL with batch
R x B: with equal micro-batches the mean of their mean gradients is the mean gradient of the whole batch
(equal to al_local with batch R x B up to the order of float sums, tests/test_replicas.py).

Replica 0's chain (`self.actors`) does what needs one copy: evaluation, prediction, state and
checkpoint files; warm-up and state loads go to every replica so that all stay equal. Actor (r, i)
sits in bundle i * R + r of one placement group: a block's replicas side by side, so SPREAD
spreads them over nodes and PACK keeps them together. A lost replica is a lost block: the run restarts.
"""
from __future__ import annotations

from typing import Iterable

import ray
import torch

from ray_al.core.batches import Chunk
from ray_al.core.step_options import StepOptions
from ray_al.errors import ConfigError, RayALError
from ray_al.pipeline.actors import BlockActor
from ray_al.pipeline.driver import ALPipeline, _actor_name, _startup_error
from ray_al.pipeline.transport import relay, resolve
from ray_al.trainers.base import OnChunk

# Ray's collective transports run their own torch.distributed group in each actor, where the replicas' is
COLLECTIVE_TRANSPORTS = ("gloo", "nccl")


def micro_batches(chunk: Chunk, replicas: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Split a chunk of K batches of R x B into R chunks of K batches of B, replica r taking samples
    r*B .. (r+1)*B - 1 of every batch. Each part owns its storage (a view would ship the whole chunk)."""
    b = chunk.x.shape[1] // replicas
    out = []
    for r in range(replicas):
        part = slice(r * b, (r + 1) * b)
        out.append((chunk.x[:, part].clone(memory_format=torch.contiguous_format),
                    chunk.y[:, part].clone(memory_format=torch.contiguous_format)))
    return out


def merge_stats(per_replica: list[list[dict]]) -> list[dict]:
    """Each block's chunk stats over its replicas: the mean of their losses (the loss of the R x B batch,
    the micro-batches being equal in size) and the slowest replica's compute time."""
    merged = []
    for same_block in zip(*per_replica):
        stats = dict(same_block[0])
        for key in stats:
            if key.endswith("loss"):
                stats[key] = sum(s[key] for s in same_block) / len(same_block)
        if "compute_s" in stats:
            stats["compute_s"] = max(s["compute_s"] for s in same_block)
        merged.append(stats)
    return merged


def chain_transport(asked: str, chains: list[list[dict]]) -> tuple[str, str]:
    """The hop transport for R chains placed as `chains` (each a chain's BlockActor.where()): the one
    every chain resolves to; a collective RDT transport would share the process with the replicas' group."""
    picked = {resolve(asked, chain) for chain in chains}
    if len(picked) > 1:  # e.g. cuda_ipc where a chain's blocks share a GPU, but not in every chain
        if asked != "auto":
            raise ConfigError(f"ray.tensor_transport={asked} fits some replica chains only: use object_store")
        picked = {("object_store", "auto: the replica chains differ")}
    (transport, why), = picked
    if transport in COLLECTIVE_TRANSPORTS:
        if asked != "auto":
            raise ConfigError(f"ray.tensor_transport={asked} with ray.replicas_per_block > 1 is not supported (the "
                              f"replicas' all-reduce owns each actor's process group): use object_store or cuda_ipc")
        return "object_store", f"auto: {transport} is not used with block replicas"
    return transport, why


def group_backend(replicas: list[dict]) -> str:
    """NCCL for a block whose replicas each hold a GPU of their own (NCCL takes one rank per GPU), else gloo
    (CPU tensors, or CUDA tensors of replicas sharing a GPU)."""
    gpus = [(p["node"], g) for p in replicas for g in p["gpu_ids"][:1]]
    cuda = all(p["device_type"] == "cuda" for p in replicas)
    return "nccl" if cuda and len(set(gpus)) == len(replicas) else "gloo"


class ReplicatedPipeline(ALPipeline):
    """ALPipeline with ray.replicas_per_block = R > 1 (made by run/factory.py; R = 1 never comes here)."""

    def _start(self) -> None:
        cfg, n = self.cfg, self.n
        self.replicas = r_count = cfg.ray.replicas_per_block
        self._reserve(r_count)  # (r, i) -> bundle offset + i*R + r
        self.chains = [[BlockActor.options(**self.slots.options(i * r_count + r))
                        .remote(cfg.model, cfg.optim, cfg.train.seed, cfg.train.threads, self.input_shape,
                                self.num_classes, i, n, self.total_steps, StepOptions.from_config(cfg.train), r)
                        for i in range(n)] for r in range(r_count)]
        self.actors = self.chains[0]  # evaluation, prediction, state and checkpoint files: replica 0
        try:
            self.placement = ray.get([a.where.remote() for chain in self.chains for a in chain])
            failed = next((p for p in self.placement if "error" in p), None)
            if failed:
                raise ConfigError(f"{_actor_name(failed)} could not start: {failed['error']}")
            self.transport, self.transport_why = chain_transport(
                cfg.ray.tensor_transport, [self.placement[r * n:(r + 1) * n] for r in range(r_count)])
            self._join_groups()
        except (RayALError, ray.exceptions.RayError) as e:
            self.close()
            raise (e if isinstance(e, RayALError) else _startup_error(e)) from None

    def _join_groups(self) -> None:
        """One torch.distributed group per block, all blocks at once (each rendezvous needs all R)."""
        addresses = ray.get([actor.replica_address.remote() for actor in self.chains[0]])
        n, timeout = self.n, self.cfg.ray.placement_timeout_s
        backends = [group_backend(self.placement[i::n]) for i in range(n)]
        self._get([chain[i].join_replicas.remote(ip, port, self.replicas, backends[i], timeout)
                   for chain in self.chains for i, (ip, port) in enumerate(addresses)])

    # -- training: one stream of calls per chain ----------------------------------------------------
    def submit(self, chunk: Chunk) -> list:
        """Micro-batch r down chain r; the refs of every chain's stats, chain after chain."""
        refs = []
        for chain, micro in zip(self.chains, micro_batches(chunk, self.replicas)):
            if self.transport != "object_store":
                refs += relay(chain, micro, self.transport)  # one ref: the chain's list of stats
                continue
            ref = micro
            for actor in chain:
                ref, stat = actor.train_chunk.remote(ref)
                refs.append(stat)
        return refs

    def train_epoch(self, chunks: Iterable[Chunk], on_chunk: OnChunk) -> None:
        rdt = self.transport != "object_store"  # then each chain's last block returned its chain's list
        self._stream(map(self.submit, chunks), lambda got: on_chunk(merge_stats(got if rdt else self._chains_of(got))))

    def warmup(self, chunks: Iterable[torch.Tensor], on_chunk: OnChunk) -> None:
        """The same label chunks down every chain: the replicas' target paths stay equal without a collective."""
        def submit(labels):
            stats = []
            for chain in self.chains:
                ref = labels
                for actor in chain:
                    ref, stat = actor.warmup_chunk.remote(ref)
                    stats.append(stat)
            return stats
        self._stream(map(submit, chunks), lambda got: on_chunk(merge_stats(self._chains_of(got))))

    def end_warmup(self) -> None:
        self._get([a.end_warmup.remote() for chain in self.chains for a in chain])

    def _chains_of(self, got: list) -> list[list[dict]]:
        """A flat list of R x N stats, chain after chain, as R lists of N."""
        n = self.n
        return [got[r * n:(r + 1) * n] for r in range(self.replicas)]

    # -- state: replica 0 reads and writes it; every replica loads it ---------------------------------
    def replica_states(self) -> list[list[dict]]:
        """Every replica's state, chain by chain (tests check the replicas stay identical)."""
        return [self._get([a.get_state.remote() for a in chain]) for chain in self.chains]

    def load_state_dicts(self, states: list[dict]) -> None:
        self._get([a.set_state.remote(s) for chain in self.chains for a, s in zip(chain, states)])

    def load_blocks(self, run_uri: str, manifest: dict) -> None:
        self._get([a.load.remote(run_uri, manifest) for chain in self.chains for a in chain])

    def close(self) -> None:
        self.actors = [a for chain in getattr(self, "chains", []) for a in chain]  # the base class kills these
        super().close()
