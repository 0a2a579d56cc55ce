"""hiera.gpu's Triton kernels and CUDA code paths, checked on the CPU through Triton's interpreter.

Each test runs one check of tests/gpu_kernel_checks.py in a fresh interpreter with
``TRITON_INTERPRET=1`` (the variable must be set before the kernels are defined), but for the
check that traces the custom operators' GPU form, which runs without it. The same paths run on a
GPU in tests/test_cuda.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("gpu_kernel_checks.py")

pytest.importorskip("triton", reason="Triton is not installed")


@pytest.mark.parametrize(
    "name",
    ["add_layer_norm", "window_attention", "model_inference", "training_takes_stock_layers", "custom_ops",
     "compiled_graph", "compiled_inductor", "triton_op_graph"],
)
def test_interpreted(name):
    env = dict(os.environ, TRITON_INTERPRET="0" if name == "triton_op_graph" else "1", OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(CHECKS), name], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and f"ok {name}" in done.stdout, done.stdout + done.stderr[-4000:]
