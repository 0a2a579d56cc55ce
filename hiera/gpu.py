"""CUDA fast paths: what makes GPU inference fast, and the Triton kernels behind it.

Eager GPU inference in reduced precision spends most of its time moving activations, not
multiplying them: in Hiera's first stages (3136 tokens of 96 channels per image) a pass over the
tokens costs more than the products. The layers (:mod:`hiera.layers`) therefore take, on CUDA:

* **heads-last attention** (inference, eager or compiled): q, k and v from three products, read
  as ``[B, L, windows * heads, head_dim]``, which is attention's own layout, so no permute copy
  is made before or after attention;
* **a fused residual add + LayerNorm** (:func:`add_layer_norm`, inference, eager or compiled): one
  Triton pass that reads the residual and the branch output once and writes the new residual and
  the normalised tokens, the latter in the dtype the next product computes in (under autocast the
  stock operators make three float32 passes of it);
* **a window attention kernel** (:func:`window_attention`, inference, eager or compiled, bf16 /
  fp16): short windows, several to a tile, where the fused attention kernels would fill little of
  theirs;
* **GELU in the product's epilogue** (:func:`linear_gelu`, eager inference, bf16 / fp16);
* **a channels-last stem** (inference, eager or compiled).

Training keeps the stock layers (the heads-last layout measured slower with gradients: see
``benchmarks/README.md``, "On a GPU (H200)"). The Triton kernels need an Ampere or newer GPU. In
eager mode they are launched directly (:func:`fused_path`); under ``torch.compile`` they are
custom operators (``hiera::add_layer_norm``, ``hiera::layer_norm``, ``hiera::window_attention``,
:func:`op_path`) that the compiled graph calls, since inductor's own graph put cuDNN attention on
the 16-token windows (5.9 ms of attention per batch of 256 on an H200, against 3.0 eager). They
never run under an exporter (``torch.export``, ONNX, ``torch.jit``: those graphs hold standard
operators only), a dispatch mode (``FlopCounterMode``) or a functorch transform, nor with
gradients; there the stock operators run. :func:`set_enabled` turns every path here off or on for
the process; its default is the ``HIERA_FAST`` environment variable (``0``: off), read when first
needed rather than at import (see :mod:`hiera.fast`, whose CPU paths have their own switch with
the same default); ``compiled_ops = False`` keeps the compiled graph on the stock operators alone.
The kernels are compiled, and the operators registered, on first use: ``import hiera`` never
imports Triton. Under ``TRITON_INTERPRET=1`` they run on CPU tensors too, which is how the test
suite checks them without a GPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional, Tuple

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn as nn

from .fast import (
    _dispatch_stack_len,
    _env_default,
    _exporting,
    _forget_env_default,
    _hooked,
    _tracing,
    _transform_active,
)

_setting: Optional[bool] = None  # set_enabled's; None: the HIERA_FAST default
_is_batched = getattr(torch._C._functorch, "is_batchedtensor", lambda x: False)


def set_enabled(enabled: Optional[bool]) -> bool:
    """Turn the CUDA fast paths (fused kernels, heads-last attention, channels-last stem) on
    (``True``) or off (``False``) for this process, or back to the ``HIERA_FAST`` default
    (``None``, read again); returns the previous effective setting. Off, the layers run the stock
    operators in the stock layouts."""
    global _setting
    previous = _setting if _setting is not None else _env_default()
    if enabled is None:
        _forget_env_default()
    _setting = None if enabled is None else bool(enabled)
    return previous


def enabled() -> bool:
    """Whether the CUDA fast paths are on (:func:`set_enabled`, else ``HIERA_FAST``)."""
    return _setting if _setting is not None else _env_default()


def _device_ok(x: torch.Tensor) -> bool:
    """A CUDA tensor, or a CPU one while Triton interprets (the test suite's way to run these paths)."""
    return x.is_cuda or (x.device.type == "cpu" and interpreting())


@functools.lru_cache(maxsize=None)
def _ampere_or_newer(index: int) -> bool:
    """The Triton kernels' bfloat16 products need compute capability 8.0 or newer."""
    return torch.cuda.get_device_capability(index) >= (8, 0)


def _kernels_run_on(x: torch.Tensor) -> bool:
    if x.is_cuda:
        return _ampere_or_newer(x.device.index if x.device.index is not None else torch.cuda.current_device())
    return interpreting()


def heads_last(x: torch.Tensor) -> bool:
    """Whether attention should take the heads-last layout: CUDA inference, eager or compiled, not
    exporting. (Training keeps the stock layout: with gradients, the three products and their
    backward measured slower than one product and two copies; benchmarks/README.md, "On a GPU
    (H200)".)"""
    return not torch.is_grad_enabled() and _device_ok(x) and enabled() and not _exporting()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:  # (imported here, not at the top: `import hiera` must not import Triton)
        import triton.language
    except Exception:  # not installed, or a broken install: the stock path runs
        return False
    return triton.language is not None


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("0", "")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype a linear layer fed ``x`` computes in: autocast's, else the input's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def fused_path(x: torch.Tensor) -> bool:
    """Whether the fused kernels may run on ``x`` eagerly: eager inference (no gradients, no
    tracer, no dispatch mode or functorch transform) on a CUDA tensor, or a CPU one under Triton's
    interpreter, with Triton importable. (Under ``torch.compile``, :func:`op_path` decides.)"""
    if torch.is_grad_enabled() or type(x) is not torch.Tensor:
        return False
    if not _device_ok(x) or not enabled():
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or _tracing():
        return False
    return _dispatch_stack_len() == 0 and not _transform_active() and triton_available() and _kernels_run_on(x)


# Whether torch.compile'd inference calls the Triton kernels as custom operators (see op_path).
# False: the compiled graph keeps the stock operators there (inductor's norms, scaled_dot_product_attention).
compiled_ops = True

_OP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def op_path(x: torch.Tensor) -> bool:
    """Whether the graph being compiled may call the kernels as custom operators (``hiera::*``) on
    ``x``: inference (no gradients) traced by ``torch.compile``, not by an exporter, outside
    functorch transforms (the operators have no vmap or forward-AD rule), on a CUDA tensor (or a
    CPU one under Triton's interpreter), with ``compiled_ops`` and the paths on. (``torch.compile``
    does not trace under a dispatch mode such as ``FlopCounterMode``: those calls run eagerly,
    where :func:`fused_path` declines.)"""
    if torch.is_grad_enabled() or not torch.compiler.is_compiling() or not compiled_ops or not enabled():
        return False
    if _exporting() or x.dtype not in _OP_DTYPES or _transform_traced(x):
        return False
    return _ops_ready(x.device.type, x.device.index)


def _transform_traced(x: torch.Tensor) -> bool:
    """Whether torch.compile traces ``x`` inside a functorch transform: a vmap's batched tensor, or
    a forward-AD level (jvp, jacfwd); grad and jacrev turn gradients on, which :func:`op_path`
    checks first. (Not :func:`hiera.fast._transform_active`: traced, the interpreter stack it
    peeks at never compares equal to None.)"""
    return _is_batched(x) or getattr(_forward_ad, "_current_level", -1) >= 0


def _ops_ready(device_type: str, index: Optional[int]) -> bool:
    """Whether the kernels' custom operators can run on this device, registering them on the first
    call (which imports Triton). Constant for a device, so torch.compile calls it while tracing and
    takes the result as a constant rather than tracing it (the registration is no graph op)."""
    if device_type == "cuda":
        usable = triton_available() and _ampere_or_newer(index if index is not None else torch.cuda.current_device())
    else:
        usable = device_type == "cpu" and interpreting() and triton_available()
    # (torch.library.triton_op is torch 2.6's; an older torch compiles the stock operators)
    return usable and hasattr(torch.library, "custom_op" if interpreting() else "triton_op") and _register_ops()


# What torch.compiler.assume_constant_result sets, set here because that function imports
# torch._dynamo, which would add a second to `import hiera`.
_ops_ready._dynamo_marked_constant = True  # type: ignore[attr-defined]


@functools.lru_cache(maxsize=None)
def _register_ops() -> bool:
    """Register ``hiera::window_attention``, ``hiera::add_layer_norm`` and ``hiera::layer_norm``
    (once per process). With ``torch.library.triton_op`` the compiled graph holds the kernels
    themselves, which inductor launches from its own code, keeping their inputs' strides; under
    Triton's interpreter they are opaque custom operators instead (``wrap_triton`` cannot trace an
    interpreted kernel), which the compiled graph calls as they are."""
    from torch.library import custom_op, triton_op, wrap_triton

    def register(name, schema, fn):
        def launch(*args):
            return fn(*args, wrap=_direct)

        def fake(*args):
            return fn(*args, wrap=None)

        def traceable(*args):  # the fake kernel too: under a fake mode, wrapped kernels launch nothing
            return fn(*args, wrap=wrap_triton)

        if interpreting():
            custom_op(f"hiera::{name}", launch, mutates_args=(), schema=schema).register_fake(fake)
        else:
            triton_op(f"hiera::{name}", traceable, mutates_args=(), schema=schema)

    register("window_attention", "(Tensor q, Tensor k, Tensor v) -> Tensor", _window_attention)
    register("add_layer_norm", "(Tensor x, Tensor y, Tensor weight, Tensor bias, float eps, ScalarType out_dtype)"
             " -> (Tensor, Tensor)", _add_layer_norm)
    register("layer_norm", "(Tensor x, Tensor weight, Tensor bias, float eps, ScalarType out_dtype) -> Tensor",
             _layer_norm)
    return True


def _layer_norm(x, weight, bias, eps: float, out_dtype: torch.dtype, wrap) -> torch.Tensor:
    return _add_layer_norm(x, None, weight, bias, eps, out_dtype, wrap)[1]


def _direct(kernel):
    """The kernel itself: eager launches (``wrap_triton`` wraps it for a graph instead)."""
    return kernel


def channels_last_stem(x: torch.Tensor) -> bool:
    """Whether the patch embedding should run channels-last on this CUDA input: inference, eager or
    compiled, not inside a functorch transform or an export."""
    return not torch.is_grad_enabled() and x.is_cuda and enabled() and not _transform_active() and not _exporting()


def plain_layer_norm(norm: nn.Module) -> bool:
    """An ``nn.LayerNorm`` over the last dim with weight and bias, unhooked: what the kernel computes."""
    return (
        type(norm) is nn.LayerNorm and len(norm.normalized_shape) == 1 and norm.weight is not None
        and norm.bias is not None and not _hooked(norm)
    )


@functools.lru_cache(maxsize=None)
def _kernels():
    """Define the Triton kernels (on first use, so that ``TRITON_INTERPRET`` set by then counts)."""
    # (imported here, not at the top: `import hiera` must not import Triton)
    import triton
    import triton.language as tl

    @triton.jit
    def add_layer_norm_kernel(
        X, Y, S, OUT, W, B, rows, eps,
        C: tl.constexpr, HAS_Y: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
    ):
        # One program normalises BLOCK_M rows of C channels (C <= BLOCK_C, a power of two).
        row = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        col = tl.arange(0, BLOCK_C)
        col_ok = col < C
        ok = (row < rows)[:, None] & col_ok[None, :]
        offs = row.to(tl.int64)[:, None] * C + col[None, :]
        x = tl.load(X + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_Y:
            s = x + tl.load(Y + offs, mask=ok, other=0.0).to(tl.float32)
            s_out = s.to(S.dtype.element_ty)
            tl.store(S + offs, s_out, mask=ok)
            x = s_out.to(tl.float32)  # normalise the sum as stored, as the unfused add + norm do
        mean = tl.sum(x, axis=1) / C
        centred = tl.where(ok, x - mean[:, None], 0.0)
        var = tl.sum(centred * centred, axis=1) / C
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(W + col, mask=col_ok, other=0.0).to(tl.float32)
        b = tl.load(B + col, mask=col_ok, other=0.0).to(tl.float32)
        out = centred * rstd[:, None] * w[None, :] + b[None, :]
        tl.store(OUT + offs, out.to(OUT.dtype.element_ty), mask=ok)

    @triton.jit
    def window_attention_kernel(
        Q, K, V, O, groups, blocks, lq, lk, scale,
        sqb, sql, sqg, skb, skl, skg, svb, svl, svg, sob, sol, sog,
        D: tl.constexpr, GB: tl.constexpr, LQ: tl.constexpr, LK: tl.constexpr, BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
    ):
        # One program: GB groups (window x head) of one sample, all their queries and keys at once.
        # Tile rows are (position, group): row r holds position r // GB of group g0 + r % GB, and a
        # score is kept only where query and key rows belong to the same group (block diagonal).
        b = tl.program_id(0) // blocks
        g0 = (tl.program_id(0) % blocks) * GB
        rq = tl.arange(0, LQ * GB)
        rk = tl.arange(0, LK * GB)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        gq, pq = g0 + rq % GB, rq // GB
        gk, pk = g0 + rk % GB, rk // GB
        q_ok = (gq < groups) & (pq < lq)
        k_ok = (gk < groups) & (pk < lk)
        b64 = b.to(tl.int64)
        q = tl.load(Q + b64 * sqb + pq[:, None] * sql + gq[:, None] * sqg + d[None, :],
                    mask=q_ok[:, None] & d_ok[None, :], other=0.0)
        k = tl.load(K + b64 * skb + pk[:, None] * skl + gk[:, None] * skg + d[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        v = tl.load(V + b64 * svb + pk[:, None] * svl + gk[:, None] * svg + d[None, :],
                    mask=k_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:  # Triton's CPU interpreter multiplies bfloat16 tiles wrongly: give it float32
            q, k, v = q.to(tl.float32), k.to(tl.float32), v.to(tl.float32)
        scores = tl.dot(q, tl.trans(k)) * scale
        same = ((rq % GB)[:, None] == (rk % GB)[None, :]) & k_ok[None, :]
        scores = tl.where(same, scores, float("-inf"))
        top = tl.max(scores, axis=1)
        top = tl.where(q_ok, top, 0.0)  # rows of padding: keep them finite
        p = tl.exp(scores - top[:, None])
        p = p / tl.maximum(tl.sum(p, axis=1), 1e-30)[:, None]
        out = tl.dot(p.to(v.dtype), v)
        tl.store(O + b64 * sob + pq[:, None] * sol + gq[:, None] * sog + d[None, :], out.to(O.dtype.element_ty),
                 mask=q_ok[:, None] & d_ok[None, :])

    return add_layer_norm_kernel, window_attention_kernel


def _block_sizes(channels: int) -> Tuple[int, int, int]:
    """(rows per program, padded channels, warps): about 4k elements per program."""
    block_c = 1 << max(4, (channels - 1).bit_length())
    block_m = max(1, min(64, 4096 // block_c))
    warps = 4 if block_c <= 1024 else 8
    return block_m, block_c, warps


def add_layer_norm(
    x: torch.Tensor, y: Optional[torch.Tensor], norm: nn.LayerNorm, out_dtype: torch.dtype
) -> Tuple[torch.Tensor, torch.Tensor]:
    """``s = x + y`` (``x`` alone when ``y`` is None) and ``norm(s)`` cast to ``out_dtype``, in one pass.

    Args:
        x: ``[..., C]`` residual.
        y: ``[..., C]`` branch output to add, or None.
        norm: an ``nn.LayerNorm(C)`` (see :func:`plain_layer_norm`).
        out_dtype: dtype of the normalised output (the next linear layer's compute dtype).
    Returns:
        ``(s, normed)``: ``s`` in the promoted dtype of ``x`` and ``y`` (``x`` itself when ``y`` is
        None), ``normed`` ``[..., C]`` in ``out_dtype``. The sum is rounded to its dtype before it is
        normalised, as the separate operators do; statistics are accumulated in float32.

    Under ``torch.compile`` the graph gets the custom operator (``hiera::add_layer_norm``, or
    ``hiera::layer_norm`` without ``y``) in place of the launch.
    """
    if y is not None and y.shape != x.shape:
        raise ValueError(f"add_layer_norm: shapes differ, {tuple(x.shape)} and {tuple(y.shape)}")
    eps = float(norm.eps)
    if torch.compiler.is_compiling() and _ops_ready(x.device.type, x.device.index):
        if y is None:  # (an operator's output may not be its input: x is returned here)
            return x, torch.ops.hiera.layer_norm(x, norm.weight, norm.bias, eps, out_dtype)
        return torch.ops.hiera.add_layer_norm(x, y, norm.weight, norm.bias, eps, out_dtype)
    return _add_layer_norm(x, y, norm.weight, norm.bias, eps, out_dtype, _direct)


def _add_layer_norm(x, y, weight, bias, eps: float, out_dtype: torch.dtype, wrap):
    """:func:`add_layer_norm`'s allocation and launch: ``wrap`` the kernel (:func:`_direct`, or
    ``wrap_triton`` in a custom operator); ``wrap=None`` allocates only (a fake kernel)."""
    channels = x.shape[-1]
    x = x.contiguous()
    s = x
    if y is not None:
        y = y.contiguous()
        s = torch.empty_like(x, dtype=torch.result_type(x, y))
    normed = torch.empty_like(x, dtype=out_dtype)
    rows = x.numel() // channels if channels else 0
    if rows == 0:
        if y is not None:
            s = x + y
        return s, normed
    if wrap is None:
        return s, normed
    block_m, block_c, warps = _block_sizes(channels)
    kernel = wrap(_kernels()[0])
    grid = (-(-rows // block_m),)
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        kernel[grid](
            x, x if y is None else y, s, normed, weight, bias, rows, eps,
            C=channels, HAS_Y=y is not None, BLOCK_M=block_m, BLOCK_C=block_c, num_warps=warps,
        )
    return s, normed


# Rows per tile of the window attention kernel (several windows' queries, and their keys, side by side).
WINDOW_TILE = 128
# Windows of at most this many keys and queries go to the window attention kernel in eager
# inference, others (and global attention) to scaled_dot_product_attention. The fused kernels tile
# 64 or more queries at a time, so they waste most of each tile on 16 queries but not on 64: the
# window kernel wins on 16 queries and loses on 64 (the kernel timings on Hiera-B's shapes are in
# benchmarks/README.md, "Hiera against ViT on a GPU, in one process"). 0 sends every window to
# scaled_dot_product_attention.
window_kernel_max_keys = 64
window_kernel_max_queries = 16
# Whether the MLP's first product takes GELU in its epilogue in reduced-precision eager inference.
gelu_epilogue = True


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _window_tiles(lq: int, lk: int, groups: int) -> Optional[Tuple[int, int, int]]:
    """(groups per tile, padded queries, padded keys) of :func:`window_attention`, or None when the
    windows are too long for one tile. Every product in the kernel needs 16 rows at least."""
    lq_p, lk_p = _pow2(lq), _pow2(lk)
    if lk > min(window_kernel_max_keys, WINDOW_TILE // 2) or lq > min(lk, window_kernel_max_queries):
        return None
    gb = min(WINDOW_TILE // lk_p, max(_pow2(groups), 16 // lq_p, 16 // lk_p, 1))
    if lq_p * gb < 16 or lk_p * gb < 16:
        return None
    return gb, lq_p, lk_p


def window_attention_fits(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether :func:`window_attention` takes these ``[B, L, G, d]`` tensors: short windows (at most
    ``window_kernel_max_keys`` keys, 64 by default), bfloat16 or float16, a head dim of at most 256
    and unit stride on the last dim."""
    return (
        q.dtype in (torch.bfloat16, torch.float16) and q.dtype == k.dtype and k.shape[-1] <= 256
        and q.stride(-1) == k.stride(-1) == 1 and _window_tiles(q.shape[1], k.shape[1], q.shape[2]) is not None
    )


def window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention within many short windows at once, heads-last layout.

    Args:
        q: ``[B, Lq, G, d]`` queries of G independent groups (window x head), unit stride on d.
        k, v: ``[B, Lk, G, d]``.
    Returns:
        ``[B, Lq, G, d]`` contiguous: ``scaled_dot_product_attention`` of each group's queries
        over its keys.

    Why a kernel of our own: the fused attention kernels tile queries and keys in blocks of 64 or
    128 rows, so windows of 16 keys (Hiera's second stage) use an eighth of each tile and run far
    below the memory bandwidth. Here one tile holds several windows side by side, attends within
    each (a block-diagonal mask) and reads every input once. Under ``torch.compile`` the graph gets
    the custom operator ``hiera::window_attention`` in place of the launch.
    """
    if torch.compiler.is_compiling() and _ops_ready(q.device.type, q.device.index):
        return torch.ops.hiera.window_attention(q, k, v)
    return _window_attention(q, k, v, _direct)


def _window_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, wrap) -> torch.Tensor:
    """:func:`window_attention`'s allocation and launch (``wrap`` as in :func:`_add_layer_norm`)."""
    batch, lq, groups, dim = q.shape
    tiles = _window_tiles(lq, k.shape[1], groups)
    if tiles is None or k.shape[1] == 0:
        raise ValueError(f"window_attention: windows of {k.shape[1]} keys and {lq} queries do not fit one tile")
    gb, lq_p, lk_p = tiles
    out = torch.empty((batch, lq, groups, dim), device=q.device, dtype=q.dtype)
    if out.numel() == 0 or wrap is None:
        return out
    kernel = wrap(_kernels()[1])
    block_d = max(16, _pow2(dim))
    blocks = -(-groups // gb)
    with torch.cuda.device(q.device) if q.is_cuda else contextlib.nullcontext():
        kernel[(batch * blocks,)](
            q, k, v, out, groups, blocks, lq, k.shape[1], dim**-0.5,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
            D=dim, GB=gb, LQ=lq_p, LK=lk_p, BLOCK_D=block_d, UPCAST=interpreting(),
            num_warps=8 if block_d * lk_p * gb > 8192 else 4,
        )
    return out


def gelu_in_product(x: torch.Tensor, layer: nn.Module) -> bool:
    """Whether :func:`linear_gelu` should run ``layer`` on ``x``: eager inference on CUDA in
    bfloat16 or float16, an unhooked ``nn.Linear`` with a bias."""
    return (
        gelu_epilogue and fused_path(x) and x.is_cuda and compute_dtype(x) in (torch.bfloat16, torch.float16)
        and type(layer) is nn.Linear and layer.bias is not None and not _hooked(layer)
    )


def linear_gelu(layer: nn.Linear, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``gelu(layer(x))`` with the GELU in the product's epilogue (cuBLASLt), ``[..., in] -> [..., out]``.

    cuBLASLt's epilogue computes GELU in its tanh form, which differs from the exact (erf) form
    by less than 5e-4 (at |x| near 2): under a sixteenth of a bfloat16 step at that magnitude, so
    the rounded outputs are those of the exact form but for rare last-bit ties. It is used only
    when the layer computes in bfloat16 or float16; float32 keeps the exact form.
    """
    weight, bias = layer.weight.to(dtype), layer.bias.to(dtype)
    flat = x.reshape(-1, x.shape[-1]).to(dtype)
    return torch._addmm_activation(bias, flat, weight.t(), use_gelu=True).view(*x.shape[:-1], weight.shape[0])
