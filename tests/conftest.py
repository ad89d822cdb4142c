"""Fixtures shared by the tests (helpers: tests/helpers.py): one Ray cluster per module."""
import pytest


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()

