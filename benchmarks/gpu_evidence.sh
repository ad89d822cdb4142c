#!/usr/bin/env bash
# GPU evidence in at most 8 minutes on one GPU, every output under OUT:
#   1. the throughput table (benchmarks/gpu_throughput.py: BP twin, al_local, Ray over the object store and
#      over RDT, each step option; transfer per transport), cut at THROUGHPUT_BUDGET_S seconds of rows
#   2. CIFAR-10 CNN AL through Ray (4 blocks on the one GPU, fastest settings) for ACC_BUDGET_S seconds,
#      then its BP twin with the same step options for as long: the test accuracy of every epoch
#
#   bash benchmarks/gpu_evidence.sh --data CIFAR10_PARQUET --out OUT [--wheels RAY_WHEELS] [--cpu-dry-run]
#
# --wheels: a folder of Ray wheels for this machine's Python, installed with `pip --no-index` into
#   OUT/site when `import ray` fails (a GPU machine without Ray and without a network).
# --cpu-dry-run: the same steps, tiny and on the CPU (gloo between the actors), to prove the script.
# The package itself runs from this checkout (PYTHONPATH), nothing else is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
data="" out="" wheels="" dry=0
while [ $# -gt 0 ]; do
  case $1 in
    --data) data=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --wheels) wheels=$2; shift 2 ;;
    --cpu-dry-run) dry=1; shift ;;
    *) echo "gpu_evidence: unknown argument $1" >&2; exit 2 ;;
  esac
done
[ -n "$data" ] && [ -n "$out" ] || { echo "gpu_evidence: --data DIR and --out DIR are required" >&2; exit 2; }
ls "$data"/train-*.parquet >/dev/null 2>&1 || { echo "gpu_evidence: no train-*.parquet in $data" >&2; exit 2; }
mkdir -p "$out"
out=$(cd "$out" && pwd) data=$(cd "$data" && pwd)
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 RAY_AL_CACHE="$out/cache"
exec > >(tee "$out/evidence.log") 2>&1
start=$(date +%s)
say() { echo "== $(( $(date +%s) - start ))s: $*"; }

if ! "$py" -c "import ray" 2>/dev/null; then
  [ -n "$wheels" ] || { echo "gpu_evidence: Ray is not installed and no --wheels folder was given" >&2; exit 2; }
  say "installing Ray from $wheels (no index)"
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$out/site" "$wheels"/*.whl
  export PYTHONPATH="$out/site" PATH="$out/site/bin:$PATH"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
"$py" -c "import torch, ray, ray_al; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), \
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'ray', ray.__version__)" \
  | tee "$out/env.txt"

if [ $dry = 1 ]; then
  bench_args=(--quick --models mlp --options bf16 --batches 16)
  budget=${ACC_BUDGET_S:-60} epochs=2
  fast=(ray.num_gpus_per_block=0 ray.tensor_transport=gloo train.precision=bf16 train.channels_last=true
        data.limit_train=640 data.limit_test=200 train.device=cpu train.threads=1 model.d=32)
else
  bench_args=(--budget-s "${THROUGHPUT_BUDGET_S:-150}")
  budget=${ACC_BUDGET_S:-100} epochs=50  # cut by the time budget: as many epochs as fit
  # fastest settings (override with FAST="..."): all blocks on the GPU, RDT (auto: cuda_ipc), bf16, NHWC, fused Adam
  read -r -a fast <<< "${FAST:-ray.num_gpus_per_block=0.25 ray.tensor_transport=auto train.precision=bf16 \
train.channels_last=true train.adam=fused train.pin_memory=true train.device=cuda}"
fi

say "throughput table"
"$py" -m benchmarks.gpu_throughput --out "$out" "${bench_args[@]}" || echo "gpu_evidence: some rows failed (see the table)"

common=(data.path="$data" data.limit_train=null data.limit_test=null optim.schedule=constant
        train.epochs=$epochs train.log_every_s=30 checkpoint.enabled=false log.tensorboard=false run_dir="$out/runs")
for variant in al bp; do
  say "CIFAR-10 CNN, $variant, ${budget}s"
  set +e  # the budget ends the run (SIGTERM: a clean stop after the epochs it finished)
  timeout --signal=TERM --kill-after=30 "$budget" "$py" -m ray_al train "configs/quick/cifar10_cnn_$variant.yaml" \
    "${common[@]}" train.trainer=$variant name="cnn-$variant" "${fast[@]}"
  set -e
done

say "accuracy per epoch"
"$py" - "$out" <<'PY' | tee "$out/accuracy.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
env = (out / "env.txt").read_text().strip()
print(f"CIFAR-10 CNN, {env}")
for variant in ("al", "bp"):
    path = out / "runs" / f"cnn-{variant}" / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    print(f"{variant}: {len(records)} epoch(s)")
    for r in records:
        print(f"  epoch {r['epoch']}: test_acc {r['test_acc']:.4f}  {r['samples_per_s']:,.0f} samples/s  "
              f"train {r['train_time_s']:.1f}s")
PY
rm -rf "$out/cache" "$out/site"
say "done; everything is in $out"
