"""`ray-al tune SWEEP.yaml`: a Ray Tune sweep over dotted config keys, each trial a full AL run.

A sweep file (a path, or a shipped one by name: `sweeps/mnist_mlp`):

    base: ../mnist_mlp.yaml          # optional; relative to the sweep file
    config:                          # optional; nested keys laid over the base
      train: {epochs: 3}
      data: {val_fraction: 0.1}      # the validation split the default metric needs
    param_space:                     # dotted config keys -> a value or one search form
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.d: {grid_search: [256, 1024]}
      train.seed: {choice: [0, 1]}
    tune:
      num_samples: 1                 # samples per grid point
      metric: val_acc                # reported per epoch (default val_acc, mode max)
      scheduler: asha                # none | asha | hyperband | pbt (epochs are the time unit)
      search_alg: basic              # basic (Ray's variant generator) | optuna | hyperopt (extras)
      max_failures: 1                # a failed trial restarts from its last checkpoint this often
      driver_cpus: 1                 # the trial's own process; blocks are sized as `train` sizes them
    output: runs/sweeps/mnist_mlp    # results.csv/json, sweep.yaml, tune/ (Tune's state), trials/

Each trial reserves its driver and its block actors as one placement group,
`tune.with_resources(trainable, tune.PlacementGroupFactory([driver, block x N]))`; the
pipeline finds that group and puts block i in bundle i + 1 (ray_al/pipeline/placement.py). Blocks take
`ray.num_cpus_per_block` or, unset, an equal share of the cluster's CPUs less the driver's, as
`ray-al train` does; a sweep whose trial cannot fit the cluster is refused before it starts.
Every epoch a trial reports its record and its own checkpoint folder as a `tune.Checkpoint`, so
`best_result.checkpoint` holds the blocks, Tune restarts a failed trial from it, and PBT and
HyperBand can pause, copy and resume trials. `ray-al tune --resume OUTPUT` continues an
interrupted sweep (Tuner.restore) from the `sweep.yaml` saved beside it.
Relative paths in the config (data.path, data.cache_dir, run_dir) are taken from the working
directory, as in `ray-al train`, and made absolute before trials start (trials run elsewhere).
The training data is loaded once here and shared through the object store, unless the sweep
varies keys that change the data itself.
"""
from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path
from typing import Any, Callable

import yaml

from ray_al.checkpoint.policy import PINNED_BY_CHECKPOINT
from ray_al.config import (
    Config,
    apply_overrides,
    config_from_dict,
    find_config,
    merge_values,
    parse_override,
    read_config_file,
    read_yaml,
    set_dotted,
)
from ray_al.errors import ConfigError, TrainingError
from ray_al.run.loggers import console
from ray_al.run.outputs import is_run_folder, refuse_inside_a_run
from ray_al.run.storage import RunStorage, read_records

TRIAL_ERRORS_LOG = "trial-errors.log"  # in the sweep's output folder
SEARCH_FORMS = {"grid_search", "choice", "uniform", "loguniform", "randint", "quniform", "qloguniform"}
SWEEP_KEYS = {"base", "config", "param_space", "tune", "output", "name"}
SCHEDULERS = ("none", "asha", "hyperband", "pbt")
SEARCH_ALGS = ("basic", "optuna", "hyperopt")
TUNE_DEFAULTS = {"num_samples": 1, "metric": "val_acc", "mode": "max", "scheduler": "none", "search_alg": "basic",
                 "grace_period": 1, "reduction_factor": 2,                  # asha, hyperband
                 "perturbation_interval": 1, "quantile_fraction": 0.25, "synch": False,  # pbt
                 "max_concurrent_trials": None, "max_failures": 1, "driver_cpus": 1.0, "seed": None, "verbose": 1}
# keys that change only how the loaded data is batched: trials may share one loaded copy
DATA_KEYS_SAFE_TO_SHARE = {"data.batch_size", "data.augment"}
Log = Callable[[str], None]


# -- the sweep file ------------------------------------------------------------------------
def _search_form(key: str, spec: Any):
    """YAML {form: args} -> a ray.tune search object; anything else is a fixed value."""
    from ray import tune

    if not (isinstance(spec, dict) and len(spec) == 1 and next(iter(spec)) in SEARCH_FORMS):
        if isinstance(spec, dict):
            raise ConfigError(f"param_space.{key}: expected a value or one of {', '.join(sorted(SEARCH_FORMS))}, "
                              f"got {spec!r}")
        return spec, [spec]
    form, args = next(iter(spec.items()))
    if form in ("grid_search", "choice"):
        if not isinstance(args, list) or not args:
            raise ConfigError(f"param_space.{key}.{form}: expected a non-empty list, got {args!r}")
        return getattr(tune, form)(args), list(args)
    if not isinstance(args, list) or len(args) not in (2, 3):
        raise ConfigError(f"param_space.{key}.{form}: expected [low, high] (or [low, high, q]), got {args!r}")
    try:
        nums = [float(a) for a in args]  # YAML reads 1e-4 without a dot as a string
    except (TypeError, ValueError):
        raise ConfigError(f"param_space.{key}.{form}: expected numbers, got {args!r}") from None
    if form == "randint":
        nums = [int(a) for a in nums]
    if not nums[0] < nums[1] or (form in ("loguniform", "qloguniform") and nums[0] <= 0):
        raise ConfigError(f"param_space.{key}.{form}: need 0 < low < high for log scales and low < high, got {args!r}")
    probe = [nums[0], nums[1] - 1] if form == "randint" else nums[:2]
    return getattr(tune, form)(*nums), probe


def _apply_sweep_overrides(raw: dict, overrides: list[str]) -> list[str]:
    """Every key of the sweep file is overridable on the command line like the base config's: `tune.num_samples=1`,
    `param_space.optim.lr=[1e-3]` (the whole key after param_space. is one config key), `output=DIR`, `name=N`.
    Sets those in `raw` and returns the rest (the base config's overrides)."""
    rest = []
    for text in overrides:
        key, value = parse_override(text)
        if key.startswith("param_space."):
            space = raw.setdefault("param_space", {}) or {}
            space[key.removeprefix("param_space.")] = value
            raw["param_space"] = space
        elif key.startswith("tune."):
            set_dotted(raw, key, value, what=f"override '{text}'")
        elif key in ("output", "name"):
            raw[key] = value
        else:
            rest.append(text)
    return rest


class Sweep:
    def __init__(self, path: str | Path, overrides: list[str] | None = None):
        path = find_config(path)
        raw = read_yaml(path)
        overrides = _apply_sweep_overrides(raw, overrides or [])
        unknown = set(raw) - SWEEP_KEYS
        if unknown:
            raise ConfigError(f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))} "
                              f"(known: {', '.join(sorted(SWEEP_KEYS))})")
        base = {}
        if raw.get("base"):
            base = read_config_file((path.parent / raw["base"]).resolve())
        merge_values(base, raw.get("config") or {})
        apply_overrides(base, overrides or [])
        self.name = raw.get("name") or path.stem
        self.base = _absolute_paths(base)
        self.tune = raw.get("tune") or {}
        bad = set(self.tune) - set(TUNE_DEFAULTS)
        if bad:
            raise ConfigError(f"{path}: unknown tune key(s) {', '.join(sorted(bad))} "
                              f"(known: {', '.join(sorted(TUNE_DEFAULTS))})")
        self.opts = {**TUNE_DEFAULTS, **self.tune}
        space = raw.get("param_space") or {}
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{path}: param_space must map dotted config keys to values or search forms")
        self.raw_space = space
        self.param_space, self.probes = {}, {}
        for key, spec in space.items():
            self.param_space[key], self.probes[key] = _search_form(key, spec)
        self.base_cfg = config_from_dict(copy.deepcopy(self.base))
        for key, values in self.probes.items():  # every listed value and both ends of a range must make a valid config
            for value in values:
                trial_config(self.base, {key: value})
        self._check_options()
        output = raw.get("output") or f"runs/sweeps/{self.name}"
        self.output = Path(output).expanduser().resolve()
        self.shares_data = not any(k.startswith("data.") and k not in DATA_KEYS_SAFE_TO_SHARE for k in space)

    @classmethod
    def saved(cls, folder: str | Path, overrides: list[str] | None = None) -> "Sweep":
        """The sweep that ran into `folder` (its output), as saved there when it started."""
        path = Path(folder).expanduser() / "sweep.yaml"
        if not path.is_file():
            raise ConfigError(f"{folder} is not a sweep's output folder (no sweep.yaml)")
        sweep = cls(path, overrides)
        sweep.output = path.parent.resolve()  # where it is now, should it have moved
        return sweep

    def check_output_free(self) -> None:
        """A new sweep writes results.csv/json, sweep.yaml and tune/ into its output folder: refuse one that
        holds anything (an earlier sweep's results, a run folder); --resume is the way back into it."""
        out = self.output
        if out.exists() and not out.is_dir():
            raise ConfigError(f"output: {out} is a file, not a folder")
        held = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
        if not held:
            refuse_inside_a_run(out, "output:")  # a new folder under a run folder or a checkpoint
            return
        if is_run_folder(out) and not (out / "sweep.yaml").is_file():
            raise ConfigError(f"output: {out} is a run folder (config.yaml); a sweep needs a folder of its own")
        resume = f", or continue that sweep with ray-al tune --resume {out}" if (out / "sweep.yaml").is_file() else ""
        raise ConfigError(f"output: {out} already holds {', '.join(held[:4])}{', ...' if len(held) > 4 else ''}: "
                          f"choose another output{resume}")

    def save(self) -> None:
        """sweep.yaml in the output folder: a sweep file complete in itself, for --resume."""
        self.output.mkdir(parents=True, exist_ok=True)
        spec = {"name": self.name, "config": self.base, "param_space": self.raw_space, "tune": self.tune,
                "output": str(self.output)}
        (self.output / "sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def _check_options(self) -> None:
        o, cfg = self.opts, self.base_cfg
        if o["scheduler"] not in SCHEDULERS:
            raise ConfigError(f"tune.scheduler: '{o['scheduler']}' is not one of {', '.join(SCHEDULERS)}")
        if o["search_alg"] not in SEARCH_ALGS:
            raise ConfigError(f"tune.search_alg: '{o['search_alg']}' is not one of {', '.join(SEARCH_ALGS)}")
        if o["scheduler"] in ("asha", "hyperband") and int(o["grace_period"]) > max(cfg.train.epochs, 1):
            raise ConfigError(f"tune.grace_period={o['grace_period']} exceeds train.epochs={cfg.train.epochs}: "
                              f"{o['scheduler']} could never stop a trial")
        if o["scheduler"] in ("hyperband", "pbt") and not cfg.checkpoint.enabled:
            raise ConfigError(f"tune.scheduler={o['scheduler']} pauses and restores trials from their checkpoints: "
                              "set checkpoint.enabled=true")
        if o["scheduler"] == "pbt":
            if o["search_alg"] != "basic":
                raise ConfigError("tune.scheduler=pbt chooses its own values: use tune.search_alg=basic")
            if not self.mutations():
                raise ConfigError("tune.scheduler=pbt needs a param_space key it may change inside a running trial "
                                  "(e.g. optim.lr as choice or a range; model.*, data.*, train.seed cannot change)")
        grids = [k for k, spec in self.raw_space.items() if isinstance(spec, dict) and "grid_search" in spec]
        if o["search_alg"] != "basic" and grids:
            raise ConfigError(f"tune.search_alg={o['search_alg']} cannot search a grid_search ({', '.join(grids)}): "
                              "use choice")
        if o["metric"].startswith("val_") and not self.base_cfg.data.val_fraction:
            raise ConfigError(f"tune.metric={o['metric']} needs a validation split: set data.val_fraction "
                              "(e.g. 0.1) in the sweep's config, or tune.metric=test_acc")
        if int(o["max_failures"]) < 0 or float(o["driver_cpus"]) < 0:
            raise ConfigError("tune.max_failures and tune.driver_cpus must not be negative")

    def mutations(self) -> dict:
        """What PBT may resample inside a trial: searched keys that a checkpoint does not fix."""
        return {k: v for k, v in self.param_space.items()
                if not isinstance(self.raw_space[k], dict) or "grid_search" not in self.raw_space[k]
                if hasattr(v, "sample") and not k.startswith(PINNED_BY_CHECKPOINT)}


def _absolute_paths(values: dict) -> dict:
    data = values.get("data") or {}
    for key in ("path", "cache_dir"):
        if data.get(key) and "://" not in str(data[key]):
            data[key] = str(Path(data[key]).expanduser().resolve())
    values["run_dir"] = str(Path(values.get("run_dir") or "runs").expanduser().resolve())
    return values


def trial_config(base: dict, params: dict) -> Config:
    values = copy.deepcopy(base)
    for key, value in params.items():
        set_dotted(values, key, value)
    try:
        return config_from_dict(values)
    except ConfigError as e:
        raise ConfigError(f"sweep value {params}: {e}") from None


# -- trials --------------------------------------------------------------------------------
def _trainable(params: dict, base: dict, run_dir: str, data=None):
    """One trial: a whole `run.train`, reporting each epoch's record and checkpoint to Tune, and
    continuing from the checkpoint Tune hands it (its own after a failure, another trial's in PBT)."""
    from ray import tune

    from ray_al.checkpoint import files
    from ray_al.run.loggers import numeric
    from ray_al.run.loop import train

    cfg = trial_config(base, params)
    cfg.run_dir, cfg.name = run_dir, tune.get_context().get_trial_name()
    folder = Path(run_dir) / cfg.name
    resume = restore_trial_folder(tune.get_checkpoint(), cfg, folder)
    uri = RunStorage(folder, cfg.checkpoint.uri).checkpoint_uri

    def report(record: dict) -> None:
        checkpoint = None
        if cfg.checkpoint.enabled:  # the epoch-end checkpoint the run has just written
            fs, path = files.filesystem(files.step_dir(uri, record["step"]))
            checkpoint = tune.Checkpoint(path, filesystem=fs)
        tune.report(numeric(record), checkpoint=checkpoint)

    train(cfg, on_epoch=report, data=data, resume_dir=resume)


def restore_trial_folder(checkpoint, cfg: Config, folder: Path) -> Path | None:
    """Make `folder` a run folder that resumes from Tune's `checkpoint` (a copy of one of the run's
    checkpoint folders), the one the trial must continue from: its checkpoints/ is replaced by it.
    Without a checkpoint the trial starts (again) from scratch in an empty folder."""
    import pyarrow.fs as pafs

    from ray_al.checkpoint import files

    if checkpoint is None:
        shutil.rmtree(folder, ignore_errors=True)  # an earlier attempt that saved nothing Tune kept
        return None
    storage = RunStorage(folder, cfg.checkpoint.uri)
    with checkpoint.as_directory() as local:
        manifest = json.loads((Path(local) / files.MANIFEST).read_text())
        step = manifest["step"]
        root = files.location(storage.checkpoint_uri).join("checkpoints")
        root.fs.delete_dir_contents(root.path, missing_dir_ok=True)
        target = files.step_dir(storage.checkpoint_uri, step)
        target.fs.create_dir(target.path, recursive=True)
        pafs.copy_files(local, target.path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=target.fs)
    folder.mkdir(parents=True, exist_ok=True)
    storage.save_config(cfg)  # PBT may have changed the config
    if manifest.get("run_id") not in storage.owners():  # PBT's exploit: another trial's checkpoint, on record
        storage.adopt(manifest.get("run_id"), step, "Ray Tune handed this trial another trial's checkpoint (PBT)")
    return folder


def trial_resources(cfg: Config, n_blocks: int, driver_cpus: float):
    """One bundle for the trial's driver, one per block, sized as `train` sizes them (block_bundle),
    the driver's CPUs set aside."""
    from ray import tune

    from ray_al.pipeline.placement import block_bundle

    bundles = [{"CPU": driver_cpus}]
    if cfg.train.trainer == "al":  # in-process trainers start no actors
        actors = n_blocks * cfg.ray.replicas_per_block  # a bundle per block replica (pipeline/placement.py)
        bundles += [block_bundle(cfg.ray, actors, reserved=driver_cpus) for _ in range(actors)]
    return tune.PlacementGroupFactory(bundles, strategy=cfg.ray.placement_strategy)


def check_fits(sweep: Sweep, resources: Callable[[dict], Any]) -> None:
    """Refuse at once a sweep whose trials cannot fit the cluster (Tune would leave them PENDING)."""
    import ray

    cluster = ray.cluster_resources()
    largest_node = max((n["Resources"].get("CPU", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    driver = float(sweep.opts["driver_cpus"])
    probes = [{}] + [{k: v} for k, values in sweep.probes.items() for v in values]
    for params in probes:
        cfg = trial_config(sweep.base, params)
        bundles = resources(params).bundles
        blocks = bundles[1:]
        r = cfg.ray.replicas_per_block  # a bundle per actor: N blocks x R replicas
        actors = f"{len(blocks)} blocks" if r == 1 else f"{len(blocks) // r} x {r} actors (blocks x replicas)"
        for kind, key in (("CPU", "ray.num_cpus_per_block"), ("GPU", "ray.num_gpus_per_block")):
            need, have = sum(b.get(kind, 0) for b in bundles), cluster.get(kind, 0)
            if need > have + 1e-9:
                per_block = blocks[0].get(kind, 0) if blocks else 0
                where = f" with {params}" if params else ""
                raise ConfigError(
                    f"a trial{where} needs {need:g} {kind}s (tune.driver_cpus={driver:g} + {actors} x "
                    f"{key}={per_block:g}) but the Ray cluster has {have:g}: lower {key} or tune.driver_cpus"
                    if kind == "CPU" else
                    f"a trial{where} needs {need:g} GPUs ({actors} x {key}={per_block:g}) but the Ray "
                    f"cluster has {have:g}: lower {key}")
        if cfg.ray.placement_strategy == "STRICT_PACK" and sum(b.get("CPU", 0) for b in bundles) > largest_node:
            raise ConfigError(f"ray.placement_strategy=STRICT_PACK puts a trial's {len(bundles)} bundles on one "
                              f"node, but the largest node has {largest_node:g} CPUs")


def _searcher(sweep: Sweep):
    o = sweep.opts
    if o["search_alg"] == "basic":
        return None
    package = o["search_alg"]
    try:
        __import__(package)
    except ImportError:
        raise ConfigError(f"tune.search_alg={package} needs the {package} package: pip install 'ray_al[{package}]'") \
            from None
    if package == "optuna":
        from ray.tune.search.optuna import OptunaSearch
        return OptunaSearch(seed=o["seed"])
    from ray.tune.search.hyperopt import HyperOptSearch
    return HyperOptSearch(random_state_seed=o["seed"])


def _scheduler(sweep: Sweep):
    o, epochs = sweep.opts, max(sweep.base_cfg.train.epochs, 1)
    if o["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler
        return ASHAScheduler(time_attr="epoch", max_t=epochs, grace_period=int(o["grace_period"]),
                             reduction_factor=o["reduction_factor"])
    if o["scheduler"] == "hyperband":
        from ray.tune.schedulers import HyperBandScheduler
        return HyperBandScheduler(time_attr="epoch", max_t=epochs, reduction_factor=o["reduction_factor"])
    if o["scheduler"] == "pbt":
        from ray.tune.schedulers import PopulationBasedTraining
        return PopulationBasedTraining(time_attr="epoch", perturbation_interval=int(o["perturbation_interval"]),
                                       hyperparam_mutations=sweep.mutations(),
                                       quantile_fraction=float(o["quantile_fraction"]), synch=bool(o["synch"]))
    return None


def _prepare(sweep: Sweep, log: Log):
    """Join Ray, load the data once, check that a trial fits; returns the trainable with its resources."""
    from ray import tune

    from ray_al.data.datasets import load_dataset
    from ray_al.models import block_count
    from ray_al.pipeline.session import connect

    connect(sweep.base_cfg.ray)
    data = load_dataset(sweep.base_cfg.data)
    log(f"sweep {sweep.name}: data {data.name} train {tuple(data.train_x.shape)}; output {sweep.output}")
    shape, classes = data.input_shape, data.num_classes

    def resources(params: dict):
        cfg = trial_config(sweep.base, params)
        return trial_resources(cfg, block_count(cfg.model, shape, classes), float(sweep.opts["driver_cpus"]))

    check_fits(sweep, resources)
    shared = {"data": data} if sweep.shares_data else {}
    trainable = tune.with_parameters(_trainable, base=sweep.base, run_dir=str(sweep.output / "trials"), **shared)
    return tune.with_resources(trainable, resources)


@contextlib.contextmanager
def trial_errors_to(path: Path):
    """Tune logs every failed trial's whole traceback on the terminal (its controller's logger): into the
    sweep folder's log instead, where they stay; the terminal gets Tune's one line per failed trial and ours."""
    import logging

    logger = logging.getLogger("ray.tune.execution.tune_controller")
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.propagate = propagate
        logger.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def _no_restore_hint():
    """On Ctrl-C Tune logs how to resume with Tuner.restore(...); ray-al says `ray-al tune --resume DIR`."""
    import logging

    def drop(record) -> bool:
        return "Resume experiment with" not in record.getMessage()

    logger = logging.getLogger("ray.tune.tune")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _fit(tuner, sweep: Sweep, log: Log):
    """tuner.fit() with SIGTERM (`ray job stop`) taken as Ctrl-C, which Tune ends cleanly, saving its state."""
    from ray_al.pipeline.session import sigterm_sends_sigint

    with sigterm_sends_sigint(), trial_errors_to(sweep.output / TRIAL_ERRORS_LOG), _no_restore_hint():
        results = tuner.fit()
    from ray.tune import ExperimentAnalysis

    # each trial's state as Tune saved it last (on Ctrl-C: before it stopped the running ones)
    trials = ExperimentAnalysis(results.experiment_path).trials
    status = {t.trial_id: t.status for t in trials}
    folders = {t.trial_id: sweep.output / "trials" / str(t) for t in trials}  # str(trial): its trial name
    table = results_table(results, list(sweep.param_space), sweep.opts["metric"], sweep.opts["mode"], status, folders)
    save_table(table, sweep.output)
    for line in table.to_string(index=False).splitlines():
        log(line)
    log(f"results: {sweep.output / 'results.csv'}, {sweep.output / 'results.json'}")
    if any(s not in ("TERMINATED", "ERROR") for s in status.values()):  # Tune stopped on Ctrl-C (or SIGTERM)
        raise KeyboardInterrupt(f"resume with: ray-al tune --resume {sweep.output}")
    if results.num_errors:
        first = str(results.errors[0]).strip().splitlines()[-1]
        raise TrainingError(f"{results.num_errors} of {len(results)} trial(s) failed; first: {first} (tracebacks: "
                            f"{sweep.output / TRIAL_ERRORS_LOG})")
    metric = sweep.opts["metric"]
    try:
        best = results.get_best_result()
    except RuntimeError:  # no trial reported the metric (Tune says which)
        return results
    if best.checkpoint:
        log(f"best trial {best.metrics.get('trial_id')}: {metric}={best.metrics.get(metric)}, "
            f"checkpoint {best.checkpoint.path}")
    return results


def _run_config(sweep: Sweep):
    from ray import tune

    o = sweep.opts
    return tune.RunConfig(
        name="tune", storage_path=str(sweep.output), verbose=o["verbose"],
        failure_config=tune.FailureConfig(max_failures=int(o["max_failures"])),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=sweep.base_cfg.checkpoint.keep,
                                                checkpoint_score_attribute=o["metric"],
                                                checkpoint_score_order=o["mode"]))


def run_sweep(sweep: Sweep, log: Log = console):
    """Run every trial; print and save the results table; return the ResultGrid."""
    from ray import tune

    o = sweep.opts
    sweep.check_output_free()
    trainable = _prepare(sweep, log)
    sweep.save()
    tuner = tune.Tuner(
        trainable, param_space=sweep.param_space,
        tune_config=tune.TuneConfig(metric=o["metric"], mode=o["mode"], num_samples=int(o["num_samples"]),
                                    scheduler=_scheduler(sweep), search_alg=_searcher(sweep),
                                    max_concurrent_trials=o["max_concurrent_trials"],
                                    trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
        run_config=_run_config(sweep))
    return _fit(tuner, sweep, log)


def _trial_name(trial) -> str:
    """`trial-00003` (its place in the sweep) instead of Tune's `_trainable_9a2f1_00003`."""
    return f"trial-{trial.trial_id.rsplit('_', 1)[-1]}"


def resume_sweep(sweep: Sweep, log: Log = console):
    """Continue the sweep saved in sweep.output: finished trials stay, the others go on from their
    last checkpoints (Tuner.restore), errored ones too."""
    from ray import tune

    path = sweep.output / "tune"
    if not tune.Tuner.can_restore(str(path)):
        raise ConfigError(f"nothing to resume in {sweep.output} (no Tune state under {path})")
    trainable = _prepare(sweep, log)
    log(f"resuming sweep {sweep.name} from {path}")
    tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
    return _fit(tuner, sweep, log)


# -- the results table -------------------------------------------------------------------------
def results_table(results, keys: list[str], metric: str, mode: str, status: dict[str, str],
                  folders: dict[str, Path] | None = None):
    """One row per trial: its last epoch, the best `metric` it reached, and its Tune status (TERMINATED,
    ERROR, ...); best trial first. The last epoch is the newest record of the trial's own run folder
    (`folders`) where that is further than Tune's last result: synchronous PBT can drop the report of
    an epoch a trial trains after its last exploit, so Tune's row alone can stop an epoch short."""
    import pandas as pd

    last = results.get_dataframe()
    if last.empty:
        return pd.DataFrame(columns=["trial_id", *keys, "epoch", metric, f"best_{metric}", "status"])
    best = results.get_dataframe(filter_metric=metric, filter_mode=mode).set_index("trial_id")[metric]
    columns = ["trial_id", *[f"config/{k}" for k in keys], "epoch", metric,
               *[m for m in ("val_acc", "test_acc") if m != metric], "samples_per_s"]
    table = last[[c for c in columns if c in last.columns]].rename(columns=lambda c: c.removeprefix("config/"))
    table[f"best_{metric}"] = table["trial_id"].map(best)
    folders = folders or {}
    for row, trial_id in table["trial_id"].items():
        own = read_records(folders[trial_id] / "metrics.jsonl")[0] if trial_id in folders else []
        record = own[-1] if own else {}
        if record.get("epoch", 0) > table.at[row, "epoch"]:
            for column in ("epoch", metric, "val_acc", "test_acc", "samples_per_s"):
                if column in table.columns and column in record:
                    table.at[row, column] = record[column]
            if metric in record:
                seen = table.at[row, f"best_{metric}"]
                table.at[row, f"best_{metric}"] = record[metric] if pd.isna(seen) else (
                    max if mode == "max" else min)(seen, record[metric])
    missing = [t for t in status if t not in set(table["trial_id"])]  # never reported: still pending when stopped
    if missing:
        table = pd.concat([table, pd.DataFrame({"trial_id": missing})], ignore_index=True)
    table["status"] = table["trial_id"].map(status)
    if folders:
        table.insert(1, "trial", table["trial_id"].map(lambda t: folders[t].name if t in folders else None))
    return table.sort_values(f"best_{metric}", ascending=(mode == "min"), na_position="last").reset_index(drop=True)


def save_table(table, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table.to_csv(folder / "results.csv", index=False)
    table.to_json(folder / "results.json", orient="records", indent=1)
