#!/usr/bin/env bash
# The first check on a CUDA machine, in under 10 minutes, after the README's install only
# (`pip install -e .`; nothing else is installed here):
#   1. DiT-DH-XL bf16 training: images/s, MFU against the measured bf16 matmul peak, peak memory,
#      and the largest batch per GPU (tools/bench.py --max_batch);
#   2. DiT-DH-XL + autoguidance (DiT-DH-S guide) 50-step Euler sampling and ViT-XL decoding:
#      images/s and the projected hours for FID-50k (tools/bench_vs_reference.py --sides ours);
#   3. the side-by-side ratios against the RAE release (tools/bench_vs_reference.py), when a
#      checkout of github.com/bytetriper/RAE is given (its own imports, e.g. einops, must be there);
#   4. with whatever time is left, torch.compile: the side-by-side training and CFG sampling ratios
#      of our compiled model against the release (eager, as its scripts run by default), or without
#      a checkout our compiled DiT-DH-XL training images/s and MFU.
# Each part runs under `timeout` within one overall budget; a part that does not finish is
# reported as such and the next one runs. Logs and a summary go to the output folder.
#
# Usage: tools/gpu_check.sh [--reference /path/to/RAE] [--out DIR] [--budget SECONDS] [--cpu-smoke]
#   --reference  RAE checkout for part 3 (default: $RAE_REFERENCE; part 3 is skipped without one)
#   --out        log folder (default: $OUT/gpu_check when $OUT is set, else runs/gpu_check)
#   --budget     overall seconds (default 570: ten minutes with room for start-up)
#   --cpu-smoke  the same parts on the CPU at tiny sizes (about a minute): checks the plumbing
set -u -o pipefail
cd "$(dirname "$0")/.."

REFERENCE="${RAE_REFERENCE:-}"
OUT_DIR=""
BUDGET=570
SMOKE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --reference) REFERENCE="$2"; shift 2 ;;
        --out) OUT_DIR="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --cpu-smoke) SMOKE=1; shift ;;
        *) echo "gpu_check: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
if [ -z "$OUT_DIR" ]; then
    if [ -n "${OUT:-}" ]; then OUT_DIR="$OUT/gpu_check"; else OUT_DIR="runs/gpu_check"; fi
fi
mkdir -p "$OUT_DIR"
START=$(date +%s)

if [ "$SMOKE" = 1 ]; then
    DEVICE=cpu
    PRECISION=fp32
    # Tiny DiT-DH, guide and ViT decoder: seconds per part.
    SIZES=(--size 32:2:2 --head 48:1:3 --guide_size 16:1:1 --channels 8 --grid 4 --num_classes 10
           --decoder tiny --decoder_patch 4 --sample_steps 4)
    TRAIN=(--gin experiments/stage2_tiny.gin --batch_size 2 --steps 1 --warmup 1)
    MAX_BATCH=4
    AG=(--sample_batch_size 2 --decoder_batch_size 2 --rounds 1 --warmup 1)
    VERSUS=(--batch_size 2 --sample_batch_size 2 --decoder_batch_size 2 --rounds 2 --warmup 1)
else
    if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "gpu_check: no CUDA device visible to torch (use --cpu-smoke to check the script on a CPU)" >&2
        exit 2
    fi
    DEVICE=cuda
    PRECISION=bf16
    SIZES=(--size XL --guide_size S --sample_steps 50)
    TRAIN=(--gin experiments/ditdh_xl.gin --batch_size 64 --steps 10 --warmup 3)
    MAX_BATCH=4096
    AG=(--sample_batch_size 128 --decoder_batch_size 128 --rounds 3 --warmup 1)
    VERSUS=(--batch_size 32 --sample_batch_size 32 --decoder_batch_size 32 --rounds 5 --warmup 2)
fi

python - <<'EOF' | tee "$OUT_DIR/machine.log"
import platform, torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"gpu_check: torch {torch.__version__}, python {platform.python_version()}, GPU {gpu}, "
      f"{torch.get_num_threads()} CPU threads")
EOF

# part NAME LIMIT COMMAND...: run COMMAND with at most LIMIT seconds (less if the budget is short).
part() {
    local name="$1" limit="$2"
    shift 2
    local left=$((START + BUDGET - $(date +%s)))
    if [ "$left" -lt 30 ]; then
        echo "gpu_check: $name skipped: ${left}s left of the ${BUDGET}s budget" | tee "$OUT_DIR/$name.log"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "gpu_check: $name (at most ${limit}s): $*"
    timeout -k 10 "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local status=${PIPESTATUS[0]}
    if [ "$status" = 124 ] || [ "$status" = 137 ]; then
        echo "gpu_check: $name did not finish in ${limit}s" | tee -a "$OUT_DIR/$name.log"
    elif [ "$status" != 0 ]; then
        echo "gpu_check: $name failed (exit $status)" | tee -a "$OUT_DIR/$name.log"
    fi
}

part train 170 python tools/bench.py "${TRAIN[@]}" --max_batch "$MAX_BATCH" --device "$DEVICE" --what train \
    --precision "$PRECISION"
part sample_ag 120 python tools/bench_vs_reference.py --sides ours --what sample_ag,decode "${SIZES[@]}" \
    "${AG[@]}" --device "$DEVICE" --precision "$PRECISION"
if [ -n "$REFERENCE" ]; then
    part versus 240 python tools/bench_vs_reference.py --reference "$REFERENCE" --sides reference,ours \
        "${SIZES[@]}" "${VERSUS[@]}" --device "$DEVICE" --precision "$PRECISION"
else
    echo "gpu_check: versus skipped: no --reference (or RAE_REFERENCE) checkout of bytetriper/RAE given" \
        | tee "$OUT_DIR/versus.log"
fi
if [ "$SMOKE" = 1 ]; then
    echo "gpu_check: compiled skipped on the CPU smoke run (compiling takes minutes there)" \
        | tee "$OUT_DIR/compiled.log"
elif [ -n "$REFERENCE" ]; then
    part compiled 600 python tools/bench_vs_reference.py --reference "$REFERENCE" --sides reference,ours+compile \
        --what train,sample_cfg "${SIZES[@]}" "${VERSUS[@]}" --device "$DEVICE" --precision "$PRECISION"
else
    part compiled 600 python tools/bench.py "${TRAIN[@]}" --device "$DEVICE" --what train --precision "$PRECISION" \
        --compile
fi

python -m rae.bench.summary "$OUT_DIR"/train.log "$OUT_DIR"/sample_ag.log "$OUT_DIR"/versus.log \
    "$OUT_DIR"/compiled.log | tee "$OUT_DIR/summary.log"
echo "gpu_check: done in $(($(date +%s) - START))s; logs in $OUT_DIR"
