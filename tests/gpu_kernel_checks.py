"""Checks of hiera.gpu's Triton kernels and CUDA paths on the CPU, through Triton's interpreter.

Run by tests/test_gpu_kernels.py in a fresh process with ``TRITON_INTERPRET=1`` (Triton decides
at kernel definition whether to interpret, so the variable must be set before anything defines
them): ``python tests/gpu_kernel_checks.py NAME``. Each check raises AssertionError on a failure
and prints ``ok NAME`` at the end. On a GPU, tests/test_cuda.py runs the same paths compiled.

Under the interpreter the custom operators (``hiera::*``) are opaque ones (``wrap_triton``
cannot trace an interpreted kernel); the checks here cover the rest of the compiled path: which
graphs get the operators, the operators' fake kernels, and the compiled model's outputs. One
check, ``triton_op_graph``, runs *without* the interpreter (``TRITON_INTERPRET`` unset): it
traces the ``torch.library.triton_op`` form the GPU gets as far as a CPU can (no kernel runs), and
tests/test_cuda.py runs what inductor makes of it.
"""

import copy
import os
import sys
from collections import Counter

import torch
import torch.nn.functional as F

import hiera  # noqa: E402
from hiera import gpu  # noqa: E402
from hiera.layers import MaskUnitAttention  # noqa: E402

TRITON_AT_IMPORT = "triton" in sys.modules  # (before any check runs a kernel)

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


def _registered(name):
    try:
        getattr(torch.ops.hiera, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def check_custom_ops():
    """``hiera::*`` compute what the eager launches compute (bit for bit: the same kernels), pass
    torch.library.opcheck (schema, fake kernels against the real ones, dynamic shapes through
    AOTAutograd), and exist only once something asked for them: ``import hiera`` neither imports
    Triton nor registers them."""
    assert not TRITON_AT_IMPORT, "import hiera imported Triton"
    assert not _registered("window_attention"), "operators registered at import"
    assert not gpu.op_path(torch.zeros(2, 8)), "op_path outside torch.compile"
    assert gpu._ops_ready("cpu", None) and gpu._ops_ready("cpu", None)  # (registers once)
    ops = torch.ops.hiera
    torch.manual_seed(0)
    for b, lq, lk, g, d in [(2, 16, 16, 8, 32), (2, 16, 64, 4, 96), (3, 4, 16, 12, 40)]:
        for dtype in (torch.bfloat16, torch.float16):
            q = torch.randn(b, lq, g, d).to(dtype)
            k, v = (torch.randn(b, lk, g, d).to(dtype) for _ in range(2))
            out = ops.window_attention(q, k, v)
            assert out.dtype == dtype and out.shape == q.shape and out.is_contiguous()
            assert torch.equal(out, gpu.window_attention(q, k, v)), (b, lq, lk, g, d, dtype)
        torch.library.opcheck(ops.window_attention.default, (q, k, v))
    for shape, x_dtype, y_dtype, out_dtype in [((3, 37, 96), torch.float32, torch.bfloat16, torch.bfloat16),
                                               ((5, 768), torch.float32, torch.float32, torch.float32),
                                               ((2, 9, 100), torch.float16, torch.float16, torch.float16),
                                               ((0, 96), torch.float32, torch.bfloat16, torch.bfloat16)]:
        norm = torch.nn.LayerNorm(shape[-1], eps=1e-6)
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        w, b = norm.weight.detach(), norm.bias.detach()  # (opcheck would differentiate parameters)
        x, y = torch.randn(shape, dtype=x_dtype), torch.randn(shape, dtype=y_dtype)
        with torch.no_grad():
            s_ref, n_ref = gpu.add_layer_norm(x, y, norm, out_dtype)
            n_alone = gpu.add_layer_norm(x, None, norm, out_dtype)[1]
        s, n = ops.add_layer_norm(x, y, w, b, 1e-6, out_dtype)
        assert s.dtype == s_ref.dtype and n.dtype == out_dtype and s.shape == n.shape == x.shape
        assert torch.equal(s, s_ref) and torch.equal(n, n_ref), shape
        assert torch.equal(ops.layer_norm(x, w, b, 1e-6, out_dtype), n_alone), shape
        torch.library.opcheck(ops.add_layer_norm.default, (x, y, w, b, 1e-6, out_dtype))
        torch.library.opcheck(ops.layer_norm.default, (x, w, b, 1e-6, out_dtype))


def _op_counts(graphs):
    """A torch.compile backend that counts the ``hiera::*`` calls of each graph it compiles (the
    graph as dynamo traced it, before AOTAutograd) and runs the graph eagerly, or hands it on to
    ``then`` (another backend)."""

    def backend(gm, inputs, then=None):
        counts = Counter(str(n.target).split(".")[1] for n in gm.graph.nodes
                         if n.op == "call_function" and str(n.target).startswith("hiera."))
        compiled = then(gm, inputs) if then else gm.forward
        graphs.append(counts)  # (once compiled: a trace that dynamo starts over is not counted)
        return compiled

    return backend


def _eager_kernel_calls(model, x, autocast):
    """How many times eager inference launches each kernel (what a compiled graph should call)."""
    calls = Counter()
    real_norm, real_window = gpu.add_layer_norm, gpu.window_attention
    gpu.add_layer_norm = lambda x, y, *a: calls.update(["add_layer_norm" if y is not None else "layer_norm"]) \
        or real_norm(x, y, *a)
    gpu.window_attention = lambda *a: calls.update(["window_attention"]) or real_window(*a)
    try:
        _run_logits(model, x, autocast)
    finally:
        gpu.add_layer_norm, gpu.window_attention = real_norm, real_window
    return calls


def _run_logits(model, x, autocast):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.float16, enabled=autocast):
        out, maps = model(x, return_intermediates=True, return_logits=True)
    return [out] + maps


def _trained_like(model):
    with torch.no_grad():
        for p in model.parameters():  # a trained-like scale, not the tiny initial head
            p.add_(torch.randn_like(p) * 0.05)
    return model


def check_compiled_graph():
    """Which compiled graphs call the custom operators: inference with the fast paths on, on
    dynamo's graph (fullgraph, static and dynamic shapes), with outputs equal to eager inference's
    (the graph runs eagerly here, so the same kernels in the same order); none with the paths or
    ``compiled_ops`` off, with gradients, under torch.export or vmap; and a compiled model called
    under FlopCounterMode runs (and counts) the stock operators."""
    model = _trained_like(small_model().eval())
    x = torch.randn(2, 3, 64, 64)
    previous = gpu.set_enabled(True)
    try:
        for autocast in (True, False):
            want = _eager_kernel_calls(model, x, autocast)
            assert want["layer_norm"] == want["add_layer_norm"] == len(model.blocks), want
            assert (want["window_attention"] > 0) == autocast, want  # float32: no window kernel
            eager = _run_logits(model, x, autocast)
            for dynamic in (False, True):
                graphs = []
                torch._dynamo.reset()
                compiled = torch.compile(model, backend=_op_counts(graphs), fullgraph=True, dynamic=dynamic)
                got = _run_logits(compiled, x, autocast)
                assert graphs == [want], (autocast, dynamic, graphs, want)
                for i, (a, b) in enumerate(zip(got, eager)):
                    assert a.shape == b.shape and a.dtype == b.dtype and rel(a, b) < 1e-6, (autocast, dynamic, i)
            x3 = torch.randn(3, 3, 64, 64)  # another batch: one dynamic graph serves it
            assert rel(_run_logits(compiled, x3, autocast)[0], _run_logits(model, x3, autocast)[0]) < 1e-6
            assert len(graphs) == 1, graphs

        def compiled_counts(fn, **kw):
            graphs = []
            torch._dynamo.reset()
            fn(torch.compile(model, backend=_op_counts(graphs), **kw))
            return sum(graphs, Counter())

        with torch.autocast("cpu", dtype=torch.float16):
            assert not compiled_counts(lambda m: m(x))  # gradients on
            with torch.no_grad():
                gpu.set_enabled(False)
                assert not compiled_counts(lambda m: m(x), fullgraph=True)
                gpu.set_enabled(True)
                gpu.compiled_ops = False
                try:
                    assert not compiled_counts(lambda m: m(x), fullgraph=True)
                finally:
                    gpu.compiled_ops = True
                assert compiled_counts(lambda m: m(x), fullgraph=True)["window_attention"] > 0
                exported = torch.export.export(model, (x,))
                assert not [n for n in exported.graph.nodes if str(n.target).startswith("hiera.")]
        # FlopCounterMode: torch.compile does not trace under a dispatch mode, the eager forward
        # runs, and fused_path declines: the stock operators' FLOPs, all of them
        from torch.utils.flop_counter import FlopCounterMode

        def flops(m):
            with FlopCounterMode(display=False) as counter, torch.no_grad():
                m(x)
            return counter.get_total_flops()

        graphs = []
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=_op_counts(graphs))
        with torch.no_grad():
            compiled(x)
        assert graphs and graphs[0]["layer_norm"] > 0, graphs
        gpu.set_enabled(False)
        stock_flops = flops(model)
        gpu.set_enabled(True)
        assert flops(compiled) == stock_flops > 0
        # vmap: traced inside a transform, the operators (which have no batching rule) stay out
        taken = []

        def probe(t):
            taken.append(gpu.op_path(t))
            return t + 1

        with torch.no_grad():
            torch._dynamo.reset()
            torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(2, 8))
            torch._dynamo.reset()
            torch.compile(torch.func.vmap(probe), backend="eager", fullgraph=True)(torch.zeros(2, 8))
            torch.func.vmap(torch.compile(probe, backend="eager", fullgraph=True))(torch.zeros(3, 8))
        assert taken == [True, False, False], taken
    finally:
        gpu.set_enabled(previous)
        torch._dynamo.reset()


def check_compiled_inductor():
    """``torch.compile(model, fullgraph=True)`` with inductor (the default backend) in inference
    with the fast paths on: the graph calls the custom operators, and its outputs are as close to
    the stock model's float32 ones as the stock float16 path's (float16 autocast), and equal the
    stock float32 outputs to rounding (float32)."""
    model = _trained_like(small_model().eval())
    x = torch.randn(2, 3, 64, 64)
    from torch._inductor.compile_fx import compile_fx

    previous = gpu.set_enabled(False)
    try:
        ref32, ref16 = _run_logits(model, x, False), _run_logits(model, x, True)
        gpu.set_enabled(True)
        for autocast, ref in ((True, ref16), (False, ref32)):
            graphs = []
            torch._dynamo.reset()
            backend = _op_counts(graphs)
            compiled = torch.compile(model, backend=lambda gm, inputs: backend(gm, inputs, then=compile_fx),
                                     fullgraph=True)
            got = _run_logits(compiled, x, autocast)
            assert len(graphs) == 1 and graphs[0]["layer_norm"] == graphs[0]["add_layer_norm"] == len(model.blocks)
            assert (graphs[0]["window_attention"] > 0) == autocast, graphs
            for i, (a, b, r) in enumerate(zip(got, ref, ref32)):
                assert a.shape == b.shape and a.dtype == b.dtype, (autocast, i)
                if autocast:
                    assert rel(a, r) <= 1.25 * rel(b, r) + 2e-3, (i, rel(a, r), rel(b, r))
                else:
                    assert rel(a, b) < 1e-5, (i, rel(a, b))
    finally:
        gpu.set_enabled(previous)
        torch._dynamo.reset()


def check_triton_op_graph():
    """Without the interpreter the operators are ``torch.library.triton_op`` ones, as on a GPU:
    compiling the small model (float16 autocast inference, static and dynamic shapes) traces them
    through their fake kernels (dynamo) and decomposes them into launches of the kernels themselves
    (AOTAutograd's functional graph, which inductor compiles on a GPU). The CPU can launch no
    compiled Triton kernel, so the graphs are traced, not run. (CPU tensors stand in for CUDA ones:
    ``interpreting`` is patched after the registration so that op_path takes them.)"""
    import logging

    from torch._dynamo.backends.common import aot_autograd
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table

    # (Without a GPU driver Triton cannot say which arguments a kernel writes: torch logs that
    # and assumes all of them, which changes nothing here.)
    logging.getLogger("torch._higher_order_ops.triton_kernel_wrap").setLevel(logging.ERROR)
    assert gpu._register_ops() and gpu.triton_available()
    gpu.interpreting = lambda: True
    model = small_model().eval()
    x = torch.randn(2, 3, 64, 64)

    class Traced(Exception):
        pass

    for dynamic in (False, True):
        dynamo_graphs, launches = [], Counter()

        def forward_compiler(gm, inputs):
            for n in gm.graph.nodes:
                if n.target is torch.ops.higher_order.triton_kernel_wrapper_functional:
                    launches[kernel_side_table.get_kernel(n.kwargs["kernel_idx"]).fn.__name__] += 1
                assert not str(n.target).startswith("hiera."), n  # decomposed, not opaque

            def run(*args):
                raise Traced

            return run

        aot = aot_autograd(fw_compiler=forward_compiler)
        torch._dynamo.reset()
        compiled = torch.compile(model, backend=lambda gm, inputs: _op_counts(dynamo_graphs)(gm, inputs, then=aot),
                                 fullgraph=True, dynamic=dynamic)
        try:
            _run_logits(compiled, x, autocast=True)
        except Traced:
            pass
        else:
            raise AssertionError("the compiled graph ran")
        # (Dynamo traces twice here, the first trace abandoned: a float it traced as a symbol, the
        # norms' eps, must be a constant for a kernel launch, so it starts over with it specialised.)
        assert len(dynamo_graphs) == 1, dynamo_graphs
        ops = dynamo_graphs[0]
        assert ops["layer_norm"] == ops["add_layer_norm"] == len(model.blocks) and ops["window_attention"] > 0, ops
        assert launches == {"add_layer_norm_kernel": 2 * len(model.blocks),
                            "window_attention_kernel": ops["window_attention"]}, (dynamic, launches)
    torch._dynamo.reset()


CHECKS = {name[len("check_"):]: fn for name, fn in globals().items() if name.startswith("check_")}
UNINTERPRETED = {"triton_op_graph"}  # the checks that run without TRITON_INTERPRET=1

if __name__ == "__main__":
    names = sys.argv[1:] or list(CHECKS)
    interpret = os.environ.get("TRITON_INTERPRET") == "1"
    for name in names:
        assert interpret == (name not in UNINTERPRETED), f"{name}: run with TRITON_INTERPRET={int(not interpret)}"
        CHECKS[name]()
        print("ok", name, flush=True)
