"""Token order: how Hiera lays tokens out in memory so that pooling and windows become views.

Hiera never moves tokens around inside the network. Once, right after the patch embedding, it
"unrolls" the raster-ordered tokens: for each q-pooling stride ``s`` (one per stage transition) it
splits every spatial coordinate ``c`` into ``c = a * s + r`` and moves the offsets ``r`` in front
of everything else. After ``K`` unrolls the flat token index reads, most significant first::

    (r_1, r_2, ..., r_K, a_K)        each r_k and a_K flattened over the D spatial dims

Consequences, used throughout the model:

* max-pooling with stride ``s`` is ``x.view(B, prod(s), -1, C).max(1)``: the ``r_1`` neighbours are
  the outermost dimension, and what is left is again in unrolled order for the pooled grid;
* a mask unit (the ``prod(s)**K`` tokens that share ``a_K``) is every ``num_units``-th token, so
  mask-unit attention is ``x.view(B, L, num_units, C)`` and dropping a mask unit is dropping a
  column of that view.

Everything here is a pure permutation of tokens, precomputed once as an index, so the forward pass
does one gather instead of a chain of permute-copies. The index maps are derived by running the
split/move procedure on integer positions, which works for any number of spatial dimensions.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch
import torch.nn as nn

Size = Tuple[int, ...]


def unroll_positions(size: Sequence[int], schedule: Sequence[Sequence[int]]) -> torch.Tensor:
    """Raster positions in unrolled order.

    Args:
        size: token grid, e.g. ``(56, 56)`` or ``(8, 56, 56)``.
        schedule: strides applied one after the other, e.g. ``[(2, 2)] * 3``.
    Returns:
        ``order`` of shape ``[prod(size)]``: ``order[n]`` is the raster index of the token found at
        unrolled position ``n``. ``x_unrolled = x_raster[:, order]``.
    """
    size = list(size)
    ndim = len(size)
    # [batch-like prefix, *grid]; the prefix collects the offsets r_1, r_2, ... in order.
    pos = torch.arange(math.prod(size), device="cpu").view(1, *size)  # (not meta under a device context)
    for strides in schedule:
        if any(n % s for n, s in zip(size, strides)):
            raise ValueError(f"token grid {tuple(size)} is not divisible by the pooling stride {tuple(strides)}")
        size = [n // s for n, s in zip(size, strides)]
        # [P, a_1, r_1, a_2, r_2, ...] -> [P, r_1, r_2, ..., a_1, a_2, ...]
        split = [pos.shape[0]] + [v for pair in zip(size, strides) for v in pair]
        pos = pos.reshape(split)
        perm = [0] + [2 + 2 * d for d in range(ndim)] + [1 + 2 * d for d in range(ndim)]
        pos = pos.permute(perm).reshape(-1, *size)
    return pos.reshape(-1)


def undo_windowing(x: torch.Tensor, shape: Sequence[int], mu_shape: Sequence[int]) -> torch.Tensor:
    """Tile mask-unit windows back into a spatial map.

    ``[B, #units, *mu_shape, C]`` (units in raster order over the unit grid) -> ``[B, *shape, C]``.
    """
    ndim = len(shape)
    batch, channels = x.shape[0], x.shape[-1]
    units = [s // m for s, m in zip(shape, mu_shape)]
    x = x.reshape(batch, *units, *mu_shape, channels)
    # [B, U_1, .., U_D, M_1, .., M_D, C] -> [B, U_1, M_1, .., U_D, M_D, C]
    perm = [0] + [v for d in range(ndim) for v in (1 + d, 1 + ndim + d)] + [2 * ndim + 1]
    return x.permute(perm).reshape(batch, *shape, channels)


class _IndexTables(nn.Module):
    """Base of :class:`Unroll` and :class:`Reroll`, whose buffers are index tables that the sizes
    alone determine. They are not in the state dict, so a model built on the meta device would get
    them back as uninitialised memory from ``to_empty()``: instead, the originals are kept on the
    CPU and every move (``.to()``, ``.cuda()``, ``to_empty()``) rebuilds the buffers from them, as
    does :meth:`materialise` (which the model calls after ``load_state_dict(assign=True)``)."""

    def __init__(self):
        super().__init__()
        self._tables = {}

    def _add_table(self, name: str, table: torch.Tensor) -> None:
        self._tables[name] = table  # built on the CPU whatever the default device
        # the buffer where the default device puts it (meta under torch.device("meta"))
        self.register_buffer(name, table.to(torch.empty(0).device, copy=True), persistent=False)

    def materialise(self, device: torch.device) -> None:
        """Rebuild the tables on ``device``."""
        for name, table in getattr(self, "_tables", {}).items():  # (modules pickled before: none)
            setattr(self, name, table.to(device, copy=True))

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        tables = getattr(self, "_tables", {})
        device = getattr(self, next(iter(tables))).device if tables else None
        if device is not None and device.type != "meta":
            self.materialise(device)
        return self


class Unroll(_IndexTables):
    """Raster-ordered tokens ``[B, N, C]`` -> unrolled order ``[B, N, C]`` (see module docstring)."""

    def __init__(self, input_size: Sequence[int], patch_stride: Sequence[int], unroll_schedule: Sequence[Sequence[int]]):
        super().__init__()
        self.size = [i // s for i, s in zip(input_size, patch_stride)]
        self.schedule = [tuple(s) for s in unroll_schedule]
        self._add_table("order", unroll_positions(self.size, self.schedule))
        # The unroll window: the tokens that share a_K (the product of all strides per dim). The
        # unrolled index is (position within the window) * #windows + (window, raster order), and
        # positions within every window follow ``window_order`` (raster positions in unrolled order).
        ndim = len(self.size)
        self.window = tuple(math.prod(s[d] for s in self.schedule) for d in range(ndim))
        self._add_table("window_order", unroll_positions(self.window, self.schedule))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.index_select(1, self.order)


class Reroll(_IndexTables):
    """Unrolled tokens after block ``i`` -> spatial order, for intermediate feature maps.

    After a stage that q-pools, the first stride of the schedule has been consumed, so each block
    index maps to (remaining schedule, current grid). The mask-unit shape at that point is the
    product of the remaining strides.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        patch_stride: Sequence[int],
        unroll_schedule: Sequence[Sequence[int]],
        stage_ends: Sequence[int],
        q_pool: int,
    ):
        super().__init__()
        self.size = [i // s for i, s in zip(input_size, patch_stride)]
        schedule = [tuple(s) for s in unroll_schedule]
        size = list(self.size)
        # One entry per distinct (schedule, size) state, referenced by block index.
        self.schedule = {}
        self._state_of_block: List[int] = []
        states: List[Tuple[Tuple[Size, ...], Size]] = []
        for i in range(stage_ends[-1] + 1):
            state = (tuple(schedule), tuple(size))
            if not states or states[-1] != state:
                states.append(state)
            self._state_of_block.append(len(states) - 1)
            self.schedule[i] = (list(schedule), list(size))
            if i in stage_ends[:q_pool]:
                if schedule:
                    size = [n // s for n, s in zip(size, schedule[0])]
                schedule = schedule[1:]

        self._mu_shapes: List[Size] = []
        self._grids: List[Size] = []
        for k, (sched, grid) in enumerate(states):
            ndim = len(grid)
            mu = tuple(math.prod(s[d] for s in sched) for d in range(ndim))
            self._mu_shapes.append(mu)
            self._grids.append(grid)
            # Whole map: raster position -> unrolled position.
            order = unroll_positions(grid, sched)
            self._add_table(f"to_raster_{k}", torch.argsort(order))
            # One mask unit: tokens of a unit are strided by #units; within a unit they follow
            # the unrolled order of a single unit-sized grid.
            within = unroll_positions(mu, sched) if sched else torch.zeros(1, dtype=torch.long, device="cpu")
            self._add_table(f"within_raster_{k}", torch.argsort(within))

    def mask_unit_shape(self, block_idx: int) -> Size:
        return self._mu_shapes[self._state_of_block[block_idx]]

    def grid_size(self, block_idx: int) -> Size:
        return self._grids[self._state_of_block[block_idx]]

    def forward(self, x: torch.Tensor, block_idx: int, mask: torch.Tensor = None) -> torch.Tensor:
        """Roll tokens of block ``block_idx`` back to spatial order.

        Without mask: ``[B, N, C]`` -> ``[B, *grid, C]`` (e.g. ``[B, H, W, C]``).
        With mask (only kept units present): ``[B, N_kept, C]`` -> ``[B, #kept, *mu_shape, C]``.
        """
        k = self._state_of_block[block_idx]
        batch, n, channels = x.shape
        if mask is None:
            return x.index_select(1, getattr(self, f"to_raster_{k}")).view(batch, *self._grids[k], channels)
        mu = self._mu_shapes[k]
        unit_len = math.prod(mu)
        x = x.view(batch, unit_len, n // unit_len, channels).index_select(1, getattr(self, f"within_raster_{k}"))
        return x.transpose(1, 2).reshape(batch, n // unit_len, *mu, channels)
