"""cluster/: the launcher YAML, the KubeRay manifests and the Dockerfile hold the fields that
Ray and KubeRay require, agree with each other, and name configs and modules that exist."""
import importlib.util
import re
from pathlib import Path

import pytest
import ray
import yaml

from ray_al.config import load_config
from tests.helpers import REPO

CLUSTER = REPO / "cluster"


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def entrypoint_targets(command: str) -> tuple[str, list[Path]]:
    """`python -m MODULE ... CONFIG.yaml ...` -> the module and the config files it names."""
    module = re.search(r"python -m ([\w.]+)", command)
    assert module, command
    return module.group(1), [REPO / p for p in re.findall(r"(configs/[\w/.-]+\.ya?ml)", command)]


def check_entrypoint(command: str) -> None:
    module, configs = entrypoint_targets(command)
    assert importlib.util.find_spec(module) is not None, module
    assert configs, f"no config named in {command!r}"
    for path in configs:
        cfg = load_config(path)  # parses and validates
        assert cfg.train.trainer == "al"


def test_launcher_yaml_passes_rays_own_schema_and_has_a_gpu_worker():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = load("ray-cluster.yaml")
    validate_config(prepare_config(cfg))  # what `ray up` does first: defaults, then the JSON schema
    types = cfg["available_node_types"]
    gpu_types = [t for t in types.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] >= t.get("min_workers", 0) for t in gpu_types)
    assert cfg["docker"]["image"].startswith(f"rayproject/ray:{ray.__version__}")
    # setup installs the repository that file_mounts copies to the nodes
    (dest, src), = [(d, s) for d, s in cfg["file_mounts"].items() if s == "."]
    assert (REPO / src / "pyproject.toml").is_file()
    assert any("pip install" in c and dest in c for c in cfg["setup_commands"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
    assert any("ray start --address" in c for c in cfg["worker_start_ray_commands"])
    for line in (CLUSTER / "ray-cluster.yaml").read_text().splitlines():
        if "python -m" in line:
            check_entrypoint(line)


def check_ray_cluster_spec(spec: dict) -> None:
    assert spec["rayVersion"] == ray.__version__
    head = spec["headGroupSpec"]
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())  # KubeRay: map[string]string
    assert head["template"]["spec"]["containers"][0]["image"]
    groups = spec["workerGroupSpecs"]
    assert groups
    gpu_groups = 0
    for g in groups:
        assert g["groupName"] and g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert isinstance(g["rayStartParams"], dict)
        assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        for c in g["template"]["spec"]["containers"]:
            assert c["name"] and c["image"]
            gpu_groups += int(c["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
        mounts = {m["name"] for c in g["template"]["spec"]["containers"] for m in c.get("volumeMounts", [])}
        assert mounts <= {v["name"] for v in g["template"]["spec"].get("volumes", [])}
    assert gpu_groups >= 1


def test_kuberay_raycluster():
    doc = load("kuberay-raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    check_ray_cluster_spec(doc["spec"])


def test_kuberay_rayjob_runs_a_real_config_from_the_images_working_dir():
    doc = load("kuberay-rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob" and doc["metadata"]["name"]
    spec = doc["spec"]
    check_ray_cluster_spec(spec["rayClusterSpec"])
    check_entrypoint(spec["entrypoint"])
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    workdir = re.search(r"^WORKDIR (\S+)", (CLUSTER / "Dockerfile").read_text(), re.M).group(1)
    assert runtime_env["working_dir"] == workdir
    assert isinstance(spec["shutdownAfterJobFinishes"], bool)


def test_dockerfile_installs_the_repository_on_the_matching_ray_image():
    text = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-\S*gpu", text, re.M)
    for src in re.findall(r"^COPY (?:--\S+ )*(\S+) ", text, re.M):
        assert (REPO / src).exists(), src
    assert "pip install" in text
    images = {image for name in ("kuberay-raycluster.yaml", "kuberay-rayjob.yaml")
              for image in re.findall(r"^\s*image: (\S+)", (CLUSTER / name).read_text(), re.M)}
    assert len(images) == 1  # every pod runs the one image that Dockerfile builds


@pytest.mark.parametrize("name", ["README.md", "ray-cluster.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"])
def test_every_config_and_file_named_exists(name):
    text = (CLUSTER / name).read_text()
    for path in re.findall(r"((?:configs|cluster|benchmarks|ray_al)/[\w/.-]+\.(?:ya?ml|py|md))", text):
        assert (REPO / path).is_file(), f"{name} names {path}"
    for command in re.findall(r"python -m ray_al (?:train|tune) [^\n`\\]+", text):
        for path in entrypoint_targets(command)[1]:
            assert path.is_file(), f"{name}: {command}"
