#!/usr/bin/env bash
# The GPU check (issue #18), prepared for the day a GPU is lent (NOT RUN ON A GPU YET): on one CUDA device, in
# about 10 minutes,
#   1. the small paper rehearsal (`oskt rehearse --profile paper --small`: Market-1501 -> CUHK03-NP stand-ins, the
#      full-width ResNet-50 teacher at 256x128, one chain, S1 + S4, all seven methods, the KD++ / OFA source
#      phase) on CUDA with the profile's AMP, through DVC -> Prefect -> Ray -> MLflow: every phase's seconds per
#      iteration and peak_cuda_mib, the cost table (cost.md / rehearsal.json);
#   2. bench/train_throughput.py at the paper recipe (batch 16x4, 256x128, AMP) for S1, S5 and the teacher T:
#      images/s that calibrate the cost table's GPU model (oskt/pipeline/cost.py, GpuModel);
#   3. bench/expand_speed.py --quick and 4. bench/eval_speed.py --quick (both run on the host's CPU: neither has a
#      device option yet).
# Every figure goes to RESULTS_DIR (default bench/results/gpu); the log to RESULTS_DIR/gpu_check.log.
#
# Usage: bench/gpu_check.sh [RESULTS_DIR] [--device cuda|cuda:N|cpu]
#   --device cpu: the reduced dry run that checks the script end to end without a GPU (the small rehearsal at one
#   iteration per phase, the quick throughput profile, eval_speed without re-ranking); its figures mean nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT="bench/results/gpu"
DEVICE="cuda"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --device) DEVICE="$2"; shift 2 ;;
        --device=*) DEVICE="${1#--device=}"; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        -*) echo "gpu_check: unknown option $1" >&2; exit 2 ;;
        *) OUT="$1"; shift ;;
    esac
done
PY="${PYTHON:-.venv/bin/python}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
LOG="$OUT/gpu_check.log"
: > "$LOG"
log() { echo "gpu_check: $*" | tee -a "$LOG"; }
step() {  # step NAME CMD...: run, time, log; a failing step fails the check
    local name="$1"; shift
    local t0; t0=$(date +%s)
    log "$name: $*"
    local rc=0
    "$@" >> "$LOG" 2>&1 || rc=$?
    if [[ $rc -ne 0 ]]; then log "$name FAILED (exit $rc) after $(( $(date +%s) - t0 )) s: see $LOG"; exit 1; fi
    log "$name: done in $(( $(date +%s) - t0 )) s"
}

start=$(date +%s)
if [[ "$DEVICE" == cpu ]]; then
    log "reduced dry run on the CPU (figures mean nothing)"
    ITERS=1
    THROUGHPUT=("--quick --profile quick --student S1:train_throughput_S1.json")
    EVAL=(--quick --no-rerank)
else
    "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device (use --device cpu for the dry run)')"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/device.csv" 2>/dev/null || true
    ITERS=2
    THROUGHPUT=(
        "--profile paper --student S1:train_throughput_S1.json"
        "--profile paper --student S5:train_throughput_S5.json"
        "--profile paper --student T:train_throughput_T.json"
    )
    EVAL=(--quick)
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'device', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" | tee -a "$LOG"

# 1. the small paper rehearsal on the device (AMP is the paper profile's train.amp: on for CUDA)
step rehearsal "$PY" -m flows rehearse --profile paper --small --iters "$ITERS" --device "$DEVICE" \
    --out "$OUT/rehearsal" --record "$OUT/rehearsal.json" --doc "$OUT/cost.md"

# 2. training throughput at the paper recipe
for spec in "${THROUGHPUT[@]}"; do
    args="${spec%%:*}"; file="${spec##*:}"
    # shellcheck disable=SC2086 # the options are words
    step "train_throughput ${args##*--student }" "$PY" bench/train_throughput.py $args --device "$DEVICE" --out "$OUT/$file"
done

# 3., 4. expansion and evaluation speed (host CPU)
step expand_speed "$PY" bench/expand_speed.py --quick --out "$OUT/expand_speed.json"
step eval_speed "$PY" bench/eval_speed.py "${EVAL[@]}" --out "$OUT"

log "all steps done in $(( $(date +%s) - start )) s; figures in $OUT"
grep -h "^rehearsal paper\|^train_throughput: \|^expand_speed: [a-z_]*=\|^eval_speed: " "$LOG" | sed 's/^/gpu_check: /' || true
