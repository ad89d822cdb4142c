"""`train.trainer=bp`: the backprop twin, the AL prediction path as one network with cross-entropy."""
from __future__ import annotations

import time
from typing import Iterator

import torch
import torch.nn.functional as F

from ray_al.config import Config
from ray_al.core.batches import Chunk, eval_batches
from ray_al.core.schedule import lr_multiplier
from ray_al.core.step_options import StepOptions
from ray_al.core.weight_decay import adam, kernels
from ray_al.errors import TrainingError
from ray_al.models import BPTwin, build_bp_twin
from ray_al.trainers.base import InProcessTrainer


class BPTrainer(InProcessTrainer):
    n = 1  # one network: one checkpoint file

    def __init__(self, cfg: Config, input_shape: tuple, num_classes: int, total_steps: int):
        super().__init__(cfg)
        self.total_steps = total_steps
        self.net: BPTwin = build_bp_twin(cfg.model, input_shape, num_classes, cfg.train.seed, self.device)
        self.options = StepOptions.from_config(cfg.train)  # the AL blocks' step options, for a fair comparison
        self.options.check(self.device)
        self.options.prepare(self.net)
        self.opt = adam(self.net.parameters(), cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.l2_scope,
                        kernels(self.net), self.options.adam_impl())
        self.loss = self.options.compiled(self._loss)
        self.step_count = 0

    def _loss(self, x: torch.Tensor, y: torch.Tensor):
        return (F.cross_entropy(self.net(x), y),)

    @property
    def model(self) -> BPTwin:
        return self.net

    def _train_chunk(self, chunk: Chunk) -> list[dict]:
        start = time.perf_counter()
        self.net.train()
        xs, ys = self.options.to_device(chunk.x, self.device), self.options.to_device(chunk.y, self.device)
        losses = []
        for x, y in zip(xs, ys):
            for group in self.opt.param_groups:
                group["lr"] = self.cfg.optim.lr * lr_multiplier(self.cfg.optim.schedule, self.step_count,
                                                                self.total_steps)
            with self.options.autocast(self.device):
                (loss,) = self.loss(self.options.batch_layout(x), y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.step_count += 1
            losses.append(loss.detach())
        losses = torch.stack(losses).cpu()
        if not torch.isfinite(losses).all():
            raise TrainingError(f"BP twin: non-finite loss at step {self.step_count}")
        return [{"block": 1, "step": self.step_count, "steps": len(losses), "loss": float(losses.mean()),
                 "compute_s": time.perf_counter() - start}]

    @torch.no_grad()
    def predict_exits(self, x: torch.Tensor, batch_size: int) -> Iterator[list[torch.Tensor]]:
        self.net.eval()
        for xb in eval_batches(x, batch_size):
            yield [self.net(xb.to(self.device))]

    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        accs = super().evaluate(x, y)
        accs.pop("exit_1", None)  # one network, one exit
        return accs

    def state_dicts(self) -> list[dict]:
        return [{"net": self.net.state_dict(), "opt": self.opt.state_dict(), "step_count": self.step_count}]

    def load_state_dicts(self, states: list[dict]) -> None:
        self.net.load_state_dict(states[0]["net"])
        self.opt.load_state_dict(states[0]["opt"])
        self.step_count = int(states[0]["step_count"])

    def describe(self) -> list[str]:
        net = "BP twin" if self.cfg.model.bp_baseline == "twin" else "the authors' BP network"
        options = self.options.describe()
        return [f"{net} in this process on {self.device}, {torch.get_num_threads()} thread(s)"
                + (f", {options}" if options else "")]
