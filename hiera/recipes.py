"""Training recipes of the Hiera paper, as presets, plus the optimizer and learning-rate schedule
they call for.

This module is the ONE place where the paper's hyper-parameters live; the training engine and the
command line read them from here (and may override single fields with ``dataclasses.replace``)::

    from hiera import recipes

    recipe = recipes.pretrain_recipe("mae_hiera_base_224").scaled(epochs=20, batch_size=64)
    optimizer = recipes.build_optimizer(model, recipe)           # AdamW, lr scaled to batch 64
    total, warmup = recipe.schedule_steps(steps_per_epoch=len(loader))
    scheduler = recipes.WarmupCosineLR(optimizer, total, warmup, base_lr=recipe.lr())
    for batch in loader:
        ...; optimizer.step(); scheduler.step()                  # per-step schedule

Sources. Every preset value names where it comes from:

* ``[Hiera]``: Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
  Bells-and-Whistles", ICML 2023, arXiv 2306.00989, appendix (implementation details: the tables
  of settings for MAE pretraining and for fine-tuning on ImageNet-1k). The values were taken from
  the project issue that quotes those tables; the appendix itself could not be re-read here.
* ``[MAE]``: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, and its
  reference code (``main_pretrain.py`` / ``main_finetune.py``), which Hiera's recipe follows where
  the Hiera tables are silent (e.g. random-erasing mode, mixup switch probability).
* ``[timm]``: defaults of timm's data pipeline that the recipe inherits.
* ``[MAE-ST]``: Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal Learners", NeurIPS
  2022, through its reference code (github.com/facebookresearch/mae_st: ``PRETRAIN.md``,
  ``FINETUNE.md``, ``main_pretrain.py``, ``main_finetune.py``), on which Hiera's video training is
  built; read offline for the video recipes where the Hiera values could not be confirmed.

The image recipes (ImageNet-1k, 224px) are :func:`pretrain_recipe` / :func:`finetune_recipe`, which
refuse video model names; the video recipes (Kinetics-400, 16 frames at 224px) are
:func:`video_pretrain_recipe` / :func:`video_finetune_recipe` (:class:`VideoPretrainRecipe`,
:class:`VideoFinetuneRecipe`), which differ in mask ratio, epochs, batch, crops and clip sampling.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

__all__ = [
    "SIZES",
    "PretrainRecipe",
    "FinetuneRecipe",
    "model_size",
    "pretrain_recipe",
    "finetune_recipe",
    "param_groups",
    "no_weight_decay_names",
    "build_optimizer",
    "lr_schedule",
    "WarmupCosineLR",
    "build_scheduler",
    "VideoPretrainRecipe",
    "VideoFinetuneRecipe",
    "video_pretrain_recipe",
    "video_finetune_recipe",
    "is_video_name",
]

# The model sizes of the zoo (hiera.zoo.SIZES), longest name first so that "base_plus" is matched
# before "base" when a model name is parsed.
SIZES: Tuple[str, ...] = ("base_plus", "tiny", "small", "base", "large", "huge")

# ------------------------------------------------------------------ per-size tables
# [Hiera] appendix, MAE pretraining settings: stochastic depth grows with model size.
_PRETRAIN_DROP_PATH = {"tiny": 0.0, "small": 0.0, "base": 0.2, "base_plus": 0.2, "large": 0.2, "huge": 0.3}

# [Hiera] appendix, fine-tuning settings.
_FT_LAYER_DECAY = {"tiny": 0.65, "small": 0.65, "base": 0.7, "base_plus": 0.7, "large": 0.85, "huge": 0.85}
_FT_BASE_LR = {"tiny": 2e-3, "small": 2e-3, "base": 2e-3, "base_plus": 1e-3, "large": 1e-3, "huge": 1e-3}
_FT_EPOCHS = {"tiny": 300, "small": 200, "base": 100, "base_plus": 100, "large": 50, "huge": 50}
_FT_DROP_PATH = {"tiny": 0.1, "small": 0.1, "base": 0.1, "base_plus": 0.1, "large": 0.1, "huge": 0.3}

# Fine-tuning warms up for 5 epochs [Hiera]; when a recipe is shrunk to a short run the warmup is
# capped at this fraction of the run, so a 10-epoch run does not spend half of it warming up.
# 0.1 is the fraction the paper's own shortest schedule uses (5 of 50 epochs, Hiera-L/H).
_FT_MAX_WARMUP_FRACTION = 0.1


def _lr_for_batch(base_lr: float, batch_size: int, reference_batch: int) -> float:
    """The linear scaling rule [MAE, Goyal et al. 2017]: ``lr = base_lr * batch / reference``."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    return base_lr * batch_size / reference_batch


def _steps(epochs: float, warmup_epochs: float, steps_per_epoch: int) -> Tuple[int, int]:
    if steps_per_epoch <= 0:
        raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
    total = max(1, int(round(epochs * steps_per_epoch)))
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if warmup_epochs > 0:
        warmup = max(1, warmup)  # a requested warmup never rounds away to nothing
    return total, min(warmup, total)


@dataclass(frozen=True)
class PretrainRecipe:
    """MAE pretraining of a Hiera image model (ImageNet-1k, 224px) [Hiera appendix].

    ``batch_size`` is the EFFECTIVE batch (per device x devices x gradient accumulation); the
    learning rate follows it linearly, see :meth:`lr`. Epoch counts may be fractional after
    :meth:`scaled`.
    """

    size: str
    epochs: float = 1600  # [Hiera] the released IN1K MAE models; the ablations use 400
    warmup_epochs: float = 40  # [Hiera] linear warmup, per step, then cosine
    batch_size: int = 4096  # [Hiera] effective batch of the reference run
    base_lr: float = 8e-4  # [Hiera] per `lr_reference_batch` images (linear scaling rule)
    lr_reference_batch: int = 4096  # [Hiera] "lr = base_lr * batch / 4096"
    min_lr: float = 0.0  # [Hiera] cosine decay to 0
    betas: Tuple[float, float] = (0.9, 0.95)  # [Hiera], as [MAE]: a lower beta2 for stability
    weight_decay: float = 0.05  # [Hiera]; none on biases, norms, position embeddings, tokens
    layer_decay: Optional[float] = None  # no layer-wise lr decay when pretraining
    drop_path_rate: float = 0.0  # [Hiera] per size, see _PRETRAIN_DROP_PATH
    mask_ratio: float = 0.6  # [Hiera] images: 60% of the mask units are dropped (video: 0.9)
    norm_pix_loss: bool = True  # [Hiera] targets are per-patch normalised pixels (as [MAE])
    input_size: int = 224  # [Hiera] ImageNet-1k resolution
    crop_scale: Tuple[float, float] = (0.2, 1.0)  # [Hiera]/[MAE] RandomResizedCrop scale
    interpolation: str = "bicubic"  # [Hiera]/[MAE] RandomResizedCrop interpolation
    hflip: float = 0.5  # [Hiera]/[MAE] random horizontal flip probability

    def lr(self, batch_size: Optional[int] = None) -> float:
        """Peak learning rate for ``batch_size`` (default: the recipe's), by linear scaling."""
        return _lr_for_batch(self.base_lr, batch_size or self.batch_size, self.lr_reference_batch)

    def scaled(self, epochs: Optional[float] = None, batch_size: Optional[int] = None) -> "PretrainRecipe":
        """The same recipe on a smaller (or larger) budget.

        The warmup keeps its share of the run (40/1600 = 2.5% for the paper's preset) and the
        learning rate follows the batch through :meth:`lr`; everything else is unchanged.
        """
        new_epochs = self.epochs if epochs is None else epochs
        if new_epochs <= 0:
            raise ValueError(f"epochs must be positive, got {new_epochs}")
        warmup = self.warmup_epochs * new_epochs / self.epochs
        return dataclasses.replace(
            self, epochs=new_epochs, warmup_epochs=warmup,
            batch_size=self.batch_size if batch_size is None else int(batch_size),
        )

    def schedule_steps(self, steps_per_epoch: int) -> Tuple[int, int]:
        """``(total_steps, warmup_steps)`` for a loader of ``steps_per_epoch`` optimizer steps."""
        return _steps(self.epochs, self.warmup_epochs, steps_per_epoch)

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (JSON-friendly) of every field, e.g. to store next to a checkpoint."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class FinetuneRecipe:
    """Supervised fine-tuning of a (MAE-pretrained) Hiera image model on ImageNet-1k [Hiera appendix].

    ``batch_size`` is the effective batch; the learning rate follows it linearly, see :meth:`lr`.
    """

    size: str
    epochs: float = 100  # [Hiera] per size, see _FT_EPOCHS
    warmup_epochs: float = 5  # [Hiera] linear warmup, per step, then cosine
    batch_size: int = 1024  # [Hiera] effective batch of the reference run
    base_lr: float = 2e-3  # [Hiera] per size (see _FT_BASE_LR), per `lr_reference_batch` images
    lr_reference_batch: int = 1024  # [Hiera] "lr per 1024 batch"
    min_lr: float = 0.0  # [Hiera] cosine decay; the floor is not stated ([MAE] code uses 1e-6)
    betas: Tuple[float, float] = (0.9, 0.999)  # [Hiera] AdamW
    weight_decay: float = 0.05  # [Hiera]; none on biases, norms, position embeddings
    layer_decay: Optional[float] = 0.7  # [Hiera] layer-wise lr decay, per size
    drop_path_rate: float = 0.1  # [Hiera] 0.1, huge 0.3
    input_size: int = 224  # [Hiera]
    crop_scale: Tuple[float, float] = (0.08, 1.0)  # [timm]/[MAE] default RandomResizedCrop scale
    interpolation: str = "bicubic"  # [MAE] fine-tuning transform
    hflip: float = 0.5  # [timm] default
    rand_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # [Hiera] RandAugment (9, 0.5), timm spec
    reprob: float = 0.25  # [Hiera] random erasing probability
    remode: str = "pixel"  # [MAE] random erasing fills with per-pixel normal noise
    mixup: float = 0.8  # [Hiera] mixup alpha
    cutmix: float = 1.0  # [Hiera] cutmix alpha
    mixup_prob: float = 1.0  # [MAE] probability of applying mixup or cutmix to a batch
    mixup_switch_prob: float = 0.5  # [MAE] probability of cutmix instead of mixup
    label_smoothing: float = 0.1  # [Hiera]
    ema: bool = False  # [Hiera] EMA of the weights is optional; off by default
    ema_decay: float = 0.9999  # [timm] usual ModelEmaV2 decay when `ema` is on
    eval_crop_pct: float = 224 / 256  # [MAE]/[timm] resize to 256, center crop 224

    def lr(self, batch_size: Optional[int] = None) -> float:
        """Peak learning rate for ``batch_size`` (default: the recipe's), by linear scaling."""
        return _lr_for_batch(self.base_lr, batch_size or self.batch_size, self.lr_reference_batch)

    def scaled(self, epochs: Optional[float] = None, batch_size: Optional[int] = None) -> "FinetuneRecipe":
        """The same recipe on another budget: the warmup stays at the recipe's (5 epochs for the
        presets) but never exceeds 10% of the run (the share in the paper's shortest, 50-epoch
        schedule); the learning rate follows the batch through :meth:`lr`. Scale from the preset:
        a warmup cut by an earlier ``scaled`` is not grown back."""
        new_epochs = self.epochs if epochs is None else epochs
        if new_epochs <= 0:
            raise ValueError(f"epochs must be positive, got {new_epochs}")
        warmup = min(self.warmup_epochs, _FT_MAX_WARMUP_FRACTION * new_epochs)
        return dataclasses.replace(
            self, epochs=new_epochs, warmup_epochs=warmup,
            batch_size=self.batch_size if batch_size is None else int(batch_size),
        )

    def schedule_steps(self, steps_per_epoch: int) -> Tuple[int, int]:
        """``(total_steps, warmup_steps)`` for a loader of ``steps_per_epoch`` optimizer steps."""
        return _steps(self.epochs, self.warmup_epochs, steps_per_epoch)

    def mixup_args(self, num_classes: int) -> Dict[str, Any]:
        """Keyword arguments for ``timm.data.Mixup`` (which also applies the label smoothing)."""
        return dict(
            mixup_alpha=self.mixup, cutmix_alpha=self.cutmix, prob=self.mixup_prob,
            switch_prob=self.mixup_switch_prob, mode="batch", label_smoothing=self.label_smoothing,
            num_classes=num_classes,
        )

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict (JSON-friendly) of every field, e.g. to store next to a checkpoint."""
        return dataclasses.asdict(self)


# ------------------------------------------------------------------ video (Kinetics-400) recipes
# Per-size tables for the 16x224 video models. Only base .. huge were released as video models;
# tiny and small get the image values so that custom small video models have a recipe too.
#
# MAE pretraining, drop path: [Hiera] image table (_PRETRAIN_DROP_PATH) reused. The video table could
# not be read offline; the trunks are the same and [MAE-ST] pretrains without drop path, so this is
# the value for the trunk, not a confirmed video number.
_VIDEO_PRETRAIN_DROP_PATH = dict(_PRETRAIN_DROP_PATH)
# Fine-tuning, layer decay: 0.75 is [MAE-ST] FINETUNE.md's value for ViT-L, whose 24 blocks are
# Hiera-B/B+'s depth; Hiera-L/H have 48 blocks, where 0.75 ** 48 would all but freeze the stem, so
# they keep the [Hiera] image value for that depth (0.85); tiny / small keep the image value 0.65.
# Not confirmed against Hiera's K400 fine-tuning table, which could not be read offline.
_VIDEO_FT_LAYER_DECAY = {"tiny": 0.65, "small": 0.65, "base": 0.75, "base_plus": 0.75, "large": 0.85, "huge": 0.85}
# Fine-tuning, drop path: 0.2 is [MAE-ST] FINETUNE.md (ViT-L); huge goes up to 0.3 as in the [Hiera]
# image table; tiny / small keep the image value 0.1. Same caveat as above.
_VIDEO_FT_DROP_PATH = {"tiny": 0.1, "small": 0.1, "base": 0.2, "base_plus": 0.2, "large": 0.2, "huge": 0.3}


@dataclass(frozen=True)
class VideoPretrainRecipe(PretrainRecipe):
    """MAE pretraining of a Hiera video model on Kinetics-400 (16 frames, 224px) [Hiera appendix].

    ``batch_size`` counts videos; with ``repeat_aug = R`` each video gives R clips (decoded once),
    so the model sees ``R * batch_size`` clips per step and the learning rate still follows the
    number of videos, as [MAE-ST]'s ``main_pretrain.py`` scales it.
    """

    epochs: float = 3200  # [Hiera] the released K400 MAE models; the ablations use 800 (and 1600)
    warmup_epochs: float = 120  # [Hiera] linear warmup, per step, then cosine
    batch_size: int = 512  # [Hiera] effective batch of the reference run
    base_lr: float = 8e-4  # [Hiera] per `lr_reference_batch` videos: 1.6e-3 at batch 512
    lr_reference_batch: int = 256  # [Hiera]/[MAE-ST] "lr = base_lr * batch / 256" for video
    mask_ratio: float = 0.9  # [Hiera] (as [MAE-ST]): 90% of the 1x8x8-token mask units dropped
    crop_scale: Tuple[float, float] = (0.5, 1.0)  # [MAE-ST] main_pretrain.py jitter_scales_relative
    crop_ratio: Tuple[float, float] = (0.75, 1.3333)  # [MAE-ST] main_pretrain.py jitter_aspect_relative
    interpolation: str = "bilinear"  # [MAE-ST] (SlowFast's decoder) resizes clips bilinearly
    num_frames: int = 16  # [Hiera] 16x224 models
    frame_stride: float = 4  # [Hiera]/[MAE-ST] --sampling_rate 4 (at 30 fps)
    target_fps: float = 30.0  # Kinetics' frame rate; other rates are sampled at the same pace in seconds
    repeat_aug: int = 1  # [MAE-ST] PRETRAIN.md uses --repeat_aug 4; not stated for Hiera: off by default


@dataclass(frozen=True)
class VideoFinetuneRecipe(FinetuneRecipe):
    """Supervised fine-tuning of a (MAE-pretrained) Hiera video model on Kinetics-400.

    The values are [MAE-ST]'s reference fine-tuning command (``FINETUNE.md``, ViT-L), which Hiera's
    video fine-tuning builds on, with the per-size tables above; Hiera's own K400 fine-tuning table
    could not be read offline, so no value here claims to be from it. ``batch_size`` counts videos;
    the learning rate follows the clips per step (videos x ``repeat_aug``), as [MAE-ST]'s
    ``main_finetune.py`` scales it.
    """

    epochs: float = 50  # [MAE-ST] FINETUNE.md --epochs 50
    warmup_epochs: float = 5  # [MAE-ST] FINETUNE.md --warmup_epochs 5
    batch_size: int = 256  # the lr rule's reference batch; [MAE-ST] does not state its GPU count
    base_lr: float = 2.4e-3  # [MAE-ST] FINETUNE.md --blr 0.0024, per 256 clips
    lr_reference_batch: int = 256  # [MAE-ST] "absolute_lr = base_lr * total_batch_size / 256"
    min_lr: float = 1e-6  # [MAE-ST] main_finetune.py default
    layer_decay: Optional[float] = 0.75  # per size, see _VIDEO_FT_LAYER_DECAY
    drop_path_rate: float = 0.2  # per size, see _VIDEO_FT_DROP_PATH
    head_dropout: float = 0.3  # [MAE-ST] FINETUNE.md --dropout 0.3 (before the classifier)
    clip_grad: Optional[float] = 5.0  # [MAE-ST] FINETUNE.md --clip_grad 5.0
    crop_scale: Tuple[float, float] = (0.08, 1.0)  # [MAE-ST] main_finetune.py jitter_scales_relative
    crop_ratio: Tuple[float, float] = (0.75, 1.3333)  # [MAE-ST] main_finetune.py jitter_aspect_relative
    interpolation: str = "bilinear"  # [MAE-ST] (SlowFast's decoder)
    rand_augment: Optional[str] = "rand-m7-mstd0.5-inc1"  # [MAE-ST] FINETUNE.md --aa, one policy per clip
    reprob: float = 0.25  # [MAE-ST] main_finetune.py default, one box through the whole clip
    remode: str = "pixel"  # [MAE-ST] main_finetune.py default
    mixup: float = 0.8  # [MAE-ST] FINETUNE.md --mixup 0.8 (mixing whole clips)
    cutmix: float = 1.0  # [MAE-ST] FINETUNE.md --cutmix 1.0 (one box through all frames)
    mixup_prob: float = 1.0  # [MAE-ST] FINETUNE.md --mixup_prob 1.0
    mixup_switch_prob: float = 0.5  # [MAE-ST] main_finetune.py default
    label_smoothing: float = 0.1  # [MAE-ST] FINETUNE.md --smoothing 0.1
    num_frames: int = 16  # [Hiera] 16x224 models
    frame_stride: float = 4  # [MAE-ST] FINETUNE.md --sampling_rate 4
    target_fps: float = 30.0
    repeat_aug: int = 1  # [MAE-ST] FINETUNE.md uses --repeat_aug 2; off by default
    eval_views: str = "multi"  # [Hiera] K400 accuracy is reported on 3 spatial x 5 temporal views


Recipe = Union[PretrainRecipe, FinetuneRecipe]


def is_video_name(name: str) -> bool:
    """True for a video zoo name (``hiera_base_16x224``, ``mae_hiera_large_16x224.mae_k400``)."""
    return "16x" in str(name).split(".", 1)[0].lower()


def _video_size(name_or_size: Union[str, nn.Module]) -> str:
    if isinstance(name_or_size, nn.Module):
        zoo_name = getattr(name_or_size, "zoo_name", None)
        if zoo_name is None:
            raise ValueError("this model was not built by the zoo (no `zoo_name`); pass a size such as 'base'")
        name_or_size = zoo_name
    name = str(name_or_size).split(".", 1)[0].lower()
    if name in SIZES:
        return name
    if not is_video_name(name):
        raise ValueError(f"{name_or_size!r} is an image model; the video recipes are for the 16x224 models "
                         "(hiera_base_16x224, ...); use pretrain_recipe / finetune_recipe for images")
    return model_size(name.replace("_16x224", "_224"))


def video_pretrain_recipe(name_or_size: Union[str, nn.Module]) -> VideoPretrainRecipe:
    """The Kinetics-400 MAE pretraining preset for a video zoo name (``hiera_base_16x224``) or size
    (at full scale; shrink it with :meth:`VideoPretrainRecipe.scaled`)."""
    size = _video_size(name_or_size)
    return VideoPretrainRecipe(size=size, drop_path_rate=_VIDEO_PRETRAIN_DROP_PATH[size])


def video_finetune_recipe(name_or_size: Union[str, nn.Module]) -> VideoFinetuneRecipe:
    """The Kinetics-400 fine-tuning preset for a video zoo name or size (at full scale)."""
    size = _video_size(name_or_size)
    return VideoFinetuneRecipe(size=size, layer_decay=_VIDEO_FT_LAYER_DECAY[size],
                               drop_path_rate=_VIDEO_FT_DROP_PATH[size])


def model_size(name_or_size: Union[str, nn.Module]) -> str:
    """The size (``"tiny"`` ... ``"huge"``) of a zoo model name (``"hiera_base_224"``,
    ``"mae_hiera_base_plus_224"``, ``"hiera_small_abswin_256"``), a bare size, or a model built by
    the zoo (it carries ``zoo_name``). Video model names are refused: their recipes are
    :func:`video_pretrain_recipe` / :func:`video_finetune_recipe`."""
    if isinstance(name_or_size, nn.Module):
        zoo_name = getattr(name_or_size, "zoo_name", None)
        if zoo_name is None:
            raise ValueError("this model was not built by the zoo (no `zoo_name`); pass a size such as 'base'")
        name_or_size = zoo_name
    name = str(name_or_size).split(".", 1)[0].lower()  # "hiera_base_224.mae_in1k" -> checkpoint dropped
    if name in SIZES:
        return name
    if "16x" in name:
        raise ValueError(
            f"{name_or_size!r} is a video model; these are the image (ImageNet-1k) recipes: use "
            "video_pretrain_recipe / video_finetune_recipe (Kinetics-400)"
        )
    stem = name[len("mae_"):] if name.startswith("mae_") else name
    stem = stem[len("hiera_"):] if stem.startswith("hiera_") else stem
    for size in SIZES:  # "base_plus" before "base"
        if stem == size or stem.startswith(size + "_"):
            return size
    raise ValueError(f"cannot tell the model size of {name_or_size!r}; expected a zoo name or one of {SIZES}")


def pretrain_recipe(name_or_size: Union[str, nn.Module]) -> PretrainRecipe:
    """The paper's MAE pretraining preset for a zoo model name or size (at full scale; shrink it
    with :meth:`PretrainRecipe.scaled`)."""
    size = model_size(name_or_size)
    return PretrainRecipe(size=size, drop_path_rate=_PRETRAIN_DROP_PATH[size])


def finetune_recipe(name_or_size: Union[str, nn.Module]) -> FinetuneRecipe:
    """The paper's ImageNet-1k fine-tuning preset for a zoo model name or size (at full scale;
    shrink it with :meth:`FinetuneRecipe.scaled`)."""
    size = model_size(name_or_size)
    return FinetuneRecipe(
        size=size, epochs=_FT_EPOCHS[size], base_lr=_FT_BASE_LR[size], layer_decay=_FT_LAYER_DECAY[size],
        drop_path_rate=_FT_DROP_PATH[size],
    )


# ------------------------------------------------------------------ parameter groups
def no_weight_decay_names(model: nn.Module) -> List[str]:
    """Names of the multi-dimensional parameters that get no weight decay.

    1-D parameters (biases, norm weights) are excluded by shape elsewhere. On top of them: what the
    model's ``no_weight_decay()`` lists (its position embeddings), every other position embedding
    (the MAE decoder's ``decoder_pos_embed``) and learned tokens (``mask_token``), following timm's
    convention that embeddings and tokens are not decayed: decay would pull them to zero, which
    carries no regularising meaning for a lookup table.
    """
    names = set()
    if hasattr(model, "no_weight_decay"):
        names.update(model.no_weight_decay())
    for name, _ in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "pos_embed" in leaf or leaf.endswith("_token"):
            names.add(name)
    return sorted(names)


def param_groups(
    model: nn.Module, weight_decay: float, layer_decay: Optional[float] = None
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups: weight decay except on biases, norms, embeddings and tokens; with
    ``layer_decay``, a per-depth ``lr_scale`` as well (layer-wise learning-rate decay).

    Built with timm (``param_groups_layer_decay`` / ``param_groups_weight_decay``), whose layer map
    comes from ``model.group_matcher()``. For a Hiera of ``L`` blocks, timm gives (measured, and
    asserted in tests/test_recipes.py):

    ========================================  =========  ========================
    parameters                                layer id   ``lr_scale``
    ========================================  =========  ========================
    stem: ``patch_embed``, ``pos_embed*``      0          ``decay ** (L + 1)``
    ``blocks.i``                              ``i + 1``  ``decay ** (L - i)``
    final ``norm`` (joins the last block)     ``L``      ``decay ** 1``
    ``head``                                  ``L + 1``  ``1.0``
    ========================================  =========  ========================

    i.e. ``lr_scale = decay ** (L + 1 - layer_id)``. This is the BEiT/MAE convention, except that
    MAE's code gives the final norm a scale of 1 where timm's group matcher (``norm`` grouped with
    the last block) gives ``decay``, a negligible difference.

    Every group carries ``lr_scale`` (1.0 without layer decay) and ``weight_decay``; the schedulers
    here and timm's multiply the scheduled lr by ``lr_scale``.
    """
    from timm.optim import param_groups_layer_decay, param_groups_weight_decay

    skip = no_weight_decay_names(model)
    if layer_decay is not None:
        if not 0.0 < layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
        groups = param_groups_layer_decay(
            model, weight_decay=weight_decay, no_weight_decay_list=skip, layer_decay=layer_decay,
        )
    else:
        groups = param_groups_weight_decay(model, weight_decay=weight_decay, no_weight_decay_list=skip)
    for group in groups:
        group.setdefault("lr_scale", 1.0)
    return groups


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` with the fused kernel wherever it runs (float parameters on CPU or CUDA).

    The fused step updates every tensor in one pass instead of a dozen elementwise calls per
    parameter: 35 ms against 105-180 ms for the 62M parameters of MAE Hiera-S on a 2-core CPU, 3-4%
    of a bf16 training step at batch 8. It works with GradScaler (also after ``unscale_``) and DDP, and
    its state dict is the same as the unfused optimizer's, so checkpoints move between the two.
    """
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, fused=fused or None, **kwargs)


def build_optimizer(model: nn.Module, recipe: Recipe, batch_size: Optional[int] = None) -> torch.optim.AdamW:
    """AdamW as the recipe says: betas, weight decay with the exclusions of :func:`param_groups`,
    layer-wise lr decay (fine-tuning) and the peak lr scaled to ``batch_size`` (the EFFECTIVE batch,
    default: the recipe's). Each group's ``lr`` starts at ``peak_lr * lr_scale``; the group keeps
    ``lr_scale`` for the scheduler, and ``initial_lr`` is not set (the scheduler owns the lr)."""
    peak = recipe.lr(batch_size)
    groups = param_groups(model, recipe.weight_decay, layer_decay=recipe.layer_decay)
    for group in groups:
        group["lr"] = peak * group["lr_scale"]
    return adamw(groups, lr=peak, betas=tuple(recipe.betas), weight_decay=recipe.weight_decay)


# ------------------------------------------------------------------ learning-rate schedule
def lr_schedule(step: float, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float = 0.0) -> float:
    """Learning rate at optimizer step ``step`` (0-based): linear warmup then half-cosine.

    * ``step < warmup_steps``: ``base_lr * step / warmup_steps`` (from 0, as [MAE]'s per-iteration
      warmup: the first step runs at lr 0 and only primes AdamW's moments);
    * after: ``min_lr + (base_lr - min_lr) * (1 + cos(pi * p)) / 2`` with
      ``p = (step - warmup_steps) / (total_steps - warmup_steps)``, clamped to ``[0, 1]`` so steps
      past the end stay at ``min_lr``.
    """
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps must be in [0, total_steps={total_steps}], got {warmup_steps}")
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    decay_steps = total_steps - warmup_steps
    progress = min(1.0, max(0.0, (step - warmup_steps) / decay_steps)) if decay_steps > 0 else 1.0
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosineLR:
    """Per-step :func:`lr_schedule` applied to an optimizer: each group's
    ``lr = lr_schedule(step) * group.get("lr_scale", 1.0)``.

    Call :meth:`step` once after every ``optimizer.step()``. The state is the step count (and the
    schedule's parameters), so ``load_state_dict`` puts the learning rates back exactly where they
    were: resume is bit-exact.

    Why not timm's ``CosineLRScheduler(t_in_epochs=False)``: it honours ``lr_scale`` too, but its
    cosine spans the whole run unless ``warmup_prefix=True`` is remembered, its ``state_dict`` does
    not hold the current step (the caller must re-issue ``step_update``), and it restores by
    overwriting its whole ``__dict__``. This class is a closed form of the step and nothing else,
    which is what the tests check against.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        warmup_steps: int,
        base_lr: float,
        min_lr: float = 0.0,
        step: int = 0,
    ):
        lr_schedule(0, total_steps, warmup_steps, base_lr, min_lr)  # validates the arguments
        self.optimizer = optimizer
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.base_lr = float(base_lr)
        self.min_lr = float(min_lr)
        self.last_step = int(step)
        self._apply()

    def lr_at(self, step: int) -> float:
        """The scheduled (unscaled) lr at ``step``."""
        return lr_schedule(step, self.total_steps, self.warmup_steps, self.base_lr, self.min_lr)

    @property
    def lr(self) -> float:
        """The unscaled lr of the current step (what to log)."""
        return self.lr_at(self.last_step)

    def get_last_lr(self) -> List[float]:
        """Per-group lrs now in the optimizer (torch scheduler API)."""
        return [group["lr"] for group in self.optimizer.param_groups]

    def _apply(self) -> None:
        lr = self.lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> float:
        """Advance to the next optimizer step and set its lr; returns the new unscaled lr."""
        self.last_step += 1
        self._apply()
        return self.lr

    def set_step(self, step: int) -> None:
        """Jump to ``step`` (e.g. when resuming from a step count)."""
        self.last_step = int(step)
        self._apply()

    def state_dict(self) -> Dict[str, Any]:
        return dict(
            last_step=self.last_step, total_steps=self.total_steps, warmup_steps=self.warmup_steps,
            base_lr=self.base_lr, min_lr=self.min_lr,
        )

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.total_steps = int(state["total_steps"])
        self.warmup_steps = int(state["warmup_steps"])
        self.base_lr = float(state["base_lr"])
        self.min_lr = float(state["min_lr"])
        self.last_step = int(state["last_step"])
        self._apply()


def build_scheduler(
    optimizer: torch.optim.Optimizer, recipe: Recipe, steps_per_epoch: int, batch_size: Optional[int] = None
) -> WarmupCosineLR:
    """:class:`WarmupCosineLR` for ``recipe`` with a loader of ``steps_per_epoch`` optimizer steps
    and the effective ``batch_size`` (default: the recipe's)."""
    total, warmup = recipe.schedule_steps(steps_per_epoch)
    return WarmupCosineLR(optimizer, total, warmup, base_lr=recipe.lr(batch_size), min_lr=recipe.min_lr)
