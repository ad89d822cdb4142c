"""One dataclass config, loaded from YAML, with dotted command-line overrides and validation.

    cfg = load_config("configs/mnist_mlp.yaml", ["train.epochs=3", "optim.lr=1e-3"])

Every error is a ConfigError whose message names the offending key in one line.
"""
from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ray_al.bounded_yaml import load_bounded
from ray_al.errors import ConfigError


def setting(default=None, help: str = "", *, factory=None):
    """A config key with what it does: the one place its description is written (`ray-al config` and
    docs/config-keys.md show it). `factory` makes a fresh list or dict per config."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def one_of(default_value, help: str, /, **choices: str):
    """A setting with a closed set of values, each with what it means ('' where its name says it); a None
    default is allowed as well. The one place a setting's allowed values are written (CHOICES reads them)."""
    return field(default=default_value, metadata={"help": help, "choices": choices})


@dataclass
class DataConfig:
    source: str = one_of("digits", "where the data comes from",
                         digits="the 8x8 digits scikit-learn ships", parquet="a folder of Parquet shards",
                         torchvision="a torchvision dataset by data.name", synthetic="class means plus noise",
                         python="the user's factory: data.factory", imagefolder="a folder of class folders")
    loader: str = one_of("memory", "how training batches reach the blocks", memory="the whole split as tensors",
                         ray_data="Parquet streamed by Ray Data")
    path: str | None = setting(None, "Parquet folder, image folder, or torchvision root folder")
    name: str | None = setting(None, "torchvision: mnist, cifar10 or cifar100")
    download: bool = setting(False, "torchvision only; off, so that offline runs fail clearly")
    batch_size: int = setting(32, "samples per mini-batch (per optimizer step)")
    augment: str = one_of("none", "training-time augmentation", none="", jitter="the paper's 2-pixel shifts",
                          crop_flip="the reference code's pad-crop-flip")
    normalize: bool = setting(True, "per-channel mean/std of the training split")
    limit_train: int | None = setting(None, "keep n training samples, drawn with a fixed seed (quick runs)")
    limit_test: int | None = setting(None, "keep n test samples, drawn with a fixed seed")
    num_classes: int | None = setting(None, "None: from the class names in the data, else max label + 1 with no gaps")
    cache_dir: str | None = setting(None, "where decoded Parquet arrays are cached (None: beside the data or ~/.cache)")
    synthetic_shape: list[int] = setting(help="synthetic: image shape [C, H, W]", factory=lambda: [1, 8, 8])
    synthetic_classes: int = setting(10, "synthetic: number of classes")
    synthetic_size: int = setting(512, "synthetic: training samples")
    synthetic_noise: float = setting(40.0, "synthetic: std of the pixel noise around each class's mean image (0..255)")
    factory: str | None = setting(None, 'python: "module:function" returning (train, test) splits')
    factory_args: dict[str, Any] = setting(help="python: keyword arguments of the factory", factory=dict)
    image_size: list[int] | None = setting(None, "imagefolder: resize every image to [H, W] (None: all must agree)")
    test_fraction: float = setting(0.2, "imagefolder without train/ and test/ subfolders: seeded test share")
    val_fraction: float = setting(0.0, "seeded share of the training split held out for val_acc each epoch")


@dataclass
class ModelConfig:
    name: str = setting("mlp", "a registered model: mlp, cnn, vgg, resnet20, resnet32, or the user's (model.module)")
    d: int | None = setting(None, "target width; None: the paper's value for model and dataset")
    depth: int | None = setting(None, "number of blocks, for models that take it")
    act: str | None = one_of(None, "f's activation; None: elu for AL, relu for the BP twin",
                             elu="", relu="", sigmoid="", tanh="")
    bridge_grad_to_g: bool = setting(False, "let the bridge loss reach g_i (no stopgrad on t_i); off in the paper")
    first_decoder_ce: bool = setting(False, "block 1 decodes with cross-entropy on the labels instead of MSE")
    target_warmup_steps: int = setting(0, "target-path warm-up (core/target_path.py): g and h alone on the C class "
                                          "points, through the chain, before the first data step; 0: the paper's "
                                          "algorithm, untouched")
    target_warmup_lr: float | None = setting(None, "the warm-up's own Adam, dropped after; None: 3e-3 x min(1, 256/d)")
    target_warmup_until: str = one_of("separated", "when warm-up ends",
                                      separated="at the first check where every depth decodes every class; "
                                                "target_warmup_steps bounds it",
                                      steps="after all target_warmup_steps")
    target_warmup_check_every: int = setting(25, "warm-up steps between separability checks (until=separated)")
    bp_baseline: str = one_of("twin", "the BP baseline (train.trainer=bp)",
                              twin="the AL prediction path, as the paper words it",
                              authors="the authors' code: VGG with BN after every conv and dense layer and no "
                                      "Dense(1024)s, ResNet with global average pooling to 64 features and BN in "
                                      "the head; mlp and cnn: the twin")
    bridge: str = one_of("dense", "b_i, the bridge from s_i to the targets (models/bridges.py)",
                         dense="the paper's: Flatten, Dense(5d), Dense(d)",
                         pooled="the map average-pooled to at most 1,024 features first",
                         wide="as pooled, to at most 4,096 features",
                         conv1x1="a 1x1 convolution to C/4 channels, then as pooled",
                         narrow="the whole map, a hidden layer d wide instead of 5d")
    class_code_std: float | None = setting(None, "block 1's g drawn N(0, std^2) (column c: class c's code): the C "
                                                 "class targets start far apart; None: He, the paper")
    exit_readout: str = one_of("decoders", "how exit k turns b_k(s_k) into class scores (core/blocks.py)",
                               decoders="h_k..h_1, the paper's prediction",
                               targets="least squares onto the C class targets t_k, b_k(s_k) pinv(T_k): "
                                       "not fooled by blends of targets; wants d >= C")
    bridge_loss: str = one_of("mse", "L_i, what the bridge minimises (core/blocks.py)",
                              mse="MSE(b_i(s_i), t_i), the paper's",
                              contrastive="cross-entropy over the classes in the batch, class c's logit "
                                          "-MSE(b_i(s_i), t_c) / bridge_temperature: pushes away from the "
                                          "other targets too")
    bridge_temperature: float = setting(0.05, "bridge_loss=contrastive: the softmax temperature, in units of "
                                              "mean squared error per target feature")
    module: str | None = setting(None, "the user's module whose @register builders `name` may refer to; imported "
                                       "in the driver and in every block actor before the lookup")


@dataclass
class OptimConfig:
    lr: float = setting(1e-4, "Adam's learning rate of f and b (BP: of every layer)")
    target_lr_scale: float = setting(2.0, "g and h train at lr x this (the reference code's 2x)")
    weight_decay: float = setting(0.0, "L2, as Adam's weight_decay")
    l2_scope: str = one_of("f_kernels", "what L2 reaches",
                           f_kernels="the weights of f's Linear/Conv layers, as the authors' code "
                                     "(BP: every Linear/Conv weight)", all="every parameter")
    schedule: str = one_of("constant", "the learning-rate schedule", constant="lr throughout",
                           paper="x0.1 at 40/60/80% of steps, x0.5 at 90%")


@dataclass
class TrainConfig:
    trainer: str = one_of("al", "how the model trains", al="the Ray pipeline: one actor per block",
                          al_local="the AL blocks in one process", bp="the backprop twin")
    epochs: int = setting(1, "passes over the training split")
    chunk_size: int = setting(16, "K mini-batches per actor call")
    max_inflight_chunks: int = setting(4, "bound on chunks between submission and completion")
    seed: int = setting(0, "initialisation, batch order and augmentation all follow from it")
    threads: int | None = setting(None, "torch threads per block (None: from the CPUs Ray gives it)")
    device: str = one_of("auto", "al_local and bp: where to train", auto="cuda when there is one", cpu="", cuda="")
    eval_batch_size: int = setting(1000, "inputs per forward pass when evaluating")
    log_every_s: float = setting(10.0, "progress line interval on long epochs (a bar on a terminal); 0: none")
    compile: str = one_of("off", "step option, AL blocks and BP twin alike (core/step_options.py)", off="",
                          on="torch.compile of forward + losses", cuda_graphs="CUDA only")
    precision: str = one_of("fp32", "step option", fp32="",
                            bf16="autocast of forward + losses; optimizer state stays fp32")
    adam: str = one_of("default", "step option: torch's Adam implementation", default="", foreach="", fused="")
    pin_memory: bool = setting(False, "step option, CUDA only: host input chunks pinned, copied non-blocking")
    channels_last: bool = setting(False, "step option: NHWC weights and 4-D inputs (convolutional models)")


@dataclass
class RayConfig:
    address: str | None = setting(None, "the Ray cluster to join; None: RAY_ADDRESS or a new local cluster")
    num_cpus: int | None = setting(None, "CPUs of a new local cluster (None: all)")
    num_cpus_per_block: float | None = setting(None, "CPUs of each block actor; None: min(1, cluster CPUs / blocks)")
    num_gpus_per_block: float = setting(0.0, "GPUs of each block actor; a fraction shares one GPU between blocks")
    placement_strategy: str = one_of("PACK", "Ray's placement group strategy for the blocks",
                                     PACK="", SPREAD="", STRICT_PACK="", STRICT_SPREAD="")
    placement_timeout_s: float = setting(60.0, "how long to wait for the blocks' resources before a one-line error")
    replicas_per_block: int = setting(1, "R actors per block, each on its own micro-batch of data.batch_size: one "
                                         "step = R x batch_size samples, the replicas' gradients averaged "
                                         "(pipeline/replicas.py); 1: one actor per block")
    tensor_transport: str = one_of("auto", "how chunks hop between blocks (pipeline/transport.py)",
                                   auto="by hardware", object_store="", cuda_ipc="Ray Direct Transport",
                                   nccl="Ray Direct Transport", gloo="Ray Direct Transport")
    block_resources: dict[str, float] = setting(help="custom resources per block, e.g. {worker: 0.01}", factory=dict)
    runtime_env: dict[str, Any] = setting(help="of the job this driver starts or joins, e.g. {py_modules: [my_pkg]}: "
                                               "ships code to every worker", factory=dict)


@dataclass
class CheckpointConfig:
    enabled: bool = setting(True, "save checkpoints (at epoch ends, and every_steps)")
    every_steps: int = setting(0, "also every this many steps (rounded up to a chunk); 0: epoch ends only")
    keep: int = setting(2, "complete checkpoints kept (two: a damaged newest falls back to the one before)")
    uri: str | None = setting(None, "pyarrow.fs URI base (s3://bucket/runs); None: inside the run folder")
    max_restarts: int = setting(3, "block losses survived per run before giving up")


@dataclass
class LogConfig:
    tensorboard: bool = setting(True, "event files in the run folder: tensorboard --logdir runs")
    mlflow: bool = setting(False, "needs ray_al[mlflow]; MLFLOW_TRACKING_URI or log.mlflow_uri")
    wandb: bool = setting(False, "needs ray_al[wandb] and a key; WANDB_MODE=offline works without network")
    every_steps: int = setting(50, "per-block losses and samples/s every this many steps; 0: epochs only")
    project: str = setting("ray_al", "MLflow experiment, W&B project")
    mlflow_uri: str | None = setting(None, "None: MLflow's own default (MLFLOW_TRACKING_URI)")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run_dir: str = setting("runs", "each run writes to run_dir/<name>")
    name: str | None = setting(None, "the run folder's name; None: <model>-<trainer>-<time>")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _choices() -> dict[str, set]:
    """{"section.key": allowed values} from every one_of field."""
    out = {}
    for section in dataclasses.fields(Config):
        if section.default_factory is dataclasses.MISSING:  # run_dir, name: plain values
            continue
        for f in dataclasses.fields(section.default_factory()):
            if "choices" in f.metadata:
                out[f"{section.name}.{f.name}"] = set(f.metadata["choices"]) | ({None} if f.default is None else set())
    return out


CHOICES = _choices()
POSITIVE = {"data.batch_size", "train.chunk_size", "train.max_inflight_chunks", "train.eval_batch_size",
            "optim.lr", "optim.target_lr_scale", "checkpoint.keep", "data.synthetic_classes",
            "data.synthetic_size", "data.num_classes", "model.d", "model.depth", "train.threads", "ray.num_cpus",
            "ray.num_cpus_per_block", "data.limit_train", "data.limit_test", "ray.placement_timeout_s",
            "model.target_warmup_lr", "ray.replicas_per_block", "model.class_code_std",
            "model.target_warmup_check_every", "model.bridge_temperature"}
MAX_SEED = 10 ** 8 - 1  # (seed * 100_003 + epoch) * 1_000_003 + batch must fit a 64-bit generator seed
RUN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,199}")  # one folder, never `..` or a path
NON_NEGATIVE = {"train.epochs", "optim.weight_decay", "checkpoint.every_steps", "ray.num_gpus_per_block",
                "train.log_every_s", "checkpoint.max_restarts", "model.target_warmup_steps", "data.synthetic_noise",
                "log.every_steps"}


def _check_type(key: str, value: Any, tp: Any) -> Any:
    if tp is Any:
        return value
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(key, value, arg)
            except ConfigError as e:
                errors.append(e)
        raise errors[0]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, item = typing.get_args(tp)
        return {str(k): _check_type(f"{key}.{k}", v, item) for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # YAML reads 1e-4 (no dot) as a string
            number = float(value)
        except (ValueError, OverflowError):
            number = None
        if number is not None:
            if not math.isfinite(number):  # NaN passes every `<= 0` check, inf reaches the optimizers
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            return number
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls, values: dict, prefix: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{full}' (known: {', '.join(sorted(names))})")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value or {}, f"{full}.")
        else:
            kwargs[key] = _check_type(full, value, tp)
    return cls(**kwargs)


def _get(cfg: Config, dotted: str):
    obj = cfg
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Config) -> Config:
    for key, allowed in CHOICES.items():
        value = _get(cfg, key)
        if value not in allowed:
            shown = ", ".join(sorted(str(a) for a in allowed if a is not None))
            raise ConfigError(f"{key}: '{value}' is not one of {shown}")
    for key in POSITIVE:
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    for key in NON_NEGATIVE:
        value = _get(cfg, key)
        if value < 0:
            raise ConfigError(f"{key} must not be negative, got {value}")
    for key in ("ray.num_cpus_per_block", "ray.num_gpus_per_block"):  # Ray's rule for fractional resources
        value = _get(cfg, key)
        if value is not None and value > 1 and value != int(value):
            raise ConfigError(f"{key} above 1 must be a whole number, got {value}")
    if not 0 <= cfg.train.seed <= MAX_SEED:  # mixed with epoch and batch into 64-bit generator seeds
        raise ConfigError(f"train.seed must be in 0..{MAX_SEED}, got {cfg.train.seed}")
    for name, amount in cfg.ray.block_resources.items():
        if amount <= 0:
            raise ConfigError(f"ray.block_resources.{name} must be positive, got {amount}")
    if not 1 <= len(cfg.data.synthetic_shape) <= 3 or min(cfg.data.synthetic_shape) <= 0:
        raise ConfigError(f"data.synthetic_shape must be 1 to 3 positive sizes, got {cfg.data.synthetic_shape}")
    if cfg.name is not None and not RUN_NAME.fullmatch(cfg.name):
        raise ConfigError(f"name: '{cfg.name}' is not a plain folder name (letters, digits, . _ - ; "
                          f"not starting with a dot)")
    if not cfg.run_dir:
        raise ConfigError("run_dir must not be empty")
    if cfg.data.loader == "ray_data" and (cfg.data.source != "parquet" or cfg.train.trainer != "al"):
        raise ConfigError("data.loader=ray_data streams Parquet shards into the Ray pipeline: "
                          "it needs data.source=parquet and train.trainer=al")
    if cfg.ray.replicas_per_block > 1 and (cfg.train.trainer != "al" or cfg.data.loader != "memory"):
        raise ConfigError("ray.replicas_per_block > 1 replicates the Ray pipeline's block actors: "
                          "it needs train.trainer=al and data.loader=memory")
    if cfg.data.source in ("parquet",) and not cfg.data.path:
        raise ConfigError("data.path is required when data.source is parquet")
    _validate_user_data(cfg)
    if cfg.data.source == "torchvision" and not cfg.data.name:
        raise ConfigError("data.name (mnist, cifar10, cifar100) is required when data.source is torchvision")
    return cfg


def _validate_user_data(cfg: Config) -> None:
    d = cfg.data
    if not 0 <= d.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    if not 0 < d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    if d.val_fraction and d.loader == "ray_data":
        raise ConfigError("data.val_fraction needs the in-memory loader (data.loader=memory)")
    if d.source == "python" and (not d.factory or ":" not in d.factory):
        raise ConfigError("data.source=python needs data.factory=module:function")
    if d.source == "imagefolder" and not d.path:
        raise ConfigError("data.path (a folder of class folders) is required when data.source is imagefolder")
    if d.image_size is not None and (len(d.image_size) != 2 or min(d.image_size) <= 0):
        raise ConfigError(f"data.image_size must be [height, width], got {d.image_size}")


def config_from_dict(values: dict | None) -> Config:
    return validate(_build(Config, values or {}, ""))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    try:
        value = load_bounded(raw, f"override '{key}'") if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def set_dotted(values: dict, key: str, value: Any, what: str | None = None) -> None:
    """values["a"]["b"] = value for key "a.b", making sections on the way; `what` names the key in errors."""
    node = values
    *parents, last = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{what or key}: '{part}' is not a section")
    node[last] = value


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(values, key, value, what=f"override '{text}'")
    return values


def settings(cfg: Config) -> dict[str, Any]:
    """Every setting by its dotted key ("optim.lr", "run_dir"); dict-valued settings (factory_args, ...) whole."""
    return {f"{section}.{key}" if isinstance(values, dict) else section: value
            for section, values in cfg.to_dict().items()
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)])}


def changed(cfg: Config, changes: dict[str, Any]) -> Config:
    """A validated copy of `cfg` with dotted keys set ({"train.trainer": "al_local"}); `cfg` stays as it
    was. Code that resolves a setting returns a changed config instead of writing into the caller's."""
    values = cfg.to_dict()
    for key, value in changes.items():
        set_dotted(values, key, value)
    return config_from_dict(values)


def merge_values(into: dict, extra: dict) -> dict:
    """Lay the nested mapping `extra` over `into` (sections merge key by key; other values replace)."""
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge_values(into[key], value)
        else:
            into[key] = value
    return into


def read_config_file(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """A config file's values; `base: other.yaml` (relative to the file) starts from that file's
    values, which this file's keys override, so a variant says only what it changes."""
    path = Path(path).resolve() if Path(path).is_file() else Path(path)
    if path in _seen:
        chain = " -> ".join(p.name for p in (*_seen, path))
        raise ConfigError(f"config files name each other as base: {chain}")
    values = read_yaml(path)
    base = values.pop("base", None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected a file name, got {base!r}")
    return merge_values(read_config_file(path.parent / base, (*_seen, path)), values)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = load_bounded(path.read_text(), str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"malformed YAML in {path}{where}: {getattr(e, 'problem', e)}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


# `ray-al train` with no config file: the embedded digits through two Ray block actors, in
# seconds. Config files start from the paper's settings instead (configs/default.yaml = this).
EMBEDDED_DEFAULT = {"model": {"name": "mlp", "d": 256, "target_warmup_steps": 300}, "optim": {"lr": 1e-3},
                    "train": {"epochs": 10}}


# The shipped configs: ray_al/configs links to the repository's configs/ and is packaged with it.
SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"


def find_config(path: str | Path) -> Path:
    """A config file as given (from the working directory), else the shipped config of that name:
    `configs/paper/mnist_mlp_al.yaml`, `paper/mnist_mlp_al.yaml` and `paper/mnist_mlp_al` all find
    configs/paper/mnist_mlp_al.yaml from any directory. A missing file is a one-line error."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    candidates = [given.with_name(given.name + ".yaml")]
    if not given.is_absolute():
        inside = Path(*given.parts[1:]) if given.parts[:1] == ("configs",) else given
        candidates += [SHIPPED_CONFIGS / inside, SHIPPED_CONFIGS / inside.with_name(inside.name + ".yaml")]
    for candidate in candidates:
        if candidate.suffix in (".yaml", ".yml") and candidate.is_file():
            return candidate
    raise ConfigError(f"config file not found: {path} (looked in the working directory and in {SHIPPED_CONFIGS})")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    import copy
    values = read_config_file(find_config(path)) if path else copy.deepcopy(EMBEDDED_DEFAULT)
    return config_from_dict(apply_overrides(values, overrides or []))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def _type_name(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "None"
    return tp.__name__ if isinstance(tp, type) and not typing.get_args(tp) else str(tp)


def describe_keys(cfg: Config) -> list[tuple[str, str, Any, Any, str]]:
    """(dotted key, type, default, value, description) of every key, in the order `ray-al config` prints them;
    a closed setting's description ends with its values and what each means."""
    rows = []

    def walk(obj, default, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value, base = getattr(obj, f.name), getattr(default, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, base, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", _type_name(hints[f.name]), base, value, _description(f)))

    walk(cfg, Config(), "")
    return rows


def _description(f: dataclasses.Field) -> str:
    choices = f.metadata.get("choices")
    if not choices:
        return f.metadata.get("help", "")
    values = ", ".join(f"{name} ({meaning})" if meaning else name for name, meaning in choices.items())
    return f"{f.metadata['help']}; one of: {values}"


def _yaml(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...")


def format_keys(cfg: Config) -> list[str]:
    """One line per key: key, type, default, value, a `*` where the value is not the default, and after
    `  # ` what the key does."""
    rows = [(k, t, _yaml(d), _yaml(v), "*" if d != v else "", text) for k, t, d, v, text in describe_keys(cfg)]
    head = ("key", "type", "default", "value", "", "what it does")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(5)]
    return ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  # " + r[5] for r in [head, *rows]]


def keys_markdown() -> str:
    """Every key as a Markdown table (docs/config-keys.md is this, written by `ray-al config --markdown`)."""
    lines = ["# Config keys", "", "Written by `ray-al config --markdown` from ray_al/config.py, where each key's "
             "description lives; `ray-al config FILE` shows them beside a config's values.", "",
             "| key | type | default | what it does |", "|---|---|---|---|"]
    for key, tp, default, _, text in describe_keys(Config()):
        lines.append(f"| `{key}` | {tp.replace('|', '&#124;')} | `{_yaml(default)}` | {text.replace('|', '&#124;')} |")
    return "\n".join(lines) + "\n"
