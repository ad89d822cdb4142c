"""Light bridges (model.bridge), the study: what a step costs, what accuracy it keeps, and time to accuracy.

    python -m benchmarks.light_bridges cost [--models ...] [--bridges ...]          # light_bridges_cost.py
    python -m benchmarks.light_bridges accuracy --data DIR --case cnn --variant pooled --steps 400 --out OUT
    python -m benchmarks.light_bridges report --cost COST.json [MORE.json ...] --curves OUT [--out PREFIX]

`report` joins the two: for every (case, variant) curve in OUT (light_bridges_accuracy.py's .jsonl files),
the last exit's validation and test accuracy at each evaluated step, the gap to the BP twin (the paper's dense
head) at equal steps, and the time to 90% of that twin's final test accuracy: steps x the one-thread step time
measured by `cost` (AL: the blocks one after another; BP: the twin), and steps x the critical path (slowest
block + one measured hop) of a simulated N-device pipeline, labelled simulated.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

BP = "bp"  # the BP twin with the paper's dense head: the standard baseline every gap is measured against


def read_curves(folder: Path) -> dict[str, list[dict]]:
    curves = {}
    for path in sorted(folder.glob("*.jsonl")):
        points = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        curves[path.stem] = sorted(points, key=lambda p: p["step"])
    return curves


def step_costs(cost: dict, model: str, variant: str) -> dict | None:
    """Seconds per step on one thread (`sequential`), on the simulated pipeline's critical path, and of the BP
    twin (dense head) timed in turn with them (`bp`): ratios use that one, so a load swing falls on both."""
    bridge = "dense" if variant == BP else variant.removeprefix("bp_")
    row = next((r for r in cost["rows"] if r["model"] == model and r["bridge"] == bridge), None)
    if row is None:
        return None
    bp = row["bp_dense"]["step_s"]
    if variant.startswith(BP):
        twin = row["bp_dense"] if variant == BP else row["bp"]
        return {"sequential": twin["step_s"], "critical": twin["step_s"], "bp": bp}
    slowest = max(b["step_s"] for b in row["blocks"])
    return {"sequential": sum(b["step_s"] for b in row["blocks"]), "critical": slowest + row["hop_s"], "bp": bp}


def first_step_at(curve: list[dict], threshold: float) -> int | None:
    return next((p["step"] for p in curve if p["test_acc"] >= threshold), None)


def report(cost: dict, curves: dict[str, list[dict]]) -> str:
    lines = []
    for case in dict.fromkeys(name.split("-")[0] for name in curves):
        mine = {name.split("-", 1)[1]: c for name, c in curves.items() if name.split("-")[0] == case}
        bp = mine.get(BP, [])
        bp_at = {p["step"]: p["test_acc"] for p in bp}
        target = 0.9 * bp[-1]["test_acc"] if bp else None
        bp_steps = first_step_at(bp, target) if bp else None
        lines += [f"== CIFAR-10 {case}: last-exit accuracy (val / test) at each evaluated step; gap = test minus the "
                  f"BP twin's (dense head) at the same step, points",
                  f"   90% of the BP twin's final test accuracy ({bp[-1]['test_acc']:.4f} at step {bp[-1]['step']}): "
                  f"{target:.4f}" if bp else "   (no BP twin curve: no time to accuracy)"]
        rows = []
        for variant, curve in sorted(mine.items(), key=lambda kv: (kv[0] != BP, kv[0])):
            evals = "  ".join(f"{p['step']}: {p.get('val_acc', float('nan')):.4f}/{p['test_acc']:.4f}"
                              + (f" ({100 * (p['test_acc'] - bp_at[p['step']]):+.1f})"
                                 if p["step"] in bp_at and variant != BP else "") for p in curve)
            tta = ""
            costs = step_costs(cost, case, variant)
            steps = first_step_at(curve, target) if target else None
            if steps is not None and costs:
                seq, crit = steps * costs["sequential"], steps * costs["critical"]
                tta = f"  | 90%: step {steps}, one thread {seq:.0f}s, simulated critical path {crit:.0f}s"
                if bp_steps and variant != BP:  # against BP's steps x BP's step timed beside this variant's
                    bp_s = bp_steps * costs["bp"]
                    tta += f" ({seq / bp_s:.2f}x / {crit / bp_s:.2f}x BP's {bp_s:.0f}s)"
            elif target:
                tta = "  | 90%: not reached by the last evaluation"
            rows.append(f"   {variant:<10} {evals}{tta}")
        lines += rows + [""]
    lines.append("one thread: steps x the sequential step (AL: all blocks one after another) measured by the cost "
                 "table; simulated critical path: steps x (slowest block + one measured hop), an N-device pipeline "
                 "that was not run; BP's critical path is its own step. Warm-up (300 target-path steps, about a "
                 "second) and evaluation are not counted.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("cost", "accuracy", "report"):
        print(__doc__)
        return 2
    command, rest = argv[0], argv[1:]
    if command == "cost":
        from benchmarks.light_bridges_cost import main as cost_main
        return cost_main(rest)
    if command == "accuracy":
        from benchmarks.light_bridges_accuracy import main as accuracy_main
        return accuracy_main(rest)
    import argparse
    p = argparse.ArgumentParser(prog="light_bridges report")
    p.add_argument("--cost", required=True, nargs="+", help="the cost tables' .json files")
    p.add_argument("--curves", required=True, help="the accuracy runs' output folder")
    p.add_argument("--out", help="write PREFIX.txt and PREFIX.csv")
    args = p.parse_args(rest)
    curves = read_curves(Path(args.curves))
    cost = {"rows": [row for path in args.cost for row in json.loads(Path(path).read_text())["rows"]]}
    text = report(cost, curves)
    print(text)
    if args.out:
        Path(args.out).with_suffix(".txt").write_text(text + "\n")
        keys = ["case", "variant", "step", "seconds", "val_acc", "test_acc",
                *sorted({k for c in curves.values() for p in c for k in p if k.startswith(("exit_", "val_exit_"))})]
        rows = [",".join(keys)]
        for name, curve in curves.items():
            case, variant = name.split("-", 1)
            rows += [",".join(str({"case": case, "variant": variant, **p}.get(k, "")) for k in keys) for p in curve]
        Path(args.out).with_suffix(".csv").write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
