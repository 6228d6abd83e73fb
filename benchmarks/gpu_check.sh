#!/usr/bin/env bash
# The GPU figures in one call. Run from the repository root on a machine with NVIDIA GPUs and
# the backends installed with CUDA support:
#   1. parity of the port on the GPU (tests/test_parity.py, tests/test_train_reference.py);
#   2. inference of the b1 backbone at 512x512 and 1024x2048, whole image and sliding window,
#      against KerasHub's MiT-B1 and the original code (benchmarks/bench.py, three rounds);
#   3. training throughput of the b1 segmenter at 512x512 in float32 and mixed precision;
#   4. data-parallel training on every GPU (JAX and TensorFlow): the one-device equality tests
#      of tests/test_distribution.py, and seconds per step on all GPUs against one.
# Each step writes its JSON or log into $OUT; a failed step is recorded and the others still
# run. The summary table goes to $OUT/summary.md; the exit status is that of the worst step.
#
#   bash benchmarks/gpu_check.sh
#   BACKENDS="jax torch" OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#   SMOKE=1 bash benchmarks/gpu_check.sh   # the script itself at toy sizes, on any machine
set -uo pipefail
PYTHON=${PYTHON:-python}
BACKENDS=${BACKENDS:-"tensorflow jax torch"}
OUT=${OUT:-benchmarks/results/gpu_$(date +%Y-%m-%d)}
SMOKE=${SMOKE:-0}
mkdir -p "$OUT"
: > "$OUT/steps.tsv"

if [ "$SMOKE" = 1 ]; then
  MODEL=hrvit_tiny SIZES="64 64x128" WINDOW="64 48" TRAIN_SIZE=64 BATCH=2 ROUNDS=1 REPEATS=1
  PRECISIONS="float32 mixed_bfloat16" ORIGINAL="" DP_STEPS=2
  PARITY=(tests/test_parity.py -k "models_take_uint8")
else
  MODEL=hrvit_b1 SIZES="512 1024x2048" WINDOW="1024 768" TRAIN_SIZE=512 BATCH=8 ROUNDS=3
  REPEATS=7 PRECISIONS="float32 mixed_float16 mixed_bfloat16" ORIGINAL=--original DP_STEPS=20
  PARITY=(tests/test_parity.py tests/test_train_reference.py)
  if ! nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv \
      > "$OUT/gpus.csv" 2> "$OUT/gpus.log"; then
    echo "gpu_check.sh: nvidia-smi failed, so no NVIDIA GPU is visible here (SMOKE=1 runs the" \
      "script at toy sizes without one)." >&2
    exit 2
  fi
fi

GPUS='
import os, keras
backend = keras.backend.backend()
if backend == "torch":
    import torch
    count = torch.cuda.device_count()
elif backend == "jax":
    import jax
    count = sum(device.platform == "gpu" for device in jax.devices())
else:
    import tensorflow as tf
    count = len(tf.config.list_physical_devices("GPU"))
print(count, "GPU(s) seen by", backend)
raise SystemExit(0 if count or os.environ["SMOKE"] == "1" else 1)
'

step() {  # step NAME COMMAND...: runs COMMAND with its output in $OUT/NAME.log, records status
  local name=$1
  shift
  echo "== $name"
  "$@" > "$OUT/$name.log" 2>&1
  local status=$?
  printf '%s\t%s\n' "$name" "$status" >> "$OUT/steps.tsv"
  [ "$status" = 0 ] || echo "   failed ($status), see $OUT/$name.log"
}

for backend in $BACKENDS; do
  # The GPUs this backend sees: none means a CPU-only build of it (a failed step, but in SMOKE).
  step "devices_$backend" env KERAS_BACKEND="$backend" SMOKE="$SMOKE" "$PYTHON" -c "$GPUS"
  # Parity in full float32: TF32 matmuls and convolutions (the default of cuDNN, and of JAX's
  # matmuls on Ampere and later) round inputs to 10-bit mantissas, far above the 1e-5 tolerance.
  step "parity_$backend" env KERAS_BACKEND="$backend" NVIDIA_TF32_OVERRIDE=0 \
    JAX_DEFAULT_MATMUL_PRECISION=highest "$PYTHON" -m pytest -q -p no:cacheprovider "${PARITY[@]}"
done

# shellcheck disable=SC2086  # the lists are meant to split into arguments
step inference "$PYTHON" benchmarks/bench.py --backends $BACKENDS --models "$MODEL" \
  --sizes $SIZES --window $WINDOW --modes default --peer $ORIGINAL --rounds "$ROUNDS" \
  --repeats "$REPEATS" --plot "$OUT/inference.png" --out "$OUT/inference.json"
# shellcheck disable=SC2086
step train "$PYTHON" benchmarks/bench.py --backends $BACKENDS --models "$MODEL" \
  --tasks segmenter --measure train --sizes "$TRAIN_SIZE" --batch "$BATCH" --modes default \
  --precisions $PRECISIONS --rounds "$ROUNDS" --repeats "$REPEATS" --out "$OUT/train.json"

for backend in $BACKENDS; do
  [ "$backend" = torch ] && continue  # data-parallel training is JAX's and TensorFlow's
  devices=$(grep -Eo '^[0-9]+ GPU' "$OUT/devices_$backend.log" | cut -d' ' -f1)
  if [ "${devices:-0}" -lt 2 ]; then
    printf '%s\t%s\n' "data_parallel_$backend" "skipped: ${devices:-no} GPU(s)" >> "$OUT/steps.tsv"
    continue
  fi
  step "data_parallel_equality_$backend" env KERAS_BACKEND="$backend" "$PYTHON" -m pytest -q \
    -p no:cacheprovider -m "slow or not slow" tests/test_distribution.py -k "$backend"
  for distribution in none data_parallel; do
    # The same batch per device: on all devices the global batch is BATCH times their number.
    batch=$BATCH
    [ "$distribution" = data_parallel ] && batch=$((BATCH * devices))
    step "data_parallel_${backend}_$distribution" env KERAS_BACKEND="$backend" "$PYTHON" -m \
      keras_hrvit.train segmentation --dataset shapes --image-size "$TRAIN_SIZE" \
      --train-images $((batch * DP_STEPS)) --no-validation --model "$MODEL" --num-classes 5 \
      --crop-size "$TRAIN_SIZE" --batch-size "$batch" --epochs 2 --steps-per-epoch "$DP_STEPS" \
      --distribution "$distribution" --no-tensorboard --verbose 2 --overwrite \
      --output-dir "$OUT/run_${backend}_$distribution"
  done
done

OUT="$OUT" "$PYTHON" - <<'EOF'
"""$OUT/summary.md from the steps' JSON and logs."""
import json
import os
import re

out = os.environ["OUT"]
lines = ["| step | status |", "|---|---|"]
steps = [line.rstrip("\n").split("\t") for line in open(os.path.join(out, "steps.tsv"))]
lines += [f"| {name} | {'ok' if status == '0' else status} |" for name, status in steps]
for name in ("inference", "train"):
    path = os.path.join(out, f"{name}.json")
    if not os.path.exists(path):
        continue
    results = json.load(open(path))
    lines += ["", f"{name}:", "", "| backend | model | size | precision | figure |", "|---|---|---|---|---|"]
    for r in results["rows"]:
        size = r["size"] if r.get("window", "whole") == "whole" else f"{r['size']} slide {r['window']}"
        figure = (
            f"{r['latency_ms']:.1f} ms" if "latency_ms" in r
            else f"{r['train_images_per_s']:.2f} img/s" if "train_images_per_s" in r
            else r.get("error", "?")
        )
        lines.append(f"| {r['backend']} | {r['model']} | {size} | {r['precision']} | {figure} |")
    for ratio in results.get("ratios", []):
        lines.append(f"- {ratio['backend']} {ratio['size']}: {ratio['speedup']:.2f}x faster than {ratio['against']}")
# Seconds per step of the second epoch (Keras's verbose=2 line), one device against all.
for name, _ in steps:
    match = re.fullmatch(r"data_parallel_(\w+)_(none|data_parallel)", name)
    log = os.path.join(out, f"{name}.log")
    if match and os.path.exists(log):
        timings = re.findall(r"(\d+(?:\.\d+)?)(m?s)/step", open(log).read())
        if timings:
            value, unit = timings[-1]
            lines.append(f"- {match[1]} {match[2]}: {float(value) / (1000 if unit == 'ms' else 1):.3f} s/step")
text = "\n".join(lines) + "\n"
with open(os.path.join(out, "summary.md.tmp"), "w") as f:
    f.write(text)
os.replace(os.path.join(out, "summary.md.tmp"), os.path.join(out, "summary.md"))
print(text)
EOF

worst=$(cut -f2 "$OUT/steps.tsv" | grep -E '^[0-9]+$' | sort -n | tail -n 1)
exit "${worst:-0}"
