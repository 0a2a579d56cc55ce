#!/usr/bin/env bash
# The README's GPU tables (bf16 autocast on one CUDA device), implementations interleaved per run:
#   1. inference at batch 256, Hiera-S and Hiera-B: official, timm, HF transformers, ours, and the
#      official and ours under torch.compile;
#   2. latency at batch 1: eager, and torch.compile(mode="reduce-overhead") (CUDA graphs);
#   3. training steps at batch 128 (classification and MAE), eager; classification compiled.
#
#   benchmarks/run_gpu.sh                  # about 15 minutes on an H100, most of it compiling
#   benchmarks/run_gpu.sh --rounds 5
#
# Extra arguments go to every `hiera benchmark --compare` call. The official package runs from its
# own environment (python tests/reference/official_env.py .cache/reference). Results go to $OUT
# (default benchmarks/results): gpu-*.md, gpu-*.json, gpu-*.png. MFU is reported against the
# GPU's dense bf16 peak (hiera/bench/plan.py's PEAK_TFLOPS; --peak-tflops for others).
set -euo pipefail
source "$(dirname "$0")/setup.sh"
run() {
    local name=$1
    shift
    "$PYTHON" -m hiera.cli benchmark --compare --device cuda --rounds 3 --min-time 1 --warmup 3 \
        --json "$OUT/gpu-$name.json" --plot "$OUT/gpu-$name.png" "$@" | tee "$OUT/gpu-$name.md"
}
EAGER_AND_COMPILED="official:bf16 timm:bf16 hf:bf16 ours:bf16 official:bf16:compile ours:bf16:compile"
run small-inference-b256 --mode inference --batch-size 256 --variants $EAGER_AND_COMPILED "$@"
run base-inference-b256 --model hiera_base_224 --mode inference --batch-size 256 --variants $EAGER_AND_COMPILED "$@"
run small-inference-b1 --mode inference --batch-size 1 \
    --variants official:bf16 ours:bf16 official:bf16:graphs ours:bf16:graphs "$@"
run small-train-b128 --mode train --train-batch-size 128 --train-variants official:bf16 ours:bf16 "$@"
run small-train-b128-compiled --mode train --task classify --train-batch-size 128 \
    --train-variants official:bf16:compile ours:bf16:compile "$@"
