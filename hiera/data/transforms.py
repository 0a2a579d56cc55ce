"""The evaluation transforms the Hiera checkpoints were trained and evaluated with.

Images (ImageNet-1k, ``hiera_*_224``): resize the shorter side to 256 (bicubic, antialiased),
centre-crop 224, ImageNet mean/std -- the transform of the official package's inference example
(``examples/inference.ipynb``: ``Resize(int(256 / 224 * input_size), BICUBIC)``, ``CenterCrop``,
timm's ``IMAGENET_DEFAULT_MEAN/STD``). Other input sizes keep the 224 / 256 ratio (``crop_pct``).

Videos (Kinetics-400, ``hiera_*_16x224``): 16 frames 4 apart (at 30 fps), Kinetics normalisation
mean 0.45 / std 0.225 per channel. These are SlowFast's defaults (``slowfast/config/defaults.py``:
``_C.DATA.MEAN = [0.45, 0.45, 0.45]``, ``_C.DATA.STD = [0.225, 0.225, 0.225]``), which the MAE-ST /
MViT / Hiera video code builds on; torchvision's Kinetics MViT weights use the same values
(``MViT_V1_B_Weights.KINETICS400_V1.transforms()``). The views follow SlowFast's test loader
(``datasets/kinetics.py``):

* single view: the centre clip, shorter side resized to 256, centre crop 224;
* multi-view ("3 spatial x 5 temporal"): 5 clips evenly spaced over the video, each resized so its
  shorter side equals the crop size (224) and cut into 3 crops along the longer side (left / centre
  / right, or top / centre / bottom for portrait video), so that the 3 crops together see the whole
  frame. The class probabilities of the 15 views are averaged.

Every transform returns float32 tensors, channels first: images ``[3, H, W]``, videos
``[V, 3, T, H, W]`` (``V`` views).
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from ..zoo import CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, KINETICS_MEAN, KINETICS_STD, MODELS, ModelSpec
from .media import MediaError, load_clips, sample_frame_indices

VIDEO_NUM_FRAMES = 16
VIDEO_STRIDE = 4  # frames between samples at VIDEO_FPS (SlowFast's DATA.SAMPLING_RATE for Hiera)
VIDEO_FPS = 30.0  # SlowFast's DATA.TARGET_FPS
VIDEO_NUM_CLIPS = 5  # temporal views of the multi-view protocol
VIDEO_NUM_CROPS = 3  # spatial views of the multi-view protocol


def _pair(size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return size[0], size[0]
    if len(size) != 2:
        raise ValueError(f"expected a spatial size (H, W), got {size}")
    return size


# Bounds on the picture a transform resizes to before cropping. Keeping the aspect ratio, a long
# thin input (10000 x 1 pixels) would become 256 x 2,560,000 -- gigabytes -- for a 224 crop; the
# input-size checks (PIL's decompression-bomb limit, the video decoder's budget) never see that.
# Allowed: RESIZE_MAX_PIXELS, or RESIZE_MAX_FACTOR times the model input where that is more (large
# --size runs). Real photos and panoramas (up to ~20:1) stay far below either.
RESIZE_MAX_PIXELS = 2**25  # 32 Mpx: ~100 MB as uint8 RGB (PIL's two-pass resize holds about twice)
RESIZE_MAX_FACTOR = 16


class ResizeTooLarge(ValueError):
    """An input whose resized size (before the crop) would take an unreasonable amount of memory."""


def check_resize(height: int, width: int, size: Sequence[int], target: Sequence[int], frames: int = 1) -> None:
    """Raise :class:`ResizeTooLarge` when resizing ``frames`` pictures of ``height x width`` to
    ``size`` would exceed the bounds above for a ``target`` crop (the model's input)."""
    pixels = int(size[0]) * int(size[1]) * frames
    limit = max(RESIZE_MAX_PIXELS, RESIZE_MAX_FACTOR * int(target[0]) * int(target[1]) * frames)
    if pixels > limit:
        ratio = max(height, width) / max(min(height, width), 1)
        raise ResizeTooLarge(
            f"{width}x{height} pixels (aspect ratio {ratio:.0f}:1) would be resized to {size[1]}x{size[0]} "
            f"({pixels / 1e6:.0f} Mpx{f' over {frames} frames' if frames > 1 else ''}) before the "
            f"{target[1]}x{target[0]} centre crop, more than the {limit / 1e6:.0f} Mpx allowed; crop or pad "
            "it to a less extreme aspect ratio"
        )


def cover_size(height: int, width: int, target: Tuple[int, int], crop_pct: float) -> Tuple[int, int]:
    """Size ``(h, w)`` to resize an ``height x width`` frame to, keeping its aspect ratio, so that a
    centred ``target`` crop takes ``crop_pct`` of it along the binding side.

    For a square target this is torchvision's ``Resize(int(target / crop_pct))`` (shorter side ->
    256 for 224, longer side ``int(256 * long / short)``), so results match the reference exactly.
    """
    th, tw = target
    if th / height >= tw / width:  # the height binds (landscape input, or a tall target)
        h = int(th / crop_pct)
        w = max(int(h * width / height), tw)  # max: never narrower than the crop after flooring
    else:
        w = int(tw / crop_pct)
        h = max(int(w * height / width), th)
    return h, w


def crop_offsets(height: int, width: int, size: Tuple[int, int], position: int = 1) -> Tuple[int, int]:
    """Top-left corner of a ``size`` crop. ``position`` 0 / 1 / 2 = start / centre / end of the
    longer side (left / centre / right for landscape, top / centre / bottom for portrait); the other
    side is always centred. Centring rounds as SlowFast's ``uniform_crop`` (``ceil``)."""
    ch, cw = size
    if ch > height or cw > width:
        raise ValueError(f"crop {size} is larger than the frame {(height, width)}")
    top, left = -(-(height - ch) // 2), -(-(width - cw) // 2)
    if position != 1:
        if height > width:
            top = 0 if position == 0 else height - ch
        else:
            left = 0 if position == 0 else width - cw
    return top, left


class ImageEvalTransform:
    """PIL image (or uint8 tensor ``[3, H, W]``) -> normalised float tensor ``[3, H, W]``.

    Args:
        input_size: model input ``(H, W)`` (or one int).
        crop_pct: resize so the centre crop keeps this fraction (224/256 for the checkpoints);
            None resizes straight to ``input_size`` (no crop; the aspect ratio is not kept), which
            dense feature extraction at a chosen size wants: the whole image, nothing cut away.
        interpolation: bicubic, as the checkpoints were evaluated (always antialiased).
    """

    def __init__(
        self,
        input_size: Union[int, Sequence[int]] = 224,
        crop_pct: Optional[float] = CROP_PCT,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        interpolation: InterpolationMode = InterpolationMode.BICUBIC,
    ):
        self.input_size = _pair(input_size)
        self.crop_pct = crop_pct
        self.mean, self.std = list(mean), list(std)
        self.interpolation = interpolation

    def __call__(self, image) -> torch.Tensor:
        if isinstance(image, np.ndarray):
            image = F.to_image(image)  # HWC uint8 -> [3, H, W]
        # PIL images are resized by PIL itself, as in the reference transform; tensors by torch's
        # antialiased kernels (which follow PIL's closely).
        height, width = F.get_size(image)
        if self.crop_pct is None:
            image = F.resize(image, list(self.input_size), interpolation=self.interpolation, antialias=True)
        else:
            size = cover_size(height, width, self.input_size, self.crop_pct)
            check_resize(height, width, size, self.input_size)
            image = F.resize(image, list(size), interpolation=self.interpolation, antialias=True)
            image = F.center_crop(image, list(self.input_size))
        # Resizing uint8 (PIL or tensor) clamps bicubic overshoot to [0, 255] before scaling.
        image = F.to_dtype(F.to_image(image), torch.float32, scale=True)
        return F.normalize(image, self.mean, self.std).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(input_size={self.input_size}, crop_pct={self.crop_pct}, "
                f"interpolation={self.interpolation.value}, mean={self.mean}, std={self.std})")


class VideoEvalTransform:
    """Clips -> normalised views ``[V, 3, T, H, W]``.

    Args:
        input_size: model input ``(T, H, W)``; ``T`` frames per clip.
        views: ``"single"`` (1 centre clip x 1 centre crop, shorter side ``H / crop_pct``) or
            ``"multi"`` (``num_clips`` clips x ``num_crops`` crops, shorter side = crop size).
        stride: frames between samples, counted at ``target_fps``.
        crop_pct: single view's crop / resize ratio (224 / 256).
        fit: ``"crop"`` (the protocol above) or ``"stretch"`` (resize frames straight to ``H x W``).
        pad: how videos shorter than a clip are padded, see :func:`hiera.data.media.sample_frame_indices`.

    Use :meth:`load` for a path, or :meth:`indices` + your own decoding + ``__call__``.
    """

    def __init__(
        self,
        input_size: Sequence[int] = (VIDEO_NUM_FRAMES, 224, 224),
        views: str = "single",
        stride: float = VIDEO_STRIDE,
        target_fps: Optional[float] = VIDEO_FPS,
        num_clips: int = VIDEO_NUM_CLIPS,
        num_crops: int = VIDEO_NUM_CROPS,
        crop_pct: float = CROP_PCT,
        mean: Sequence[float] = KINETICS_MEAN,
        std: Sequence[float] = KINETICS_STD,
        interpolation: InterpolationMode = InterpolationMode.BILINEAR,
        fit: str = "crop",
        pad: str = "clamp",
    ):
        if len(input_size) != 3:
            raise ValueError(f"a video transform needs input_size (T, H, W), got {tuple(input_size)}")
        if views not in ("single", "multi"):
            raise ValueError(f"views must be 'single' or 'multi', got {views!r}")
        if fit not in ("crop", "stretch"):
            raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
        self.num_frames = int(input_size[0])
        self.crop_size = _pair(input_size[1:])
        self.views = views
        self.stride, self.target_fps = stride, target_fps
        self.num_clips = num_clips if views == "multi" else 1
        self.num_crops = num_crops if views == "multi" and fit == "crop" else 1
        self.crop_pct = crop_pct
        self.mean, self.std = list(mean), list(std)
        # SlowFast resizes clips with bilinear interpolation; antialiasing only matters when
        # shrinking a lot (HD video), where aliasing would be the bigger departure from training.
        self.interpolation = interpolation
        self.fit, self.pad = fit, pad

    @property
    def num_views(self) -> int:
        return self.num_clips * self.num_crops

    def indices(self, num_frames_total: int, fps: Optional[float] = None) -> torch.Tensor:
        """Frame indices ``LongTensor [num_clips, T]`` for a video of ``num_frames_total`` frames."""

        step = self.stride * fps / self.target_fps if fps and self.target_fps else self.stride
        mode = "uniform" if self.num_clips > 1 else "center"
        return sample_frame_indices(num_frames_total, self.num_frames, step, mode, self.num_clips, self.pad)

    def load(self, path) -> torch.Tensor:
        """Read the clips of the video at ``path`` and transform them: ``[V, 3, T, H, W]``."""

        mode = "uniform" if self.num_clips > 1 else "center"
        clips, _ = load_clips(path, self.num_frames, self.stride, mode, self.num_clips, self.target_fps, self.pad)
        try:
            return self(clips)
        except ResizeTooLarge as e:  # a property of this file: the tools skip it with the reason
            raise MediaError(path, str(e)) from None

    def __call__(self, clips) -> torch.Tensor:
        """uint8 RGB ``[num_clips, T, H, W, 3]`` (or one clip ``[T, H, W, 3]``) -> ``[V, 3, T, h, w]``,
        views ordered clip-major (all crops of clip 0, then clip 1, ...)."""
        clips = torch.as_tensor(np.asarray(clips)) if not isinstance(clips, torch.Tensor) else clips
        if clips.ndim == 4:
            clips = clips.unsqueeze(0)
        if clips.ndim != 5 or clips.shape[-1] != 3:
            raise ValueError(f"expected uint8 clips [num_clips, T, H, W, 3], got shape {tuple(clips.shape)}")
        n, t, height, width, _ = clips.shape
        x = clips.permute(0, 1, 4, 2, 3).reshape(n * t, 3, height, width)  # resize works on [..., H, W]
        if self.fit == "stretch":
            size, positions = self.crop_size, [1]
        elif self.num_crops > 1:
            size = cover_size(height, width, self.crop_size, 1.0)  # shorter side = crop size
            positions = [0, 1, 2] if self.num_crops == 3 else list(range(self.num_crops))
        else:
            size, positions = cover_size(height, width, self.crop_size, self.crop_pct), [1]
        check_resize(height, width, size, self.crop_size, frames=n * t)
        if tuple(size) != (height, width):
            x = F.resize(x, list(size), interpolation=self.interpolation, antialias=True)
        x = x.float().div_(255.0)
        views = []
        for position in positions:
            top, left = crop_offsets(size[0], size[1], self.crop_size, position)
            views.append(x[..., top:top + self.crop_size[0], left:left + self.crop_size[1]])
        x = torch.stack(views, dim=1)  # [n * t, crops, 3, h, w]
        x = x.view(n, t, len(positions), 3, *self.crop_size).permute(0, 2, 3, 1, 4, 5)  # [n, crops, 3, t, h, w]
        x = x.reshape(n * len(positions), 3, t, *self.crop_size)
        mean = torch.tensor(self.mean).view(1, 3, 1, 1, 1)
        std = torch.tensor(self.std).view(1, 3, 1, 1, 1)
        return (x - mean) / std

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(frames={self.num_frames}, stride={self.stride}@{self.target_fps}fps, "
                f"crop={self.crop_size}, views={self.views} ({self.num_clips} clips x {self.num_crops} crops), "
                f"fit={self.fit}, mean={self.mean}, std={self.std})")


def _zoo_spec(model_or_spec) -> Optional[ModelSpec]:
    """The zoo entry of a model, a HieraFeatures backbone, a zoo name or spec (None: not a zoo model)."""
    spec = model_or_spec
    if isinstance(spec, str):
        return MODELS.get(spec.split(".", 1)[0])
    if not isinstance(spec, ModelSpec):
        inner = getattr(spec, "model", spec)  # HieraFeatures wraps the model
        return MODELS.get(getattr(inner, "zoo_name", None) or "")
    return spec


def _input_size(model_or_spec) -> Tuple[int, ...]:
    """The input size of a model, a HieraFeatures backbone, a zoo spec or name, or a config dict."""

    obj = model_or_spec
    if isinstance(obj, str):
        name = obj.split(".", 1)[0]
        if name not in MODELS:
            raise ValueError(f"unknown model {obj!r}; choose one of the zoo names (`hiera zoo`)")
        obj = MODELS[name]
    if isinstance(obj, ModelSpec):
        return tuple(obj.kwargs.get("input_size", (224, 224)))
    if isinstance(obj, dict):
        return tuple(obj.get("input_size", (224, 224)))
    if isinstance(obj, (tuple, list)):
        return tuple(obj)
    inner = getattr(obj, "model", None)  # HieraFeatures wraps the Hiera
    for candidate in (obj, inner):
        size = getattr(candidate, "input_size", None)
        if size is not None:
            return tuple(size)
    raise TypeError(
        f"cannot tell the input size of {type(model_or_spec).__name__}; pass a Hiera model, a zoo name or spec"
    )


def eval_transform(
    model_or_spec,
    views: str = "single",
    input_size: Optional[Sequence[int]] = None,
    fit: str = "crop",
):
    """The evaluation transform for a model: :class:`ImageEvalTransform` for 2-D inputs,
    :class:`VideoEvalTransform` for 3-D ones, at the model's input size.

    Args:
        model_or_spec: a ``Hiera`` (or ``HieraFeatures``), a ``ModelSpec``, a zoo name, a config
            dict or an input size tuple.
        views: ``"single"`` or ``"multi"`` (video only: an image model with ``"multi"`` raises).
        input_size: run at another size than the model's (the model needs ``dynamic_size = True``).
            For video a 2-tuple changes only ``(H, W)``.
        fit: ``"crop"`` (resize keeping the aspect ratio, then crop) or ``"stretch"`` (resize to the
            size exactly, nothing cut away).
    """
    if fit not in ("crop", "stretch"):
        raise ValueError(f"fit must be 'crop' or 'stretch', got {fit!r}")
    size = _input_size(model_or_spec)
    if input_size is not None:
        input_size = tuple(int(s) for s in input_size)
        size = input_size if len(input_size) == len(size) or len(size) == 2 else size[:1] + input_size
    if views not in ("single", "multi"):
        raise ValueError(f"views must be 'single' or 'multi', got {views!r}")
    if len(size) == 2:
        if views != "single":
            raise ValueError("views='multi' (5 clips x 3 crops) is for video models; an image model sees each "
                             "image once (resize, centre crop): use views='single'")
        spec = _zoo_spec(model_or_spec)
        norm = dict(mean=spec.mean, std=spec.std) if spec else {}
        crop_pct = spec.crop_pct if spec else CROP_PCT
        return ImageEvalTransform(size, crop_pct=crop_pct if fit == "crop" else None, **norm)
    if len(size) == 3:
        spec = _zoo_spec(model_or_spec)
        norm = dict(mean=spec.mean, std=spec.std, crop_pct=spec.crop_pct) if spec else {}
        return VideoEvalTransform(size, views=views, fit=fit, **norm)
    raise ValueError(f"no evaluation transform for {len(size)}-D inputs {size} (only images and videos)")
