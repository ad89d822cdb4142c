"""The semantic reference: the same BlockTrainers run one after another in one process."""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from ray_al.batches import Chunk, eval_batches
from ray_al.block_trainer import BlockTrainer
from ray_al.blocks import decode_exits
from ray_al.checkpoint import read_block, write_block
from ray_al.config import Config
from ray_al.metrics import exit_accuracies
from ray_al.target_path import class_points, separability
from ray_al.models import block_count, build_al_block


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from ray_al.errors import ConfigError
        raise ConfigError("train.device=cuda but no CUDA device is available")
    return torch.device(name)


class LocalAL:
    def __init__(self, cfg: Config, input_shape: tuple, num_classes: int, total_steps: int):
        self.cfg = cfg
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        n = block_count(cfg.model, input_shape, num_classes)
        self.trainers = [BlockTrainer(build_al_block(cfg.model, input_shape, num_classes, i, cfg.train.seed,
                                                     self.device), cfg.optim, total_steps, i, cfg.model)
                         for i in range(n)]
        self.n = n

    @property
    def blocks(self):
        return [t.block for t in self.trainers]

    def train_chunk(self, chunk: Chunk) -> list[dict]:
        inputs, stats = (chunk.x, chunk.y), []
        for trainer in self.trainers:
            s, t, st = trainer.train_chunk(*inputs)
            inputs = (s, t)
            stats.append(st)
        return stats

    def train_epoch(self, chunks: Iterable[Chunk], on_chunk: Callable[[list[dict]], None]) -> None:
        for chunk in chunks:
            on_chunk(self.train_chunk(chunk))

    def warmup(self, chunks: Iterable[torch.Tensor], on_chunk: Callable[[list[dict]], None]) -> None:
        """Target-path warm-up: label chunks down the chain, each block passing t_i on."""
        for labels in chunks:
            t, stats = labels, []
            for trainer in self.trainers:
                t, st = trainer.warmup_chunk(t)
                stats.append(st)
            on_chunk(stats)
        for trainer in self.trainers:
            trainer.end_warmup()

    def target_separability(self) -> dict[str, float]:
        t, targets = class_points(self.trainers[0].block.num_classes), []
        for trainer in self.trainers:
            t = trainer.encode_targets(t)
            targets.append(t)
        with torch.no_grad():
            return separability(targets, decode_exits(self.blocks, targets))

    def predict_exits(self, x: torch.Tensor, batch_size: int):
        for xb in eval_batches(x, batch_size):
            s, bridged = xb, []
            for trainer in self.trainers:
                s, b = trainer.forward(s)
                bridged.append(b)
            with torch.no_grad():
                yield decode_exits(self.blocks, bridged)

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {**exit_accuracies(self.predict_exits(x, self.cfg.train.eval_batch_size), y),
                **self.target_separability()}

    def state_dicts(self) -> list[dict]:
        return [t.state_dict() for t in self.trainers]

    def load_state_dicts(self, states: list[dict]) -> None:
        for trainer, state in zip(self.trainers, states):
            trainer.load_state_dict(state)

    def save_blocks(self, ckpt_uri: str) -> list[str]:
        return [write_block(ckpt_uri, i, state) for i, state in enumerate(self.state_dicts())]

    def load_blocks(self, run_uri: str, manifest: dict) -> None:
        self.load_state_dicts([read_block(run_uri, manifest, i) for i in range(self.n)])

    def describe(self) -> list[str]:
        return [f"{self.n} blocks in this process on {self.device}, {torch.get_num_threads()} thread(s)"]

    def close(self) -> None:
        pass
