"""The Hiera encoder and classifier (image and video, any number of spatial dimensions)."""

from __future__ import annotations

import math
import numbers
from functools import partial
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .config import records_config
from .fast import RepacksOnModeChange
from .hub import HubMixin
from .layers import Head, HieraBlock, PatchEmbed, softmax_last_dim
from .pos_embed import resize_pos_embed, sincos_pos_embed
from .token_order import Reroll, Unroll, _IndexTables

# How position embeddings start: "trunc_normal" (the official init, std 0.02) or "sincos" (sine-cosine
# of the token position, as MAE's fixed embedding; see Hiera._sincos_pos_embed).
POS_EMBED_INITS = ("trunc_normal", "sincos")


class Geometry(NamedTuple):
    """Everything that depends on the input size: token grid, mask-unit grid, token order."""

    grid: Tuple[int, ...]  # tokens after the patch embedding
    mask_grid: Tuple[int, ...]  # mask units
    unroll: Unroll
    reroll: Reroll


def _norm_layer(norm_layer: Union[str, type, partial]):
    if isinstance(norm_layer, str):
        if not hasattr(nn, norm_layer):
            raise ValueError(f"norm_layer {norm_layer!r} is not a torch.nn layer (expected e.g. 'LayerNorm')")
        return partial(getattr(nn, norm_layer), eps=1e-6)
    return norm_layer


def _tuple(value, name: str) -> tuple:
    try:
        return tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence (e.g. a tuple), got {value!r}") from None


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def mask_ratio_value(mask_ratio) -> float:
    """``mask_ratio`` as a float in [0, 1), else a TypeError / ValueError saying so."""
    try:
        if isinstance(mask_ratio, (str, bytes, bool)):
            raise TypeError
        ratio = float(mask_ratio)
    except (TypeError, ValueError):
        raise TypeError(f"mask_ratio must be a number in [0, 1), got {mask_ratio!r}") from None
    if not 0.0 <= ratio < 1.0:  # (NaN fails this too)
        raise ValueError(f"mask_ratio must be in [0, 1) (the fraction of mask units hidden), got {mask_ratio}")
    return ratio


def kept_mask_units(mask_ratio, num_units: int, mask_one: bool = False) -> int:
    """How many of ``num_units`` mask units a random mask at ``mask_ratio`` keeps,
    ``int(num_units * (1 - mask_ratio))``: the one rule of every mask in this package. A
    ValueError says why a ratio cannot work: outside [0, 1), one that keeps no unit, or (with
    ``mask_one``, for the MAE, whose loss is over the masked units) one that masks none."""
    keep = int(num_units * (1 - mask_ratio_value(mask_ratio)))
    if keep < 1:
        raise ValueError(
            f"mask_ratio {mask_ratio} keeps no mask unit of {num_units}: it must be at most "
            f"{math.floor((1 - 1 / num_units) * 1e4) / 1e4:g} for this input (at least one unit kept)"
        )
    if mask_one and keep >= num_units:
        raise ValueError(
            f"mask_ratio {mask_ratio} masks no mask unit of {num_units}, and the MAE loss is computed over "
            "the masked ones: it must be above 0"
        )
    return keep


class InputMismatchError(TypeError, RuntimeError):
    """The input's dtype or device is not the model's. A TypeError, and the RuntimeError that
    PyTorch (and so the official package) raised for it, so code catching either keeps working."""


def check_input_tensor(x: torch.Tensor, weight: torch.Tensor) -> None:
    """A float input on the device and in the dtype of ``weight`` (the first layer's), or under
    autocast: else a clear error instead of one from deep inside a convolution."""
    if not x.is_floating_point():
        raise TypeError(f"expected a floating point input, got dtype {x.dtype}")
    if x.device != weight.device and weight.device.type != "meta":
        raise InputMismatchError(
            f"input is on {x.device} but the model is on {weight.device}; move one of them (x.to(...))"
        )
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise InputMismatchError(
            f"input dtype {x.dtype} does not match the model's {weight.dtype}; cast the input "
            f"(x.to({weight.dtype})) or the model, or run under torch.autocast"
        )


def check_mask(mask: torch.Tensor, batch: int, mask_grid: Sequence[int]) -> None:
    """A mask over a ``mask_grid`` of units for a batch of ``batch``: ``[B, #units]`` bool (True =
    keep), the same number kept in every row, at least one; else the error that says what is wrong."""
    units = math.prod(mask_grid)
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a bool tensor [B, {units}], got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = keep), got dtype {mask.dtype}")
    if tuple(mask.shape) != (batch, units):
        raise ValueError(
            f"mask must have shape [B, #mask units] = [{batch}, {units}] "
            f"(mask unit grid {tuple(mask_grid)}), got {tuple(mask.shape)}"
        )
    if batch == 0:  # (an unmasked forward takes an empty batch; a masked one has no row to count)
        raise ValueError(
            "a masked forward needs at least one sample: the number of kept mask units is read "
            "from the mask's rows, and an empty batch has none"
        )
    kept = mask.sum(dim=1)
    if not torch.all(kept == kept[0]):
        raise ValueError(
            f"every row of mask must keep the same number of mask units, got {kept.tolist()}"
        )
    if int(kept[0]) == 0:
        raise ValueError("mask keeps no mask unit: at least one must be True per row")


def random_mask(batch: int, units: int, keep: int, device=None) -> torch.Tensor:
    """A random mask ``[batch, units]`` bool, True = keep, ``keep`` units kept in every row (those
    with the smallest uniform noise)."""
    noise = torch.rand(batch, units, device=device)
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: the smallest noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.zeros([batch, units], device=device)
    mask[:, :keep] = 1
    return torch.gather(mask, dim=1, index=ids_restore).bool()


def _index_tables_follow_the_weights(model: nn.Module, incompatible_keys) -> None:
    """``load_state_dict`` post-hook: a model built on the meta device and loaded with
    ``assign=True`` has real weights but still meta token-order tables (they are not in the state
    dict); rebuild those beside the weights."""
    device = next(model.parameters()).device
    if device.type == "meta":
        return
    for module in model.modules():
        if isinstance(module, _IndexTables) and any(b.is_meta for b in module.buffers(recurse=False)):
            module.materialise(device)


class Hiera(RepacksOnModeChange, HubMixin):
    """Hiera: a hierarchical vision transformer (Ryali et al., ICML 2023).

    Input ``[B, in_chans, *input_size]`` (images ``[B, 3, H, W]``, clips ``[B, 3, T, H, W]``).
    The constructor arguments, defaults and state-dict layout are those of the official package.

    Calling the model returns, as the official package does:

    * no mask: ``[B, num_classes]`` logits in train mode, softmax probabilities in eval mode
      (``return_logits=True``, ``forward_logits`` or ``head.act_func = None`` give logits in eval);
    * with ``mask``: the encoder tokens of the kept mask units ``[B, N_kept, C]``;
    * with ``return_intermediates=True``: ``(out, [per-stage maps])`` where each map is
      ``[B, *grid, C]`` in spatial order (``[B, #kept units, *unit, C]`` when masked).
    """

    @records_config
    def __init__(
        self,
        input_size: Tuple[int, ...] = (224, 224),
        in_chans: int = 3,
        embed_dim: int = 96,  # channels of the first stage
        num_heads: int = 1,  # heads of the first stage
        num_classes: int = 1000,
        stages: Tuple[int, ...] = (2, 3, 16, 3),
        q_pool: int = 3,  # number of stage transitions that pool the queries
        q_stride: Tuple[int, ...] = (2, 2),
        mask_unit_size: Tuple[int, ...] = (8, 8),  # in tokens; a multiple of q_stride ** q_pool
        mask_unit_attn: Tuple[bool, ...] = (True, True, False, False),  # per stage
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        patch_kernel: Tuple[int, ...] = (7, 7),
        patch_stride: Tuple[int, ...] = (4, 4),
        patch_padding: Tuple[int, ...] = (3, 3),
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        norm_layer: Union[str, nn.Module] = "LayerNorm",
        head_dropout: float = 0.0,
        head_init_scale: float = 0.001,
        sep_pos_embed: bool = False,
        abs_win_pos_embed: bool = False,  # the extensions below are timm's, used by its abswin models
        global_pos_size: Tuple[int, ...] = (14, 14),
        init_values: Optional[float] = None,
        use_expand_proj: bool = True,
        pos_embed_init: str = "trunc_normal",  # or "sincos" (ours; how training from scratch starts, not in config)
    ):
        super().__init__()
        norm_layer = _norm_layer(norm_layer)
        if pos_embed_init not in POS_EMBED_INITS:
            raise ValueError(f"pos_embed_init must be one of {POS_EMBED_INITS}, got {pos_embed_init!r}")
        self.pos_embed_init = pos_embed_init
        input_size, q_stride = _tuple(input_size, "input_size"), _tuple(q_stride, "q_stride")
        mask_unit_size, stages = _tuple(mask_unit_size, "mask_unit_size"), _tuple(stages, "stages")
        patch_stride = _tuple(patch_stride, "patch_stride")
        self._check_config(input_size, in_chans, stages, q_pool, q_stride, mask_unit_size, mask_unit_attn,
                           patch_kernel, patch_stride, patch_padding, sep_pos_embed)
        self._check_widths(embed_dim, num_heads, num_classes, stages, dim_mul, head_mul, mlp_ratio,
                           drop_path_rate, head_dropout)

        depth = sum(stages)
        self.input_size = input_size
        self.in_chans = in_chans
        self.patch_stride = patch_stride
        self.tokens_spatial_shape = [i // s for i, s in zip(input_size, patch_stride)]
        num_tokens = math.prod(self.tokens_spatial_shape)
        flat_mu_size = math.prod(mask_unit_size)
        flat_q_stride = math.prod(q_stride)

        self.q_pool, self.q_stride = q_pool, q_stride
        self.mu_size, self.mask_unit_size = flat_mu_size, mask_unit_size
        self.mask_spatial_shape = [i // s for i, s in zip(self.tokens_spatial_shape, mask_unit_size)]
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]

        self.patch_embed = PatchEmbed(in_chans, embed_dim, patch_kernel, patch_stride, patch_padding)

        self.sep_pos_embed = sep_pos_embed
        self.abs_win_pos_embed = abs_win_pos_embed
        if abs_win_pos_embed:
            # "Window Attention is Bugged" (Bolya et al. 2023): a global embedding interpolated to
            # the token grid plus one embedding per position inside a mask unit, tiled.
            if len(input_size) != 2 or sep_pos_embed:
                raise ValueError("abs_win_pos_embed=True needs a 2-D input_size and sep_pos_embed=False")
            self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *global_pos_size))
            self.pos_embed_win = nn.Parameter(torch.zeros(1, embed_dim, *mask_unit_size))
        elif sep_pos_embed:
            self.pos_embed_spatial = nn.Parameter(
                torch.zeros(1, self.tokens_spatial_shape[1] * self.tokens_spatial_shape[2], embed_dim)
            )
            self.pos_embed_temporal = nn.Parameter(torch.zeros(1, self.tokens_spatial_shape[0], embed_dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))

        self._unroll_schedule = [q_stride] * len(self.stage_ends[:-1])
        self.unroll = Unroll(input_size, patch_stride, self._unroll_schedule)
        self.reroll = Reroll(input_size, patch_stride, self._unroll_schedule, self.stage_ends, q_pool)
        self.register_load_state_dict_post_hook(_index_tables_follow_the_weights)
        # Other input sizes (see dynamic_size) get their own token order, built on first use.
        self.dynamic_size = False
        self._geometries: Dict[tuple, Geometry] = {}
        self.grad_checkpointing = False

        q_pool_blocks = [x + 1 for x in self.stage_ends[:q_pool]]
        # Stochastic depth grows linearly over blocks (float32 linspace, as the official code).
        dpr = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()

        cur_stage = 0
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            # The first block of a stage still uses the previous stage's attention kind: it pools,
            # and global attention should only ever run on the pooled resolution.
            use_mask_unit_attn = mask_unit_attn[cur_stage]
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
                if i in q_pool_blocks:
                    flat_mu_size //= flat_q_stride
            self.blocks.append(
                HieraBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    heads=num_heads,
                    mlp_ratio=mlp_ratio,
                    drop_path=dpr[i],
                    norm_layer=norm_layer,
                    q_stride=(flat_q_stride if i in q_pool_blocks else 1),
                    window_size=flat_mu_size,
                    use_mask_unit_attn=use_mask_unit_attn,
                    init_values=init_values,
                    use_expand_proj=use_expand_proj,
                )
            )
            embed_dim = dim_out

        self.num_features = embed_dim
        self.norm = norm_layer(embed_dim)
        self.head = Head(embed_dim, num_classes, dropout_rate=head_dropout)

        if sep_pos_embed:
            nn.init.trunc_normal_(self.pos_embed_spatial, std=0.02)
            nn.init.trunc_normal_(self.pos_embed_temporal, std=0.02)
        else:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if abs_win_pos_embed:
            nn.init.trunc_normal_(self.pos_embed_win, std=0.02)
        if pos_embed_init == "sincos":
            self._sincos_pos_embed()
        self.apply(self._init_weights)
        self.head.projection.weight.data.mul_(head_init_scale)
        self.head.projection.bias.data.mul_(head_init_scale)

    @torch.no_grad()
    def _sincos_pos_embed(self):
        """Start the position embeddings as sine-cosine functions of the token position (still
        learned), as MAE's own fixed embeddings are. On a short MAE pretraining from scratch the
        encoder's features came out markedly better from them than from the official small random
        values, which carry almost no position at first (benchmarks/records/
        2026-12-01-cpu-quickstart-pretraining.md). A window embedding (``abs_win_pos_embed``) keeps
        its random init."""
        if self.sep_pos_embed:
            self.pos_embed_spatial.copy_(sincos_pos_embed(self.tokens_spatial_shape[1:], self.pos_embed_spatial.shape[-1]))
            self.pos_embed_temporal.copy_(sincos_pos_embed(self.tokens_spatial_shape[:1], self.pos_embed_temporal.shape[-1]))
        elif self.abs_win_pos_embed:
            grid = self.pos_embed.shape[2:]
            self.pos_embed.copy_(sincos_pos_embed(grid, self.pos_embed.shape[1]).transpose(1, 2).reshape(self.pos_embed.shape))
        else:
            self.pos_embed.copy_(sincos_pos_embed(self.tokens_spatial_shape, self.pos_embed.shape[-1]))

    # ------------------------------------------------------------------ construction helpers
    @staticmethod
    def _check_config(input_size, in_chans, stages, q_pool, q_stride, mask_unit_size, mask_unit_attn,
                      patch_kernel, patch_stride, patch_padding, sep_pos_embed):
        for name, value, least in (("input_size", input_size, 1), ("q_stride", q_stride, 1),
                                   ("mask_unit_size", mask_unit_size, 1), ("patch_kernel", patch_kernel, 1),
                                   ("patch_stride", patch_stride, 1), ("patch_padding", patch_padding, 0),
                                   ("stages", stages, 1)):
            if any(not _is_int(v) or v < least for v in value):
                raise ValueError(f"{name} must hold integers >= {least}, got {tuple(value)}")
        for name, value, least in (("in_chans", in_chans, 1), ("q_pool", q_pool, 0)):
            if not _is_int(value) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        ndim = len(input_size)
        for name, value in (("q_stride", q_stride), ("mask_unit_size", mask_unit_size),
                            ("patch_kernel", patch_kernel), ("patch_stride", patch_stride),
                            ("patch_padding", patch_padding)):
            if len(value) != ndim:
                raise ValueError(
                    f"{name}={tuple(value)} has {len(value)} dims but input_size={input_size} has {ndim}"
                )
        if not 1 <= ndim <= 3:
            raise ValueError(f"input_size must have 1 to 3 spatial dims, got {input_size}")
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool={q_pool} must be smaller than the number of stages ({len(stages)})")
        if len(mask_unit_attn) < len(stages):
            raise ValueError(f"mask_unit_attn needs one flag per stage ({len(stages)}), got {tuple(mask_unit_attn)}")
        if sep_pos_embed and ndim != 3:
            raise ValueError("sep_pos_embed=True needs 3-D (video) input_size (T, H, W)")
        grid = [i // s for i, s in zip(input_size, patch_stride)]
        unroll = [q ** (len(stages) - 1) for q in q_stride]
        for g, m, u, i, s in zip(grid, mask_unit_size, unroll, input_size, patch_stride):
            if i % s or g % m or g % u:
                raise ValueError(
                    f"input_size={input_size} does not tile: it must be a multiple of patch_stride "
                    f"({tuple(patch_stride)}) times the mask unit ({tuple(mask_unit_size)}) and of "
                    f"patch_stride times q_stride**{len(stages) - 1} ({tuple(unroll)}) in every dim"
                )
        if in_chans < 1:
            raise ValueError(f"in_chans must be positive, got {in_chans}")

    @staticmethod
    def _check_widths(embed_dim, num_heads, num_classes, stages, dim_mul, head_mul, mlp_ratio,
                      drop_path_rate, head_dropout):
        """Widths and rates that can build a model: every stage's channels split evenly into its
        heads (as the constructor computes them: ``int(embed_dim * dim_mul**i)`` channels,
        ``int(num_heads * head_mul**i)`` heads)."""
        for name, value, least in (("embed_dim", embed_dim, 1), ("num_heads", num_heads, 1),
                                   ("num_classes", num_classes, 0)):
            if not _is_int(value) or value < least:
                extra = " (0 gives the pooled features, as in timm)" if name == "num_classes" else ""
                raise ValueError(f"{name} must be an integer >= {least}{extra}, got {value!r}")
        for name, value in (("dim_mul", dim_mul), ("head_mul", head_mul), ("mlp_ratio", mlp_ratio)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        for name, value in (("drop_path_rate", drop_path_rate), ("head_dropout", head_dropout)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        dim, heads = embed_dim, num_heads
        for stage in range(len(stages)):
            if stage:
                dim, heads = int(dim * dim_mul), int(heads * head_mul)
            if dim < 1 or heads < 1 or dim % heads:
                raise ValueError(
                    f"stage {stage + 1} would have {dim} channels in {heads} heads: the channels must be a "
                    f"positive multiple of the heads (embed_dim={embed_dim}, num_heads={num_heads}, "
                    f"dim_mul={dim_mul}, head_mul={head_mul})"
                )

    def _init_weights(self, m: nn.Module, init_bias: float = 0.02):
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, init_bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, init_bias)
            nn.init.constant_(m.weight, 1.0)

    # Arguments the official package does not know: left out of config while at their defaults, so
    # config.json stays loadable by it.
    _EXTENSION_DEFAULTS = {
        "abs_win_pos_embed": False, "global_pos_size": (14, 14), "init_values": None, "use_expand_proj": True,
    }

    def _finalize_config(self):
        """Adjust ``self.config`` after construction (see also MaskedAutoencoderHiera)."""
        # How the weights started is no part of the architecture: the weights say the rest, and a
        # config.json without it loads in the official package too.
        self.config.pop("pos_embed_init", None)
        for key, default in self._EXTENSION_DEFAULTS.items():
            value = self.config.get(key, default)
            if value == default or (isinstance(value, list) and tuple(value) == default):
                self.config.pop(key, None)

    @torch.jit.ignore
    def no_weight_decay(self) -> List[str]:
        if self.sep_pos_embed:
            return ["pos_embed_spatial", "pos_embed_temporal"]
        if self.abs_win_pos_embed:
            return ["pos_embed", "pos_embed_win"]
        return ["pos_embed"]

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """Parameter groups by depth, in timm's convention (used by its layer-wise lr decay): the
        stem (patch embedding, position embeddings) is layer 0, block i is layer i + 1, and the
        final norm and head come last."""
        return dict(
            stem=r"^(?:pos_embed|pos_embed_spatial|pos_embed_temporal|pos_embed_win|patch_embed)",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )

    # ------------------------------------------------------------------ masking
    @property
    def num_mask_units(self) -> int:
        return math.prod(self.mask_spatial_shape)

    def check_mask_ratio(self, mask_ratio: float, num_units: Optional[int] = None) -> int:
        """The number of mask units a random mask at ``mask_ratio`` keeps, or the error that says
        why the ratio cannot work (see :func:`kept_mask_units`; the MAE must mask at least one
        unit). ``num_units`` defaults to the model's own input size."""
        units = self.num_mask_units if num_units is None else int(num_units)
        return kept_mask_units(mask_ratio, units, mask_one=self._masks_are_predicted)

    _masks_are_predicted = False  # True for the MAE (see check_mask_ratio)

    def get_random_mask(self, x: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """Random mask over mask units, ``[B, #units]`` bool, True = keep (the opposite of MAE's
        convention). ``int(#units * (1 - mask_ratio))`` units are kept in every row (see
        :meth:`check_mask_ratio` for the ratios that work)."""
        num_windows = math.prod(self.geometry(x.shape[2:], x.device).mask_grid)
        return random_mask(x.shape[0], num_windows, self.check_mask_ratio(mask_ratio, num_windows), x.device)

    def get_pos_embed(self, grid: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Absolute position embedding ``[1, N, C]`` in raster order, resized to the token ``grid``
        when that differs from the one the model was built for."""
        base = tuple(self.tokens_spatial_shape)
        grid = base if grid is None else tuple(grid)
        if self.abs_win_pos_embed:
            units = [g // m for g, m in zip(grid, self.mask_unit_size)]
            win = self.pos_embed_win.tile([1, 1, *units])
            glob = F.interpolate(self.pos_embed, size=grid, mode="bicubic", antialias=True)
            return (glob + win).flatten(2).transpose(1, 2)
        if self.sep_pos_embed:
            spatial = resize_pos_embed(self.pos_embed_spatial, base[1:], grid[1:])
            temporal = resize_pos_embed(self.pos_embed_temporal, base[:1], grid[:1])
            return spatial.repeat(1, grid[0], 1) + torch.repeat_interleave(temporal, grid[1] * grid[2], dim=1)
        return resize_pos_embed(self.pos_embed, base, grid)

    # ------------------------------------------------------------------ input sizes
    @property
    def size_multiple(self) -> Tuple[int, ...]:
        """Every spatial dim of an input must be a multiple of this (patch stride x mask unit, and
        patch stride x the total q-pooling of the token order)."""
        unroll = [q ** len(self._unroll_schedule) for q in self.q_stride]
        return tuple(
            p * math.lcm(m, u) for p, m, u in zip(self.patch_stride, self.mask_unit_size, unroll)
        )

    def geometry(self, spatial: Sequence[int], device: Optional[torch.device] = None) -> Geometry:
        """Token grid, mask-unit grid and token order for an input of spatial size ``spatial``."""
        spatial = tuple(spatial)
        if spatial == tuple(self.input_size):
            return Geometry(tuple(self.tokens_spatial_shape), tuple(self.mask_spatial_shape), self.unroll, self.reroll)
        key = (spatial, str(device))
        if key not in self._geometries:
            multiple = self.size_multiple
            if len(spatial) != len(multiple) or any(s % m or s <= 0 for s, m in zip(spatial, multiple)):
                raise ValueError(
                    f"input size {spatial} does not tile into this model's mask units: every dim must be a "
                    f"positive multiple of {multiple} (e.g. "
                    f"{tuple(m * max(1, round(i / m)) for m, i in zip(multiple, self.input_size))})"
                )
            grid = tuple(s // p for s, p in zip(spatial, self.patch_stride))
            mask_grid = tuple(g // m for g, m in zip(grid, self.mask_unit_size))
            unroll = Unroll(spatial, self.patch_stride, self._unroll_schedule).to(device)
            reroll = Reroll(spatial, self.patch_stride, self._unroll_schedule, self.stage_ends, self.q_pool).to(device)
            self._geometries[key] = Geometry(grid, mask_grid, unroll, reroll)
        return self._geometries[key]

    # ------------------------------------------------------------------ input checks
    def _check_input(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__name__}")
        kind = {1: "[B, C, L]", 2: "[B, C, H, W]", 3: "[B, C, T, H, W]"}[len(self.input_size)]
        if x.ndim != 2 + len(self.input_size):
            raise ValueError(
                f"expected a {2 + len(self.input_size)}-D input {kind} with spatial size "
                f"{tuple(self.input_size)}, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"expected {self.in_chans} input channels ({kind}), got {x.shape[1]} (shape {tuple(x.shape)})"
            )
        if tuple(x.shape[2:]) != tuple(self.input_size) and not self.dynamic_size:
            raise ValueError(
                f"expected spatial size {tuple(self.input_size)} for this model, got {tuple(x.shape[2:])}; "
                f"build it with input_size={tuple(x.shape[2:])} (pretrained position embeddings are resized "
                f"when loading), or set model.dynamic_size = True to accept any size that is a multiple "
                f"of {self.size_multiple}"
            )
        check_input_tensor(x, self.patch_embed.proj.weight)
        geometry = self.geometry(x.shape[2:], x.device)  # also checks that the size tiles
        if mask is not None:
            self._check_mask(mask, x.shape[0], geometry.mask_grid)

    def _prepare(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        """What every forward entry point does first: check the input. (Nothing process-wide: the
        allocator setting that large CPU batches gain from is an opt-in, :func:`hiera.fast.reuse_memory`.)"""
        self._check_input(x, mask)

    def check_maskable(self) -> None:
        """Raise unless a mask keeps exactly the tokens of its kept units, as the MAE needs: after
        the token reorder (which unrolls ``len(stages) - 1`` times by ``q_stride``) the tokens of
        one mask unit sit ``#units`` apart only when every unit spans whole unroll blocks;
        otherwise kept units take the tokens of other units (a mask unit of 2x2 tokens in a
        3-stage model) and the MAE decoder would put its predictions in the wrong places. The
        classifier's masked forward keeps the official package's behaviour for such units (see
        the README), so only the MAE calls this."""
        unroll = [q ** len(self._unroll_schedule) for q in self.q_stride]
        if any(m % u for m, u in zip(self.mask_unit_size, unroll)):
            raise ValueError(
                f"masking needs mask_unit_size={tuple(self.mask_unit_size)} to be a multiple of "
                f"q_stride**{len(self._unroll_schedule)} = {tuple(unroll)} (the token order's unroll over "
                f"{len(self._unroll_schedule) + 1} stages); use larger mask units or fewer stages"
            )

    def _check_mask(self, mask: torch.Tensor, batch: int, mask_grid: Sequence[int]) -> None:
        check_mask(mask, batch, mask_grid)

    # ------------------------------------------------------------------ forward
    def _keep_units(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Drop the tokens of masked units: ``[B, N, C]`` -> ``[B, N_kept, C]``."""
        batch, _, channels = x.shape
        num_units = mask.shape[1]
        kept = mask.nonzero()[:, 1].view(batch, 1, -1, 1)  # ascending unit indices per row
        x = x.view(batch, -1, num_units, channels)
        x = torch.gather(x, 2, kept.expand(batch, x.shape[1], -1, channels))
        return x.reshape(batch, -1, channels)

    def _unrolled_pos_embed(self, geo: Geometry) -> torch.Tensor:
        """The position embedding in unrolled order, ``[1, N, C]``.

        ``Unroll.forward`` is called directly rather than through the module: the official model
        calls its unroll module once per forward (on the tokens), so hooks on it must fire once
        here too, and a bare parameter handed to a module call breaks torch's module hooks under
        ``inference_mode`` (``FlopCounterMode`` would raise)."""
        return geo.unroll.forward(self.get_pos_embed(geo.grid))

    def _embed(self, x: torch.Tensor, mask: Optional[torch.Tensor], geo: Geometry) -> torch.Tensor:
        """Patch embedding + position embedding, unrolled; with a mask, the kept units' tokens only:
        ``[B, C_in, *S]`` -> ``[B, N, C]`` or ``[B, N_kept, C]``.

        With a mask, only the kept units are embedded (:meth:`PatchEmbed.forward_units`) and given
        their position embedding: MAE pretraining keeps 40% of the units of an image and 10% of a
        clip's, and the dropped ones never reach memory. This needs the unroll window to be the mask
        unit (true of every zoo model); otherwise, as in the official package, everything is
        embedded and the masked units' tokens are dropped afterwards.
        """
        if mask is None:  # unroll, then add: the gather moves the (bf16 under autocast) conv output
            return geo.unroll(self.patch_embed(x)) + self._unrolled_pos_embed(geo)
        batch = x.shape[0]
        tokens = None
        # (getattr: a model pickled by an earlier version has Unroll modules without a window.)
        if batch > 0 and getattr(geo.unroll, "window", None) == tuple(self.mask_unit_size):
            kept = mask.nonzero()[:, 1].view(batch, -1)  # ascending unit indices per row
            tokens = self.patch_embed.forward_units(x, mask, kept, geo.mask_grid, self.mask_unit_size)
        if tokens is None:
            x = self.patch_embed(x, mask=mask.view(batch, 1, *geo.mask_grid))
            return self._keep_units(geo.unroll(x + self.get_pos_embed(geo.grid)), mask)
        # [B, K, C, M] (raster within a unit) -> [B, M, K, C]: the unrolled order, kept units only.
        _, num_kept, channels, unit_len = tokens.shape
        tokens = tokens.index_select(3, geo.unroll.window_order).permute(0, 3, 1, 2)
        pos = self._unrolled_pos_embed(geo).view(1, unit_len, -1, channels)
        index = kept.view(batch, 1, num_kept, 1).expand(batch, unit_len, num_kept, channels)
        pos = torch.gather(pos.expand(batch, -1, -1, -1), 2, index)
        return (tokens + pos).reshape(batch, -1, channels)

    def forward_tokens(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, return_intermediates: bool = False
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the trunk: ``[B, C, *S]`` -> (final tokens ``[B, N_last, C_last]``, per-stage maps)."""
        intermediates = []
        geo = self.geometry(x.shape[2:], x.device)
        x = self._embed(x, mask, geo)
        for i, blk in enumerate(self.blocks):
            x = self._run_block(blk, x)
            if return_intermediates and i in self.stage_ends:
                intermediates.append(geo.reroll(x, i, mask=mask))
        return x, intermediates

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them:
        much less memory for training, about a third more compute."""
        self.grad_checkpointing = enable

    def _run_block(self, blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(blk, x, use_reentrant=False)
        return blk(x)

    def forward_features(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Final tokens before pooling, ``[B, N_last, C_last]`` (for the zoo models the last stage's
        grid in raster order)."""
        self._prepare(x, mask)
        return self.forward_tokens(x, mask)[0]

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Optional[Sequence[int]] = None,
        output_fmt: str = "NCHW",
        per_block: bool = False,
    ) -> List[torch.Tensor]:
        """Multi-scale feature maps for dense tasks, in spatial order.

        Args:
            x: ``[B, C, H, W]`` or ``[B, C, T, H, W]``; any size that tiles (see ``size_multiple``)
                when ``dynamic_size`` is on.
            indices: stages (default all: strides 4, 8, 16, 32 for the zoo models), or blocks
                with ``per_block=True``. Negative indices count from the end.
            output_fmt: ``"NCHW"`` (channels first: ``[B, C, H, W]`` / ``[B, C, T, H, W]``) or
                ``"NHWC"`` (channels last).
        Returns:
            one map per index, in the order given. Blocks after the last one asked for are not run.
        """
        if output_fmt not in ("NCHW", "NHWC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
        self._prepare(x, None)
        points = list(range(len(self.blocks))) if per_block else list(self.stage_ends)
        indices = list(range(len(points))) if indices is None else list(indices)
        try:
            wanted = [points[i] for i in indices]
        except IndexError:
            what = "blocks" if per_block else "stages"
            raise ValueError(f"indices {indices} out of range: the model has {len(points)} {what}") from None
        geo = self.geometry(x.shape[2:], x.device)
        x = self._embed(x, None, geo)
        maps = {}
        for i, blk in enumerate(self.blocks[: max(wanted) + 1]):
            x = self._run_block(blk, x)
            if i in wanted:
                m = geo.reroll(x, i)
                maps[i] = m.movedim(-1, 1) if output_fmt == "NCHW" else m
        return [maps[i] for i in wanted]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Final tokens ``[B, N, C]`` -> logits ``[B, num_classes]`` (never softmaxed), or the pooled,
        normalised features ``[B, C]`` with ``pre_logits=True``."""
        x = self.norm(x.mean(dim=1))
        return x if pre_logits else self._classify(x, logits=True)

    def _classify(self, x: torch.Tensor, logits: bool) -> torch.Tensor:
        """The head on pooled features ``[B, C]``. Any module may stand in for the head (code written
        for the official package replaces it with ``nn.Identity()``, ``nn.Linear``, ...): it is called
        as the official model calls it, with the features alone."""
        if isinstance(self.head, Head):
            return self.head(x, logits=logits)
        return self.head(x)

    def reset_classifier(self, num_classes: int, head_dropout: Optional[float] = None) -> None:
        """Replace the head by a fresh ``num_classes``-way one (initialised as at construction);
        ``num_classes=0`` makes the model return its pooled features, as in timm."""
        if not _is_int(num_classes) or num_classes < 0:
            raise ValueError(f"num_classes must be an integer >= 0 (0: the pooled features), got {num_classes!r}")
        dropout = self.config.get("head_dropout", 0.0) if head_dropout is None else head_dropout
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"head_dropout must be in [0, 1), got {dropout!r}")
        ref = self.patch_embed.proj.weight  # (the head may be any module a user put there)
        act = getattr(self.head, "act_func", softmax_last_dim)
        self.head = Head(self.num_features, num_classes, dropout_rate=dropout, act_func=act)
        self.head.to(device=ref.device, dtype=ref.dtype)
        self._init_weights(self.head.projection)
        scale = self.config.get("head_init_scale", 0.001)
        with torch.no_grad():
            self.head.projection.weight.mul_(scale)
            self.head.projection.bias.mul_(scale)
        self.config["num_classes"] = num_classes
        self.config["head_dropout"] = dropout

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, num_classes]`` in any mode."""
        return self.forward(x, return_logits=True)

    def forward(
        self,
        x: torch.Tensor,
        mask: Optional[torch.Tensor] = None,
        return_intermediates: bool = False,
        return_logits: bool = False,
    ):
        """See the class docstring. ``mask``: bool ``[B, #mask units]``, True = keep; every row must
        keep the same number of units."""
        if isinstance(x, list):  # SlowFast-style loaders pass a list of pathways
            x = x[0]
        self._prepare(x, mask)
        x, intermediates = self.forward_tokens(x, mask, return_intermediates)
        if mask is None:
            x = self.norm(x.mean(dim=1))
            x = self._classify(x, logits=return_logits)
        if return_intermediates:
            return x, intermediates
        return x
