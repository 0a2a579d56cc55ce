"""Hiera: a hierarchical vision transformer, as a drop-in for the official ``hiera`` package.

    import hiera
    model = hiera.hiera_base_224(pretrained=True, checkpoint="mae_in1k_ft_in1k")
    probs = model.eval()(images)                 # [B, 1000] softmax in eval mode, as upstream
    logits = model(images, return_logits=True)   # logits in any mode
"""

from .backbone import HieraFeatures
from .layers import Head, HieraBlock, MaskUnitAttention, PatchEmbed
from .mae import MaskedAutoencoder, MaskedAutoencoderHiera, MaskedAutoencoderHieraDet
from .model import Hiera, InputMismatchError
from .hieradet import HieraDet
from .token_order import Reroll, Unroll, undo_windowing
from .weights import CheckpointError, LoadReport, load_weights, read_checkpoint
from .zoo import CONSTRUCTORS, MODELS, create_model, list_models, load_model

# The official package's submodules, bound as attributes by a plain `import hiera` as there.
from . import hfhub, hiera, hiera_mae, hiera_utils  # noqa: E402, F401

__version__ = "0.2.0"

# The 20 constructors of the official package, spelled out so that tools and readers see them.
hiera_tiny_224 = CONSTRUCTORS["hiera_tiny_224"]
hiera_small_224 = CONSTRUCTORS["hiera_small_224"]
hiera_base_224 = CONSTRUCTORS["hiera_base_224"]
hiera_base_plus_224 = CONSTRUCTORS["hiera_base_plus_224"]
hiera_large_224 = CONSTRUCTORS["hiera_large_224"]
hiera_huge_224 = CONSTRUCTORS["hiera_huge_224"]
hiera_base_16x224 = CONSTRUCTORS["hiera_base_16x224"]
hiera_base_plus_16x224 = CONSTRUCTORS["hiera_base_plus_16x224"]
hiera_large_16x224 = CONSTRUCTORS["hiera_large_16x224"]
hiera_huge_16x224 = CONSTRUCTORS["hiera_huge_16x224"]
mae_hiera_tiny_224 = CONSTRUCTORS["mae_hiera_tiny_224"]
mae_hiera_small_224 = CONSTRUCTORS["mae_hiera_small_224"]
mae_hiera_base_224 = CONSTRUCTORS["mae_hiera_base_224"]
mae_hiera_base_plus_224 = CONSTRUCTORS["mae_hiera_base_plus_224"]
mae_hiera_large_224 = CONSTRUCTORS["mae_hiera_large_224"]
mae_hiera_huge_224 = CONSTRUCTORS["mae_hiera_huge_224"]
mae_hiera_base_16x224 = CONSTRUCTORS["mae_hiera_base_16x224"]
mae_hiera_base_plus_16x224 = CONSTRUCTORS["mae_hiera_base_plus_16x224"]
mae_hiera_large_16x224 = CONSTRUCTORS["mae_hiera_large_16x224"]
mae_hiera_huge_16x224 = CONSTRUCTORS["mae_hiera_huge_16x224"]

# timm's abswin models (weights from timm's Hub repos).
hiera_small_abswin_256 = CONSTRUCTORS["hiera_small_abswin_256"]
hiera_base_abswin_256 = CONSTRUCTORS["hiera_base_abswin_256"]
