"""Compatibility module: the official package's ``hiera.hiera`` import path."""

from .hfhub import PyTorchModelHubMixin, has_config  # noqa: F401
from .hiera_utils import pretrained_model  # noqa: F401
from .layers import Head, HieraBlock, MaskUnitAttention, PatchEmbed, conv_nd, do_masked_conv, do_pool  # noqa: F401
from .model import Hiera  # noqa: F401
from .token_order import Reroll, Unroll  # noqa: F401
from .zoo import CONSTRUCTORS as _C


def __getattr__(name: str):
    """``DropPath`` and ``Mlp`` are timm's here, as in the official module, imported on first use
    so that ``import hiera`` does not pay for importing timm."""
    if name in ("DropPath", "Mlp"):
        import timm.layers  # on first use, as the docstring says

        return getattr(timm.layers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

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
