"""Video training data: clips from folders or CSV lists, sampled the way Hiera's video models were.

A clip is ``num_frames`` frames ``stride`` frames apart, the stride counted at ``target_fps`` (16
frames 4 apart at 30 fps for the ``hiera_*_16x224`` models), chosen by
:func:`hiera.data.media.sample_frame_indices` and decoded with PyAV (:mod:`hiera.data.media`):

* training: each clip starts at a random frame, seeded per sample (see :mod:`hiera.data`);
* evaluation: the centre clip, or ``num_clips`` clips spread evenly over the video (multi-view),
  read by :func:`hiera.data.media.load_clips` exactly as ``hiera predict`` and ``hiera mae-viz`` read
  them, so what is evaluated and visualised is what the model sees in training;
* videos shorter than a clip are padded by repeating their last frame, never an error; files that
  cannot be decoded come back as ``None`` and are counted by :func:`hiera.data.collate`.

Every sample is a dict whose ``"image"`` is the clip, float ``[3, T, H, W]`` normalised with the
Kinetics statistics (``[V, 3, T, H, W]`` for ``V`` evaluation views; ``[R, 3, T, H, W]`` for
``R`` repeated clips, which :func:`hiera.data.collate` flattens into the batch), so the training
engine runs on clips unchanged. The key is named ``"image"`` for that reason.

Layouts:

* a folder with one sub-folder of videos per class (Kinetics' ``train/<class>/<id>.mp4``), or a
  flat folder of unlabelled videos (enough for MAE pretraining);
* a CSV list, rows ``path,label[,start,end]`` (start / end in seconds; relative paths from the
  list's folder), with or without a header row naming the columns ``path``, ``label``, ``start``,
  ``end`` (``time_start`` / ``time_end`` are accepted, as in Kinetics' annotation files).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from timm.data.auto_augment import rand_augment_transform
from torchvision.transforms import v2

from .images import (
    ImageFiles,
    _SeededRandomness,
    allow_zero_bit_posterize,
    check_list_source,
    folder_items,
    labelled_items,
    random_unit_mask,
    read_list_rows,
    sample_seed,
)
from .media import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    MediaError,
    load_clips,
    probe_video,
    read_video,
    sample_frame_indices,
)
from .transforms import KINETICS_MEAN, KINETICS_STD, VIDEO_FPS, VIDEO_NUM_FRAMES, VIDEO_STRIDE, VideoEvalTransform


# ---------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class ClipSampling:
    """Which frames make up the clips of one sample.

    ``mode``: ``"random"`` (training), ``"center"`` or ``"uniform"`` (evaluation; ``num_clips``
    evenly spaced clips). ``stride`` counts frames at ``target_fps`` (None: frames of the file).
    ``pad``: how videos shorter than a clip are padded (see :func:`hiera.data.media.sample_frame_indices`).
    """

    num_frames: int = VIDEO_NUM_FRAMES
    stride: float = VIDEO_STRIDE
    target_fps: Optional[float] = VIDEO_FPS
    mode: str = "random"
    num_clips: int = 1
    pad: str = "clamp"

    @classmethod
    def of(cls, transform: VideoEvalTransform) -> "ClipSampling":
        """The sampling a :class:`VideoEvalTransform` uses in its own ``load``."""
        return cls(transform.num_frames, transform.stride, transform.target_fps,
                   "uniform" if transform.num_clips > 1 else "center", transform.num_clips, transform.pad)


def read_clips(path, sampling: ClipSampling, generator: Optional[torch.Generator] = None,
               start: Optional[float] = None, end: Optional[float] = None, threads: str = "NONE") -> np.ndarray:
    """Decode the clips ``sampling`` picks from the video at ``path``: uint8 ``[num_clips, T, H, W, 3]``.

    ``start`` / ``end`` (seconds) restrict the clips to a segment of the video. Evaluation clips of
    a whole video come from :func:`hiera.data.media.load_clips`, the reader of ``hiera predict``.
    Training clips are read from the container's frame count by seeking, which decodes a clip's
    frames (and those since the keyframe before it) rather than the whole video. A header that
    over-states the length makes the frames past the real end repeat the last one (a clip wholly
    past it raises :class:`MediaError`, and the sample is skipped as unreadable).

    ``threads="NONE"`` decodes on one thread: data loading parallelises across videos (DataLoader
    workers), and FFmpeg's frame threads stall next to torch's OpenMP threads (see
    :func:`hiera.data.media.read_video`). The frames are the same with any threading.
    """
    s = sampling
    if start is None and end is None and s.mode != "random":
        return load_clips(path, s.num_frames, s.stride, s.mode, s.num_clips, s.target_fps, s.pad, generator,
                          threads=threads)[0]
    info = probe_video(path)
    step = s.stride * info.fps / s.target_fps if s.target_fps else s.stride
    frames = None
    total = info.num_frames
    if total <= 0:  # no frame count in the header: decode everything once
        frames, _ = read_video(path, threads=threads)
        total = len(frames)
    first = max(0, int(round((start or 0.0) * info.fps)))
    last = total if end is None else min(total, max(first + 1, int(round(end * info.fps))))
    if first >= total:
        raise MediaError(path, f"the segment starts at {start}s, after the video's end ({total / info.fps:.2f}s)")
    idx = sample_frame_indices(last - first, s.num_frames, step, s.mode, s.num_clips, s.pad, generator) + first
    if frames is not None:
        return frames[idx.numpy()]
    clips, _ = read_video(path, idx.flatten().tolist(), threads=threads)
    return clips.reshape(s.num_clips, s.num_frames, *clips.shape[1:])


# ---------------------------------------------------------------------------------- augmentation
class VideoTrainTransform:
    """Training augmentation of one clip, uint8 ``[T, H, W, 3]`` -> float ``[3, T, h, w]``.

    Every random choice is made once per clip and applied to all its frames, so the clip stays a
    consistent piece of video: one random-resized crop (``scale`` of the area, aspect ``ratio``),
    one horizontal flip, optionally one RandAugment policy (timm's, as the image fine-tuning
    recipe) and one random-erasing box through time; then the Kinetics normalisation.

    Randomness comes from torch / python / numpy's global generators, which
    :class:`VideoFiles` seeds per sample.
    """

    def __init__(
        self,
        input_size: Sequence[int],
        scale: Tuple[float, float] = (0.5, 1.0),
        ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        rand_augment: Optional[str] = None,
        reprob: float = 0.0,
        remode: str = "pixel",
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
    ):

        size = tuple(int(s) for s in input_size)
        self.size = size[-2:]  # (T, H, W) or (H, W): the frame count comes from the sampling
        # torchvision's v2 transforms draw their parameters once per call and apply them to every
        # leading index of a [..., C, H, W] tensor: one crop and one flip for all frames. Bilinear,
        # as the SlowFast / MAE-ST video decoders resize.
        self.crop_flip = v2.Compose([
            v2.RandomResizedCrop(self.size, scale=scale, ratio=ratio, interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=True),
            v2.RandomHorizontalFlip(hflip),
        ])
        self.rand_augment = None
        if rand_augment:
            fill = tuple(round(255 * m) for m in mean)
            self.rand_augment = allow_zero_bit_posterize(rand_augment_transform(
                rand_augment, {"translate_const": int(self.size[0] * 0.45), "img_mean": fill}))
        self.reprob, self.remode = reprob, remode
        self.mean = torch.tensor(mean).view(3, 1, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1, 1)
        self.spec = dict(size=self.size, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip, rand_augment=rand_augment,
                         reprob=reprob)

    def __call__(self, clip) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(clip)) if not isinstance(clip, torch.Tensor) else clip
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected a uint8 clip [T, H, W, 3], got shape {tuple(x.shape)}")
        x = self.crop_flip(x.permute(0, 3, 1, 2))  # [T, 3, h, w] uint8
        if self.rand_augment is not None:
            x = self._same_policy_per_frame(x)
        x = x.permute(1, 0, 2, 3).float().div_(255.0)  # [3, T, h, w]
        x = (x - self.mean) / self.std
        if self.reprob > 0:
            erase_box(x, self.reprob, self.remode)
        return x

    def _same_policy_per_frame(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment draws its ops and magnitudes from python's and numpy's generators:
        rewinding both before each frame gives every frame the same ops with the same magnitudes."""

        state = (random.getstate(), np.random.get_state())
        frames = []
        for frame in x.permute(0, 2, 3, 1).numpy():
            random.setstate(state[0])
            np.random.set_state(state[1])
            frames.append(np.asarray(self.rand_augment(Image.fromarray(frame))))
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.spec.items())})"


def erase_box(x: torch.Tensor, prob: float, mode: str = "pixel", scale=(0.02, 1 / 3), ratio=(0.3, 3.3)) -> torch.Tensor:
    """Random erasing of one box through the whole clip ``[C, T, H, W]`` (in place), with timm's
    box rule (area ``scale``, log-uniform aspect ``ratio``, 10 tries). Written here because timm's
    ``RandomErasing`` draws a new box for every frame of a ``[T, C, H, W]`` batch, and an object
    blinking in and out is not the occlusion the augmentation stands for. ``mode``: ``"pixel"``
    (normal noise per value, as the recipes), ``"rand"`` (one colour) or ``"const"`` (zeros)."""
    if torch.rand(()).item() >= prob:
        return x
    channels, _, height, width = x.shape
    area = height * width
    for _ in range(10):
        target = area * torch.empty(()).uniform_(*scale).item()
        aspect = math.exp(torch.empty(()).uniform_(math.log(ratio[0]), math.log(ratio[1])).item())
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if h < height and w < width:
            top = int(torch.randint(0, height - h + 1, ()).item())
            left = int(torch.randint(0, width - w + 1, ()).item())
            region = x[:, :, top:top + h, left:left + w]
            if mode == "pixel":
                region.normal_()
            elif mode == "rand":
                region.copy_(torch.randn(channels, 1, 1, 1).expand_as(region))
            else:
                region.zero_()
            break
    return x


# ---------------------------------------------------------------------------------- datasets
class VideoFiles(ImageFiles):
    """Videos with optional integer labels, loaded as clips.

    Build with :meth:`from_folder` or :meth:`from_list` (see the module docs for the layouts).
    Items are loaded by ``key = (epoch, index)`` (as :class:`hiera.data.ImageFiles`, whose ``labels``,
    ``classes`` and per-sample seeding it shares) and returned as ``{"image": clip, "label",
    "index"}``, plus ``"mask"`` (``[#mask units]`` bool, True = keep) for MAE, or ``None`` when the
    file cannot be decoded.

    Args:
        transform: :class:`VideoTrainTransform` (training) or
            :class:`hiera.data.transforms.VideoEvalTransform` (evaluation; its clip sampling is used).
        sampling: the clips to read (default: 16 random frames 4 apart at 30 fps; taken from the
            transform for a :class:`VideoEvalTransform`).
        repeats: clips sampled (and augmented, and masked) per decoded video. Decoding is the
            costly part of video training, and MAE-ST pretrains with 4 clips per video.
        segments: per item ``(start, end)`` seconds or None.
    """

    def __init__(
        self,
        items: Sequence[Tuple[Path, int]],
        classes: Optional[List[str]] = None,
        transform: Optional[Callable] = None,
        seed: int = 0,
        mask_units: int = 0,
        mask_ratio: float = 0.9,
        sampling: Optional[ClipSampling] = None,
        repeats: int = 1,
        segments: Optional[Sequence[Optional[Tuple[Optional[float], Optional[float]]]]] = None,
    ):
        if not items:
            raise ValueError("no videos: the dataset is empty")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.sampling = sampling
        super().__init__(items, classes=classes, transform=transform, seed=seed, mask_units=mask_units,
                         mask_ratio=mask_ratio)
        self.segments = list(segments) if segments is not None else [None] * len(self.items)
        self.repeats = repeats

    @property
    def transform(self):
        return self._transform

    @transform.setter
    def transform(self, transform) -> None:
        # An evaluation transform brings its clip sampling with it (so the clips match `predict`).
        self._transform = transform
        if isinstance(transform, VideoEvalTransform):
            self.sampling = ClipSampling.of(transform)
        elif getattr(self, "sampling", None) is None:
            self.sampling = ClipSampling()

    @classmethod
    def from_folder(cls, root, labelled: Optional[bool] = None, **kwargs) -> "VideoFiles":
        """``root/<class>/*.mp4`` (labelled) or ``root/*.mp4`` (unlabelled, label -1); ``labelled=None``
        decides from the layout."""
        root = Path(root)
        if not root.is_dir():
            raise ValueError(f"video folder not found: {root}")
        items, classes = folder_items(root, videos_in, labelled)
        if not items and classes is not None:
            raise ValueError(f"{root} has no class sub-folders holding videos ({_extensions_hint()})")
        if not items:
            raise ValueError(f"no videos found in {root} ({_extensions_hint()})")
        return cls(items, classes=classes, **kwargs)

    @classmethod
    def from_list(cls, list_file, root=None, classes: Optional[List[str]] = None, **kwargs) -> "VideoFiles":
        """A CSV list: rows ``path[,label[,start,end]]``, optionally under a header row naming the
        columns (``path``, ``label``, ``start``/``time_start``, ``end``/``time_end``; others are
        ignored). Labels are indices or class names (sorted into ``classes``)."""
        list_file = Path(list_file)
        root = Path(root) if root is not None else list_file.parent
        rows, segments = [], []
        lines = [(n, row) for n, row in read_list_rows(list_file)
                 if row and row[0].strip() and not row[0].lstrip().startswith("#")]
        if not lines:
            raise ValueError(f"{list_file} lists no videos")
        columns = _header(lines[0][1], list_file)
        if columns is not None:
            lines = lines[1:]
        for n, row in lines:
            row = [cell.strip() for cell in row]
            if columns is None:
                if len(row) not in (1, 2, 4):
                    raise ValueError(f"{list_file}:{n}: expected 'path', 'path,label' or 'path,label,start,end', "
                                     f"got {len(row)} columns: {row}")
                path, label = row[0], (row[1] if len(row) > 1 and row[1] != "" else None)
                span = (row[2], row[3]) if len(row) == 4 else (None, None)
            else:
                if len(row) < len(columns["names"]):
                    raise ValueError(f"{list_file}:{n}: {len(row)} columns, the header names {len(columns['names'])}")
                path = row[columns["path"]]
                label = row[columns["label"]] if "label" in columns and row[columns["label"]] != "" else None
                span = tuple(row[columns[k]] if k in columns else None for k in ("start", "end"))
            rows.append((path, label))
            segments.append(_segment(span, list_file, n))
        items, classes = labelled_items(rows, root, classes, source=list_file)
        return cls(items, classes=classes, segments=segments, **kwargs)

    def load(self, index: int, generator: Optional[torch.Generator] = None):
        """The clips and label of item ``index``: uint8 ``[num_clips, T, H, W, 3]`` (``num_clips``
        = ``repeats`` random clips for training); raises :class:`MediaError` if unreadable."""
        path, label = self.items[index]
        sampling = self.sampling
        if sampling.mode == "random" and self.repeats > 1:
            sampling = replace(sampling, num_clips=self.repeats)
        start, end = self.segments[index] or (None, None)
        return read_clips(path, sampling, generator, start, end), label

    def probe(self, index: int) -> None:
        """Raise :class:`MediaError` if video ``index`` cannot be opened (its header, not a decode)."""
        probe_video(self.items[index][0])

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        seed = sample_seed(self.seed, epoch, index)
        try:
            # The clip's start is drawn from its own seeded generator: the same clip for the same
            # (epoch, index) in any worker or process, a new one each epoch.
            clips, label = self.load(index, torch.Generator().manual_seed(seed ^ 0xC1F5))
        except (MediaError, OSError, ValueError):
            return None
        with _SeededRandomness(seed):
            if isinstance(self.transform, VideoEvalTransform):
                clip = self.transform(clips)  # [V, 3, T, H, W]: the views
                repeats = 1
            else:
                each = self.transform or (lambda c: torch.from_numpy(np.ascontiguousarray(c)))
                clip = torch.stack([each(c) for c in clips])  # [R, 3, T, H, W]: repeated clips
                repeats = len(clip) if self.sampling.mode == "random" else 1
            clip = clip if len(clip) > 1 else clip[0]
        sample = {"image": clip, "label": label, "index": index}
        if self.mask_units:
            g = torch.Generator().manual_seed(seed ^ 0x5EED)
            masks = torch.stack([random_unit_mask(self.mask_units, self.mask_ratio, g) for _ in range(repeats)])
            sample["mask"] = masks if repeats > 1 else masks[0]
        if repeats > 1:
            sample["repeats"] = repeats
        return sample

def _header(row: List[str], list_file: Path) -> Optional[dict]:
    """Column positions if ``row`` is a header (it names a ``path`` column), else None."""
    names = [cell.strip().lower() for cell in row]
    if "path" not in names:
        known = {"label", "start", "end", "time_start", "time_end", "youtube_id", "split"}
        if known & set(names):
            raise ValueError(f"{list_file}: the header has no 'path' column (columns: {', '.join(names)}); "
                             "name the column of video paths 'path'")
        return None
    columns = {"names": names, "path": names.index("path")}
    for key, aliases in (("label", ("label",)), ("start", ("start", "time_start")), ("end", ("end", "time_end"))):
        for alias in aliases:
            if alias in names:
                columns[key] = names.index(alias)
                break
    if ("start" in columns) != ("end" in columns):
        raise ValueError(f"{list_file}: the header names {'start' if 'start' in columns else 'end'} but not "
                         f"{'end' if 'start' in columns else 'start'}; give both or neither")
    return columns


def _segment(span, list_file: Path, line: int):
    start, end = span
    if (start in (None, "")) and (end in (None, "")):
        return None
    try:
        start_s = float(start) if start not in (None, "") else None
        end_s = float(end) if end not in (None, "") else None
    except ValueError:
        raise ValueError(f"{list_file}:{line}: start / end must be seconds, got {start!r}, {end!r}") from None
    negative = start_s is not None and start_s < 0
    empty = start_s is not None and end_s is not None and end_s <= start_s
    if negative or empty:
        raise ValueError(f"{list_file}:{line}: the segment {start_s}-{end_s}s is empty or negative")
    return (start_s, end_s)


def videos_in(folder: Path, recursive: bool = False) -> List[Path]:
    """Video files in ``folder`` (sorted; hidden files skipped), by extension."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in Path(folder).glob(pattern)
                  if p.is_file() and p.suffix.lower() in VIDEO_EXTENSIONS and not p.name.startswith("."))


def _extensions_hint() -> str:
    return "looked for " + ", ".join(sorted(VIDEO_EXTENSIONS)[:8]) + ", ..."


def open_videos(source, labelled: Optional[bool] = None, **kwargs) -> VideoFiles:
    """A :class:`VideoFiles` from a folder or a CSV / text list."""
    return VideoFiles.open(source, labelled=labelled, **kwargs)


def is_video_source(source) -> Optional[bool]:
    """True for a folder of videos or a list of videos, False for images, None when there is
    nothing to tell by (a missing path, an empty folder). A folder mixing both raises."""
    source = Path(source)
    check_list_source(source)
    if source.is_file():
        for _, row in read_list_rows(source):
            cells = [c.strip() for c in row]
            if not cells or not cells[0] or cells[0].startswith("#") or cells[0].lower() == "path":
                continue
            if "path" in [c.lower() for c in cells]:
                continue
            suffix = Path(cells[0]).suffix.lower()
            if suffix in VIDEO_EXTENSIONS:
                return True
            if suffix in IMAGE_EXTENSIONS:
                return False
        return None
    if not source.is_dir():
        return None
    kinds = set()
    for p in source.rglob("*"):
        suffix = p.suffix.lower()
        if suffix in VIDEO_EXTENSIONS:
            kinds.add("video")
        elif suffix in IMAGE_EXTENSIONS:
            kinds.add("image")
        if len(kinds) == 2:
            raise ValueError(f"{source} holds both images and videos; pass --video to train on the videos "
                             "only, or keep them in separate folders")
    return ("video" in kinds) if kinds else None


# ---------------------------------------------------------------------------------- evaluation
class ViewAverage(nn.Module):
    """A classifier over several views of each video: ``[B, V, 3, T, H, W]`` -> the log of the
    softmax probabilities averaged over the ``V`` views, ``[B, K]`` (a 5-D input is one view).

    Probabilities, not logits, are averaged, as SlowFast's multi-view test (and ``hiera predict``).
    The log keeps the arg-max and top-k of the averaged probabilities and makes
    ``cross_entropy(output, y)`` the negative log-likelihood of the averaged prediction, so the
    output drops into code written for logits. Views go through ``model`` ``chunk`` at a time.
    """

    def __init__(self, model: nn.Module, chunk: int = 16):
        super().__init__()
        self.model, self.chunk = model, max(1, int(chunk))

    def forward(self, x: torch.Tensor, return_logits: bool = True) -> torch.Tensor:
        if x.ndim == 5:
            x = x.unsqueeze(1)
        b, v = x.shape[:2]
        flat = x.flatten(0, 1)
        logits = torch.cat([self.model(flat[i:i + self.chunk], return_logits=True).float()
                            for i in range(0, len(flat), self.chunk)])
        probs = logits.softmax(dim=-1).view(b, v, -1).mean(dim=1)
        return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
