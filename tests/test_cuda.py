"""The GPU paths: the same outputs and gradients on CUDA as on the CPU, eager and compiled.

The CPU results are held to the official package's by test_equivalence.py, so agreement here
carries that to the GPU. On CUDA the layers take other routes than on the CPU (windows folded into
the batch go to the fused attention kernels; pooling's backward runs on the device), so these
tests cover what the CPU suite cannot. Skipped without a GPU (CI has none); run them where one is.

Tolerances: float32 with TF32 off agrees with the CPU to float rounding under another summation
order (1e-4 of the scale, with 16 blocks of depth); bfloat16 autocast is held to a relative
error of 2e-2 against float32, the precision of bf16 products over Hiera's depth.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from closeness import assert_close

import hiera
from hiera import layers

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_RTOL = 1e-4
BF16_REL = 2e-2


@pytest.fixture(autouse=True)
def full_float32():
    """TF32 would round float32 products to 10-bit mantissas; these checks want float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().float().cpu(), ref.detach().float().cpu()
    return ((got - ref).norm() / ref.norm()).item()


def test_classifier_on_gpu_matches_cpu():
    torch.manual_seed(0)
    model = hiera.hiera_small_224().eval()
    x = torch.randn(2, 3, 224, 224)
    mask = model.get_random_mask(x, 0.5)
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        ref, ref_maps = model(x, return_intermediates=True, return_logits=True)
        ref_masked = model(x, mask=mask, return_intermediates=True)[1]
        out, maps = gpu(x.cuda(), return_intermediates=True, return_logits=True)
        out_masked = gpu(x.cuda(), mask=mask.cuda(), return_intermediates=True)[1]
    assert_close(out.cpu(), ref, "logits", rtol=GPU_RTOL)
    for i, (a, b) in enumerate(zip(maps, ref_maps)):
        assert_close(a.cpu(), b, f"stage {i}", rtol=GPU_RTOL)
    for i, (a, b) in enumerate(zip(out_masked, ref_masked)):
        assert_close(a.cpu(), b, f"masked stage {i}", rtol=GPU_RTOL)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        low = gpu(x.cuda(), return_logits=True)
        feats = gpu.forward_intermediates(x.cuda())
    assert rel_err(low, ref) < BF16_REL
    assert rel_err(feats[-1], ref_maps[-1].movedim(-1, 1)) < BF16_REL


def test_video_model_on_gpu_matches_cpu():
    torch.manual_seed(0)
    model = hiera.hiera_base_16x224().eval()
    x = torch.randn(1, 3, 16, 224, 224)
    gpu = copy.deepcopy(model).cuda()
    with torch.no_grad():
        ref = model(x, return_logits=True)
        out = gpu(x.cuda(), return_logits=True)
    assert_close(out.cpu(), ref, "clip logits", rtol=GPU_RTOL)


def _grads(model: torch.nn.Module) -> dict:
    return {n: p.grad.detach().cpu() for n, p in model.named_parameters() if p.grad is not None}


def _stock_pooling(monkeypatch) -> None:
    """Max pooling through ``torch.max``'s own autograd instead of the first-maximum Function."""
    monkeypatch.setattr(layers, "max_over", lambda x, dim: x.max(dim=dim).values)


def _assert_same_grads(got: dict, ref: dict, rtol: float) -> None:
    assert got.keys() == ref.keys() and got
    for name in ref:
        assert rel_err(got[name], ref[name]) < rtol, name


# Gradients are compared on one device. Across devices they are not comparable through max
# pooling: forward values that differ by rounding can pick another maximum of a near tie, which
# sends that gradient elsewhere (seen: 2e-3 relative on a pos_embed gradient between CPU and GPU,
# and as much between float32 and float64 on one CPU).
def test_training_step_on_gpu(monkeypatch):
    """Classification: the loss matches the CPU; the gradients of q-pooling and the stage
    transitions' pooling (first-maximum backward) match ``torch.max``'s on the GPU."""
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(drop_path_rate=0.0).train()
    gpu, stock = copy.deepcopy(model).cuda(), copy.deepcopy(model).cuda()
    x, y = torch.randn(4, 3, 224, 224), torch.tensor([1, 5, 7, 9])
    loss = F.cross_entropy(gpu(x.cuda()), y.cuda())
    assert_close(loss.detach().cpu(), F.cross_entropy(model(x), y).detach(), "loss", rtol=GPU_RTOL)
    loss.backward()
    _stock_pooling(monkeypatch)
    F.cross_entropy(stock(x.cuda()), y.cuda()).backward()
    got, ref = _grads(gpu), _grads(stock)
    assert len(got) == len(list(model.parameters()))
    _assert_same_grads(got, ref, GPU_RTOL)


def test_mae_step_on_gpu(monkeypatch):
    torch.manual_seed(0)
    model = hiera.mae_hiera_tiny_224().train()
    gpu, stock = copy.deepcopy(model).cuda(), copy.deepcopy(model).cuda()
    x = torch.randn(2, 3, 224, 224)
    mask = model.get_random_mask(x, 0.6)
    with torch.no_grad():
        loss, preds, labels, _ = model(x, mask=mask)
    g_loss, g_preds, g_labels, _ = gpu(x.cuda(), mask=mask.cuda())
    assert_close(g_loss.detach().cpu(), loss, "loss", rtol=GPU_RTOL)
    assert_close(g_preds.detach().cpu(), preds, "predictions", rtol=GPU_RTOL)
    assert_close(g_labels.cpu(), labels, "targets", rtol=GPU_RTOL)
    g_loss.backward()
    _stock_pooling(monkeypatch)
    stock(x.cuda(), mask=mask.cuda())[0].backward()
    _assert_same_grads(_grads(gpu), _grads(stock), GPU_RTOL)


@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_on_gpu_matches_eager(mode):
    """One graph (fullgraph: no break anywhere), and with ``reduce-overhead`` replayed as a CUDA graph."""
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224().eval().cuda()
    x = torch.randn(8, 3, 224, 224, device="cuda")
    compiled = torch.compile(model, fullgraph=True, mode=mode)
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        ref = model(x, return_logits=True).float()
        for _ in range(3):  # compile, record, replay
            out = compiled(x, return_logits=True).float()
    assert rel_err(out, ref) < BF16_REL


def test_compiled_training_step_on_gpu_matches_eager():
    """In float64, where the compiled forward's other summation order cannot flip a near tie of the
    max pooling (see above), so the gradients must agree to rounding."""
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(drop_path_rate=0.0).train().cuda().double()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin, fullgraph=True)
    x = torch.randn(4, 3, 224, 224, device="cuda", dtype=torch.float64)
    y = torch.tensor([1, 5, 7, 9], device="cuda")
    F.cross_entropy(model(x), y).backward()
    F.cross_entropy(compiled(x), y).backward()
    _assert_same_grads(_grads(twin), _grads(model), 1e-9)


# --------------------------------------------------------------------------- the CUDA fast paths
# hiera.gpu: fused residual-add + LayerNorm kernels (eager inference), heads-last attention and a
# channels-last stem (everywhere on CUDA). Held against the stock layers (hiera.gpu.set_enabled
# False), on the same device and in the same dtype.
from hiera import gpu as fastgpu  # noqa: E402


def _stock_and_fast(fn):
    previous = fastgpu.set_enabled(False)
    try:
        ref = fn()
    finally:
        fastgpu.set_enabled(True)
    try:
        out = fn()
    finally:
        fastgpu.set_enabled(previous)
    return ref, out


def _outputs(model, x, mask, autocast):
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out, maps = model(x, return_intermediates=True, return_logits=True)
        masked = model(x, mask=mask, return_intermediates=True)[1]
    return [out] + maps + masked


@pytest.mark.parametrize("precision", ["fp32", "autocast", "bf16-weights"])
def test_fast_paths_match_stock_in_inference(precision):
    """float32: the stock outputs to rounding. bfloat16: as close to float32 as the stock bf16
    path (the products' roundings differ, so the two bf16 paths are compared through float32)."""
    torch.manual_seed(0)
    model = hiera.hiera_small_224().eval().cuda()
    with torch.no_grad():
        for p in model.parameters():  # a trained-like scale, not the tiny initial head
            p.add_(torch.randn_like(p) * 0.02)
    x = torch.randn(4, 3, 224, 224, device="cuda")
    mask = model.get_random_mask(x, 0.5)
    previous = fastgpu.set_enabled(False)
    try:
        ref32 = _outputs(model, x, mask, autocast=False)
    finally:
        fastgpu.set_enabled(previous)
    if precision == "bf16-weights":
        model, x = model.to(torch.bfloat16), x.to(torch.bfloat16)
    ref, out = _stock_and_fast(lambda: _outputs(model, x, mask, autocast=precision == "autocast"))
    for i, (a, b, r) in enumerate(zip(out, ref, ref32)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        if precision == "fp32":
            assert rel_err(a, b) < GPU_RTOL, (i, rel_err(a, b))
        else:
            assert rel_err(a, r) <= 1.25 * rel_err(b, r) + 2e-3, (i, rel_err(a, r), rel_err(b, r))
            assert rel_err(a, r) < BF16_REL, i


def test_fused_kernels_run_in_cuda_inference(monkeypatch):
    """The fused paths are taken (not silently skipped) in eager CUDA inference, and only there."""
    calls = {"norm": 0, "window": 0, "gelu": 0}

    def counting(name, real):
        def wrapper(*a, **k):
            calls[name] += 1
            return real(*a, **k)
        return wrapper

    monkeypatch.setattr(fastgpu, "add_layer_norm", counting("norm", fastgpu.add_layer_norm))
    monkeypatch.setattr(fastgpu, "window_attention", counting("window", fastgpu.window_attention))
    monkeypatch.setattr(fastgpu, "linear_gelu", counting("gelu", fastgpu.linear_gelu))
    model = hiera.hiera_tiny_224().eval().cuda()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        model(torch.randn(2, 3, 224, 224, device="cuda"))
    # windows of at most 16 queries (stage 2 and the pooling blocks into stages 2 and 3)
    windowed = sum(b.attn.use_mask_unit_attn and b.attn.window_size <= 16 for b in model.blocks)
    assert windowed == 3
    assert calls == {"norm": 2 * len(model.blocks), "window": windowed, "gelu": len(model.blocks)}, calls
    for k in calls:
        calls[k] = 0
    model(torch.randn(2, 3, 224, 224, device="cuda"))  # gradients on: stock norms and attention
    assert calls == {"norm": 0, "window": 0, "gelu": 0}, calls


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_window_attention_kernel_on_gpu(dtype):
    shapes = [(256, 49, 1, 64, 16, 96), (64, 49, 2, 16, 16, 96), (64, 49, 2, 64, 16, 96), (64, 49, 4, 16, 4, 96),
              (3, 7, 3, 9, 9, 40), (2, 5, 1, 16, 16, 64)]
    for b, w, h, lk, lq, d in shapes:
        torch.manual_seed(lk + lq)
        q, k, v = (torch.randn(b, n, w * h, d, device="cuda", dtype=dtype) for n in (lq, lk, lk))
        assert fastgpu.window_attention_fits(q, k)
        out = fastgpu.window_attention(q, k, v)
        ref = F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (q, k, v))).transpose(1, 2)
        assert rel_err(out, ref) < 8e-3, (b, w, h, lk, lq, d)
        assert torch.isfinite(out).all()


def test_gelu_epilogue_close_to_exact_gelu():
    torch.manual_seed(0)
    layer = torch.nn.Linear(96, 384).cuda()
    x = torch.randn(4096, 96, device="cuda", dtype=torch.bfloat16)
    with torch.inference_mode():
        got = fastgpu.linear_gelu(layer, x, torch.bfloat16).float()
        ref = F.gelu(F.linear(x.float(), layer.weight.bfloat16().float(), layer.bias.bfloat16().float()))
    assert (got - ref).abs().max().item() < 2e-2
    assert rel_err(got, ref) < 4e-3


@pytest.mark.parametrize("channels", [96, 100, 384, 768, 2048])
@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16, torch.bfloat16),
                                    (torch.bfloat16, torch.bfloat16, torch.bfloat16),
                                    (torch.float32, torch.float32, torch.float32),
                                    (torch.float16, torch.float16, torch.float16),
                                    (torch.float32, None, torch.bfloat16)])
def test_add_layer_norm_kernel_on_gpu(channels, dtypes):
    x_dtype, y_dtype, out_dtype = dtypes
    torch.manual_seed(channels)
    norm = torch.nn.LayerNorm(channels, eps=1e-6).cuda()
    torch.nn.init.normal_(norm.weight)
    torch.nn.init.normal_(norm.bias)
    x = torch.randn(3, 1001, channels, device="cuda", dtype=x_dtype)
    y = None if y_dtype is None else torch.randn(3, 1001, channels, device="cuda", dtype=y_dtype)
    with torch.no_grad():
        s, n = fastgpu.add_layer_norm(x, y, norm, out_dtype)
        ref_s = x if y is None else x + y
        ref_n = F.layer_norm(ref_s.float(), (channels,), norm.weight, norm.bias, 1e-6).to(out_dtype)
    assert s.dtype == ref_s.dtype and n.dtype == out_dtype
    assert torch.equal(s, ref_s)
    assert rel_err(n, ref_n) < (1e-6 if out_dtype == torch.float32 else 5e-3)
    assert torch.isfinite(n).all()


def test_training_takes_the_stock_layers():
    """With gradients the stock layers run (heads-last attention measured slower in training):
    the gradients equal those with the fast paths off, in float64 (the math attention kernel)."""
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(drop_path_rate=0.0).train().cuda().double()
    twin = copy.deepcopy(model)
    x = torch.randn(2, 3, 224, 224, device="cuda", dtype=torch.float64)
    y = torch.tensor([1, 5], device="cuda")
    previous = fastgpu.set_enabled(False)
    try:
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        fastgpu.set_enabled(True)
        twin_loss = F.cross_entropy(twin(x), y)
        twin_loss.backward()
    finally:
        fastgpu.set_enabled(previous)
    assert rel_err(twin_loss, loss) < 1e-12
    _assert_same_grads(_grads(twin), _grads(model), 1e-9)


# ------------------------------------------------------------- the kernels in a compiled graph
def _hiera_op_counts(graphs):
    """A torch.compile backend: counts the ``hiera::*`` calls of dynamo's graph, then compiles it
    with inductor (``eager=True``: runs it as it is)."""
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, inputs, eager=False):
        counts = {}
        for n in gm.graph.nodes:
            if n.op == "call_function" and str(n.target).startswith("hiera."):
                name = str(n.target).split(".")[1]
                counts[name] = counts.get(name, 0) + 1
        compiled = gm.forward if eager else compile_fx(gm, inputs)
        graphs.append(counts)  # (once compiled: a trace that dynamo starts over is not counted)
        return compiled

    return backend


@pytest.mark.parametrize("dynamic", [False, True])
def test_compiled_inference_calls_the_kernels(dynamic):
    """torch.compile (inductor, fullgraph) in bf16 CUDA inference takes the Triton kernels through
    their custom operators: dynamo's graph calls hiera::* where eager inference launches the
    kernels, inductor's code launches the kernels themselves (torch.library.triton_op), and the
    outputs are as close to float32 as the stock bf16 path's. ``dynamic``: a symbolic batch (the
    kernels' grids follow it), then another batch size through the same graph."""
    from torch._inductor.utils import run_and_get_code

    torch.manual_seed(0)
    model = hiera.hiera_tiny_224().eval().cuda()
    with torch.no_grad():
        for p in model.parameters():  # a trained-like scale, not the tiny initial head
            p.add_(torch.randn_like(p) * 0.02)
    sizes = (4, 2) if dynamic else (4,)
    inputs = [torch.randn(b, 3, 224, 224, device="cuda") for b in sizes]

    def run(m, x, autocast=True):
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            return m(x, return_logits=True).float()

    previous = fastgpu.set_enabled(False)
    try:
        ref32 = [run(model, x, autocast=False) for x in inputs]
        ref16 = [run(model, x) for x in inputs]
        fastgpu.set_enabled(True)
        graphs = []
        compiled = torch.compile(model, backend=_hiera_op_counts(graphs), fullgraph=True, dynamic=dynamic)
        with torch._inductor.config.patch(fx_graph_cache=False):  # (a cache hit would write no code)
            first, codes = run_and_get_code(run, compiled, inputs[0])  # (resets dynamo first)
        outs = [first] + [run(compiled, x) for x in inputs[1:]]
    finally:
        fastgpu.set_enabled(previous)
        torch._dynamo.reset()
    windowed = sum(b.attn.use_mask_unit_attn and b.attn.window_size <= 16 for b in model.blocks)
    blocks = len(model.blocks)
    assert graphs == [{"layer_norm": blocks, "add_layer_norm": blocks, "window_attention": windowed}], graphs
    assert any("window_attention_kernel" in c for c in codes) and any("add_layer_norm_kernel" in c for c in codes)
    for out, b, r in zip(outs, ref16, ref32):
        assert rel_err(out, r) <= 1.25 * rel_err(b, r) + 2e-3, (rel_err(out, r), rel_err(b, r))
        assert rel_err(out, r) < BF16_REL


def test_compiled_graph_without_custom_ops_when_switched_off():
    """``compiled_ops = False``, ``set_enabled(False)`` and gradients each keep hiera::* out of
    the compiled graph (the graphs run as traced here: only their contents are checked)."""
    model = hiera.hiera_tiny_224().eval().cuda()
    x = torch.randn(2, 3, 224, 224, device="cuda")

    def graph_of(grad=False):
        graphs = []
        torch._dynamo.reset()
        backend = _hiera_op_counts(graphs)
        compiled = torch.compile(model, backend=lambda gm, inputs: backend(gm, inputs, eager=True), fullgraph=True)
        with torch.set_grad_enabled(grad), torch.autocast("cuda", dtype=torch.bfloat16):
            compiled(x)
        return graphs[0]

    previous = fastgpu.set_enabled(True)
    try:
        assert graph_of()["window_attention"] > 0
        assert graph_of(grad=True) == {}
        fastgpu.compiled_ops = False
        try:
            assert graph_of() == {}
        finally:
            fastgpu.compiled_ops = True
        fastgpu.set_enabled(False)
        assert graph_of() == {}
    finally:
        fastgpu.set_enabled(previous)
        torch._dynamo.reset()
