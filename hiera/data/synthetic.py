"""A small image-classification dataset generated on the spot, for the offline quickstart.

Eight classes of patterns that differ only in SPATIAL STRUCTURE: every image has a foreground and
a background colour drawn independently of the class, a random position, scale, orientation jitter
and phase, and mild pixel noise. Colour statistics therefore carry (almost) no class information,
and a model must look at shapes and orientations to tell the classes apart, which is what MAE
pretraining should help with. ``tests/test_synthetic.py`` checks both halves of that claim.

    from hiera.data.synthetic import make_dataset
    info = make_dataset("data/shapes", num_per_class_train=200, num_per_class_val=50)
    # data/shapes/train/<class>/*.png, data/shapes/val/<class>/*.png (torchvision ImageFolder layout)

Generation is vectorised over all images of a class (numpy on ``[N, H, W]`` coordinate grids), so
thousands of 64x64 images take a few seconds, most of it PNG encoding. It is deterministic for a
seed, and idempotent: a marker file records the parameters, and a complete dataset with the same
parameters is left as it is.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ["CLASSES", "PERIODIC", "SyntheticInfo", "render", "generate", "make_dataset", "MARKER"]

# Sorted, so that torchvision's ImageFolder (which sorts class folders) gives index i to CLASSES[i].
CLASSES: Tuple[str, ...] = (
    "checkerboard",  # axis-aligned checkerboard, random cell size and phase
    "cross",  # a plus sign, random centre, arm length and thickness, small rotation
    "diagonal_stripes",  # stripes at +-45 degrees (+- jitter), random period and phase
    "disc",  # one filled disc, random centre and radius
    "horizontal_stripes",  # stripes at 0 degrees (+- jitter)
    "rings",  # concentric rings around a random centre, random period and phase
    "triangle",  # one filled triangle, random centre, size and rotation
    "vertical_stripes",  # stripes at 90 degrees (+- jitter)
)
assert list(CLASSES) == sorted(CLASSES)
# The classes whose pattern repeats across the image: continuing one into a hidden region needs its
# exact period and phase, not only where a shape is.
PERIODIC: Tuple[str, ...] = ("checkerboard", "diagonal_stripes", "horizontal_stripes", "rings", "vertical_stripes")

MARKER = "synthetic.json"  # parameters of the generated dataset, written when complete
_VERSION = 1  # bump when the generator changes, so that old datasets are regenerated
_SPLITS = ("train", "val", "unlabelled")

_NOISE_STD = 0.03  # mild pixel noise (images in [0, 1])
_MIN_CONTRAST = 0.35  # Euclidean RGB distance between foreground and background, at least
_EDGE = 3.0  # steepness of the soft stripe edges (anti-aliasing without supersampling)
_JITTER = np.deg2rad(10.0)  # orientation jitter of the oriented classes


# ------------------------------------------------------------------ rendering
def _colours(rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Foreground and background colours ``[n, 3]``, uniform in the RGB cube, independent of the
    class and swapped symmetrically, so that both have the same distribution; pairs closer than
    ``_MIN_CONTRAST`` are redrawn (the pattern must be visible)."""
    fg, bg = rng.random((n, 3)), rng.random((n, 3))
    for _ in range(100):
        low = np.linalg.norm(fg - bg, axis=1) < _MIN_CONTRAST
        if not low.any():
            break
        fg[low], bg[low] = rng.random((low.sum(), 3)), rng.random((low.sum(), 3))
    return fg, bg


def _soft(sdf: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of a shape from its signed distance in pixels (negative inside): a
    one-pixel linear ramp, i.e. cheap anti-aliasing."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def _wave(phase: np.ndarray) -> np.ndarray:
    """A square-ish wave in [0, 1] with soft edges, from a phase in radians."""
    return np.clip(0.5 + _EDGE * np.sin(phase), 0.0, 1.0)


def _u(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """``n`` uniform draws, shaped ``[n, 1, 1]`` to broadcast over ``[n, H, W]`` grids."""
    return rng.uniform(low, high, n)[:, None, None]


def _coverage(name: str, n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Foreground coverage ``[n, size, size]`` in [0, 1] for ``n`` random instances of class ``name``."""
    s = float(size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    x, y = xx[None], yy[None]  # [1, H, W]
    if name.endswith("_stripes"):
        base = {"horizontal_stripes": np.pi / 2, "vertical_stripes": 0.0}.get(name)
        if base is None:  # diagonal: either diagonal, so that no single orientation is the class
            base = np.where(rng.random(n) < 0.5, np.pi / 4, 3 * np.pi / 4)[:, None, None]
        angle = base + _u(rng, n, -_JITTER, _JITTER)  # direction across the stripes
        period = _u(rng, n, s / 8, s / 3)
        proj = x * np.cos(angle) + y * np.sin(angle)
        return _wave(2 * np.pi * proj / period + _u(rng, n, 0, 2 * np.pi))
    if name == "checkerboard":
        period = _u(rng, n, s / 6, s / 2.5)  # one black + one white cell
        px, py = _u(rng, n, 0, 2 * np.pi), _u(rng, n, 0, 2 * np.pi)
        prod = np.sin(2 * np.pi * x / period + px) * np.sin(2 * np.pi * y / period + py)
        return np.clip(0.5 + 2 * _EDGE * prod, 0.0, 1.0)
    cx, cy = _u(rng, n, 0.3 * s, 0.7 * s), _u(rng, n, 0.3 * s, 0.7 * s)
    dx, dy = x - cx, y - cy
    if name == "rings":
        period = _u(rng, n, s / 8, s / 4)
        return _wave(2 * np.pi * np.hypot(dx, dy) / period + _u(rng, n, 0, 2 * np.pi))
    if name == "disc":
        return _soft(np.hypot(dx, dy) - _u(rng, n, 0.15 * s, 0.32 * s))
    if name == "cross":
        angle = _u(rng, n, -_JITTER, _JITTER)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        arm, half = _u(rng, n, 0.22 * s, 0.4 * s), _u(rng, n, 0.05 * s, 0.1 * s)
        bar_h = np.maximum(np.abs(u) - arm, np.abs(v) - half)  # signed distance of a box (approx.)
        bar_v = np.maximum(np.abs(u) - half, np.abs(v) - arm)
        return _soft(np.minimum(bar_h, bar_v))
    if name == "triangle":
        rot = _u(rng, n, 0, 2 * np.pi)
        inradius = _u(rng, n, 0.1 * s, 0.18 * s)  # circumradius is twice that
        sdf = None
        for k in range(3):  # intersection of three half-planes, outward normals 120 degrees apart
            a = rot + k * 2 * np.pi / 3
            d = dx * np.cos(a) + dy * np.sin(a) - inradius
            sdf = d if sdf is None else np.maximum(sdf, d)
        return _soft(sdf)
    raise ValueError(f"unknown class {name!r}; choose one of {CLASSES}")


def render(name: str, n: int, size: int = 64, rng: Union[np.random.Generator, int, None] = None) -> np.ndarray:
    """``n`` random images of class ``name``: uint8 ``[n, size, size, 3]``.

    Each image is ``coverage * fg + (1 - coverage) * bg + noise`` with colours independent of the
    class (see the module docstring).
    """
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if n <= 0:
        return np.zeros((0, size, size, 3), np.uint8)
    cov = _coverage(name, n, size, rng)[..., None].astype(np.float32)  # [n, H, W, 1]
    fg, bg = _colours(rng, n)
    img = cov * fg[:, None, None, :].astype(np.float32) + (1 - cov) * bg[:, None, None, :].astype(np.float32)
    img += rng.normal(0.0, _NOISE_STD, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _rng(seed: int, split: str, class_index: int) -> np.random.Generator:
    # One independent stream per (seed, split, class): the validation images do not change when
    # the number of training images does, and splits never share images.
    return np.random.default_rng([seed, _SPLITS.index(split), class_index])


def generate(split: str, num_per_class: int, size: int = 64, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """All images of a split in memory: ``(images uint8 [C * num_per_class, size, size, 3],
    labels int64 [C * num_per_class])``, class-major. These are the pixels :func:`make_dataset`
    writes for that split."""
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    images = [render(name, num_per_class, size, _rng(seed, split, i)) for i, name in enumerate(CLASSES)]
    labels = np.repeat(np.arange(len(CLASSES)), num_per_class)
    return np.concatenate(images), labels


# ------------------------------------------------------------------ writing
@dataclass(frozen=True)
class SyntheticInfo:
    """What :func:`make_dataset` produced (or found)."""

    root: Path
    classes: Tuple[str, ...]
    num_train: int
    num_val: int
    num_unlabelled: int
    size: int
    created: bool  # False when an identical, complete dataset was already there

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def val_dir(self) -> Path:
        return self.root / "val"

    @property
    def unlabelled_dir(self) -> Optional[Path]:
        return self.root / "unlabelled" if self.num_unlabelled else None


def _write_pngs(folder: Path, images: np.ndarray, prefix: str = "") -> None:

    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        # compress_level=1: encoding dominates the run time and these files are tiny anyway.
        Image.fromarray(img).save(folder / f"{prefix}{i:05d}.png", compress_level=1)


def _count_pngs(folder: Path) -> int:
    return sum(1 for _ in folder.glob("*.png")) if folder.is_dir() else 0


def _is_complete(root: Path, params: Dict) -> bool:
    try:
        found = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if found.get("params") != params or not found.get("complete"):
        return False
    # The marker could survive files deleted by hand: check the counts too (cheap).
    for split, count in (("train", params["num_per_class_train"]), ("val", params["num_per_class_val"])):
        if any(_count_pngs(root / split / name) != count for name in CLASSES):
            return False
    return _count_pngs(root / "unlabelled") == params["unlabelled_extra"]


def make_dataset(
    root: Union[str, os.PathLike],
    num_per_class_train: int,
    num_per_class_val: int,
    size: int = 64,
    seed: int = 0,
    unlabelled_extra: int = 0,
) -> SyntheticInfo:
    """Write the dataset under ``root`` in ImageFolder layout and return what is there.

    * ``root/train/<class>/*.png``: ``num_per_class_train`` images per class;
    * ``root/val/<class>/*.png``: ``num_per_class_val`` per class (independent draws);
    * ``root/unlabelled/*.png``: ``unlabelled_extra`` more images of random classes, shuffled, no
      labels (extra data for MAE pretraining), only when ``unlabelled_extra > 0``;
    * ``root/synthetic.json``: the parameters, written last (``"complete": true``).

    Idempotent: if ``root`` already holds a complete dataset with the same parameters nothing is
    written. A dataset from other parameters (or an interrupted run), recognised by its marker, is
    replaced. Split folders without a marker are someone else's data: that raises
    ``FileExistsError`` rather than mixing files into them.
    """
    for name, value in (("num_per_class_train", num_per_class_train), ("num_per_class_val", num_per_class_val),
                        ("unlabelled_extra", unlabelled_extra)):
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if size < 8:
        raise ValueError(f"size must be at least 8 pixels, got {size}")
    root = Path(root)
    params = dict(
        version=_VERSION, classes=list(CLASSES), num_per_class_train=int(num_per_class_train),
        num_per_class_val=int(num_per_class_val), size=int(size), seed=int(seed),
        unlabelled_extra=int(unlabelled_extra),
    )
    info = SyntheticInfo(
        root, CLASSES, len(CLASSES) * params["num_per_class_train"], len(CLASSES) * params["num_per_class_val"],
        params["unlabelled_extra"], params["size"], created=True,
    )
    if _is_complete(root, params):
        return SyntheticInfo(**{**info.__dict__, "created": False})

    marker = root / MARKER
    ours = marker.exists()
    for split in _SPLITS:
        folder = root / split
        if folder.exists() and any(folder.iterdir()):
            if not ours:
                raise FileExistsError(
                    f"{folder} exists and is not empty, and {root} has no {MARKER} marker: not a dataset "
                    "made by hiera.data.synthetic. Choose another root or remove it."
                )
            shutil.rmtree(folder)  # made by us with other parameters, or interrupted
    root.mkdir(parents=True, exist_ok=True)
    # Marker first, flagged incomplete: an interrupted run is then recognised as ours and redone.
    marker.write_text(json.dumps({"params": params, "complete": False}, indent=2) + "\n")

    for split, count in (("train", params["num_per_class_train"]), ("val", params["num_per_class_val"])):
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(CLASSES):
            images = render(name, count, size, _rng(seed, split, i))
            _write_pngs(root / split / name, images, prefix=f"{name}_")
    if unlabelled_extra:
        # Classes drawn at random (seeded) per image, then rendered class by class and shuffled, so
        # that file order says nothing about the class.
        rng = np.random.default_rng([seed, _SPLITS.index("unlabelled"), len(CLASSES)])
        labels = rng.integers(0, len(CLASSES), unlabelled_extra)
        images = np.zeros((unlabelled_extra, size, size, 3), np.uint8)
        for i, name in enumerate(CLASSES):
            where = np.flatnonzero(labels == i)
            images[where] = render(name, len(where), size, _rng(seed, "unlabelled", i))
        _write_pngs(root / "unlabelled", images)

    marker.write_text(json.dumps({"params": params, "complete": True}, indent=2) + "\n")
    return info
