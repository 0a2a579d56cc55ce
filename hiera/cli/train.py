"""``hiera pretrain``, ``hiera finetune`` and ``hiera evaluate`` (:mod:`hiera.train.commands`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Optional

from ..devices import DEVICE_HELP
from .common import THREADS_HELP, guard, set_threads


def _run_args(p):
    g = p.add_argument_group("running")
    g.add_argument("--out", "-o", required=True, help="run folder: checkpoints, metrics.jsonl, curves.png, model/")
    g.add_argument("--epochs", type=float, help="epochs (default: the recipe's; pretrain 1600 images, 3200 videos; finetune 50-300 images, 100-150 videos)")
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
    g.add_argument("--device", default="auto", help=DEVICE_HELP)
    g.add_argument("--threads", type=int, help=THREADS_HELP)
    g.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    g.add_argument("--overwrite", action="store_true",
                   help="start again in an --out that holds a run (its last.pt, metrics.jsonl, model/ are deleted)")
    g.add_argument("--config", help='constructor overrides as JSON, e.g. \'{"input_size": [256, 256]}\'')
    g.add_argument("--no-progress", action="store_true")


def _parse_config(text: Optional[str]) -> Optional[dict]:
    if text is None:
        return None
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"--config is not valid JSON ({e}): {text[:80]!r}; expected an object such as "
                         "'{\"input_size\": [256, 256]}'") from None
    if not isinstance(config, dict):
        raise ValueError(f"--config must be a JSON object of constructor arguments, such as "
                         f"'{{\"input_size\": [256, 256]}}', got {type(config).__name__} {text[:80]!r}")
    return config


def _check_output_file(path: Optional[str], flag: str) -> None:
    """A file a command writes at the end: checked before the work, not after it."""
    if path is None:
        return
    target = Path(path)
    folder = target.parent
    if target.is_dir():
        raise ValueError(f"{flag} {target} is a folder; give a file name, e.g. {target / 'result.json'}")
    if not folder.is_dir():
        raise ValueError(f"{flag} {target}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"{flag} {target}: cannot write there (permission denied or a read-only file system)")


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
                   help="clips per decoded video, each with its own crop%s (default %s)"
                        % ((" and augmentation", "1") if finetune else (" and mask", "4, the paper's repeated sampling")))


def _video_kwargs(args) -> dict:
    return dict(video=args.video, num_frames=args.frames, frame_stride=args.frame_stride, repeat_aug=args.repeat_aug)


def add_parser(subparsers) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = subparsers.add_parser(
        "pretrain", help="MAE-pretrain a Hiera on a folder of images or videos", formatter_class=fmt,
        description="MAE pretraining with the paper's recipe for the model size. Images: AdamW 0.9/0.95, lr 8e-4 "
                    "per 4096 images, warmup then cosine, mask ratio 0.6, random-resized crop 0.2-1 and flip. "
                    "Videos (Kinetics recipe): 16-frame clips 4 frames apart at 30 fps, random start, one "
                    "random-resized crop 0.5-1 and flip per clip, 4 clips per decoded video, lr 8e-4 per 512, 3200 epochs with 120 "
                    "of warmup, mask ratio 0.9 over 1x8x8-token mask units.",
        epilog="""examples:
  hiera pretrain --data photos/ --model hiera_small_224 --epochs 400 --batch-size 256 --out runs/mae
  hiera pretrain --data photos/ --model hiera_base_224 --init mae_hiera_base_224.mae_in1k --epochs 100 --out runs/more
  torchrun --nproc_per_node 8 $(which hiera) pretrain --data photos/ --batch-size 4096 --precision bf16 --out runs/mae
  hiera pretrain --data photos/ --out runs/mae --resume          # after an interruption
  hiera pretrain --data photos/ --model sam2_hiera_small --init sam2_hiera_small.sam2_1 --out runs/mae_sam2
      # SAM 2's trunk (HieraDet) from SAM 2.1's weights; then: hiera convert runs/mae_sam2/last.pt --to sam2 --out trunk.pt
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
                    "cutmix of whole clips, head dropout, gradient clipping at 5 (the paper's Kinetics recipe, Tab. 11b).",
        epilog="""examples:
  hiera finetune --data train/ --val val/ --model hiera_small_224 --init runs/mae/last.pt --epochs 50 --out runs/ft
  hiera finetune --data train/ --val val/ --init mae_hiera_base_224.mae_in1k --epochs 100 --out runs/ft
  hiera finetune --data train/ --val val/ --init runs/mae/last.pt --linear-probe --out runs/probe
  hiera finetune --data train/ --val val/ --model sam2_hiera_small --init sam2_hiera_small.sam2_1 --out runs/sam2
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
    p.add_argument("--probe-head", action="store_true",
                   help="fit the fresh head by a linear probe on the training images first, then fine-tune (LP-FT; "
                        "helps a short fine-tuning of a pretrained trunk)")
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
    p.add_argument("--data", required=True, help="labelled images or videos: a folder of class sub-folders, or a "
                                                 "path,label list (.csv / .txt)")
    p.add_argument("--model", "-m", help="zoo name or Hub repo")
    p.add_argument("--weights", "-w", help="weights file or folder (any layout)")
    p.add_argument("--batch-size", type=int, default=64, help="model inputs per forward pass (each video view counts)")
    p.add_argument("--views", choices=("multi", "single"), default="multi",
                   help="videos: multi = 5 clips x 3 crops, softmax averaged; single = centre clip and crop")
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--threads", type=int, help=THREADS_HELP)
    p.add_argument("--classes", metavar="FILE",
                   help="the model's class names in output order (a text file, one per line, a JSON list, or a "
                        "folder of class sub-folders); default: classes.txt beside the weights")
    p.add_argument("--json", help="also write the full result (confusion matrix included) here")
    p.set_defaults(func=_cmd_evaluate)


def _guarded(command: str, go) -> int:
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..train.engine import TrainingDiverged

    return guard(command, go, errors=(TrainingDiverged,))


def _cmd_pretrain(args) -> int:
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..train.commands import pretrain

    def go():
        set_threads(args)
        last = pretrain(args.data, args.out, model=args.model, epochs=args.epochs, batch_size=args.batch_size,
                        accum=args.accum, lr=args.lr, mask_ratio=args.mask_ratio, init=args.init, resume=args.resume,
                        val=args.val, config=_parse_config(args.config), overwrite=args.overwrite,
                        **_video_kwargs(args), **_run_kwargs(args))
        print(json.dumps(last))
        return 0
    return _guarded("pretrain", go)


def _cmd_finetune(args) -> int:
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..train.commands import finetune

    def go():
        set_threads(args)
        last = finetune(args.data, args.out, val=args.val, model=args.model, init=args.init, epochs=args.epochs,
                        batch_size=args.batch_size, accum=args.accum, lr=args.lr, linear_probe=args.linear_probe,
                        ema=args.ema, resume=args.resume, config=_parse_config(args.config), overwrite=args.overwrite,
                        mixup=False if args.no_mixup else None, probe_head=args.probe_head, **_video_kwargs(args),
                        **_run_kwargs(args))
        print(json.dumps(last))
        return 0
    return _guarded("finetune", go)


def _cmd_evaluate(args) -> int:
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..train.commands import evaluate

    def go():
        set_threads(args)
        _check_output_file(args.json, "--json")
        result = evaluate(args.data, model=args.model, weights=args.weights, batch_size=args.batch_size,
                          device=args.device, views=args.views, workers=args.workers, classes=args.classes)
        what = "videos" if result["views"] != "single view" else "images"
        if result["assumed"]:
            print(f"note: {result['assumed']}")
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
    return _guarded("evaluate", go)
