"""The training fast paths: oneDNN linear (forward and both gradients), max pooling with a
first-maximum gradient, matmul attention and the masked stem that embeds only the kept mask units.
Each gives the stock path's outputs and gradients, a whole training step agrees with the stock
model, and training still compiles in one graph."""

import math
from unittest import mock

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import hiera
from hiera import fast, layers
from hiera.mae import _is_patchify, apply_fusion_head

needs_onednn = pytest.mark.skipif(not (fast._HAS_ONEDNN_LINEAR and fast.enabled()),
                                  reason="torch built without oneDNN, or HIERA_FAST=0")


@needs_onednn
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 24)])
@pytest.mark.parametrize("cout", [40, 8])  # wider and narrower than the input: both weight-grad layouts
@pytest.mark.parametrize("bias", [True, False])
def test_train_linear_matches_f_linear(shape, cout, bias):
    torch.manual_seed(0)
    layer = nn.Linear(24, cout, bias=bias)
    x = torch.randn(shape, requires_grad=True)
    assert fast.training_path(x, layer.weight)
    out = fast.run_linear(layer, x)
    grad = torch.randn_like(out)
    out.backward(grad)
    got = (out.detach(), x.grad, layer.weight.grad, layer.bias.grad if bias else None)

    x2 = x.detach().clone().requires_grad_()
    w2 = layer.weight.detach().clone().requires_grad_()
    b2 = layer.bias.detach().clone().requires_grad_() if bias else None
    ref_out = F.linear(x2, w2, b2)
    ref_out.backward(grad)
    want = (ref_out.detach(), x2.grad, w2.grad, b2.grad if bias else None)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_train_linear_frozen_weight_and_frozen_input():
    torch.manual_seed(0)
    layer = nn.Linear(24, 16)
    layer.requires_grad_(False)
    x = torch.randn(3, 24, requires_grad=True)
    fast.run_linear(layer, x).sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand(3, -1), rtol=1e-5, atol=1e-5)
    assert layer.weight.grad is None

    layer.requires_grad_(True)
    x = torch.randn(3, 24)  # a first layer: only the weight needs a gradient
    fast.run_linear(layer, x).sum().backward()
    torch.testing.assert_close(layer.weight.grad, x.sum(0).expand(16, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.bias.grad, torch.full((16,), 3.0))


@needs_onednn
def test_train_linear_taken_only_for_float32_cpu_training():
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(2, 4)
    assert fast.training_path(x, w)
    with torch.no_grad():
        assert not fast.training_path(x, w)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not fast.training_path(x, w)  # autocast's bf16 products already run in oneDNN
    assert not fast.training_path(x.double(), w.double())
    assert not fast.training_path(x, w.detach())  # nothing needs a gradient


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape,dim", [((2, 4, 6, 5), 1), ((3, 2, 4, 5, 3), 2), ((2, 8, 7), 1)])
def test_max_over_gradient_goes_to_the_first_maximum(dtype, shape, dim):
    torch.manual_seed(0)
    x = torch.randn(shape).to(dtype)
    # plant ties: half of the slices along `dim` copy slice 0
    index = [slice(None)] * len(shape)
    for j in range(1, shape[dim], 2):
        index[dim] = j
        src = list(index)
        src[dim] = 0
        x[tuple(index)] = x[tuple(src)]
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    out = layers.max_over(a, dim)
    ref = b.max(dim=dim).values
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    grad = torch.randn_like(ref)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0)
    with torch.no_grad():  # inference: plain amax
        torch.testing.assert_close(layers.max_over(x, dim), x.amax(dim=dim))


def test_max_over_gradcheck():
    x = torch.randn(3, 4, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: layers.max_over(t, 1), (x,))


def _stock_paths(monkeypatch):
    monkeypatch.setattr(fast, "_setting", False)  # fast.set_enabled(False), undone after the test
    monkeypatch.setattr(layers, "attention", F.scaled_dot_product_attention)
    monkeypatch.setattr(layers, "max_over", lambda x, dim: x.amax(dim=dim))


def _grads(model, loss_fn):
    model.zero_grad()
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["classify", "mae"])
def test_training_step_matches_stock_paths(kind, monkeypatch):
    torch.manual_seed(0)
    common = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), input_size=(64, 64))
    x = torch.randn(3, 3, 64, 64)
    if kind == "classify":
        model = hiera.Hiera(num_classes=5, **common).train()
        y = torch.tensor([0, 3, 4])

        def loss_fn():
            return F.cross_entropy(model(x), y)

    else:
        model = hiera.MaskedAutoencoderHiera(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **common)
        mask = model.get_random_mask(x, 0.5)

        def loss_fn():
            return model(x, mask=mask)[0]

    loss, grads = _grads(model, loss_fn)
    _stock_paths(monkeypatch)
    ref_loss, ref_grads = _grads(model, loss_fn)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().clamp(min=1e-8)
        err = (g - ref_grads[name]).abs().max() / scale
        assert err < 1e-4, f"{name}: gradient differs from the stock path by {err:.2e} of its scale"


def test_double_backward_matches_stock_paths(monkeypatch):
    """A gradient penalty (``create_graph=True``, then a backward through the input gradient)
    runs through the fast training paths, whose backward then uses differentiable operators, and
    gives the stock paths' parameter gradients."""
    torch.manual_seed(0)
    model = hiera.Hiera(num_classes=5, embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), input_size=(64, 64)).train()
    with torch.no_grad():
        model.head.projection.weight.mul_(100.0)  # logits of order 1: a penalty worth comparing
    x = torch.randn(2, 3, 64, 64)

    def loss_fn():
        inp = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(inp).logsumexp(-1).sum(), inp, create_graph=True)
        return g.square().sum()

    loss, grads = _grads(model, loss_fn)
    _stock_paths(monkeypatch)

    def math_attention(q, k, v):  # the CPU's fused kernel has no double backward
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v)

    monkeypatch.setattr(layers, "attention", math_attention)
    ref_loss, ref_grads = _grads(model, loss_fn)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=0)
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().clamp(min=1e-12)
        assert (g - ref_grads[name]).abs().max() / scale < 1e-3, name


def test_training_compiles_without_graph_breaks_and_matches_eager():
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), input_size=(64, 64), num_classes=5).train()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 4])
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    _, eager = _grads(model, lambda: F.cross_entropy(model(x), y))
    compiled = torch.compile(model, backend="aot_eager")  # traces the backward as well
    _, traced = _grads(model, lambda: F.cross_entropy(compiled(x), y))
    for name, g in eager.items():
        torch.testing.assert_close(traced[name], g, rtol=1e-4, atol=1e-6)


# Stems of the zoo's kinds: the image stem (7x7 kernel, stride 4, halo 3), a plain patchify stem
# (no halo) and the video stem (3x7x7, stride 2x4x4); grids of 2x3 / 2x2 / 2x2x2 mask units.
STEMS = {
    "image": dict(input_size=(64, 96)),
    "patchify": dict(input_size=(64, 64), patch_kernel=(4, 4), patch_stride=(4, 4), patch_padding=(0, 0)),
    "video": dict(input_size=(4, 64, 64), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
                  patch_stride=(2, 4, 4), patch_padding=(1, 3, 3)),
}


def _embed_and_grads(model, x, mask, precision, embed_everything):
    """Tokens of the kept units and the gradients of a fixed loss on them, through the kept-units
    stem or (embed_everything) through the full-image stem followed by dropping masked tokens."""
    geo = model.geometry(x.shape[2:])
    model.zero_grad()
    x.grad = None
    window = (0,) if embed_everything else geo.unroll.window  # a window that is no mask unit: full stem
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    with mock.patch.object(geo.unroll, "window", window), autocast:
        tokens = model._embed(x, mask, geo)
    weights = 0.5 + torch.rand(tokens.shape, generator=torch.Generator().manual_seed(1))  # positive: sums don't cancel
    (tokens.float() * weights).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return tokens.detach(), x.grad.clone(), grads


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("stem", STEMS)
def test_kept_units_embedding_equals_embedding_everything(stem, precision):
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), **STEMS[stem])
    x = torch.randn(3, 3, *model.input_size, requires_grad=True)
    mask = model.get_random_mask(x, 0.5)
    assert mask.sum(1).tolist() == [mask.shape[1] // 2] * 3 and not (mask == mask[0]).all()  # rows differ
    tokens, x_grad, grads = _embed_and_grads(model, x, mask, precision, embed_everything=False)
    ref_tokens, ref_x_grad, ref_grads = _embed_and_grads(model, x, mask, precision, embed_everything=True)
    assert tokens.shape == ref_tokens.shape == (3, model.mu_size * mask.shape[1] // 2, 8)
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(tokens, ref_tokens, **tol)
    torch.testing.assert_close(x_grad, ref_x_grad, **tol)  # zero on masked pixels, halos counted once
    assert grads.keys() == ref_grads.keys() and {"patch_embed.proj.weight", "patch_embed.proj.bias"} <= grads.keys()
    for name, g in grads.items():  # sums over different sets of tokens: compare at the gradient's scale
        err = (g - ref_grads[name]).abs().max() / ref_grads[name].abs().max()
        assert err < tol["rtol"], f"{name}: gradient differs by {err:.2e} of its scale"


def test_mae_encoder_convolves_only_the_kept_units():
    torch.manual_seed(0)
    model = hiera.MaskedAutoencoderHiera(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), decoder_embed_dim=16,
                                         decoder_depth=1, decoder_num_heads=1, **STEMS["video"])
    x = torch.randn(2, 3, *model.input_size)
    units = math.prod(model.mask_spatial_shape)

    def conv_flops(mask):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model.forward_encoder(x, 0.0, mask=mask)
        return counter.get_flop_counts()["Global"][torch.ops.aten.convolution]

    everything = conv_flops(torch.ones(2, units, dtype=torch.bool))
    one_unit = conv_flops(model.get_random_mask(x, 1 - 1 / units))
    # The fusion heads' convolutions run on kept units in both cases, so they scale the same way.
    assert one_unit * units == everything


# Fusion heads of the zoo's kinds: image stage 1 (8x8 unit, kernel 4), video (1x8x8 unit, kernel
# 1x4x4), and one whose kernel spans every dim; a padded conv is no patchify and keeps the conv.
FUSION_HEADS = {
    "image": (torch.nn.Conv2d(12, 20, 4, stride=4), (8, 8)),
    "video": (torch.nn.Conv3d(12, 20, (1, 4, 4), stride=(1, 4, 4)), (2, 8, 8)),
    "cube": (torch.nn.Conv3d(12, 20, 2, stride=2), (4, 4, 6)),
    "padded": (torch.nn.Conv2d(12, 20, 4, stride=4, padding=1), (8, 8)),
}


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("head", FUSION_HEADS)
def test_fusion_head_as_patch_product_equals_the_convolution(head, precision):
    torch.manual_seed(0)
    conv, unit = FUSION_HEADS[head]
    assert _is_patchify(conv, unit) == (head != "padded")
    x = torch.randn(2, 3, *unit, 12, requires_grad=True)  # [B, #units, *unit, C], channels-last
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def run(fn):
        conv.zero_grad()
        x.grad = None
        with autocast:
            y = fn()
        weights = torch.rand(y.shape, generator=torch.Generator().manual_seed(1))
        (y.float() * weights).sum().backward()
        return y.detach().float(), x.grad.clone(), conv.weight.grad.clone(), conv.bias.grad.clone()

    def through_conv():  # the convolution itself, channels-first, on every unit
        y = conv(x.flatten(0, 1).movedim(-1, 1)).movedim(1, -1)
        return y.reshape(2, 3, *y.shape[1:])

    got, want = run(lambda: apply_fusion_head(conv, x)), run(through_conv)
    assert got[0].shape == want[0].shape
    tol = dict(rtol=1e-5, atol=1e-5) if precision == "fp32" else dict(rtol=1e-2, atol=2e-2)
    for name, g, w in zip(("output", "input grad", "weight grad", "bias grad"), got, want):
        torch.testing.assert_close(g, w, **tol, msg=lambda m: f"{name}: {m}")


def test_per_sample_gradients_through_torch_func():
    """``torch.func.vmap(torch.func.grad(...))`` (per-sample gradients, as private-training
    libraries take them) runs through the model: inside a functorch transform the fast paths'
    custom autograd Functions, which have no vmap rule, step aside. The per-sample gradients equal
    one backward per sample."""
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(num_classes=10).eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    x = torch.randn(2, 3, 224, 224)

    def loss(p, xi):
        return torch.func.functional_call(model, p, (xi[None],)).logsumexp(-1).sum()

    grads = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)
    for i in range(2):
        model.zero_grad()
        model(x[i : i + 1]).logsumexp(-1).sum().backward()
        for name in ("blocks.1.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "head.projection.weight"):
            want = dict(model.named_parameters())[name].grad
            torch.testing.assert_close(grads[name][i], want, rtol=1e-4, atol=1e-6)


def test_forward_mode_ad_through_the_training_paths():
    """Forward-mode AD (``torch.autograd.forward_ad``) in train mode, where the custom autograd
    Functions (first-maximum pooling, float32 oneDNN products) would run: they have no jvp, so
    they step aside. The tangent equals a central difference (float64, no ties among maxima)."""
    torch.manual_seed(0)
    model = hiera.Hiera(embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), input_size=(64, 64), num_classes=5)
    x, t = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    with fwAD.dual_level():
        tangent = fwAD.unpack_dual(model.train()(fwAD.make_dual(x, t))).tangent
    model = model.double()
    with torch.no_grad():
        eps = 1e-6
        central = (model(x.double() + eps * t.double()) - model(x.double() - eps * t.double())) / (2 * eps)
    torch.testing.assert_close(tangent.double(), central, rtol=1e-3, atol=1e-5)
