"""SAM 2 / SAM 2.1 checkpoints <-> the state dict of our ``HieraDet`` (SAM2's image-encoder trunk).

A SAM2 checkpoint file (``sam2_hiera_tiny.pt``, ``sam2.1_hiera_large.pt``, ...) is a torch file
holding ``{"model": state_dict}``: the whole ``SAM2Base`` model, whose keys are::

    image_encoder.trunk.*          the HieraDet trunk (sam2.modeling.backbones.hieradet.Hiera)
    image_encoder.neck.*           the FPN neck
    sam_mask_decoder.*, sam_prompt_encoder.*, memory_attention.*, memory_encoder.*,
    maskmem_tpos_enc, no_mem_embed, no_mem_pos_enc, obj_ptr_proj.*, ...

The trunk's own key names (what ``HieraDet`` uses, and what follows the prefix) are::

    patch_embed.proj.{weight,bias}                  7x7 stride-4 convolution
    pos_embed                                       [1, C, h, w] background position embedding
    pos_embed_window                                [1, C, w0, w0] window position embedding
    blocks.{i}.norm1.*, blocks.{i}.norm2.*          LayerNorms
    blocks.{i}.attn.qkv.*, blocks.{i}.attn.proj.*   attention
    blocks.{i}.mlp.layers.{0,1}.*                   MLP (SAM2's MLP class: a list of Linear)
    blocks.{i}.proj.*                               only in the first block of stages 2-4

so the conversion is only a matter of the ``image_encoder.trunk.`` prefix: no tensor is changed
or copied.  Public: :func:`sam2_to_ours`, :func:`ours_to_sam2`, :func:`is_sam2_checkpoint`,
:data:`SAM2_TRUNK_PREFIX`.  Errors are :class:`hiera.weights.CheckpointError` (a ``ValueError``).
"""

from __future__ import annotations

import re
from typing import Any, List, Mapping

from ..weights import CheckpointError, StateDict, unwrap_state_dict

__all__ = ["SAM2_TRUNK_PREFIX", "sam2_to_ours", "ours_to_sam2", "is_sam2_checkpoint"]

SAM2_TRUNK_PREFIX = "image_encoder.trunk."

# Every key of SAM2's trunk (any configuration) matches one of these.
_TRUNK_KEY = re.compile(
    r"(patch_embed\.proj\.(weight|bias)"
    r"|pos_embed|pos_embed_window"
    r"|blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.layers\.\d+|proj)\.(weight|bias))"
)
# A classification head (and the final norm in front of it) that a HieraDet classifier may carry;
# SAM2 has none.
_HEAD_PREFIXES = ("head.", "norm.", "fc_norm.")


def _model_state(state: Any, source: str) -> Mapping[str, Any]:
    """The state dict inside a SAM2 checkpoint (``{"model": ...}``) or the state dict itself."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{source} is not a state dict or a checkpoint dict (got {type(state).__name__})")
    return unwrap_state_dict(state, source=source)


def is_sam2_checkpoint(state: Any) -> bool:
    """Whether ``state`` (a SAM2 checkpoint dict ``{"model": ...}`` or a state dict) holds SAM2's
    trunk under ``image_encoder.trunk.``. Never raises."""
    try:
        model = _model_state(state, "state")
    except (CheckpointError, TypeError, AttributeError):
        return False
    return any(isinstance(k, str) and k.startswith(SAM2_TRUNK_PREFIX) for k in model)


def _summary(keys: List[str], limit: int = 8) -> str:
    heads = sorted({k.split(".", 1)[0] for k in keys})
    more = f" and {len(heads) - limit} more" if len(heads) > limit else ""
    return ", ".join(heads[:limit]) + more


def sam2_to_ours(state: Any) -> StateDict:
    """The trunk of a SAM2 / SAM2.1 checkpoint, with our ``HieraDet`` key names.

    ``state`` is the loaded checkpoint (``{"model": state_dict}``) or its state dict. Keeps the
    ``image_encoder.trunk.*`` keys, without the prefix (the tensors are shared, not copied);
    everything else (neck, mask decoder, memory modules, ...) is left out. Raises
    :class:`~hiera.weights.CheckpointError` when there is no such key.
    """
    model = _model_state(state, "SAM2 checkpoint")
    trunk = {k[len(SAM2_TRUNK_PREFIX):]: v for k, v in model.items() if k.startswith(SAM2_TRUNK_PREFIX)}
    if trunk:
        return trunk
    keys = [k for k in model if isinstance(k, str)]
    hint = ""
    if "pos_embed_window" in model and "patch_embed.proj.weight" in model:
        hint = " (it looks like a trunk state dict already in HieraDet's layout: load it as it is)"
    elif any(k.startswith("image_encoder.") for k in keys):
        hint = " (it has image_encoder.* keys, but no trunk: not a SAM2 image encoder?)"
    raise CheckpointError(
        f"not a SAM2 checkpoint: no '{SAM2_TRUNK_PREFIX}*' keys among its {len(keys)} keys "
        f"(top-level names: {_summary(keys) or 'none'}){hint}"
    )


def ours_to_sam2(state: Mapping[str, Any], *, drop_head: bool = False) -> StateDict:
    """Our ``HieraDet`` state dict with SAM2's checkpoint names: ``{"image_encoder.trunk." + k: v}``.

    The result is a partial SAM2 state dict (the trunk only); wrap it as ``{"model": ...}`` and add
    the rest of a SAM2 model's weights to make a checkpoint ``build_sam2`` loads. SAM2 has no
    classification head: keys of a head (``head.*``, and the final ``norm.*`` / ``fc_norm.*`` in
    front of it) raise :class:`~hiera.weights.CheckpointError` unless ``drop_head=True``, which
    leaves them out. Any other key that is not a trunk key raises as well, naming it.
    """
    if not isinstance(state, Mapping):
        raise CheckpointError(f"expected a HieraDet state dict, got {type(state).__name__}")
    keys = list(state)
    already = [k for k in keys if isinstance(k, str) and k.startswith(SAM2_TRUNK_PREFIX)]
    if already:
        raise CheckpointError(
            f"this state dict is already in SAM2's layout ({len(already)} '{SAM2_TRUNK_PREFIX}*' keys, "
            f"e.g. {already[0]!r}); use sam2_to_ours to read it"
        )
    head = [k for k in keys if k.startswith(_HEAD_PREFIXES)]
    if head and not drop_head:
        raise CheckpointError(
            f"SAM2's trunk has no classification head, and this state dict has one: {head[:6]}"
            f"{' ...' if len(head) > 6 else ''}; pass drop_head=True to leave these keys out"
        )
    unknown = [k for k in keys if k not in head and not _TRUNK_KEY.fullmatch(k)]
    if unknown:
        raise CheckpointError(
            f"keys that SAM2's HieraDet trunk does not have: {unknown[:8]}{' ...' if len(unknown) > 8 else ''} "
            f"(expected patch_embed.proj.*, pos_embed, pos_embed_window and blocks.{{i}}."
            f"{{norm1,norm2,attn.qkv,attn.proj,mlp.layers.N,proj}}.*)"
        )
    out = {SAM2_TRUNK_PREFIX + k: v for k, v in state.items() if k not in head}
    if not out:
        raise CheckpointError("nothing to convert: the state dict has no trunk keys")
    return out
