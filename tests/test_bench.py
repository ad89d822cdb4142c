"""`ray-al bench` (ray_al/analysis/bench.py): rates count the batches really trained, across epochs when one epoch is
shorter than asked; the ideal comes from each block's compute time inside the timed pipeline run, so the
pipeline never beats it (by construction), and those compute times agree with one process's; the ratio line
quotes the fastest K; with block replicas the Ray rows are the replicated pipeline, every row batches of R x B."""
import json
import re

import pytest
import torch

from ray_al.analysis.bench import throughput
from ray_al.cli import main
from ray_al.data.datasets import load_dataset
from tests.helpers import tiny_config


def test_bench_counts_real_batches_and_ideal_bounds_the_pipeline(ray_cluster, tmp_path):
    torch.set_num_threads(1)
    cfg = tiny_config(tmp_path)
    data = load_dataset(cfg.data)
    per_epoch = -(-len(data.train_x) // cfg.data.batch_size)
    lines = []
    results = throughput(cfg, data, batches=per_epoch + 20, chunk_sizes=(1, 4), cores=1, log=lines.append)
    assert per_epoch == 45  # digits: the 65 asked for span two epochs (once, only 45 were trained but 400 counted)
    best = max((1, 4), key=lambda k: results[f"ray_k{k}"])
    assert results["best_k"] == best and f"ray K={best} (best) / sequential AL" in lines[-1]
    assert 0 < results["ratio_ray_vs_ideal"] <= 1.0, results  # stage times measured inside that very run
    assert len(results["stage_ms"]) == 2 and all(ms > 0 for ms in results["stage_ms"])
    # what can fail: the ideal is batch / the slowest stage, and the stages' compute adds up to about what one
    # process takes for both blocks (same arithmetic, one thread each; a unit slip or idle time counted as
    # compute would leave the band)
    assert results["ideal_pipeline"] == pytest.approx(cfg.data.batch_size * 1000 / max(results["stage_ms"]))
    sequential_ms = 1000 * cfg.data.batch_size / results["sequential_al"]
    assert 0.1 * sequential_ms < sum(results["stage_ms"]) < 10 * sequential_ms, (results["stage_ms"], sequential_ms)
    assert min(results["ray_k1_batches"], results["ray_k4_batches"]) >= per_epoch + 20


def test_bench_with_block_replicas_times_the_replicated_pipeline_and_says_r(ray_cluster, tmp_path, capsys):
    """`ray-al bench ray.replicas_per_block=2`: the Ray row runs 2 blocks x 2 replicas (4 actors placed), each
    step R x B samples; the printed lines and the JSON say R, the actors and the batch."""
    out = tmp_path / "bench.json"
    assert main(["bench", "data.source=digits", "model.d=32", "data.batch_size=16", "train.threads=1",
                 "ray.replicas_per_block=2", "ray.num_cpus_per_block=0.5", "--batches", "12", "--chunk-sizes", "4",
                 "--cores", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "batch 2 x 16 (ray.replicas_per_block x data.batch_size)" in printed, printed
    assert re.search(r"ray K=4: +[\d,]+ samples/s \(4 actors = 2 blocks x 2 replicas x 1 thread; 12 batches of 32\)",
                     printed), printed
    results = json.loads(out.read_text())
    assert (results["blocks"], results["replicas_per_block"], results["actors"], results["batch"]) == (2, 2, 4, 32)
    assert results["ray_k4_batches"] == 12 and len(results["stage_ms"]) == 2
    assert 0 < results["ratio_ray_vs_ideal"] <= 1.0, results  # the ideal: R x B / the slowest replica's stage
