"""`ray-al train | eval | predict | serve | export | tune | runs | report | bench | config`: failures are one
line, exit 2."""
from __future__ import annotations

import argparse
import os
import sys

from ray_al.errors import ConfigError, RayALError

DEFAULT_CONFIG = None  # no file: the embedded digits dataset, a small MLP, through Ray actors
CONFIDENCE_HELP = "maxprob: top softmax probability; entropy: 1 - H(p)/log(classes)"


def _train(args) -> int:
    from ray_al.config import load_config
    from ray_al.pipeline.session import ray_session, sigterm_raises_interrupt
    from ray_al.run.loop import train
    from ray_al.run.preflight import check_before_ray

    changes = {}
    if args.resume:
        from ray_al.run.storage import resume_config
        if args.config:
            raise ConfigError("give either a config or --resume RUN_DIR, not both")
        cfg, changes = resume_config(args.resume, args.overrides, args.allow_change)
    else:
        if args.step is not None or args.allow_change:
            raise ConfigError("--step and --allow-change go with --resume RUN_DIR")
        cfg = load_config(args.config, args.overrides)
    check_before_ray(cfg)
    with ray_session(cfg.ray if cfg.train.trainer == "al" else None), sigterm_raises_interrupt():
        if args.resume:
            train(cfg, resume_dir=args.resume, resume_step=args.step, config_changes=changes)
        else:
            train(cfg)
    return 0


def _tune(args) -> int:
    from ray_al.pipeline.session import ray_session, sigterm_raises_interrupt
    from ray_al.run.preflight import check_before_ray
    from ray_al.run.tune import Sweep, resume_sweep, run_sweep

    if args.resume:
        if args.sweep:
            raise ConfigError("give either a sweep file or --resume SWEEP_DIR, not both")
        sweep = Sweep.saved(args.resume, args.overrides)
    elif not args.sweep:
        raise ConfigError("give a sweep file (e.g. configs/sweeps/mnist_mlp.yaml) or --resume SWEEP_DIR")
    else:
        sweep = Sweep(args.sweep, args.overrides)
        sweep.check_output_free()  # before Ray starts: a refusal costs nothing
    check_before_ray(sweep.base_cfg)
    with ray_session(sweep.base_cfg.ray), sigterm_raises_interrupt():
        resume_sweep(sweep) if args.resume else run_sweep(sweep)
    return 0


def _config(args) -> int:
    from ray_al.config import format_keys, keys_markdown, load_config

    if args.markdown:
        print(keys_markdown(), end="")
        return 0
    for line in format_keys(load_config(args.config, args.overrides)):
        print(line)
    return 0


def _eval(args) -> int:
    import json

    if args.thresholds:
        from ray_al.inference.early_exit import format_tradeoff
        from ray_al.inference.prediction import evaluate_thresholds, save_tradeoff
        result = evaluate_thresholds(args.run_dir, args.thresholds, args.confidence, args.overrides, save=False)
        if args.json:
            print(json.dumps(result, indent=1))
        else:
            print(f"early exit on {result['test_samples']} test inputs (step {result['step']}, confidence "
                  f"{result['measure']}): answer at the first exit whose confidence reaches the threshold")
            print(format_tradeoff(result["rows"]))
        try:  # printed first: a run folder that cannot be written (read-only, full) loses nothing but the file
            save_tradeoff(args.run_dir, result)
        except OSError as e:
            print(f"ray-al: early_exit.json not written in {args.run_dir} ({e.strerror or e}); the table above "
                  f"is the whole result", file=sys.stderr)
        return 0

    from ray_al.core import record
    from ray_al.run.evaluation import evaluate_run

    result = evaluate_run(args.run_dir, args.overrides, device=args.device)
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{args.run_dir} at step {result['step']}: test accuracy by exit (the last is the paper's prediction)")
    print("  ".join(f"exit {k}: {acc:.4f}" for k, acc in record.exits(result).items())
          or f"test_acc: {result['test_acc']:.4f}")
    return 0


def _runs(args) -> int:
    from ray_al.analysis.runs import print_runs

    print_runs(args.folders, as_json=args.json)
    return 0


def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of numbers") from None


def _predict(args) -> int:
    from ray_al.inference import prediction as p

    if args.exit != "auto" and not args.exit.isdigit():
        raise ConfigError(f"--exit must be a block number or auto, got '{args.exit}'")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be a positive number of inputs, got {args.batch_size}")
    from ray_al.pipeline.session import ray_session, sigterm_raises_interrupt
    from ray_al.run.outputs import check_output_file
    from ray_al.run.storage import run_config

    check_output_file(args.out, args.overwrite)  # before any work: never a run's file, never over an output
    with ray_session(run_config(args.run_dir).ray if args.ray else None), sigterm_raises_interrupt():
        run = p.load(args.run_dir)
        records = run.predict(args.inputs, args.exit, args.threshold, args.confidence, use_ray=args.ray,
                              batch_size=args.batch_size)
    print(f"ray-al: {p.answered_by(run)}", file=sys.stderr)  # stderr: stdout stays the answers alone
    p.write(records, args.out, args.format)
    return 0


def _serve(args) -> int:
    from ray_al.inference.serve import check_port, serve_forever
    from ray_al.pipeline.session import ray_session, sigterm_raises_interrupt
    from ray_al.run.storage import run_config

    try:
        replicas = [int(r) for r in args.replicas.split(",")] if args.replicas else None
    except ValueError:
        raise ConfigError(f"--replicas must be counts separated by commas, got '{args.replicas}'") from None
    check_port(args.host, args.port)  # before Ray starts: a refusal costs nothing
    with ray_session(run_config(args.run_dir).ray), sigterm_raises_interrupt():
        serve_forever(args.run_dir, host=args.host, port=args.port, threshold=args.threshold, measure=args.confidence,
                      replicas=replicas, cpus_per_block=args.cpus_per_block, gpus_per_block=args.gpus_per_block,
                      ready_timeout_s=args.ready_timeout)
    return 0


def _export(args) -> int:
    import json

    from ray_al.inference.export import export_run

    out = export_run(args.run_dir, args.out, overwrite=args.overwrite)
    n = json.loads((out / "meta.json").read_text())["n_blocks"]
    stages = "stage-1.pt2" if n == 1 else f"stage-1.pt2 .. stage-{n}.pt2"
    print(f"exported {args.run_dir} to {out}: {stages} (torch.export), meta.json, al_exits.py (loader)")
    return 0


def _report(args) -> int:
    from ray_al.analysis.report import parse_data_paths, write_report

    write_report(args.runs, args.out, args.set, samples=args.samples, tsne_samples=args.tsne_samples,
                 data_paths=parse_data_paths(args.data), overwrite=args.overwrite)
    return 0


def _bench(args) -> int:
    import json

    from ray_al.analysis.bench import throughput
    from ray_al.config import load_config
    from ray_al.data.datasets import load_dataset

    cfg = load_config(args.config, args.overrides)
    data = load_dataset(cfg.data)
    r = cfg.ray.replicas_per_block  # a step of the replicated pipeline trains R micro-batches of B
    batch = f"batch {cfg.data.batch_size}" if r == 1 else \
        f"batch {r} x {cfg.data.batch_size} (ray.replicas_per_block x data.batch_size)"
    print(f"throughput: {cfg.model.name} on {data.name}, {batch}, {args.batches} batches each, "
          f"{args.cores} cores in total")
    results = throughput(cfg, data, args.batches, tuple(args.chunk_sizes), args.cores)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ray_al.checkpoint.provenance import version_line

    parser = argparse.ArgumentParser(prog="ray-al", description="Associated Learning on Ray",
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # --version unwrapped
    parser.add_argument("--version", action="version", version=version_line())
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a model (default: the embedded digits MLP through Ray actors)",
                       epilog="example: ray-al train paper/mnist_mlp_al data.path=/data/mnist train.epochs=3")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                   help="YAML config, from here or shipped (e.g. paper/mnist_mlp_al); default: built-in defaults")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 optim.lr=1e-3")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest usable checkpoint")
    p.add_argument("--step", type=int, metavar="N", help="with --resume: continue from the checkpoint of step N "
                   "(later ones are set aside, not deleted)")
    p.add_argument("--allow-change", action="store_true", help="with --resume: accept overrides that change what "
                   "the run learns (data, optimizer, ...); recorded in config.yaml and run.json")
    p.set_defaults(fn=_train)
    p = sub.add_parser("config", help="every config key: type, default, value (* where changed), what it does",
                       epilog="example: ray-al config configs/mnist_mlp.yaml optim.lr=1e-3")
    p.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3")
    p.add_argument("--markdown", action="store_true", help="every key as a Markdown table (docs/config-keys.md)")
    p.set_defaults(fn=_config)
    p = sub.add_parser("tune", help="a Ray Tune sweep (docs/tuning.md has the sweep file)",
                       epilog="example: ray-al tune sweeps/mnist_mlp data.path=/data/mnist")
    p.add_argument("sweep", nargs="?", help="sweep YAML (e.g. sweeps/mnist_mlp): base/config, param_space, tune")
    p.add_argument("overrides", nargs="*", help="dotted overrides of the base config, e.g. data.path=...")
    p.add_argument("--resume", metavar="SWEEP_DIR", help="continue an interrupted sweep (its output folder)")
    p.set_defaults(fn=_tune)
    p = sub.add_parser("eval", help="test accuracy of every exit of a run's newest checkpoint",
                       epilog="example: ray-al eval runs/RUN --thresholds 0.5,0.9,0.99")
    p.add_argument("run_dir", help="a run folder (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.path=... for moved data")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where to evaluate (default: cpu)")
    p.add_argument("--thresholds", type=_floats, metavar="T1,T2,..",
                   help="early-exit trade-off: accuracy, share per exit, blocks per input at each threshold")
    p.add_argument("--confidence", default="maxprob", choices=["maxprob", "entropy"],
                   help=CONFIDENCE_HELP)
    p.add_argument("--json", action="store_true", help="print JSON for machines instead of the table")
    p.set_defaults(fn=_eval)
    p = sub.add_parser("runs", help="runs side by side: epochs, best and last accuracy, the settings they differ in",
                       epilog="example: ray-al runs runs/  (a folder of run folders, or run folders)")
    p.add_argument("folders", nargs="*", default=["runs"], help="run folders or folders of them (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON for machines instead of the table")
    p.set_defaults(fn=_runs)
    p = sub.add_parser("predict", help="answer new inputs (images, folders, .npy, .parquet) with a run's model",
                       epilog="example: ray-al predict runs/RUN digits/ --exit auto --threshold 0.9 --out answers.csv")
    p.add_argument("run_dir", help="a run folder (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("inputs", nargs="+", help="PNG/JPEG files, folders of them, .npy arrays, Parquet files")
    p.add_argument("--exit", default="auto", help="exit number 1..N, or auto: the first confident exit")
    p.add_argument("--threshold", type=float, default=0.9, help="confidence that answers (--exit auto)")
    p.add_argument("--confidence", default="maxprob", choices=["maxprob", "entropy"], help=CONFIDENCE_HELP)
    p.add_argument("--ray", action="store_true", help="through the Ray block actors instead of this process")
    p.add_argument("--out", help="write here (.csv or .json); default: CSV on stdout")
    p.add_argument("--format", choices=["csv", "json"], help="output format (default: from --out's suffix, else csv)")
    p.add_argument("--batch-size", type=int, default=1000, help="inputs per forward pass (default: 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file at --out")
    p.set_defaults(fn=_predict)
    p = sub.add_parser("serve", help="serve a run over HTTP with Ray Serve (POST an image, get JSON)",
                       epilog="example: ray-al serve runs/RUN --port 8000; curl --data-binary @x.png localhost:8000")
    p.add_argument("run_dir", help="a run folder (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("--host", default="127.0.0.1", help="address the HTTP proxy listens on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="its port (default: 8000)")
    p.add_argument("--threshold", type=float, default=0.9, help="default confidence that answers (?threshold=)")
    p.add_argument("--confidence", default="maxprob", choices=["maxprob", "entropy"], help=CONFIDENCE_HELP)
    p.add_argument("--replicas", help="replicas per block deployment: one count, or one per block (2,1)")
    p.add_argument("--cpus-per-block", type=float, default=0.5, help="CPUs of each block replica (default: 0.5)")
    p.add_argument("--gpus-per-block", type=float, default=0.0, help="GPU share of each block replica")
    p.add_argument("--ready-timeout", type=float, default=300, metavar="SECONDS",
                   help="give up when the deployments are not all running after this long (default: 300)")
    p.set_defaults(fn=_serve)
    p = sub.add_parser("export", help="write the prediction path and every exit as torch.export programs",
                       epilog="example: ray-al export runs/RUN --out exported/")
    p.add_argument("run_dir", help="a run folder (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("--out", required=True, help="folder for stage-k.pt2, meta.json and the al_exits.py loader")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier export at --out (never a run folder)")
    p.set_defaults(fn=_export)
    p = sub.add_parser("bench", help="samples/s: sequential AL, Ray pipeline at chunk sizes K, BP twin, ideal",
                       epilog="example: ray-al bench configs/mnist_mlp.yaml data.path=/data/mnist --chunk-sizes 1 16")
    p.add_argument("config", nargs="?", default=None, help="YAML config (default: built-in defaults)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. data.path=...")
    p.add_argument("--batches", type=int, default=400, help="batches timed per row (default: 400)")
    p.add_argument("--chunk-sizes", type=int, nargs="+", default=[1, 16], help="chunk sizes K of the Ray rows")
    p.add_argument("--cores", type=int, default=2, help="cores the comparison may use in total")
    p.add_argument("--out", help="write the figures as JSON here")
    p.set_defaults(fn=_bench)
    p = sub.add_parser("report", help="runs -> Markdown report with the paper's tables and figures beside ours",
                       epilog="example: ray-al report runs/RUN_AL runs/RUN_BP --out report/")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (config.yaml, metrics.jsonl, checkpoints/)")
    p.add_argument("--out", default="report", help="folder for report.md and its PNG figures (default: report)")
    p.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                   help="where a dataset lives here, for the runs on it, e.g. --data cifar10=/data/cifar10")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override applied to every run's config before loading it, e.g. --set data.cache_dir=/tmp")
    p.add_argument("--samples", type=int, default=2000,
                   help="test samples for class distances, a seeded draw (default 2000: a minute a run on 2 cores; "
                        "10000: a whole CIFAR/MNIST test set, as the paper)")
    p.add_argument("--tsne-samples", type=int, default=500, help="test samples per t-SNE panel (default 500)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report (or a file) at --out")
    p.set_defaults(fn=_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("config", "sweep"):  # `ray-al train k=v` or `ray-al tune --resume DIR k=v`: no file given
        value = getattr(args, name, None)
        if value and "=" in value:
            args.overrides.insert(0, value)
            setattr(args, name, None)
    try:
        code = args.fn(args)
    except RayALError as e:
        print(f"ray-al: error: {e}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt as e:
        print("ray-al: interrupted" + (f"\n{e}" if str(e) else ""), file=sys.stderr)  # e: how to resume, if any
        code = 130
    session = sys.modules.get("ray_al.pipeline.session")  # imported (with Ray) only by commands that joined Ray
    if session is not None and session.cluster_gone():
        print("ray-al: the Ray cluster stopped answering at the end; the run's files are written", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def run() -> None:
    """The `ray-al` command (and `python -m ray_al`): main(), then the process ends at once. By then Ray is
    shut down, every file closed and no non-daemon thread left; what remains is the interpreter tearing
    down Ray, Ray Data, torch and pandas, seconds of CPU (more on a loaded machine) after the last line."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
