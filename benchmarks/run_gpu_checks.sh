#!/usr/bin/env bash
# Every GPU check of this project in one call, at most 8 minutes (timeouts 300 + 160 s) on one H100 / H200:
#   1. the Hiera-vs-ViT benchmark (benchmarks/gpu_vs_vit.py: ceiling, eager and compiled inference
#      with A/B rows of the CUDA fast paths, kernel profiles, training steps; video, batch-1 latency
#      and kernels on Hiera's shapes on request), interleaved in one process;
#   2. the CUDA tests (tests/test_cuda.py: the fast paths against the stock layers, the kernels
#      against PyTorch, CPU against GPU, compiled against eager).
#
#   benchmarks/run_gpu_checks.sh [hiera_transformer-0.1.4-py3-none-any.whl]
#
# The official package joins the benchmark when its wheel is given (default: .whl/ of this checkout,
# where `pip download --no-deps hiera-transformer==0.1.4 -d .whl` puts it): it is unpacked and
# renamed hiera_official, so it imports beside ours. Results go to $OUT (default
# benchmarks/results): gpu-vs-vit.md / .json, test_cuda.log, gpu-info.txt.
# $GPU_BENCH_ARGS passes options to the benchmark; by default the sections of the targets still open
# (compiled inference, training) with the eager ones they are read against. Every section:
#   GPU_BENCH_ARGS="--sections ceiling inference compiled profile train video latency micro" (about 9 minutes)
# Compiled training steps (a second call, if the lease has time left; compiling them takes minutes):
#   python benchmarks/gpu_vs_vit.py --sections ceiling train train_compiled --json "$OUT/train.json"
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
WHEEL="${1:-$(ls .whl/hiera_transformer-0.1.4-*.whl 2>/dev/null | head -n 1)}"
OFFICIAL=()
if [ -n "$WHEEL" ]; then
    DIR="$(mktemp -d)"
    "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$WHEEL" "$DIR" \
        && cp -r "$DIR/hiera" "$DIR/hiera_official" && OFFICIAL=(--official "$DIR")
fi
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu-info.txt"
status=0
# shellcheck disable=SC2086
timeout "${BENCH_TIMEOUT:-300}" "$PY" benchmarks/gpu_vs_vit.py "${OFFICIAL[@]}" --json "$OUT/gpu-vs-vit.json" \
    ${GPU_BENCH_ARGS:---sections ceiling inference compiled profile train} 2>&1 | grep -v -e "Warning" -e "warnings.warn" -e "_warn_once" | tee "$OUT/gpu-vs-vit.md" || status=1
timeout "${TEST_TIMEOUT:-160}" "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/test_cuda.log" | tail -n 25 || status=1
exit $status
