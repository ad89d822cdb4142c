"""`train.trainer=al_local`: the pipeline's BlockTrainers run one after another in this process.

The same class the block actors drive, called in the same order, so this is the semantic
reference the Ray pipeline is checked against bitwise (tests/test_pipeline.py).
"""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from ray_al.config import Config
from ray_al.core.batches import Chunk, eval_batches
from ray_al.core.block_trainer import BlockTrainer
from ray_al.core.blocks import ALBlock, decode_to_logits, set_readouts
from ray_al.core.step_options import StepOptions
from ray_al.core.target_path import class_points, separability
from ray_al.models import block_count, build_al_block
from ray_al.trainers.base import InProcessTrainer, OnChunk


class ALLocal(InProcessTrainer):
    def __init__(self, cfg: Config, input_shape: tuple, num_classes: int, total_steps: int):
        super().__init__(cfg)
        self.n = block_count(cfg.model, input_shape, num_classes)
        options = StepOptions.from_config(cfg.train)
        self.trainers = [BlockTrainer(build_al_block(cfg.model, input_shape, num_classes, i, cfg.train.seed,
                                                     self.device), cfg.optim, total_steps, i, cfg.model, options)
                         for i in range(self.n)]

    @property
    def blocks(self) -> list[ALBlock]:
        return [t.block for t in self.trainers]

    @property
    def model(self) -> list[ALBlock]:
        return self.blocks

    def _train_chunk(self, chunk: Chunk) -> list[dict]:
        inputs, stats = (chunk.x, chunk.y), []
        for trainer in self.trainers:
            s, t, st = trainer.train_chunk(*inputs)
            inputs = (s, t)
            stats.append(st)
        return stats

    def warmup(self, chunks: Iterable[torch.Tensor], on_chunk: OnChunk) -> None:
        """Target-path warm-up: label chunks down the chain, each block passing t_i on."""
        for labels in chunks:
            t, stats = labels, []
            for trainer in self.trainers:
                t, st = trainer.warmup_chunk(t)
                stats.append(st)
            on_chunk(stats)

    def end_warmup(self) -> None:
        for trainer in self.trainers:
            trainer.end_warmup()

    def target_separability(self) -> dict[str, float]:
        t, targets = class_points(self.blocks[0].num_classes), []
        for trainer in self.trainers:
            t = trainer.encode_targets(t)
            targets.append(t)
        with torch.no_grad():
            return separability(targets, decode_to_logits(self.blocks, targets))

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        return {**super().evaluate(x, y), **self.target_separability()}

    def predict_exits(self, x: torch.Tensor, batch_size: int) -> Iterator[list[torch.Tensor]]:
        set_readouts(self.blocks)
        for xb in eval_batches(x, batch_size):
            s, bridged = xb, []
            for trainer in self.trainers:
                s, b = trainer.infer(s)
                bridged.append(b)
            with torch.no_grad():
                yield bridged if self.blocks[0].reads_out else decode_to_logits(self.blocks, bridged)

    def state_dicts(self) -> list[dict]:
        return [t.state_dict() for t in self.trainers]

    def load_state_dicts(self, states: list[dict]) -> None:
        for trainer, state in zip(self.trainers, states):
            trainer.load_state_dict(state)

    def describe(self) -> list[str]:
        options = self.trainers[0].options.describe()
        return [f"{self.n} blocks in this process on {self.device}, {torch.get_num_threads()} thread(s)"
                + (f", {options}" if options else "")]
