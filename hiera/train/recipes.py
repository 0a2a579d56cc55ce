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

* ``[Hiera Tab. N]``: Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
  Bells-and-Whistles", ICML 2023, arXiv 2306.00989, by the number of the appendix table:
  Tab. 14a (MAE pretraining, images), Tab. 14b (fine-tuning, images), Tab. 11a (MAE pretraining,
  video), Tab. 11b (fine-tuning, video); Tab. 4 for the video evaluation protocol. The values were
  checked against the text of those tables as the project's reference notes quote them
  (``hiera-paper-numbers.md``), and ``tests/test_recipes.py`` asserts every preset against the
  same numbers, written out as data.
* ``[MAE]``: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022, and its
  reference code (``main_pretrain.py`` / ``main_finetune.py``), which Hiera's recipe follows where
  the Hiera tables are silent (e.g. random-erasing mode, mixup switch probability).
* ``[timm]``: defaults of timm's data pipeline that the recipe inherits.
* ``[MAE-ST]``: Feichtenhofer et al., "Masked Autoencoders As Spatiotemporal Learners", NeurIPS
  2022, through its reference code (github.com/facebookresearch/mae_st: ``PRETRAIN.md``,
  ``FINETUNE.md``, ``main_pretrain.py``, ``main_finetune.py``), on which Hiera's video training is
  built: clip sampling and video augmentation details the Hiera tables do not list.

A value the tables do not give says so in its comment ("not in the paper's tables"), then what is
used and where it comes from.

The image recipes (ImageNet-1k, 224px) are :func:`pretrain_recipe` / :func:`finetune_recipe`, which
refuse video model names; the video recipes (Kinetics-400, 16 frames at 224px) are
:func:`video_pretrain_recipe` / :func:`video_finetune_recipe` (:class:`VideoPretrainRecipe`,
:class:`VideoFinetuneRecipe`), which differ in mask ratio, epochs, batch, learning rate, crops and
clip sampling. Both video recipes are Hiera's own (Tab. 11a / 11b). Hiera-T and -S have no video
models in the paper, so their video values are borrowed (see the per-size tables below).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from timm.optim import param_groups_layer_decay, param_groups_weight_decay

from ..weights import zoo_name_for

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
# MAE pretraining, images [Hiera Tab. 14a]: drop path 0 (T, S), 0.2 (B, B+, L), 0.3 (H).
_PRETRAIN_DROP_PATH = {"tiny": 0.0, "small": 0.0, "base": 0.2, "base_plus": 0.2, "large": 0.2, "huge": 0.3}

# Fine-tuning, images [Hiera Tab. 14b]:
# layer decay 0.65 (T, S), 0.7 (B, B+), 0.85 (L, H).
_FT_LAYER_DECAY = {"tiny": 0.65, "small": 0.65, "base": 0.7, "base_plus": 0.7, "large": 0.85, "huge": 0.85}
# lr 2e-3 (T, S, B) or 1e-3 (B+, L, H), at batch 1024.
_FT_BASE_LR = {"tiny": 2e-3, "small": 2e-3, "base": 2e-3, "base_plus": 1e-3, "large": 1e-3, "huge": 1e-3}
# epochs 300 (T), 200 (S), 100 (B, B+), 50 (L, H).
_FT_EPOCHS = {"tiny": 300, "small": 200, "base": 100, "base_plus": 100, "large": 50, "huge": 50}
# drop path 0.1 (T to B+), "0.1 or 0.2" (L), 0.3 (H). The table gives two values for L without
# saying when each applies; 0.1 is used (the value of T to B+, and the preset's value so far).
_FT_DROP_PATH = {"tiny": 0.1, "small": 0.1, "base": 0.1, "base_plus": 0.1, "large": 0.1, "huge": 0.3}

# Fine-tuning warms up for 5 epochs on images [Hiera Tab. 14b] and 10 on video [Hiera Tab. 11b];
# when a recipe is shrunk to a short run the warmup is capped at this fraction of the run, so a
# 10-epoch run does not spend half of it warming up. 0.1 is the largest share in the paper's own
# schedules (5 of 50 epochs for image L/H, 10 of 100 for video L/H). Not a table value: a rule of
# this module for shrunk runs.
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
    """MAE pretraining of a Hiera image model (ImageNet-1k, 224px) [Hiera Tab. 14a].

    ``batch_size`` is the EFFECTIVE batch (per device x devices x gradient accumulation); the
    learning rate follows it linearly, see :meth:`lr`. Epoch counts may be fractional after
    :meth:`scaled`.
    """

    size: str
    epochs: float = 1600  # [Hiera Tab. 14a] 1600 epochs (the ablations, Tab. 3, use 400)
    warmup_epochs: float = 40  # [Hiera Tab. 14a] 40 warmup epochs (linear, per step, then cosine)
    batch_size: int = 4096  # [Hiera Tab. 14a] batch 4096 (effective batch of the reference run)
    base_lr: float = 8e-4  # [Hiera Tab. 14a] lr 8e-4 at batch 4096 (linear scaling rule)
    lr_reference_batch: int = 4096  # [Hiera Tab. 14a] the batch of the lr above
    min_lr: float = 0.0  # not in the paper's tables; cosine decay to 0, as [MAE] pretraining
    betas: Tuple[float, float] = (0.9, 0.95)  # [Hiera Tab. 14a] AdamW (0.9, 0.95)
    weight_decay: float = 0.05  # [Hiera Tab. 14a] 0.05 (none on biases, norms, embeddings, tokens: [MAE]/[timm])
    layer_decay: Optional[float] = None  # not in the paper's tables; no layer-wise lr decay when pretraining, as [MAE]
    drop_path_rate: float = 0.0  # [Hiera Tab. 14a] per size, see _PRETRAIN_DROP_PATH
    mask_ratio: float = 0.6  # [Hiera Tab. 14a] 0.6 of the (32x32-pixel) mask units dropped
    norm_pix_loss: bool = True  # not in the paper's tables; per-patch normalised pixel targets, as [MAE]
    input_size: int = 224  # [Hiera Tab. 2] the 224px ImageNet-1k models
    crop_scale: Tuple[float, float] = (0.2, 1.0)  # [Hiera Tab. 14a] random-resized crop (0.2, 1)
    interpolation: str = "bicubic"  # not in the paper's tables; [MAE] main_pretrain.py
    hflip: float = 0.5  # [Hiera Tab. 14a] horizontal flip; the probability 0.5 is not in the tables ([MAE])

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
    """Supervised fine-tuning of a (MAE-pretrained) Hiera image model on ImageNet-1k [Hiera Tab. 14b].

    ``batch_size`` is the effective batch; the learning rate follows it linearly, see :meth:`lr`.
    """

    size: str
    epochs: float = 100  # [Hiera Tab. 14b] per size, see _FT_EPOCHS
    warmup_epochs: float = 5  # [Hiera Tab. 14b] 5 warmup epochs (linear, per step, then cosine)
    batch_size: int = 1024  # [Hiera Tab. 14b] batch 1024 (effective batch of the reference run)
    base_lr: float = 2e-3  # [Hiera Tab. 14b] per size (see _FT_BASE_LR), at batch 1024
    lr_reference_batch: int = 1024  # [Hiera Tab. 14b] the batch of the lr above
    min_lr: float = 0.0  # not in the paper's tables; cosine decay to 0 ([MAE] code floors at 1e-6)
    betas: Tuple[float, float] = (0.9, 0.999)  # not in the paper's tables; AdamW (0.9, 0.999) as [MAE] main_finetune.py
    weight_decay: float = 0.05  # not in the paper's tables; [MAE] fine-tuning's 0.05 (same exclusions)
    layer_decay: Optional[float] = 0.7  # [Hiera Tab. 14b] per size, see _FT_LAYER_DECAY
    drop_path_rate: float = 0.1  # [Hiera Tab. 14b] per size, see _FT_DROP_PATH
    input_size: int = 224  # [Hiera Tab. 2] the 224px ImageNet-1k models
    crop_scale: Tuple[float, float] = (0.08, 1.0)  # not in the paper's tables; [timm]/[MAE] RandomResizedCrop
    interpolation: str = "bicubic"  # not in the paper's tables; [MAE] fine-tuning transform
    hflip: float = 0.5  # not in the paper's tables; [timm] default
    rand_augment: Optional[str] = "rand-m9-mstd0.5-inc1"  # [Hiera Tab. 14b] RandAugment (9, 0.5), as a timm spec
    reprob: float = 0.25  # not in the paper's tables; [MAE] main_finetune.py random erasing probability
    remode: str = "pixel"  # not in the paper's tables; [MAE] random erasing fills with per-pixel normal noise
    mixup: float = 0.8  # [Hiera Tab. 14b] mixup 0.8 (alpha)
    cutmix: float = 1.0  # [Hiera Tab. 14b] cutmix 1.0 (alpha)
    mixup_prob: float = 1.0  # not in the paper's tables; [MAE] probability of mixup or cutmix on a batch
    mixup_switch_prob: float = 0.5  # not in the paper's tables; [MAE] probability of cutmix instead of mixup
    label_smoothing: float = 0.1  # [Hiera Tab. 14b] label smoothing 0.1
    ema: bool = False  # not in the paper's tables; EMA of the weights off by default
    ema_decay: float = 0.9999  # not in the paper's tables; [timm] usual ModelEmaV2 decay when `ema` is on
    eval_crop_pct: float = 224 / 256  # not in the paper's tables; [MAE]/[timm] resize to 256, center crop 224

    def lr(self, batch_size: Optional[int] = None) -> float:
        """Peak learning rate for ``batch_size`` (default: the recipe's), by linear scaling."""
        return _lr_for_batch(self.base_lr, batch_size or self.batch_size, self.lr_reference_batch)

    def scaled(self, epochs: Optional[float] = None, batch_size: Optional[int] = None) -> "FinetuneRecipe":
        """The same recipe on another budget: the warmup stays at the recipe's (5 epochs for the
        image presets, 10 for video) but never exceeds 10% of the run (the largest share in the
        paper's schedules: 5 of 50 epochs, 10 of 100); the learning rate follows the batch through
        :meth:`lr`. Scale from the preset: a warmup cut by an earlier ``scaled`` is not grown back."""
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
# Per-size tables for the 16x224 video models. The paper trains video models of sizes B, B+, L and H
# only; T and S get a value here so that custom small video models have a recipe too, and each of
# those values says where it is borrowed from ("not in the paper's tables").
#
# MAE pretraining, video [Hiera Tab. 11a]: drop path B 0.1, B+ and L 0.2, H 0.4. T, S: not in the
# paper's tables; the image value of Tab. 14a (0.0) is used, as T/S drop less than B there too.
_VIDEO_PRETRAIN_DROP_PATH = {"tiny": 0.0, "small": 0.0, "base": 0.1, "base_plus": 0.2, "large": 0.2, "huge": 0.4}
# [Hiera Tab. 11a] lr 8e-4, H 3.2e-4 ("at 3200 epochs", the preset's length), at batch 512.
# T, S: not in the paper's tables; B's 8e-4 is used.
_VIDEO_PRETRAIN_BASE_LR = {"tiny": 8e-4, "small": 8e-4, "base": 8e-4, "base_plus": 8e-4, "large": 8e-4, "huge": 3.2e-4}

# Fine-tuning, video [Hiera Tab. 11b]. T, S: not in the paper's tables; they take the B/B+ column
# throughout (the nearest sizes the table covers).
# lr 8e-4, H 4e-4, at batch 256.
_VIDEO_FT_BASE_LR = {"tiny": 8e-4, "small": 8e-4, "base": 8e-4, "base_plus": 8e-4, "large": 8e-4, "huge": 4e-4}
# 150 epochs (B, B+) or 100 (L, H).
_VIDEO_FT_EPOCHS = {"tiny": 150, "small": 150, "base": 150, "base_plus": 150, "large": 100, "huge": 100}
# Layer decay: the table gives TWO values for B/B+, 0.85 or 0.8 "by pretraining length", and three
# for L/H, 0.925 / 0.9 / 0.875, without saying (in the text available here) which pretraining length
# each belongs to. Used: the LAST value of each list, 0.8 (B, B+) and 0.875 (L, H), on the assumption
# that the lists run from the shortest pretraining (800 epochs in the ablations, Tab. 3) to the
# longest (3200, Tab. 11a), which puts the last value at 3200 epochs: the preset's pretraining
# length and that of the released K400 MAE checkpoints. An assumption, not a confirmed mapping:
# after a shorter pretraining, 0.85 (B, B+) / 0.925 (L, H) may be the paper's value instead.
_VIDEO_FT_LAYER_DECAY = {"tiny": 0.8, "small": 0.8, "base": 0.8, "base_plus": 0.8, "large": 0.875, "huge": 0.875}
# Drop path 0.2 (B, B+, L) or 0.3 (H).
_VIDEO_FT_DROP_PATH = {"tiny": 0.2, "small": 0.2, "base": 0.2, "base_plus": 0.2, "large": 0.2, "huge": 0.3}
# Dropout before the head 0.3 (B, B+) or 0.5 (L, H).
_VIDEO_FT_HEAD_DROPOUT = {"tiny": 0.3, "small": 0.3, "base": 0.3, "base_plus": 0.3, "large": 0.5, "huge": 0.5}


@dataclass(frozen=True)
class VideoPretrainRecipe(PretrainRecipe):
    """MAE pretraining of a Hiera video model on Kinetics-400 (16 frames, 224px) [Hiera Tab. 11a].

    ``batch_size`` counts videos; with ``repeat_aug = R`` each video gives R clips (decoded once),
    so the model sees ``R * batch_size`` clips per step and the learning rate still follows the
    number of videos, as [MAE-ST]'s ``main_pretrain.py`` scales it.
    """

    epochs: float = 3200  # [Hiera Tab. 11a] 3200 epochs (the ablations, Tab. 3, use 800)
    warmup_epochs: float = 120  # [Hiera Tab. 11a] 120 warmup epochs (linear, per step, then cosine)
    batch_size: int = 512  # [Hiera Tab. 11a] batch 512; counted in videos here (the table does not say)
    base_lr: float = 8e-4  # [Hiera Tab. 11a] lr 8e-4 (H 3.2e-4) at batch 512, see _VIDEO_PRETRAIN_BASE_LR
    lr_reference_batch: int = 512  # [Hiera Tab. 11a] the batch of the lr above
    min_lr: float = 0.0  # not in the paper's tables; cosine decay to 0 as the image recipe ([MAE])
    betas: Tuple[float, float] = (0.9, 0.95)  # not in Tab. 11a's text; Tab. 14a's image value (as [MAE-ST])
    weight_decay: float = 0.05  # not in Tab. 11a's text; Tab. 14a's image value (as [MAE-ST])
    drop_path_rate: float = 0.1  # [Hiera Tab. 11a] per size, see _VIDEO_PRETRAIN_DROP_PATH
    mask_ratio: float = 0.9  # [Hiera Tab. 11a] mask ratio 0.9 (of the 1x8x8-token mask units)
    input_size: int = 224  # [Hiera Tab. 4] the 16x224 models
    crop_scale: Tuple[float, float] = (0.5, 1.0)  # [Hiera Tab. 11a] crop (0.5, 1)
    crop_ratio: Tuple[float, float] = (0.75, 1.3333)  # not in the paper's tables; [MAE-ST] jitter_aspect_relative
    interpolation: str = "bilinear"  # not in the paper's tables; [MAE-ST] (SlowFast's decoder) resizes bilinearly
    hflip: float = 0.5  # not in Tab. 11a's text; Tab. 14a's flip, [MAE-ST] flips with probability 0.5
    num_frames: int = 16  # [Hiera Tab. 4] the 16x224 models
    frame_stride: float = 4  # not in the paper's tables; [MAE-ST] --sampling_rate 4 (at 30 fps)
    target_fps: float = 30.0  # not in the paper's tables; Kinetics' frame rate, other rates keep the pace in seconds
    repeat_aug: int = 4  # [Hiera Tab. 11a] repeated sampling x4 (4 clips per decoded video)


@dataclass(frozen=True)
class VideoFinetuneRecipe(FinetuneRecipe):
    """Supervised fine-tuning of a (MAE-pretrained) Hiera video model on Kinetics-400 [Hiera Tab. 11b].

    The per-size values are the tables above. ``batch_size`` counts videos; the learning rate
    follows the clips per step (videos x ``repeat_aug``), as [MAE-ST]'s ``main_finetune.py`` scales
    it. The video-specific details the table does not list (clip sampling, crop, erasing mode, mixup
    switching) are [MAE-ST]'s, on which Hiera's video training is built.
    """

    epochs: float = 150  # [Hiera Tab. 11b] per size, see _VIDEO_FT_EPOCHS
    warmup_epochs: float = 10  # [Hiera Tab. 11b] 10 warmup epochs (linear, per step, then cosine)
    batch_size: int = 256  # [Hiera Tab. 11b] batch 256; counted in videos x repeat_aug here
    base_lr: float = 8e-4  # [Hiera Tab. 11b] lr 8e-4 (H 4e-4) at batch 256, see _VIDEO_FT_BASE_LR
    lr_reference_batch: int = 256  # [Hiera Tab. 11b] the batch of the lr above
    min_lr: float = 1e-6  # not in the paper's tables; [MAE-ST] main_finetune.py default
    betas: Tuple[float, float] = (0.9, 0.999)  # not in the paper's tables; [MAE-ST] main_finetune.py AdamW
    weight_decay: float = 0.05  # not in the paper's tables; [MAE-ST] main_finetune.py default
    layer_decay: Optional[float] = 0.8  # [Hiera Tab. 11b] per size, a choice: see _VIDEO_FT_LAYER_DECAY
    drop_path_rate: float = 0.2  # [Hiera Tab. 11b] per size, see _VIDEO_FT_DROP_PATH
    head_dropout: float = 0.3  # [Hiera Tab. 11b] dropout before the head, per size, see _VIDEO_FT_HEAD_DROPOUT
    clip_grad: Optional[float] = 5.0  # [Hiera Tab. 11b] gradient clipping 5.0
    input_size: int = 224  # [Hiera Tab. 4] the 16x224 models
    crop_scale: Tuple[float, float] = (0.08, 1.0)  # not in the paper's tables; [MAE-ST] jitter_scales_relative
    crop_ratio: Tuple[float, float] = (0.75, 1.3333)  # not in the paper's tables; [MAE-ST] jitter_aspect_relative
    interpolation: str = "bilinear"  # not in the paper's tables; [MAE-ST] (SlowFast's decoder)
    hflip: float = 0.5  # not in the paper's tables; [MAE-ST] flips with probability 0.5
    rand_augment: Optional[str] = "rand-m7-mstd0.5-inc1"  # [Hiera Tab. 11b] RandAugment (7, 0.5), one policy per clip
    reprob: float = 0.25  # not in the paper's tables; [MAE-ST] main_finetune.py, one box through the whole clip
    remode: str = "pixel"  # not in the paper's tables; [MAE-ST] main_finetune.py default
    mixup: float = 0.8  # [Hiera Tab. 11b] mixup 0.8 (mixing whole clips)
    cutmix: float = 1.0  # [Hiera Tab. 11b] cutmix 1.0 (one box through all frames)
    mixup_prob: float = 1.0  # not in the paper's tables; [MAE-ST] FINETUNE.md --mixup_prob 1.0
    mixup_switch_prob: float = 0.5  # not in the paper's tables; [MAE-ST] main_finetune.py default
    label_smoothing: float = 0.1  # [Hiera Tab. 11b] label smoothing 0.1
    num_frames: int = 16  # [Hiera Tab. 4] the 16x224 models
    frame_stride: float = 4  # not in the paper's tables; [MAE-ST] FINETUNE.md --sampling_rate 4
    target_fps: float = 30.0  # not in the paper's tables; Kinetics' frame rate
    repeat_aug: int = 1  # not in the paper's tables (Tab. 11b lists no repeated sampling); [MAE-ST] uses 2, off here
    eval_views: str = "multi"  # [Hiera Tab. 4] K400 accuracy on 3 spatial x 5 temporal views


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
    return VideoPretrainRecipe(size=size, base_lr=_VIDEO_PRETRAIN_BASE_LR[size],
                               drop_path_rate=_VIDEO_PRETRAIN_DROP_PATH[size])


def video_finetune_recipe(name_or_size: Union[str, nn.Module]) -> VideoFinetuneRecipe:
    """The Kinetics-400 fine-tuning preset for a video zoo name or size (at full scale)."""
    size = _video_size(name_or_size)
    return VideoFinetuneRecipe(
        size=size, epochs=_VIDEO_FT_EPOCHS[size], base_lr=_VIDEO_FT_BASE_LR[size],
        layer_decay=_VIDEO_FT_LAYER_DECAY[size], drop_path_rate=_VIDEO_FT_DROP_PATH[size],
        head_dropout=_VIDEO_FT_HEAD_DROPOUT[size],
    )


def model_size(name_or_size: Union[str, nn.Module]) -> str:
    """The size (``"tiny"`` ... ``"huge"``) of a zoo model name (``"hiera_base_224"``,
    ``"mae_hiera_base_plus_224"``, ``"hiera_small_abswin_256"``, SAM 2's ``"sam2_hiera_base_plus"``),
    a bare size, or a model built by the zoo (it carries ``zoo_name``). Video model names are refused: their recipes are
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
    stem = zoo_name_for(name, mae=False)
    # SAM 2's trunks (sam2_hiera_tiny, small, base_plus, large; mae_sam2_hiera_* as MAEs) have the
    # plain Hiera's width, heads and blocks per stage for each size (hiera.zoo.SIZES against
    # hiera.zoo.SAM2_TRUNKS: T 96/1/(1,2,7,2), S 96/1/(1,2,11,2), B+ 112/2/(2,3,16,3), L 144/2/(2,6,36,4)),
    # so the size's recipe (layer decay over the same depth, drop path, lr) applies to them as well.
    for prefix in ("sam2_hiera_", "hiera_"):
        if stem.startswith(prefix):
            stem = stem[len(prefix):]
            break
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
