"""Images or videos: what differs between training (and evaluating) on the two, chosen once per run.

:func:`hiera.train.commands.pretrain`, ``finetune`` and ``evaluate`` are one path for both; the
steps that differ are methods of a :class:`Modality`, :class:`Images` or :class:`Videos`, chosen
once by :func:`for_run` (from the model asked for, the data, ``video=``) or :func:`for_model`
(from a built model's ``input_size``: 2-D images, 3-D ``(T, H, W)`` video):

* the recipe: :func:`~hiera.train.recipes.pretrain_recipe` / ``finetune_recipe`` (ImageNet-1k,
  [Hiera Tab. 14]) or :func:`~hiera.train.recipes.video_pretrain_recipe` /
  ``video_finetune_recipe`` (Kinetics-400, [Hiera Tab. 11]);
* the data: :func:`~hiera.data.images.open_images` with :func:`~hiera.data.images.pretrain_transform`
  / :func:`~hiera.data.images.finetune_transform`, or :func:`~hiera.data.video.open_videos` with
  :class:`~hiera.data.video.ClipSampling` and :class:`~hiera.data.video.VideoTrainTransform`;
* the evaluation protocol: one centre crop per image, or ``clips x crops`` views per video
  averaged by :class:`~hiera.data.video.ViewAverage` (:func:`~hiera.data.transforms.eval_transform`);
* the checks: a video model given images and the reverse, and the options only one of them takes
  (``--frames``, ``--frame-stride``, ``--repeat-aug`` for video; ``--probe-head`` for images).

What each produces (``B`` the batch size, ``R`` the recipe's ``repeat_aug``, ``V`` the views):

* Images, ``input_size`` ``(H, W)``: samples ``[3, H, W]`` (ImageNet statistics), training,
  validation and evaluation batches ``[B, 3, H, W]``; evaluation runs the model itself.
* Videos, ``input_size`` ``(T, H, W)``: a training sample is ``[R, 3, T, H, W]`` (``[3, T, H, W]``
  when ``R = 1``), ``R`` clips of one decoded video (Kinetics statistics), which
  :func:`hiera.data.images.collate` flattens into the batch: ``[B * R, 3, T, H, W]`` (MAE masks
  ``[B * R, units]``); validation batches ``[B, 3, T, H, W]``, the centre view; evaluation batches
  ``[B // V, V, 3, T, H, W]`` (``[B, 3, T, H, W]`` for the single view) into
  :class:`~hiera.data.video.ViewAverage`, which averages the ``V`` views' probabilities.

The learning rate of video pretraining follows the videos per step (``B``), that of video
fine-tuning the clips per step (``B * R``), as [MAE-ST] scales them.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar, NamedTuple, Optional, Tuple

import torch.nn as nn

from ..data.images import ImageFiles, finetune_transform, open_images, pretrain_transform
from ..data.transforms import ImageEvalTransform, VideoEvalTransform, eval_transform
from ..data.video import ClipSampling, VideoTrainTransform, ViewAverage, is_video_source, open_videos
from ..weights import zoo_name_for
from ..zoo import MODELS
from .recipes import (
    FinetuneRecipe,
    PretrainRecipe,
    finetune_recipe,
    is_video_name,
    pretrain_recipe,
    video_finetune_recipe,
    video_pretrain_recipe,
)


# ---------------------------------------------------------------------------------- argument checks
def whole(value, flag: str, low: int) -> None:
    """Raise ValueError unless ``value`` is a whole number >= ``low`` (``flag`` names it)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{flag} must be a whole number >= {low}, got {value!r}")


def positive(value, flag: str, what: str) -> None:
    """Raise ValueError unless ``value`` is a finite number > 0 (``what`` says what it counts)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{flag} must be a positive {what}, got {value!r}")


# ---------------------------------------------------------------------------------- the modalities
class Evaluation(NamedTuple):
    """How :func:`hiera.train.commands.evaluate` runs a model over labelled data."""

    dataset: ImageFiles  # the labelled data, with the evaluation transform
    runner: nn.Module  # what a batch goes through: the model, or the views averaged
    per_batch: int  # samples (images, videos) per batch
    protocol: str  # the views, in words ("single view", "3 spatial x 5 temporal")


class Modality(abc.ABC):
    """What differs between image and video training; see the module docs for the shapes.
    :class:`Images` and :class:`Videos` implement the abstract steps; the others have a default."""

    noun: ClassVar[str]  # what the data hold, in messages: "images" / "videos"
    default_model: ClassVar[str]  # the model of a run that names none

    @abc.abstractmethod
    def pretrain_recipe(self, model: str, epochs, batch_size) -> PretrainRecipe:
        """The paper's MAE pretraining recipe for ``model`` (a custom model: base's), scaled."""

    @abc.abstractmethod
    def finetune_recipe(self, model: str, epochs, batch_size) -> FinetuneRecipe:
        """The paper's fine-tuning recipe for ``model`` (a custom model: base's), scaled."""

    @abc.abstractmethod
    def open(self, data, seed: int, labelled: Optional[bool] = None) -> ImageFiles:
        """The training data, opened (listed, not read) before the model is built, so that a
        folder without anything to train on fails at once; :meth:`pretrain_data` /
        :meth:`finetune_data` set its transforms once the model says its input size."""

    def finetune_defaults(self, recipe: FinetuneRecipe, linear_probe: bool) -> dict:
        """Model config the fine-tuning recipe sets for a zoo model unless ``--config`` does."""
        return {"drop_path_rate": 0.0 if linear_probe else recipe.drop_path_rate}

    def recipe_input_size(self, model: str, recipe, config: Optional[dict]) -> Tuple[dict, Optional[str]]:
        """``({"input_size": ...}, note)`` when the recipe, not the zoo, sets the input size ``model``
        is trained at (the note says so, for the run's log); ``({}, None)`` otherwise."""
        return {}, None

    @abc.abstractmethod
    def pretrain_data(self, train_set, val, net, model: str, recipe, mask_ratio: float, seed: int):
        """Set ``train_set``'s augmentation and MAE masks; return the validation data (or None)."""

    @abc.abstractmethod
    def finetune_data(self, train_set, val, net, model: str, recipe, seed: int):
        """Set ``train_set``'s augmentation; return the validation data (or None)."""

    def finetune_lr_batch(self, recipe: FinetuneRecipe, batch_size: int) -> int:
        """The batch the fine-tuning learning rate follows."""
        return batch_size

    def finetune_run(self, recipe: FinetuneRecipe, run: dict) -> dict:
        """``run`` (:class:`hiera.train.engine.RunConfig` fields) with the recipe's defaults."""
        return run

    def run_facts(self, net, recipe) -> dict:
        """What the run records about its inputs (``RunConfig.extra``) besides the recipe."""
        return {}

    @abc.abstractmethod
    def evaluation(self, net, data, views: str, batch_size: int) -> Evaluation:
        """How to evaluate ``net`` on the labelled ``data`` (``batch_size`` counts model inputs)."""


def _recipe_name(model: str) -> str:
    return "base" if model == "custom" else model


class Images(Modality):
    """Images for a model with a 2-D ``input_size``: ImageNet recipes, one view per image."""

    noun = "images"
    default_model = "hiera_base_224"

    def pretrain_recipe(self, model, epochs, batch_size):
        return pretrain_recipe(_recipe_name(model)).scaled(epochs=epochs, batch_size=batch_size)

    def finetune_recipe(self, model, epochs, batch_size):
        return finetune_recipe(_recipe_name(model)).scaled(epochs=epochs, batch_size=batch_size)

    def recipe_input_size(self, model, recipe, config):
        """The classification recipe's size (224 x 224) for a zoo backbone built without a head at
        another size: SAM 2's trunks (``sam2_hiera_*``) are built at 1024 x 1024, the resolution they
        segment at, not a size to classify at: the recipe's numbers are for 224, and a 1024 x 1024
        image has 21 times the tokens of a 224 x 224 one. A zoo classifier keeps the size it was built
        and released at (the 224 models, ``hiera_*_abswin_256`` at 256), a custom model and an
        ``input_size`` in ``config`` are taken as given."""
        if model == "custom" or "input_size" in (config or {}):
            return {}, None
        name = zoo_name_for(model.split(".", 1)[0], mae=False)
        spec = MODELS.get(name)
        if spec is None:
            return {}, None
        built = {n: p.default for n, p in inspect.signature(spec.cls).parameters.items()
                 if p.default is not inspect.Parameter.empty}
        built.update(spec.kwargs)
        size, want = tuple(built.get("input_size", ())), (recipe.input_size, recipe.input_size)
        if built.get("num_classes") or len(size) != 2 or size == want:
            return {}, None
        return {"input_size": want}, (
            f"{name} is built at {size[0]}x{size[1]} as a backbone for dense prediction (no classification head); "
            f"fine-tuning at {want[0]}x{want[1]} (the classification recipe's size); pass "
            f"--config '{{\"input_size\": [H, W]}}' for another")

    def open(self, data, seed, labelled=None):
        return open_images(data, labelled=labelled, seed=seed)

    def pretrain_data(self, train_set, val, net, model, recipe, mask_ratio, seed):
        size = tuple(net.input_size)
        train_set.transform = pretrain_transform(size, scale=recipe.crop_scale)
        train_set.mask_units, train_set.mask_ratio = net.num_mask_units, mask_ratio
        if not val:
            return None
        return open_images(val, transform=pretrain_transform(size, scale=recipe.crop_scale), seed=seed,
                           mask_units=net.num_mask_units, mask_ratio=mask_ratio)

    def finetune_data(self, train_set, val, net, model, recipe, seed):
        size = tuple(net.input_size)
        train_set.transform = finetune_transform(size, auto_augment=recipe.rand_augment, re_prob=recipe.reprob,
                                                 re_mode=recipe.remode, scale=recipe.crop_scale, hflip=recipe.hflip)
        if not val:
            return None
        return open_images(val, labelled=True, seed=seed,
                           transform=ImageEvalTransform(size, crop_pct=recipe.eval_crop_pct))

    def evaluation(self, net, data, views, batch_size):
        return Evaluation(open_images(data, labelled=True, transform=eval_transform(net)), net, batch_size,
                          "single view")


@dataclass(frozen=True)
class Videos(Modality):
    """Clips for a model with a 3-D ``input_size`` ``(T, H, W)``: Kinetics recipes, ``T`` frames
    ``frame_stride`` apart at the recipe's ``target_fps``, ``repeat_aug`` clips per decoded video,
    evaluated on ``clips x crops`` views. ``None`` options are the recipe's (frames: the model's)."""

    num_frames: Optional[int] = None
    frame_stride: Optional[float] = None
    repeat_aug: Optional[int] = None

    noun = "videos"
    default_model = "hiera_base_16x224"

    def pretrain_recipe(self, model, epochs, batch_size):
        return self._with_options(video_pretrain_recipe(_recipe_name(model)).scaled(epochs=epochs,
                                                                                     batch_size=batch_size))

    def finetune_recipe(self, model, epochs, batch_size):
        return self._with_options(video_finetune_recipe(_recipe_name(model)).scaled(epochs=epochs,
                                                                                     batch_size=batch_size))

    def _with_options(self, recipe):
        given = {k: v for k, v in (("frame_stride", self.frame_stride), ("repeat_aug", self.repeat_aug))
                 if v is not None}
        return dataclasses.replace(recipe, **given) if given else recipe

    def open(self, data, seed, labelled=None):
        return open_videos(data, labelled=labelled, seed=seed)

    def finetune_defaults(self, recipe, linear_probe):
        return {**super().finetune_defaults(recipe, linear_probe),
                "head_dropout": 0.0 if linear_probe else recipe.head_dropout}

    def frames(self, net, model: str) -> int:
        """Frames per clip: the model's, and a requested clip length must agree with it."""
        size = tuple(net.input_size)
        if len(size) != 3:
            raise ValueError(f"{model!r} takes images {size}, not clips; use a video model such as hiera_base_16x224")
        if self.num_frames is not None and self.num_frames != size[0] and not getattr(net, "dynamic_size", False):
            raise ValueError(
                f"clips of {self.num_frames} frames were asked for, but {model!r} takes {size[0]} frames (input "
                f"{list(size)}); drop --frames, or build the model for {self.num_frames} frames with "
                f"--config '{{\"input_size\": [{self.num_frames}, {size[1]}, {size[2]}]}}'"
            )
        return size[0]

    def pretrain_data(self, train_set, val, net, model, recipe, mask_ratio, seed):
        size = tuple(net.input_size)
        train_set.sampling = ClipSampling(self.frames(net, model), recipe.frame_stride, recipe.target_fps, "random")
        train_set.transform = VideoTrainTransform(size, scale=recipe.crop_scale, ratio=recipe.crop_ratio,
                                                  hflip=recipe.hflip)
        train_set.mask_units, train_set.mask_ratio = net.num_mask_units, mask_ratio
        train_set.repeats = recipe.repeat_aug
        if not val:
            return None
        # Validation clips are read as `hiera mae-viz` reads a video (centre clip, shorter side to
        # the crop size), so the reconstructions of a run and of mae-viz can be compared.
        return open_videos(val, transform=VideoEvalTransform(size, views="single", stride=recipe.frame_stride,
                                                             target_fps=recipe.target_fps, crop_pct=1.0),
                           seed=seed, mask_units=net.num_mask_units, mask_ratio=mask_ratio)

    def finetune_data(self, train_set, val, net, model, recipe, seed):
        size = tuple(net.input_size)
        train_set.sampling = ClipSampling(self.frames(net, model), recipe.frame_stride, recipe.target_fps, "random")
        train_set.repeats = recipe.repeat_aug
        train_set.transform = VideoTrainTransform(
            size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, hflip=recipe.hflip,
            rand_augment=recipe.rand_augment, reprob=recipe.reprob, remode=recipe.remode)
        if not val:
            return None
        return open_videos(val, labelled=True, seed=seed, transform=VideoEvalTransform(
            size, views="single", stride=recipe.frame_stride, target_fps=recipe.target_fps))

    def finetune_lr_batch(self, recipe, batch_size):
        return batch_size * recipe.repeat_aug  # the lr follows the clips per step ([MAE-ST])

    def finetune_run(self, recipe, run):
        return run if run.get("clip_grad") is not None else {**run, "clip_grad": recipe.clip_grad}

    def run_facts(self, net, recipe):
        return {"video": True, "frames": tuple(net.input_size)[0], "frame_stride": recipe.frame_stride,
                "target_fps": recipe.target_fps, "repeat_aug": recipe.repeat_aug}

    def evaluation(self, net, data, views, batch_size):
        if is_video_source(data) is False:
            raise ValueError(f"the model takes video clips {list(net.input_size)}, but {data} holds images")
        transform = eval_transform(net, views=views)
        return Evaluation(open_videos(data, labelled=True, transform=transform), ViewAverage(net, chunk=batch_size),
                          max(1, batch_size // transform.num_views),
                          f"{transform.num_crops} spatial x {transform.num_clips} temporal")


# ---------------------------------------------------------------------------------- choosing one
def for_run(data, model: Optional[str], config: Optional[dict], video: Optional[bool],
            num_frames: Optional[int] = None, frame_stride: Optional[float] = None,
            repeat_aug: Optional[int] = None, probe_head: bool = False) -> Modality:
    """The modality of a training run: videos when asked for (``video=True``), for a video model
    (``*_16x224``, or a custom config with a 3-D ``input_size``), or for data made of videos;
    images otherwise. Mismatches, and options the other modality takes, are errors (before any
    work)."""

    if model == "custom":
        model_video = len((config or {}).get("input_size", (224, 224))) == 3
    elif model is not None:
        model_video = is_video_name(model)
    else:
        model_video = None
    data_video = is_video_source(data) if video is None else None
    if video is None:
        video = bool(model_video or data_video)
    if video and model_video is False:
        why = "the data are videos" if data_video else "--video was given"
        raise ValueError(f"{why}, but {model!r} is an image model; use a video model such as hiera_base_16x224 "
                         "(or 'custom' with a 3-D input_size)")
    if video and data_video is False:
        raise ValueError(f"{model!r} is a video model, but {data} holds images; give a folder or list of videos")
    if not video and model_video:
        raise ValueError(f"{model!r} is a video model; train it on videos (a folder of clips per class, or a CSV)")

    given = [flag for flag, value in (("--frames", num_frames), ("--frame-stride", frame_stride),
                                      ("--repeat-aug", repeat_aug)) if value is not None]
    if not video:
        if given:
            raise ValueError(f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} for video runs, and this "
                             f"run is on images ({data}); drop {'it' if len(given) == 1 else 'them'}, or train a "
                             "video model")
        return Images()
    if num_frames is not None:
        whole(num_frames, "--frames", 1)
    if frame_stride is not None:
        positive(frame_stride, "--frame-stride", "number of frames")
    if repeat_aug is not None:
        whole(repeat_aug, "--repeat-aug", 1)
    if probe_head:
        raise ValueError("--probe-head fits the head on images; it is not available for video runs yet")
    return Videos(num_frames, frame_stride, repeat_aug)


def for_model(net) -> Modality:
    """The modality of a built model: videos for a 3-D ``input_size``, images for a 2-D one."""
    return Videos() if len(tuple(net.input_size)) == 3 else Images()
