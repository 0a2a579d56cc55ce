"""Resizing absolute position embeddings to another token grid.

Used on the fly (``model.dynamic_size = True``) and when loading a checkpoint into a model built for
another input size. 2-D grids use bicubic interpolation with anti-aliasing, as timm does when it
resamples position embeddings; 1-D (time) uses linear and 3-D trilinear, the modes torch offers.
"""

from __future__ import annotations

import math
from typing import Dict, Sequence

import torch
import torch.nn.functional as F

_MODES = {1: "linear", 2: "bicubic", 3: "trilinear"}


def resize_pos_embed(pos_embed: torch.Tensor, old_grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """``[1, prod(old_grid), C]`` (raster order) -> ``[1, prod(new_grid), C]``."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if old_grid == new_grid:
        return pos_embed
    if pos_embed.shape[1] != math.prod(old_grid):
        raise ValueError(f"position embedding of {pos_embed.shape[1]} tokens does not fit grid {old_grid}")
    channels, ndim = pos_embed.shape[-1], len(old_grid)
    x = pos_embed.reshape(1, *old_grid, channels).movedim(-1, 1).float()
    x = F.interpolate(x, size=new_grid, mode=_MODES[ndim], align_corners=False, antialias=(ndim == 2))
    return x.movedim(1, -1).reshape(1, -1, channels).to(pos_embed.dtype)


def _square(n: int, what: str) -> tuple:
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"cannot infer the grid of {what} with {n} tokens (not square); resize it explicitly")
    return (side, side)


def adapt_pos_embed(state: Dict[str, torch.Tensor], grid: Sequence[int]) -> Dict[str, torch.Tensor]:
    """Resize the position embeddings of a state dict for a model whose token grid is ``grid``.

    The checkpoint's own grid is inferred: square for 2-D embeddings, and for video the separate
    spatial (square) and temporal embeddings. Returns a new dict; other keys are untouched.
    """
    grid = tuple(grid)
    state = dict(state)
    if "pos_embed" in state and state["pos_embed"].shape[1] != math.prod(grid):
        if len(grid) != 2:
            raise ValueError(
                f"cannot resize a joint {len(grid)}-D position embedding of {state['pos_embed'].shape[1]} tokens "
                f"to grid {grid}: its original grid is unknown"
            )
        state["pos_embed"] = resize_pos_embed(state["pos_embed"], _square(state["pos_embed"].shape[1], "pos_embed"), grid)
    if "pos_embed_spatial" in state and state["pos_embed_spatial"].shape[1] != math.prod(grid[1:]):
        old = _square(state["pos_embed_spatial"].shape[1], "pos_embed_spatial")
        state["pos_embed_spatial"] = resize_pos_embed(state["pos_embed_spatial"], old, grid[1:])
    if "pos_embed_temporal" in state and state["pos_embed_temporal"].shape[1] != grid[0]:
        old = (state["pos_embed_temporal"].shape[1],)
        state["pos_embed_temporal"] = resize_pos_embed(state["pos_embed_temporal"], old, grid[:1])
    return state


def sincos_pos_embed(grid: Sequence[int], channels: int, temperature: float = 10000.0) -> torch.Tensor:
    """Fixed sine-cosine position embedding of an N-D token grid, ``[1, prod(grid), channels]``
    (raster order), float32.

    The channels are split evenly between the grid's axes; each axis gets ``sin`` and ``cos`` of its
    coordinate at geometrically spaced frequencies, as the 2-D embedding of MAE (He et al. 2022)
    does. Channels left over by the split are zero.
    """
    grid = tuple(int(g) for g in grid)
    per_axis = channels // (2 * len(grid))  # frequencies per axis
    if per_axis == 0:
        raise ValueError(f"{channels} channels cannot hold a sine-cosine embedding of a {len(grid)}-D grid "
                         f"(at least {2 * len(grid)} are needed)")
    omega = temperature ** -(torch.arange(per_axis, dtype=torch.float64) / per_axis)
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for c in coords:
        angle = c.reshape(-1, 1) * omega  # [prod(grid), per_axis]
        parts += [angle.sin(), angle.cos()]
    out = torch.cat(parts, 1)
    out = F.pad(out, (0, channels - out.shape[1]))
    return out.unsqueeze(0).float()
