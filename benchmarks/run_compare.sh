#!/usr/bin/env bash
# The comparison table of the README, in one command: Hiera-S at 224, ours against the official
# package, timm and HF transformers (inference at batch 1, 8, 32; training steps at batch 8, MAE and
# classification), implementations interleaved in one run.
#
#   benchmarks/run_compare.sh                  # the full table (about an hour on a 2-core CPU)
#   benchmarks/run_compare.sh --quick          # shorter rounds, batches 1 8
#   benchmarks/run_compare.sh --rounds 7 --threads 8
#
# Extra arguments go to `hiera benchmark --compare` (see benchmarks/README.md). It installs
# nothing: the official package runs from its own environment, which
#   python tests/reference/official_env.py .cache/reference
# builds once (or set HIERA_OFFICIAL_PYTHON / pass --official-python). Results go to $OUT
# (default benchmarks/results): compare.md (the tables), compare.json, compare.png.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
"$PYTHON" -m hiera.cli benchmark --compare --model hiera_small_224 \
    --variants official:fp32 timm:fp32 official:bf16 hf:bf16 official:bf16:compile \
               ours:fp32 ours:bf16 ours:fp32:compile ours:bf16:compile \
    --batch-size 1 8 32 \
    --train-variants official:fp32 official:bf16 ours:fp32 ours:bf16 ours:fp32:compile ours:bf16:compile \
    --train-batch-size 8 --task classify mae \
    --json "$OUT/compare.json" --plot "$OUT/compare.png" "$@" | tee "$OUT/compare.md"
