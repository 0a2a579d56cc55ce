"""Class names for the classifier heads: ImageNet-1k, Kinetics-400, or the user's own.

The ImageNet-1k and Kinetics-400 names come from torchvision's weights metadata rather than a list
typed here: torchvision maintains them, ships them inside the wheel (``torchvision.models._meta``),
and reading ``Weights.meta`` never downloads anything. Their order is the class-index order of the
datasets, which is the order of the heads of the official Hiera checkpoints (``hiera_*_224``: the
1000 ImageNet-1k classes; ``hiera_*_16x224``: the 400 Kinetics-400 classes).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional, Tuple, Union

import torch
from torchvision.datasets.folder import find_classes
from torchvision.models import ResNet50_Weights
from torchvision.models.video import R3D_18_Weights

IMAGENET_NUM_CLASSES = 1000
KINETICS_NUM_CLASSES = 400


def imagenet_classes() -> List[str]:
    """The 1000 ImageNet-1k class names, in class-index order (``"tench"``, ``"goldfish"``, ...)."""

    # Any ImageNet-1k weights enum carries the same list; ResNet50 is present in every torchvision.
    return list(ResNet50_Weights.IMAGENET1K_V2.meta["categories"])


def kinetics400_classes() -> List[str]:
    """The 400 Kinetics-400 class names, in class-index order (``"abseiling"``, ``"air drumming"``, ...)."""

    return list(R3D_18_Weights.KINETICS400_V1.meta["categories"])


def generic_classes(num_classes: int) -> List[str]:
    """``["class_0", ..., "class_{num_classes-1}"]`` for heads trained on unknown labels."""
    return [f"class_{i}" for i in range(num_classes)]


def read_class_names(source: Union[str, os.PathLike]) -> List[str]:
    """The user's own class names, in class-index order, from ``source``:

    * a text file, one name per line (blank lines at the end are ignored; blank lines in the middle
      are an error, since they would silently shift every later index);
    * a JSON file: a list of names, or a mapping ``{"0": name, ...}`` (also the
      ``imagenet_class_index.json`` layout ``{"0": ["n01440764", "tench"], ...}``, last item used);
    * a folder laid out for ``torchvision.datasets.ImageFolder`` (one sub-folder per class): the
      sub-folder names, sorted exactly as ImageFolder sorts them, so indices match a model trained
      on that folder.
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"class names: {path} does not exist (expected a text file, JSON file or folder)")
    if path.is_dir():

        try:
            classes, _ = find_classes(str(path))
        except FileNotFoundError as e:  # ImageFolder's message for a folder without sub-folders
            raise ValueError(f"class names: {path} has no class sub-folders ({e})") from None
        return list(classes)
    text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    if path.suffix.lower() == ".json":
        return _names_from_json(json.loads(text), path)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise ValueError(f"class names: {path} is empty")
    blank = [i + 1 for i, line in enumerate(lines) if not line]
    if blank:
        raise ValueError(f"class names: {path} has blank lines at {blank[:5]}; one name per line, no gaps")
    return lines


def _names_from_json(obj, path: Path) -> List[str]:
    if isinstance(obj, list):
        return [str(x) for x in obj]
    if isinstance(obj, dict):
        try:
            items = sorted(obj.items(), key=lambda kv: int(kv[0]))
        except ValueError:
            raise ValueError(f"class names: the keys of {path} must be class indices (\"0\", \"1\", ...)") from None
        if [int(k) for k, _ in items] != list(range(len(items))):
            raise ValueError(f"class names: the keys of {path} must be the indices 0..{len(items) - 1}, without gaps")
        return [str(v[-1]) if isinstance(v, (list, tuple)) else str(v) for _, v in items]
    raise ValueError(f"class names: {path} must hold a JSON list of names or an index -> name mapping")


def class_names(
    num_classes: int,
    video: bool = False,
    source: Optional[Union[str, os.PathLike]] = None,
    generic: bool = True,
) -> Optional[List[str]]:
    """Names for the ``num_classes`` outputs of a head.

    Args:
        num_classes: size of the classifier head.
        video: whether the model takes clips (Kinetics-400) or images (ImageNet-1k).
        source: the user's names (see :func:`read_class_names`); must hold ``num_classes`` names.
        generic: when the head matches no known dataset, return ``"class_i"`` names (True) or None.
    Returns:
        ``num_classes`` names in class-index order, or None (see ``generic``).
    """
    if source is not None:
        names = read_class_names(source)
        if len(names) != num_classes:
            raise ValueError(
                f"class names: {source} holds {len(names)} names but the model has {num_classes} classes"
            )
        return names
    # Only the head size and input kind identify the dataset; a 1000-way video head (or a 400-way
    # image head) is some other dataset, and ImageNet names on it would be confidently wrong.
    if not video and num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_classes()
    if video and num_classes == KINETICS_NUM_CLASSES:
        return kinetics400_classes()
    return generic_classes(num_classes) if generic else None


def model_class_names(weights, classes, num_classes: int) -> Tuple[Optional[List[str]], Optional[str]]:
    """The model's class names in output order and where they came from, or (None, None)."""
    if classes is not None:
        if isinstance(classes, (list, tuple)):
            names, where = [str(c) for c in classes], "the class names given"
        else:
            names, where = read_class_names(classes), f"class names from {classes}"
    elif weights is not None:
        names, where = stored_class_names(Path(weights))
    else:
        names, where = None, None
    if names is None:
        return None, None
    if len(names) != num_classes:
        raise ValueError(f"{where}: {len(names)} names, but the model has {num_classes} outputs")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{where}: the names {dup[:5]} appear more than once; each output needs its own name")
    return names, where


def stored_class_names(path: Path) -> Tuple[Optional[List[str]], Optional[str]]:
    """Class names saved with the weights: ``classes.txt`` of a model folder (``hiera finetune``
    writes it beside ``config.json``), the ``classes`` a training checkpoint records, or the
    ``id2label`` of a Hugging Face config that names real classes."""
    folder = path if path.is_dir() else (path.parent if (path.parent / "config.json").exists() else None)
    if folder is not None and (folder / "classes.txt").is_file():
        return read_class_names(folder / "classes.txt"), f"{folder / 'classes.txt'}"
    if folder is not None and (folder / "config.json").is_file():
        try:
            id2label = json.loads((folder / "config.json").read_text()).get("id2label") or {}
            names = [str(id2label[k]) for k in sorted(id2label, key=int)]
        except (ValueError, KeyError, TypeError, AttributeError, OSError):
            names = []
        if names and not all(n == f"LABEL_{i}" for i, n in enumerate(names)):
            return names, f"id2label of {folder / 'config.json'}"
    if path.is_file() and path.suffix != ".safetensors":
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            names = state.get("extra", {}).get("classes") if isinstance(state, dict) else None
        except Exception:  # unreadable files are load_model's to report
            names = None
        if names:
            return [str(n) for n in names], f"the classes recorded in {path}"
    return None, None
