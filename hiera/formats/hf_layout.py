"""Hugging Face transformers' Hiera layout <-> the official layout, state dicts and configs.

transformers has three architectures (:data:`HF_ARCHITECTURES`): ``HieraModel`` (keys without
prefix), ``HieraForImageClassification`` and ``HieraForPreTraining`` (encoder under ``hiera.``).
Key naming (HF -> official), with ``b = sum(depths[:s]) + j``::

    [hiera.]embeddings.patch_embeddings.projection.*                 -> patch_embed.proj.*
    [hiera.]embeddings.position_embeddings                           -> pos_embed
    [hiera.]encoder.stages.{s}.layers.{j}.layernorm_before.*         -> blocks.{b}.norm1.*
    [hiera.]encoder.stages.{s}.layers.{j}.layernorm_after.*          -> blocks.{b}.norm2.*
    [hiera.]encoder.stages.{s}.layers.{j}.{attn.qkv,attn.proj,mlp.fc1,mlp.fc2,proj}.* -> blocks.{b}.(same).*
    [hiera.]pooler.layernorm.*                                       -> norm.*
    classifier.*                                                     -> head.projection.*
    encoder_norm.*                                                   -> encoder_norm.*
    multiscale_fusion.multi_scale_fusion_heads.{k}.*                 -> multi_scale_fusion_heads.{k}.*
    decoder.decoder_embeddings.*, decoder.mask_token                 -> decoder_embed.*, mask_token
    decoder.decoder_position_embeddings                              -> decoder_pos_embed
    decoder.decoder_norm.*, decoder.decoder_pred.*                   -> decoder_norm.*, decoder_pred.*
    decoder.decoder_block.layers.{j}.<layer keys as above>           -> decoder_blocks.{j}.<block keys>

``HieraConfig`` fields map to our constructor arguments as listed in :func:`hf_config_to_official`.
Public: :func:`hf_to_official`, :func:`official_to_hf`, :func:`hf_config_to_official`,
:func:`official_config_to_hf`, :data:`HF_ARCHITECTURES`. transformers itself is never imported: a
``HieraConfig`` is read through its ``to_dict()``.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from ..weights import StateDict, head_classes
from .common import (
    _MAE_DECODER_PREFIXES,
    _first_difference,
    _norm_eps,
    _norm_layer_for_eps,
    _official_blocks,
    _official_defaults,
    _rename,
    _rename_param,
    _solve_multiplier,
    _state,
)

__all__ = ["HF_ARCHITECTURES", "hf_to_official", "official_to_hf", "hf_config_to_official", "official_config_to_hf"]

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


def _load_hf_config(hf_config) -> Dict[str, Any]:
    if isinstance(hf_config, (str, os.PathLike)):
        path = Path(hf_config)
        if path.is_dir():
            path = path / "config.json"
        with open(path) as f:
            return json.load(f)
    if isinstance(hf_config, Mapping):
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
    if architecture == "HieraForImageClassification" and head_classes(state) is not None:
        kw["num_classes"] = head_classes(state)
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

