"""``hiera pretrain``, ``hiera finetune`` and ``hiera evaluate``: the paper's recipes on your images
or videos (see :mod:`hiera.video_data` for the video layouts).

Each command is a thin layer over :func:`pretrain`, :func:`finetune` and :func:`evaluate`, which
tests and notebooks call directly. Several processes: ``torchrun --nproc_per_node N -m hiera.cli
pretrain ...`` (or ``torchrun ... $(which hiera) pretrain ...``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

import torch

from .cli import fail
from .weights import CheckpointError


# ---------------------------------------------------------------------------------- models
def _build(name: str, mae: bool, overrides: dict):
    """A zoo model (``hiera_tiny_224``; ``mae_`` added or removed to fit) with ``overrides``, or a
    custom one when ``name`` is ``custom`` (``overrides`` then is the whole config)."""
    from .mae import MaskedAutoencoderHiera
    from .model import Hiera
    from .zoo import create_model

    if name == "custom":
        return (MaskedAutoencoderHiera if mae else Hiera)(**overrides)
    base = name.split(".", 1)[0]
    base = base[len("mae_"):] if base.startswith("mae_") else base
    return create_model(("mae_" + base) if mae else base, **overrides)


def _init_weights(model, init: Optional[str], strict=None):
    """Load ``init`` (a weights path in any layout, or a zoo ``name.checkpoint``) into ``model``."""
    if not init:
        return None
    from .resolve import read_any
    from .weights import load_weights
    from .zoo import MODELS, read_weights, resolve_checkpoint

    name, _, ckpt = init.partition(".")
    if name in MODELS and not Path(init).exists():
        state = read_weights(resolve_checkpoint(MODELS[name], ckpt or None))
    else:
        state = read_any(init)[0]
    return load_weights(model, state, strict=strict, source=init)


def _schedule(recipe, steps_per_epoch: int, batch_size: int, lr: Optional[float]):
    from .recipes import lr_schedule

    total, warmup = recipe.schedule_steps(steps_per_epoch)
    peak = lr if lr is not None else recipe.lr(batch_size)
    return total, warmup, peak, (lambda step: lr_schedule(step, total, warmup, peak, recipe.min_lr))


def _finish(trainer, model, out: Path, classes=None) -> None:
    """Final artefacts on the main process: the model as a Hub-style folder, and the curves."""
    if not trainer.is_main:
        return
    from .engine import _unwrap
    from .plots import plot_curves

    final = _unwrap(model)
    final.save_pretrained(out / "model")
    if classes:
        (out / "model" / "classes.txt").write_text("\n".join(classes) + "\n")
    keys = ("loss", "lr") if trainer.task.name == "pretrain" else ("loss", "acc1", "lr")
    try:
        plot_curves(out / "metrics.jsonl", out / "curves.png", keys=keys)
    except ValueError:  # e.g. a run too short to have logged a value for every key
        plot_curves(out / "metrics.jsonl", out / "curves.png", keys=("loss",))


# ---------------------------------------------------------------------------------- video
def _video_run(data, model: Optional[str], config: Optional[dict], video: Optional[bool]) -> bool:
    """Whether a run is on video: asked for (``video=True``), a video model (``*_16x224``, or a
    custom config with a 3-D ``input_size``), or data made of videos. Mismatches are errors."""
    from .recipes import is_video_name
    from .video_data import is_video_source

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
    return video


def _clip_frames(net, num_frames: Optional[int], model: str) -> int:
    """Frames per clip: the model's, and a requested clip length must agree with it."""
    size = tuple(net.input_size)
    if len(size) != 3:
        raise ValueError(f"{model!r} takes images {size}, not clips; use a video model such as hiera_base_16x224")
    if num_frames is not None and num_frames != size[0] and not getattr(net, "dynamic_size", False):
        raise ValueError(
            f"clips of {num_frames} frames were asked for, but {model!r} takes {size[0]} frames (input "
            f"{list(size)}); drop --frames, or build the model for {num_frames} frames with "
            f"--config '{{\"input_size\": [{num_frames}, {size[1]}, {size[2]}]}}'"
        )
    return size[0]


def _with(recipe, **fields):
    """``recipe`` with the fields that are not None replaced."""
    import dataclasses

    fields = {k: v for k, v in fields.items() if v is not None}
    return dataclasses.replace(recipe, **fields) if fields else recipe


# ---------------------------------------------------------------------------------- commands
def pretrain(
    data,
    out,
    model: Optional[str] = None,
    epochs: Optional[float] = None,
    batch_size: int = 64,
    accum: int = 1,
    lr: Optional[float] = None,
    mask_ratio: Optional[float] = None,
    init: Optional[str] = None,
    resume: bool = False,
    val=None,
    config: Optional[dict] = None,
    video: Optional[bool] = None,
    num_frames: Optional[int] = None,
    frame_stride: Optional[float] = None,
    repeat_aug: Optional[int] = None,
    **run,
) -> dict:
    """MAE pretraining on an image or video folder (labels, if any, are ignored) with the paper's
    recipe for the model's size, shrunk to ``epochs`` and ``batch_size``. ``init`` continues from
    existing weights; ``resume`` continues an interrupted run in ``out``. ``run``: fields of
    :class:`hiera.engine.RunConfig` (precision, clip_grad, compile, save_every, seed, ...).

    Video (``video=True``, a ``*_16x224`` / 3-D custom model, or a folder / list of videos; the
    default model is then ``hiera_base_16x224``): clips of the model's frame count (``num_frames``
    must agree), ``frame_stride`` frames apart at 30 fps (default 4), one random-resized crop and
    flip per clip, Kinetics statistics, mask ratio 0.9 over 1x8x8-token mask units, the
    time-strided normalised-pixel loss of the official video MAE, and ``repeat_aug`` clips per
    decoded video (default 1). ``val``: the centre clip of each video, as ``hiera mae-viz`` reads it."""
    from .data import open_images, pretrain_transform
    from .engine import MAETask, RunConfig, Trainer
    from .recipes import build_optimizer, pretrain_recipe, video_pretrain_recipe

    video = _video_run(data, model, config, video)
    model = model or ("hiera_base_16x224" if video else "hiera_base_224")
    name = "base" if model == "custom" else model
    recipe = (video_pretrain_recipe(name) if video else pretrain_recipe(name)).scaled(epochs=epochs, batch_size=batch_size)
    if video:
        recipe = _with(recipe, frame_stride=frame_stride, repeat_aug=repeat_aug)
    overrides = dict(config or {})
    if model != "custom":
        overrides.setdefault("drop_path_rate", recipe.drop_path_rate)
    seed = run.get("seed", 0)
    if video:  # the data first: a folder without videos fails before a large model is built
        from .video_data import open_videos

        train_set = open_videos(data, seed=seed)
    torch.manual_seed(seed)  # the same initial weights in every process and every rerun
    net = _build(model, mae=True, overrides=overrides)
    report = _init_weights(net, init, strict=False)
    ratio = recipe.mask_ratio if mask_ratio is None else mask_ratio
    size = tuple(net.input_size)
    extra = {}
    if video:
        from .transforms import VideoEvalTransform
        from .video_data import ClipSampling, VideoTrainTransform

        frames = _clip_frames(net, num_frames, model)
        train_set.sampling = ClipSampling(frames, recipe.frame_stride, recipe.target_fps, "random")
        train_set.transform = VideoTrainTransform(size, scale=recipe.crop_scale, ratio=recipe.crop_ratio,
                                                  hflip=recipe.hflip)
        train_set.mask_units, train_set.mask_ratio, train_set.repeats = net.num_mask_units, ratio, recipe.repeat_aug
        # Validation clips are read as `hiera mae-viz` reads a video (centre clip, shorter side to
        # the crop size), so the reconstructions of a run and of mae-viz can be compared.
        val_set = open_videos(
            val, transform=VideoEvalTransform(size, views="single", stride=recipe.frame_stride,
                                              target_fps=recipe.target_fps, crop_pct=1.0),
            seed=seed, mask_units=net.num_mask_units, mask_ratio=ratio) if val else None
        extra = {"video": True, "frames": frames, "frame_stride": recipe.frame_stride,
                 "target_fps": recipe.target_fps, "repeat_aug": recipe.repeat_aug}
    else:
        make = lambda root: open_images(  # noqa: E731
            root, transform=pretrain_transform(size, scale=recipe.crop_scale), seed=seed,
            mask_units=net.num_mask_units, mask_ratio=ratio)
        train_set = make(data)
        val_set = make(val) if val else None
    steps_per_epoch = len(train_set) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} {'videos' if video else 'images'} are fewer than one batch of {batch_size}")
    total, warmup, peak, lr_at = _schedule(recipe, steps_per_epoch, batch_size, lr)
    cfg = RunConfig(out_dir=str(out), total_steps=total, batch_size=batch_size, accum=accum,
                    extra={"recipe": recipe.to_dict(), "peak_lr": peak, "warmup_steps": warmup,
                           "mask_ratio": ratio, "data": str(data), "init": init, **extra}, **run)
    trainer = Trainer(net, MAETask(), train_set, val_set,
                      lambda m: build_optimizer(m, recipe, batch_size), lr_at, cfg)
    if trainer.is_main and report is not None:
        print(f"init: {report}")
    if resume:
        trainer.resume()
    last = trainer.fit()
    _finish(trainer, net, Path(out))
    return last


def finetune(
    data,
    out,
    val=None,
    model: Optional[str] = None,
    init: Optional[str] = None,
    epochs: Optional[float] = None,
    batch_size: int = 64,
    accum: int = 1,
    lr: Optional[float] = None,
    linear_probe: bool = False,
    ema: Optional[bool] = None,
    resume: bool = False,
    config: Optional[dict] = None,
    mixup: Optional[bool] = None,
    recipe_overrides: Optional[dict] = None,
    video: Optional[bool] = None,
    num_frames: Optional[int] = None,
    frame_stride: Optional[float] = None,
    repeat_aug: Optional[int] = None,
    **run,
) -> dict:
    """Supervised fine-tuning on a folder with one sub-folder per class (images or videos, or a
    ``path,label`` list), from ``init`` (an MAE checkpoint of ours, an official one such as
    ``mae_hiera_base_224.mae_in1k`` / ``mae_hiera_base_16x224.mae_k400``, or any weights), with
    the paper's fine-tuning recipe for the model's size. ``linear_probe`` freezes the trunk and
    trains the head only (no mixup, no layer decay).

    Video (as for :func:`pretrain`): random clips with one crop, flip, RandAugment policy and
    erasing box per clip, mixup / cutmix of whole clips, label smoothing, layer decay, drop path
    and head dropout by size, gradient clipping at 5 unless ``clip_grad`` says otherwise; the
    validation during training uses the centre view (``evaluate`` gives the 3x5-view accuracy)."""
    from .data import finetune_transform, open_images
    from .engine import ClassifyTask, RunConfig, Trainer
    from .recipes import adamw, build_optimizer, finetune_recipe, video_finetune_recipe
    from .transforms import ImageEvalTransform

    video = _video_run(data, model, config, video)
    model = model or ("hiera_base_16x224" if video else "hiera_base_224")
    name = "base" if model == "custom" else model
    recipe = (video_finetune_recipe(name) if video else finetune_recipe(name)).scaled(epochs=epochs, batch_size=batch_size)
    if video:
        recipe = _with(recipe, frame_stride=frame_stride, repeat_aug=repeat_aug)
    if recipe_overrides:  # e.g. {"rand_augment": None, "reprob": 0.0} for a lighter recipe
        import dataclasses

        recipe = dataclasses.replace(recipe, **recipe_overrides)
    seed = run.get("seed", 0)
    if video:
        from .video_data import open_videos

        train_set = open_videos(data, labelled=True, seed=seed)
    else:
        train_set = open_images(data, labelled=True, seed=seed)
    if not train_set.classes:
        raise ValueError(f"{data} has no class sub-folders: fine-tuning needs labelled {'videos' if video else 'images'}")
    overrides = dict(config or {}, num_classes=len(train_set.classes))
    if model != "custom":
        overrides.setdefault("drop_path_rate", 0.0 if linear_probe else recipe.drop_path_rate)
        if video:
            overrides.setdefault("head_dropout", 0.0 if linear_probe else recipe.head_dropout)
    torch.manual_seed(seed)
    net = _build(model, mae=False, overrides=overrides)
    report = _init_weights(net, init, strict=False)
    size = tuple(net.input_size)
    if linear_probe:
        import dataclasses

        recipe = dataclasses.replace(recipe, layer_decay=None, mixup=0.0, cutmix=0.0, rand_augment=None, reprob=0.0)
        for pname, p in net.named_parameters():
            p.requires_grad = pname.startswith(("head.", "norm."))
    extra, lr_batch = {}, batch_size
    if video:
        from .transforms import VideoEvalTransform
        from .video_data import ClipSampling, VideoTrainTransform

        frames = _clip_frames(net, num_frames, model)
        train_set.sampling = ClipSampling(frames, recipe.frame_stride, recipe.target_fps, "random")
        train_set.repeats = recipe.repeat_aug
        train_set.transform = VideoTrainTransform(
            size, scale=recipe.crop_scale, ratio=recipe.crop_ratio, hflip=recipe.hflip,
            rand_augment=recipe.rand_augment, reprob=recipe.reprob, remode=recipe.remode)
        val_set = None
        if val:
            val_set = open_videos(val, labelled=True, seed=seed, transform=VideoEvalTransform(
                size, views="single", stride=recipe.frame_stride, target_fps=recipe.target_fps))
        if run.get("clip_grad") is None:
            run["clip_grad"] = recipe.clip_grad
        lr_batch = batch_size * recipe.repeat_aug  # the lr follows the clips per step ([MAE-ST])
        extra = {"video": True, "frames": frames, "frame_stride": recipe.frame_stride,
                 "target_fps": recipe.target_fps, "repeat_aug": recipe.repeat_aug}
    else:
        train_set.transform = finetune_transform(size, auto_augment=recipe.rand_augment, re_prob=recipe.reprob,
                                                 re_mode=recipe.remode, scale=recipe.crop_scale, hflip=recipe.hflip)
        val_set = None
        if val:
            val_set = open_images(val, labelled=True, seed=seed,
                                  transform=ImageEvalTransform(size, crop_pct=recipe.eval_crop_pct))
    if val_set is not None and val_set.classes != train_set.classes:
        raise ValueError(f"validation classes {val_set.classes} differ from training classes {train_set.classes}")
    steps_per_epoch = len(train_set) // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_set)} {'videos' if video else 'images'} are fewer than one batch of {batch_size}")
    total, warmup, peak, lr_at = _schedule(recipe, steps_per_epoch, lr_batch, lr)
    use_mixup = (recipe.mixup > 0 or recipe.cutmix > 0) if mixup is None else mixup
    task = ClassifyTask(len(train_set.classes), mixup_args=recipe.mixup_args(len(train_set.classes)) if use_mixup else None,
                        label_smoothing=recipe.label_smoothing)
    use_ema = recipe.ema if ema is None else ema
    cfg = RunConfig(out_dir=str(out), total_steps=total, batch_size=batch_size, accum=accum,
                    ema_decay=recipe.ema_decay if use_ema else None,
                    extra={"recipe": recipe.to_dict(), "peak_lr": peak, "warmup_steps": warmup,
                           "classes": train_set.classes, "data": str(data), "init": init,
                           "linear_probe": linear_probe, **extra}, **run)

    def make_optimizer(m):
        return build_optimizer(m, recipe, lr_batch) if not linear_probe else adamw(
            [p for p in m.parameters() if p.requires_grad], lr=peak, betas=recipe.betas, weight_decay=0.0)

    trainer = Trainer(net, task, train_set, val_set, make_optimizer, lr_at, cfg)
    if trainer.is_main and report is not None:
        print(f"init: {report}")
    if resume:
        trainer.resume()
    last = trainer.fit()
    result = trainer.last_eval
    _finish(trainer, trainer.ema.module if trainer.ema else net, Path(out), classes=train_set.classes)
    return {**last, **{f"val_{k}": v for k, v in result.items()}}


def evaluate(data, model: Optional[str] = None, weights=None, batch_size: int = 64, device: str = "auto",
             views: str = "multi", workers: int = 0) -> dict:
    """Top-1 / top-5 accuracy, per-class accuracy and the most confused pairs on a folder with one
    sub-folder per class (or a ``path,label`` list); the classes must be the model's, in sorted order.

    Video models are evaluated on 3 spatial x 5 temporal views per video (``views="multi"``, the
    protocol of the Kinetics results) with the softmax averaged over the 15 views, or on the centre
    view (``views="single"``). ``batch_size`` counts model inputs (views). ``workers``: DataLoader
    processes that decode. ``"unreadable"`` counts the files that could not be decoded (skipped)."""
    from torch.utils.data import DataLoader

    from .data import collate, open_images
    from .engine import evaluate_classifier
    from .resolve import load_model
    from .transforms import eval_transform

    net = load_model(model, weights)
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device))
    net.to(dev).eval()
    video = len(tuple(net.input_size)) == 3
    if video:
        from .video_data import ViewAverage, is_video_source, open_videos

        if views not in ("multi", "single"):
            raise ValueError(f"views must be 'multi' or 'single', got {views!r}")
        if is_video_source(data) is False:
            raise ValueError(f"the model takes video clips {list(net.input_size)}, but {data} holds images")
        transform = eval_transform(net, views=views)
        dataset = open_videos(data, labelled=True, transform=transform)
        runner, per_batch = ViewAverage(net, chunk=batch_size), max(1, batch_size // transform.num_views)
        protocol = f"{transform.num_crops} spatial x {transform.num_clips} temporal"
    else:
        dataset = open_images(data, labelled=True, transform=eval_transform(net))
        runner, per_batch, protocol = net, batch_size, "single view"
    num_classes = net.head.projection.out_features
    if len(dataset.classes or []) > num_classes:
        raise ValueError(f"{data} has {len(dataset.classes)} classes, the model only {num_classes}")
    unreadable = 0
    keys = [[(0, i) for i in range(start, min(start + per_batch, len(dataset)))]
            for start in range(0, len(dataset), per_batch)]
    loader = DataLoader(dataset, batch_sampler=keys, num_workers=workers, collate_fn=collate)

    def batches():
        nonlocal unreadable
        for batch in loader:
            unreadable += batch["n_bad"]
            if batch["n"]:
                yield {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    stats = evaluate_classifier(runner, batches(), num_classes, dev)
    classes = dataset.classes or [str(i) for i in range(num_classes)]
    confusion = stats.pop("confusion")[: len(classes), : len(classes)]
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1) * 100).tolist()
    off = confusion.clone()
    off.fill_diagonal_(0)
    pairs = []
    for flat in off.flatten().argsort(descending=True)[:5].tolist():
        t, p = divmod(flat, off.shape[1])
        if off[t, p] > 0:
            pairs.append({"true": classes[t], "predicted": classes[p], "count": int(off[t, p])})
    return {**stats, "views": protocol, "unreadable": unreadable, "classes": classes,
            "per_class_acc1": dict(zip(classes, per_class)), "confused": pairs, "confusion": confusion.long().tolist()}


# ---------------------------------------------------------------------------------- CLI
def _run_args(p):
    g = p.add_argument_group("running")
    g.add_argument("--out", "-o", required=True, help="run folder: checkpoints, metrics.jsonl, curves.png, model/")
    g.add_argument("--epochs", type=float, help="epochs (default: the recipe's; pretrain 1600 images, 3200 videos; finetune 50-300 images, 50 videos)")
    g.add_argument("--batch-size", type=int, default=64, help="samples per optimizer step over all processes")
    g.add_argument("--accum", type=int, default=1, help="gradient accumulation: micro-batches per step")
    g.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, scaled with the batch)")
    g.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    g.add_argument("--clip-grad", type=float, help="clip the gradient norm to this")
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--grad-checkpointing", action="store_true", help="recompute blocks in backward (less memory)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--save-every", type=int, default=0, help="steps between checkpoints (also at epoch ends)")
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations (default: epoch ends)")
    g.add_argument("--log-every", type=int, default=10)
    g.add_argument("--workers", type=int, default=2, help="data loading processes")
    g.add_argument("--device", default="auto")
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--config", type=json.loads, help='constructor overrides as JSON, e.g. \'{"input_size": [256, 256]}\'')
    g.add_argument("--no-progress", action="store_true")


def _run_kwargs(args) -> dict:
    return dict(precision=args.precision, clip_grad=args.clip_grad, compile=args.compile,
                grad_checkpointing=args.grad_checkpointing, seed=args.seed, save_every=args.save_every,
                eval_every=args.eval_every, log_every=args.log_every, num_workers=args.workers,
                device=args.device, progress=not args.no_progress)


def _video_args(p, finetune: bool) -> None:
    g = p.add_argument_group(
        "video", "Video runs are chosen by a *_16x224 model, a 3-D custom config, data made of videos "
                 "(a folder of clips, one sub-folder per class, or a CSV of 'path,label[,start,end]'), or --video.")
    g.add_argument("--video", action="store_true", default=None, help="train on the videos of --data")
    g.add_argument("--frames", type=int, help="frames per clip (default: the model's, 16 for *_16x224; must agree with it)")
    g.add_argument("--frame-stride", type=float, help="frames between clip samples, counted at 30 fps (default 4)")
    g.add_argument("--repeat-aug", type=int,
                   help="clips per decoded video, each with its own crop%s (default 1; MAE-ST uses %d)"
                        % ((" and augmentation", 2) if finetune else (" and mask", 4)))


def _video_kwargs(args) -> dict:
    return dict(video=args.video, num_frames=args.frames, frame_stride=args.frame_stride, repeat_aug=args.repeat_aug)


def add_parser(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "pretrain", help="MAE-pretrain a Hiera on a folder of images or videos", formatter_class=fmt,
        description="MAE pretraining with the paper's recipe for the model size. Images: AdamW 0.9/0.95, lr 8e-4 "
                    "per 4096 images, warmup then cosine, mask ratio 0.6, random-resized crop 0.2-1 and flip. "
                    "Videos (Kinetics recipe): 16-frame clips 4 frames apart at 30 fps, random start, one "
                    "random-resized crop 0.5-1 and flip per clip, lr 8e-4 per 256 videos, 3200 epochs with 120 "
                    "of warmup, mask ratio 0.9 over 1x8x8-token mask units.",
        epilog="""examples:
  hiera pretrain --data photos/ --model hiera_small_224 --epochs 400 --batch-size 256 --out runs/mae
  hiera pretrain --data photos/ --model hiera_base_224 --init mae_hiera_base_224.mae_in1k --epochs 100 --out runs/more
  torchrun --nproc_per_node 8 $(which hiera) pretrain --data photos/ --batch-size 4096 --precision bf16 --out runs/mae
  hiera pretrain --data photos/ --out runs/mae --resume          # after an interruption
  hiera pretrain --data clips/ --model hiera_base_16x224 --epochs 100 --batch-size 64 --precision bf16 --out runs/vmae
  hiera pretrain --data k400_train.csv --model hiera_base_16x224 --repeat-aug 4 --workers 12 --out runs/vmae""")
    p.add_argument("--data", required=True,
                   help="image or video folder (class sub-folders or flat), or a list file of paths")
    p.add_argument("--val", help="folder for the validation loss and reconstructions")
    p.add_argument("--model", "-m", default=None,
                   help="zoo model (its mae_ version is used) or 'custom' (default: hiera_base_224, or "
                        "hiera_base_16x224 for videos)")
    p.add_argument("--init", help="start from these weights (path, or zoo name.checkpoint)")
    p.add_argument("--mask-ratio", type=float, help="fraction of mask units dropped (default 0.6 images, 0.9 videos)")
    _video_args(p, finetune=False)
    _run_args(p)
    p.set_defaults(func=_cmd_pretrain)

    p = subparsers.add_parser(
        "finetune", help="fine-tune a (pretrained) Hiera classifier on labelled images or videos", formatter_class=fmt,
        description="Fine-tuning with the paper's recipe for the model size (AdamW, layer-wise lr decay, "
                    "RandAugment, random erasing, mixup/cutmix, label smoothing, drop path). Videos: random "
                    "16-frame clips with one crop, flip, RandAugment policy and erasing box per clip, mixup / "
                    "cutmix of whole clips, head dropout, gradient clipping at 5 (MAE-ST's recipe).",
        epilog="""examples:
  hiera finetune --data train/ --val val/ --model hiera_small_224 --init runs/mae/last.pt --epochs 50 --out runs/ft
  hiera finetune --data train/ --val val/ --init mae_hiera_base_224.mae_in1k --epochs 100 --out runs/ft
  hiera finetune --data train/ --val val/ --init runs/mae/last.pt --linear-probe --out runs/probe
  hiera finetune --data clips/train/ --val clips/val/ --model hiera_base_16x224 --init runs/vmae/last.pt \\
      --batch-size 32 --precision bf16 --grad-checkpointing --out runs/vft
  hiera finetune --data train.csv --model hiera_base_16x224 --init mae_hiera_base_16x224.mae_k400 --out runs/vft""")
    p.add_argument("--data", required=True,
                   help="training images or videos: one sub-folder per class, or a 'path,label' list")
    p.add_argument("--val", help="validation images or videos, the same class sub-folders")
    p.add_argument("--model", "-m", default=None,
                   help="zoo model or 'custom' (with --config) (default: hiera_base_224, or hiera_base_16x224 for videos)")
    p.add_argument("--init", help="start from these weights: our MAE checkpoint, or zoo name.checkpoint")
    p.add_argument("--linear-probe", action="store_true", help="train the head only")
    p.add_argument("--ema", action="store_true", default=None, help="keep an EMA of the weights and evaluate it")
    p.add_argument("--no-mixup", action="store_true", help="turn mixup/cutmix off")
    _video_args(p, finetune=True)
    _run_args(p)
    p.set_defaults(func=_cmd_finetune)

    p = subparsers.add_parser(
        "evaluate", help="top-1/top-5 accuracy and confusions on labelled images or videos", formatter_class=fmt,
        description="Evaluate a classifier on a folder with one sub-folder per class (or a 'path,label' list). "
                    "Video models: 3 spatial x 5 temporal views per video with the softmax averaged (the "
                    "Kinetics protocol), or --views single for the centre view.",
        epilog="""examples:
  hiera evaluate --data val/ --weights runs/ft/model
  hiera evaluate --data clips/val/ --weights runs/vft/model                 # 3x5 views
  hiera evaluate --data k400_val.csv --model hiera_base_16x224 --views single --json result.json""")
    p.add_argument("--data", required=True)
    p.add_argument("--model", "-m", help="zoo name or Hub repo")
    p.add_argument("--weights", "-w", help="weights file or folder (any layout)")
    p.add_argument("--batch-size", type=int, default=64, help="model inputs per forward pass (each video view counts)")
    p.add_argument("--views", choices=("multi", "single"), default="multi",
                   help="videos: multi = 5 clips x 3 crops, softmax averaged; single = centre clip and crop")
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the full result (confusion matrix included) here")
    p.set_defaults(func=_cmd_evaluate)


def _guard(command: str, fn):
    try:
        return fn()
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        return fail(command, e)


def _cmd_pretrain(args) -> int:
    def go():
        last = pretrain(args.data, args.out, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                        accum=args.accum, lr=args.lr, mask_ratio=args.mask_ratio, init=args.init, resume=args.resume,
                        val=args.val, config=args.config, **_video_kwargs(args), **_run_kwargs(args))
        print(json.dumps(last))
        return 0
    return _guard("pretrain", go)


def _cmd_finetune(args) -> int:
    def go():
        last = finetune(args.data, args.out, val=args.val, model=args.model, init=args.init, epochs=args.epochs,
                        batch_size=args.batch_size, accum=args.accum, lr=args.lr, linear_probe=args.linear_probe,
                        ema=args.ema, resume=args.resume, config=args.config,
                        mixup=False if args.no_mixup else None, **_video_kwargs(args), **_run_kwargs(args))
        print(json.dumps(last))
        return 0
    return _guard("finetune", go)


def _cmd_evaluate(args) -> int:
    def go():
        result = evaluate(args.data, model=args.model, weights=args.weights, batch_size=args.batch_size,
                          device=args.device, views=args.views, workers=args.workers)
        what = "videos" if result["views"] != "single view" else "images"
        print(f"top-1 {result['acc1']:.2f}%  top-5 {result['acc5']:.2f}%  ({result['n']} {what}, {result['views']})")
        if result["unreadable"]:
            print(f"skipped {result['unreadable']} unreadable files")
        for name, acc in result["per_class_acc1"].items():
            print(f"  {name:<24} {acc:6.2f}%")
        for pair in result["confused"]:
            print(f"  confused: {pair['true']} -> {pair['predicted']} ({pair['count']})")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    return _guard("evaluate", go)


def main(argv: Optional[Sequence[str]] = None) -> int:  # for `python -m hiera.train`
    from .cli import main as cli_main

    return cli_main(argv)
