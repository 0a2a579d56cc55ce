"""HieraDet: the Hiera trunk of SAM 2 / SAM 2.1's image encoder, as a model of this package.

SAM 2 (Ravi et al., 2024) changed Hiera for dense prediction at high resolution:

* tokens stay a ``[B, H, W, C]`` map throughout (no unroll / reroll of the token order);
* attention runs inside square windows (ViTDet-style, zero-padded when the map does not tile
  into them), except in a few global-attention blocks (``global_att_blocks``);
* the position embedding is a low-resolution *background* embedding interpolated (bicubic) to
  the token grid, plus one embedding per position inside a first-stage window, tiled
  ("Window Attention is Bugged", Bolya et al. 2023);
* the first block of each of the first ``q_pool`` stage transitions max-pools its queries (and
  its projected residual) by ``q_stride``, halving the map.

Parameter names are those of SAM 2's trunk (``sam2.modeling.backbones.hieradet.Hiera``): a SAM 2
checkpoint holds exactly this model's state dict under ``image_encoder.trunk.``, so our layout for
HieraDet *is* SAM 2's trunk layout. timm's ``sam2_hiera_*`` names the MLP layers ``mlp.fc1`` /
``mlp.fc2`` instead of ``mlp.layers.0`` / ``mlp.layers.1`` and always has a ``head.norm``
(:func:`hiera.formats.timm_layout.timm_hieradet_to_ours` converts).

Unlike SAM 2, ``num_classes > 0`` adds a classification head as timm offers one: the last stage's
map averaged over space, a LayerNorm (``norm``) and a linear layer (``head.projection``, our
plain Hiera's name).
"""

from __future__ import annotations

import math
from functools import partial
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .config import records_config
from .fast import RepacksOnModeChange, run_linear
from .hub import HubMixin
from .layers import DropPath, Head, PatchEmbed, attention
from .model import Hiera, _is_int, _tuple, check_input_tensor

__all__ = ["HieraDet"]

# SAM 2 builds its norms from the string "LayerNorm" with eps 1e-6 (timm's LayerNorm default too).
_LayerNorm = partial(nn.LayerNorm, eps=1e-6)


# ---------------------------------------------------------------------------------------- helpers
def _max_pool(x: torch.Tensor, stride: Tuple[int, int]) -> torch.Tensor:
    """Max-pool a channels-last map by ``stride``: ``[B, H, W, C]`` -> ``[B, H / sh, W / sw, C]``.

    SAM 2 uses ``nn.MaxPool2d(stride, stride)`` on a permuted NCHW copy; a reshape and ``amax``
    does the same on the channels-last map without the two permutes. (``hiera.layers.do_pool``
    pools the unrolled token order of the plain Hiera, which HieraDet does not have.) The sizes
    always divide here (checked at construction and on input).
    """
    batch, height, width, channels = x.shape
    sh, sw = stride
    return x.reshape(batch, height // sh, sh, width // sw, sw, channels).amax(dim=(2, 4))


def _to_windows(x: torch.Tensor, window: int) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """``[B, H, W, C]`` -> ``[B * nh * nw, window, window, C]`` and ``(nh, nw)``.

    A map that does not tile is zero-padded at the bottom and right first, as SAM 2 does: the
    padded tokens are not masked, so they take part in attention as keys (with the qkv bias as
    their projection), and SAM 2's trained weights expect exactly that.
    """
    batch, height, width, channels = x.shape
    nh, nw = -(-height // window), -(-width // window)
    pad_h, pad_w = nh * window - height, nw * window - width
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    x = x.reshape(batch, nh, window, nw, window, channels).transpose(2, 3)
    return x.reshape(batch * nh * nw, window, window, channels), (nh, nw)


def _from_windows(x: torch.Tensor, grid: Tuple[int, int], size: Tuple[int, int]) -> torch.Tensor:
    """Undo :func:`_to_windows`: ``[B * nh * nw, wh, ww, C]`` -> ``[B, H, W, C]`` (the padding cut off)."""
    nh, nw = grid
    _, wh, ww, channels = x.shape
    batch = x.shape[0] // (nh * nw)
    x = x.reshape(batch, nh, nw, wh, ww, channels).transpose(2, 3).reshape(batch, nh * wh, nw * ww, channels)
    height, width = size
    if nh * wh != height or nw * ww != width:
        x = x[:, :height, :width].contiguous()
    return x


# ----------------------------------------------------------------------------------------- layers
class _Linears(RepacksOnModeChange, nn.ModuleList):
    """SAM 2's ``MLP.layers``: an ``nn.ModuleList`` (keys ``layers.0.*``, ``layers.1.*``) that is also a
    :class:`~hiera.fast.RepacksOnModeChange`, because its Linear layers run through
    :func:`~hiera.fast.run_linear`, which needs each such layer to be a direct child of one."""


class HieraDetMlp(RepacksOnModeChange):
    """Two-layer perceptron ``layers.0 -> GELU -> layers.1``: ``[..., dim] -> [..., dim]``.

    The computation of :class:`hiera.layers.Mlp`, written again for SAM 2's key names
    (``mlp.layers.0`` / ``mlp.layers.1`` rather than ``mlp.fc1`` / ``mlp.fc2``), so that SAM 2's
    checkpoints load without renaming.
    """

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.layers = _Linears([nn.Linear(dim, hidden), nn.Linear(hidden, dim)])
        self.act = nn.GELU()  # (as SAM 2's MLP: a module, exact GELU)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if type(self.act) is nn.GELU and self.act.approximate == "none":
            x = run_linear(self.layers[0], x, act="gelu")  # GELU fused into the product on the CPU path
        else:
            x = self.act(run_linear(self.layers[0], x))
        return run_linear(self.layers[1], x)


class HieraDetAttention(RepacksOnModeChange):
    """Multi-head self-attention over a (window of a) channels-last map, with optional query pooling.

    ``[B', h, w, dim]`` -> ``[B', h / sh, w / sw, dim_out]`` (``sh, sw = q_stride``, or 1 without
    pooling). ``B'`` is the batch times the windows when the block attends within windows: every
    window is an independent sequence of ``h * w`` tokens. Keys and values keep the full
    resolution; only the queries are max-pooled, which is what halves the map.
    """

    def __init__(self, dim: int, dim_out: int, heads: int, q_stride: Optional[Tuple[int, int]] = None):
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.heads = heads
        self.head_dim = dim_out // heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, 3 * dim_out)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = run_linear(self.qkv, x).reshape(batch, height * width, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B', heads, h * w, head_dim]
        if self.q_stride is not None:
            # Pool each head's queries over the map: [B', heads, h, w, d] -> [B', heads, h', w', d].
            sh, sw = self.q_stride
            q = q.reshape(batch, self.heads, height // sh, sh, width // sw, sw, self.head_dim).amax(dim=(3, 5))
            height, width = height // sh, width // sw
            q = q.reshape(batch, self.heads, height * width, self.head_dim)
        x = attention(q, k, v)  # [B', heads, h' * w', d]; scaled by head_dim ** -0.5 as SAM 2
        x = x.transpose(1, 2).reshape(batch, height, width, self.dim_out)
        return run_linear(self.proj, x)

    def forward_units(self, x: torch.Tensor, windows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Attention across the kept mask units of a masked map (MAE pretraining):
        ``[B, K, uh, uw, dim]`` -> ``[B, K, uh / sh, uw / sw, dim_out]``.

        The tokens of a row's ``K`` units form one sequence (attention does not depend on the
        tokens' order); queries are pooled within each unit. ``windows`` (``[B, K]`` integers)
        lets a token attend only to the units with its unit's window id, for windows that span
        several units but not the whole map; ``None``: one window over every kept unit.
        """
        batch, units, height, width, _ = x.shape
        keys_per_unit = height * width
        qkv = run_linear(self.qkv, x).reshape(batch, units * keys_per_unit, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, heads, K * uh * uw, head_dim]
        if self.q_stride is not None:
            sh, sw = self.q_stride
            q = q.reshape(batch, self.heads, units, height // sh, sh, width // sw, sw, self.head_dim).amax(dim=(4, 6))
            height, width = height // sh, width // sw
            q = q.reshape(batch, self.heads, units * height * width, self.head_dim)
        if windows is None:
            x = attention(q, k, v)
        else:
            same = windows[:, :, None] == windows[:, None, :]  # [B, K, K]: unit pairs in one window
            allowed = same.repeat_interleave(height * width, 1).repeat_interleave(keys_per_unit, 2)
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
        x = x.transpose(1, 2).reshape(batch, units, height, width, self.dim_out)
        return run_linear(self.proj, x)

    def extra_repr(self) -> str:
        return f"heads={self.heads}, q_stride={self.q_stride}"


class HieraDetBlock(RepacksOnModeChange):
    """Pre-norm transformer block on a channels-last map: ``[B, H, W, dim]`` -> ``[B, H', W', dim_out]``.

    ``window_size > 0``: attention within ``window_size``-square windows (zero-padded to tile);
    ``0``: global attention. With ``q_stride`` the queries and the residual are max-pooled
    (``H' = H / sh``); when ``dim != dim_out`` the residual is the projection (``proj``) of the
    normalised input, as in SAM 2.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: Optional[Tuple[int, int]] = None,
        window_size: int = 0,
    ):
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        # (Registration order as SAM 2's block, so state dicts list their keys in the same order.)
        self.norm1 = _LayerNorm(dim)
        self.attn = HieraDetAttention(dim, dim_out, heads, q_stride)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = _LayerNorm(dim_out)
        self.mlp = HieraDetMlp(dim_out, int(dim_out * mlp_ratio))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = run_linear(self.proj, x)
            if self.q_stride is not None:
                shortcut = _max_pool(shortcut, self.q_stride)
        if self.window_size:
            x, grid = _to_windows(x, self.window_size)
            x = _from_windows(self.attn(x), grid, shortcut.shape[1:3])
        else:
            x = self.attn(x)
        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def forward_units(self, x: torch.Tensor, windows: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The block on the kept mask units of a masked map (MAE pretraining):
        ``[B, K, uh, uw, dim]`` -> ``[B, K, uh', uw', dim_out]``, the same computation as
        :meth:`forward` on those units' tokens.

        A window that tiles a unit (SAM 2's first two stages, where a window *is* a unit) attends
        within each unit, as :meth:`forward` does on the whole map. A larger window, or global
        attention, attends across the kept units (see :meth:`HieraDetAttention.forward_units` for
        ``windows``): the masked units are simply absent.
        """
        batch, units, height, width, _ = x.shape
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            shortcut = run_linear(self.proj, x)
            if self.q_stride is not None:
                shortcut = _max_pool(shortcut.flatten(0, 1), self.q_stride)
                shortcut = shortcut.view(batch, units, *shortcut.shape[1:])
        window = self.window_size
        if window and height % window == 0 and width % window == 0:
            y, grid = _to_windows(x.flatten(0, 1), window)
            y = _from_windows(self.attn(y), grid, shortcut.shape[2:4])
            y = y.view(batch, units, *y.shape[1:])
        else:
            y = self.attn.forward_units(x, windows)
        x = shortcut + self.drop_path(y)
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, dim_out={self.dim_out}, window_size={self.window_size}"


# ------------------------------------------------------------------------------------------ model
class HieraDet(nn.Module, HubMixin):
    """SAM 2's Hiera trunk ("HieraDet"), with timm's optional classification head.

    Input ``[B, in_chans, H, W]``, any ``H, W`` that are multiples of :attr:`size_multiple` (32 for
    every SAM 2 configuration): the position embedding is interpolated to the token grid on every
    call, as SAM 2 does, so ``input_size`` is only the size the model is meant for (SAM 2 runs at
    1024 x 1024); set ``model.dynamic_size = False`` to accept that size only.

    * ``forward(x)``: with a head (``num_classes > 0``) logits ``[B, num_classes]``; without one
      (the default, SAM 2's trunk) the last stage's map ``[B, C_last, H / 32, W / 32]``.
    * ``forward_features(x)``: the last stage's map, channels last ``[B, H / 32, W / 32, C_last]``.
    * ``forward_intermediates(x, indices, output_fmt)``: per-stage maps at strides 4, 8, 16, 32
      (what SAM 2's trunk returns to its FPN neck, in stage order).

    Constructor arguments and defaults are SAM 2's ``Hiera`` (the B+ trunk), plus ``input_size``,
    ``in_chans``, ``num_classes``, ``mlp_ratio``, ``head_dropout`` and ``head_init_scale``;
    ``model.config`` records them all and ``HieraDet(config=model.config)`` rebuilds the model.

    Args:
        embed_dim, num_heads: channels and heads of the first stage; each later stage multiplies
            them by ``dim_mul`` and ``head_mul``.
        drop_path_rate: stochastic depth of the last block (growing linearly from 0).
        q_pool: how many stage transitions pool the queries (halving the map); at most
            ``len(stages) - 1``.
        q_stride: the pooling stride ``(sh, sw)``.
        stages: blocks per stage.
        window_pos_embed_bkg_spatial_size: grid ``(h, w)`` of the background position embedding.
        window_spec: attention window (square side, in tokens) per stage; ``0`` attends globally.
            The first block of a stage still uses the previous stage's window (it pools from it).
            ``window_spec[0]`` is also the side of the tiled window position embedding.
        global_att_blocks: blocks (0-based, over the whole trunk) that attend globally.
        input_size: ``(H, W)`` the model is meant for.
        in_chans: input channels.
        num_classes: 0 for the trunk alone; ``K > 0`` adds the head (mean over space, LayerNorm,
            linear to ``K`` logits).
        mlp_ratio: MLP hidden width / block width.
        head_dropout: dropout before the head's linear layer.
        head_init_scale: the head's initial weights are scaled by this (as timm).
    """

    @records_config
    def __init__(
        self,
        embed_dim: int = 96,  # channels of the first stage
        num_heads: int = 1,  # heads of the first stage
        drop_path_rate: float = 0.0,
        q_pool: int = 3,  # number of stage transitions that pool the queries
        q_stride: Tuple[int, int] = (2, 2),
        stages: Tuple[int, ...] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: Tuple[int, int] = (14, 14),
        window_spec: Tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: Optional[Tuple[int, ...]] = (12, 16, 20),
        input_size: Tuple[int, int] = (1024, 1024),  # the arguments below are this package's, not SAM 2's
        in_chans: int = 3,
        num_classes: int = 0,
        mlp_ratio: float = 4.0,
        head_dropout: float = 0.0,
        head_init_scale: float = 0.001,
    ):
        super().__init__()
        stages, window_spec = _tuple(stages, "stages"), _tuple(window_spec, "window_spec")
        q_stride, input_size = _tuple(q_stride, "q_stride"), _tuple(input_size, "input_size")
        bkg_size = _tuple(window_pos_embed_bkg_spatial_size, "window_pos_embed_bkg_spatial_size")
        global_att_blocks = () if global_att_blocks is None else _tuple(global_att_blocks, "global_att_blocks")
        if not _is_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: the trunk, no head), got {num_classes!r}")
        Hiera._check_widths(embed_dim, num_heads, num_classes, stages, dim_mul, head_mul, mlp_ratio,
                            drop_path_rate, head_dropout)
        self._check_config(stages, q_pool, q_stride, window_spec, global_att_blocks, bkg_size, in_chans)

        depth = sum(stages)
        self.in_chans = in_chans
        self.patch_stride = (4, 4)  # SAM 2's stem: a 7x7 convolution, stride 4, padding 3
        self.q_pool, self.q_stride = q_pool, q_stride
        self.window_spec, self.global_att_blocks = window_spec, global_att_blocks
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.size_multiple = self._size_multiple()
        bad = [s for s, m in zip(input_size, self.size_multiple) if not _is_int(s) or s < 1 or s % m]
        if len(input_size) != 2 or bad:
            raise ValueError(
                f"input_size={input_size} must be (H, W) with both sides positive multiples of {self.size_multiple} "
                f"(patch stride 4 x window_spec[0] and the q-pooling stride)"
            )
        self.input_size = input_size
        self.dynamic_size = True  # any size that tiles, as SAM 2; False: input_size only

        self.patch_embed = PatchEmbed(in_chans, embed_dim, (7, 7), self.patch_stride, (3, 3))
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *bkg_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, window_spec[0], window_spec[0]))

        # Stochastic depth grows linearly over blocks (float32 linspace, as SAM 2).
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()
        self.blocks = nn.ModuleList()
        self.feature_info: List[dict] = []
        stage, dim, heads, reduction = 0, embed_dim, num_heads, self.patch_stride[0]
        for i in range(depth):
            dim_out = dim
            # The first block of a stage attends with the previous stage's window: it pools the
            # queries of that stage's map, so the pooled window is the new stage's map unit.
            window = 0 if i in global_att_blocks else window_spec[stage]
            if i - 1 in self.stage_ends:
                dim_out, heads = int(dim * dim_mul), int(heads * head_mul)
                stage += 1
            pools = i in q_pool_blocks
            self.blocks.append(HieraDetBlock(dim, dim_out, heads, mlp_ratio, dpr[i], q_stride if pools else None, window))
            reduction *= q_stride[0] if pools else 1
            if i in self.stage_ends:
                self.feature_info.append({"num_chs": dim_out, "reduction": reduction, "module": f"blocks.{i}"})
            dim = dim_out
        self.num_features = dim

        if num_classes > 0:
            self.norm = _LayerNorm(dim)
            # Logits in every mode: the plain Hiera's eval-mode softmax is the official package's
            # convention, which neither SAM 2 nor timm's HieraDet has.
            self.head = Head(dim, num_classes, dropout_rate=head_dropout, act_func=None)
        self.grad_checkpointing = False
        self._init_weights(head_init_scale)

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_config(stages, q_pool, q_stride, window_spec, global_att_blocks, bkg_size, in_chans) -> None:
        """Arguments that fit each other, or a ValueError naming the one that does not."""
        for name, value, least in (("stages", stages, 1), ("q_stride", q_stride, 1),
                                   ("window_pos_embed_bkg_spatial_size", bkg_size, 1),
                                   ("window_spec", window_spec, 0), ("global_att_blocks", global_att_blocks, 0)):
            if any(not _is_int(v) or v < least for v in value):
                raise ValueError(f"{name} must hold integers >= {least}, got {tuple(value)}")
        for name, value in (("q_stride", q_stride), ("window_pos_embed_bkg_spatial_size", bkg_size)):
            if len(value) != 2:
                raise ValueError(f"{name} must be (h, w), got {tuple(value)}")
        if not stages:
            raise ValueError("stages must list at least one stage")
        if not _is_int(in_chans) or in_chans < 1:
            raise ValueError(f"in_chans must be an integer >= 1, got {in_chans!r}")
        if not _is_int(q_pool) or not 0 <= q_pool < len(stages):
            raise ValueError(
                f"q_pool={q_pool!r} must be an integer from 0 to {len(stages) - 1} (the number of stage "
                f"transitions of stages={tuple(stages)})"
            )
        if len(window_spec) != len(stages):
            raise ValueError(
                f"window_spec={tuple(window_spec)} needs one window per stage: stages={tuple(stages)} has "
                f"{len(stages)}"
            )
        if window_spec[0] < 1:
            raise ValueError(
                f"window_spec[0] must be >= 1: it is also the side of the window position embedding, got "
                f"{tuple(window_spec)}"
            )
        depth = sum(stages)
        outside = [b for b in global_att_blocks if b >= depth]
        if outside or len(set(global_att_blocks)) != len(global_att_blocks):
            raise ValueError(
                f"global_att_blocks={tuple(global_att_blocks)} must name distinct blocks 0..{depth - 1} "
                f"(stages={tuple(stages)} has {depth} blocks)"
                + (f"; {outside} {'is' if len(outside) == 1 else 'are'} out of range" if outside else "")
            )
        # A pooling block attends within the previous stage's window and pools each window's
        # queries: the window must split evenly, or windows would not line up with the pooled map.
        ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        for stage, end in enumerate(ends[:q_pool]):
            block, window = end + 1, window_spec[stage]
            if block not in global_att_blocks and window and any(window % s for s in q_stride):
                raise ValueError(
                    f"block {block} (the first of stage {stage + 2}) pools its queries by q_stride={tuple(q_stride)} "
                    f"within windows of window_spec[{stage}]={window}, which is not a multiple of it; choose a "
                    f"window divisible by the stride, or make block {block} global (global_att_blocks)"
                )

    def _size_multiple(self) -> Tuple[int, int]:
        """Each input side must be a multiple of this: the patch stride times the window position
        embedding's tile (``window_spec[0]`` tokens) and times the total query pooling."""
        return tuple(
            self.patch_stride[d] * math.lcm(self.window_spec[0], self.q_stride[d] ** self.q_pool) for d in range(2)
        )

    def _init_weights(self, head_init_scale: float) -> None:
        """timm's initialisation of these models (SAM 2 trains from its own checkpoints): truncated
        normal (std 0.02) linear weights and position embeddings, zero biases, and each block's
        output projections scaled by ``1 / sqrt(2 * depth)`` so the residual stream starts small."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.pos_embed_window, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        with torch.no_grad():
            for depth, blk in enumerate(self.blocks, start=1):
                blk.attn.proj.weight.div_(math.sqrt(2.0 * depth))
                blk.mlp.layers[1].weight.div_(math.sqrt(2.0 * depth))
            if self.has_head:
                self.head.projection.weight.mul_(head_init_scale)
                self.head.projection.bias.mul_(head_init_scale)

    @property
    def has_head(self) -> bool:
        """Whether the model has the classification head (``num_classes > 0``)."""
        return isinstance(getattr(self, "head", None), nn.Module)

    @property
    def num_classes(self) -> int:
        return self.head.projection.out_features if self.has_head else 0

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        return ["pos_embed", "pos_embed_window"]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth for layer-wise lr decay (timm's convention): the stem
        (patch and position embeddings) first, block i next, the head's norm last."""
        return dict(
            stem=r"^(?:pos_embed|pos_embed_window|patch_embed)",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    def reset_classifier(self, num_classes: int, head_dropout: Optional[float] = None) -> None:
        """A fresh ``num_classes``-way head (its norm kept when there was one); ``0`` removes the head
        and its norm, leaving SAM 2's trunk. ``model.config`` follows."""
        if not _is_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: the trunk, no head), got {num_classes!r}")
        dropout = self.config.get("head_dropout", 0.0) if head_dropout is None else head_dropout
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout < 1:
            raise ValueError(f"head_dropout must be in [0, 1), got {dropout!r}")
        ref = self.patch_embed.proj.weight
        if num_classes == 0:
            for name in ("head", "norm"):
                if name in self._modules:
                    delattr(self, name)
        else:
            if "norm" not in self._modules:
                self.norm = _LayerNorm(self.num_features).to(device=ref.device, dtype=ref.dtype)
            self.head = Head(self.num_features, num_classes, dropout_rate=dropout, act_func=None)
            self.head.to(device=ref.device, dtype=ref.dtype)
            nn.init.trunc_normal_(self.head.projection.weight, std=0.02)
            nn.init.zeros_(self.head.projection.bias)
            with torch.no_grad():
                self.head.projection.weight.mul_(self.config.get("head_init_scale", 0.001))
        self.config["num_classes"] = num_classes
        self.config["head_dropout"] = dropout

    # ------------------------------------------------------------------ inputs
    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input [B, {self.in_chans}, H, W], got {type(x).__name__}")
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D input [B, {self.in_chans}, H, W], got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels ([B, C, H, W]), got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        size = tuple(x.shape[2:])
        multiple = self.size_multiple
        if any(s % m or s == 0 for s, m in zip(size, multiple)):
            nearest = tuple(m * max(1, round(s / m)) for s, m in zip(size, multiple))
            raise ValueError(
                f"input size {size} does not tile: both sides must be positive multiples of {multiple} "
                f"(patch stride 4 x the {self.window_spec[0]}-token window position embedding and the query "
                f"pooling); resize or pad the input, e.g. to {nearest}"
            )
        if size != tuple(self.input_size) and not self.dynamic_size:
            raise ValueError(
                f"expected spatial size {tuple(self.input_size)} for this model, got {size}; set "
                f"model.dynamic_size = True to accept any size that is a multiple of {multiple}"
            )
        check_input_tensor(x, self.patch_embed.proj.weight)

    # ------------------------------------------------------------------ forward
    def get_pos_embed(self, grid: Sequence[int]) -> torch.Tensor:
        """The position embedding for a token grid ``(h, w)``, channels last ``[1, h, w, C]``: the
        background embedding resized (bicubic, no antialiasing, as SAM 2) plus the window
        embedding tiled over the grid."""
        grid = tuple(int(g) for g in grid)
        background = F.interpolate(self.pos_embed, size=grid, mode="bicubic")
        tiles = [g // w for g, w in zip(grid, self.pos_embed_window.shape[2:])]
        return (background + self.pos_embed_window.tile([1, 1, *tiles])).permute(0, 2, 3, 1)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C_in, H, W]`` -> tokens ``[B, H / 4, W / 4, embed_dim]`` with the position embedding added."""
        grid = (x.shape[2] // self.patch_stride[0], x.shape[3] // self.patch_stride[1])
        # [B, h * w, C] in raster order -> [B, h, w, C] (explicit sizes: an empty batch has no -1 to infer)
        tokens = self.patch_embed(x).reshape(x.shape[0], *grid, self.patch_embed.proj.out_channels)
        return tokens + self.get_pos_embed(grid)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them: much
        less memory for training, about a third more compute."""
        self.grad_checkpointing = enable

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, channels last: ``[B, C_in, H, W]`` -> ``[B, H / 32, W / 32, C_last]``."""
        self._check_input(x)
        x = self._embed(x)
        for blk in self.blocks:
            x = self._run_block(blk, x)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Union[int, Sequence[int]]] = None,
        output_fmt: str = "NCHW",
        per_block: bool = False,
        *,
        norm: bool = False,
        intermediates_only: bool = True,
    ):
        """Multi-scale feature maps for dense tasks (what SAM 2's trunk hands its FPN neck).

        Args:
            x: ``[B, C_in, H, W]``, sides multiples of :attr:`size_multiple`.
            indices: stages (default all: strides 4, 8, 16, 32), or blocks with ``per_block=True``;
                negative indices count from the end; an int ``n`` takes the last ``n`` (timm's
                convention).
            output_fmt: ``"NCHW"`` (``[B, C_i, H / s_i, W / s_i]``) or ``"NHWC"`` (channels last).
            norm: accepted for timm's signature; HieraDet has no norm for intermediate maps (SAM 2
                has none, nor does timm), so ``True`` raises.
            intermediates_only: ``True`` (default, as :meth:`hiera.Hiera.forward_intermediates`)
                returns the list of maps; ``False`` returns ``(last stage's map [B, h, w, C_last],
                maps)`` as timm's default does, running every block.
        Returns:
            one map per index, in the order given. Without ``intermediates_only=False``, blocks
            after the last one asked for are not run.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        if norm:
            raise ValueError("norm=True is not supported: HieraDet has no norm for its intermediate maps (nor has SAM 2)")
        self._check_input(x)
        points = list(range(len(self.blocks))) if per_block else list(self.stage_ends)
        what = "blocks" if per_block else "stages"
        if isinstance(indices, int) and not isinstance(indices, bool):
            if not 0 < indices <= len(points):
                raise ValueError(f"indices={indices} asks for the last {indices} of {len(points)} {what}")
            indices = list(range(len(points) - indices, len(points)))
        indices = list(range(len(points))) if indices is None else list(indices)
        try:
            wanted = [points[i] for i in indices]
        except (IndexError, TypeError):
            raise ValueError(f"indices {indices} out of range: the model has {len(points)} {what}") from None
        if not wanted:
            raise ValueError("indices is empty: ask for at least one stage (or block)")
        last = len(self.blocks) - 1 if not intermediates_only else max(wanted)
        x = self._embed(x)
        maps = {}
        for i, blk in enumerate(self.blocks[: last + 1]):
            x = self._run_block(blk, x)
            if i in wanted:
                maps[i] = x.permute(0, 3, 1, 2) if output_fmt == "NCHW" else x
        out = [maps[i] for i in wanted]
        return out if intermediates_only else (x, out)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The last stage's map ``[B, h, w, C]`` -> logits ``[B, num_classes]``; with ``pre_logits``
        the pooled (and, with a head, normalised) features ``[B, C]``."""
        x = x.mean(dim=(1, 2))
        if not self.has_head:
            if pre_logits:
                return x
            raise ValueError("this HieraDet has no classification head (num_classes=0); use pre_logits=True "
                             "for the pooled features, or reset_classifier(K)")
        x = self.norm(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """With a head: logits ``[B, num_classes]``. Without one: the last stage's map
        ``[B, C_last, H / 32, W / 32]`` (channels first, as SAM 2's trunk returns its maps)."""
        x = self.forward_features(x)
        if self.has_head:
            return self.forward_head(x)
        return x.permute(0, 3, 1, 2)
