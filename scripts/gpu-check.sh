#!/usr/bin/env bash
# GPU check (issues #6 and #11), to run on a machine with a CUDA device: the evaluation
# benchmark against PyTorch on the GPU, the optimisation loop per evaluation against the bare
# evaluation (with host reads per evaluation), 512 px / 500-evaluation runs in process and
# through a warm daemon (same size twice, then a size it has not seen), 3840 px x 100, and
# peak device memory (nvidia-smi sampled every 50 ms). Writes JSON and logs into $OUT (default
# docs/bench/gpu). Each step has its own timeout; a failed step is reported and the rest run.
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
timeout 300 "$BIN" bench --device cuda --sizes 256,512,1024 --repeats 20 --warmup 5 --json >"$OUT/evaluation.json" || exit 1
echo "== the loop per evaluation vs the bare evaluation (fp32; L-BFGS m=100, m=5, Adam) =="
timeout 300 "$BIN" bench --loop --device cuda --sizes 256,512 --loop-evaluations 200 --json >"$OUT/loop.json" \
    || echo "loop bench failed"
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
echo "== warm daemon: 512 px x 500 twice, then a size it has not seen (cold: cuDNN autotune) =="
SOCK="$OUT/d.sock"
"$BIN" serve --device cuda --socket "$SOCK" --weights "$W" 2>"$OUT/daemon.log" &
DAEMON=$!
for _ in $(seq 60); do "$BIN" status --socket "$SOCK" >/dev/null 2>&1 && break; sleep 1; done
for run in warm-1:512 warm-2:512 cold:600; do
    name=${run%%:*}; size=${run##*:}
    timeout 300 "$BIN" run --socket "$SOCK" -c "$OUT/img/content.png" -s "$OUT/img/style.png" \
        -o "$OUT/daemon-$name.png" --size "$size" --iterations 500 --json >"$OUT/daemon-$name.json" \
        && python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(sys.argv[2], s['width'], 'x', s['height'], \
            f\"{s['seconds']:.2f} s, {s['evaluations']} evaluations, stop {s['stop_reason']}, loss {s['total_loss']:.4e}\")" \
            "$OUT/daemon-$name.json" "$name" || echo "daemon job $name failed"
done
"$BIN" stop --socket "$SOCK" >/dev/null 2>&1; wait "$DAEMON"
echo "== 3840 px, 100 evaluations (memory plan, default settings) =="
sample timeout 300 "$BIN" run --local --device cuda --weights "$W" -c "$OUT/img/content.png" -s "$OUT/img/style.png" \
    -o "$OUT/3840.png" --size 3840 --iterations 100 --json >"$OUT/run-3840-100.json" || echo "3840 px run failed"
echo "== 2048 px, 20 evaluations (memory plan) =="
sample "$BIN" run --local --device cuda --weights "$W" -c "$OUT/img/content.png" -s "$OUT/img/style.png" \
    -o "$OUT/2048.png" --size 2048 --iterations 20 --single-scale --json >"$OUT/run-2048.json"
rm -f "$W"
