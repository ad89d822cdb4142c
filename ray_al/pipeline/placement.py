"""Where the block actors live: one bundle per block, in our own placement group or a Tune trial's.

Outside Tune, the run reserves one placement group with one bundle per block (strategy from
`ray.placement_strategy`) and removes it at the end. Inside a Tune trial, the trial already
reserved its bundles through `tune.with_resources(..., PlacementGroupFactory([driver, block x N]))`:
the blocks take the trial's last N bundles and their exact resources, so a sweep never asks the
cluster for more than the trials hold (a second placement group would wait for CPUs the trials own).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import ray
from ray.util.placement_group import (
    PlacementGroup,
    get_current_placement_group,
    placement_group,
    remove_placement_group,
)
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ray_al.config import RayConfig
from ray_al.errors import ConfigError


def cpus_per_block(ray_cfg: RayConfig, n_blocks: int, reserved: float = 0.0) -> float:
    """ray.num_cpus_per_block, else an equal share of the cluster's CPUs after `reserved` (CPUs held for
    something else, e.g. the Ray Data reader), at most 1 (the one default, for runs and Tune trials alike)."""
    if ray_cfg.num_cpus_per_block is not None:
        return ray_cfg.num_cpus_per_block
    total = ray.cluster_resources().get("CPU", 1.0) - reserved
    return max(0.01, min(1.0, int(100 * total / n_blocks) / 100))


def wait_for_group(pg: PlacementGroup, what: str, timeout: float, log: Callable[[str], None] = print,
                   every: float | None = None) -> None:
    """Wait until `pg` is placed, saying every `every` seconds what it waits for and what the cluster has;
    after `timeout` seconds remove it and stop with one line."""
    every = every or min(10.0, max(1.0, timeout / 4))
    ready_ref, start = pg.ready(), time.monotonic()
    while True:
        waited = time.monotonic() - start
        ready, _ = ray.wait([ready_ref], timeout=max(0.0, min(every, timeout - waited)))
        if ready:
            return
        waited = time.monotonic() - start
        have = f"available {_cpus_gpus(ray.available_resources())} of {_cpus_gpus(ray.cluster_resources())}"
        if waited >= timeout:
            remove_placement_group(pg)
            raise ConfigError(f"cannot place {what} within {timeout:g}s (ray.placement_timeout_s): cluster has {have}")
        log(f"waiting for resources: {what}; cluster has {have}; {waited:.0f}s of {timeout:g}s")


def _cpus_gpus(resources: dict) -> str:
    return f"{resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def block_bundle(ray_cfg: RayConfig, n_blocks: int, reserved: float = 0.0) -> dict[str, float]:
    """The resources of one block's bundle as configured: CPU, GPU when asked for, and custom
    resources (`ray.block_resources`) that steer blocks to the nodes that offer them."""
    gpus = ray_cfg.num_gpus_per_block
    if gpus and ray.cluster_resources().get("GPU", 0) == 0:
        raise ConfigError(f"ray.num_gpus_per_block={gpus} but the Ray cluster has no GPU")
    return {"CPU": cpus_per_block(ray_cfg, n_blocks, reserved), **({"GPU": gpus} if gpus else {}),
            **ray_cfg.block_resources}


@dataclass
class Placement:
    pg: PlacementGroup
    offset: int                   # bundle index of block 1
    bundles: list[dict]           # the resources of each block's bundle
    owned: bool                   # we created the group, so we remove it

    def options(self, i: int) -> dict:
        """Actor options that pin block i to its bundle and take exactly that bundle's resources."""
        b = self.bundles[i]
        custom = {k: v for k, v in b.items() if k not in ("CPU", "GPU", "memory") and not k.startswith("bundle_group")}
        return {"num_cpus": b.get("CPU", 0), "num_gpus": b.get("GPU", 0), "resources": custom,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=self.offset + i)}

    def release(self) -> None:
        if self.owned:
            remove_placement_group(self.pg)


def reserve(ray_cfg: RayConfig, n_blocks: int, pg: PlacementGroup | None = None, replicas: int = 1) -> Placement:
    """Use `pg` (or the placement group this code runs in, e.g. a Tune trial's), else make one; one bundle
    per actor: `replicas` actors per block (ray.replicas_per_block), replica r of block i at bundle i * R + r."""
    actors, what = n_blocks * replicas, f"{n_blocks} blocks" + (f" x {replicas} replicas" if replicas > 1 else "")
    pg = pg or get_current_placement_group()
    if pg is not None:
        specs = pg.bundle_specs
        if len(specs) < actors:
            raise ConfigError(f"the current placement group has {len(specs)} bundle(s) but the model has "
                              f"{what}: reserve one bundle per block" + (" replica" if replicas > 1 else ""))
        offset = len(specs) - actors
        return Placement(pg, offset, [dict(s) for s in specs[offset:]], owned=False)
    bundle = block_bundle(ray_cfg, actors)
    pg = placement_group([dict(bundle) for _ in range(actors)], strategy=ray_cfg.placement_strategy)
    wait_for_group(pg, f"{what} of {bundle} ({ray_cfg.placement_strategy})", ray_cfg.placement_timeout_s)
    return Placement(pg, 0, [dict(bundle) for _ in range(actors)], owned=True)
