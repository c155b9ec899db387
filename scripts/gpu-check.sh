#!/usr/bin/env bash
# GPU check for issue #6, to run on a machine with a CUDA device: the evaluation benchmark
# against PyTorch on the GPU, a 512 px / 500-evaluation run timed, and peak device memory
# (nvidia-smi sampled every 50 ms). Writes JSON and logs into $OUT (default docs/bench/gpu).
# Usage: scripts/gpu-check.sh [path/to/neural-style]
# The binary finds libtorch through its rpath (the venv's torch); elsewhere set LD_LIBRARY_PATH
# to a torch 2.11 lib folder.
set -uo pipefail
BIN=${1:-target/release/neural-style}
OUT=${OUT:-docs/bench/gpu}
mkdir -p "$OUT"
export NEURAL_STYLE_PYTHON=${NEURAL_STYLE_PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/device.txt"
W="$OUT/w.safetensors"
"$BIN" weights random --seed 0 --out "$W" >/dev/null
"$BIN" samples "$OUT/img" >/dev/null

sample() { # peak memory.used (MiB) while "$@" runs
    local log="$OUT/mem.$$"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$log" &
    local smi=$!
    "$@"
    local rc=$?
    kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
    echo "peak device memory (MiB, whole device): $(sort -n "$log" | tail -1)"
    rm -f "$log"
    return $rc
}

echo "== one evaluation vs PyTorch (cuda) =="
"$BIN" bench --device cuda --sizes 256,512,1024 --repeats 20 --warmup 5 --json >"$OUT/evaluation.json" || exit 1
echo "== 512 px, 500 evaluations, default settings (bf16 + channels-last, multi-scale) =="
sample "$BIN" run --local --device cuda --weights "$W" -c "$OUT/img/content.png" -s "$OUT/img/style.png" \
    -o "$OUT/512.png" --size 512 --iterations 500 --json >"$OUT/run-512-500.json"
python3 - "$OUT/run-512-500.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"512 px x 500 evaluations: {s['seconds']:.2f} s of optimisation ({s['precision']}, {s['device']}), "
      f"objective {s['initial_loss']:.3e} -> {s['total_loss']:.3e}")
PY
echo "== the same, single scale, fp32 =="
sample "$BIN" run --local --device cuda --precision fp32 --single-scale --weights "$W" -c "$OUT/img/content.png" \
    -s "$OUT/img/style.png" -o "$OUT/512-fp32.png" --size 512 --iterations 500 --json >"$OUT/run-512-500-fp32.json"
echo "== 2048 px, 20 evaluations (memory plan) =="
sample "$BIN" run --local --device cuda --weights "$W" -c "$OUT/img/content.png" -s "$OUT/img/style.png" \
    -o "$OUT/2048.png" --size 2048 --iterations 20 --single-scale --json >"$OUT/run-2048.json"
rm -f "$W"
