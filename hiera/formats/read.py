"""One way to get a model from what a person types: a zoo name, a Hub repo, or a weights file.

Every command-line tool goes through :func:`load_model`, so ``--model`` and ``--weights`` mean the
same thing everywhere.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ..weights import CheckpointError, StateDict, load_weights, read_checkpoint, unwrap_state_dict


def read_any(path) -> tuple:
    """Read a weights file or directory in any supported format.

    Returns ``(state_dict in the official layout, config kwargs or None, class name or None)``.
    Our training checkpoints and ``save_pretrained`` directories carry their config; official
    ``.pth`` files do not (the architecture is then matched against the zoo by weight shapes).
    timm and Hugging Face transformers layouts are converted (see :mod:`hiera.formats`).
    """
    path = Path(path)
    config, cls_name = None, None
    if path.is_dir() and (path / "config.json").exists():
        config = json.loads((path / "config.json").read_text())
    elif path.is_file() and path.suffix not in (".safetensors",):
        obj = _torch_load(path)
        if isinstance(obj, dict) and isinstance(obj.get("config"), dict):
            config, cls_name = obj["config"], obj.get("class")
        state = unwrap_state_dict(obj, source=str(path))
        return _to_official(state, config, cls_name)
    state = read_checkpoint(path)
    if path.suffix == ".safetensors" and config is None:  # `hiera convert --to safetensors` keeps it here
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "config" in meta:
            config = json.loads(meta["config"])
    return _to_official(state, config, cls_name)


def _torch_load(path: Path):
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"could not read weights file {path} ({type(e).__name__}); expected a torch checkpoint "
            "holding only tensors, or a .safetensors file"
        ) from e


def _to_official(state: StateDict, config: Optional[dict], cls_name: Optional[str]):
    try:
        from . import layouts as formats
    except ImportError:  # pragma: no cover - formats is part of the package
        return state, config, cls_name
    kind = formats.detect_format(state)
    if kind == "timm":
        state = formats.timm_to_official(state)
    elif kind == "hf":
        if config is None or "model_type" not in config:
            raise CheckpointError("a Hugging Face transformers checkpoint needs its config.json beside it")
        state, kwargs = formats.hf_to_official(state, config)
        config = kwargs
        cls_name = "MaskedAutoencoderHiera" if any(k.startswith("decoder_") for k in state) else "Hiera"
    if config is not None and "model_type" in config:  # a transformers config with official weights
        config = None
    return state, config, cls_name


def match_zoo(state: StateDict) -> Optional[str]:
    """The zoo model whose weights have these shapes (head and position-embedding sizes aside)."""
    from ..zoo import MODELS, create_model

    ignore = ("head.projection.", "pos_embed", "decoder_pos_embed")
    want = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(ignore)}
    for name in sorted(MODELS, key=lambda n: (n.startswith("mae_"), n)):
        with torch.device("meta"):
            model = create_model(name)
        have = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(ignore)}
        if have == want:
            return name
    return None


def load_model(
    model: Optional[str] = None,
    weights: Optional[os.PathLike] = None,
    mae: bool = False,
    need_head: bool = False,
    **kwargs,
) -> nn.Module:
    """Build and load a model for a tool.

    Args:
        model: a zoo name (``hiera_base_224``, or ``hiera_base_224.mae_in1k`` to pick the
            checkpoint), or a Hugging Face repo id (``facebook/hiera_base_224.mae_in1k_ft_in1k``).
            With ``weights`` it only names the architecture.
        weights: a weights file or directory in any supported format (official ``.pth``, our
            training checkpoints, ``save_pretrained`` directories, safetensors, timm, transformers).
        mae: build the MAE model (encoder + decoder) rather than the classifier; the checkpoint's
            own kind does not decide, the tool does (``load_weights`` reports any mismatch).
        need_head: the caller classifies: raise a :class:`CheckpointError` unless the
            classification head was loaded from the weights (an MAE or features-only checkpoint, a
            head missing from the state dict, under other key names, or of another size than
            ``num_classes`` would leave a randomly initialised head that still gives confident
            answers).
        kwargs: constructor overrides (e.g. ``num_classes``, ``input_size``).
    """
    if not need_head:
        return _load_model(model, weights, mae, **kwargs)
    if mae:
        raise ValueError("need_head=True asks for a classifier; an MAE model (mae=True) has no head")
    if weights is None and model is not None:
        known = _zoo_checkpoint_without_head(model)
        if known:  # said before downloading hundreds of megabytes only to refuse them
            raise CheckpointError(f"{model}: {known}")
    # The load warns about a missing head; when that ends in a refusal the warning only repeats it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = _load_model(model, weights, mae, **kwargs)
    problem = head_problem(built)
    if problem:
        raise CheckpointError(f"{weights if weights is not None else model}: {problem}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return built


_HEADLESS_USES = ("use its weights with `hiera features` (feature maps), `hiera mae-viz` (MAE reconstructions), "
                  "or fine-tune a classifier from them with `hiera finetune --init`")


def _zoo_checkpoint_without_head(model: str) -> Optional[str]:
    """Why a zoo classifier's named checkpoint has no head (None when it has one, or is unknown):
    the official MAE-pretraining files (``mae_hiera_*.pth``) hold encoder + decoder only."""
    from ..model import Hiera
    from ..zoo import MODELS

    name, _, checkpoint = model.partition(".")
    spec = MODELS.get(name)
    if spec is None:
        return None
    if spec.cls is not Hiera:  # the MAE constructors
        return (f"an MAE model (encoder + decoder), without a classification head; {_HEADLESS_USES}"
                f"; to classify, use {name.removeprefix('mae_')}")
    url = spec.checkpoints.get(checkpoint or spec.default or "", "")
    if not url.rsplit("/", 1)[-1].startswith("mae_"):
        return None
    tuned = [f"{name}.{c}" for c in spec.checkpoints if "_ft_" in c]
    return (f"the {checkpoint} checkpoint is MAE-pretrained (encoder + decoder), without a trained "
            f"classification head; {_HEADLESS_USES}" + (f"; to classify, use {' or '.join(tuned)}" if tuned else ""))


def head_problem(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot classify with a trained head (None when it can), judged from the
    ``load_report`` that loading left on it."""
    from ..mae import MaskedAutoencoderHiera
    from ..weights import _HEAD_KEYS

    inner = getattr(model, "model", model)  # HieraFeatures wraps the Hiera
    uses = _HEADLESS_USES
    if isinstance(inner, MaskedAutoencoderHiera) or not hasattr(inner, "head"):
        return f"{type(inner).__name__} is an MAE / feature model without a classification head; {uses}"
    report = getattr(inner, "load_report", None)
    if report is None:
        return "no weights were loaded, so the classification head is random"
    if report.fresh_head:
        return (f"the checkpoint's classification head has another number of classes than the "
                f"{inner.head.projection.out_features} asked for, so the head is new and untrained; drop "
                "num_classes to use the checkpoint's head, or fine-tune (`hiera finetune`)")
    missing = [k for k in _HEAD_KEYS if k in report.missing]
    if not missing:
        return None
    if report.checkpoint_kind == "mae":
        what = "an MAE-pretrained checkpoint (encoder + decoder): it was never trained to classify"
    else:
        heads = [k for k in report.unexpected if "head" in k or "classifier" in k or "fc." in k]
        what = ("weights without a classification head (an encoder / features-only checkpoint)" if not heads
                else f"a checkpoint whose head keys {heads[:4]} do not match this model's {list(_HEAD_KEYS)}")
    return (f"{what}, so the classifier's head ({', '.join(missing)}) would keep its random initialisation and "
            f"give meaningless classes; {uses}; to classify, pass fine-tuned weights (e.g. a zoo name ending in "
            "_ft_in1k or _ft_k400)")


def _load_model(model, weights, mae, **kwargs) -> nn.Module:
    from ..mae import MaskedAutoencoderHiera
    from ..model import Hiera
    from ..zoo import MODELS, create_model

    if model is None and weights is None:
        raise CheckpointError("say which model: a zoo name (see `hiera zoo`), a Hub repo id, or --weights PATH")
    if weights is None:
        name = model.split(".", 1)[0]
        if mae and not name.startswith("mae_"):
            name = "mae_" + name
        if name in MODELS:
            from ..zoo import resolve_checkpoint

            checkpoint = model.split(".", 1)[1] if "." in model else None
            location = resolve_checkpoint(MODELS[name], checkpoint)
            if location.startswith("hf-hub:"):  # fetched here so that an offline run fails in seconds
                from ..hub import hub_download

                checkpoint = str(hub_download(location[len("hf-hub:"):], "model.safetensors"))
            return create_model(name, pretrained=True, checkpoint=checkpoint, **kwargs)
        if "/" in model:
            cls = MaskedAutoencoderHiera if mae else Hiera
            return cls.from_pretrained(model, **kwargs)
        raise CheckpointError(f"unknown model {model!r}: not in the zoo (`hiera zoo`) and not a Hub repo id (org/name)")

    state, config, _ = read_any(weights)
    if model is not None:
        name = model.split(".", 1)[0]
        if mae and not name.startswith("mae_"):
            name = "mae_" + name
        built = create_model(name, **kwargs)
    elif config is not None:
        cls = MaskedAutoencoderHiera if mae else Hiera
        if cls is Hiera:
            config = {k: v for k, v in config.items() if not k.startswith("decoder_")}
        head = state.get("head.projection.weight")
        if head is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = head.shape[0]
        built = cls(config=config, **kwargs)
    else:
        name = match_zoo(state)
        if name is None:
            raise CheckpointError(
                f"cannot tell which architecture {weights} is (no config inside and no zoo model has these "
                "weight shapes); pass --model NAME"
            )
        if mae and not name.startswith("mae_"):
            name = "mae_" + name
        if not mae and name.startswith("mae_"):
            name = name[len("mae_"):]
        head = state.get("head.projection.weight")
        if head is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = head.shape[0]
        built = create_model(name, **kwargs)
    built.load_report = load_weights(built, state, strict=None, source=str(weights))
    return built
