"""Read a weights file or folder in any supported layout, converted to the official layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from ..weights import CheckpointError, StateDict, read_checkpoint, unwrap_state_dict
from .common import detect_format
from .hf_layout import hf_to_official
from .sam2_layout import is_sam2_checkpoint, sam2_to_ours
from .timm_layout import timm_to_official


def read_any(path) -> tuple:
    """Read a weights file or directory in any supported format.

    Returns ``(state_dict in the official layout, config kwargs or None, class name or None)``.
    Our training checkpoints and ``save_pretrained`` directories carry their config; official
    ``.pth`` files do not (the architecture is then matched against the zoo by weight shapes).
    timm and Hugging Face transformers layouts are converted (see :mod:`hiera.formats`), and a SAM 2 /
    SAM 2.1 checkpoint gives its image encoder's trunk (class name ``"HieraDet"``).
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
        return to_official(state, config, cls_name)
    state = read_checkpoint(path)
    if path.suffix == ".safetensors" and config is None:  # `hiera convert --to safetensors` keeps it here

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if "config" in meta:
            config = json.loads(meta["config"])
    return to_official(state, config, cls_name)


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


def to_official(state: StateDict, config: Optional[dict] = None, cls_name: Optional[str] = None):
    """A state dict in any supported layout -> ``(state dict in our layout, config, class name)``:
    timm and transformers layouts are converted, a SAM 2 checkpoint gives its trunk."""
    if is_sam2_checkpoint(state):  # a whole SAM 2 model: its image encoder's trunk is a HieraDet
        return sam2_to_ours(state), None, "HieraDet"
    kind = detect_format(state)
    if kind == "timm":
        state = timm_to_official(state)
    elif kind == "hf":
        if config is None or "model_type" not in config:
            raise CheckpointError("a Hugging Face transformers checkpoint needs its config.json beside it")
        state, kwargs = hf_to_official(state, config)
        config = kwargs
        cls_name = "MaskedAutoencoderHiera" if any(k.startswith("decoder_") for k in state) else "Hiera"
    if config is not None and "model_type" in config:  # a transformers config with official weights
        config = None
    return state, config, cls_name
