"""`train.trainer=al`, the driver: N BlockActors in one placement group, chunks streamed through them.

Training submits chunk k+1 to block 1 while block 2 works on chunk k; actor calls take
ObjectRefs, so the driver never waits on intermediate results. It only waits, oldest first,
when `max_inflight_chunks` chunks are between submission and completion, which bounds memory.
A sync actor runs calls from one caller in submission order, so this is exactly the
arithmetic of the blocks run one after another (tests/test_pipeline.py checks bitwise).
"""
from __future__ import annotations

import collections
import re
from typing import Iterable, Iterator

import ray
import torch

from ray_al.config import Config
from ray_al.core.batches import Chunk, eval_batches
from ray_al.core.metrics import exit_accuracies
from ray_al.core.step_options import StepOptions
from ray_al.core.target_path import class_points, separability
from ray_al.errors import BlockLost, ConfigError, RayALError, TrainingError
from ray_al.models import block_count
from ray_al.pipeline.actors import BlockActor
from ray_al.pipeline.placement import reserve
from ray_al.pipeline.session import connect, gcs_reachable
from ray_al.pipeline.transport import check_bundles, close_group, open_group, relay, resolve
from ray_al.trainers.base import OnChunk


def _unwrap(e: Exception) -> RayALError:
    if isinstance(e, ray.exceptions.RayActorError) and getattr(e, "actor_init_failed", False):
        return _startup_error(e)  # a restart would fail the same way
    if isinstance(e, (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError)):
        return BlockLost(_last_line(str(e).strip().splitlines()[0]))
    cause = getattr(e, "cause", None)
    if isinstance(cause, RayALError):
        return type(cause)(str(cause))
    return TrainingError(f"a block actor failed: {_last_line(e)}")


def _startup_error(e: Exception) -> RayALError:
    """A block actor that failed before our constructor could report (its runtime_env, ray_al
    missing on its node): the cause in one line, not a restartable BlockLost. A process or node
    lost while starting stays a BlockLost."""
    if isinstance(e, ray.exceptions.RuntimeEnvSetupError):
        return ConfigError(f"ray.runtime_env of the block actors could not be set up: {_last_line(e)}")
    if isinstance(e, ray.exceptions.RayActorError) and not e.actor_init_failed:
        return _unwrap(e)
    return TrainingError(f"a block actor could not start: {_last_line(e)}")



def _actor_name(where: dict) -> str:
    """'block 2', or with ray.replicas_per_block > 1 'block 2 replica 1' (BlockActor.where())."""
    return f"block {where['block']}" + (f" replica {where['replica']}" if "replica" in where else "")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _last_line(e: Exception | str) -> str:
    """The line of a Ray error that names the exception (its traceback's last), without colour codes."""
    lines = [line.strip() for line in _ANSI.sub("", str(e)).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(e).__name__


def _settle(refs: list, timeout: float = 10.0) -> None:
    """Collect the failures of chunks still in flight after one failed, so Ray does not log
    each of them as an unhandled error."""
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
    for ref in ready:
        try:
            ray.get(ref)
        except ray.exceptions.RayError:
            pass


class ALPipeline:
    def __init__(self, cfg: Config, input_shape: tuple, num_classes: int, total_steps: int,
                 pg=None):
        """pg: the placement group to place the blocks in (default: the current one, e.g. a Tune
        trial's, else a new one); see placement.py."""
        connect(cfg.ray)
        self.cfg, self.input_shape, self.num_classes = cfg, tuple(input_shape), num_classes
        self.total_steps = total_steps
        self.peak_inflight = 0  # most chunks ever between submission and completion
        self.n = block_count(cfg.model, input_shape, num_classes)
        self._given_pg = pg
        self.group, self.transport, self.transport_why = None, "object_store", ""
        self._start()

    def _reserve(self, replicas: int = 1) -> None:
        """The placement group's bundles for every actor (replica r of block i at slots.offset + i * R + r);
        what they cannot serve (transport, step options) is refused before any actor starts."""
        cfg = self.cfg
        self.slots = reserve(cfg.ray, self.n, self._given_pg, replicas=replicas)
        self.pg = self.slots.pg
        try:
            check_bundles(cfg.ray.tensor_transport, self.slots.bundles)
            gpus = all(b.get("GPU", 0) for b in self.slots.bundles)
            StepOptions.from_config(cfg.train).check(torch.device("cuda" if gpus else "cpu"))
        except ConfigError:
            self.slots.release()
            raise

    def _start(self) -> None:
        cfg = self.cfg
        self._reserve()  # block i -> bundle slots.offset + i
        self.actors = [
            BlockActor.options(**self.slots.options(i))
            .remote(cfg.model, cfg.optim, cfg.train.seed, cfg.train.threads, self.input_shape, self.num_classes,
                    i, self.n, self.total_steps, StepOptions.from_config(cfg.train))
            for i in range(self.n)
        ]
        try:
            self.placement = ray.get([a.where.remote() for a in self.actors])
            failed = next((p for p in self.placement if "error" in p), None)
            if failed:
                raise ConfigError(f"{_actor_name(failed)} could not start: {failed['error']}")
            # after placement: which transport fits depends on where the blocks and their GPUs landed
            self.transport, self.transport_why = resolve(cfg.ray.tensor_transport, self.placement)
            self.group = open_group(self.actors, self.transport)  # new actors (a restart): a new group
        except (RayALError, ray.exceptions.RayError) as e:
            self.close()  # no half-started chain left holding the placement group
            raise (e if isinstance(e, RayALError) else _startup_error(e)) from None

    def restart(self) -> None:
        """Replace every block actor (after a loss): fresh processes, a fresh placement group."""
        self.close()
        self._start()

    @staticmethod
    def _get(refs):
        try:
            return ray.get(refs)
        except ray.exceptions.RayError as e:  # a task error whose cause is ours becomes that one line
            raise _unwrap(e) from None

    # -- training ------------------------------------------------------------------------
    def submit(self, chunk: Chunk) -> list:
        """Send one chunk down the chain; returns the ObjectRefs of every block's stats (on an RDT
        transport: one ref, the last block's, of all of them)."""
        ref = chunk.ref if chunk.ref is not None else (chunk.x, chunk.y)  # Ray Data: (x, y) in the object store
        if self.transport != "object_store":
            return relay(self.actors, ref, self.transport)
        stats = []
        for actor in self.actors:
            ref, stat = actor.train_chunk.remote(ref)
            stats.append(stat)
        return stats

    def train_epoch(self, chunks: Iterable[Chunk], on_chunk: OnChunk) -> None:
        """on_chunk gets every block's stats of a chunk, in chunk order, as the chunk completes."""
        if self.transport == "object_store":
            self._stream(map(self.submit, chunks), on_chunk)
        else:  # one ref per chunk, holding the list of every block's stats
            self._stream(map(self.submit, chunks), lambda got: on_chunk(got[0]))

    def warmup(self, chunks: Iterable[torch.Tensor], on_chunk: OnChunk) -> None:
        """Target-path warm-up: label chunks down the same chain, each block passing t_i on."""
        def submit(labels):
            ref, stats = labels, []
            for actor in self.actors:
                ref, stat = actor.warmup_chunk.remote(ref)
                stats.append(stat)
            return stats
        self._stream(map(submit, chunks), on_chunk)

    def end_warmup(self) -> None:
        self._get([a.end_warmup.remote() for a in self.actors])

    def _stream(self, submitted: Iterator[list], on_chunk: OnChunk) -> None:
        """Keep at most max_inflight_chunks submitted chunks unfinished; results in submission order."""
        inflight: collections.deque = collections.deque()
        try:
            for stats in submitted:
                inflight.append(stats)
                self.peak_inflight = max(self.peak_inflight, len(inflight))
                if len(inflight) >= self.cfg.train.max_inflight_chunks:
                    on_chunk(self._get(inflight.popleft()))
            while inflight:
                on_chunk(self._get(inflight.popleft()))
        except RayALError:
            _settle([ref for refs in inflight for ref in refs])
            raise

    def target_separability(self) -> dict[str, float]:
        """The C class points up through g_1..g_N and each t_i back down through h_i..h_1."""
        t, targets = class_points(self.num_classes), []
        for actor in self.actors:
            t = actor.encode_targets.remote(t)
            targets.append(t)
        logits = self._get(self._decode_down(targets))[::-1]
        return separability(self._get(targets), logits)

    # -- inference -------------------------------------------------------------------------
    def _refresh_readouts(self) -> None:
        """exit_readout=targets: each actor's read-out from the class targets as its g's are now."""
        if self.cfg.model.exit_readout == "targets":
            t = class_points(self.num_classes)
            for actor in self.actors:
                t = actor.refresh_readout.remote(t)
            self._get(t)

    def _submit_predict(self, x: torch.Tensor):
        s, bridged = x, []
        for actor in self.actors:
            s, b = actor.infer.remote(s)
            bridged.append(b)
        if self.cfg.model.exit_readout == "targets":  # each actor's infer gave its exit's scores already
            return bridged[::-1]
        return self._decode_down(bridged)

    def _decode_down(self, per_block: list):
        """Block k's value through h_k..h_1 for every k: a ref of the list for k = N..1."""
        carried = []
        for actor, b in zip(reversed(self.actors), reversed(per_block)):
            carried = actor.apply_h_to_exits.remote(carried, b)
        return carried

    def predict_exits(self, x: torch.Tensor, batch_size: int) -> Iterator[list[torch.Tensor]]:
        """Logits of exits 1..N, batch by batch, f's forward then b and h's in reverse."""
        self._refresh_readouts()
        pending: collections.deque = collections.deque()
        for xb in eval_batches(x, batch_size):
            pending.append(self._submit_predict(xb))
            if len(pending) >= self.cfg.train.max_inflight_chunks:
                yield self._get(pending.popleft())[::-1]
        while pending:
            yield self._get(pending.popleft())[::-1]

    def stage(self, k: int, s_prev: torch.Tensor, with_exit: bool = True):
        """Prediction's stage k (1-based) in the actors: (s_k, exit k's logits) from s_{k-1}. Actor k
        runs f_k and b_k; exit k's decode chain passes from actor k down to actor 1 without the driver."""
        if k == 1:  # an answer starts at stage 1: the read-outs (if any) as the weights are now
            self._refresh_readouts()
        s, t = self.actors[k - 1].infer.remote(s_prev)
        if not with_exit:
            return self._get(s), None
        for actor in reversed(self.actors[:k]) if self.cfg.model.exit_readout == "decoders" else []:
            t = actor.apply_h.remote(t)
        s, logits = self._get([s, t])
        return s, logits

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {**exit_accuracies(self.predict_exits(x, self.cfg.train.eval_batch_size), y),
                **self.target_separability()}

    # -- state ---------------------------------------------------------------------------------
    def state_dicts(self) -> list[dict]:
        return self._get([a.get_state.remote() for a in self.actors])

    def load_state_dicts(self, states: list[dict]) -> None:
        self._get([a.set_state.remote(s) for a, s in zip(self.actors, states)])

    def save_blocks(self, ckpt_uri: str) -> list[str]:
        """Each actor writes its own file; its save runs after every chunk already submitted to it."""
        return self._get([a.save.remote(ckpt_uri) for a in self.actors])

    def load_blocks(self, run_uri: str, manifest: dict) -> None:
        self._get([a.load.remote(run_uri, manifest) for a in self.actors])

    def peak_memory(self) -> list[int]:
        """Each block's peak GPU memory in bytes (0 for a block on the CPU)."""
        return self._get([a.peak_memory.remote() for a in self.actors])

    def describe(self) -> list[str]:
        lines = [f"{_actor_name(p)}: node {p['node']} ({p['host']}, {p['ip']}) pid {p['pid']} {p['device']}, "
                 f"{p['threads']} thread(s)" + (f", {p['options']}" if p["options"] else "") for p in self.placement]
        return lines + [f"tensor transport: {self.transport} ({self.transport_why})"]

    def close(self) -> None:
        if self.actors and not gcs_reachable():  # the cluster is gone, and with it what we held
            self.actors = []
            return
        close_group(self.group)
        self.group = None
        for actor in self.actors:
            try:
                ray.kill(actor)
            except Exception:
                pass  # already gone
        try:
            self.slots.release()  # only a group we made; a Tune trial's stays with the trial
        except Exception:
            pass
