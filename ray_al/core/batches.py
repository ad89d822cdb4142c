"""Mini-batches and chunks of K mini-batches, shuffled and augmented from (seed, epoch).

The order depends only on (seed, epoch), so the Ray pipeline, the in-process reference and
a resumed run all see the same batches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F


@dataclass
class Chunk:
    first_step: int                 # global step of its first batch
    x: torch.Tensor | None          # [K, B, C, H, W], its own storage (safe to ship to Ray)
    y: torch.Tensor | None          # [K, B]
    ref: object = None              # instead of x and y: an ObjectRef of (x, y) (the Ray Data loader)


def step_batch_size(cfg) -> int:
    """Samples per optimizer step: data.batch_size on each of ray.replicas_per_block replicas (one batch
    of R x B split into R micro-batches in order), so the data order is that of al_local with batch R x B."""
    return cfg.data.batch_size * cfg.ray.replicas_per_block


def batches_per_epoch(n: int, batch_size: int) -> int:
    return n // batch_size  # the last partial batch is dropped: every step has batch_size samples


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's shuffle; every other draw of the epoch derives from it."""
    return seed * 100_003 + epoch


def batch_generator(seed: int, epoch: int, batch: int) -> torch.Generator:
    """The random stream of one batch's augmentation: it depends on (seed, epoch, batch index) only,
    never on how batches are grouped into chunks or which loader made them."""
    return torch.Generator().manual_seed(epoch_seed(seed, epoch) * 1_000_003 + batch)


def random_shift(x: torch.Tensor, pad: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by up to `pad` pixels (pad with zeros, random crop back)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w)[None])[:, None, None, :]
    idx = torch.arange(n)[:, None, None, None]
    return padded[idx, torch.arange(x.shape[1])[None, :, None, None], rows, cols]


def crop_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """The reference code's CIFAR augmentation: pad to 40, crop 32, flip, brightness, contrast."""
    x = random_shift(x, 4, g)
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    brightness = (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5) * 0.4   # +-0.2 (normalised units)
    contrast = 0.8 + torch.rand(x.shape[0], 1, 1, 1, generator=g) * 0.4       # x0.8 .. x1.2
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * contrast + mean + brightness


def augment(x: torch.Tensor, kind: str, g: torch.Generator) -> torch.Tensor:
    if kind == "none":
        return x
    if kind == "jitter":
        return random_shift(x, 2, g)
    if kind == "crop_flip":
        return crop_flip(x, g)
    raise ValueError(f"unknown augmentation '{kind}'")


def epoch_chunks(x: torch.Tensor, y: torch.Tensor, batch_size: int, chunk_size: int, epoch: int,
                 seed: int, aug: str = "none", start_batch: int = 0) -> Iterator[Chunk]:
    """Chunks of one epoch from batch `start_batch` on (resuming mid-epoch). The samples of
    every batch, and its augmentation, depend only on (seed, epoch, batch index), so the
    grouping into chunks never changes the arithmetic."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    n_batches = batches_per_epoch(len(x), batch_size)
    for first in range(start_batch, n_batches, chunk_size):
        xs, ys = [], []
        for b in range(first, min(first + chunk_size, n_batches)):
            idx = order[b * batch_size:(b + 1) * batch_size]
            # indexing copies: the chunk owns its storage
            xs.append(augment(x[idx], aug, batch_generator(seed, epoch, b)))
            ys.append(y[idx])
        yield Chunk(epoch * n_batches + first, torch.stack(xs), torch.stack(ys))


def eval_batches(x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Consecutive slices of at most batch_size, each a copy: a view would ship its whole storage to Ray."""
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size].clone()
