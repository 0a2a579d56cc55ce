"""Masked autoencoder (MAE) pretraining model: Hiera encoder, multi-scale fusion, light decoder."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint

from .config import records_config
from .fast import _eager_cpu, linear, run_linear
from .hieradet import HieraDet
from .hieradet import _LayerNorm as _HieraDetNorm
from .layers import HieraBlock, conv_nd
from .model import Hiera, _is_int, _norm_layer, check_mask, kept_mask_units, random_mask
from .pos_embed import resize_pos_embed, sincos_pos_embed
from .token_order import undo_windowing


def apply_fusion_head(head: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-mask-unit conv: ``[B, #units, *mu, C]`` -> ``[B, #units, *mu', C']``."""
    if isinstance(head, nn.Identity):
        return x
    if _eager_cpu(x, head.weight) and _is_patchify(head, x.shape[2:-1]):
        return _patch_linear(head, x)
    batch, units = x.shape[:2]
    ndim = x.ndim - 3
    x = x.reshape(batch * units, *x.shape[2:]).permute(0, ndim + 1, *range(1, ndim + 1))
    x = head(x)
    x = x.permute(0, *range(2, ndim + 2), 1)
    return x.reshape(batch, units, *x.shape[1:])


def _is_patchify(conv: nn.Module, size: Sequence[int]) -> bool:
    """Whether ``conv`` cuts ``size`` into whole, non-overlapping patches (kernel = stride, no
    padding, dilation or groups), so that it is a linear layer applied to each patch."""
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) or conv.groups != 1:
        return False
    if isinstance(conv.padding, str) or any(conv.padding) or any(d != 1 for d in conv.dilation):
        return False
    return tuple(conv.kernel_size) == tuple(conv.stride) and all(s % k == 0 for s, k in zip(size, conv.kernel_size))


def _patch_linear(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``conv`` (see :func:`_is_patchify`) on channels-last ``[B, U, *S, C]`` as one matrix product:
    -> ``[B, U, *(S / kernel), C']``, the same sums as the convolution in another order.

    The fusion heads' inputs are channels-last already, so this skips the layout change after
    the convolution, and on CPU the product's forward and backward run faster than the
    convolution's on these shapes (``benchmarks/README.md``, "MAE fusion as one product").
    """
    batch, units, *size, chans = x.shape
    kernel = conv.kernel_size
    out = [s // k for s, k in zip(size, kernel)]
    split = [v for o, k in zip(out, kernel) for v in (o, k)]  # o_1, k_1, o_2, k_2, ...
    n = len(size)
    order = [0] + [1 + 2 * d for d in range(n)] + [1 + 2 * n] + [2 + 2 * d for d in range(n)]
    patches = x.reshape(batch * units, *split, chans).permute(order)  # [BU, *out, C, *kernel]
    patches = patches.reshape(-1, chans * math.prod(kernel))
    # Patches in the kernel's own (C, k...) order, so the kernel [C', C, *k] is a [C', C * prod(k)]
    # matrix as it lies: no copy of the weight, and its gradient comes back in place.
    y = linear(patches, conv.weight.view(conv.out_channels, -1), conv.bias)
    return y.view(batch, units, *out, conv.out_channels)


class MaskedAutoencoder:
    """What every MAE of this package shares: multi-scale fusion of the encoder's stages, the light
    decoder, pixel targets and the loss. Mixed into an encoder class (:class:`MaskedAutoencoderHiera`,
    :class:`MaskedAutoencoderHieraDet`) that provides:

    * ``forward_tokens(x, mask, return_intermediates=True)`` -> ``(_, per-stage maps of the kept
      units, each [B, #kept, *unit_s, C_s])``, units in ascending raster order over the mask grid;
    * ``get_random_mask(x, ratio)``, ``_prepare(x, mask)`` (input and mask checks) and
      ``final_grid(input_size)`` (the prediction tokens' grid);
    * ``q_stride``, ``q_pool``, ``patch_stride``, ``in_chans``, ``stage_ends`` and ``blocks``.

    ``model(x, mask_ratio, mask=None)`` returns ``(loss, preds, labels, mask)``:

    * ``preds``, ``labels``: ``[#masked prediction tokens over the batch, pixels per token]`` for the
      masked tokens only; labels are per-token normalised pixels (images: channel-major ``C, y, x``;
      video: the first frame of each 2-frame tubelet, pixel-major ``y, x, C``, as upstream trained);
    * ``mask``: ``[B, #mask units]`` bool, True = visible.

    An explicit ``mask`` (True = keep) overrides ``mask_ratio``.
    """

    _masks_are_predicted = True  # a mask ratio must mask at least one unit (check_mask_ratio)

    @staticmethod
    def _check_decoder_args(decoder_embed_dim, decoder_depth, decoder_num_heads) -> None:
        for name, value, least in (("decoder_embed_dim", decoder_embed_dim, 1), ("decoder_depth", decoder_depth, 0),
                                   ("decoder_num_heads", decoder_num_heads, 1)):
            if not _is_int(value) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if decoder_embed_dim % decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim={decoder_embed_dim} must be divisible by decoder_num_heads={decoder_num_heads}"
            )

    def _build_decoder(self, unit: Sequence[int], grid: Sequence[int], decoder_embed_dim: int, decoder_depth: int,
                       decoder_num_heads: int, norm_layer, mlp_ratio: float) -> None:
        """Add the fusion heads and the decoder (in the official registration order, so state dicts
        list their keys as the official MAE's do).

        Args:
            unit: a mask unit in first-stage tokens; each q-pooling divides it by ``q_stride``.
            grid: the first stage's token grid at the model's input size.
        """
        ndim = len(self.q_stride)
        pool = [s**self.q_pool for s in self.q_stride]
        encoder_dim_out = self.blocks[-1].dim_out
        self.encoder_norm = norm_layer(encoder_dim_out)
        self.mask_unit_spatial_shape_final = [m // p for m, p in zip(unit, pool)]
        self.tokens_spatial_shape_final = [t // p for t, p in zip(grid, pool)]

        # Multi-scale fusion: each pooled stage's map is reduced to the final resolution by a strided
        # conv within its mask unit and summed with the last stage (which needs no transform).
        cur_mu_size = list(unit)
        self.multi_scale_fusion_heads = nn.ModuleList()
        for i in self.stage_ends[: self.q_pool]:
            kernel = [c // f for c, f in zip(cur_mu_size, self.mask_unit_spatial_shape_final)]
            cur_mu_size = [c // s for c, s in zip(cur_mu_size, self.q_stride)]
            self.multi_scale_fusion_heads.append(
                conv_nd(ndim)(self.blocks[i].dim_out, encoder_dim_out, kernel_size=kernel, stride=kernel)
            )
        self.multi_scale_fusion_heads.append(nn.Identity())

        self.decoder_embed = nn.Linear(encoder_dim_out, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, math.prod(self.tokens_spatial_shape_final), decoder_embed_dim)
        )
        self.decoder_blocks = nn.ModuleList(
            [
                HieraBlock(
                    dim=decoder_embed_dim,
                    dim_out=decoder_embed_dim,
                    heads=decoder_num_heads,
                    norm_layer=norm_layer,
                    mlp_ratio=mlp_ratio,
                )
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        # Each prediction token covers pred_stride x pred_stride pixels (of one frame for video).
        self.pred_stride = self.patch_stride[-1] * (self.q_stride[-1] ** self.q_pool)
        self.decoder_pred = nn.Linear(decoder_embed_dim, (self.pred_stride ** min(2, ndim)) * self.in_chans)
        self.initialize_weights()

    def initialize_weights(self):
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.decoder_pos_embed, std=0.02)
        if getattr(self, "pos_embed_init", None) == "sincos":  # a Hiera trunk's option (HieraDet has none)
            with torch.no_grad():
                self.decoder_pos_embed.copy_(sincos_pos_embed(self.tokens_spatial_shape_final,
                                                              self.decoder_pos_embed.shape[-1]))
        self.apply(self._mae_init_weights)
        # Initialise the patch embedding like a linear layer rather than a conv.
        w = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))

    def _mae_init_weights(self, m: nn.Module):
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    # ------------------------------------------------------------------ targets
    def get_pixel_label_2d(self, input_img: torch.Tensor, mask: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Pixel targets of images ``[B, C, H, W]`` for the tokens where ``mask`` (``[B, N_pred]``) is
        True (True = *masked* here): ``[#True, C * s * s]``, channel-major, per-token normalised."""
        size = self.pred_stride
        label = input_img.permute(0, 2, 3, 1).unfold(1, size, size).unfold(2, size, size)
        label = label.flatten(1, 2).flatten(2)[mask]
        return _normalise(label) if norm else label

    def get_pixel_label_3d(self, input_vid: torch.Tensor, mask: torch.Tensor, norm: bool = True) -> torch.Tensor:
        """Pixel targets of clips ``[B, C, T, H, W]``: only the first frame of each temporal patch
        (a time-strided loss), laid out ``[#True, s * s * C]`` pixel-major: the layout the official
        models were trained with, which differs from the 2-D one."""
        input_vid = input_vid[:, :, :: self.patch_stride[0], :, :]
        size = self.pred_stride
        label = input_vid.unfold(3, size, size).unfold(4, size, size)
        label = label.permute(0, 2, 3, 4, 5, 6, 1).flatten(1, 3).flatten(2)[mask]
        return _normalise(label) if norm else label

    # ------------------------------------------------------------------ forward
    def forward_encoder(
        self, x: torch.Tensor, mask_ratio: float, mask: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Encode the kept units: -> (fused latent ``[B, #kept, *mu_final, C]``, mask ``[B, #units]``)."""
        if mask is None:
            mask = self.get_random_mask(x, mask_ratio)
        _, intermediates = self.forward_tokens(x, mask, return_intermediates=True)
        # Stages after the last pooling share its resolution: fuse the pooled ones and the last.
        intermediates = intermediates[: self.q_pool] + intermediates[-1:]
        x = None
        for head, feat in zip(self.multi_scale_fusion_heads, intermediates):
            y = apply_fusion_head(head, feat)
            x = y if x is None else x + y
        return self.encoder_norm(x), mask

    def forward_decoder(
        self, x: torch.Tensor, mask: torch.Tensor, input_size: Optional[Sequence[int]] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Decode: -> (predictions ``[B, N_pred, pixels]`` in raster order, visibility ``[B, N_pred]``).
        ``input_size`` is needed only for inputs of another size than the model's."""
        grid = self.final_grid(input_size)
        x = run_linear(self.decoder_embed, x)
        # Place the visible units among mask tokens: [B, #units, *mu_final, C]. Visible units come in
        # ascending order, so unit u takes kept entry (#visible units before u): a gather and a where
        # with static shapes (no boolean indexing), which torch.compile traces as one graph.
        batch, units = mask.shape
        unit_shape = x.shape[2:-1]
        slot = (mask.long().cumsum(dim=1) - 1).clamp(min=0)
        slot = slot.view(batch, units, *([1] * (x.ndim - 2))).expand(batch, units, *x.shape[2:])
        unit_mask = mask.view(batch, units, *([1] * len(unit_shape)), 1).expand(batch, units, *unit_shape, 1)
        x_dec = torch.where(unit_mask, torch.gather(x, 1, slot), self.mask_token.to(x.dtype))
        x = undo_windowing(x_dec, grid, self.mask_unit_spatial_shape_final)
        mask = undo_windowing(unit_mask, grid, self.mask_unit_spatial_shape_final)

        pos = resize_pos_embed(self.decoder_pos_embed, self.tokens_spatial_shape_final, grid)
        x = x.reshape(x.shape[0], -1, x.shape[-1]) + pos
        mask = mask.reshape(x.shape[0], -1)
        for blk in self.decoder_blocks:
            x = self._run_block(blk, x)
        return run_linear(self.decoder_pred, self.decoder_norm(x)), mask

    def forward_loss(
        self, x: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean squared error on the masked tokens (``mask`` True = masked here)."""
        if len(self.q_stride) == 2:
            label = self.get_pixel_label_2d(x, mask)
        elif len(self.q_stride) == 3:
            label = self.get_pixel_label_3d(x, mask)
        else:
            raise ValueError(f"MAE targets exist for 2-D and 3-D inputs, not {len(self.q_stride)}-D")
        pred = pred[mask]
        loss = (pred - label) ** 2
        return loss.mean(), pred, label

    def forward(
        self,
        x: torch.Tensor,
        mask_ratio: float = 0.6,
        mask: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``[B, C, *S]`` -> ``(loss, preds, labels, mask)``; see the class docstring."""
        self._prepare(x, mask)
        if x.shape[0] == 0:
            raise ValueError(
                f"the MAE needs at least one sample (a loss over no pixels is undefined), got input of shape {tuple(x.shape)}"
            )
        latent, mask = self.forward_encoder(x, mask_ratio, mask=mask)
        pred, pred_mask = self.forward_decoder(latent, mask, x.shape[2:])  # pred_mask: visibility per token
        return (*self.forward_loss(x, pred, ~pred_mask), mask)


class MaskedAutoencoderHiera(MaskedAutoencoder, Hiera):
    """MAE with a Hiera encoder, as in the official package (see :class:`MaskedAutoencoder` for
    what calling it returns). Pass ``mask_ratio=0.9`` for video."""

    @records_config(extends=Hiera)
    def __init__(
        self,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        **kwargs,
    ):
        """Hiera's arguments (``num_classes`` is unused, as there is no head, and kept so that
        classifier configs load), then the decoder's. The signature that ``inspect`` and
        huggingface_hub see lists them all (see :func:`hiera.config.records_config`), and the
        decorator calls this with every one of them, defaults filled in."""
        super().__init__(**kwargs)
        self._check_decoder_args(decoder_embed_dim, decoder_depth, decoder_num_heads)
        self.check_maskable()  # (q_pool < #stages, so this also covers q_stride**q_pool)
        # The encoder's final norm and head are replaced by the fusion + decoder.
        del self.norm, self.head
        self._build_decoder(self.mask_unit_size, self.tokens_spatial_shape, decoder_embed_dim, decoder_depth,
                            decoder_num_heads, _norm_layer(kwargs["norm_layer"]), kwargs["mlp_ratio"])

    def _finalize_config(self):
        super()._finalize_config()
        # The official MAE forwards a functools.partial as norm_layer, which no config.json can hold
        # and which its own from_pretrained cannot take back as a string: leave the default out.
        if self.config.get("norm_layer") == "LayerNorm":
            del self.config["norm_layer"]

    def final_grid(self, input_size: Optional[Sequence[int]] = None) -> List[int]:
        """Grid of prediction tokens for an input of ``input_size`` (default: the model's)."""
        if input_size is None or tuple(input_size) == tuple(self.input_size):
            return list(self.tokens_spatial_shape_final)
        grid = self.geometry(input_size).grid
        return [g // s**self.q_pool for g, s in zip(grid, self.q_stride)]


def _normalise(label: torch.Tensor) -> torch.Tensor:
    mean = label.mean(dim=-1, keepdim=True)
    var = label.var(dim=-1, keepdim=True)
    return (label - mean) / (var + 1.0e-6) ** 0.5


class MaskedAutoencoderHieraDet(MaskedAutoencoder, HieraDet):
    """MAE pretraining for SAM 2's HieraDet trunk (see :class:`MaskedAutoencoder` for what calling it
    returns). Neither SAM 2 nor timm ships one; this follows the Hiera paper's MAE.

    * **Mask units** are first-stage windows: ``window_spec[0]`` tokens square (32 x 32 pixels for
      SAM 2's trunks). HieraDet has no unroll, so instead of reordering tokens the encoder runs on
      a list of the kept units, each a small map ``[B, K, uh, uw, C]``; masked units are never
      computed.
    * **Windows**: a window that tiles a unit (SAM 2's first two stages, whose windows are exactly
      one unit) attends within each kept unit, as the trunk does; a window spanning several units
      attends across the kept units inside it; a global block across all kept units. A window must
      lie inside one unit or cover whole units (checked at construction).
    * **Position embedding** as SAM 2 and the "Window Attention is Bugged" paper: the background
      embedding interpolated to the token grid plus the window embedding tiled once per window,
      which is once per mask unit here, so a kept unit carries its window embedding with it.
    * **Exactness**: where SAM 2 pads a map its windows do not tile, the padded tokens take part as
      keys; the MAE has no padding and leaves them out. At sizes where every window tiles (the
      zoo's MAE sizes: 224 for T, S, B+; 256 for L) the encoder with every unit visible computes
      exactly the trunk's forward (tested), so the pretrained trunk hands over unchanged.
    * Predictions are at the last stage's resolution (``pred_stride`` = 32 pixels with SAM 2's
      three poolings), with per-token normalised pixel targets.

    Arguments: HieraDet's (``num_classes`` unused: the decoder replaces any head), then the
    decoder's. The trunk's state-dict keys are HieraDet's (SAM 2's), so the encoder loads into
    :class:`HieraDet` and converts to a SAM 2 checkpoint as any trunk does.
    """

    @records_config(extends=HieraDet)
    def __init__(
        self,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self._check_decoder_args(decoder_embed_dim, decoder_depth, decoder_num_heads)
        side = self.window_spec[0]
        self.mask_unit_size = (side, side)
        self._unit_groups = self._plan_windows()
        for name in ("head", "norm"):  # the decoder replaces any classification head
            if name in self._modules:
                delattr(self, name)
        grid = [s // p for s, p in zip(self.input_size, self.patch_stride)]
        self._build_decoder(self.mask_unit_size, grid, decoder_embed_dim, decoder_depth, decoder_num_heads,
                            _HieraDetNorm, kwargs["mlp_ratio"])

    def _plan_windows(self) -> List[int]:
        """Per block, how many mask units a window spans per side when it spans several (0: the
        window tiles a unit, or the block is global); a ValueError when a window neither tiles a
        unit nor covers whole units, or the last unit is not whole."""
        unit = list(self.mask_unit_size)
        pool = [s**self.q_pool for s in self.q_stride]
        if any(u % p for u, p in zip(unit, pool)):
            raise ValueError(
                f"the MAE's mask unit is a first-stage window ({tuple(unit)} tokens, window_spec[0]); it must be a "
                f"multiple of q_stride**q_pool = {tuple(pool)} so that every stage keeps whole units"
            )
        groups = []
        for i, blk in enumerate(self.blocks):
            window = blk.window_size
            if window and all(u % window == 0 for u in unit):
                groups.append(0)
            elif window and all(window % u == 0 for u in unit) and len(set(window // u for u in unit)) == 1:
                groups.append(window // unit[0])
            elif window:
                raise ValueError(
                    f"block {i} attends within {window}-token windows where a mask unit is {tuple(unit)} tokens: "
                    f"for MAE pretraining a window must lie inside one unit or cover whole units (window_spec="
                    f"{tuple(self.window_spec)}; the unit is window_spec[0] tokens, halved at each query pooling)"
                )
            else:
                groups.append(0)
            if blk.q_stride is not None:
                unit = [u // s for u, s in zip(unit, blk.q_stride)]
        return groups

    # ------------------------------------------------------------------ masking
    def mask_grid(self, size: Optional[Sequence[int]] = None) -> Tuple[int, int]:
        """Mask units per side for an input of ``size`` (default: the model's)."""
        size = self.input_size if size is None else size
        return tuple(s // (p * m) for s, p, m in zip(size, self.patch_stride, self.mask_unit_size))

    @property
    def num_mask_units(self) -> int:
        return math.prod(self.mask_grid())

    def check_mask_ratio(self, mask_ratio: float, num_units: Optional[int] = None) -> int:
        """The number of mask units a random mask at ``mask_ratio`` keeps, or the error that says
        why the ratio cannot work (see :func:`hiera.model.kept_mask_units`)."""
        units = self.num_mask_units if num_units is None else int(num_units)
        return kept_mask_units(mask_ratio, units, mask_one=self._masks_are_predicted)

    def get_random_mask(self, x: torch.Tensor, mask_ratio: float) -> torch.Tensor:
        """Random mask over mask units, ``[B, #units]`` bool, True = keep."""
        units = math.prod(self.mask_grid(x.shape[2:]))
        return random_mask(x.shape[0], units, self.check_mask_ratio(mask_ratio, units), x.device)

    def _check_input(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> None:
        super()._check_input(x)
        if mask is not None:
            check_mask(mask, x.shape[0], self.mask_grid(x.shape[2:]))

    def _prepare(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> None:
        self._check_input(x, mask)

    def final_grid(self, input_size: Optional[Sequence[int]] = None) -> List[int]:
        """Grid of prediction tokens for an input of ``input_size`` (default: the model's)."""
        size = self.input_size if input_size is None else input_size
        return [s // (p * q**self.q_pool) for s, p, q in zip(size, self.patch_stride, self.q_stride)]

    # ------------------------------------------------------------------ encoder
    def _embed_units(self, x: torch.Tensor, mask: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        """The kept units' tokens with their position embedding: ``[B, K, uh, uw, C]``."""
        batch, num_kept = kept.shape
        units = self.mask_grid(x.shape[2:])
        uh, uw = self.mask_unit_size
        grid = (units[0] * uh, units[1] * uw)
        tokens = self.patch_embed.forward_units(x, mask, kept, units, self.mask_unit_size)  # [B, K, C, uh * uw]
        if tokens is None:  # a stem whose padding is too small for unit tiles: embed all, then keep
            full = self.patch_embed(x, mask=mask.view(batch, 1, *units)).view(batch, *grid, -1)
            tokens = _split_units(full, units, self.mask_unit_size)
            tokens = torch.gather(tokens, 1, kept.view(batch, num_kept, 1, 1, 1).expand(-1, -1, *tokens.shape[2:]))
        else:
            tokens = tokens.transpose(2, 3).reshape(batch, num_kept, uh, uw, -1)
        pos = _split_units(self.get_pos_embed(grid), units, self.mask_unit_size)[0]  # [#units, uh, uw, C]
        return tokens + pos[kept]

    def forward_tokens(
        self, x: torch.Tensor, mask: Optional[torch.Tensor] = None, return_intermediates: bool = False
    ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Run the trunk on the kept mask units (all of them without ``mask``): ``[B, C, H, W]`` ->
        (last stage ``[B, K, uh, uw, C_last]``, per-stage maps ``[B, K, uh_s, uw_s, C_s]`` with
        ``return_intermediates``), units in ascending raster order over the mask grid."""
        batch = x.shape[0]
        units = self.mask_grid(x.shape[2:])
        if mask is None:
            mask = torch.ones(batch, math.prod(units), dtype=torch.bool, device=x.device)
        kept = mask.nonzero()[:, 1].view(batch, -1)  # ascending unit indices per row
        x = self._embed_units(x, mask, kept)
        rows, cols = kept // units[1], kept % units[1]
        # Window ids of the kept units, once per window size (None: no window, or one over the whole map).
        windows_of = {group: (rows // group) * -(-units[1] // group) + cols // group
                      for group in set(self._unit_groups) if group and (group < units[0] or group < units[1])}
        intermediates = []
        for i, blk in enumerate(self.blocks):
            windows = windows_of.get(self._unit_groups[i])
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk.forward_units, x, windows, use_reentrant=False)
            else:
                x = blk.forward_units(x, windows)
            if return_intermediates and i in self.stage_ends:
                intermediates.append(x)
        return x, intermediates


def _split_units(x: torch.Tensor, units: Sequence[int], unit: Sequence[int]) -> torch.Tensor:
    """``[B, H, W, C]`` map -> ``[B, #units, uh, uw, C]``, units in raster order."""
    batch, channels = x.shape[0], x.shape[-1]
    (nh, nw), (uh, uw) = units, unit
    return x.reshape(batch, nh, uh, nw, uw, channels).transpose(2, 3).reshape(batch, nh * nw, uh, uw, channels)
