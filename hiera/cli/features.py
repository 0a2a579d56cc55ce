"""``hiera features``: multi-scale feature maps written to files (:mod:`hiera.tools.features`)."""

from __future__ import annotations

import argparse

from ..devices import resolve_device
from .common import add_model_arguments, exit_on_interrupt, fail, load_model_or_fail, report_skipped

EPILOG = """\
examples:
  hiera features --model hiera_base_224.mae_in1k photos/ --out feats/
      feats/<name>.safetensors per image with stage0..stage3 maps [C, H/s, W/s] (s = 4, 8, 16, 32)
  hiera features --model hiera_base_224 img.jpg --stages 3 --pooled --format npy --out feats/
      one pooled [768] vector per image, as feats/img.stage3.npy
  hiera features --weights quickstart/finetune/model photos/ --out feats/
      a model you trained (a model/ folder a run writes): every stage it has, 3 for the quickstart's
  hiera features --weights ckpt.pth photos/ --size 448 640 --stages 2 3 --out feats/
      run at 448x640 (each side a multiple of 32); images are resized to exactly that size
      (add --fit crop to keep the aspect ratio and crop the centre instead)

Read a file back with safetensors.torch.load_file(path) (a dict stage{i} -> tensor; the metadata
records the source, input size and layout) or numpy.load. Without --size, inputs get the model's
evaluation transform (resize, centre crop).
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``features`` sub-command on ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "features",
        help="write multi-scale feature maps of images or videos to files",
        description="Run a Hiera trunk on images (or videos) and save the feature maps of chosen stages, "
                    "one file per input.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, or folders to search recursively")
    add_model_arguments(p)
    p.add_argument("--stages", type=int, nargs="+", default=None, metavar="I",
                   help="stages to save, counted from 0 (the zoo models have 4: strides 4, 8, 16, 32); -1 = the "
                        "last (default: every stage of the model)")
    p.add_argument("--out", "-o", default="features", metavar="DIR", help="output folder (default: ./features)")
    p.add_argument("--format", "-f", choices=("safetensors", "npy"), default="safetensors",
                   help="safetensors: one file per input; npy: one file per input and stage (default: safetensors)")
    p.add_argument("--size", type=int, nargs="+", metavar="N",
                   help="run at this input size: H W (video: T H W, or H W to keep T); each a multiple of "
                        "the model's size multiple (32 for the zoo image models)")
    p.add_argument("--fit", choices=("stretch", "crop"), default=None,
                   help="with --size: stretch = resize to exactly that size; crop = keep the aspect ratio, "
                        "crop the centre (default: stretch)")
    p.add_argument("--output-fmt", choices=("NCHW", "NHWC"), default="NCHW",
                   help="layout of the maps: channels first or last (default: NCHW)")
    p.add_argument("--pooled", action="store_true", help="save one averaged vector [C] per stage instead of maps")
    p.add_argument("--batch-size", "-b", type=int, default=8, help="inputs per forward pass (default: 8)")
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding inputs (default: 0)")
    p.add_argument("--strict", action="store_true", help="exit with 1 if any input was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_features)
    return p


@exit_on_interrupt("features")
def run_features(args: argparse.Namespace) -> int:
    """The ``hiera features`` command; returns the exit code."""
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..tools.features import (
        check_size,
        extract_features,
    )

    prog = "features"
    if args.batch_size < 1 or args.num_workers < 0:
        return fail(prog, "--batch-size must be >= 1, --num-workers >= 0")
    if args.size is not None and len(args.size) not in (2, 3):
        return fail(prog, f"--size takes H W (or T H W for video), got {len(args.size)} numbers")
    if args.fit is not None and args.size is None:
        return fail(prog, f"--fit {args.fit} applies with --size only; without --size inputs get the model's "
                           "evaluation transform (resize, centre crop)")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return fail(prog, str(e))
    model, code = load_model_or_fail(args, prog)
    if model is None:
        return code
    if args.size is not None:
        try:
            check_size(model, args.size)
        except ValueError as e:
            return fail(prog, f"--size {' '.join(map(str, args.size))}: {e}")
    try:
        results = extract_features(
            model, args.inputs, args.out, stages=args.stages, output_fmt=args.output_fmt, pooled=args.pooled,
            fmt=args.format, size=args.size, fit=args.fit or "stretch", batch_size=args.batch_size, device=device,
            num_workers=args.num_workers, progress=not args.no_progress,
        )
    except (ValueError, TypeError, OSError) as e:  # bad --stages, unwritable --out
        return fail(prog, str(e))
    report_skipped(results.skipped, len(results), "written")
    if not results:
        return fail(prog, "no input could be processed")
    files = sum(len(r["files"]) for r in results)
    shapes = ", ".join(f"{k} {list(v)}" for k, v in results[0]["shapes"].items())
    print(f"wrote {files} files for {len(results)} inputs to {args.out} ({shapes})")
    return 1 if args.strict and results.skipped else 0
