"""Checks of hiera.gpu's Triton kernels and CUDA paths on the CPU, through Triton's interpreter.

Run by tests/test_gpu_kernels.py in a fresh process with ``TRITON_INTERPRET=1`` (Triton decides
at kernel definition whether to interpret, so the variable must be set before anything defines
them): ``python tests/gpu_kernel_checks.py NAME``. Each check raises AssertionError on a failure
and prints ``ok NAME`` at the end. On a GPU, tests/test_cuda.py runs the same paths compiled.
"""

import copy
import os
import sys

import torch
import torch.nn.functional as F

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"

import hiera  # noqa: E402
from hiera import gpu  # noqa: E402
from hiera.layers import MaskUnitAttention  # noqa: E402

BF16_ULP = 2.0**-7  # relative spacing of bfloat16 numbers


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm()).item()


def check_add_layer_norm():
    cases = [  # (shape, x dtype, y dtype or None, out dtype)
        ((3, 37, 96), torch.float32, torch.bfloat16, torch.bfloat16),
        ((2, 100, 100), torch.bfloat16, torch.bfloat16, torch.bfloat16),
        ((5, 768), torch.float32, torch.float32, torch.float32),
        ((4, 2048), torch.float16, torch.float16, torch.float16),
        ((3, 11, 192), torch.float32, None, torch.bfloat16),
        ((0, 96), torch.float32, torch.bfloat16, torch.bfloat16),
    ]
    for shape, x_dtype, y_dtype, out_dtype in cases:
        channels = shape[-1]
        torch.manual_seed(channels)
        norm = torch.nn.LayerNorm(channels, eps=1e-6)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        x = torch.randn(shape, dtype=x_dtype) * 3 + 1
        y = None if y_dtype is None else torch.randn(shape, dtype=y_dtype)
        with torch.no_grad():
            s, n = gpu.add_layer_norm(x, y, norm, out_dtype)
            ref_s = x if y is None else x + y
            ref_n = F.layer_norm(ref_s.float(), (channels,), norm.weight, norm.bias, 1e-6)
        assert s.dtype == ref_s.dtype and s.shape == ref_s.shape, (shape, s.dtype)
        assert n.dtype == out_dtype and n.shape == ref_s.shape, (shape, n.dtype)
        if x.numel() == 0:
            continue
        # (the interpreter may round the sum to bfloat16 by truncation: one step at most)
        assert (s.double() - ref_s.double()).abs().le(ref_s.double().abs() * 2 * BF16_ULP + 1e-30).all(), shape
        tol = 1e-6 if out_dtype == torch.float32 else 2 * BF16_ULP
        assert rel(n, ref_n) < tol, (shape, rel(n, ref_n))
        assert torch.isfinite(n).all()
    try:
        gpu.add_layer_norm(torch.zeros(2, 8), torch.zeros(2, 9), torch.nn.LayerNorm(8), torch.float32)
    except ValueError as e:
        assert "shapes differ" in str(e)
    else:
        raise AssertionError("mismatched shapes were accepted")


def check_window_attention():
    # (batch, windows, heads, keys, queries, head dim): Hiera's stage shapes and odd ones.
    shapes = [(2, 49, 1, 64, 16, 96), (2, 49, 2, 16, 16, 96), (2, 49, 2, 64, 16, 96), (3, 49, 4, 16, 4, 96),
              (1, 7, 3, 9, 9, 40), (2, 5, 1, 16, 16, 64)]
    for dtype in (torch.bfloat16, torch.float16):
        for b, w, h, lk, lq, d in shapes:
            torch.manual_seed(lk * 7 + lq)
            g = w * h
            q = torch.randn(b, lq, g, d).to(dtype)
            k = torch.randn(b, lk, g, d).to(dtype)
            v = torch.randn(b, lk, g, d).to(dtype)
            assert gpu.window_attention_fits(q, k)
            out = gpu.window_attention(q, k, v)
            ref = F.scaled_dot_product_attention(*(t.transpose(1, 2).double() for t in (q, k, v))).transpose(1, 2)
            assert out.shape == (b, lq, g, d) and out.dtype == dtype and out.is_contiguous()
            assert rel(out, ref) < 2 * BF16_ULP, (dtype, (b, w, h, lk, lq, d), rel(out, ref))
    # strided inputs (a view with a gap between rows) read the same values
    base = torch.randn(2, 16, 12, 2 * 32).bfloat16()
    q = k = v = base[..., :32]
    assert q.stride(-1) == 1 and not q.is_contiguous()
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2).double() for t in (q, k, v))).transpose(1, 2)
    assert rel(gpu.window_attention(q, k, v), ref) < 2 * BF16_ULP
    # what the kernel does not take
    long_keys = torch.randn(1, 196, 4, 96).bfloat16()
    assert not gpu.window_attention_fits(long_keys, long_keys)
    many_queries = torch.randn(1, 64, 4, 96).bfloat16()  # 64 queries: the fused kernels' tiles fit
    assert not gpu.window_attention_fits(many_queries, many_queries)
    assert not gpu.window_attention_fits(torch.randn(1, 16, 4, 96), torch.randn(1, 16, 4, 96))  # float32
    previous = gpu.window_kernel_max_keys
    gpu.window_kernel_max_keys = 0
    try:
        assert not gpu.window_attention_fits(q, k)
    finally:
        gpu.window_kernel_max_keys = previous


def small_model(**kw):
    torch.manual_seed(0)
    return hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), num_classes=5, **kw)


def _run(model, x, mask, autocast):
    # float16, not bfloat16: Triton's interpreter rounds float32 to bfloat16 toward zero (the GPU
    # rounds to nearest), a bias that would be charged to the kernels; its float16 rounds to nearest.
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
        out, maps = model(x, return_intermediates=True, return_logits=True)
        masked = model(x, mask=mask, return_intermediates=True)[1]
    return [out] + maps + masked


def check_model_inference():
    """The whole GPU inference path (fused norms, heads-last attention, window kernel) against the
    stock layers, on a small model, in float32 and float16 autocast."""
    model = small_model().eval()
    with torch.no_grad():
        for p in model.parameters():  # a trained-like scale, not the tiny initial head
            p.add_(torch.randn_like(p) * 0.05)
    x = torch.randn(2, 3, 64, 64)
    mask = model.get_random_mask(x, 0.5)
    calls = {"norm": 0, "window": 0}
    real_norm, real_window = gpu.add_layer_norm, gpu.window_attention
    gpu.add_layer_norm = lambda *a, **k: calls.__setitem__("norm", calls["norm"] + 1) or real_norm(*a, **k)
    gpu.window_attention = lambda *a, **k: calls.__setitem__("window", calls["window"] + 1) or real_window(*a, **k)
    previous = gpu.set_enabled(False)
    ref32 = _run(model, x, mask, autocast=False)
    ref16 = _run(model, x, mask, autocast=True)
    assert calls == {"norm": 0, "window": 0}, calls
    gpu.set_enabled(True)
    try:
        got32 = _run(model, x, mask, autocast=False)
        assert calls["norm"] > 0 and calls["window"] == 0, calls  # float32: no window kernel
        got16 = _run(model, x, mask, autocast=True)
        assert calls["window"] > 0, calls
    finally:
        gpu.set_enabled(previous)
        gpu.add_layer_norm, gpu.window_attention = real_norm, real_window
    for i, (a, b) in enumerate(zip(got32, ref32)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        assert rel(a, b) < 1e-5, (i, rel(a, b))
    for i, (a, b, r) in enumerate(zip(got16, ref16, ref32)):
        assert a.shape == b.shape and a.dtype == b.dtype, i
        # no less accurate than the stock bf16 path, against float32
        assert rel(a, r) <= 1.25 * rel(b, r) + 2e-3, (i, rel(a, r), rel(b, r))


def check_training_takes_stock_layers():
    """With gradients the stock layers run (the heads-last layout measured slower in training):
    no heads-last call, and the loss and every gradient equal those with the fast paths off."""
    model = small_model(drop_path_rate=0.0).train().double()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    y = torch.tensor([1, 3])
    calls = []
    real = MaskUnitAttention._forward_heads_last
    MaskUnitAttention._forward_heads_last = lambda self, *a: calls.append(1) or real(self, *a)
    previous = gpu.set_enabled(False)
    try:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        gpu.set_enabled(True)
        twin_loss = F.cross_entropy(twin(x), y)
        twin_loss.backward()
        assert not calls, "heads-last attention ran with gradients on"
        with torch.no_grad():
            twin(x)
        assert calls, "heads-last attention did not run in inference"
    finally:
        gpu.set_enabled(previous)
        MaskUnitAttention._forward_heads_last = real
    assert loss.item() == twin_loss.item()
    grads = dict(twin.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.equal(grads[name].grad, p.grad), name


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}

if __name__ == "__main__":
    for name in sys.argv[1:] or list(CHECKS):
        CHECKS[name]()
        print("ok", name, flush=True)
