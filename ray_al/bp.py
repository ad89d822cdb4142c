"""The backprop twin: the AL prediction path as one ReLU network, softmax cross-entropy."""
from __future__ import annotations

from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ray_al.batches import Chunk, eval_batches
from ray_al.checkpoint import read_block, write_block
from ray_al.config import Config
from ray_al.errors import TrainingError
from ray_al.metrics import exit_accuracies
from ray_al.models import build_bp_twin
from ray_al.reference import resolve_device
from ray_al.schedule import lr_multiplier


class BPTrainer:
    def __init__(self, cfg: Config, input_shape: tuple, num_classes: int, total_steps: int):
        self.cfg, self.total_steps = cfg, total_steps
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        self.net = build_bp_twin(cfg.model, input_shape, num_classes, cfg.train.seed, self.device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
        self.step_count = 0

    def train_chunk(self, chunk: Chunk) -> list[dict]:
        self.net.train()
        xs, ys = chunk.x.to(self.device), chunk.y.to(self.device)
        losses = []
        for x, y in zip(xs, ys):
            for group in self.opt.param_groups:
                group["lr"] = self.cfg.optim.lr * lr_multiplier(self.cfg.optim.schedule, self.step_count,
                                                                self.total_steps)
            loss = F.cross_entropy(self.net(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step_count += 1
            losses.append(loss.detach())
        losses = torch.stack(losses).cpu()
        if not torch.isfinite(losses).all():
            raise TrainingError(f"BP twin: non-finite loss at step {self.step_count}")
        return [{"block": 1, "step": self.step_count, "steps": len(losses), "loss": float(losses.mean())}]

    def train_epoch(self, chunks: Iterable[Chunk], on_chunk: Callable[[list[dict]], None]) -> None:
        for chunk in chunks:
            on_chunk(self.train_chunk(chunk))

    @torch.no_grad()
    def predict_exits(self, x: torch.Tensor, batch_size: int):
        self.net.eval()
        for xb in eval_batches(x, batch_size):
            yield [self.net(xb.to(self.device))]

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        accs = exit_accuracies(self.predict_exits(x, self.cfg.train.eval_batch_size), y)
        accs.pop("exit_1", None)  # one network, one exit
        return accs

    def state_dicts(self) -> list[dict]:
        return [{"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step_count": self.step_count}]

    def load_state_dicts(self, states: list[dict]) -> None:
        self.net.load_state_dict(states[0]["net"])
        self.opt.load_state_dict(states[0]["opt"])
        self.step_count = int(states[0]["step_count"])

    def save_blocks(self, ckpt_uri: str) -> list[str]:
        return [write_block(ckpt_uri, 0, self.state_dicts()[0])]

    def load_blocks(self, run_uri: str, manifest: dict) -> None:
        self.load_state_dicts([read_block(run_uri, manifest, 0)])

    def describe(self) -> list[str]:
        return [f"BP twin in this process on {self.device}, {torch.get_num_threads()} thread(s)"]

    def close(self) -> None:
        pass
