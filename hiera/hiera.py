"""Compatibility module: the official package's ``hiera.hiera`` import path."""

from .layers import Head, HieraBlock, MaskUnitAttention, PatchEmbed  # noqa: F401
from .model import Hiera  # noqa: F401
from .zoo import CONSTRUCTORS as _C

hiera_tiny_224 = _C["hiera_tiny_224"]
hiera_small_224 = _C["hiera_small_224"]
hiera_base_224 = _C["hiera_base_224"]
hiera_base_plus_224 = _C["hiera_base_plus_224"]
hiera_large_224 = _C["hiera_large_224"]
hiera_huge_224 = _C["hiera_huge_224"]
hiera_base_16x224 = _C["hiera_base_16x224"]
hiera_base_plus_16x224 = _C["hiera_base_plus_16x224"]
hiera_large_16x224 = _C["hiera_large_16x224"]
hiera_huge_16x224 = _C["hiera_huge_16x224"]
