"""`ray-al tune SWEEP.yaml`: a Ray Tune sweep over dotted config keys, each trial a full AL run.

A sweep file:

    base: ../mnist_mlp.yaml          # optional; relative to the sweep file
    config:                          # optional; nested keys laid over the base
      train: {epochs: 3}
    param_space:                     # dotted config keys -> a value or one search form
      optim.lr: {loguniform: [1.0e-4, 1.0e-2]}
      model.d: {grid_search: [256, 1024]}
      train.seed: {choice: [0, 1]}
    tune:
      num_samples: 1                 # samples per grid point
      metric: test_acc               # reported per epoch; mode max (default val_acc with data.val_fraction)
      scheduler: asha                # none | asha (early stopping on `metric` by epoch)
      driver_cpus: 1                 # the trial's own process; each block takes ray.num_*_per_block
    output: runs/sweeps/mnist_mlp    # results.csv, results.json and every trial's run folder

Each trial reserves its driver and its block actors as one placement group,
`tune.with_resources(trainable, tune.PlacementGroupFactory([driver, block x N]))`; the
pipeline finds that group and puts block i in bundle i + 1 (ray_al/trainers/placement.py).
Relative paths in the config (data.path, data.cache_dir, run_dir) are taken from the working
directory, as in `ray-al train`, and made absolute before trials start (trials run elsewhere).
The training data is loaded once here and shared through the object store, unless the sweep
varies keys that change the data itself.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Callable

from ray_al.config import (
    Config,
    apply_overrides,
    config_from_dict,
    merge_values,
    read_config_file,
    read_yaml,
    set_dotted,
)
from ray_al.errors import ConfigError, TrainingError

SEARCH_FORMS = {"grid_search", "choice", "uniform", "loguniform", "randint", "quniform", "qloguniform"}
SWEEP_KEYS = {"base", "config", "param_space", "tune", "output", "name"}
TUNE_KEYS = {"num_samples", "metric", "mode", "scheduler", "grace_period", "reduction_factor",
             "max_concurrent_trials", "driver_cpus", "verbose"}
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


class Sweep:
    def __init__(self, path: str | Path, overrides: list[str] | None = None):
        path = Path(path)
        raw = read_yaml(path)
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
        bad = set(self.tune) - TUNE_KEYS
        if bad:
            raise ConfigError(f"{path}: unknown tune key(s) {', '.join(sorted(bad))} "
                              f"(known: {', '.join(sorted(TUNE_KEYS))})")
        space = raw.get("param_space") or {}
        if not isinstance(space, dict) or not space:
            raise ConfigError(f"{path}: param_space must map dotted config keys to values or search forms")
        self.param_space, probes = {}, {}
        for key, spec in space.items():
            self.param_space[key], probes[key] = _search_form(key, spec)
        self.base_cfg = config_from_dict(copy.deepcopy(self.base))
        for key, values in probes.items():  # every listed value and both ends of a range must make a valid config
            for value in values:
                trial_config(self.base, {key: value})
        scheduler = self.tune.get("scheduler", "none")
        if scheduler not in ("none", "asha"):
            raise ConfigError(f"tune.scheduler: '{scheduler}' is not one of none, asha")
        if scheduler == "asha" and int(self.tune.get("grace_period", 1)) > max(self.base_cfg.train.epochs, 1):
            raise ConfigError(f"tune.grace_period={self.tune['grace_period']} exceeds train.epochs="
                              f"{self.base_cfg.train.epochs}: ASHA could never stop a trial")
        output = raw.get("output") or f"runs/sweeps/{self.name}"
        self.output = Path(output).expanduser().resolve()
        self.shares_data = not any(k.startswith("data.") and k not in DATA_KEYS_SAFE_TO_SHARE for k in space)


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
    """One trial: a whole `run.train`, reporting each epoch's record to Tune."""
    from ray import tune

    from ray_al.run import train

    cfg = trial_config(base, params)
    cfg.run_dir, cfg.name = run_dir, tune.get_context().get_trial_name()

    def report(record: dict) -> None:
        tune.report({k: v for k, v in record.items() if isinstance(v, (int, float))})

    train(cfg, on_epoch=report, data=data)


def trial_resources(cfg: Config, n_blocks: int, driver_cpus: float):
    """One bundle for the trial's driver, one per block (CPU and optional GPU from cfg.ray)."""
    from ray import tune

    from ray_al.trainers.placement import block_bundle

    block = block_bundle(cfg.ray, n_blocks)
    bundles = [{"CPU": driver_cpus}] + [dict(block) for _ in range(n_blocks)]
    if cfg.train.trainer != "al":
        bundles = bundles[:1]  # in-process trainers start no actors
    return tune.PlacementGroupFactory(bundles, strategy=cfg.ray.placement_strategy)


def run_sweep(sweep: Sweep, log: Log = print):
    """Run every trial; print and save the results table; return the ResultGrid."""
    from ray import tune

    from ray_al.data import load_dataset
    from ray_al.models import block_count
    from ray_al.session import connect

    metric = "val_acc" if sweep.base_cfg.data.val_fraction else "test_acc"  # select on held-out data if any
    opts = {"num_samples": 1, "metric": metric, "mode": "max", "scheduler": "none", "grace_period": 1,
            "reduction_factor": 2, "max_concurrent_trials": None, "driver_cpus": 1.0, "verbose": 1, **sweep.tune}
    connect(sweep.base_cfg.ray)
    data = load_dataset(sweep.base_cfg.data)
    log(f"sweep {sweep.name}: data {data.name} train {tuple(data.train_x.shape)}; output {sweep.output}")

    shape, classes = data.input_shape, data.num_classes

    def resources(params: dict):
        cfg = trial_config(sweep.base, params)
        return trial_resources(cfg, block_count(cfg.model, shape, classes),
                               float(opts["driver_cpus"]))

    shared = {"data": data} if sweep.shares_data else {}
    trainable = tune.with_parameters(_trainable, base=sweep.base, run_dir=str(sweep.output / "trials"), **shared)
    trainable = tune.with_resources(trainable, resources)
    scheduler = None
    if opts["scheduler"] == "asha":
        from ray.tune.schedulers import ASHAScheduler
        scheduler = ASHAScheduler(time_attr="epoch", max_t=max(sweep.base_cfg.train.epochs, 1),
                                  grace_period=int(opts["grace_period"]), reduction_factor=opts["reduction_factor"])
    tuner = tune.Tuner(
        trainable, param_space=sweep.param_space,
        tune_config=tune.TuneConfig(metric=opts["metric"], mode=opts["mode"], num_samples=int(opts["num_samples"]),
                                    scheduler=scheduler, max_concurrent_trials=opts["max_concurrent_trials"]),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep.output), verbose=opts["verbose"]))
    del data  # trials hold their own reference
    results = tuner.fit()
    table = results_table(results, list(sweep.param_space), opts["metric"])
    save_table(table, sweep.output)
    for line in format_table(table):
        log(line)
    log(f"results: {sweep.output / 'results.csv'}, {sweep.output / 'results.json'}")
    if results.num_errors:
        first = str(results.errors[0]).strip().splitlines()[-1]
        raise TrainingError(f"{results.num_errors} of {len(results)} trial(s) failed; first: {first}")
    return results


# -- the results table -------------------------------------------------------------------------
def results_table(results, keys: list[str], metric: str) -> list[dict]:
    rows = []
    for r in results:
        m = r.metrics or {}
        rows.append({"trial": m.get("trial_id", Path(r.path).name if r.path else "?"),
                     **{k: r.config.get(k) for k in keys},
                     "epochs_done": m.get("epoch", 0), metric: m.get(metric),
                     "best_" + metric: _best(r, metric), "samples_per_s": m.get("samples_per_s"),
                     "status": "ERROR" if r.error else "OK"})
    return sorted(rows, key=lambda row: (-(row["best_" + metric] or -1), -row["epochs_done"]))


def _best(result, metric: str):
    df = result.metrics_dataframe
    if df is None or metric not in getattr(df, "columns", []):
        return None
    return float(df[metric].max())


def save_table(rows: list[dict], folder: Path) -> None:
    import csv

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    with open(folder / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)


def format_table(rows: list[dict]) -> list[str]:
    if not rows:
        return ["(no trials)"]
    cols = list(rows[0])
    cell = [[_fmt(row[c]) for c in cols] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cell)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cell]
    return lines


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
