"""The target path alone (no data, no f): how fast warm-up separates the C class targets at each depth.

    python -m benchmarks.target_path_probe --classes 100 --d 256 --depth 4 --at 200,500,1000 \
        "" model.target_warmup_lr=1e-3 model.first_decoder_ce=true

Each positional argument is one variant: comma-separated dotted overrides ("" = the defaults). After
each step count in --at it prints, per depth, the fraction of classes whose target decodes back to its
class (chance 1/C) and the mean pairwise distance of the class targets.
"""
import argparse
import itertools
import time

import torch

from ray_al.config import apply_overrides, config_from_dict
from ray_al.core.target_path import warmup_chunks
from ray_al.trainers.al_local import ALLocal


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--at", default="100,200,500", help="report after these warm-up step counts")
    p.add_argument("--chunk", type=int, default=50)
    p.add_argument("variants", nargs="*", default=[""])
    args = p.parse_args()
    torch.set_num_threads(1)
    at = sorted(int(a) for a in args.at.split(","))
    for spec in args.variants:
        values = {"data": {"source": "synthetic", "synthetic_shape": [1, 2, 2], "synthetic_classes": args.classes},
                  "model": {"name": "mlp", "d": args.d, "depth": args.depth}, "train": {"threads": 1}}
        values = apply_overrides(values, [o for o in spec.split(",") if o] + [f"model.target_warmup_steps={at[-1]}"])
        cfg = config_from_dict(values)
        al = ALLocal(cfg, (1, 2, 2), args.classes, total_steps=1)
        chunks = itertools.chain.from_iterable(c.split(1) for c in warmup_chunks(cfg.model, args.classes, args.chunk))
        done, parts, begin = 0, [], time.perf_counter()
        for target in at:
            while done < target:
                t = next(chunks)  # one step at a time down the chain, warm-up's own Adam kept between calls
                for trainer in al.trainers:
                    t, _ = trainer.warmup_chunk(t)
                done += 1
            sep = al.target_separability()
            acc = " ".join(f"{sep[f'sep_acc_{k}']:.2f}" for k in range(1, args.depth + 1))
            dist = " ".join(f"{sep[f'sep_dist_{k}']:.2f}" for k in range(1, args.depth + 1))
            parts.append(f"{target}: decoded=[{acc}] dist=[{dist}]")
        print(f"C={args.classes} d={args.d} N={args.depth} {spec or 'defaults'} ({time.perf_counter() - begin:.1f}s): "
              + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
