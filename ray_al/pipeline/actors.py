"""BlockActor: one AL block in its own Ray worker process, on CPU or on the GPU Ray gave it."""
from __future__ import annotations

import os
import socket
import time

import ray
import torch

from ray_al.checkpoint.files import read_block, write_block
from ray_al.config import ModelConfig, OptimConfig
from ray_al.core.block_trainer import BlockTrainer
from ray_al.core.step_options import StepOptions
from ray_al.errors import RayALError
from ray_al.models import build_al_block
from ray_al.pipeline.replica_group import GradientAverage, broadcast_from_first, free_port, join
from ray_al.pipeline.slow_block import chunk_delay


@ray.remote(enable_tensor_transport=True)  # train_relay's outputs may travel by RDT (ray_al/pipeline/transport.py)
class BlockActor:
    def __init__(self, model: ModelConfig, optim: OptimConfig, seed: int, threads: int | None,
                 input_shape: tuple, num_classes: int, index: int, n_blocks: int, total_steps: int,
                 options: StepOptions | None = None, replica: int | None = None):
        # A failure here is kept and reported by where() as one line: raised, Ray would print its
        # traceback once per actor and the driver would see only "died in its creation task".
        self.startup_error, self.index = None, index
        self.replica = replica  # which of ray.replicas_per_block > 1 (pipeline/replicas.py); None: the only one
        try:
            self._setup(model, optim, seed, threads, input_shape, num_classes, index, n_blocks, total_steps, options)
        except Exception as e:
            self.startup_error = str(e) if isinstance(e, RayALError) else f"{type(e).__name__}: {e}"

    def _setup(self, model: ModelConfig, optim: OptimConfig, seed: int, threads: int | None,
               input_shape: tuple, num_classes: int, index: int, n_blocks: int, total_steps: int,
               options: StepOptions | None) -> None:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(threads or max(1, int(cpus)))
        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it assigned, so cuda:0 is ours.
        self.device = torch.device("cuda:0" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        block = build_al_block(model, input_shape, num_classes, index, seed, self.device)
        self.trainer = BlockTrainer(block, optim, total_steps, index, model, options)
        self.is_last = index == n_blocks - 1
        # fault-injection hook for tests, demos and the simulated benchmark (slow_block.py):
        # RAY_AL_SLOW_BLOCK="2:0.05" sleeps 50 ms per chunk in block 2
        self.delay = chunk_delay(index, self.replica)

    def where(self) -> dict:
        if self.startup_error:
            return {"block": self.index + 1, **self._replica(), "error": self.startup_error}
        ctx = ray.get_runtime_context()
        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)}, GPU ids {ray.get_gpu_ids()})"
        return {"block": self.trainer.index + 1, "node": ctx.get_node_id()[:12], "host": socket.gethostname(),
                "ip": ray.util.get_node_ip_address(), "pid": os.getpid(), "device": device,
                "device_type": self.device.type, "gpu_ids": [int(g) for g in ray.get_gpu_ids()],
                "threads": torch.get_num_threads(), "options": self.trainer.options.describe(), **self._replica()}

    def _replica(self) -> dict:
        return {} if self.replica is None else {"replica": self.replica}

    def replica_address(self) -> tuple[str, int]:
        """Where this block's replica group meets (called on replica 0): this node's IP, a free port."""
        return ray.util.get_node_ip_address(), free_port()

    def join_replicas(self, address: str, port: int, world: int, backend: str, timeout_s: float) -> None:
        """Join this block's group of `world` replicas; from now on every step averages their gradients."""
        where = f"block {self.index + 1} replica {self.replica}"
        join(address, port, self.replica, world, backend, timeout_s, where, ray.util.get_node_ip_address())
        broadcast_from_first(self.trainer.block, where)
        self.trainer.after_backward = GradientAverage(self.trainer.block, world, where)

    @ray.method(num_returns=2)
    def train_chunk(self, inputs: tuple):
        """K steps on (s_{i-1}, t_{i-1}) stacked [K, B, ...]; block 1 gets (x, labels).
        Returns (the inputs of the next block, this block's loss stats)."""
        if self.delay:
            time.sleep(self.delay)
        s, t, stats = self.trainer.train_chunk(*inputs)
        out = None if self.is_last else (s.cpu(), t.cpu())  # the last block's outputs go nowhere
        return out, stats

    def train_relay(self, inputs: tuple):
        """The same K steps on an RDT transport (ray_al/pipeline/transport.py): (s_{i-1}, t_{i-1}[, stats of blocks
        before]) in; (s_i, t_i, stats of blocks 1..i) out, the tensors left where they are for the next
        block to fetch; the last block returns the stats list alone, for the driver."""
        if self.delay:
            time.sleep(self.delay)
        s_prev, t_prev, *before = inputs
        s, t, stats = self.trainer.train_chunk(s_prev, t_prev)
        carried = [*(before[0] if before else []), stats]
        # RDT sends contiguous tensors only (a channels_last stack is not): a no-op for the default layout
        return carried if self.is_last else (s.contiguous(), t.contiguous(), carried)

    def peak_memory(self) -> int:
        """Bytes of GPU memory this block's process allocated at most (0 on the CPU)."""
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else 0

    @ray.method(num_returns=2)
    def warmup_chunk(self, t_prev: torch.Tensor):
        """K target-path-only steps; block 1 gets labels [K, B]; t_i goes on to the next block."""
        if self.delay:
            time.sleep(self.delay)
        t, stats = self.trainer.warmup_chunk(t_prev)
        return (None if self.is_last else t.cpu()), stats

    def end_warmup(self) -> None:
        self.trainer.end_warmup()

    def encode_targets(self, t_prev: torch.Tensor) -> torch.Tensor:
        return self.trainer.encode_targets(t_prev).cpu()

    def refresh_readout(self, t_prev: torch.Tensor) -> torch.Tensor:
        return self.trainer.refresh_readout(t_prev).cpu()

    @ray.method(num_returns=2)
    def infer(self, s_prev: torch.Tensor):
        """Inference: (s_i for the next block, b_i(s_i) for this block's exit, or its scores: read-out)."""
        s, bridged = self.trainer.infer(s_prev)
        return (None if self.is_last else s.cpu()), bridged.cpu()

    def apply_h_to_exits(self, carried: list, own: torch.Tensor) -> list:
        """h_i of every exit coming down from later blocks and of this block's own (b_i(s_i) or t_i):
        one step of each exit's decode chain, all exits at once (evaluation)."""
        return [o.cpu() for o in self.trainer.apply_h([*carried, own])]

    def apply_h(self, t: torch.Tensor) -> torch.Tensor:
        """h_i of one exit's value: a step of exit k's decode chain k, k-1, .., 1 (ALPipeline.stage)."""
        return self.trainer.apply_h([t])[0].cpu()

    def get_state(self) -> dict:
        return _to_cpu(self.trainer.state_dict())

    def set_state(self, state: dict) -> None:
        self.trainer.load_state_dict(state)

    def save(self, ckpt_uri: str) -> str:
        """Write this block's checkpoint file from this process (no trip through the driver)."""
        return write_block(ckpt_uri, self.trainer.index, _to_cpu(self.trainer.state_dict()))

    def load(self, run_uri: str, manifest: dict) -> None:
        self.trainer.load_state_dict(read_block(run_uri, manifest, self.trainer.index))


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
