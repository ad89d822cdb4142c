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


def load(name: str, kind: str | None = None) -> dict:
    """The file's one document, or its document of `kind` (the KubeRay files also hold a NetworkPolicy)."""
    docs = list(yaml.safe_load_all((CLUSTER / name).read_text()))
    if kind is None:
        assert len(docs) == 1, name
        return docs[0]
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


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
    doc = load("kuberay-raycluster.yaml", "RayCluster")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster" and doc["metadata"]["name"]
    check_ray_cluster_spec(doc["spec"])


def test_kuberay_rayjob_runs_a_real_config_from_the_images_working_dir():
    doc = load("kuberay-rayjob.yaml", "RayJob")
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


# -- secure by default -----------------------------------------------------------------------------
def pod_templates(spec: dict) -> list[dict]:
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


@pytest.mark.parametrize("name,kind", [("kuberay-raycluster.yaml", "RayCluster"), ("kuberay-rayjob.yaml", "RayJob")])
def test_kuberay_pods_need_the_token_run_unprivileged_and_only_their_peers_reach_them(name, kind):
    doc = load(name, kind)
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    assert spec["authOptions"] == {"mode": "token", "secretName": "ray-al-auth"}  # KubeRay sets RAY_AUTH_* from it
    for template in pod_templates(spec):
        pod = template["spec"]["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
        assert pod["seccompProfile"]["type"] == "RuntimeDefault"
        for c in template["spec"]["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
            assert not sc.get("privileged") and not c.get("env")  # no token written into the manifest
    policy = load(name, "NetworkPolicy")
    assert policy["apiVersion"] == "networking.k8s.io/v1" and policy["spec"]["policyTypes"] == ["Ingress"]
    selected = policy["spec"]["podSelector"]["matchLabels"]
    if kind == "RayCluster":
        assert selected == {"ray.io/cluster": doc["metadata"]["name"]}  # KubeRay's label on the cluster's pods
    else:  # a RayJob's cluster has a generated name: its pods carry our label instead
        for template in pod_templates(spec):
            assert selected.items() <= template["metadata"]["labels"].items()
    rules = policy["spec"]["ingress"]
    assert rules[0] == {"from": [{"podSelector": {"matchLabels": selected}}]}  # the cluster's own pods, any port
    for rule in rules[1:]:  # everyone else (operator, submitter): the dashboard port only
        assert rule["ports"] == [{"port": 8265, "protocol": "TCP"}]


def test_launcher_turns_token_auth_on_for_every_node_and_keeps_the_dashboard_on_loopback():
    cfg = load("ray-cluster.yaml")
    starts = [c for key in ("head_start_ray_commands", "worker_start_ray_commands") for c in cfg[key]
              if "ray start" in c]
    assert len(starts) == 2 and all(c.startswith("RAY_AUTH_MODE=token ") for c in starts)
    head = [c for c in starts if "--head" in c][0]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in (CLUSTER / "ray-cluster.yaml").read_text()
    token_path = re.search(r"RAY_AUTH_TOKEN_PATH=(\S+)", head).group(1)
    assert cfg["file_mounts"][token_path] == "~/.ray/auth_token"  # the token goes to every node
    for node_type in cfg["available_node_types"].values():  # not the launcher's group, which opens SSH to all
        assert node_type["node_config"]["SecurityGroupIds"]


def test_pyproject_requires_a_ray_with_token_auth():
    import tomllib
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (ray_dep,) = [d for d in deps if d.startswith("ray[")]
    low = tuple(int(x) for x in re.search(r">=([\d.]+)", ray_dep).group(1).split("."))
    assert low >= (2, 52)  # RAY_AUTH_MODE=token arrived in Ray 2.52


@pytest.mark.slow
def test_a_head_started_as_the_launcher_does_refuses_requests_without_the_token(tmp_path):
    """`ray start --head` with the launcher's own options and environment (ports, temp dir and the
    token file made local), no RAY_AUTH_MODE from outside: GET /api/jobs/ is 401 without the token,
    403 with a wrong one, 200 with the right one."""
    import secrets
    import shlex
    import urllib.error
    import urllib.request

    from tests.headnode import HeadNode, clean_env

    (line,) = [c for c in load("ray-cluster.yaml")["head_start_ray_commands"] if "ray start" in c]
    words = shlex.split(line)
    at = words.index("ray")
    yaml_env = dict(w.split("=", 1) for w in words[:at])
    args = [a for a in words[at + 2:] if a != "--head" and not a.startswith(("--port=", "--autoscaling-config="))]
    token = secrets.token_hex(32)
    (tmp_path / "auth_token").write_text(token)
    env = {k: v for k, v in clean_env().items() if not k.startswith("RAY_AUTH")}  # only what the YAML sets
    env.update(yaml_env, RAY_AUTH_TOKEN_PATH=str(tmp_path / "auth_token"))
    node = HeadNode(start_args=args, env=env)
    try:
        node.wait_ready()

        def status(headers: dict) -> int:
            request = urllib.request.Request(f"{node.address}/api/jobs/", headers=headers)
            try:
                with urllib.request.urlopen(request, timeout=30) as answer:
                    return answer.status
            except urllib.error.HTTPError as e:
                return e.code

        assert status({}) == 401
        assert status({"Authorization": "Bearer " + "0" * 64}) == 403
        assert status({"Authorization": f"Bearer {token}"}) == 200
    finally:
        node.stop()
