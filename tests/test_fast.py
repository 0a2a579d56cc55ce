"""The CPU fast paths of hiera.fast, layers.attention and the channels-last stem: same results as
the stock path, taken only where they should be, and the memory setting really stops page faults."""

import contextlib
import copy
import os
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import hiera
from hiera import fast, layers
from hiera.layers import attention

needs_onednn = pytest.mark.skipif(not (fast._HAS_ONEDNN_LINEAR and fast.enabled()),
                                  reason="torch built without oneDNN, or HIERA_FAST=0")


@contextlib.contextmanager
def fast_paths_off():
    """The stock kernels, as with HIERA_FAST=0."""
    previous = fast.set_enabled(False)
    try:
        yield
    finally:
        fast.set_enabled(previous)


def _layer(cin=24, cout=40, seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(cin, cout)
    with torch.no_grad():
        layer.bias.normal_()
    return layer


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24), (2, 3, 4, 24)])
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_linear_fast_path_matches_stock(shape, act):
    layer = _layer()
    x = torch.randn(shape)
    expected = F.linear(x, layer.weight, layer.bias)
    if act == "gelu":
        expected = F.gelu(expected)
    with torch.inference_mode():
        got = fast.run_linear(layer, x, act=act)
    assert layer in fast._packed, "the oneDNN path was not taken in inference mode"
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_linear_packs_no_weight_when_gradients_are_on():
    layer = _layer()
    x = torch.randn(3, 24, requires_grad=True)
    y = fast.run_linear(layer, x, act="gelu")
    assert layer not in fast._packed
    y.sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


@needs_onednn
def test_linear_bf16_autocast_and_bf16_weights():
    layer = _layer()
    x = torch.randn(6, 24)
    ref = F.linear(x, layer.weight, layer.bias)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = fast.run_linear(layer, x)
        stock = F.linear(x, layer.weight, layer.bias)
    assert got.dtype == stock.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(got, stock, rtol=1e-2, atol=1e-2)
    layer_bf16 = copy.deepcopy(layer).bfloat16()
    with torch.inference_mode():
        got = fast.run_linear(layer_bf16, x.bfloat16())
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), ref, rtol=2e-2, atol=2e-2)


@needs_onednn
def test_packed_weight_follows_weight_changes():
    layer, other = _layer(seed=0), _layer(seed=1)
    x = torch.randn(4, 24)
    with torch.inference_mode():
        first = fast.run_linear(layer, x)
    layer.load_state_dict(other.state_dict())  # in-place copy: the version counter moves
    with torch.inference_mode():
        torch.testing.assert_close(fast.run_linear(layer, x), fast.run_linear(other, x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        layer.weight.mul_(2.0)
    with torch.inference_mode():
        torch.testing.assert_close(fast.run_linear(layer, x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    layer.weight = torch.nn.Parameter(torch.zeros_like(layer.weight))  # another storage
    with torch.inference_mode():
        torch.testing.assert_close(fast.run_linear(layer, x), layer.bias.expand(4, -1))
    assert layer in fast._packed
    assert not torch.allclose(first, fast.run_linear(layer, x).detach())


@needs_onednn
@pytest.mark.parametrize("autocast", [False, True])
def test_model_built_under_inference_mode_runs_and_follows_weight_changes(autocast):
    """A model built inside ``torch.inference_mode()`` has inference-tensor weights, which keep no
    version counter: it runs (unpacked) and sees weights written in place, as the stock layers do."""
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        torch.manual_seed(0)
        model = hiera.Hiera(embed_dim=16, num_heads=1, input_size=(64, 64), num_classes=5).eval()
        assert model.blocks[0].attn.qkv.weight.is_inference()
        model(x)
        model.blocks[0].mlp.fc1.weight.mul_(-2.0)  # no version counter moves
        got = model(x, return_logits=True)
    reference = hiera.Hiera(embed_dim=16, num_heads=1, input_size=(64, 64), num_classes=5).eval()
    reference.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), fast_paths_off():
        want = reference(x, return_logits=True)
    tol = 2e-2 if autocast else 1e-5
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * want.abs().max().item())


@needs_onednn
@pytest.mark.parametrize("optimizer", ["adamw-fused", "sgd-fused", "data-write"])
def test_packed_weight_follows_updates_that_bump_no_version(optimizer):
    """Fused optimizers update weights in place without bumping the version counter, and neither
    does a write through ``.data``; evaluating after either must not use the stale packed copy."""
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(64, 64), num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    model.eval()
    with torch.inference_mode():
        before = model(x, return_logits=True)
    layer = model.blocks[0].attn.qkv
    assert layer in fast._packed
    if optimizer == "data-write":
        version = layer.weight._version
        layer.weight.data.copy_(torch.randn_like(layer.weight))
        assert layer.weight._version == version  # invisible to the version counter...
        model.eval()  # ...so train()/eval() drop the packed copies
    else:
        kind = torch.optim.AdamW if optimizer == "adamw-fused" else torch.optim.SGD
        opt = kind(model.parameters(), lr=0.1, fused=True)
        model.train()
        for _ in range(2):
            model(x, return_logits=True).square().mean().backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        with torch.inference_mode():  # packs the updated weights
            model(x)
        version = layer.weight._version
        model(x, return_logits=True).square().mean().backward()  # no mode change before evaluating
        opt.step()
        assert layer.weight._version == version
    with torch.inference_mode():
        got = model(x, return_logits=True)
    with fast_paths_off():
        with torch.inference_mode():
            expected = model(x, return_logits=True)
    assert not torch.allclose(expected, before)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@needs_onednn
def test_models_with_packed_weights_pickle_and_copy():
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(64, 64), num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        out = model(x)
    assert model.blocks[0].attn.qkv in fast._packed
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert clone.blocks[0].attn.qkv not in fast._packed
        with torch.inference_mode():
            torch.testing.assert_close(clone(x), out)


@needs_onednn
def test_whole_model_fast_path_matches_stock(monkeypatch):
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(num_classes=10).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        fast_logits = model(x, return_logits=True)
        fast_maps = model.forward_intermediates(x)
    monkeypatch.setattr(fast, "_setting", False)  # fast.set_enabled(False), undone after the test
    with torch.inference_mode():
        stock_logits = model(x, return_logits=True)
        stock_maps = model.forward_intermediates(x)
    torch.testing.assert_close(fast_logits, stock_logits, rtol=1e-5, atol=1e-5)
    for a, b in zip(fast_maps, stock_maps):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("kind", ["image", "video"])
def test_channels_last_stem_gives_contiguous_tokens_and_the_same_values(kind, grad):
    torch.manual_seed(0)
    if kind == "image":
        embed = layers.PatchEmbed(3, 16, kernel=(7, 7), stride=(4, 4), padding=(3, 3))
        x = torch.randn(2, 3, 32, 48)
    else:
        embed = layers.PatchEmbed(3, 16, kernel=(3, 7, 7), stride=(2, 4, 4), padding=(1, 3, 3))
        x = torch.randn(2, 3, 4, 32, 32)
    x.requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        tokens = embed(x)
        with fast_paths_off():
            stock = embed(x)
    assert tokens.shape == stock.shape == (2, 8 * 12 if kind == "image" else 2 * 8 * 8, 16)  # token grids
    assert tokens.is_contiguous() and not stock.is_contiguous()  # stock: [B, C, N] memory, transposed
    torch.testing.assert_close(tokens, stock, rtol=1e-5, atol=1e-6)
    if grad:
        g = torch.randn_like(tokens)
        (grad_fast,) = torch.autograd.grad(tokens, x, g)
        (grad_stock,) = torch.autograd.grad(stock, x, g)
        torch.testing.assert_close(grad_fast, grad_stock, rtol=1e-5, atol=1e-6)


@needs_onednn
def test_fast_path_stays_out_of_compiled_graphs():
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(64, 64), num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64)
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    ops = {str(n.target) for g in explained.graphs for n in g.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in op for op in ops), ops
    with torch.inference_mode():
        torch.testing.assert_close(torch.compile(model, backend="eager")(x), model(x))


def test_attention_matches_fused_kernel_in_every_cpu_mode():
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 2, n, 16) for n in (16, 64, 64))
    ref = F.scaled_dot_product_attention(q, k, v)
    grad = torch.randn_like(ref)
    qf, kf, vf = (t.clone().requires_grad_() for t in (q, k, v))
    F.scaled_dot_product_attention(qf, kf, vf).backward(grad)
    # float32 inference keeps the fused kernel: identical results
    with torch.inference_mode():
        torch.testing.assert_close(attention(q, k, v), ref, rtol=0, atol=0)
    # float32 training takes the matmul path: equal to float rounding, gradients too
    q32, k32, v32 = (t.clone().requires_grad_() for t in (q, k, v))
    out32 = attention(q32, k32, v32)
    torch.testing.assert_close(out32, ref, rtol=1e-5, atol=1e-6)
    out32.backward(grad)
    for got, want in ((q32.grad, qf.grad), (k32.grad, kf.grad), (v32.grad, vf.grad)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # bfloat16 training: close to float32, same gradients up to bf16 rounding
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    out = attention(qb, kb, vb)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=3e-2, atol=3e-2)
    out.backward(grad.bfloat16())
    for got, want in ((qb.grad, qf.grad), (kb.grad, kf.grad), (vb.grad, vf.grad)):
        torch.testing.assert_close(got.float(), want, rtol=5e-2, atol=5e-2)
    # bfloat16 inference takes the same path, with the same result as in training
    with torch.inference_mode():
        torch.testing.assert_close(attention(qb.detach(), kb.detach(), vb.detach()), out.detach())


def test_bf16_inference_stays_as_close_to_float32_as_the_fused_kernel(monkeypatch):
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=32, num_heads=2, stages=(1, 2, 2, 1), input_size=(64, 64), num_classes=10).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.inference_mode():
        ref = model(x, return_logits=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ours = model(x, return_logits=True).float()
        monkeypatch.setattr(hiera.layers, "attention", F.scaled_dot_product_attention)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fused = model(x, return_logits=True).float()
    err_ours = ((ours - ref).norm() / ref.norm()).item()
    err_fused = ((fused - ref).norm() / ref.norm()).item()
    assert err_ours < 2e-2 and err_ours < 1.5 * err_fused + 1e-3, (err_ours, err_fused)


def test_bf16_training_step_matches_float32_step():
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 2, 1, 1), input_size=(64, 64), num_classes=5)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    F.cross_entropy(model(x), y).backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    qkv = "blocks.1.attn.qkv.weight"
    cos = F.cosine_similarity(model.get_parameter(qkv).grad.flatten(), ref[qkv].flatten(), dim=0)
    assert cos > 0.98, f"bf16 attention gradients drifted from float32 (cosine {cos:.3f})"


_FAULTS = textwrap.dedent(
    """
    import resource, sys, torch
    from hiera import fast
    ROUNDS = 10
    applied = fast.reuse_memory()
    x = torch.empty(0)
    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):  # warm up: the first round maps the memory in any case
        x = torch.ones(16 * 2**20)
        del x
    before = faults()
    for _ in range(ROUNDS):
        x = torch.ones(16 * 2**20)  # 64 MiB: above glibc's mmap threshold
        del x
    print(applied, faults() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_reuse_memory_stops_page_faults():
    def run(env_value):
        env = dict(os.environ, HIERA_REUSE_MEMORY=env_value)
        out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True, text=True, check=True)
        applied, faults = out.stdout.split()
        return applied == "True", int(faults)

    applied, faults_kept = run("1")
    off, faults_default = run("0")
    assert applied and not off
    buffer = 64 * 2**20 // 4096  # pages of one buffer; the subprocess allocates 10
    assert faults_default > 5 * buffer, "without the setting every 64 MiB buffer is faulted in again"
    # with it, at most a buffer or two while the heap settles (an alignment-padded request may not
    # fit the hole the previous buffer left), then none
    assert faults_kept <= 2 * buffer, f"freed memory was not reused ({faults_kept} faults)"


_COMPILE_FIRST = textwrap.dedent("""
    import torch, hiera
    hiera.fast.reuse_memory()  # what the tools do first (a C call no tracer could follow)
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(64, 64), num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    compiled(x, return_logits=True).sum().backward()  # training, the process's first forward
    with torch.inference_mode():
        got = compiled.eval()(x, return_logits=True)
        want = model(x, return_logits=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    print("ok")
""")


def test_compiled_first_forward_traces_in_one_graph():
    """``torch.compile(model, fullgraph=True)`` as the first forward a fresh process runs (after the
    opt-in memory setting, as the tools make it) traces in one graph, in training and inference."""
    out = subprocess.run([sys.executable, "-c", _COMPILE_FIRST], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-1] == "ok"


@needs_onednn
def test_vmap_takes_the_stock_path_and_agrees():
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(64, 64), num_classes=5).eval()
    x = torch.randn(3, 1, 3, 64, 64)
    with torch.inference_mode():
        mapped = torch.vmap(model)(x)
        looped = torch.stack([model(xi) for xi in x])
    torch.testing.assert_close(mapped, looped, rtol=1e-5, atol=1e-6)


def test_linear_layers_are_plain_and_dynamic_quantization_swaps_them():
    """The model's linear layers are exact ``nn.Linear`` modules, so
    ``torch.ao.quantization.quantize_dynamic`` replaces every one of them (it matches exact types),
    and the int8 model runs and stays close to the float one."""
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, input_size=(64, 64), num_classes=5).train()
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(type(model.get_submodule(n)) is nn.Linear for n in linears)
    x = torch.randn(2, 3, 64, 64)
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)
    swapped = [n for n in linears if type(quantized.get_submodule(n)) is torch.ao.nn.quantized.dynamic.Linear]
    assert swapped == linears
    with torch.inference_mode():
        want = model.eval()(x, return_logits=True)
        got = quantized(x, return_logits=True)
    assert (got - want).norm() < 0.2 * want.norm()


@pytest.mark.parametrize("mode", ["inference", "train"])
def test_hooks_on_linear_layers_fire_and_can_replace_the_output(mode):
    """A forward hook on a linear layer sees the layer's input and output and may replace the
    output, as on the official model's layers (the fast path steps aside for a hooked layer)."""
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, input_size=(64, 64), num_classes=5)
    model.train(mode == "train")
    x = torch.randn(2, 3, 64, 64)
    seen = []

    def record(layer, args, out):
        seen.append((args[0], out))

    layer = model.blocks[0].mlp.fc1
    handle = layer.register_forward_hook(record)
    with torch.inference_mode(mode == "inference"):
        before = model(x, return_logits=True)
    (inp, out), = seen
    with torch.no_grad():
        torch.testing.assert_close(out, F.linear(inp, layer.weight, layer.bias))
    handle.remove()
    layer.register_forward_hook(lambda layer, args, out: torch.zeros_like(out))
    with torch.inference_mode(mode == "inference"):
        after = model(x, return_logits=True)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.fill_(-10.0)  # GELU(-10) = 0: the same as a zeroed output
    layer._forward_hooks.clear()
    with torch.inference_mode(mode == "inference"):
        expected = model(x, return_logits=True)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6)


def test_exported_graph_names_every_linear_layer():
    """Under a tracer the linear layers are called as modules, so ``torch.export`` records each
    one in its module stack (as for the official model), not only its parent."""
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), input_size=(64, 64), num_classes=5).eval()
    program = torch.export.export(model, (torch.randn(1, 3, 64, 64),))
    named = {
        list(node.meta["nn_module_stack"].values())[-1][0]
        for node in program.graph.nodes
        if node.target == torch.ops.aten.linear.default
    }
    assert named == {name for name, m in model.named_modules() if isinstance(m, nn.Linear)}
