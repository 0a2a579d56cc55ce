#!/usr/bin/env bash
# How ours scales: cost against image size (224, 384, 512; Hiera-S built for each size), clip length
# (hiera_base_16x224 built for 8 and 16 frames at 224) and batch (1 to 64), fp32 and bf16.
#
#   benchmarks/run_scaling.sh
#   benchmarks/run_scaling.sh --scaling-sizes 224 448 --scaling-batches 1 8 32 --dtype fp32
#
# Extra arguments go to `hiera benchmark --compare --scaling`. Results go to $OUT (default
# benchmarks/results): scaling.md, scaling.json, scaling.png.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
"$PYTHON" -m hiera.cli benchmark --compare --scaling --model hiera_small_224 --dtype fp32 bf16 \
    --json "$OUT/scaling.json" --plot "$OUT/scaling.png" "$@" | tee "$OUT/scaling.md"
