"""What every trainer does for the run loop, written down: the Ray pipeline, the same blocks in one
process and the backprop twin all satisfy `Trainer`, so the loop never asks which one it holds.

A trainer owns its model and optimizers (in this process or in block actors). The loop hands it
chunks of K mini-batches and reads back per-block loss statistics; evaluation, checkpoint files
and the start-up description go through the same few calls.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, Protocol

import torch

from ray_al.checkpoint.files import read_block, write_block
from ray_al.config import Config
from ray_al.core.batches import Chunk
from ray_al.core.metrics import exit_accuracies
from ray_al.errors import ConfigError

OnChunk = Callable[[list[dict]], None]


class Trainer(Protocol):
    n: int
    """Blocks this trainer trains (the BP twin: 1); checkpoints hold one file per block."""

    def train_epoch(self, chunks: Iterable[Chunk], on_chunk: OnChunk) -> None:
        """Train on every chunk, in order. After each chunk, `on_chunk` gets one stats dict per block
        ({"block", "step", "steps", *_loss}), in chunk order. Raises TrainingError on a non-finite
        loss and BlockLost when a block's process or node died (the run may restart)."""

    def predict_exits(self, x: torch.Tensor, batch_size: int) -> Iterator[list[torch.Tensor]]:
        """Logits of every exit [exit 1, ..., exit N], batch by batch, in eval mode."""

    # AL trainers only (the run loop asks for them when model.target_warmup_steps > 0):
    # warmup(label_chunks, on_chunk) trains g and h alone down the chain (ray_al/core/target_path.py),
    # one segment per call, all segments on one warm-up Adam; end_warmup() drops that Adam after the last;
    # target_separability() -> {"sep_dist_k", "sep_acc_k"}, which evaluate() includes.

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Accuracy of every exit ("exit_k") and "test_acc" (the last exit: the paper's prediction)."""

    def state_dicts(self) -> list[dict]:
        """Every block's state (parameters, optimizers, step count), on the CPU."""

    def load_state_dicts(self, states: list[dict]) -> None:
        """Set every block's state from `state_dicts()` of a trainer of the same model."""

    def save_blocks(self, ckpt_uri: str) -> list[str]:
        """Write one file per block into the checkpoint folder `ckpt_uri`; returns their sha256 digests."""

    def load_blocks(self, run_uri: str, manifest: dict) -> None:
        """Load every block from the checkpoint `manifest` describes under `run_uri`."""

    def describe(self) -> list[str]:
        """Lines for the log: where each block runs (node, process, device, threads)."""

    def restart(self) -> None:
        """Replace whatever died (the pipeline: every block actor); weights come from load_blocks next."""

    def close(self) -> None:
        """Release processes and reservations; safe to call twice."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


class InProcessTrainer:
    """The part of `Trainer` that every trainer living in this process shares: one chunk at a time,
    checkpoint files written from here, nothing to restart or release. `model` is the network in
    this process (the AL blocks as a list, or the BP twin): the report reads its layers."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)

    def _train_chunk(self, chunk: Chunk) -> list[dict]:
        raise NotImplementedError

    def train_epoch(self, chunks: Iterable[Chunk], on_chunk: OnChunk) -> None:
        for chunk in chunks:
            on_chunk(self._train_chunk(chunk))

    def predict_exits(self, x: torch.Tensor, batch_size: int) -> Iterator[list[torch.Tensor]]:
        raise NotImplementedError

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return exit_accuracies(self.predict_exits(x, self.cfg.train.eval_batch_size), y)

    def state_dicts(self) -> list[dict]:
        raise NotImplementedError

    def load_state_dicts(self, states: list[dict]) -> None:
        raise NotImplementedError

    def save_blocks(self, ckpt_uri: str) -> list[str]:
        return [write_block(ckpt_uri, i, state) for i, state in enumerate(self.state_dicts())]

    def load_blocks(self, run_uri: str, manifest: dict) -> None:
        self.load_state_dicts([read_block(run_uri, manifest, i) for i in range(self.n)])

    def restart(self) -> None:
        pass  # nothing runs elsewhere

    def close(self) -> None:
        pass
