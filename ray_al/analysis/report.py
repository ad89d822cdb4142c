"""`ray-al report RUN_DIR...`: runs -> a Markdown report with the paper's figures beside ours.

Sections: accuracy in the layout of the paper's Tables 1-3 (methods as rows, models as columns; the last
and the best epoch of each run; every setting that differs from the cell's paper config named, paper.deviations),
early-exit accuracy of every block, class-distance metafeatures (paper Table 4), t-SNE of the
paper's layers (Figures 3-4, BP and AL side by side) and training curves. Accuracies come
from each run's metrics.jsonl; distances and t-SNE need the run's newest checkpoint and its
dataset (`--data cifar10=/data/cifar10` where the run's relative path does not resolve from here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ray_al.analysis.features import (
    block_count_of,
    class_distances,
    layer_names,
    model_features,
    paper_layers,
    sample_indices,
    tsne_figure,
)
from ray_al.analysis.paper import (
    NAMES,
    PAPER_EPOCHS,
    RESULTS,
    TABLE4,
    TABLE4_LAYER,
    TABLES,
    dataset_key,
    deviations,
    format_deviations,
    method,
    paper_result,
)
from ray_al.config import Config, apply_overrides, config_from_dict, read_yaml
from ray_al.core import record
from ray_al.core.target_path import format_separability
from ray_al.errors import ConfigError, RayALError
from ray_al.inference.early_exit import DEFAULT_THRESHOLDS, format_tradeoff, measure_tradeoff
from ray_al.run.outputs import refuse_inside_a_run

Log = Callable[[str], None]


@dataclass
class Run:
    path: Path
    cfg: Config
    history: list[dict]
    label: str = ""
    model: object = None          # list[ALBlock] or the BP twin, once loaded
    features: dict = field(default_factory=dict)  # layer -> class distances
    tsne: dict = field(default_factory=dict)      # layer -> features of the paper's t-SNE layers
    labels: torch.Tensor | None = None
    note: str = ""                # why distances / t-SNE are missing
    early_exit: dict = field(default_factory=dict)  # AL: the early-exit trade-off on the test split

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}

    @property
    def method(self) -> str:
        return method(self.cfg)

    @property
    def dataset(self) -> str:
        return dataset_key(self.cfg) or self.cfg.data.name or self.cfg.data.source

    @property
    def cell(self) -> tuple:
        m = self.cfg.model
        return (self.dataset, m.name, m.d, m.depth, m.act)


def read_run(path: Path) -> Run:
    path = Path(path)
    if not (path / "config.yaml").is_file():
        raise ConfigError(f"not a run folder (no config.yaml): {path}")
    cfg = config_from_dict(read_yaml(path / "config.yaml"))
    history = []
    metrics = path / "metrics.jsonl"
    if metrics.is_file():
        for n, line in enumerate(metrics.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    history.append(json.loads(line))
                except ValueError:
                    raise ConfigError(f"{metrics}: line {n} is not JSON") from None
    return Run(path, cfg, history)


def _labels(runs: list[Run]) -> None:
    """Short unique names: the run folder, prefixed by its parent where two folders share a name."""
    names = [r.path.name for r in runs]
    for r in runs:
        r.label = r.path.name if names.count(r.path.name) == 1 else f"{r.path.parent.name}/{r.path.name}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def _marks(run: Run) -> str:
    """'*' on a run whose config differs from its cell's paper config (named under the table); '†' on a BP
    run of the authors' BP network (model.bp_baseline=authors); the twin is unmarked."""
    return ("*" if deviations(run.cfg) else "") + \
        ("†" if run.method == "bp" and run.cfg.model.bp_baseline == "authors" else "")


def _epochs(run: Run) -> str:
    return f"{run.final.get('epoch', 0)}/{run.cfg.train.epochs}"


def _final_and_best(run: Run) -> tuple[dict, dict]:
    """The last evaluated epoch and the best one (the earliest of equals); {} and {} without an evaluation."""
    evaluated = [h for h in run.history if h.get("test_acc") is not None]
    if not evaluated:
        return {}, {}
    return evaluated[-1], max(evaluated, key=lambda h: h["test_acc"])


def _ours(runs: list[Run], which: str) -> str:
    cells = []
    for r in runs:
        final, best = _final_and_best(r)
        if which == "final":
            cells.append(f"{_pct(final.get('test_acc'))}{_marks(r)} ({_epochs(r)})")
        else:
            same = not best or best["test_acc"] == final["test_acc"]
            cells.append("= final" if same else f"{_pct(best['test_acc'])}{_marks(r)} (epoch {best['epoch']})")
    return "; ".join(cells) or "-"


# -- sections -------------------------------------------------------------------------------
def accuracy_section(runs: list[Run]) -> list[str]:
    lines = ["## Test accuracy (%)", "",
             f"In the paper's layout (methods as rows, models as columns). Paper: Kao & Chen 2021, {PAPER_EPOCHS} "
             "epochs; it does not say whether it reports the last or the best epoch, so ours gives both: the last "
             "evaluated epoch (epochs done / planned) and the best one where it is another. A paper figure is "
             "never ours.", ""]
    cells = {}
    for r in runs:
        if paper_result(r.cfg) is not None:
            cells.setdefault((r.dataset, r.cfg.model.name), {}).setdefault(r.method, []).append(r)
    for ds, table in TABLES.items():
        models = [m for (d, m) in RESULTS if d == ds]
        shown = [r for m in models for by in [cells.get((ds, m), {})] for found in by.values() for r in found]
        if not shown:
            continue
        lines += [f"### {NAMES[ds]} (paper {table})", "",
                  "| method | " + " | ".join(NAMES[m] for m in models) + " |", "|---|" + "---|" * len(models)]
        for m in ("bp", "al"):
            found = [cells.get((ds, model), {}).get(m, []) for model in models]
            lines.append(f"| {m.upper()}, paper | " + " | ".join(f"{RESULTS[(ds, model)][m]:.1f}" for model in models)
                         + " |")
            for which in ("final", "best"):
                lines.append(f"| {m.upper()}, ours: {which} | " + " | ".join(_ours(f, which) for f in found) + " |")
        lines.append("")
        marked = [r for r in shown if deviations(r.cfg)]
        if marked:
            lines += ["\\* differs from the paper's config of its cell (configs/paper/), in:", ""]
            lines += [f"- {r.method.upper()} {NAMES[r.cfg.model.name]} `{r.label}`: "
                      + format_deviations(deviations(r.cfg)) for r in marked] + [""]
        lines += ["BP ours: the BP twin (the AL prediction path trained end to end, as the paper words it); "
                  "† the authors' BP network instead (model.bp_baseline=authors).", ""]
    others = [r for r in runs if paper_result(r.cfg) is None]
    if others:
        lines += ["### Runs without a paper figure", "", "| run | data | model | trainer | epochs | test acc |",
                  "|---|---|---|---|---|---|"]
        for r in others:
            m = r.cfg.model
            desc = m.name + (f" depth={m.depth}" if m.depth else "") + (f" act={m.act}" if m.act else "")
            trainer = r.cfg.train.trainer + (f" ({m.bp_baseline})" if r.method == "bp" else "")
            lines.append(f"| {r.label} | {r.dataset} | {desc} | {trainer} | {_epochs(r)} | "
                         f"{_pct(r.final.get('test_acc'))} |")
        lines.append("")
    return lines


def exits_section(runs: list[Run]) -> list[str]:
    al = [r for r in runs if r.method == "al" and r.history]
    lines = ["## Early exits (%)", "",
             "Exit k predicts with h_1(...h_k(b_k(s_k))): every block can answer; the last exit is the paper's "
             "prediction.", ""]
    if not al:
        return lines + ["No AL run with an evaluated epoch.", ""]
    width = max(len(record.exits(r.final)) for r in al)
    lines += ["| run | data | model | epochs | " + " | ".join(f"exit {k}" for k in range(1, width + 1)) + " |",
              "|---|---|---|---|" + "---|" * width]
    for r in al:
        exits = [_pct(record.exits(r.final).get(k)) for k in range(1, width + 1)]
        lines.append(f"| {r.label} | {r.dataset} | {r.cfg.model.name} | {_epochs(r)} | " + " | ".join(exits) + " |")
    return lines + [""]


def tradeoff_section(runs: list[Run], out: Path) -> list[str]:
    """Answering at the first exit whose top softmax probability reaches a threshold: accuracy against
    blocks evaluated per input and FLOPs (`ray-al eval RUN --thresholds ...` prints the same)."""
    done = [r for r in runs if r.early_exit]
    if not done:
        return []
    lines = ["## Early-exit trade-off", "",
             "Each input is answered at the first exit whose top softmax probability reaches the threshold "
             "(else at the last); FLOPs per input are relative to the plain path f_1..f_N, b_N, h_N..h_1, and "
             "count every exit read on the way.", ""]
    for r in done:
        lines += [f"### {r.label}", "", "```", format_tradeoff(r.early_exit["rows"]), "```", ""]
    name = "early-exit.png"
    tradeoff_figure(done, out / name)
    return lines + [f"![early-exit trade-off]({name})", ""]


def tradeoff_figure(runs: list[Run], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, xlabel in ((axes[0], "blocks_per_input", "blocks evaluated per input"),
                            (axes[1], "compute_vs_last_exit", "FLOPs per input / plain last-exit path")):
        for r in runs:
            rows = [row for row in r.early_exit["rows"] if not isinstance(row["threshold"], str)]
            line, = ax.plot([row[key] for row in rows], [row["accuracy"] for row in rows], marker="o", label=r.label)
            ax.axhline(r.early_exit["rows"][-1]["accuracy"], color=line.get_color(), linestyle=":", linewidth=1)
            for row in rows:
                ax.annotate(f"{row['threshold']:g}", (row[key], row["accuracy"]), fontsize=6)
        ax.set(xlabel=xlabel, ylabel="test accuracy")
        _readable_range(ax, min_span=0.05)
    axes[0].set_title("accuracy vs blocks (dotted: last exit only)")
    axes[1].set_title("accuracy vs compute")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _readable_range(ax, min_span: float) -> None:
    """An accuracy axis spans at least `min_span` (matplotlib would stretch 0.8734-0.8736 over the whole
    height, with six-decimal ticks, so a 0.0002 change looks like a cliff), within [0, 1]."""
    from matplotlib.ticker import FormatStrFormatter

    low, high = ax.get_ylim()
    if high - low < min_span:
        middle = (low + high) / 2
        low, high = max(0.0, middle - min_span / 2), min(1.0, middle + min_span / 2)
        ax.set_ylim(low, high)
    ax.yaxis.set_major_formatter(FormatStrFormatter("%.3f"))


def _pairs(runs: list[Run]) -> list[tuple[Run | None, Run | None]]:
    """(BP, AL) runs of the same cell side by side; a run without a partner stands alone."""
    from itertools import zip_longest
    by_cell: dict[tuple, dict[str, list[Run]]] = {}
    for r in runs:
        by_cell.setdefault(r.cell, {"bp": [], "al": []})[r.method].append(r)
    return [pair for c in by_cell.values() for pair in zip_longest(c["bp"], c["al"])]


def distance_section(runs: list[Run]) -> list[str]:
    lines = ["## Class distances (paper Table 4)", "",
             "intra = mean over classes of the mean pairwise distance inside a class; inter = mean pairwise "
             "distance between class centroids; ratio = inter / intra (higher: classes better separated). "
             "Layers of the prediction path f_1..f_N, b_N, h_N..h_1: s_i after f_i, bridge = b_N(s_N), "
             "dec_k after h_k, out = logits; AL's out_sigmoid = sigmoid(out), the output of the authors' AL "
             "inference. The paper's Table 4 gives one value per model and does not say at which layer; we infer the "
             "output layer from the magnitudes (BP's tens to hundreds fit logits, AL's values below 1.2 fit "
             "sigmoid-bounded points), so ours beside it are measured at BP `out` and AL `out_sigmoid`. The layer "
             "is our inference, not the paper's statement.", ""]
    for bp, al in _pairs(runs):
        shown = [r for r in (bp, al) if r is not None]
        head = shown[0]
        who = " vs ".join(f"{r.method.upper()} {r.label}" for r in shown)
        lines += [f"### {head.dataset} {head.cfg.model.name}: {who}", ""]
        missing = [f"{r.label}: {r.note}" for r in shown if r.note]
        lines += [f"- skipped {m}" for m in missing] + ([""] if missing else [])
        ready = [r for r in shown if r.features]
        if not ready:
            continue
        n = len(ready[0].labels)
        lines += [f"{n} test samples (a seeded random draw; {n // max(1, len(ready[0].labels.unique()))} per class "
                  "on average).", ""] + table4_lines(ready)
        lines += ["| layer | " + " | ".join(f"{r.method.upper()} {k}" for r in ready
                                          for k in ("intra", "inter", "ratio")) + " |",
                  "|---|" + "---|" * (3 * len(ready))]
        for layer in ready[0].features:
            cells = []
            for r in ready:
                d = r.features.get(layer)
                cells += ["-"] * 3 if d is None else [f"{d['intra']:.3f}", f"{d['inter']:.3f}", f"{d['ratio']:.3f}"]
            lines.append(f"| {layer} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def table4_lines(runs: list[Run]) -> list[str]:
    """The paper's Table 4 row of each run's cell beside ours at the matching layer (TABLE4_LAYER)."""
    rows, notes = [], []
    for r in runs:
        paper = TABLE4.get((r.dataset, r.cfg.model.name), {}).get(r.method)
        ours = r.features.get(TABLE4_LAYER[r.method])
        if paper and ours:
            rows.append(f"| {r.method.upper()} {r.label}{_marks(r)} | {TABLE4_LAYER[r.method]} | "
                        f"{paper[0]:.2f} | {ours['inter']:.2f} | {paper[1]:.2f} | {ours['intra']:.2f} | "
                        f"{paper[2]:.2f} | {ours['ratio']:.2f} | {_epochs(r)} |")
            if deviations(r.cfg):
                notes.append(f"- \\* `{r.label}` differs from the paper's config in: "
                             + format_deviations(deviations(r.cfg)))
    if not rows:
        return []
    return ["Paper Table 4 (200 epochs) beside ours, at the layer inferred above:", "",
            "| run | layer | inter paper | inter ours | intra paper | intra ours | ratio paper | ratio ours | epochs |",
            "|---|---|---|---|---|---|---|---|---|", *rows, "", *notes, *([""] if notes else [])]


# -- figures --------------------------------------------------------------------------------
def curves_figure(run: Run, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in run.history]
    depths = record.indexed_keys(run.history, "sep_acc_")
    fig, axes = plt.subplots(1, 3 if depths else 2, figsize=(15 if depths else 10, 4))
    ax_loss, ax_acc = axes[0], axes[1]
    for key in sorted({k for h in run.history for k in record.losses(h)}):
        ax_loss.plot(epochs, [h.get(key, float("nan")) for h in run.history], marker="o", label=key)
    ax_loss.set(xlabel="epoch", ylabel="mean training loss", yscale="log", title=f"{run.label}: losses per block")
    ax_loss.legend(fontsize=7)
    ax_acc.plot(epochs, [h.get("test_acc", float("nan")) for h in run.history], marker="o", label="test acc", color="k")
    for k in record.indexed_keys(run.history, "exit_"):  # markers: a one-epoch run has one point per line
        ax_acc.plot(epochs, [record.exits(h).get(k, float("nan")) for h in run.history], linestyle="--", marker=".",
                    label=f"exit {k}")
    ax_acc.set(xlabel="epoch", ylabel="test accuracy", title="test accuracy per epoch")
    _readable_range(ax_acc, min_span=0.05)
    ax_acc.legend(fontsize=7)
    if depths:  # when the prediction path comes alive: class targets decodable at each depth
        ax_sep, ax_dist = axes[2], axes[2].twinx()
        for k in depths:
            line, = ax_sep.plot(epochs, [h.get(record.sep_acc_key(k), float("nan")) for h in run.history],
                                marker="o", label=f"depth {k}: decoded")
            ax_dist.plot(epochs, [h.get(record.sep_dist_key(k), float("nan")) for h in run.history], linestyle=":",
                         marker=".", color=line.get_color())
        ax_sep.set(xlabel="epoch", ylabel="class targets decoded to their class (solid)", ylim=(0, 1.05),
                   title="target separability per depth")
        ax_dist.set_ylabel("mean pairwise distance of class targets (dotted)")
        ax_sep.legend(fontsize=7)
    if len(epochs) <= 20:  # whole epochs on the x axis (one epoch showed 0.96 .. 1.04)
        for ax in axes:
            ax.set_xticks(epochs)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


# -- models and features --------------------------------------------------------------------
def load_model(run_dir: Path, overrides: list[str]):
    """The run's newest checkpoint as a list of ALBlocks (AL) or the BP twin (models.BPTwin)."""
    from ray_al.run.factory import load_trainer
    _, trainer, _ = load_trainer(run_dir, overrides, device="cpu")
    return trainer.model


def analyse(run: Run, overrides: list[str], samples: int, datasets: dict, log: Log,
            loader: Callable = load_model, tsne_samples: int = 500) -> None:
    """Loads the run's model and data; computes class distances of every path layer on `samples`
    test samples (all of them when there are fewer) and keeps the first `tsne_samples` of the raw
    inputs and of the paper's t-SNE layers."""
    try:
        model = loader(run.path, list(overrides))
        values = apply_overrides(run.cfg.to_dict(), list(overrides))
        cfg = config_from_dict(values)
        key = json.dumps(values["data"], sort_keys=True)
        if key not in datasets:
            from ray_al.data.datasets import load_dataset
            datasets[key] = load_dataset(cfg.data)
        data = datasets[key]
    except RayALError as e:
        run.note = str(e)
        log(f"report: {run.label}: {e}")
        return
    idx = sample_indices(len(data.test_x), samples)
    x, y = data.test_x[idx], data.test_y[idx]
    log(f"report: {run.label}: class distances of every layer on {len(idx):,} test samples"
        + (" (--samples 10000: the paper's whole test set)" if len(idx) < len(data.test_x) else ""))
    n = block_count_of(model)
    names = layer_names(n) + (["out_sigmoid"] if isinstance(model, list) else [])
    tsne_layers = paper_layers(run.cfg.model.name, n)
    run.features, run.tsne = {}, {"raw data": x[:tsne_samples]}
    for name in names:  # one layer at a time: at 10,000 samples a wide layer is gigabytes
        f = model_features(model, x, [name])[name]
        run.features[name] = class_distances(f, y)
        if name in tsne_layers:
            run.tsne[name] = f[:tsne_samples]
    run.model, run.labels = model, y
    if isinstance(model, list):
        run.early_exit = measure_tradeoff(model, data.test_x, data.test_y, DEFAULT_THRESHOLDS)


def tsne_section(runs: list[Run], out: Path, samples: int, log: Log) -> list[str]:
    lines = ["## t-SNE (paper Figures 3-4)", "",
             "The raw test images first, then the paper's layers (MLP: hidden 2 = s2, hidden 4 = bridge, output; "
             "CNN: hidden 4 = s2, hidden 8 = s4, hidden 12 = dec3), BP above AL, test samples coloured by class.", ""]
    for bp, al in _pairs(runs):
        rows = [(f"{r.method.upper()} {r.label}", {k: v[:samples] for k, v in r.tsne.items()})
                for r in (bp, al) if r is not None and r.features]
        for _, panels in rows[1:]:  # the raw data once, first panel of the first row (as the paper's figures)
            panels["raw data"] = None
        if not rows:
            continue
        labels = next(r for r in (bp, al) if r is not None and r.features).labels[:samples]
        head = rows[0][0].split(" ", 1)[1]
        name = f"tsne-{_slug(head)}.png"
        log(f"report: t-SNE of {', '.join(r[0] for r in rows)}")
        tsne_figure(rows, labels, out / name)
        lines += [f"![t-SNE {head}]({name})", ""]
    return lines


def parse_data_paths(items: list[str]) -> dict[str, str]:
    """["mnist=/data/mnist", ...] -> {"mnist": "/data/mnist"}: where each dataset lives on this machine."""
    paths = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--data '{item}' is not of the form NAME=PATH (e.g. cifar10=/data/cifar10)")
        paths[name.strip().lower()] = path
    return paths


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any work, to write over a file or an earlier report unless asked, and ever into a
    run folder (its files are the run's)."""
    refuse_inside_a_run(out)  # the check every command that writes shares (run/outputs.py)
    if overwrite:
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file (a report is a folder: report.md and its figures): "
                          f"choose another --out, or add --overwrite to replace it")
    if (out / "report.md").exists():
        raise ConfigError(f"--out {out} already holds a report: choose another --out, or add --overwrite")


def write_report(run_dirs: list[str | Path], out: str | Path, overrides: list[str] = (), samples: int = 2000,
                 tsne_samples: int = 500, log: Log = print, loader: Callable = load_model,
                 data_paths: dict[str, str] | None = None, overwrite: bool = False) -> Path:
    """`overrides` apply to every run's config; `data_paths` set data.path for the runs of one dataset;
    `overwrite`: replace an earlier report (or a file) at `out`."""
    out = Path(out)
    if not run_dirs:
        raise ConfigError("report needs at least one run folder")
    check_out(out, overwrite)
    runs = [read_run(Path(p)) for p in run_dirs]
    _labels(runs)
    if overwrite and out.is_file():
        out.unlink()
    out.mkdir(parents=True, exist_ok=True)
    datasets: dict = {}
    for r in runs:
        path = (data_paths or {}).get(r.dataset)
        analyse(r, list(overrides) + ([f"data.path={path}"] if path else []), samples, datasets, log, loader,
                tsne_samples)
    lines = ["# ray_al report", "", "Runs: " + ", ".join(f"`{r.label}`" for r in runs), ""]
    lines += accuracy_section(runs) + exits_section(runs) + tradeoff_section(runs, out) + distance_section(runs)
    lines += tsne_section(runs, out, tsne_samples, log)
    lines += ["## Training curves", ""]
    for r in runs:
        if not r.history:
            lines += [f"- {r.label}: no evaluated epoch yet", ""]
            continue
        name = f"curves-{_slug(r.label)}.png"
        curves_figure(r, out / name)
        lines += [f"### {r.label}", "", f"![curves {r.label}]({name})", ""]
        seps = [f"{h['epoch']}: `{format_separability(h)}`" for h in r.history if format_separability(h)]
        if seps:
            lines += ["Target separability (class targets decoded back to their class, depth 1..N) after epoch "
                      + ", ".join(seps), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    log(f"report: {path}")
    return path
