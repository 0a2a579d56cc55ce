"""``hiera predict``: classify images and videos (:func:`hiera.tools.predict.predict`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from rich.console import Console
from rich.table import Table

from ..devices import resolve_device
from ..weights import write_atomic
from .common import add_model_arguments, exit_on_interrupt, fail, load_model_or_fail, report_skipped

EPILOG = """\
examples:
  hiera predict --model hiera_base_224 cat.jpg dog.png
      top-5 ImageNet classes of two images
  hiera predict --model hiera_base_224 photos/ --format csv --output preds.csv
      every image under photos/ (recursively), one CSV row per class
  hiera predict --model hiera_base_16x224 clip.mp4 --views multi
      Kinetics-400 classes of a video, averaged over 5 clips x 3 crops
  hiera predict --weights runs/ft/model images/
      a model you fine-tuned: `hiera finetune --out runs/ft` writes runs/ft/model/ (and runs/ft/last.pt);
      the class names come from the classes.txt saved with it
  hiera predict --weights other.pth --classes names.txt images/
      weights from elsewhere, with their class names (one per line, or an ImageFolder folder)

Models: --model takes a zoo name (`hiera zoo`; add .CHECKPOINT to pick one) or a Hugging Face repo
id; --weights a checkpoint file or save_pretrained folder (any supported format). Images are
resized (shorter side 256/224 x input), centre-cropped and normalised as the checkpoints were
evaluated; videos use 16 frames 4 apart (at 30 fps) with Kinetics normalisation.
Unreadable or corrupt inputs are skipped and listed on stderr; the exit code is 0 when at least
one input was classified (1 with --strict if any was skipped), 1 on errors.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``predict`` sub-command on ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "predict",
        help="classify images and videos (top-k classes)",
        description="Classify images or videos with a Hiera classifier and print the top-k classes "
                    "with their probabilities.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, or folders to search recursively")
    add_model_arguments(p)
    p.add_argument("--topk", "-k", type=int, default=5, help="classes to show per input (default: 5)")
    p.add_argument("--batch-size", "-b", type=int, default=16,
                   help="model inputs per forward pass; each video view counts (default: 16)")
    p.add_argument("--views", choices=("single", "multi"), default="single",
                   help="videos: single = centre clip and crop; multi = 5 clips x 3 crops with their "
                        "probabilities averaged (15x the compute) (default: single)")
    p.add_argument("--classes", metavar="FILE",
                   help="class names: a text file (one per line, in class-index order), a JSON list, or "
                        "an ImageFolder folder (its sub-folder names); default: the names saved with --weights "
                        "(classes.txt of a model folder, or those a training checkpoint records), else "
                        "ImageNet-1k / Kinetics-400 names when the head has 1000 / 400 classes")
    p.add_argument("--format", "-f", choices=("table", "json", "csv"), default=None,
                   help="output format (default: from --output's extension, else table)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the results to FILE instead of stdout")
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding inputs (default: 0)")
    p.add_argument("--strict", action="store_true", help="exit with 1 if any input was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)
    return p


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower() if args.output else ""
    return {".json": "json", ".csv": "csv"}.get(suffix, "table")


def _print_rich_table(results: Sequence[dict], title: Optional[str]) -> None:
    table = Table(title=title, show_lines=True)
    table.add_column("input", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for r in results:
        table.add_row(r["path"], "\n".join(n for n, _ in r["labels"]),
                      "\n".join(f"{100 * p:.2f}%" for _, p in r["labels"]))
    Console().print(table)


@exit_on_interrupt("predict")
def run_predict(args: argparse.Namespace) -> int:
    """The ``hiera predict`` command; returns the exit code."""
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..tools.predict import (
        format_results,
        is_video_model,
        predict,
        saved_class_names,
    )

    prog = "predict"
    if args.topk < 1 or args.batch_size < 1 or args.num_workers < 0:
        return fail(prog, "--topk and --batch-size must be >= 1, --num-workers >= 0")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return fail(prog, str(e))
    model, code = load_model_or_fail(args, prog, need_head=True)
    if model is None:
        return code
    if args.views == "multi" and not is_video_model(model):
        return fail(prog, "--views multi (5 clips x 3 crops) is for video models; this is an image model, "
                           "which sees each image once: leave --views out")
    class_names = args.classes
    if class_names is None and args.weights is not None:
        class_names, message = saved_class_names(args.weights, model)
        if message:
            return fail(prog, message)
    fmt = _output_format(args)
    try:
        results = predict(model, args.inputs, topk=args.topk, batch_size=args.batch_size,
                          class_names=class_names, views=args.views, device=device,
                          num_workers=args.num_workers, progress=not args.no_progress)
    except (ValueError, TypeError, OSError) as e:  # bad --classes file, wrong model kind
        return fail(prog, str(e))
    report_skipped(results.skipped, len(results), "classified")
    if not results:
        return fail(prog, "no input could be classified")
    name = args.model or str(args.weights)
    if args.output:
        text = format_results(results, fmt, results.skipped, name)
        try:
            write_atomic(args.output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as e:
            return fail(prog, f"cannot write {args.output}: {e}")
    elif fmt == "table" and sys.stdout.isatty():
        _print_rich_table(results, name)
    else:
        sys.stdout.write(format_results(results, fmt, results.skipped, name))
    return 1 if args.strict and results.skipped else 0
