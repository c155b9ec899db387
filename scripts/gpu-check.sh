#!/usr/bin/env bash
# GPU check (issue #11), one run on a machine with a CUDA device, every step under its own
# timeout and the whole under a deadline (a step that would start past it is skipped and says
# so). Records, as JSON and logs in $RESULTS (default docs/bench/gpu):
#   evaluation        one evaluation at 128/256/512/1024 against PyTorch eager (same run), and
#                     replayed as a CUDA graph (time, and its value and gradient against eager)
#   graph-probe       PyTorch: one evaluation eager against a replayed CUDA graph, 128/256/512
#   loop, loop-eager  the optimisation loop per evaluation against the bare evaluation, 5 pairs
#                     (first the L-BFGS history's passes alone: our products kernels, cuBLAS's)
#                     (CUDA graphs on, as by default; off): ±5 points from run to run with 3
#   ttl-auto          512 px: PyTorch torch.optim.LBFGS (fp32, cudnn.benchmark, warm, 500
#                     evaluations) from our start image, then ours with the default settings
#                     under 0.1/0.2/0.35 of its time and for the evaluations it spent (first
#                     at the size, repeated, single scale); both images scored by one objective
#   ttl-graphs-*      the same (0.2 of its time only) with CUDA graphs on and off
#   ttl-fp32          the same with our network in fp32 (the single-scale fp32 ratio)
#   daemon-*.out      a warm daemon: 512 px × 500 twice, then two sizes it has not seen; with
#                     the defaults, cuDNN benchmark mode, CUDA graphs off (eager), cuDNN's v7 API
#   run-3840.out      3840 px × 100 evaluations, default settings, peak device memory
# (each as NAME.out, its log as NAME.err). Usage: scripts/gpu-check.sh [path/to/neural-style];
# CONTENT, STYLE: images (default: drawn samples); DEADLINE: seconds for the whole (default
# 540); ONLY: the steps to run (default all); DEVICE (default cuda; `cpu` with QUICK=1 is a dry
# run of the plumbing at tiny sizes).
# The binary finds libtorch through its rpath (this machine's venv); elsewhere set
# LD_LIBRARY_PATH to a torch 2.11 lib folder.
set -uo pipefail
BIN=${1:-target/release/neural-style}
RESULTS=${RESULTS:-docs/bench/gpu}
DEVICE=${DEVICE:-cuda}
QUICK=${QUICK:-0}
DEADLINE=${DEADLINE:-540}
PY=${NEURAL_STYLE_PYTHON:-python3}
export NEURAL_STYLE_PYTHON=$PY
mkdir -p "$RESULTS"
START=$SECONDS

if [ "$QUICK" = 1 ]; then
    EVAL_SIZES=64,96; PROBE_SIZES=64; LOOP_SIZES=64; LOOP_EVALS=30; TTL_SIZE=96; TTL_EVALS=30; BIG=256; BIG_EVALS=5
    JOB=96; NEW1=80; NEW2=112; JOB_EVALS=20
else
    EVAL_SIZES=128,256,512,1024; PROBE_SIZES=128,256,512; LOOP_SIZES=128,256,512; LOOP_EVALS=200; TTL_SIZE=512; TTL_EVALS=500
    BIG=3840; BIG_EVALS=100; JOB=512; NEW1=600; NEW2=448; JOB_EVALS=500
fi

# step NAME TIMEOUT CMD...: runs CMD under min(TIMEOUT, time left); stdout/stderr → NAME.{out,err}
step() {
    local name=$1 limit=$2
    shift 2
    local left=$((DEADLINE - (SECONDS - START)))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped (deadline: ${left} s left)"
        return 1
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit} s, at $((SECONDS - START)) s)"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$RESULTS/$name.out" 2>"$RESULTS/$name.err"
    local rc=$?
    echo "   rc $rc in $((SECONDS - t0)) s"
    grep -v '^\s*$' "$RESULTS/$name.err" | grep -v 'INFO\|DEBUG' | tail -n 25
    return $rc
}

# peak device memory (MiB, whole device) while "$@" runs, sampled every 50 ms
with_memory() {
    local log="$RESULTS/memory.samples"
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 >"$log" 2>/dev/null &
    local smi=$!
    "$@"
    local rc=$?
    kill "$smi" 2>/dev/null
    wait "$smi" 2>/dev/null
    echo "   peak device memory (MiB, whole device): $(sort -n "$log" | tail -1)"
    return $rc
}

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" 2>&1
    "$BIN" --version 2>&1
    nproc
} | tee "$RESULTS/device.txt"

W="$RESULTS/w.safetensors"
"$BIN" weights random --seed 0 --out "$W" >/dev/null || { echo "the binary does not run"; exit 1; }
if [ -z "${CONTENT:-}" ]; then
    "$BIN" samples "$RESULTS/img" >/dev/null
    CONTENT="$RESULTS/img/content.png"
    STYLE="$RESULTS/img/style.png"
fi
IMAGES=(--content "$CONTENT" --style "$STYLE")
RUN_IMAGES=(-c "$CONTENT" -s "$STYLE")
COMMON=(--device "$DEVICE" --weights "$W")

# wanted NAME: whether step NAME runs (ONLY: space-separated names; empty: every step)
wanted() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }

# daemon_jobs NAME [serve flags...]: a daemon (env from DAEMON_ENV), 512 px × 500 twice, then
# two sizes it has not seen, then the first of them again
daemon_jobs() {
    local name=$1
    shift
    local sock="$RESULTS/d-$name.sock"
    env ${DAEMON_ENV:-} "$BIN" serve --device "$DEVICE" --socket "$sock" --weights "$W" "$@" 2>"$RESULTS/daemon-$name.log" &
    local daemon=$!
    for _ in $(seq 90); do "$BIN" status --socket "$sock" >/dev/null 2>&1 && break; sleep 0.5; done
    for run in warm1:$JOB warm2:$JOB new1:$NEW1 new2:$NEW2 again1:$NEW1; do
        local job=${run%%:*} size=${run##*:}
        step "daemon-$name-$job" 60 "$BIN" run --socket "$sock" "${RUN_IMAGES[@]}" -o "$RESULTS/daemon-$name-$job.png" \
            --size "$size" --iterations "$JOB_EVALS" --json
        "$PY" -c "import json,sys; s=json.load(open(sys.argv[1])); print('  ', sys.argv[2], s['width'], 'x', s['height'], \
f\"{s['seconds']:.2f} s, {s['evaluations']} evaluations, stop {s['stop_reason']}, loss {s['total_loss']:.4e}, {s['precision']};\", \
' '.join(f\"{x['width']}px {x['evaluations']} ev {x['seconds']:.2f} s\" for x in s['scales']))" \
            "$RESULTS/daemon-$name-$job.out" "$name $job" 2>/dev/null
    done
    "$BIN" stop --socket "$sock" >/dev/null 2>&1
    wait "$daemon"
}

# The steps, most wanted first (the deadline skips the last).
wanted evaluation && step evaluation 90 "$BIN" bench --device "$DEVICE" --sizes "$EVAL_SIZES" --repeats 20 --warmup 5 \
    ${EVAL_FLAGS:-} --json
wanted daemon && daemon_jobs default
wanted ttl-auto && step ttl-auto 120 "$BIN" bench --time-to-loss "${COMMON[@]}" "${IMAGES[@]}" --ttl-size "$TTL_SIZE" \
    --reference-evals "$TTL_EVALS" --budgets 0.1,0.2,0.35 --same-evaluations --json
wanted loop && step loop 100 "$BIN" bench --loop --device "$DEVICE" --sizes "$LOOP_SIZES" --loop-evaluations "$LOOP_EVALS" \
    --loop-runs 5 --json
wanted loop-eager && step loop-eager 100 "$BIN" bench --loop --device "$DEVICE" --sizes "$LOOP_SIZES" \
    --loop-evaluations "$LOOP_EVALS" --loop-runs 5 --cuda-graphs false --json
wanted daemon-eager && daemon_jobs eager --cuda-graphs false
for graphs in true false; do
    wanted ttl-graphs-$graphs && step ttl-graphs-$graphs 120 "$BIN" bench --time-to-loss "${COMMON[@]}" "${IMAGES[@]}" \
        --ttl-size "$TTL_SIZE" --reference-evals "$TTL_EVALS" --budgets 0.2 --same-evaluations --cuda-graphs $graphs --json
done
wanted run-3840 && with_memory step run-3840 90 "$BIN" run --local "${COMMON[@]}" "${RUN_IMAGES[@]}" -o "$RESULTS/3840.png" \
    --size "$BIG" --iterations "$BIG_EVALS" --json
wanted ttl-fp32 && step ttl-fp32 90 "$BIN" bench --time-to-loss "${COMMON[@]}" "${IMAGES[@]}" --precision fp32 \
    --ttl-size "$TTL_SIZE" --reference-evals "$TTL_EVALS" --budgets 0.2 --same-evaluations --json
wanted daemon-v7 && DAEMON_ENV=TORCH_CUDNN_V8_API_DISABLED=1 daemon_jobs v7
wanted daemon-benchmark && daemon_jobs benchmark --cudnn-benchmark true
wanted graph-probe && [ "$DEVICE" = cuda ] &&
    step graph-probe 60 "$PY" daemon/python/bench_reference.py graph-probe --sizes "$PROBE_SIZES"
rm -f "$W" "$RESULTS"/*.png "$RESULTS"/*.sock "$RESULTS/memory.samples"
echo "== done in $((SECONDS - START)) s"
