"""Building blocks: patch embedding, mask-unit attention with q-pooling, the Hiera block, the head.

All token tensors are ``[B, N, C]`` in the unrolled order of :mod:`hiera.token_order`.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import gpu
from .fast import (
    RepacksOnModeChange,
    _dispatch_mode,
    _eager_cpu,
    _exporting,
    _hooked,
    _tracing,
    _transformed,
    run_linear,
)


def conv_nd(n: int) -> Type[nn.Module]:
    """The convolution class for ``n`` spatial dimensions (1-3)."""
    return [nn.Identity, nn.Conv1d, nn.Conv2d, nn.Conv3d][n]


class _FirstMax(torch.autograd.Function):
    """``amax`` over the middle dim of ``[P, s, R]`` whose gradient goes to the first maximum.

    PyTorch's own backward for ``amax`` saves the whole input and rebuilds the tie mask with
    broadcast comparisons and a count division (slower than this on Hiera's pooling shapes, by the
    figures in ``benchmarks/README.md``, "Max pooling with a cheap backward"). Here the forward
    keeps a one-byte index of the winning slice (``[P, R]``) and the backward writes each slice
    with one contiguous multiply. Ties send the whole gradient to the first maximum, as
    ``torch.max(dim)`` (the official model's pooling) does.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        values = x.amax(dim=1)
        # index of the first maximum = number of leading slices that are not the maximum
        index = torch.zeros(values.shape, dtype=torch.uint8, device=x.device)
        leading = None
        for j in range(x.shape[1] - 1):
            differs = x[:, j] != values
            leading = differs if leading is None else leading & differs
            index += leading
        ctx.save_for_backward(index)
        ctx.slices = x.shape[1]
        return values

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (index,) = ctx.saved_tensors
        # torch.compile (which cannot trace out=) and double backward (create_graph=True, which
        # needs differentiable operators): one broadcast select, which the compiler also fuses
        if _tracing() or torch.is_grad_enabled():
            slices = torch.arange(ctx.slices, dtype=index.dtype, device=index.device).view(1, -1, 1)
            return torch.where(index.unsqueeze(1) == slices, grad.unsqueeze(1), grad.new_zeros(()))
        grad = grad.contiguous()
        out = grad.new_empty((grad.shape[0], ctx.slices, grad.shape[1]))
        for j in range(ctx.slices):
            torch.mul(grad, index == j, out=out[:, j])
        return out


def max_over(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``x.amax(dim)`` for a contiguous ``x``, with a fast backward when gradients are needed."""
    if not (x.requires_grad and torch.is_grad_enabled()) or _exporting() or _transformed() or x.shape[dim] == 1:
        return x.amax(dim=dim)
    shape = x.shape[:dim] + x.shape[dim + 1 :]
    return _FirstMax.apply(x.reshape(math.prod(x.shape[:dim]), x.shape[dim], math.prod(x.shape[dim + 1 :]))).view(shape)


def do_pool(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Max-pool unrolled tokens by a flattened ``stride``: ``[B, N, C]`` -> ``[B, N // stride, C]``."""
    return max_over(x.view(x.shape[0], stride, x.shape[1] // stride, x.shape[-1]), dim=1)


def get_resized_mask(target_size: Sequence[int], mask: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    """Nearest-resize a spatial mask ``[B, 1, *mask_grid]`` to ``[B, 1, *target_size]``."""
    if mask is None:
        return mask
    if tuple(mask.shape[2:]) != tuple(target_size):
        return F.interpolate(mask.float(), size=tuple(target_size))
    return mask


def do_masked_conv(x: torch.Tensor, conv: Optional[nn.Module], mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Convolve after zeroing the dropped mask units, so overlapping kernels cannot see them."""
    if conv is None:
        return x
    if mask is None:
        return conv(x)
    mask = get_resized_mask(x.shape[2:], mask)
    return conv(x * mask.bool())


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample while training.

    Written here rather than imported from timm so that ``import hiera`` stays light (timm pulls in
    torchvision); the behaviour is the standard one, rescaling kept samples by ``1 / keep``.
    """

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch (``gamma``, as timm names it), used by timm's abswin
    models with a small initial value so that deep stacks start close to identity."""

    def __init__(self, dim: int, init_values: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(RepacksOnModeChange):
    """Two-layer perceptron ``fc1 -> act -> fc2`` (state-dict keys ``fc1.*``, ``fc2.*``)."""

    def __init__(self, in_features: int, hidden_features: int, act_layer: Type[nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        exact_gelu = type(self.act) is nn.GELU and self.act.approximate == "none"
        if exact_gelu and gpu.gelu_in_product(x, self.fc1):
            x = gpu.linear_gelu(self.fc1, x, gpu.compute_dtype(x))  # GPU inference in bf16 / fp16
        elif exact_gelu:
            x = run_linear(self.fc1, x, act="gelu")  # fused into fc1 on the CPU inference path
        else:
            x = self.act(run_linear(self.fc1, x))
        return run_linear(self.fc2, x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Softmax attention ``[B, h, Lq, d], [B, h, Lk, d] x2 -> [B, h, Lq, d]``.

    On CPU in training and in reduced precision, a plain matmul-softmax-matmul: for Hiera's short
    sequences (16-196 keys, so the ``Lq x Lk`` score matrices are small) it beats
    ``scaled_dot_product_attention``'s fused kernel in float32 training steps, in bfloat16 ones and
    in bfloat16 inference (bfloat16 softmax accumulates in float32 inside the kernel); the figures
    are in ``benchmarks/README.md``, "Attention that suits short windows". float32 inference
    breaks even, so it keeps the fused kernel, as do other devices.
    """
    if q.device.type != "cpu" or _exporting():  # torch.compile fuses the matmul path well too
        return F.scaled_dot_product_attention(q, k, v)
    grads = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    # (Under a Python dispatch mode such as FlopCounterMode, and inside vmap, the matmul path: the
    # counter has no formula for the CPU's fused kernel, and vmap no batching rule.)
    if q.dtype == torch.float32 and not grads and not _dispatch_mode() and not _transformed():
        return F.scaled_dot_product_attention(q, k, v)
    scores = q @ k.transpose(-2, -1)
    return scores.mul_(q.shape[-1] ** -0.5).softmax(dim=-1) @ v


class MaskUnitAttention(RepacksOnModeChange):
    """Attention within mask units (windows) or over all tokens, optionally q-pooled.

    Args:
        dim, dim_out: input and output channels.
        heads: number of attention heads.
        q_stride: flattened pooling stride for the queries (4 for 2x2); 1 for none.
        window_size: flattened mask-unit size *after* pooling.
        use_mask_unit_attn: attend within mask units (True) or globally (False).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
    ):
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.heads = heads
        self.q_stride = q_stride
        self.head_dim = dim_out // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)
        self.window_size = window_size
        self.use_mask_unit_attn = use_mask_unit_attn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, N, dim]`` -> ``[B, N // q_stride, dim_out]``."""
        batch, n, _ = x.shape
        windows = n // (self.q_stride * self.window_size) if self.use_mask_unit_attn else 1
        if gpu.heads_last(x) and type(self.qkv) is nn.Linear and not _hooked(self.qkv):
            return self._forward_heads_last(x, windows)
        # Token n sits in window n % windows (see token_order). Windows are folded into the batch
        # so attention gets 4-D inputs (5-D sends scaled_dot_product_attention to its slow path).
        length = n // windows  # tokens per window (explicit sizes: a batch of 0 has no -1 to infer)
        qkv = run_linear(self.qkv, x).view(batch, length, windows, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(3, 0, 2, 4, 1, 5).reshape(3, batch * windows, self.heads, length, self.head_dim).unbind(0)
        if self.q_stride > 1:
            q = max_over(q.view(batch * windows, self.heads, self.q_stride, length // self.q_stride, self.head_dim), dim=2)
        x = attention(q, k, v)
        # [B*W, h, L, d] -> [B, L, W, h*d]: back to unrolled token order.
        x = x.view(batch, windows, self.heads, length // self.q_stride, self.head_dim).permute(0, 3, 1, 2, 4)
        return run_linear(self.proj, x.reshape(batch, n // self.q_stride, self.dim_out))

    def _forward_heads_last(self, x: torch.Tensor, windows: int) -> torch.Tensor:
        """The same attention with no permute copy before or after it (the GPU path).

        Token ``n`` of window ``w`` at position ``l`` sits at ``n = l * windows + w``, so a
        ``[B, N, C]`` tensor read as ``[B, L, windows * heads, head_dim]`` has the windows and heads
        side by side, as the heads of a ``[batch, seq, heads, dim]`` attention layout. q, k and v
        come from three products (the rows of the ``qkv`` weight, as views) so that each is such a
        tensor; the fused attention kernels read that layout directly and write their output in
        it, which is again the unrolled token order.
        """
        batch, n, _ = x.shape
        length = n // windows
        weight, bias = self.qkv.weight, self.qkv.bias
        if torch.is_autocast_enabled("cuda"):  # one cast for the three products, not three
            dtype = torch.get_autocast_dtype("cuda")
            weight, bias = weight.to(dtype), None if bias is None else bias.to(dtype)
        dims = self.dim_out
        heads = windows * self.heads
        q, k, v = (
            F.linear(x, weight[i * dims:(i + 1) * dims], None if bias is None else bias[i * dims:(i + 1) * dims])
            .view(batch, length, heads, self.head_dim)
            for i in range(3)
        )
        if self.q_stride > 1:  # position l = (first pooling offset, rest): pool the outer part
            q = max_over(q.view(batch, self.q_stride, length // self.q_stride, heads, self.head_dim), dim=1)
        # short windows, in inference: the kernel (eager), or its custom operator (compiled)
        if (gpu.fused_path(x) or gpu.op_path(x)) and gpu.window_attention_fits(q, k):
            out = gpu.window_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        out = out.reshape(batch, n // self.q_stride, self.dim_out)  # a view: [B, L, W * h, d] is token order
        return run_linear(self.proj, out)

    def extra_repr(self) -> str:
        return (
            f"heads={self.heads}, q_stride={self.q_stride}, window_size={self.window_size}, "
            f"use_mask_unit_attn={self.use_mask_unit_attn}"
        )


class HieraBlock(RepacksOnModeChange):
    """Pre-norm transformer block; when ``dim != dim_out`` the residual is projected and pooled.

    timm's extensions: ``init_values`` adds layer scale (``ls1``, ``ls2``) and
    ``use_expand_proj=False`` widens the residual without a projection, concatenating its max- and
    mean-pool (``dim_out`` must be ``2 * dim``).
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        norm_layer: Type[nn.Module] = nn.LayerNorm,
        act_layer: Type[nn.Module] = nn.GELU,
        q_stride: int = 1,
        window_size: int = 0,
        use_mask_unit_attn: bool = False,
        init_values: Optional[float] = None,
        use_expand_proj: bool = True,
    ):
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.norm1 = norm_layer(dim)
        self.attn = MaskUnitAttention(dim, dim_out, heads, q_stride, window_size, use_mask_unit_attn)
        self.norm2 = norm_layer(dim_out)
        self.mlp = Mlp(dim_out, int(dim_out * mlp_ratio), act_layer=act_layer)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        if dim != dim_out:
            if not use_expand_proj and dim_out != 2 * dim:
                raise ValueError(f"use_expand_proj=False needs dim_out == 2 * dim, got {dim} -> {dim_out}")
            self.proj = nn.Linear(dim, dim_out) if use_expand_proj else None
        if init_values is not None:
            self.ls1 = LayerScale(dim_out, init_values)
            self.ls2 = LayerScale(dim_out, init_values)
        else:
            self.ls1 = self.ls2 = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (gpu.fused_path(x) or gpu.op_path(x)) and self._fusable():  # GPU inference, eager or compiled
            return self._forward_fused(x)
        x_norm = self.norm1(x)
        x = self._residual(x, x_norm)
        x = x + self.drop_path(self.ls1(self.attn(x_norm)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))

    def _residual(self, x: torch.Tensor, x_norm: torch.Tensor) -> torch.Tensor:
        """The residual stream the attention branch adds to: ``x``, or, when the block widens and
        pools, its projection (of the normalised tokens) or its max- and mean-pool, concatenated."""
        if self.dim == self.dim_out:
            return x
        if self.proj is not None:
            return do_pool(run_linear(self.proj, x_norm), stride=self.attn.q_stride)
        pooled = x.view(x.shape[0], self.attn.q_stride, x.shape[1] // self.attn.q_stride, x.shape[-1])
        return torch.cat([pooled.amax(dim=1), pooled.mean(dim=1)], dim=-1)

    def _fusable(self) -> bool:
        return (
            gpu.plain_layer_norm(self.norm1) and gpu.plain_layer_norm(self.norm2)
            and type(self.ls1) is nn.Identity and type(self.ls2) is nn.Identity
        )

    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        """``forward`` in GPU inference (eager, or compiled through the kernel's custom operator):
        each norm is one kernel that also does the residual add before it and writes its output in
        the linear layers' compute dtype (see hiera.gpu). (Inference only, so drop path is the
        identity.)"""
        dtype = gpu.compute_dtype(x)
        _, x_norm = gpu.add_layer_norm(x, None, self.norm1, dtype)
        x = self._residual(x, x_norm)
        x, x_norm = gpu.add_layer_norm(x, self.attn(x_norm), self.norm2, dtype)
        return x + self.mlp(x_norm)


def softmax_last_dim(x: torch.Tensor) -> torch.Tensor:
    """The head's default eval-mode activation (a named function so models pickle)."""
    return x.softmax(dim=-1)


class Head(RepacksOnModeChange):
    """Dropout + linear classifier. In eval mode ``act_func`` (softmax by default) is applied to the
    logits, as in the official package; ``act_func=None`` keeps logits in every mode. With
    ``num_classes=0`` it returns its input, the pooled features (timm's convention; the official
    model returned an empty ``[B, 0]``); the projection stays, empty, so state dicts keep the
    official layout."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        dropout_rate: float = 0.0,
        act_func: Optional[Callable[[torch.Tensor], torch.Tensor]] = softmax_last_dim,
    ):
        super().__init__()
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else nn.Identity()
        with warnings.catch_warnings():  # num_classes=0: an empty projection is meant (see above)
            warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
            self.projection = nn.Linear(dim, num_classes)
        self.act_func = act_func

    def forward(self, x: torch.Tensor, logits: bool = False) -> torch.Tensor:
        if getattr(self.projection, "out_features", None) == 0:
            return x  # no classes: the pooled features, as timm's num_classes=0 gives
        x = run_linear(self.projection, self.dropout(x))
        if not self.training and not logits and self.act_func is not None:
            x = self.act_func(x)
        return x


class PatchEmbed(nn.Module):
    """Strided convolution for any number of spatial dims: ``[B, C, *S]`` -> ``[B, prod(S'), dim_out]``
    in raster order."""

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        kernel: Sequence[int],
        stride: Sequence[int],
        padding: Sequence[int],
    ):
        super().__init__()
        self.spatial_dims = len(kernel)
        self.proj = conv_nd(self.spatial_dims)(
            dim_in, dim_out, kernel_size=tuple(kernel), stride=tuple(stride), padding=tuple(padding)
        )

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        if 4 <= x.ndim <= 5 and (_eager_cpu(x, self.proj.weight) or gpu.channels_last_stem(x)):
            # A channels-last convolution writes [B, *S, C]: the tokens come out contiguous, so the
            # position add and the unroll gather after it read whole rows, which makes the CPU stem
            # faster with the same sums (benchmarks/README.md, "A lean stem"). On CUDA, cuDNN's
            # channels-last kernels are the fast ones for bf16 besides. (Not under vmap, which
            # cannot change memory formats.)
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        x = do_masked_conv(x, self.proj, mask)
        return x.flatten(2).transpose(1, 2)

    def forward_units(
        self, x: torch.Tensor, mask: torch.Tensor, kept: torch.Tensor, unit_grid: Sequence[int], unit: Sequence[int]
    ) -> Optional[torch.Tensor]:
        """Embed the kept mask units only (what MAE pretraining needs, 10-40% of the tokens).

        Args:
            x: ``[B, C_in, *S]`` input, ``S = unit_grid * unit * stride``.
            mask: bool ``[B, prod(unit_grid)]``, True = kept.
            kept: ``[B, K]`` raster indices of each row's kept units, ascending.
            unit_grid, unit: mask units per dim, tokens per unit per dim.
        Returns:
            ``[B, K, dim_out, prod(unit)]`` tokens, raster order within each unit, equal to the
            matching tokens of ``forward(x, mask)``; ``None`` when the convolution's padding is too
            small for the unit tiles below (never for Hiera's own stems).

        Each unit's tokens read a tile of ``(unit - 1) * stride + kernel`` input pixels per dim: the
        unit's own pixels and a halo of its neighbours'. Zeroing the masked units' pixels first (as
        ``forward`` does) and convolving the kept tiles without padding gives the same sums as the
        full convolution at those tokens.
        """
        conv = self.proj
        kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
        if isinstance(padding, str) or any(k - s > 2 * p for k, s, p in zip(kernel, stride, padding)):
            return None
        batch, chans = x.shape[:2]
        dims = len(unit_grid)
        pixels = [u * s for u, s in zip(unit, stride)]  # per unit and dim
        # Zero the masked units' pixels: [B, C, U_1, P_1, U_2, P_2, ...] * [B, 1, U_1, 1, U_2, 1, ...].
        split = [batch, chans] + [v for g, p in zip(unit_grid, pixels) for v in (g, p)]
        keep = mask.view([batch, 1] + [v for g in unit_grid for v in (g, 1)]).to(x.dtype)
        x = (x.reshape(split) * keep).view(x.shape)
        x = F.pad(x, [v for p in reversed(padding) for v in (p, p)])
        tile = [(u - 1) * s + k for u, s, k in zip(unit, stride, kernel)]
        for d in range(dims):  # a view: [B, C, *unit_grid, *tile]
            x = x.unfold(2 + d, tile[d], pixels[d])
        coords, rest = [], kept
        for g in reversed(unit_grid):  # raster unit index -> per-dim unit coordinates
            coords.insert(0, rest % g)
            rest = rest // g
        rows = torch.arange(batch, device=kept.device).view(batch, 1).expand_as(kept)
        tiles = x[(rows, slice(None), *coords)]  # [B, K, C, *tile]: copies the kept tiles only
        conv_fn = (F.conv1d, F.conv2d, F.conv3d)[dims - 1]
        y = conv_fn(tiles.reshape(-1, chans, *tile), conv.weight, conv.bias, stride=stride)
        return y.view(batch, kept.shape[1], y.shape[1], -1)
