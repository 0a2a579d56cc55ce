"""``convert(...)``: any of the three layouts to any other, by way of the official one.

Detects the source layout (:func:`.common.detect_format`) unless given, converts it to the official
layout (:mod:`.timm_layout`, :mod:`.hf_layout`), then to the target; key naming is that of those
modules (official: ``blocks.{i}.*``, ``norm.*``, ``head.projection.*``; timm: ``head.norm.*``,
``head.fc.*``; hf: ``[hiera.]encoder.stages.{s}.layers.{j}.*``, ``classifier.*``). Kept apart from
:mod:`.common` because it needs both layout modules, which need :mod:`.common`.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch

from ..weights import StateDict
from .common import FORMATS, _state, detect_format
from .hf_layout import hf_to_official, official_to_hf
from .timm_layout import official_config_to_timm, official_to_timm, timm_config_to_official, timm_to_official

__all__ = ["convert"]


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
