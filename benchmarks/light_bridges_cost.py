"""Light bridges, what a step costs: per block and for the BP twin, at CIFAR-10 shapes, batch 32.

    python -m benchmarks.light_bridges_cost [--models cnn,resnet20] [--bridges dense,pooled] [--repeats 5]
        [--out benchmarks/results/light_bridges-cost]

For every model (configs/paper/cifar10_<model>_al.yaml) and bridge variant: each block's bridge parameters,
FLOPs of one training step (forward + backward, torch.utils.flop_counter), one-thread step time (optimizer
included, the median of --repeats timings of --steps steps), the checkpoint size (bytes of the block's state
dict with both Adam states, as a block file holds), and the same for the BP twin with that head and with the
paper's dense head. The blocks and both twins are timed in turn, in one process, so that a load swing on a
shared machine falls on all of them. The hop is measured once: one chunk of the last block's input
(K=16 steps of (s_i, t_i)) passed from one Ray actor to another through the object store, per step.
Writes OUT.json (every figure) and OUT.txt (the table).
"""
from __future__ import annotations

import argparse
import io
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import REPO
from ray_al.config import load_config
from ray_al.core.block_trainer import BlockTrainer
from ray_al.core.weight_decay import adam, kernels
from ray_al.models import block_count, build_al_block, build_bp_twin
from ray_al.models.bridges import BRIDGES

MODELS = ("mlp", "cnn", "vgg", "resnet20")
SHAPE, CLASSES, BATCH = (3, 32, 32), 10, 32


def model_config(name: str, bridge: str):
    cfg = load_config(REPO / "configs" / "paper" / f"cifar10_{name}_al.yaml", [f"model.bridge={bridge}"])
    return cfg.model, cfg.optim


def state_bytes(state: dict) -> int:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.tell()


def interleaved_times(steps_fns: list, steps: int, repeats: int) -> list[float]:
    """Median seconds per step of each function, timed in turn `repeats` times (`steps` steps each, after one
    untimed step): on a shared machine a load swing then falls on every figure, not on one."""
    for step in steps_fns:
        step()
    runs: list[list[float]] = [[] for _ in steps_fns]
    for _ in range(repeats):
        for i, step in enumerate(steps_fns):
            begin = time.perf_counter()
            for _ in range(steps):
                step()
            runs[i].append((time.perf_counter() - begin) / steps)
    return [statistics.median(r) for r in runs]


def flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def block_steps(name: str, bridge: str) -> list[tuple[dict, object]]:
    """Per block: its figures (bridge parameters, step FLOPs, checkpoint bytes) and its step function; block i
    gets the features block i-1 really makes."""
    model, optim = model_config(name, bridge)
    s, t = torch.randn(BATCH, *SHAPE), torch.randint(0, CLASSES, (BATCH,))
    out = []
    for i in range(block_count(model, SHAPE, CLASSES)):
        trainer = BlockTrainer(build_al_block(model, SHAPE, CLASSES, i, seed=0), optim, 1000, i, model)
        step = (lambda tr, inputs: lambda: tr.step(*inputs))(trainer, (s, t))
        row = {"block": i + 1, "bridge_params": sum(p.numel() for p in trainer.block.b.parameters()),
               "f_params": sum(p.numel() for p in trainer.block.f.parameters()), "flops": flops(step),
               "checkpoint_bytes": state_bytes(trainer.state_dict())}
        s, t, _, _ = trainer.step(s, t)
        row["hop_elements"] = s.numel() + t.numel()
        out.append((row, step))
    return out


def bp_step(name: str, bridge: str) -> tuple[dict, object]:
    model, optim = model_config(name, bridge)
    net = build_bp_twin(model, SHAPE, CLASSES, seed=0)
    opt = adam(net.parameters(), optim.lr, optim.weight_decay, optim.l2_scope, kernels(net))
    x, y = torch.randn(BATCH, *SHAPE), torch.randint(0, CLASSES, (BATCH,))

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return {"flops": flops(step), "checkpoint_bytes": state_bytes({"net": net.state_dict(), "opt": opt.state_dict()}),
            "params": sum(p.numel() for p in net.parameters())}, step


def measure(name: str, bridge: str, steps: int, repeats: int) -> tuple[list[dict], dict, dict]:
    """(blocks, BP twin with this head, BP twin with the dense head), every step time from one interleaved timing."""
    blocks = block_steps(name, bridge)
    twins = [bp_step(name, "dense")] + ([] if bridge == "dense" else [bp_step(name, bridge)])
    parts = blocks + twins
    for (row, _), seconds in zip(parts, interleaved_times([fn for _, fn in parts], steps, repeats)):
        row["step_s"] = seconds
    bp_dense = twins[0][0]
    return [row for row, _ in blocks], twins[-1][0], bp_dense


def hop_seconds(sizes: set[int], chunk: int = 16, repeats: int = 10) -> dict[int, float]:
    """Seconds per step to pass one chunk of n float32 values per step from one Ray actor to another
    (the sender's put into the object store, the receiver's get), for every n in `sizes`."""
    import ray

    @ray.remote(num_cpus=0)
    class Sender:
        def __init__(self, n: int):
            self.x = torch.randn(n)

        def send(self):
            return self.x

    @ray.remote(num_cpus=0)
    class Receiver:
        def take(self, x):
            return x.numel()

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    try:
        receiver, empty, seconds = Receiver.remote(), Sender.remote(1), {}
        for n in sorted(sizes):
            sender = Sender.remote(chunk * n)
            trips = []
            for source in (sender, empty):  # the payload's trip less the calls alone
                ray.get(receiver.take.remote(source.send.remote()))
                begin = time.perf_counter()
                for _ in range(repeats):
                    ray.get(receiver.take.remote(source.send.remote()))
                trips.append((time.perf_counter() - begin) / repeats)
            seconds[n] = max(trips[0] - trips[1], 0.0) / chunk
            ray.kill(sender)
        return seconds
    finally:
        ray.shutdown()


def summarise(name: str, bridge: str, blocks: list[dict], bp: dict, bp_dense: dict, hop_s: float) -> dict:
    total, slowest = sum(b["step_s"] for b in blocks), max(b["step_s"] for b in blocks)
    return {"model": name, "bridge": bridge, "blocks": blocks, "bp": bp, "bp_dense": bp_dense, "hop_s": hop_s,
            "sum_over_bp": total / bp_dense["step_s"], "slowest_over_bp": slowest / bp_dense["step_s"],
            "critical_over_bp": (slowest + hop_s) / bp_dense["step_s"],
            "critical_block": 1 + max(range(len(blocks)), key=lambda i: blocks[i]["step_s"]),
            "flops_sum_over_bp": sum(b["flops"] for b in blocks) / bp_dense["flops"],
            "checkpoint_bytes": sum(b["checkpoint_bytes"] for b in blocks)}


def table(rows: list[dict]) -> str:
    lines = ["model    bridge   per block: bridge params (M) | GFLOP fwd+bwd | one-thread step (ms)          "
             "BP twin ms (dense head / this head)  sum/BP slowest/BP critical/BP (block)  checkpoint MB  "
             "GFLOP AL sum / BP twin (dense head)",
             ""]
    for r in rows:
        per = lambda key, scale, fmt: " / ".join(format(b[key] / scale, fmt) for b in r["blocks"])  # noqa: E731
        lines.append(f"{r['model']:<8} {r['bridge']:<8} {per('bridge_params', 1e6, '.2f')} | "
                     f"{per('flops', 1e9, '.2f')} | {per('step_s', 1e-3, '.0f')}   "
                     f"BP {r['bp_dense']['step_s'] * 1e3:.0f} / {r['bp']['step_s'] * 1e3:.0f}   "
                     f"{r['sum_over_bp']:.2f}  {r['slowest_over_bp']:.2f}  {r['critical_over_bp']:.2f} "
                     f"({r['critical_block']})  {r['checkpoint_bytes'] / 1e6:.0f} "
                     f"(BP {r['bp']['checkpoint_bytes'] / 1e6:.0f})  "
                     f"{sum(b['flops'] for b in r['blocks']) / 1e9:.1f} / {r['bp_dense']['flops'] / 1e9:.1f}")
    lines += ["", "ratios are to the BP twin with the paper's dense head, timed in the same process; critical = "
              "slowest block + one measured hop (the simulated N-device pipeline's step); checkpoint: every block's "
              "state dict with both Adam states (BP: the twin with this head)"]
    return "\n".join(lines)


def hop_line(hops: dict[int, float]) -> str:
    return "hop per step (chunks of 16 steps, actor to actor): " + ", ".join(
        f"{n:,} floats {s * 1e3:.2f} ms" for n, s in sorted(hops.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--bridges", default=",".join(BRIDGES))
    p.add_argument("--steps", type=int, default=3, help="steps per timing")
    p.add_argument("--repeats", type=int, default=5, help="timings per figure (the median is kept)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "light_bridges-cost"))
    p.add_argument("--table-from", help="print the table of an earlier OUT.json and stop")
    args = p.parse_args(argv)
    if args.table_from:
        saved = json.loads(Path(args.table_from).read_text())
        print(table(saved["rows"]) + "\n" + hop_line({int(n): s for n, s in saved["hop_s_by_floats"].items()}))
        return 0
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        for bridge in args.bridges.split(","):
            blocks, bp, bp_dense = measure(name, bridge, args.steps, args.repeats)
            rows.append(summarise(name, bridge, blocks, bp, bp_dense, 0.0))
            print(table(rows[-1:]).splitlines()[2], flush=True)
    hops = hop_seconds({b["hop_elements"] for r in rows for b in r["blocks"][:-1]})
    for r in rows:  # a model's largest hop, charged to its slowest block: the pipeline's step at worst
        hop_s = max(hops[b["hop_elements"]] for b in r["blocks"][:-1])
        r.update(summarise(r["model"], r["bridge"], r["blocks"], r["bp"], r["bp_dense"], hop_s))
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps({"threads": args.threads, "batch": BATCH, "rows": rows,
                                                    "hop_s_by_floats": hops}, indent=1) + "\n")
    text = table(rows) + "\n" + hop_line(hops) + "\n"
    out.with_suffix(".txt").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
