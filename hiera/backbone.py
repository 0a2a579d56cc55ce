"""Hiera as a backbone for dense tasks: multi-scale feature maps, timm's ``features_only`` style."""

from __future__ import annotations

from typing import List, Sequence, Union

import torch
import torch.nn as nn

from .hieradet import HieraDet
from .model import Hiera


class HieraFeatures(nn.Module):
    """Wraps a :class:`Hiera` (or a SAM2 :class:`HieraDet` trunk) so that calling it returns feature
    maps instead of class scores.

    ``out_indices`` picks stages (or blocks with ``per_block=True``); ``feature_info`` gives the
    channels and stride of each output, like timm's feature extractors. Any input size that tiles
    into mask units is accepted (``dynamic_size`` is switched on).

    ``[B, C, H, W]`` -> ``[[B, C_i, H / s_i, W / s_i] for each index]`` (``output_fmt="NCHW"``; video
    maps are ``[B, C_i, T', H / s_i, W / s_i]``), or channels-last with ``output_fmt="NHWC"``.
    """

    def __init__(self, model: Union[Hiera, HieraDet], out_indices: Sequence[int] = (0, 1, 2, 3), output_fmt: str = "NCHW",
                 per_block: bool = False):
        super().__init__()
        if not isinstance(model, (Hiera, HieraDet)):
            raise TypeError(f"expected a hiera.Hiera or hiera.HieraDet model, got {type(model).__name__}")
        self.model = model
        self.model.dynamic_size = True
        self.out_indices = tuple(out_indices)
        self.output_fmt = output_fmt
        self.per_block = per_block
        points = list(range(len(model.blocks))) if per_block else list(model.stage_ends)
        try:
            blocks = [points[i] for i in self.out_indices]
        except IndexError:
            raise ValueError(f"out_indices {self.out_indices} out of range ({len(points)} available)") from None
        self.feature_info: List[dict] = [
            {"num_chs": model.blocks[b].dim_out, "reduction": self._reduction(b), "module": f"blocks.{b}"}
            for b in blocks
        ]

    def _reduction(self, block: int) -> int:
        pools = sum(1 for end in self.model.stage_ends[: self.model.q_pool] if end < block)
        return self.model.patch_stride[-1] * self.model.q_stride[-1] ** pools

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return self.model.forward_intermediates(x, self.out_indices, self.output_fmt, self.per_block)
