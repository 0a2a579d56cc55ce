"""One way to get a model from what a person types: a zoo name, a Hub repo, or a weights file.

Every command-line tool goes through :func:`load_model`, so ``--model`` and ``--weights`` mean the
same thing everywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from .weights import CheckpointError, StateDict, load_weights, read_checkpoint, unwrap_state_dict


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
        from . import formats
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
    from .zoo import MODELS, create_model

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
        kwargs: constructor overrides (e.g. ``num_classes``, ``input_size``).
    """
    from .mae import MaskedAutoencoderHiera
    from .model import Hiera
    from .zoo import MODELS, create_model

    if model is None and weights is None:
        raise CheckpointError("say which model: a zoo name (see `hiera zoo`), a Hub repo id, or --weights PATH")
    if weights is None:
        name = model.split(".", 1)[0]
        if mae and not name.startswith("mae_"):
            name = "mae_" + name
        if name in MODELS:
            checkpoint = model.split(".", 1)[1] if "." in model else None
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
