"""Training data: image folders and file lists, deterministic per-sample randomness, resumable order.

Three rules make runs repeatable, resumable and independent of the number of processes:

* the sample order is a permutation drawn from ``(seed, epoch)``; each optimizer step takes the
  next ``batch_size`` samples of it, split into equal contiguous shards per process and
  micro-batch (:class:`StepSampler`), so resuming at step ``s`` means starting at sample
  ``s * batch_size``;
* every random choice made for a sample (augmentation, the MAE mask) is seeded by
  ``(seed, epoch, index)``, so it does not depend on which worker or process loads it;
* unreadable files do not stop a run: the sample comes back as ``None``, :func:`collate` drops it
  and counts it, and the trainer logs the count (a run of only bad files stops with an error).

The dataset takes a ``key = (epoch, index)`` rather than an index; the video dataset
(:class:`hiera.data.video.VideoFiles`) builds on the same ``load(index) -> (media, label)`` and
reuses the rest.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import create_transform
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from ..model import kept_mask_units
from ..zoo import IMAGENET_MEAN, IMAGENET_STD
from .media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, MediaError, load_image


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for one sample of one epoch (a fixed mix, the same in every process)."""
    h = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) & (2**64 - 1)
    h ^= h >> 31
    return h & (2**63 - 1)


class _SeededRandomness:
    """Seed python, numpy and torch for one sample, restoring the caller's state afterwards (in
    the main process the trainer's own random state must not be disturbed)."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        self.saved = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        random.seed(self.seed)
        np.random.seed(self.seed % 2**32)
        # The CPU generator only: the transforms draw from it, and ``torch.manual_seed`` would also
        # queue seeds for every accelerator backend, which costs more than loading the image.
        torch.default_generator.manual_seed(self.seed)

    def __exit__(self, *exc):
        random.setstate(self.saved[0])
        np.random.set_state(self.saved[1])
        torch.set_rng_state(self.saved[2])


def random_unit_mask(num_units: int, mask_ratio: float, generator: torch.Generator) -> torch.Tensor:
    """MAE mask over mask units, ``[num_units]`` bool, True = keep: the same rule as
    ``Hiera.get_random_mask`` (keep the units with the smallest noise), seeded per sample."""
    # (checked: outside [0, 1) slicing would quietly turn a ratio into another, 1.5 into 0.5)
    keep = kept_mask_units(mask_ratio, num_units)
    noise = torch.rand(num_units, generator=generator)
    mask = torch.zeros(num_units, dtype=torch.bool)
    mask[torch.argsort(noise)[:keep]] = True
    return mask


class ImageFiles(Dataset):
    """Images with optional integer labels.

    Written here rather than using torchvision's ``ImageFolder``: that one stops the run at the first
    unreadable file, takes an index rather than ``(epoch, index)``, and cannot seed each sample's
    augmentation; the folder layout and class order (sorted sub-folder names) are the same.

    Build with :meth:`from_folder` (one sub-folder per class, or a flat folder of unlabelled
    images) or :meth:`from_list` (a text/CSV file of ``path[,label]`` lines). Items are loaded by
    ``key = (epoch, index)`` and returned as ``{"image", "label", "index"}`` (plus ``"mask"`` when
    ``mask_units`` is set, for MAE), or ``None`` when the file cannot be read.
    """

    def __init__(
        self,
        items: Sequence[Tuple[Path, int]],
        classes: Optional[List[str]] = None,
        transform: Optional[Callable] = None,
        seed: int = 0,
        mask_units: int = 0,
        mask_ratio: float = 0.6,
    ):
        if not items:
            raise ValueError("no images: the dataset is empty")
        self.items = list(items)
        self.classes = classes
        self.transform = transform
        self.seed = seed
        self.mask_units = mask_units
        self.mask_ratio = mask_ratio

    @classmethod
    def from_folder(cls, root, labelled: Optional[bool] = None, **kwargs) -> "ImageFiles":
        """``root/<class>/*.png`` (labelled) or ``root/*.png`` (unlabelled, label -1).

        ``labelled=None`` decides from the layout: class sub-folders holding images mean labelled.
        """
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"image folder not found: {root}")
        items, classes = folder_items(root, _images_in, labelled)
        if not items:
            hint = "looked for " + ", ".join(sorted(IMAGE_EXTENSIONS)[:8]) + ", ..."
            if classes is not None and _images_in(root, recursive=True):
                raise ValueError(f"{root} has no class sub-folders holding images: labelled data needs one "
                                 "sub-folder of images per class")
            raise ValueError(f"no images found in {root} ({hint})")
        return cls(items, classes=classes, **kwargs)

    @classmethod
    def from_list(cls, list_file, root=None, classes: Optional[List[str]] = None, **kwargs) -> "ImageFiles":
        """Lines ``path`` or ``path,label`` (label: an index or a class name); relative paths are
        taken from ``root`` (default: the list file's folder). Blank lines and ``#`` comments skip."""
        list_file = Path(list_file)
        root = Path(root) if root is not None else list_file.parent
        rows = []
        for n, row in read_list_rows(list_file):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) > 2:
                raise ValueError(f"{list_file}:{n}: expected 'path' or 'path,label', got {row}")
            rows.append((row[0].strip(), row[1].strip() if len(row) == 2 else None))
        if not rows:
            raise ValueError(f"{list_file} lists no images (expected lines 'path' or 'path,label')")
        items, classes = labelled_items(rows, root, classes, source=list_file)
        return cls(items, classes=classes, **kwargs)

    @classmethod
    def open(cls, source, labelled: Optional[bool] = None, **kwargs):
        """The dataset of a folder (:meth:`from_folder`) or of a list file (:meth:`from_list`);
        ``labelled=True`` refuses a list with unlabelled rows."""
        source = Path(source)
        check_list_source(source)
        if not source.is_file():
            return cls.from_folder(source, labelled=labelled, **kwargs)
        dataset = cls.from_list(source, **kwargs)
        if labelled and any(label < 0 for label in dataset.labels):
            raise ValueError(f"{source} has rows without a label; fine-tuning needs 'path,label' rows")
        return dataset

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> List[int]:
        return [label for _, label in self.items]

    def load(self, index: int):
        """The raw media and label of item ``index``; raises :class:`MediaError` if unreadable."""
        path, label = self.items[index]
        return load_image(path), label

    def probe(self, index: int) -> None:
        """Raise :class:`MediaError` if item ``index`` cannot be read (see :func:`check_readable`)."""
        self.load(index)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        try:
            media, label = self.load(index)
        except (MediaError, OSError, ValueError):
            return None
        seed = sample_seed(self.seed, epoch, index)
        with _SeededRandomness(seed):
            image = self.transform(media) if self.transform is not None else media
        sample = {"image": image, "label": label, "index": index}
        if self.mask_units:
            sample["mask"] = random_unit_mask(
                self.mask_units, self.mask_ratio, torch.Generator().manual_seed(seed ^ 0x5EED)
            )
        return sample


def open_images(source, labelled: Optional[bool] = None, **kwargs) -> ImageFiles:
    """An :class:`ImageFiles` from a folder or from a list file (``.txt`` / ``.csv``)."""
    return ImageFiles.open(source, labelled=labelled, **kwargs)


def folder_items(root: Path, find: Callable[..., List[Path]], labelled: Optional[bool] = None):
    """``(items, classes)`` of a media folder: ``root/<class>/<file>`` gives ``(path, class index)``
    items and the class names; ``root/**/<file>`` gives ``(path, -1)`` items and ``None``.
    ``find(folder, recursive=False)`` lists the media files of a folder; ``labelled=None`` decides
    from the layout (class sub-folders holding media files mean labelled)."""
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if labelled is None:
        labelled = any(find(d) for d in class_dirs)
    if labelled:
        classes = [d.name for d in class_dirs if find(d)]
        return [(p, i) for i, name in enumerate(classes) for p in find(root / name)], classes
    return [(p, -1) for p in find(root, recursive=True)], None


def labelled_items(rows: Sequence[Tuple[str, Optional[str]]], root: Path, classes: Optional[List[str]] = None,
                   source=None):
    """``(items, classes)`` from list-file rows ``(path, label or None)``: a label is a class index
    or a class name (names are sorted into ``classes`` unless given); no label gives -1."""
    names = sorted({lab for _, lab in rows if lab is not None and not lab.lstrip("-").isdigit()})
    classes = classes or (names or None)
    items = []
    for path, lab in rows:
        if lab is None:
            label = -1
        elif lab.lstrip("-").isdigit():
            label = int(lab)
            if label < 0:
                raise ValueError(f"{source or 'the list'}: label {label} of {path} is negative; labels are class "
                                 "indices from 0, or class names")
        elif lab in classes:
            label = classes.index(lab)
        else:
            raise ValueError(f"{source or 'the list'}: the label {lab!r} of {path} is not one of the classes {classes}")
        items.append((root / path, label))
    return items, classes


def read_list_rows(list_file: Path):
    """``(line number, cells)`` of a CSV / text list; a file that is not text says so."""
    try:
        with open(list_file, newline="", encoding="utf-8-sig") as f:
            return list(enumerate(csv.reader(f), 1))
    except (UnicodeDecodeError, csv.Error) as e:
        raise ValueError(f"{list_file} is not a text list of paths ({type(e).__name__}: {e}); give a folder, "
                         "or a .txt / .csv file of 'path[,label]' lines") from None


def check_list_source(source: Path) -> None:
    """Refuse a media file given where a folder or list file is expected (``--data photo.jpg``)."""
    suffix = source.suffix.lower()
    if source.is_file() and (suffix in IMAGE_EXTENSIONS or suffix in VIDEO_EXTENSIONS):
        kind = "an image" if suffix in IMAGE_EXTENSIONS else "a video"
        raise ValueError(f"{source} is {kind} file, not a dataset; give a folder of {kind[2:].strip()}s (one "
                         "sub-folder per class, or flat) or a .txt / .csv list of paths")


def check_readable(dataset: "ImageFiles", source, limit: int = 64) -> None:
    """Fail early, naming a file and the reason, when the files of ``dataset`` cannot be read:
    the files are tried in order until one opens, at most ``limit`` of them (all of a small
    dataset). A run on a dataset none of whose files reads would otherwise stop at its first
    batch, or an evaluation report NaN."""
    n = len(dataset)
    picks = range(n) if n <= limit else [i * n // limit for i in range(limit)]
    first = None
    for i in picks:
        try:
            dataset.probe(i)
            return
        except (MediaError, OSError, ValueError) as e:
            first = first or e
    what = "file" if n == 1 else "files"
    tried = f"none of the {n} {what}" if n <= limit else f"none of {limit} {what} tried, spread over the {n},"
    raise ValueError(f"{tried} in {source} could be read (e.g. {first}); check the data")


def relabel(dataset: "ImageFiles", classes: Sequence[str], source, owner: str) -> None:
    """Give the items of a labelled ``dataset`` the indices of their class names in ``classes`` (the
    model's or the training data's, described by ``owner``): labels are matched by name, never by
    the position of a folder among the folders found. Classes missing from the data are fine; a
    class the owner does not know is an error naming it. A list with integer labels keeps them
    (they are indices already) if they are in range."""
    classes = list(classes)
    if dataset.classes is None:
        high = max((label for _, label in dataset.items), default=-1)
        if high >= len(classes):
            raise ValueError(f"{source} has the label {high}, but {owner} has {len(classes)} classes (0 to "
                             f"{len(classes) - 1})")
        dataset.classes = classes
        return
    unknown = [name for name in dataset.classes if name not in classes]
    if unknown:
        shown = ", ".join(repr(c) for c in classes[:20]) + (", ..." if len(classes) > 20 else "")
        raise ValueError(f"{source} has the class{'es' if len(unknown) > 1 else ''} "
                         f"{', '.join(repr(u) for u in unknown[:10])}{', ...' if len(unknown) > 10 else ''} that "
                         f"{owner} does not know; its classes are {shown}")
    index = [classes.index(name) for name in dataset.classes]
    dataset.items = [(path, index[label] if label >= 0 else label) for path, label in dataset.items]
    dataset.classes = classes


def _images_in(folder: Path, recursive: bool = False) -> List[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in folder.glob(pattern) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def collate(samples: List[Optional[dict]]) -> dict:
    """Stack the readable samples; ``"n_bad"`` counts the ones that were not.

    A sample with ``"repeats": R`` holds R clips of one video (``[R, ...]`` tensors, see
    :class:`hiera.data.video.VideoFiles`): they are concatenated into the batch, its other values
    repeated R times, so the model sees R samples and ``"n"`` counts them."""
    good = [s for s in samples if s is not None]
    batch = {"n_bad": len(samples) - len(good), "n": len(good)}
    if good and "repeats" in good[0]:
        reps = [s["repeats"] for s in good]
        batch["n"] = sum(reps)
        for key in good[0]:
            if key == "repeats":
                continue
            values = [s[key] for s in good]
            if isinstance(values[0], torch.Tensor):
                batch[key] = torch.cat(values)
            else:
                batch[key] = torch.tensor([v for v, r in zip(values, reps) for _ in range(r)])
        return batch
    if good:
        for key in good[0]:
            values = [s[key] for s in good]
            batch[key] = torch.stack(values) if isinstance(values[0], torch.Tensor) else torch.tensor(values)
    return batch


class StepSampler(Sampler):
    """Yields this process's micro-batches of ``(epoch, index)`` keys, step after step.

    Each optimizer step consumes ``batch_size`` consecutive samples of the epoch's permutation:
    process ``rank`` of ``world`` takes shard ``rank`` of them, cut into ``accum`` micro-batches.
    Steps that do not fill a whole batch at the end of an epoch are dropped.
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1,
                 accum: int = 1, start_step: int = 0, total_steps: Optional[int] = None, shuffle: bool = True):
        if batch_size % (world * accum):
            raise ValueError(
                f"batch size {batch_size} must be divisible by processes x accumulation steps = {world} x {accum}"
            )
        if num_samples < batch_size:
            raise ValueError(f"{num_samples} samples are fewer than one batch of {batch_size}")
        self.num_samples, self.batch_size, self.seed = num_samples, batch_size, seed
        self.rank, self.world, self.accum, self.shuffle = rank, world, accum, shuffle
        self.steps_per_epoch = num_samples // batch_size
        self.start_step = start_step
        self.total_steps = total_steps if total_steps is not None else self.steps_per_epoch

    def order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        return torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed * 1000003 + epoch))

    def __iter__(self) -> Iterator[List[tuple]]:
        shard = self.batch_size // self.world
        micro = shard // self.accum
        step = self.start_step
        while step < self.total_steps:
            epoch, in_epoch = divmod(step, self.steps_per_epoch)
            order = self.order(epoch)
            for s in range(in_epoch, self.steps_per_epoch):
                if step >= self.total_steps:
                    return
                start = s * self.batch_size + self.rank * shard
                for a in range(self.accum):
                    idx = order[start + a * micro: start + (a + 1) * micro].tolist()
                    yield [(epoch, i) for i in idx]
                step += 1

    def __len__(self) -> int:
        return (self.total_steps - self.start_step) * self.accum


def pretrain_transform(input_size: Sequence[int], scale=(0.2, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """MAE pretraining augmentation: random-resized crop (bicubic) and horizontal flip."""

    return T.Compose([
        T.RandomResizedCrop(tuple(input_size), scale=scale, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        T.ToTensor(),
        T.Normalize(mean, std),
    ])


def _posterize(img, bits_to_keep, **_):
    """Posterize that keeps 0 bits as a black image (what timm's strongest "PosterizeIncreasing"
    asks for), which Pillow >= 13 refuses (bits must be 1-8). Module-level so transforms pickle."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, bits_to_keep)


def allow_zero_bit_posterize(transform):
    """Give the RandAugment ops inside ``transform`` (a timm transform, or a Compose of them) the
    posterize above. Only these objects change: timm's op table stays as it is for everyone else
    (each timm op copies its function from the table when built)."""
    stack = [transform]
    while stack:
        t = stack.pop()
        stack.extend(getattr(t, "transforms", None) or [])  # Compose
        for op in getattr(t, "ops", None) or []:  # RandAugment
            if getattr(op, "name", None) in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
                op.aug_fn = _posterize
    return transform


def finetune_transform(input_size: Sequence[int], auto_augment: Optional[str] = "rand-m9-mstd0.5-inc1",
                       re_prob: float = 0.25, re_mode: str = "pixel", scale=(0.08, 1.0), hflip: float = 0.5,
                       mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Fine-tuning augmentation through timm's transform factory: random-resized crop (bicubic),
    flip, RandAugment, normalisation and random erasing (the recipe of the MAE/Hiera papers)."""
    return allow_zero_bit_posterize(create_transform(
        tuple(input_size), is_training=True, auto_augment=auto_augment, interpolation="bicubic",
        re_prob=re_prob, re_mode=re_mode, re_count=1, scale=scale, hflip=hflip, mean=mean, std=std,
    ))
