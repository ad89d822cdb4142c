"""Pipeline throughput against added network latency between hosts.

    sudo python benchmarks/netem_latency.py                        # D = 0 1 5 20 ms, K = 1 16
    sudo python benchmarks/netem_latency.py --delays 0 10 --chunks 4 --out benchmarks/results/netem.json

Needs root on Linux: it builds separate hosts with tests/hosts.py (network namespaces on a private
bridge): a head that runs the driver and two workers, one block on each (STRICT_SPREAD), so every
chunk crosses the network three times (driver -> block 1 -> block 2, stats back to the driver).
For each added one-way latency D between any two hosts (D/2 on each host's link, each way: `tc
netem` where the kernel has it, else a user-space delay line), one driver on the head times the
pipeline over `--batches` batches at each chunk size K (after a warm-up) and the table shows
samples/s and the ratio to D = 0 at the same K. At most `train.max_inflight_chunks` chunks are in
flight, so the pipeline hides a latency as long as that many chunks cover a round trip.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def driver_config(chunk: int, args) -> list[str]:
    side = int(args.pixels ** 0.5)
    return ["data.source=synthetic", f"data.synthetic_shape=[1,{side},{side}]", "data.synthetic_size=4096",
            f"data.batch_size={args.batch}", "model.name=mlp", f"model.d={args.width}", f"train.chunk_size={chunk}",
            "train.threads=1", f"train.max_inflight_chunks={args.inflight}", "ray.placement_strategy=STRICT_SPREAD",
            "ray.num_cpus_per_block=1", "checkpoint.enabled=false"]


def drive(address: str, args) -> None:
    """On the head: one pipeline per chunk size, timed by ray_al.bench; a JSON line per K."""
    from ray_al.bench import _timed
    from ray_al.config import load_config
    from ray_al.data import load_dataset
    from ray_al.trainers.pipeline import ALPipeline

    for k in args.chunks:
        cfg = load_config(None, [*driver_config(k, args), f"ray.address={address}"])
        data = load_dataset(cfg.data)
        pipe = ALPipeline(cfg, data.input_shape, data.num_classes, total_steps=10 ** 6)
        try:
            ips = [p["ip"] for p in pipe.placement]
            rate = _timed(pipe, data, cfg, k, args.batches, warmup=2 * k * args.inflight)
        finally:
            pipe.close()
        print(json.dumps({"k": k, "samples_per_s": rate, "blocks_on": ips}), flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delays", type=float, nargs="+", default=[0, 1, 5, 20], help="added one-way latency, ms")
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 16], help="chunk sizes K")
    p.add_argument("--batches", type=int, default=256, help="timed batches per run")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pixels", type=int, default=784, help="input size (a square), as MNIST")
    p.add_argument("--width", type=int, default=256, help="model.d")
    p.add_argument("--inflight", type=int, default=4, help="train.max_inflight_chunks")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--driver", metavar="GCS_ADDRESS", help=argparse.SUPPRESS)  # the inner run, on the head
    args = p.parse_args()
    if args.driver:
        return drive(args.driver, args)

    from tests.hosts import Hosts, unavailable
    if reason := unavailable():
        raise SystemExit(f"netem_latency: {reason}")
    hosts = Hosts(workers=2)
    rows, how = [], "none"
    try:
        inner = [a for a in sys.argv[1:] if not a.startswith("--out")]
        for delay in args.delays:
            for host in (hosts.head, *hosts.worker_hosts):
                how = hosts.delay(host, delay / 2) if delay else how
            started = time.time()
            driver = hosts.head.cmd(sys.executable, str(Path(__file__).resolve()), *inner,
                                    "--driver", hosts.gcs_address)
            out = subprocess.run(driver, env=hosts.env, cwd=REPO, capture_output=True, text=True, timeout=1800,
                                 check=False)
            if out.returncode != 0:
                raise SystemExit(f"netem_latency: driver failed at D={delay} ms: {out.stderr[-2000:]}")
            for line in out.stdout.splitlines():
                if line.startswith("{"):
                    rows.append({"delay_ms": delay, **json.loads(line), "wall_s": time.time() - started})
            for host in (hosts.head, *hosts.worker_hosts):
                hosts.delay(host, 0)
    finally:
        hosts.close()
    base = {r["k"]: r["samples_per_s"] for r in rows if r["delay_ms"] == 0}
    print(f"pipeline throughput against added one-way latency between hosts ({how}); 2 blocks on 2 worker "
          f"hosts, driver on the head; mlp d={args.width}, input {args.pixels}, batch {args.batch}, "
          f"{args.batches} batches per run, at most {args.inflight} chunks in flight")
    print(f"{'added latency':>14} {'K':>4} {'samples/s':>10} {'vs 0 ms':>8}")
    for r in rows:
        ratio = f"{r['samples_per_s'] / base[r['k']]:.2f}" if r["k"] in base else "-"
        print(f"{r['delay_ms']:>11.0f} ms {r['k']:>4} {r['samples_per_s']:>10,.0f} {ratio:>8}")
    if args.out:
        Path(args.out).write_text(json.dumps({"delay": how, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
