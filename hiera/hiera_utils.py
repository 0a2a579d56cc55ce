"""Compatibility module: the official package's ``hiera.hiera_utils`` import path."""

from .layers import conv_nd, do_masked_conv, do_pool, get_resized_mask  # noqa: F401
from .token_order import Reroll, Unroll, undo_windowing  # noqa: F401
