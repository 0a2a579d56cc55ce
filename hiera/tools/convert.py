"""``hiera convert``: move a checkpoint between the official, timm and Hugging Face layouts (and, for
SAM 2's trunks, :class:`hiera.HieraDet`, SAM 2's own).

The input may be in any supported layout (detected from its keys); the architecture comes from
the checkpoint's own config, ``--model``, or the zoo model whose weight shapes it matches.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import save_file

from .. import formats
from ..formats.read import read_any
from ..hieradet import HieraDet
from ..weights import (
    CheckpointError,
    checkpoint_kind,
    encoder_only,
    head_classes,
    save_atomic,
    write_atomic,
    zoo_name_for,
)
from ..zoo import MODELS, match_zoo, model_class, trunk_config

TARGETS = ("official", "safetensors", "timm", "hf", "sam2")


def _atomic_safetensors(state, path: Path, metadata=None) -> None:

    tensors = {k: v.contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def _zoo_name_for(model: str, state) -> str:
    """The zoo name ``--model`` means for these weights: the ``mae_`` constructor for an MAE
    checkpoint (encoder + decoder), the classifier for any other."""

    name = model.split(".", 1)[0]
    if name not in MODELS:
        raise CheckpointError(f"unknown model {model!r}; see `hiera zoo`")
    other = zoo_name_for(name, mae=checkpoint_kind(state) == "mae")
    return other if other in MODELS else name


def fit_problem(state, config: dict, cls: Optional[type] = None) -> Optional[str]:
    """Why ``state`` does not fit the model ``config`` builds (None when it does): the first tensor
    whose shape differs, with both shapes, or weights one of the two lacks. A classifier head of
    another size, or no head or final norm at all (an encoder checkpoint), fits. ``cls``: the
    model class (default: :func:`hiera.zoo.model_class` of the config, the MAE for an MAE checkpoint)."""
    mae = checkpoint_kind(state) == "mae"
    kwargs = dict(config)
    if not mae:
        kwargs = trunk_config(kwargs)
    if head_classes(state) is not None:
        kwargs["num_classes"] = head_classes(state)
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            own = (cls or model_class(kwargs, mae=mae))(**kwargs).state_dict()
    except (TypeError, ValueError) as e:
        return f"its config cannot build a model ({e})"
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if k in own and v.shape != own[k].shape]
    if wrong:
        key, have, want = wrong[0]
        more = f" (and {len(wrong) - 1} more tensors differ)" if len(wrong) > 1 else ""
        resized = "; position embeddings are never resized by convert" if "pos_embed" in key else ""
        return f"{key} is {list(have)} in the weights but {list(want)} in the model{more}{resized}"
    extra = [k for k in state if k not in own]
    if extra:
        return f"the model has no {extra[0]}" + (f" (nor {len(extra) - 1} more of the weights)" if len(extra) > 1 else "")
    optional = ("head.projection.", "norm.", "encoder_norm.")
    missing = [k for k in own if k not in state and not k.startswith(optional)]
    if missing:
        return f"the weights lack {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
    return None


def convert_checkpoint(src, dst, to: str, model: Optional[str] = None) -> Path:
    """Convert ``src`` (any supported layout) to ``dst`` in the ``to`` layout.

    * ``official``: ``.pth`` holding ``{"model_state": ...}`` as the official package's files do,
      or, when ``dst`` is a directory, ``config.json`` + ``model.safetensors`` as its Hub repos;
    * ``safetensors``: one ``.safetensors`` file, official keys, the config in its metadata;
    * ``timm``: timm's keys, for ``timm.create_model(..., pretrained_cfg_overlay=dict(file=dst))``:
      a ``.safetensors`` file with the config in its metadata, or a ``.pth`` holding
      ``{"state_dict": ..., "config": ...}`` (the layout of timm's own training checkpoints); of an
      MAE checkpoint, the encoder (timm has no MAE decoder; a UserWarning says so);
    * ``hf``: a directory for transformers' ``Hiera*.from_pretrained`` (config.json + weights);
    * ``sam2``: for a SAM 2 trunk (:class:`hiera.HieraDet`, or the encoder of a
      :class:`hiera.MaskedAutoencoderHieraDet`), a ``.pt`` holding ``{"model": ...}`` with the trunk
      under ``image_encoder.trunk.``, as SAM 2's checkpoints hold it (the other modules of SAM 2
      are not in it: load it into a SAM 2 model with ``strict=False``).

    The architecture is ``model`` (a zoo name), else the config the input carries, else the zoo
    model with these weight shapes. The weights must fit it (every shape, no tensor the model
    lacks): a CheckpointError names the first that does not, before anything is written. The
    config goes with the weights wherever the layout has room for it, so a converted file of a
    custom model converts on without naming the architecture.
    """

    if to not in TARGETS:
        raise ValueError(f"unknown target layout {to!r}; choose one of {list(TARGETS)}")
    state, config, cls_name = read_any(src)
    cls = None
    if model is not None:
        name = _zoo_name_for(model, state)
        config, cls = dict(MODELS[name].kwargs), MODELS[name].cls
        problem = fit_problem(state, config, cls)
        if problem:
            raise CheckpointError(f"{src} does not fit --model {model}: {problem}; pass the model the weights "
                                  "were made for (`hiera zoo`), or leave --model out when the input carries its config")
    elif config is not None:
        cls = model_class(config, cls_name, mae=checkpoint_kind(state) == "mae")
        problem = fit_problem(state, config, cls)
        if problem:
            raise CheckpointError(f"{src} does not fit the config it carries: {problem}")
    else:
        name = match_zoo(state)  # head and position-embedding sizes aside
        config, cls = (dict(MODELS[name].kwargs), MODELS[name].cls) if name else (None, None)
        if config is not None and fit_problem(state, config, cls):
            config = None  # e.g. another input size: no zoo config describes these weights
    det = (cls is not None and issubclass(cls, HieraDet)) or cls_name in ("HieraDet", "MaskedAutoencoderHieraDet")
    if det and to == "hf":
        raise CheckpointError(f"{src} is a SAM 2 trunk (HieraDet), which transformers has no model for; convert "
                              "it --to official, safetensors, timm or sam2")
    if to == "sam2" and not det:
        raise CheckpointError(f"only SAM 2 trunks (HieraDet) have a SAM 2 layout; {src} is a plain Hiera: "
                              "convert it --to official, safetensors, timm or hf")
    if to == "timm" and checkpoint_kind(state) == "mae":
        # timm's Hiera has no MAE decoder: an MAE gives its encoder, as it does for SAM 2, and says so.
        state = encoder_only(state)
        if config is not None:
            config = trunk_config(config)
        warnings.warn(f"{src} is an MAE checkpoint and timm's Hiera has no MAE decoder: wrote its encoder only",
                      UserWarning, stacklevel=2)
    if config is not None and head_classes(state) is not None:
        config["num_classes"] = head_classes(state)
    dst = Path(dst)

    if to == "sam2":  # (an MAE gives its trunk: SAM 2 has no place for the decoder)
        save_atomic({"model": formats.ours_to_sam2(encoder_only(state))}, dst)
    elif to == "official" and dst.suffix in (".pth", ".pt"):
        save_atomic({"model_state": state}, dst)
    elif to in ("official", "hf"):
        if config is None:
            raise CheckpointError(f"{src} carries no config and matches no zoo model: pass --model NAME")
        if to == "official":
            weights, cfg = state, {k: v for k, v in config.items() if not k.startswith("_")}
        else:
            weights, cfg = formats.official_to_hf(state, config)
        text = json.dumps(cfg, indent=2, sort_keys=True, default=list) + "\n"
        # Weights first: a folder with a config.json but no weights would look like a finished repo.
        _atomic_safetensors(weights, dst / "model.safetensors", metadata={"format": "pt"})
        write_atomic(dst / "config.json", lambda tmp: tmp.write_text(text))
    elif to == "safetensors":
        meta = {"format": "pt", "layout": "official"}
        if config is not None:
            meta["config"] = json.dumps(config, default=list)
        _atomic_safetensors(state, dst, metadata=meta)
    else:  # timm
        timm_state = formats.official_to_timm(state)
        kept = json.loads(json.dumps(config, default=list)) if config is not None else None
        if dst.suffix == ".safetensors":
            meta = {"format": "pt", "layout": "timm"}
            if kept is not None:
                meta["config"] = json.dumps(kept)
            _atomic_safetensors(timm_state, dst, metadata=meta)
        elif kept is not None:
            save_atomic({"state_dict": timm_state, "config": kept}, dst)
        else:
            save_atomic(timm_state, dst)
    return dst
