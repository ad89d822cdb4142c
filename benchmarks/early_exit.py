"""Early exit, measured: train (or reuse) an AL run, then answer its whole test split at the first
exit whose top softmax probability reaches each threshold. Per threshold: accuracy, the share of
inputs answered at each exit, blocks evaluated per input and FLOPs per input against the plain
last-exit path (f_1..f_N, b_N, h_N..h_1); then the compute saved at equal accuracy (the threshold
with the fewest blocks per input whose accuracy is at least the last exit's). MNIST MLP and a
CIFAR-10 model (the CNN by default; --cifar-model mlp --cifar-d 256 fits a busy 2-core machine).

    python -m benchmarks.early_exit [--data DATASETS] [--out benchmarks/results/early_exit_cpu]
    python -m benchmarks.early_exit --mnist-run runs/X --cifar-run runs/Y   # score existing runs only
"""
import argparse
import json
import time
from pathlib import Path

from benchmarks.common import REPO, datasets_root
from ray_al.config import load_config
from ray_al.inference.early_exit import format_tradeoff
from ray_al.inference.prediction import evaluate_thresholds
from ray_al.run.loop import train

THRESHOLDS = [0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999]


def experiments(args, root: Path) -> dict:
    """name -> (config file, overrides): the paper's models at a 2-core budget."""
    common = [f"run_dir={args.run_dir}", "train.trainer=al_local", "train.log_every_s=60", "checkpoint.keep=1"]
    cifar_d = [f"model.d={args.cifar_d}"] if args.cifar_d else []
    return {
        "MNIST MLP": ("configs/mnist_mlp.yaml",
                      [f"data.path={root / 'mnist'}", f"train.epochs={args.mnist_epochs}",
                       f"data.limit_train={args.mnist_train}", f"optim.lr={args.mnist_lr}",
                       *([f"model.d={args.mnist_d}"] if args.mnist_d else []), *common]),
        f"CIFAR-10 {args.cifar_model.upper()}": (f"configs/paper/cifar10_{args.cifar_model}_al.yaml",
                                                 [f"data.path={root / 'cifar10'}", f"train.epochs={args.cifar_epochs}",
                                                  f"data.limit_train={args.cifar_train}", "optim.schedule=constant",
                                                  f"optim.lr={args.cifar_lr}", *cifar_d, *common]),
    }


def equal_accuracy(rows: list[dict]) -> dict | None:
    """The threshold with the fewest blocks per input whose accuracy is at least the last exit's."""
    last = rows[-1]
    ok = [r for r in rows[:-1] if r["accuracy"] >= last["accuracy"]]
    return min(ok, key=lambda r: (r["blocks_per_input"], r["compute_vs_last_exit"])) if ok else None


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--run-dir", default="runs/early_exit")
    p.add_argument("--mnist-run", help="score this run instead of training one")
    p.add_argument("--cifar-run", help="score this run instead of training one")
    p.add_argument("--mnist-epochs", type=int, default=1)
    p.add_argument("--mnist-train", type=int, default=60000)
    p.add_argument("--mnist-lr", type=float, default=1e-3)
    p.add_argument("--mnist-d", type=int, help="target width (default: the paper's 1024)")
    p.add_argument("--cifar-model", default="cnn", choices=["cnn", "mlp", "vgg", "resnet20"])
    p.add_argument("--cifar-d", type=int, help="target width (default: the paper's)")
    p.add_argument("--cifar-epochs", type=int, default=2)
    p.add_argument("--cifar-train", type=int, default=20000)
    p.add_argument("--cifar-lr", type=float, default=1e-3)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "early_exit_cpu"))
    args = p.parse_args()
    root = datasets_root(args.data)
    given = {"MNIST MLP": args.mnist_run, f"CIFAR-10 {args.cifar_model.upper()}": args.cifar_run}
    results, lines = {}, []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    for name, (config, overrides) in experiments(args, root).items():
        begin = time.perf_counter()
        if given[name]:
            run_dir = Path(given[name])
        else:
            cfg = load_config(REPO / config, overrides)
            print(f"== training {name}: {config} {' '.join(overrides)}", flush=True)
            run_dir = train(cfg).run_dir
        trained_s = time.perf_counter() - begin
        result = evaluate_thresholds(run_dir, THRESHOLDS)
        final = json.loads((run_dir / "summary.json").read_text())["final"]
        exits = " ".join(f"{k}={v:.4f}" for k, v in final.items() if k.startswith("exit_"))
        cfg = load_config(run_dir / "config.yaml")
        say(f"\n{name}: {run_dir} (step {result['step']}, {result['test_samples']} test inputs; "
            f"trained {final['epoch']} epoch(s); test accuracy per exit {exits})")
        say(f"model {cfg.model.name} d={cfg.model.d or 'paper'} ({len(result['costs']['f'])} blocks), "
            f"{cfg.data.limit_train or 'all'} training samples, batch {cfg.data.batch_size}, Adam lr {cfg.optim.lr:g}, "
            f"trainer {cfg.train.trainer}")
        say(f"FLOPs per input: f {result['costs']['f']}, exit heads {result['costs']['head']}, "
            f"plain last-exit path {result['costs']['last_exit_only']:,}")
        say(format_tradeoff(result["rows"]))
        best = equal_accuracy(result["rows"])
        n = len(result["costs"]["f"])
        if best and best["blocks_per_input"] < n:
            say(f"at equal accuracy ({best['accuracy']:.4f} >= last exit {result['rows'][-1]['accuracy']:.4f}): "
                f"threshold {best['threshold']}, {best['blocks_per_input']:.3f} of {n} blocks per input "
                f"({1 - best['blocks_per_input'] / n:.1%} fewer blocks); FLOPs {best['compute_vs_last_exit']:.3f} "
                f"of the plain last-exit path ({abs(1 - best['compute_vs_last_exit']):.1%} "
                f"{'fewer' if best['compute_vs_last_exit'] < 1 else 'more'}: every exit read on the way costs its "
                f"bridge and decoders)")
        else:
            say("no threshold answers any input early at the last exit's accuracy")
        results[name] = {**result, "summary_final": final, "equal_accuracy": best, "seconds": trained_s}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=1))
    out.with_suffix(".txt").write_text("\n".join(lines) + "\n")
    print(f"\nsaved {out.with_suffix('.txt')} and .json")
