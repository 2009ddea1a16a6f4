#!/usr/bin/env bash
# Issue 19's GPU measurements in one run, each step under its own time limit (about 8 minutes in
# all on an H100/H200): SFT tokens/s and MFU (packed with flex, packed with the dense mask,
# padded) against TRL's SFTTrainer (defaults and tuned), the GRPO step against TRL's
# GRPOTrainer with 256-token completions, and streaming latency per second at 10 / 100 / 1000 s
# with the real-time factor. Medium presets, bf16 (mmpost's precision auto on CUDA; TRL tuned in
# bf16 too). Each step's output goes to $OUT/<step>.txt (default: ./gpu_suite/).
#
#   bash benchmarks/gpu_suite.sh            # on a CUDA machine
#   bash benchmarks/gpu_suite.sh --smoke    # the same steps at toy size on a CPU (checks the script)
#   WHEELS=dir bash benchmarks/gpu_suite.sh # first install the wheels in dir, offline (a GPU machine
#                                           # without network: pip download the pinned versions here)
#   PEAK_TFLOPS=989 ...                     # the accelerator's dense bf16 peak, for MFU (H100/H200: 989)
#
# It writes no model weights; the numbers go into docs/performance.md by hand with the date and
# the hardware (nvidia-smi -L is saved in $OUT/hardware.txt).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_suite}
mkdir -p "$OUT"
export MMPOST_PROGRESS=0 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ -n "${WHEELS:-}" ]]; then
    pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl || exit 1
fi
if [[ "${1:-}" == "--smoke" ]]; then
    sft=(--preset tiny-151k --n 6 --rounds 1)
    grpo=(--preset tiny --steps 1 --rounds 1 --max-new-tokens 16)
    stream_long=(--preset tiny --schemes ours --checkpoints 5,10 --tokens 4)
    stream_cmp=(--preset tiny --schemes full,recompute,rerotate --checkpoints 5,10 --tokens 4)
    limits=(600 600 600 600)
else
    sft=(--preset medium-151k --n 16 --rounds 1 --peak-tflops "${PEAK_TFLOPS:-989}")
    grpo=(--preset medium --steps 2 --rounds 1 --max-new-tokens 256 --arms mmpost trl trl-tuned)
    stream_long=(--preset small --schemes ours --checkpoints 10,100,1000)
    stream_cmp=(--preset small --schemes full,recompute,rerotate --checkpoints 10,100)
    limits=(210 120 120 45)  # seconds per step: about 8 minutes in all, partial output kept on a timeout
fi
{ date -u; nvidia-smi -L 2>/dev/null || echo "no GPU"; python -c "import torch, transformers; print(torch.__version__, transformers.__version__)"; } > "$OUT/hardware.txt"
status=0
step() {  # step NAME SECONDS COMMAND...: run it under its limit, keep its output, go on after a failure
    local name=$1 seconds=$2
    shift 2
    echo "== $name (<= ${seconds} s)"
    timeout "$seconds" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 14 "$OUT/$name.txt"
    [[ $rc -eq 0 ]] || { echo "!! $name exited with $rc"; status=1; }
}
step sft "${limits[0]}" python benchmarks/sft_throughput.py "${sft[@]}"
step grpo "${limits[1]}" python benchmarks/grpo_step.py "${grpo[@]}"
step streaming_1000s "${limits[2]}" python benchmarks/streaming.py "${stream_long[@]}"
step streaming_baselines "${limits[3]}" python benchmarks/streaming.py "${stream_cmp[@]}"
exit $status
