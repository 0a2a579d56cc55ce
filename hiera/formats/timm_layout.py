"""timm's Hiera layout (``timm.models.hiera.Hiera``) <-> the official layout, state dicts and configs.

Key naming (timm -> official)::

    patch_embed.proj.*, pos_embed, pos_embed_spatial, pos_embed_temporal  -> same
    pos_embed_abs (timm's legacy name)                                    -> pos_embed
    blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2,proj}.*    -> same
    blocks.{i}.ls{1,2}.gamma (layer scale), pos_embed_win (abswin)        -> same (our extensions), or
                                                                             folded / baked away
    head.norm.*                                                           -> norm.* (or encoder_norm.*)
    head.fc.*                                                             -> head.projection.*

Config arguments: timm's ``img_size`` / ``drop_rate`` are our ``input_size`` / ``head_dropout``; the
other arguments share names. Public: :func:`timm_to_official`, :func:`official_to_timm`,
:func:`timm_config_to_official`, :func:`official_config_to_timm`.

SAM 2's trunk (:class:`hiera.HieraDet`, timm's ``sam2_hiera_*``; recognised by ``pos_embed_window``)
has its own pair, :func:`timm_hieradet_to_ours` / :func:`ours_to_timm_hieradet`, to which the two
state-dict functions above hand such a state dict. Ours is SAM 2's trunk layout; timm's differs in::

    blocks.{i}.mlp.fc1.*, blocks.{i}.mlp.fc2.*  (timm)  <->  blocks.{i}.mlp.layers.0.*, blocks.{i}.mlp.layers.1.*
    head.norm.*                                          <->  norm.*   (ours: only with a head; see below)
    head.fc.*                                            <->  head.projection.*

Named ``timm_layout`` (not ``timm``) because :func:`timm_config_to_official` imports timm itself, when
given a model name; that is the only import of timm, so this module loads without it.
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import StateDict
from .common import (
    _MAE_DECODER_PREFIXES,
    _first_difference,
    _norm_eps,
    _norm_layer_for_eps,
    _official_blocks,
    _official_defaults,
    _rename,
    _solve_multiplier,
    _state,
)

__all__ = ["timm_to_official", "official_to_timm", "timm_config_to_official", "official_config_to_timm",
           "timm_hieradet_to_ours", "ours_to_timm_hieradet"]

# Keys laid out identically in both (the trunk; blocks.{i}.<one of _BLOCK_PARAMS>).
_TRUNK_KEYS = (
    "patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "pos_embed_spatial", "pos_embed_temporal",
    "pos_embed_win",
)
_BLOCK_PARAMS = (
    "norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
    "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias",
    "proj.weight", "proj.bias",
    "ls1.gamma", "ls2.gamma",  # layer scale (timm's init_values; our Hiera has it too)
)


def _bake_abswin(pos_embed: torch.Tensor, pos_embed_win: torch.Tensor, input_size, patch_stride) -> torch.Tensor:
    """timm's ``Hiera._pos_embed`` for ``abs_win_pos_embed=True``, evaluated once for a fixed input size."""
    if pos_embed.ndim != 4 or pos_embed_win.ndim != 4:
        raise ValueError(
            f"abswin expects pos_embed [1, C, gh, gw] and pos_embed_win [1, C, muh, muw], got "
            f"{tuple(pos_embed.shape)} and {tuple(pos_embed_win.shape)}"
        )
    tokens = [i // s for i, s in zip(input_size, patch_stride)]
    mu = list(pos_embed_win.shape[2:])
    if len(tokens) != 2 or any(t % m for t, m in zip(tokens, mu)):
        raise ValueError(
            f"abswin_input_size={tuple(input_size)} with patch_stride={tuple(patch_stride)} gives a token grid "
            f"{tuple(tokens)} that is not 2-D or not a multiple of the mask unit {tuple(mu)}"
        )
    win = pos_embed_win.tile([t // m for t, m in zip(tokens, mu)])
    glob = F.interpolate(pos_embed, size=win.shape[-2:], mode="bicubic", antialias=True)
    return (glob + win).flatten(2).transpose(1, 2).contiguous()


def timm_to_official(
    state_dict: Mapping[str, torch.Tensor],
    *,
    fold_layer_scale: bool = False,
    abswin_input_size: Optional[Sequence[int]] = None,
    patch_stride: Sequence[int] = (4, 4),
    head_norm: str = "norm",
    drop_unmapped: bool = False,
) -> StateDict:
    """timm ``Hiera`` state dict -> official layout.

    Key rules (timm -> official)::

        patch_embed.proj.{weight,bias}          -> same
        pos_embed [1, N, C]                     -> same (also timm's legacy name pos_embed_abs)
        pos_embed_spatial, pos_embed_temporal   -> same (video)
        blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,mlp.fc1,mlp.fc2,proj}.{weight,bias} -> same
        head.norm.{weight,bias}                 -> norm.{weight,bias}   (head_norm="encoder_norm": encoder_norm.*)
        head.fc.{weight,bias}                   -> head.projection.{weight,bias}

    No tensor changes layout (timm's attention packs qkv exactly as the official one). A timm model
    built with ``num_classes=0`` has no ``head.fc``: the result is an encoder (+ norm) checkpoint.

    timm's extensions, which our Hiera has too (``init_values``, ``abs_win_pos_embed``,
    ``use_expand_proj``), keep their keys: ``blocks.{i}.ls1.gamma`` / ``ls2.gamma`` ``[dim_out]``,
    ``pos_embed`` ``[1, C, *global_pos_size]`` with ``pos_embed_win`` ``[1, C, *mask_unit_size]``. For a
    state dict the *official* package can load, remove them:

    * ``fold_layer_scale=True`` folds layer scale exactly into the preceding linear layer
      (``attn.proj`` for ls1, ``mlp.fc2`` for ls2: ``W <- gamma[:, None] * W``, ``b <- gamma * b``,
      computed in float64);
    * ``abswin_input_size=(H, W)`` (with the model's ``patch_stride``) bakes the abswin embedding into
      the plain ``pos_embed`` ``[1, N, C]`` that timm adds at that input size (exact at that size).

    ``use_expand_proj=False`` (stage transitions concatenate max- and mean-pooled tokens) has no
    official form. ``head.pre_logits.*`` (an MLP head): ValueError (or dropped with ``drop_unmapped``).

    A HieraDet state dict (timm's ``sam2_hiera_*``: it has ``pos_embed_window``) goes to
    :func:`timm_hieradet_to_ours` (only ``drop_unmapped`` applies to it).
    """
    state = _state(state_dict, "timm state dict")
    if "pos_embed_window" in state:  # SAM 2's trunk (timm's sam2_hiera_*), not the plain Hiera
        return timm_hieradet_to_ours(state, drop_unmapped=drop_unmapped)
    if head_norm not in ("norm", "encoder_norm"):
        raise ValueError(f"head_norm must be 'norm' or 'encoder_norm', got {head_norm!r}")
    state = dict(state)
    if "pos_embed_abs" in state:
        if "pos_embed" in state:
            raise ValueError("timm state dict has both pos_embed and its legacy name pos_embed_abs")
        state["pos_embed"] = state.pop("pos_embed_abs")

    gammas = {k: v for k, v in state.items() if re.fullmatch(r"blocks\.\d+\.ls[12]\.gamma", k)}
    for key, gamma in (gammas.items() if fold_layer_scale else ()):
        i, which = re.fullmatch(r"blocks\.(\d+)\.ls([12])\.gamma", key).groups()
        target = f"blocks.{i}.attn.proj" if which == "1" else f"blocks.{i}.mlp.fc2"
        for p in ("weight", "bias"):
            if f"{target}.{p}" not in state:
                raise ValueError(f"{key} has no {target}.{p} to fold into")
        g = gamma.double()
        w, b = state[f"{target}.weight"], state[f"{target}.bias"]
        state[f"{target}.weight"] = (w.double() * g[:, None]).to(w.dtype)
        state[f"{target}.bias"] = (b.double() * g).to(b.dtype)
        del state[key]

    if "pos_embed_win" in state and abswin_input_size is not None:
        state["pos_embed"] = _bake_abswin(state["pos_embed"], state.pop("pos_embed_win"), abswin_input_size, patch_stride)
    elif "pos_embed" in state and state["pos_embed"].ndim != 3 and "pos_embed_win" not in state:
        raise ValueError(f"pos_embed of shape {tuple(state['pos_embed'].shape)} is not [1, N, C] and no pos_embed_win")

    def rule(key: str, value: torch.Tensor) -> Optional[str]:
        if key in _TRUNK_KEYS:
            return key
        m = re.fullmatch(r"blocks\.\d+\.(.+)", key)
        if m:
            return key if m.group(1) in _BLOCK_PARAMS else None
        if key.startswith("head.norm."):
            return head_norm + key[len("head.norm"):]
        if key.startswith("head.fc."):
            return "head.projection" + key[len("head.fc"):]
        return None

    return _rename(state, rule, "timm -> official", drop_unmapped)


def official_to_timm(state_dict: Mapping[str, torch.Tensor], *, drop_unmapped: bool = False) -> StateDict:
    """Official state dict -> timm ``Hiera`` layout (what timm's ``checkpoint_filter_fn`` does, but strict).

    Key rules (official -> timm)::

        patch_embed.*, pos_embed, pos_embed_spatial, pos_embed_temporal, blocks.{i}.*  -> same
        norm.{weight,bias}              -> head.norm.{weight,bias}
        head.projection.{weight,bias}   -> head.fc.{weight,bias}
        encoder_norm.{weight,bias}      -> head.norm.{weight,bias}   (MAE checkpoints, as timm's ``.mae`` weights)

    timm has no MAE decoder: ``decoder_*``, ``mask_token`` and ``multi_scale_fusion_heads.*`` raise a
    ValueError unless ``drop_unmapped=True`` (the encoder of an MAE checkpoint then loads into a timm
    model built with ``num_classes=0``). Note that ``encoder_norm`` normalises the *fused multi-scale*
    MAE features, not the pooled last stage that timm's ``head.norm`` sees; timm maps it anyway.

    Our HieraDet's state dict (it has ``pos_embed_window``) goes to :func:`ours_to_timm_hieradet`.
    """
    state = _state(state_dict, "official state dict")
    if "pos_embed_window" in state:  # our HieraDet (SAM 2's trunk), not the plain Hiera
        return ours_to_timm_hieradet(state, drop_unmapped=drop_unmapped)
    if "norm.weight" in state and "encoder_norm.weight" in state:
        raise ValueError("state dict has both norm.* and encoder_norm.*; both would become timm's head.norm.*")

    def rule(key: str, value: torch.Tensor) -> Optional[str]:
        if key in _TRUNK_KEYS:
            return key
        m = re.fullmatch(r"blocks\.\d+\.(.+)", key)
        if m:
            return key if m.group(1) in _BLOCK_PARAMS else None
        for src in ("norm.", "encoder_norm."):
            if key.startswith(src) and key[len(src):] in ("weight", "bias"):
                return "head.norm." + key[len(src):]
        if key.startswith("head.projection."):
            return "head.fc." + key[len("head.projection."):]
        return None

    hint = ""
    if any(k.startswith(_MAE_DECODER_PREFIXES) for k in state):
        hint = "timm's Hiera has no MAE decoder / fusion heads"
    return _rename(state, rule, "official -> timm", drop_unmapped, hint)


def timm_config_to_official(
    model_or_name: Union[str, nn.Module],
    *,
    fold_layer_scale: bool = False,
    bake_abswin: bool = False,
    **create_kwargs,
) -> Dict[str, Any]:
    """Our ``Hiera(**kwargs)`` arguments for a timm Hiera model (an instance, or a timm model name such
    as ``"hiera_tiny_224"``, built on the meta device with ``create_kwargs``).

    Read from the built model, so any timm keyword (``img_size``, ``num_classes``, ``stages``, ...) is
    honoured. ``input_size`` = token grid x ``patch_stride``; ``dim_mul``/``head_mul`` are solved from the
    per-stage widths/heads; ``mask_unit_attn[s]`` from the blocks (a last stage of depth 1 does not
    reveal its flag; False is returned); ``num_classes=0`` when timm's head has no ``fc``. The result is
    checked block by block against the timm model. ``head_init_scale`` (init only) keeps its default;
    timm's ``patch_drop_rate`` (training-time unit dropping) has no official counterpart and is ignored.

    timm's extensions become our extension arguments (``abs_win_pos_embed``, ``global_pos_size``,
    ``init_values``, ``use_expand_proj``), unless ``fold_layer_scale`` / ``bake_abswin`` ask for
    official-only arguments (pair ``bake_abswin`` with ``timm_to_official(...,
    abswin_input_size=kwargs["input_size"])``). Raises ValueError for a non-"avg" pool, an MLP head,
    a head without norm, a norm other than LayerNorm, an activation other than exact GELU.
    """
    model = model_or_name
    if isinstance(model_or_name, str):
        import timm  # only to build a timm model by name: `import hiera` does not load timm

        model = timm.create_model(model_or_name, pretrained=False, device="meta", **create_kwargs)
    elif create_kwargs:
        raise TypeError("create_kwargs only apply when a timm model name is given")
    if not (hasattr(model, "stage_ends") and hasattr(model, "unroll") and hasattr(model, "blocks")):
        raise ValueError(f"{type(model).__name__} is not a timm Hiera model")

    blocks = list(model.blocks)
    stage_ends = list(model.stage_ends)
    stages = tuple(e - s for e, s in zip(stage_ends, [-1] + stage_ends[:-1]))

    problems = []
    extensions = {}
    if getattr(model, "pos_embed_win", None) is not None and not bake_abswin:
        extensions.update(abs_win_pos_embed=True, global_pos_size=tuple(int(g) for g in model.pos_embed.shape[2:]))
    scaled = [b.ls1 for b in blocks if not isinstance(b.ls1, nn.Identity)]
    if scaled and not fold_layer_scale:
        extensions["init_values"] = float(getattr(scaled[0], "init_values", 1e-5))
    if any(b.do_expand and b.proj is None for b in blocks):
        extensions["use_expand_proj"] = False
    head = model.head
    if getattr(head, "pool_type", "avg") != "avg":
        problems.append(f"global_pool={head.pool_type!r} (official: mean)")
    if not isinstance(getattr(head, "pre_logits", nn.Identity()), nn.Identity):
        problems.append("an MLP head (hidden_size)")
    norms = [m for b in blocks for m in (b.norm1, b.norm2)] + [head.norm]
    if isinstance(head.norm, nn.Identity):
        problems.append("a head without norm (reset_classifier(reset_other=True))")
    elif not all(isinstance(m, nn.LayerNorm) for m in norms):
        problems.append("a norm layer other than LayerNorm")
    acts = {type(b.mlp.act).__name__ + str(getattr(b.mlp.act, "approximate", "")) for b in blocks}
    if acts != {"GELUnone"}:
        problems.append(f"activation {acts} (official: exact GELU)")
    if problems:
        raise ValueError("timm model has features the official Hiera lacks: " + "; ".join(problems))
    eps = {m.eps for m in norms}
    if len(eps) != 1:
        raise ValueError(f"timm model mixes LayerNorm eps values {sorted(eps)}")

    conv = model.patch_embed.proj
    dims = [blocks[0].dim] + [blocks[e].dim_out for e in stage_ends]
    heads = [blocks[0].attn.heads] + [blocks[e].attn.heads for e in stage_ends]
    # mask_unit_attn[s]: non-first blocks of stage s, or the first block of stage s + 1.
    starts = [0] + [e + 1 for e in stage_ends[:-1]]
    mua = []
    for s, (start, end) in enumerate(zip(starts, stage_ends)):
        if s == 0 or end > start:
            mua.append(bool(blocks[end].attn.use_mask_unit_attn))
        elif s + 1 < len(stages):
            mua.append(bool(blocks[starts[s + 1]].attn.use_mask_unit_attn))
        else:
            mua.append(False)
    fc = getattr(head, "fc", None)
    dp = getattr(blocks[-1].drop_path1, "drop_prob", 0.0)
    kwargs = dict(
        input_size=tuple(int(t * s) for t, s in zip(model.tokens_spatial_shape, model.patch_stride)),
        in_chans=int(model.in_chans),
        embed_dim=int(dims[0]),
        num_heads=int(heads[0]),
        num_classes=int(fc.out_features) if isinstance(fc, nn.Linear) else 0,
        stages=stages,
        q_pool=sum(1 for b in blocks if b.attn.q_stride > 1),
        q_stride=tuple(int(q) for q in model.q_stride),
        mask_unit_size=tuple(int(m) for m in model.mask_unit_size),
        mask_unit_attn=tuple(mua),
        dim_mul=_solve_multiplier(dims[1:], "dim"),
        head_mul=_solve_multiplier(heads[1:], "head"),
        patch_kernel=tuple(conv.kernel_size),
        patch_stride=tuple(conv.stride),
        patch_padding=tuple(conv.padding),
        mlp_ratio=blocks[0].mlp.fc1.out_features / blocks[0].dim_out,
        drop_path_rate=float(dp),
        norm_layer=_norm_layer_for_eps(eps.pop()),
        head_dropout=float(head.drop.p),
        sep_pos_embed=getattr(model, "pos_embed_spatial", None) is not None,
        **extensions,
    )
    expected = _official_blocks(kwargs)
    actual = [
        (b.dim, b.dim_out, b.attn.heads, b.attn.q_stride, bool(b.attn.use_mask_unit_attn),
         b.attn.window_size if b.attn.use_mask_unit_attn else None)
        for b in blocks
    ]
    if expected != actual:
        raise ValueError(f"could not express the timm model as official arguments: {_first_difference(expected, actual)}")
    if any(b.mlp.fc1.out_features != int(b.dim_out * kwargs["mlp_ratio"]) for b in blocks):
        raise ValueError("timm model's MLP widths do not follow a single mlp_ratio")
    return kwargs


def official_config_to_timm(kwargs: Mapping[str, Any]) -> Dict[str, Any]:
    """``timm.models.hiera.Hiera(**result)`` arguments for our constructor arguments (``model.config``).

    ``input_size`` -> ``img_size``, ``head_dropout`` -> ``drop_rate``; the other arguments share names.
    MAE configs (with ``decoder_*``) give ``num_classes=0``: timm holds only their encoder.
    """
    mae = "decoder_embed_dim" in kwargs or "decoder_depth" in kwargs
    kw = {**_official_defaults(mae), **kwargs}
    out = dict(
        img_size=tuple(kw["input_size"]),
        in_chans=kw["in_chans"],
        embed_dim=kw["embed_dim"],
        num_heads=kw["num_heads"],
        num_classes=0 if mae else kw["num_classes"],
        stages=tuple(kw["stages"]),
        q_pool=kw["q_pool"],
        q_stride=tuple(kw["q_stride"]),
        mask_unit_size=tuple(kw["mask_unit_size"]),
        mask_unit_attn=tuple(kw["mask_unit_attn"]),
        dim_mul=kw["dim_mul"],
        head_mul=kw["head_mul"],
        patch_kernel=tuple(kw["patch_kernel"]),
        patch_stride=tuple(kw["patch_stride"]),
        patch_padding=tuple(kw["patch_padding"]),
        mlp_ratio=kw["mlp_ratio"],
        drop_path_rate=kw["drop_path_rate"],
        drop_rate=kw["head_dropout"],
        head_init_scale=kw["head_init_scale"],
        sep_pos_embed=kw["sep_pos_embed"],
    )
    if kw.get("abs_win_pos_embed"):
        out.update(abs_win_pos_embed=True, global_pos_size=tuple(kw.get("global_pos_size", (14, 14))))
    if kw.get("init_values") is not None:
        out["init_values"] = kw["init_values"]
    if kw.get("use_expand_proj") is False:
        out["use_expand_proj"] = False
    eps = _norm_eps(kw["norm_layer"])
    out["norm_layer"] = "layernorm" if abs(eps - 1e-6) < 1e-12 else partial(nn.LayerNorm, eps=eps)
    return out


# ====================================================================================== HieraDet
# SAM 2's trunk: keys laid out identically in timm's sam2_hiera_* and ours (= SAM 2's own names).
_HIERADET_TRUNK_KEYS = ("patch_embed.proj.weight", "patch_embed.proj.bias", "pos_embed", "pos_embed_window")
_HIERADET_BLOCK_LAYERS = ("norm1", "norm2", "attn.qkv", "attn.proj", "proj")
# The MLP: timm's names -> ours (SAM 2's MLP holds its layers in a list).
_HIERADET_MLP = {"mlp.fc1": "mlp.layers.0", "mlp.fc2": "mlp.layers.1"}


def _hieradet_block_rule(key: str, table: Mapping[str, str]) -> Optional[str]:
    """``blocks.{i}.<layer>.{weight,bias}`` renamed by ``table`` (MLP names) or kept (the other
    layers), else None."""
    m = re.fullmatch(r"(blocks\.\d+\.)(.+)\.(weight|bias)", key)
    if m is None:
        return None
    prefix, layer, param = m.groups()
    if layer in table:
        return f"{prefix}{table[layer]}.{param}"
    return key if layer in _HIERADET_BLOCK_LAYERS else None


def _is_identity_norm(weight: torch.Tensor, bias: torch.Tensor) -> bool:
    """A LayerNorm affine at its initial value (weight 1, bias 0): what timm builds and never trains
    when there is no classifier. (Meta tensors have no values: not known to be the identity.)"""
    if weight.device.type == "meta" or bias.device.type == "meta":
        return False
    return bool(torch.all(weight == 1)) and bool(torch.all(bias == 0))


def timm_hieradet_to_ours(
    state_dict: Mapping[str, torch.Tensor],
    *,
    keep_norm: Optional[bool] = None,
    drop_unmapped: bool = False,
) -> StateDict:
    """timm ``HieraDet`` (``sam2_hiera_*``) state dict -> our :class:`hiera.HieraDet` layout, which is
    SAM 2's trunk layout (what a SAM 2 checkpoint holds under ``image_encoder.trunk.``).

    Key rules (timm -> ours)::

        patch_embed.proj.*, pos_embed, pos_embed_window                 -> same
        blocks.{i}.{norm1,norm2,attn.qkv,attn.proj,proj}.{weight,bias}  -> same
        blocks.{i}.mlp.fc1.*, blocks.{i}.mlp.fc2.*                      -> blocks.{i}.mlp.layers.0.*, .layers.1.*
        head.fc.*                                                       -> head.projection.*
        head.norm.*                                                     -> norm.*, or dropped (below)

    No tensor changes. timm builds ``head.norm`` even without a classifier (``num_classes=0``, which
    is how it holds SAM 2's weights), while our HieraDet has its final norm only with a head, as
    SAM 2's trunk has none. ``keep_norm=None`` (default) therefore drops ``head.norm`` when there is
    no ``head.fc`` and the norm is at its initial value (weight 1, bias 0: nothing was trained);
    otherwise it becomes ``norm.*``. ``keep_norm=True`` / ``False`` always keeps / drops it.

    Any other key (layer scale ``ls1``/``ls2`` of timm's ``hieradet_small``, an MLP head's
    ``head.pre_logits.*``, ...) raises a ValueError naming it, unless ``drop_unmapped=True``.
    """
    state = dict(_state(state_dict, "timm HieraDet state dict"))
    norm_keys = [k for k in ("head.norm.weight", "head.norm.bias") if k in state]
    if keep_norm is None:
        keep_norm = True
        if len(norm_keys) == 2 and not any(k.startswith("head.fc.") for k in state):
            keep_norm = not _is_identity_norm(state["head.norm.weight"], state["head.norm.bias"])
    if not keep_norm:
        for key in norm_keys:
            del state[key]

    def rule(key: str, value: torch.Tensor) -> Optional[str]:
        if key in _HIERADET_TRUNK_KEYS:
            return key
        if key.startswith("blocks."):
            return _hieradet_block_rule(key, _HIERADET_MLP)
        if key in ("head.norm.weight", "head.norm.bias"):
            return "norm" + key[len("head.norm"):]
        if key in ("head.fc.weight", "head.fc.bias"):
            return "head.projection" + key[len("head.fc"):]
        return None

    hint = "our HieraDet has SAM 2's trunk, a plain head (norm + linear) and no layer scale"
    return _rename(state, rule, "timm HieraDet -> ours", drop_unmapped, hint)


def ours_to_timm_hieradet(
    state_dict: Mapping[str, torch.Tensor],
    *,
    add_head_norm: bool = True,
    drop_unmapped: bool = False,
) -> StateDict:
    """Our :class:`hiera.HieraDet` state dict (SAM 2's trunk layout) -> timm's ``HieraDet``
    (``sam2_hiera_*``), the inverse of :func:`timm_hieradet_to_ours`.

    Key rules (ours -> timm)::

        patch_embed.proj.*, pos_embed, pos_embed_window, blocks.{i}.{norm1,norm2,attn.*,proj}.*  -> same
        blocks.{i}.mlp.layers.0.*, blocks.{i}.mlp.layers.1.*   -> blocks.{i}.mlp.fc1.*, blocks.{i}.mlp.fc2.*
        norm.*                                                 -> head.norm.*
        head.projection.*                                      -> head.fc.*

    A trunk without ``norm.*`` (SAM 2's, or ours with ``num_classes=0``) gets ``head.norm`` at timm's
    initial value (weight 1, bias 0, the last stage's width) with ``add_head_norm=True``, since every
    timm HieraDet has that norm and ``load_state_dict(strict=True)`` would miss it; it is what
    :func:`timm_hieradet_to_ours` drops again, so the round trip is exact. Load the result into
    ``timm.create_model(name, num_classes=0)`` when there is no ``head.projection``. Any other key
    raises a ValueError naming it, unless ``drop_unmapped=True``.
    """
    state = _state(state_dict, "HieraDet state dict")
    to_timm = {v: k for k, v in _HIERADET_MLP.items()}

    def rule(key: str, value: torch.Tensor) -> Optional[str]:
        if key in _HIERADET_TRUNK_KEYS:
            return key
        if key.startswith("blocks."):
            return _hieradet_block_rule(key, to_timm)
        if key in ("norm.weight", "norm.bias"):
            return "head.norm" + key[len("norm"):]
        if key in ("head.projection.weight", "head.projection.bias"):
            return "head.fc" + key[len("head.projection"):]
        return None

    out = _rename(state, rule, "ours -> timm HieraDet", drop_unmapped, "timm's HieraDet has no other weights")
    if add_head_norm and "head.norm.weight" not in out:
        last = [k for k in out if re.fullmatch(r"blocks\.\d+\.norm2\.weight", k)]
        if not last:
            raise ValueError("HieraDet state dict has no blocks.{i}.norm2.weight to size timm's head.norm by")
        ref = out[max(last, key=lambda k: int(k.split(".")[1]))]
        out["head.norm.weight"] = torch.ones_like(ref)
        out["head.norm.bias"] = torch.zeros_like(ref)
    return out
