"""``hiera mae-viz``: pictures of what an MAE model reconstructs (:mod:`hiera.tools.mae_viz`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..devices import DEVICE_HELP, resolve_device
from ..weights import CheckpointError
from ..zoo import load_model
from .common import exit_on_interrupt, fail

EPILOG = """\
examples:
  hiera mae-viz photo.jpg --model hiera_base_224.mae_in1k
      photo.jpg through the released MAE (downloaded once): mae_viz/photo.png
  hiera mae-viz clip.mp4 --model hiera_base_16x224.mae_k400 --frames 4
      a video model on a clip: 4 of its reconstructed frames, one row each
  hiera mae-viz photos/ --weights quickstart/pretrain/model --out viz/
      your own MAE (the model/ folder of a pretraining run) on every image under photos/

Each PNG has a title row and a caption saying what it shows. The decoder predicts every patch's pixels
normalised by the patch's own mean and std; the reconstruction columns undo that with the true patch's
mean and std (from the input), so the scene's layout shows even with random weights: the raw
prediction column shows the output before that. Images need an image model, videos a video model.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``mae-viz`` on an ``argparse`` sub-parsers object."""

    p = subparsers.add_parser(
        "mae-viz",
        help="show MAE reconstructions of images or videos",
        description=(
            "Mask inputs, let an MAE model reconstruct them, and write one PNG per input with the "
            "columns original | masked input | reconstruction | reconstruction + visible patches | raw "
            "prediction (video: one row per reconstructed frame, i.e. the first frame of every tubelet)."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", help="image / video files or folders (searched recursively)")
    p.add_argument("--model", help="zoo name (mae_ prefix optional, e.g. hiera_base_224) or Hub repo id; "
                   "with --weights it names the architecture")
    p.add_argument("--weights", help="weights file or save_pretrained directory")
    p.add_argument("--mask-ratio", type=float, default=None,
                   help="fraction of mask units hidden (default 0.6 for images, 0.9 for video)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random mask (default 0)")
    p.add_argument("--out", default="mae_viz", help="output folder (default ./mae_viz)")
    p.add_argument("--frames", type=int, default=None,
                   help="video: how many reconstructed frames to show, evenly spaced (default all: 8 for 16-frame models)")
    p.add_argument("--frame-stride", type=float, default=None,
                   help="video: frames between clip samples, at 30 fps (default 4)")
    p.add_argument("--device", default="auto", help=DEVICE_HELP)
    p.add_argument("--scale", type=int, default=None,
                   help="enlarge each picture this many times (default: enough for a readable size, "
                        "hiera.tools.mae_viz.MIN_PANEL pixels or more on its shorter side)")
    p.add_argument("--no-titles", action="store_true", help="leave out the column titles")
    p.add_argument("--no-caption", action="store_true", help="leave out the caption under each grid")
    p.add_argument("--no-raw", action="store_true", help="leave out the raw prediction column")
    p.set_defaults(func=_cmd_mae_viz)
    return p


@exit_on_interrupt("mae-viz")
def _cmd_mae_viz(args: argparse.Namespace) -> int:
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..data.media import MediaError, find_media
    from ..tools.mae_viz import CLI_FONT_SIZE, is_mae, load_image_input, load_video_input, mae_reconstruction, save_grid


    if args.mask_ratio is not None and not 0.0 <= args.mask_ratio < 1.0:
        return fail("mae-viz", f"--mask-ratio must be in [0, 1), got {args.mask_ratio}", 2)
    if args.frames is not None and args.frames < 1:
        return fail("mae-viz", f"--frames must be >= 1, got {args.frames}", 2)
    if args.frame_stride is not None and not args.frame_stride > 0:
        return fail("mae-viz", f"--frame-stride must be > 0, got {args.frame_stride}", 2)
    if args.scale is not None and args.scale < 1:
        return fail("mae-viz", f"--scale must be >= 1, got {args.scale}", 2)
    if args.model is None and args.weights is None:
        return fail("mae-viz", "say which model: --model NAME (zoo name or Hub repo id) and/or --weights PATH", 2)
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return fail("mae-viz", str(e), 2)

    try:
        model = load_model(args.model, args.weights, mae=True)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        return fail("mae-viz", f"could not load the model: {e}", 1)
    if not is_mae(model):
        return fail("mae-viz", f"{type(model).__name__} is not an MAE model (it has no decoder)", 1)
    report = getattr(model, "load_report", None)
    if report is not None and report.checkpoint_kind != "mae":
        # Reconstructions by a decoder that was never trained would look like the model's work.
        held = {"classifier": "a classifier's weights", "encoder": "a trunk's weights"}.get(report.checkpoint_kind)
        return fail("mae-viz", f"{args.weights or args.model} holds no MAE decoder ({held}): its reconstructions "
                    "would come from a random decoder; pass an MAE checkpoint "
                    "(a `hiera pretrain` run, or a zoo name ending in .mae_in1k / .mae_k400)", 1)
    video = len(model.input_size) == 3
    kind = "video" if video else "image"
    given = [opt for opt, value in (("--frames", args.frames), ("--frame-stride", args.frame_stride)) if value is not None]
    if given and not video:
        return fail("mae-viz", f"{' and '.join(given)}: only for video models; this is an image model", 2)
    model = model.to(device).eval()
    files = find_media(args.inputs, kinds=(kind,))
    for skipped in files.skipped:
        print(f"skipped {skipped.path}: {skipped.reason}", file=sys.stderr)
    if not files:
        return fail("mae-viz", f"no {kind} inputs found for this {kind} model", 2)

    out_dir = Path(args.out)
    used = set()
    failures = 0
    for path in files:
        try:
            if video:
                x = load_video_input(path, model.input_size, stride=args.frame_stride or 4)
            else:
                x = load_image_input(path, model.input_size)
        except (MediaError, OSError, ValueError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failures += 1
            continue
        result = mae_reconstruction(model, x.unsqueeze(0).to(device), mask_ratio=args.mask_ratio, seed=args.seed)
        rel = files.relative_name(path)
        name = str(rel.with_suffix("")).replace("/", "_").replace("\\", "_")
        if name in used:
            k = 1
            while f"{name}_{k}" in used:
                k += 1
            name = f"{name}_{k}"
        used.add(name)
        try:
            (written,) = save_grid(result, out_dir, [name], frames=args.frames, titles=not args.no_titles,
                                   scale=args.scale, raw=not args.no_raw, caption=not args.no_caption,
                                   font_size=CLI_FONT_SIZE)
        except OSError as e:  # full disk, unwritable --out: the next inputs would fail the same way
            return fail("mae-viz", str(e), 1)
        print(f"{path} -> {written}  (mask ratio {result.mask_ratio:.2f}, loss {result.loss.item():.4f})")
    if failures:
        print(f"{failures} of {len(files)} inputs could not be read", file=sys.stderr)
        return 1
    return 0
