"""Checkpoint formats: convert between the official layout (ours), timm's and Hugging Face's Hiera.

Three layouts of the same network exist:

* ``"official"``: facebookresearch/hiera (``hiera-transformer``) and this package;
* ``"timm"``: ``timm.models.hiera.Hiera`` (``timm.create_model("hiera_base_224")``);
* ``"hf"``: transformers' ``HieraModel`` / ``HieraForImageClassification`` / ``HieraForPreTraining``.

Public functions::

    detect_format(state_dict) -> "official" | "timm" | "hf"
    timm_to_official(state_dict, ...) -> state_dict
    official_to_timm(state_dict, ...) -> state_dict
    timm_config_to_official(model_or_name, ...) -> Hiera(**kwargs) kwargs
    official_config_to_timm(kwargs) -> timm.models.hiera.Hiera(**kwargs) kwargs
    hf_to_official(state_dict, hf_config, ...) -> (state_dict, kwargs)
    official_to_hf(state_dict, config_kwargs, ...) -> (state_dict, hf_config_dict)
    hf_config_to_official(hf_config, ...) -> kwargs
    official_config_to_hf(kwargs, architecture) -> hf_config_dict   (HieraConfig(**hf_config_dict))
    convert(state_dict, to, config=None, source=None, **options) -> (state_dict, config or None)
    mask_from_noise(noise, mask_ratio) -> bool mask [B, #mask units], True = keep

Every converter renames keys by an explicit table; a key that matches no rule raises a
:class:`ValueError` naming it (``drop_unmapped=True`` drops such keys instead, with a warning
listing them). Converted state dicts share their tensors with the input, except the few that a
conversion computes (folded layer scale, baked abswin position embedding).

Only torch is imported at module level; timm and transformers are imported when a function needs
them (only ``timm_config_to_official("name")`` does).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import warnings
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..weights import StateDict, unwrap_state_dict

__all__ = [
    "FORMATS",
    "HF_ARCHITECTURES",
    "detect_format",
    "timm_to_official",
    "official_to_timm",
    "timm_config_to_official",
    "official_config_to_timm",
    "hf_to_official",
    "official_to_hf",
    "hf_config_to_official",
    "official_config_to_hf",
    "convert",
    "mask_from_noise",
]

FORMATS = ("official", "timm", "hf")
HF_ARCHITECTURES = ("HieraModel", "HieraForImageClassification", "HieraForPreTraining")

# transformers HieraForPreTraining -> ours, for the parts outside the blocks.
_HF_MAE_KEYS = {
    "encoder_norm.weight": "encoder_norm.weight",
    "encoder_norm.bias": "encoder_norm.bias",
    "decoder.decoder_embeddings.weight": "decoder_embed.weight",
    "decoder.decoder_embeddings.bias": "decoder_embed.bias",
    "decoder.mask_token": "mask_token",
    "decoder.decoder_position_embeddings": "decoder_pos_embed",
    "decoder.decoder_norm.weight": "decoder_norm.weight",
    "decoder.decoder_norm.bias": "decoder_norm.bias",
    "decoder.decoder_pred.weight": "decoder_pred.weight",
    "decoder.decoder_pred.bias": "decoder_pred.bias",
}
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
_MAE_DECODER_PREFIXES = ("decoder_embed.", "decoder_pos_embed", "decoder_blocks.", "decoder_norm.", "decoder_pred.",
                         "mask_token", "multi_scale_fusion_heads.")
_HF_LAYER_SUB = {  # HF sub-key of a HieraLayer -> official sub-key of a HieraBlock
    "layernorm_before.": "norm1.",
    "layernorm_after.": "norm2.",
    "attn.qkv.": "attn.qkv.",
    "attn.proj.": "attn.proj.",
    "mlp.fc1.": "mlp.fc1.",
    "mlp.fc2.": "mlp.fc2.",
    "proj.": "proj.",
}
_OFF_BLOCK_SUB = {v: k for k, v in _HF_LAYER_SUB.items()}


def _rename_param(sub: str, table: Mapping[str, str]) -> Optional[str]:
    """``prefix.weight`` / ``prefix.bias`` renamed by ``table`` (prefix -> prefix), else None."""
    for src, dst in table.items():
        if sub.startswith(src) and sub[len(src):] in ("weight", "bias"):
            return dst + sub[len(src):]
    return None


# ====================================================================================== helpers
def _state(state_dict: Mapping[str, torch.Tensor], what: str = "state dict") -> StateDict:
    """Unwrap ``{"model_state": ...}``/``{"state_dict": ...}``/``module.`` prefixes into a plain dict."""
    return unwrap_state_dict(state_dict, source=what)


def _listing(keys: Sequence[str], limit: int = 24) -> str:
    """Keys, with block indices folded: ``decoder_blocks.*.norm1.weight (x8)``."""
    if len(keys) <= 6:
        return ", ".join(sorted(keys))
    groups: Dict[str, int] = {}
    for key in keys:
        pattern = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", key)
        groups[pattern] = groups.get(pattern, 0) + 1
    items = [p if n == 1 else f"{p} (x{n})" for p, n in sorted(groups.items())]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more patterns)" if len(items) > limit else "")


def _rename(
    state: StateDict,
    rule: Callable[[str, torch.Tensor], Optional[str]],
    what: str,
    drop_unmapped: bool,
    hint: str = "",
) -> StateDict:
    """Apply ``rule`` (key, tensor -> new key, or None for "no rule") to every key."""
    out: StateDict = {}
    unmapped: List[str] = []
    for key, value in state.items():
        new = rule(key, value)
        if new is None:
            unmapped.append(key)
            continue
        if new in out:
            raise ValueError(f"{what}: two keys map to {new!r} (one of them is {key!r}); the state dict is inconsistent")
        out[new] = value
    if unmapped:
        message = f"{what}: {len(unmapped)} keys have no counterpart: {_listing(unmapped)}"
        if hint:
            message += f". {hint}"
        if not drop_unmapped:
            raise ValueError(message + ". Pass drop_unmapped=True to drop them (with a warning).")
        warnings.warn(f"dropped {message}", UserWarning, stacklevel=3)
    return out


def _is_mapping_config(obj) -> bool:
    return isinstance(obj, Mapping)


def _tuple(v) -> tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def _official_defaults(mae: bool) -> Dict[str, Any]:
    from ..mae import MaskedAutoencoderHiera
    from ..model import Hiera

    cls = MaskedAutoencoderHiera if mae else Hiera
    sig = inspect.signature(cls.__init__)
    return {n: p.default for n, p in sig.parameters.items() if p.default is not inspect.Parameter.empty}


def _norm_eps(norm_layer) -> float:
    """eps of our ``norm_layer`` argument (``"LayerNorm"`` means eps 1e-6, as upstream)."""
    if norm_layer is None or norm_layer == "LayerNorm":
        return 1e-6
    if isinstance(norm_layer, partial) and norm_layer.func is nn.LayerNorm:
        return float(norm_layer.keywords.get("eps", 1e-5))
    if norm_layer is nn.LayerNorm:
        return 1e-5
    raise ValueError(f"norm_layer={norm_layer!r} is not a LayerNorm; only LayerNorm converts")


def _norm_layer_for_eps(eps: float):
    return "LayerNorm" if abs(eps - 1e-6) < 1e-12 else partial(nn.LayerNorm, eps=eps)


def _official_blocks(kw: Mapping[str, Any]) -> List[tuple]:
    """Per-block ``(dim, dim_out, heads, q_stride, use_mask_unit_attn, window_size or None)`` of our
    ``Hiera(**kw)``, read off a model built on the meta device (window size only matters with
    mask-unit attention)."""
    from ..model import Hiera

    kw = {**{k: v for k, v in kw.items() if not k.startswith("decoder_")}, "num_classes": 1}
    with torch.device("meta"):
        model = Hiera(**kw)
    return [
        (b.dim, b.dim_out, b.attn.heads, b.attn.q_stride, bool(b.attn.use_mask_unit_attn),
         b.attn.window_size if b.attn.use_mask_unit_attn else None)
        for b in model.blocks
    ]


def _first_difference(a: List[tuple], b: List[tuple]) -> str:
    names = ("dim", "dim_out", "heads", "q_stride", "use_mask_unit_attn", "window_size")
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            diff = ", ".join(f"{n}: {u} vs {v}" for n, u, v in zip(names, x, y) if u != v)
            return f"block {i}: {diff}"
    return f"depth {len(a)} vs {len(b)}"


def _solve_multiplier(values: Sequence[int], name: str) -> float:
    """A float ``m`` with ``values[s+1] == int(values[s] * m)`` for all s (the official cumulative rule)."""
    if len(values) < 2:
        return 2.0  # unobservable with one stage: keep the default
    m = values[1] / values[0]
    for cand in (m, float(round(m, 6))):
        if all(int(values[s] * cand) == values[s + 1] for s in range(len(values) - 1)):
            return float(cand)
    raise ValueError(f"per-stage {name} {list(values)} do not follow the official rule x_(s+1) = int(x_s * {name}_mul)")


def mask_from_noise(noise: torch.Tensor, mask_ratio: float) -> torch.Tensor:
    """The mask-unit mask that official, timm and HF Hiera derive from uniform ``noise`` ``[B, #units]``:
    the ``int(#units * (1 - mask_ratio))`` units with the smallest noise are kept. Returns bool
    ``[B, #units]``, True = keep (pass as ``mask=`` to our models; HF takes ``noise=`` directly)."""
    num = noise.shape[1]
    len_keep = int(num * (1 - mask_ratio))
    ids_restore = torch.argsort(torch.argsort(noise, dim=1), dim=1)
    return ids_restore < len_keep


# ====================================================================================== detection
_HF_MARKERS = re.compile(
    r"^(hiera\.)?(embeddings\.(patch_embeddings|position_embeddings)|encoder\.stages\.|pooler\.layernorm\.)"
    r"|^(classifier\.|multiscale_fusion\.|decoder\.decoder_|decoder\.mask_token|hidden_states_norms\.)"
)
_TIMM_MARKERS = re.compile(r"^(head\.fc\.|head\.norm\.|head\.pre_logits\.|pos_embed_win$|pos_embed_abs$)|^blocks\.\d+\.ls[12]\.gamma$")
_OFFICIAL_MARKERS = re.compile(r"^(head\.projection\.|norm\.|decoder_|multi_scale_fusion_heads\.|mask_token$)")
_SHARED_MARKERS = re.compile(r"^(patch_embed\.|pos_embed$|pos_embed_spatial$|pos_embed_temporal$|blocks\.\d+\.|encoder_norm\.)")


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"official"``, ``"timm"`` or ``"hf"``, judged by key names.

    * hf: ``[hiera.]embeddings.patch_embeddings.*``, ``[hiera.]encoder.stages.*``, ``[hiera.]pooler.layernorm.*``,
      ``classifier.*``, ``multiscale_fusion.*``, ``decoder.decoder_*``;
    * timm: ``head.fc.*``, ``head.norm.*``, ``pos_embed_win``, ``blocks.N.ls1.gamma``;
    * official: ``head.projection.*``, ``norm.*``, ``decoder_*``, ``mask_token``, ``multi_scale_fusion_heads.*``,
      or only the keys official and timm share (``patch_embed.*``, ``pos_embed``, ``blocks.*``): an encoder
      without head or norm is laid out identically in both, and is reported as official.

    Raises ValueError when the keys fit none, or mix two layouts.
    """
    state = _state(state_dict)
    hits = {
        "hf": [k for k in state if _HF_MARKERS.search(k)],
        "timm": [k for k in state if _TIMM_MARKERS.search(k)],
        "official": [k for k in state if _OFFICIAL_MARKERS.search(k)],
    }
    shared = [k for k in state if _SHARED_MARKERS.search(k)]
    if hits["hf"]:
        others = hits["timm"] + hits["official"] + [k for k in shared if not k.startswith("encoder_norm.")]
        if others:
            raise ValueError(
                f"state dict mixes Hugging Face keys ({_listing(hits['hf'], 3)}) with official/timm keys "
                f"({_listing(others, 3)})"
            )
        return "hf"
    if hits["timm"] and hits["official"]:
        raise ValueError(
            f"state dict mixes timm keys ({_listing(hits['timm'], 3)}) with official keys ({_listing(hits['official'], 3)})"
        )
    if hits["timm"]:
        return "timm"
    if hits["official"] or shared:
        return "official"
    raise ValueError(
        f"not a Hiera state dict of a known layout (official, timm or hf); its keys: {_listing(list(state), 8)}"
    )


# ====================================================================================== timm
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
    """
    state = _state(state_dict, "timm state dict")
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
    """
    state = _state(state_dict, "official state dict")
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
        import timm

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


# ====================================================================================== Hugging Face
def _load_hf_config(hf_config) -> Dict[str, Any]:
    if isinstance(hf_config, (str, os.PathLike)):
        path = Path(hf_config)
        if path.is_dir():
            path = path / "config.json"
        with open(path) as f:
            return json.load(f)
    if _is_mapping_config(hf_config):
        return dict(hf_config)
    if hasattr(hf_config, "to_dict"):
        return hf_config.to_dict()
    raise TypeError(f"hf_config must be a HieraConfig, a dict or a config.json path, got {type(hf_config).__name__}")


_HF_DEFAULTS = dict(
    embed_dim=96, image_size=(224, 224), patch_size=(7, 7), patch_stride=(4, 4), patch_padding=(3, 3),
    mlp_ratio=4.0, depths=(2, 3, 16, 3), num_heads=(1, 2, 4, 8), embed_dim_multiplier=2.0, num_query_pool=3,
    query_stride=(2, 2), masked_unit_size=(8, 8), masked_unit_attention=(True, True, False, False),
    drop_path_rate=0.0, num_channels=3, hidden_act="gelu", layer_norm_eps=1e-6, decoder_hidden_size=None,
    decoder_depth=None, decoder_num_heads=None, normalize_pixel_loss=True, mask_ratio=0.6,
)


def _hf_blocks(c: Mapping[str, Any]) -> List[tuple]:
    """Per-block signature as transformers' ``HieraEncoder`` / ``HieraStage`` build them."""
    depths = list(c["depths"])
    cumulative = [sum(depths[: i + 1]) for i in range(len(depths))]
    pool_layers = cumulative[: c["num_query_pool"]]
    q_area = math.prod(c["query_stride"])
    mu_area = math.prod(c["masked_unit_size"])
    mua = list(c["masked_unit_attention"])
    out, dim, g = [], c["embed_dim"], 0
    for s, depth in enumerate(depths):
        dim_out = int(c["embed_dim"] * c["embed_dim_multiplier"] ** s)
        window = int(mu_area * q_area ** -s)
        prev = mua[s - 1 if s > 0 else 0]
        for i in range(depth):
            use = bool(mua[s] or (prev and i == 0))
            q = q_area if g in pool_layers else 1
            out.append((dim if i == 0 else dim_out, dim_out, int(c["num_heads"][s]), q, use, window if use else None))
            g += 1
        dim = dim_out
    return out


def hf_config_to_official(hf_config, *, mae: Optional[bool] = None, num_classes: Optional[int] = None) -> Dict[str, Any]:
    """Our constructor arguments for a transformers ``HieraConfig`` (object, dict or config.json path).

    Field map (HF -> ours): ``image_size`` -> ``input_size``, ``num_channels`` -> ``in_chans``,
    ``embed_dim``, ``num_heads[0]`` -> ``num_heads`` (the list must grow by one ``head_mul``),
    ``depths`` -> ``stages``, ``num_query_pool`` -> ``q_pool``, ``query_stride`` -> ``q_stride``,
    ``masked_unit_size`` -> ``mask_unit_size``, ``masked_unit_attention`` -> ``mask_unit_attn``,
    ``embed_dim_multiplier`` -> ``dim_mul``, ``patch_size``/``patch_stride``/``patch_padding`` ->
    ``patch_kernel``/``patch_stride``/``patch_padding``, ``mlp_ratio``, ``drop_path_rate``,
    ``layer_norm_eps`` -> ``norm_layer`` (``"LayerNorm"`` for 1e-6, else ``partial(nn.LayerNorm, eps)``),
    ``num_labels`` -> ``num_classes`` (or ``num_classes=``), and with ``mae=True``
    ``decoder_hidden_size``/``decoder_depth``/``decoder_num_heads`` -> ``decoder_embed_dim``/... .
    ``mae=None``: MAE iff the config lists ``HieraForPreTraining`` in ``architectures``.
    ``mask_ratio`` (a forward argument of ours) and ``normalize_pixel_loss`` (always on in ours; a
    warning if off) are not constructor arguments.

    Checked block by block against transformers' construction; raises ValueError where the two differ
    (HF's mask-unit-attention lag is ``flag[s] or flag[s-1]`` where the official one is ``flag[s-1]``,
    and HF shrinks the window at every stage, the official one only at the ``q_pool`` poolings).
    """
    raw = _load_hf_config(hf_config)
    c = {**_HF_DEFAULTS, **{k: v for k, v in raw.items() if k in _HF_DEFAULTS and v is not None}}
    for k in ("decoder_hidden_size", "decoder_depth", "decoder_num_heads"):
        c[k] = raw.get(k)
    if c["hidden_act"] != "gelu":
        raise ValueError(f"hidden_act={c['hidden_act']!r}: the official Hiera uses exact GELU ('gelu')")
    if len(c["image_size"]) != 2:
        raise ValueError(f"transformers' Hiera is 2-D only, got image_size={c['image_size']}")
    heads = [int(h) for h in c["num_heads"]]
    if len(heads) != len(c["depths"]):
        raise ValueError(f"num_heads {heads} needs one entry per stage (depths {list(c['depths'])})")
    if mae is None:
        mae = "HieraForPreTraining" in (raw.get("architectures") or [])
    if num_classes is None:
        if raw.get("num_labels") is not None:
            num_classes = int(raw["num_labels"])
        elif raw.get("id2label"):
            num_classes = len(raw["id2label"])
    kw: Dict[str, Any] = dict(
        input_size=tuple(c["image_size"]),
        in_chans=int(c["num_channels"]),
        embed_dim=int(c["embed_dim"]),
        num_heads=heads[0],
        stages=tuple(int(d) for d in c["depths"]),
        q_pool=int(c["num_query_pool"]),
        q_stride=tuple(c["query_stride"]),
        mask_unit_size=tuple(c["masked_unit_size"]),
        mask_unit_attn=tuple(bool(m) for m in c["masked_unit_attention"]),
        dim_mul=float(c["embed_dim_multiplier"]),
        head_mul=_solve_multiplier(heads, "head"),
        patch_kernel=tuple(c["patch_size"]),
        patch_stride=tuple(c["patch_stride"]),
        patch_padding=tuple(c["patch_padding"]),
        mlp_ratio=float(c["mlp_ratio"]),
        drop_path_rate=float(c["drop_path_rate"]),
        norm_layer=_norm_layer_for_eps(float(c["layer_norm_eps"])),
    )
    if num_classes is not None and not mae:
        kw["num_classes"] = num_classes
    if mae:
        missing = [k for k in ("decoder_hidden_size", "decoder_depth", "decoder_num_heads") if c[k] is None]
        if missing:
            raise ValueError(f"HF config of a pretraining (MAE) model lacks {missing}")
        kw.update(decoder_embed_dim=int(c["decoder_hidden_size"]), decoder_depth=int(c["decoder_depth"]),
                  decoder_num_heads=int(c["decoder_num_heads"]))
        if not c["normalize_pixel_loss"]:
            warnings.warn("HF config has normalize_pixel_loss=False; the official MAE loss always normalises "
                          "pixel targets, so losses will differ (weights convert exactly)", UserWarning, stacklevel=2)
    expected, actual = _official_blocks(kw), _hf_blocks(c)
    if expected != actual:
        raise ValueError(f"HF config has no official equivalent: {_first_difference(expected, actual)} (official vs HF)")
    return kw


def official_config_to_hf(kwargs: Mapping[str, Any], architecture: str = "HieraForImageClassification") -> Dict[str, Any]:
    """``HieraConfig(**result)`` fields for our constructor arguments (``model.config``); the inverse of
    :func:`hf_config_to_official`. Includes ``architectures`` and ``model_type``, and ``num_labels`` for
    the classifier, ``decoder_*`` for ``HieraForPreTraining``. ValueError for what transformers' Hiera
    cannot express (non-2-D inputs, ``sep_pos_embed``, per-block differences listed there)."""
    if architecture not in HF_ARCHITECTURES:
        raise ValueError(f"architecture must be one of {HF_ARCHITECTURES}, got {architecture!r}")
    mae = architecture == "HieraForPreTraining"
    kw = {**_official_defaults(mae or "decoder_embed_dim" in kwargs), **kwargs}
    if len(kw["input_size"]) != 2 or kw["sep_pos_embed"]:
        raise ValueError(
            f"transformers' Hiera is 2-D only (input_size={tuple(kw['input_size'])}, sep_pos_embed={kw['sep_pos_embed']})"
        )
    heads = [b[2] for b in _official_blocks(kw)]
    stage_ends = [sum(kw["stages"][: i + 1]) - 1 for i in range(len(kw["stages"]))]
    out: Dict[str, Any] = dict(
        model_type="hiera",
        architectures=[architecture],
        embed_dim=int(kw["embed_dim"]),
        image_size=list(kw["input_size"]),
        patch_size=list(kw["patch_kernel"]),
        patch_stride=list(kw["patch_stride"]),
        patch_padding=list(kw["patch_padding"]),
        mlp_ratio=float(kw["mlp_ratio"]),
        depths=list(kw["stages"]),
        num_heads=[int(heads[e]) for e in stage_ends],
        embed_dim_multiplier=float(kw["dim_mul"]),
        num_query_pool=int(kw["q_pool"]),
        query_stride=list(kw["q_stride"]),
        masked_unit_size=list(kw["mask_unit_size"]),
        masked_unit_attention=[bool(m) for m in kw["mask_unit_attn"][: len(kw["stages"])]],
        drop_path_rate=float(kw["drop_path_rate"]),
        num_channels=int(kw["in_chans"]),
        hidden_act="gelu",
        layer_norm_eps=_norm_eps(kw["norm_layer"]),
        normalize_pixel_loss=True,
    )
    if architecture == "HieraForImageClassification":
        out["num_labels"] = int(kw["num_classes"])
    if mae:
        out.update(decoder_hidden_size=int(kw["decoder_embed_dim"]), decoder_depth=int(kw["decoder_depth"]),
                   decoder_num_heads=int(kw["decoder_num_heads"]))
    if out["masked_unit_size"][0] % out["query_stride"][0] ** (len(out["depths"]) - 1):
        raise ValueError("transformers' HieraConfig requires masked_unit_size[0] to be a multiple of "
                         "query_stride[0] ** (#stages - 1)")
    expected, actual = _official_blocks(kw), _hf_blocks(out)
    if expected != actual:
        raise ValueError(f"config has no transformers equivalent: {_first_difference(expected, actual)} (official vs HF)")
    return out


def hf_to_official(
    state_dict: Mapping[str, torch.Tensor],
    hf_config,
    *,
    drop_unmapped: bool = False,
) -> Tuple[StateDict, Dict[str, Any]]:
    """transformers Hiera state dict -> (official state dict, our constructor arguments).

    Accepts ``HieraModel`` (keys without prefix), ``HieraForImageClassification`` and
    ``HieraForPreTraining`` (encoder under ``hiera.``). With ``b = sum(depths[:s]) + j``::

        [hiera.]embeddings.patch_embeddings.projection.{weight,bias} -> patch_embed.proj.{weight,bias}
        [hiera.]embeddings.position_embeddings [1, N, C]             -> pos_embed
        [hiera.]encoder.stages.{s}.layers.{j}.layernorm_before.*     -> blocks.{b}.norm1.*
        [hiera.]encoder.stages.{s}.layers.{j}.layernorm_after.*      -> blocks.{b}.norm2.*
        [hiera.]encoder.stages.{s}.layers.{j}.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2,proj}.* -> blocks.{b}.(same).*
        [hiera.]pooler.layernorm.*                                   -> norm.*
        classifier.{weight,bias}                                     -> head.projection.{weight,bias}
        encoder_norm.*                                               -> encoder_norm.*
        multiscale_fusion.multi_scale_fusion_heads.{k}.*             -> multi_scale_fusion_heads.{k}.*
        decoder.decoder_embeddings.*                                 -> decoder_embed.*
        decoder.mask_token                                           -> mask_token
        decoder.decoder_position_embeddings                          -> decoder_pos_embed
        decoder.decoder_block.layers.{j}.<layer keys as above>       -> decoder_blocks.{j}.<block keys>
        decoder.decoder_norm.*, decoder.decoder_pred.*               -> decoder_norm.*, decoder_pred.*

    No tensor changes layout (qkv is packed the same way, the position embeddings have the same
    shape). ``HieraBackbone``'s ``hidden_states_norms.*`` have no counterpart (ValueError, or
    dropped with ``drop_unmapped``). The kwargs come from :func:`hf_config_to_official`, MAE when the
    state dict has the decoder, ``num_classes`` from ``classifier.weight`` when present; build
    ``MaskedAutoencoderHiera(**kwargs)`` when they include ``decoder_*``, else ``Hiera(**kwargs)``.
    """
    state = _state(state_dict, "HF state dict")
    c = {**_HF_DEFAULTS, **{k: v for k, v in _load_hf_config(hf_config).items() if k in _HF_DEFAULTS and v is not None}}
    offsets = [sum(c["depths"][:s]) for s in range(len(c["depths"]))]
    mae = any(k.startswith(("decoder.", "multiscale_fusion.")) for k in state)
    num_classes = state["classifier.weight"].shape[0] if "classifier.weight" in state else None
    kwargs = hf_config_to_official(hf_config, mae=mae, num_classes=num_classes)
    if num_classes is None:  # no classifier: leave the head size to the caller (the trunk is what converts)
        kwargs.pop("num_classes", None)

    fixed = {
        "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
        "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
        "embeddings.position_embeddings": "pos_embed",
        "pooler.layernorm.weight": "norm.weight",
        "pooler.layernorm.bias": "norm.bias",
    }
    top = {"classifier.weight": "head.projection.weight", "classifier.bias": "head.projection.bias", **_HF_MAE_KEYS}

    def rule(key: str, value: torch.Tensor) -> Optional[str]:
        if key in top:
            return top[key]
        m = re.fullmatch(r"multiscale_fusion\.multi_scale_fusion_heads\.(\d+)\.(weight|bias)", key)
        if m:
            return f"multi_scale_fusion_heads.{m.group(1)}.{m.group(2)}"
        m = re.fullmatch(r"decoder\.decoder_block\.layers\.(\d+)\.(.+)", key)
        if m:
            sub = _rename_param(m.group(2), _HF_LAYER_SUB)
            return f"decoder_blocks.{m.group(1)}.{sub}" if sub else None
        k = key[len("hiera."):] if key.startswith("hiera.") else key
        if k in fixed:
            return fixed[k]
        m = re.fullmatch(r"encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)", k)
        if m:
            s, j = int(m.group(1)), int(m.group(2))
            sub = _rename_param(m.group(3), _HF_LAYER_SUB)
            if s >= len(offsets) or j >= c["depths"][s] or sub is None:
                return None
            return f"blocks.{offsets[s] + j}.{sub}"
        return None

    return _rename(state, rule, "hf -> official", drop_unmapped), kwargs


def official_to_hf(
    state_dict: Mapping[str, torch.Tensor],
    config_kwargs: Mapping[str, Any],
    *,
    architecture: Optional[str] = None,
    drop_unmapped: bool = False,
) -> Tuple[StateDict, Dict[str, Any]]:
    """Official state dict + our constructor arguments -> (transformers state dict, ``HieraConfig`` fields).

    ``architecture``: ``"HieraModel"``, ``"HieraForImageClassification"`` or ``"HieraForPreTraining"``;
    by default PreTraining for MAE checkpoints, ImageClassification with ``head.projection``, else
    HieraModel. The key rules are those of :func:`hf_to_official`, reversed, with the ``hiera.``
    prefix for ImageClassification/PreTraining and none for HieraModel. Per architecture:

    * HieraModel: ``norm.*`` -> ``pooler.layernorm.*``; ``head.projection.*`` has no place (ValueError
      unless ``drop_unmapped``); a checkpoint without ``norm`` leaves the pooler uninitialised.
    * HieraForImageClassification: ``norm.*`` -> ``hiera.pooler.layernorm.*``, ``head.projection.*`` -> ``classifier.*``.
    * HieraForPreTraining: ``encoder_norm``, fusion heads and decoder as listed in :func:`hf_to_official`.

    ``pos_embed_spatial``/``pos_embed_temporal`` (video) cannot be expressed (the config check raises).
    """
    state = _state(state_dict, "official state dict")
    if architecture is None:
        if any(k.startswith(_MAE_DECODER_PREFIXES) or k.startswith("encoder_norm.") for k in state):
            architecture = "HieraForPreTraining"
        elif "head.projection.weight" in state:
            architecture = "HieraForImageClassification"
        else:
            architecture = "HieraModel"
    kw = dict(config_kwargs)
    if architecture == "HieraForImageClassification" and "head.projection.weight" in state:
        kw["num_classes"] = int(state["head.projection.weight"].shape[0])
    hf_cfg = official_config_to_hf(kw, architecture)
    stages = hf_cfg["depths"]
    block_stage = [(s, j) for s, d in enumerate(stages) for j in range(d)]
    p = "" if architecture == "HieraModel" else "hiera."
    mae = architecture == "HieraForPreTraining"

    fixed = {
        "patch_embed.proj.weight": p + "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": p + "embeddings.patch_embeddings.projection.bias",
        "pos_embed": p + "embeddings.position_embeddings",
    }
    if not mae:
        fixed.update({"norm.weight": p + "pooler.layernorm.weight", "norm.bias": p + "pooler.layernorm.bias"})
    if architecture == "HieraForImageClassification":
        fixed.update({"head.projection.weight": "classifier.weight", "head.projection.bias": "classifier.bias"})
    if mae:
        fixed.update({ours: hf for hf, ours in _HF_MAE_KEYS.items()})

    def rule(key: str, value: torch.Tensor) -> Optional[str]:
        if key in fixed:
            return fixed[key]
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if m:
            i, sub = int(m.group(1)), _rename_param(m.group(2), _OFF_BLOCK_SUB)
            if i >= len(block_stage) or sub is None:
                return None
            s, j = block_stage[i]
            return f"{p}encoder.stages.{s}.layers.{j}.{sub}"
        if mae:
            m = re.fullmatch(r"multi_scale_fusion_heads\.(\d+)\.(weight|bias)", key)
            if m:
                return f"multiscale_fusion.multi_scale_fusion_heads.{m.group(1)}.{m.group(2)}"
            m = re.fullmatch(r"decoder_blocks\.(\d+)\.(.+)", key)
            if m:
                sub = _rename_param(m.group(2), _OFF_BLOCK_SUB)
                return f"decoder.decoder_block.layers.{m.group(1)}.{sub}" if sub else None
        return None

    out = _rename(state, rule, f"official -> hf ({architecture})", drop_unmapped,
                  f"{architecture} has no place for them")
    return out, hf_cfg


# ====================================================================================== dispatcher
def convert(
    state_dict: Mapping[str, torch.Tensor],
    to: str,
    config=None,
    *,
    source: Optional[str] = None,
    **options,
) -> Tuple[StateDict, Optional[Dict[str, Any]]]:
    """Convert ``state_dict`` to layout ``to`` (``"official"``, ``"timm"`` or ``"hf"``); the source
    layout is detected unless given. Returns ``(state_dict, config)``, where ``config`` is the
    target's configuration when it can be derived, else None:

    ========  ========  ==============================================  ===============================
    source    to        ``config`` argument                             returned config
    ========  ========  ==============================================  ===============================
    timm      official  optional timm model or name                     our kwargs (or None)
    official  timm      optional our kwargs                             timm ``Hiera`` kwargs (or None)
    hf        official  required: HieraConfig / dict / path             our kwargs
    official  hf        required: our kwargs                            ``HieraConfig`` fields
    timm      hf        required: our kwargs, or timm model or name     ``HieraConfig`` fields
    hf        timm      required: HieraConfig / dict / path             timm ``Hiera`` kwargs
    ========  ========  ==============================================  ===============================

    ``options`` go to the underlying converters (``drop_unmapped``, ``fold_layer_scale``,
    ``abswin_input_size``, ``patch_stride``, ``architecture``, ``head_norm``). Same layout: a copy.
    """
    if to not in FORMATS:
        raise ValueError(f"to must be one of {FORMATS}, got {to!r}")
    source = source or detect_format(state_dict)
    if source not in FORMATS:
        raise ValueError(f"source must be one of {FORMATS}, got {source!r}")
    state = _state(state_dict)
    timm_opts = {k: options.pop(k) for k in ("fold_layer_scale", "abswin_input_size", "patch_stride", "head_norm") if k in options}
    hf_opts = {k: options.pop(k) for k in ("architecture",) if k in options}
    drop = options.pop("drop_unmapped", False)
    if options:
        raise TypeError(f"unknown options {sorted(options)}")
    if timm_opts and source != "timm":
        raise TypeError(f"options {sorted(timm_opts)} only apply to timm sources")
    if hf_opts and to != "hf":
        raise TypeError("architecture only applies when converting to hf")

    def timm_kwargs(cfg):
        if cfg is None or isinstance(cfg, Mapping):
            return cfg
        return timm_config_to_official(cfg, fold_layer_scale=bool(timm_opts.get("fold_layer_scale")),
                                       bake_abswin=timm_opts.get("abswin_input_size") is not None)

    if source == to:
        return dict(state), None
    # -> official
    if source == "timm":
        official, kwargs = timm_to_official(state, drop_unmapped=drop, **timm_opts), timm_kwargs(config)
    elif source == "hf":
        if config is None:
            raise ValueError("converting from hf needs config= (the HieraConfig, its dict or config.json path)")
        official, kwargs = hf_to_official(state, config, drop_unmapped=drop)
    else:
        official, kwargs = state, config
    # official ->
    if to == "official":
        return official, kwargs
    if to == "timm":
        timm_kwargs = official_config_to_timm(kwargs) if kwargs else None
        if timm_kwargs is not None and "head.projection.weight" not in official:
            timm_kwargs["num_classes"] = 0  # no classifier to load: timm's head keeps only its norm
        return official_to_timm(official, drop_unmapped=drop), timm_kwargs
    if kwargs is None:
        raise ValueError("converting to hf needs config= (our constructor kwargs, e.g. model.config)")
    return official_to_hf(official, kwargs, drop_unmapped=drop, **hf_opts)
