"""`ray-al bench` (ray_al/analysis/bench.py): rates count the batches really trained, across epochs when one epoch is
shorter than asked; the ideal comes from each block's compute time inside the timed pipeline run, so the
pipeline never beats it (by construction), and those compute times agree with one process's; the ratio line
quotes the fastest K."""
import pytest
import torch

from ray_al.analysis.bench import throughput
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
