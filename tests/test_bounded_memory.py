"""With block 1 made slow (the input chunks wait for it), chunks in flight and object-store
use stay bounded."""
import os
import re

import pytest
import ray
from ray._private.internal_api import memory_summary

from ray_al.run.loop import train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def slow_cluster():
    os.environ["RAY_AL_SLOW_BLOCK"] = "1:0.05"  # read by the block actors the cluster starts
    # the raylet deletes unreferenced objects in batches, every second by default: measure liveness
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING",
             _system_config={"free_objects_period_milliseconds": 20})
    yield
    ray.shutdown()
    del os.environ["RAY_AL_SLOW_BLOCK"]


def _peak_store_mib(tmp_path, max_inflight):
    cfg = tiny_config(tmp_path, data={"source": "synthetic", "synthetic_shape": [1, 64, 64], "synthetic_size": 4096},
                      train={"epochs": 2, "chunk_size": 4, "max_inflight_chunks": max_inflight, "log_every_s": 1e-9})
    gcs = ray.get_runtime_context().gcs_address
    samples = []

    def log(line):  # progress lines arrive as chunks complete: sample the object store then
        if "samples/s" in line:
            text = memory_summary(address=gcs, stats_only=True)
            samples.append(int(re.search(r"Plasma memory usage (\d+) MiB", text).group(1)))

    result = train(cfg, log=log, keep_trainer=True)
    peak_inflight = result.trainer.peak_inflight
    result.trainer.close()
    return max(samples), peak_inflight


def test_inflight_chunks_and_object_store_stay_bounded(slow_cluster, tmp_path):
    bounded, inflight = _peak_store_mib(tmp_path / "a", max_inflight=2)
    unbounded, inflight_unbounded = _peak_store_mib(tmp_path / "b", max_inflight=1000)
    print(f"\npeak object store: bound 2 -> {bounded} MiB ({inflight} chunks in flight); "
          f"no bound -> {unbounded} MiB ({inflight_unbounded} chunks); one chunk is 2 MiB")
    assert inflight == 2 and inflight_unbounded == 32  # 128 batches / 4 per chunk, all submitted at once
    assert bounded <= 12  # 2 chunks in flight of 2 MiB each, plus slack
    assert unbounded >= 40  # the measurement sees growth when there is no bound
