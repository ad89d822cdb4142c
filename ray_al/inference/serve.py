"""`ray-al serve RUN`: a run's model behind HTTP with Ray Serve, answering at the first confident exit.

Layout: one deployment per block (`stage-k`: f_k and exit k's head, see ray_al/inference/early_exit.py)
and an ingress deployment that decodes the image, preprocesses it as training did and walks the
stages through DeploymentHandles with the one early-exit loop (exit_loop.answer_async), stopping
at the first exit whose confidence reaches the threshold. This is the composition Ray Serve's
guide recommends for multi-model pipelines (deployments bound into one application, called
through handles, each scaled and given its resources on its own), and it fits early exit: an
input answered at block k never reaches the replicas of blocks k+1..N, so the later blocks, which
see only the hard inputs, can run fewer replicas or smaller GPU shares (`--replicas 2,1`,
`--gpus-per-block`). One deployment holding the whole model would save a hop per block but scale
all blocks as one.

    POST /?threshold=0.9&exit=auto   body: the image file (PNG, JPEG, ...)
    -> {"prediction": 7, "class": "7", "confidence": 0.97, "exit": 1}
    A body that is empty, not an image or of the wrong size gets a 400 with {"error": "..."}.

Every replica of stage k loads the weights of blocks 1..k of the run's newest checkpoint itself
(inference/weights.py: no optimizer): the run folder (or `checkpoint.uri`) must be readable from
the nodes that host the replicas.
"""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from ray import serve
from ray.serve.handle import DeploymentHandle

from ray_al.errors import ConfigError, RayALError


@serve.deployment
class StageDeployment:
    """Stage k: s_{k-1} -> (s_k, exit k's logits), on the GPU Ray gave this replica, else CPU."""

    def __init__(self, run_dir: str, k: int, overrides: list[str]):
        import ray
        import torch

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
        torch.set_num_threads(max(1, int(cpus)))
        self.device = torch.device("cuda:0" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu")
        self.stage = replica_stage(run_dir, k, overrides).to(self.device)

    def __call__(self, s, with_exit: bool = True):
        import torch

        with torch.no_grad():
            s = self.stage.f(s.to(self.device))
            logits = self.stage.head(s).cpu() if with_exit else None
        return s.cpu(), logits


def replica_stage(run_dir: str, k: int, overrides: list[str]):
    """Stage k from blocks 1..k of the run's newest checkpoint, weights only."""
    from ray_al.inference.early_exit import stages_of
    from ray_al.inference.weights import load_weights

    return stages_of(load_weights(run_dir, overrides, upto=k)[1])[-1]


class HandleStages:
    """`AsyncStages` over the stage deployments: stage k is one call to deployment stage-k."""

    def __init__(self, handles: list[DeploymentHandle]):
        self.handles, self.n = handles, len(handles)

    async def stage(self, k: int, s_prev, with_exit: bool = True):
        return await self.handles[k - 1].remote(s_prev, with_exit)


@serve.deployment
class ALIngress:
    """HTTP in: decode and preprocess the image, then stage 1, 2, .. until an exit is confident."""

    def __init__(self, stages: list[DeploymentHandle], preprocess: dict, threshold: float, measure: str):
        from ray_al.data.preprocess import Preprocess

        self.stages, self.pre = HandleStages(stages), Preprocess(**preprocess)
        self.threshold, self.measure = threshold, measure

    async def __call__(self, request):
        from starlette.responses import JSONResponse

        from ray_al.data.images import decode_image
        from ray_al.inference.early_exit import ExitPolicy, answer_async
        from ray_al.inference.inputs import image_args

        try:
            exit_q = request.query_params.get("exit", "auto")
            policy = ExitPolicy(None if exit_q == "auto" else _int(exit_q, "exit"),
                                _float(request.query_params.get("threshold", self.threshold)),
                                request.query_params.get("confidence", self.measure)).check(self.stages.n)
            x = self.pre(decode_image(await request.body(), *image_args(self.pre), name="request body")[None])
        except RayALError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        ans = await answer_async(self.stages, x, policy)
        p = int(ans.prediction[0])
        return {"prediction": p, "class": self.pre.label(p), "confidence": round(float(ans.confidence[0]), 6),
                "exit": int(ans.exit[0])}


def _float(v) -> float:
    try:
        return float(v)
    except ValueError:
        raise ConfigError(f"threshold '{v}' is not a number") from None


def _int(v: str, what: str) -> int:
    if not v.isdigit():
        raise ConfigError(f"{what} must be a block number or auto, got '{v}'")
    return int(v)


def build_app(run_dir: str | Path, threshold: float = 0.9, measure: str = "maxprob", replicas: list[int] | None = None,
              cpus_per_block: float = 0.5, gpus_per_block: float = 0.0, overrides: list[str] | None = None):
    """The Serve application: ingress -> stage-1 .. stage-N."""
    from ray_al.inference.early_exit import ExitPolicy
    from ray_al.inference.prediction import load

    run_dir = str(Path(run_dir).resolve())
    run = load(run_dir, overrides)  # checks the run and its preprocessing here, before any replica starts
    ExitPolicy(None, threshold, measure).check(run.n)
    replicas = replicas or [1] * run.n
    if len(replicas) == 1:
        replicas = replicas * run.n
    if len(replicas) != run.n or min(replicas) < 1:
        raise ConfigError(f"--replicas needs one positive count, or one per block ({run.n}), got {replicas}")
    stages = [StageDeployment.options(name=f"stage-{k}", num_replicas=replicas[k - 1],
                                      ray_actor_options={"num_cpus": cpus_per_block, "num_gpus": gpus_per_block})
              .bind(run_dir, k, list(overrides or [])) for k in range(1, run.n + 1)]
    return ALIngress.options(ray_actor_options={"num_cpus": 0.1}).bind(stages, asdict(run.preprocess), threshold,
                                                                       measure)


def check_port(host: str, port: int) -> None:
    """A port Serve's proxy can take, checked before Ray starts (it failed after 35 s of start-up)."""
    import socket

    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port} is not a port (1..65535)")
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.bind((host, port))
    except OSError as e:
        raise ConfigError(f"--port {port} on {host} cannot be used ({e.strerror or e}): "
                          f"choose another --port") from None


def check_resources(cpus_per_block: float, gpus_per_block: float) -> None:
    """A replica's share against the cluster joined, before deploying: a replica no node can hold waits
    forever (the autoscaler only warns)."""
    import ray

    if cpus_per_block < 0 or gpus_per_block < 0:
        raise ConfigError("--cpus-per-block and --gpus-per-block must not be negative")
    have = ray.cluster_resources()
    for option, want, kind in (("--gpus-per-block", gpus_per_block, "GPU"),
                               ("--cpus-per-block", cpus_per_block, "CPU")):
        if want > have.get(kind, 0):
            held = f"has no {kind}" if not have.get(kind) else f"has {have[kind]:g} {kind} in all"
            raise ConfigError(f"{option} {want:g} but the Ray cluster {held}")


def start(run_dir, host: str = "127.0.0.1", port: int = 8000, name: str = "ray_al", route_prefix: str = "/",
          ready_timeout_s: float = 300, **app_options) -> str:
    """Start Serve's HTTP proxy on host:port (in the Ray this process is connected to) and deploy
    the run; returns the URL once every deployment runs, or removes the application and says why."""
    check_resources(app_options.get("cpus_per_block", 0.5), app_options.get("gpus_per_block", 0.0))
    app = build_app(run_dir, **app_options)
    serve.start(http_options={"host": host, "port": port})
    # serve.run joins the Serve just started and logs that "new http_options will not be applied": it
    # has none to apply, ours are in place
    serve_logger = logging.getLogger("ray.serve")
    serve_logger.addFilter(_not_applied)
    try:  # not Serve's own wait: it has no bound, and a replica that finds no resources waits forever
        serve.run_many([serve.RunTarget(app, name=name, route_prefix=route_prefix)],
                       wait_for_ingress_deployment_creation=False, wait_for_applications_running=False)
    finally:
        serve_logger.removeFilter(_not_applied)
    wait_until_running(name, ready_timeout_s)
    return f"http://{host}:{port}{route_prefix}"


def wait_until_running(name: str, timeout_s: float) -> None:
    import time

    from ray.serve.schema import ApplicationStatus

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(name)
        status = app.status if app else ApplicationStatus.NOT_STARTED
        if status == ApplicationStatus.RUNNING:
            return
        failed = status == ApplicationStatus.DEPLOY_FAILED
        if failed or time.monotonic() > deadline:
            waiting = ", ".join(f"{d} {s.status.value.lower()}" for d, s in (app.deployments if app else {}).items()
                                if s.status.value != "HEALTHY")
            why = (str(app.message or "").strip().splitlines() or ["?"])[0] if failed else \
                f"not running after {timeout_s:g}s (--ready-timeout): {waiting or status.value.lower()}"
            serve.delete(name, _blocking=False)
            raise ConfigError(f"Serve deployment of the run failed: {why}")
        time.sleep(0.5)


def _not_applied(record: logging.LogRecord) -> bool:
    return "will not be applied" not in record.getMessage()


def serve_forever(run_dir, **options) -> None:
    """The CLI: start, print the URL, serve until Ctrl-C (or SIGTERM), then remove the application."""
    import time

    url = start(run_dir, **options)
    print(f"serving {run_dir} at {url} (POST an image; ?threshold=0.9&exit=auto); Ctrl-C stops", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
