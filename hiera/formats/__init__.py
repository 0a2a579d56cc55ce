"""Checkpoint formats: the official layout (ours), timm's and Hugging Face transformers' Hiera.

Three layouts of the same network exist (:data:`FORMATS`):

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
    read_any(path) -> (official state_dict, config kwargs or None, class name or None)

SAM 2's HieraDet trunks (:class:`hiera.HieraDet`, whose own layout is SAM 2's trunk layout)::

    sam2_to_ours(sam2_checkpoint) -> trunk state_dict      ours_to_sam2(state_dict) -> image_encoder.trunk.* keys
    timm_hieradet_to_ours(state_dict) -> state_dict          ours_to_timm_hieradet(state_dict) -> state_dict
    is_sam2_checkpoint(obj) -> bool

Every converter renames keys by an explicit table; a key that matches no rule raises a
:class:`ValueError` naming it (``drop_unmapped=True`` drops such keys instead, with a warning
listing them). Converted state dicts share their tensors with the input, except the few that a
conversion computes (folded layer scale, baked abswin position embedding).

Modules: :mod:`.common` (detection, shared helpers), :mod:`.timm_layout`, :mod:`.hf_layout`,
:mod:`.sam2_layout`, :mod:`.dispatch` (``convert``), :mod:`.read` (files and models). Only torch is imported at module
level; timm and transformers are imported when a function needs them (only
``timm_config_to_official("name")`` does).
"""

from .common import FORMATS, detect_format, mask_from_noise
from .dispatch import convert
from .hf_layout import HF_ARCHITECTURES, hf_config_to_official, hf_to_official, official_config_to_hf, official_to_hf
from .read import read_any
from .sam2_layout import is_sam2_checkpoint, ours_to_sam2, sam2_to_ours
from .timm_layout import (
    official_config_to_timm,
    official_to_timm,
    ours_to_timm_hieradet,
    timm_config_to_official,
    timm_hieradet_to_ours,
    timm_to_official,
)

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
    "read_any",
    "sam2_to_ours",
    "ours_to_sam2",
    "is_sam2_checkpoint",
    "timm_hieradet_to_ours",
    "ours_to_timm_hieradet",
]
