"""Compatibility module: the official package's ``hiera.hiera_mae`` import path."""

from .hiera_utils import pretrained_model  # noqa: F401
from .layers import HieraBlock, conv_nd  # noqa: F401
from .mae import MaskedAutoencoderHiera, apply_fusion_head  # noqa: F401
from .model import Hiera  # noqa: F401
from .token_order import undo_windowing  # noqa: F401
from .zoo import CONSTRUCTORS as _C

mae_hiera_tiny_224 = _C["mae_hiera_tiny_224"]
mae_hiera_small_224 = _C["mae_hiera_small_224"]
mae_hiera_base_224 = _C["mae_hiera_base_224"]
mae_hiera_base_plus_224 = _C["mae_hiera_base_plus_224"]
mae_hiera_large_224 = _C["mae_hiera_large_224"]
mae_hiera_huge_224 = _C["mae_hiera_huge_224"]
mae_hiera_base_16x224 = _C["mae_hiera_base_16x224"]
mae_hiera_base_plus_16x224 = _C["mae_hiera_base_plus_16x224"]
mae_hiera_large_16x224 = _C["mae_hiera_large_16x224"]
mae_hiera_huge_16x224 = _C["mae_hiera_huge_16x224"]
