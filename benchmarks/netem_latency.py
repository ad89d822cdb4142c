"""Pipeline throughput against added network latency between hosts.

    sudo python -m benchmarks.netem_latency                        # D = none 0 1 5 20 50 none, K = 1 16
    sudo python -m benchmarks.netem_latency --delays none 10 --chunks 4 --out benchmarks/results/netem.json

Needs root on Linux: it builds separate hosts with tests/hosts.py (network namespaces on a private
bridge): a head that runs the driver and two workers, one block on each (STRICT_SPREAD), so every
chunk crosses the network three times (driver -> block 1 -> block 2, stats back to the driver).
For each added one-way latency D between any two hosts (D/2 on each host's link, each way: `tc
netem` where the kernel has it, else a user-space delay line), one driver on the head times a
pipeline per chunk size K (built once, kept across all D) over `--batches` batches after a warm-up;
the table shows samples/s and the ratio to the mean of the rows without any delay element
(`none`) at the same K. At most `train.max_inflight_chunks` chunks are in flight, so the pipeline
hides a latency as long as that many chunks cover a round trip.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def driver_config(chunk: int, args) -> list[str]:
    side = int(args.pixels ** 0.5)
    return ["data.source=synthetic", f"data.synthetic_shape=[1,{side},{side}]", "data.synthetic_size=4096",
            f"data.batch_size={args.batch}", "model.name=mlp", f"model.d={args.width}", f"train.chunk_size={chunk}",
            "train.threads=1", f"train.max_inflight_chunks={args.inflight}", "ray.placement_strategy=STRICT_SPREAD",
            "ray.num_cpus_per_block=0.5", "checkpoint.enabled=false"]  # both pipelines fit at once


def drive(address: str, args) -> None:
    """On the head: one pipeline per chunk size, kept for the whole run; each `measure` line on
    stdin times every pipeline once (ray_al.analysis.bench's timer) and prints a JSON line per K."""
    from ray_al.analysis.bench import _timed
    from ray_al.config import load_config
    from ray_al.data.datasets import load_dataset
    from ray_al.pipeline.driver import ALPipeline

    pipes = {}
    for k in args.chunks:
        cfg = load_config(None, [*driver_config(k, args), f"ray.address={address}"])
        data = load_dataset(cfg.data)
        pipes[k] = (cfg, ALPipeline(cfg, data.input_shape, data.num_classes, total_steps=10 ** 7))
    print("ready", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() != "measure":
                break
            for k, (cfg, pipe) in pipes.items():
                batches = max(args.batches, 32 * k)  # at least 32 chunks
                rates = [_timed(pipe, data, cfg, k, batches, warmup=2 * k * args.inflight) for _ in range(args.repeat)]
                print(json.dumps({"k": k, "samples_per_s": statistics.median(rates), "runs": rates,
                                  "batches": batches, "blocks_on": [p["ip"] for p in pipe.placement]}))
            print("done", flush=True)
    finally:
        for _, pipe in pipes.values():
            pipe.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--delays", nargs="+", default=["none", "0", "1", "5", "20", "50", "none"],
                   help="added one-way latency in ms, in this order; `none`: no delay element at all, 0: the "
                        "element at 0 ms (its own cost); `none` twice shows the drift of a shared machine")
    p.add_argument("--chunks", type=int, nargs="+", default=[1, 16], help="chunk sizes K")
    p.add_argument("--batches", type=int, default=256, help="timed batches per run (at least 32 chunks)")
    p.add_argument("--repeat", type=int, default=3, help="timed runs per row; the table shows their median")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--pixels", type=int, default=64, help="input size (a square; 784 for MNIST's)")
    p.add_argument("--width", type=int, default=64, help="model.d (small: the network, not the arithmetic, "
                                                          "should bound the pipeline)")
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
    rows, how, load = [], "none", [os.getloadavg()[0]]
    try:
        inner = ["--chunks", *map(str, args.chunks), "--batches", str(args.batches), "--batch", str(args.batch),
                 "--pixels", str(args.pixels), "--width", str(args.width), "--inflight", str(args.inflight),
                 "--repeat", str(args.repeat)]
        driver = subprocess.Popen(hosts.head.cmd(sys.executable, "-m", "benchmarks.netem_latency", *inner,
                                                 "--driver", hosts.gcs_address),
                                  env=hosts.env, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if driver.stdout.readline().strip() != "ready":
            raise SystemExit(f"netem_latency: the driver on the head did not start (exit {driver.wait()})")
        for delay in args.delays:
            for host in (hosts.head, *hosts.worker_hosts) if delay != "none" else ():
                how = hosts.delay(host, float(delay) / 2)
            driver.stdin.write("measure\n")
            driver.stdin.flush()
            while (line := driver.stdout.readline().strip()) != "done":
                if not line:
                    raise SystemExit(f"netem_latency: the driver ended at D={delay} ms (exit {driver.wait()})")
                rows.append({"delay_ms": delay, **json.loads(line)})
                print(f"D={delay}: {rows[-1]}", flush=True)
            for host in (hosts.head, *hosts.worker_hosts):
                hosts.undelay(host)
        driver.stdin.close()
        driver.wait(timeout=120)
        load.append(os.getloadavg()[0])
    finally:
        hosts.close()
    base = {k: statistics.mean(r["samples_per_s"] for r in rows if r["delay_ms"] == "none" and r["k"] == k)
            for k in args.chunks if any(r["delay_ms"] == "none" and r["k"] == k for r in rows)}
    print(f"pipeline throughput against added one-way latency between hosts ({how}); 2 blocks on 2 worker "
          f"hosts, driver on the head; mlp d={args.width}, input {args.pixels}, batch {args.batch}, "
          f"median of {args.repeat} runs of max({args.batches}, 32 K) batches, at most {args.inflight} chunks in "
          f"flight; load average {load[0]:.1f} at the start, {load[-1]:.1f} at the end")
    print(f"{'added latency':>14} {'K':>4} {'samples/s':>10} {'vs none (mean of its rows)':>27}")
    for r in rows:
        ratio = f"{r['samples_per_s'] / base[r['k']]:.2f}" if r["k"] in base else "-"
        label = "none" if r["delay_ms"] == "none" else f"{float(r['delay_ms']):g} ms"
        print(f"{label:>14} {r['k']:>4} {r['samples_per_s']:>10,.0f} {ratio:>27}")
    if args.out:
        Path(args.out).write_text(json.dumps({"delay": how, "args": vars(args), "load_average": load, "rows": rows},
                                             indent=1))


if __name__ == "__main__":
    main()
