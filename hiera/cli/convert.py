"""``hiera convert``: checkpoints between the official, timm and Hugging Face layouts (:mod:`hiera.tools.convert`)."""

from __future__ import annotations

import argparse
import sys
import warnings

from ..tools.convert import TARGETS, convert_checkpoint
from ..weights import CheckpointError
from .common import exit_on_interrupt, fail


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert checkpoints between the official, timm and Hugging Face layouts",
        description="Move a checkpoint between the official, timm and Hugging Face layouts. The input may be in "
                    "any supported layout (told from its keys); the architecture comes from --model, the config "
                    "the input carries, or the zoo model whose weight shapes it has. Weights that do not fit that "
                    "architecture are refused before anything is written.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  hiera convert hiera_base_224.pth --to hf --out hiera-base-hf/        # for transformers
  hiera convert timm_model.safetensors --to official --out base.pth    # for the official package
  hiera convert base.pth --to timm --out base_timm.safetensors
  hiera convert runs/ft/model --to timm --out mine_timm.safetensors     # your own model, config kept inside
  hiera convert mine_timm.safetensors --to hf --out mine-hf/            # ...so it converts on without --model
  hiera convert runs/ft/last.pt --to safetensors --out model.safetensors
  hiera convert sam2.1_hiera_small.pt --to timm --out sam2_small_timm.safetensors   # a SAM 2 trunk
  hiera convert runs/mae_sam2/last.pt --to sam2 --out trunk.pt    # a HieraDet MAE's trunk, for SAM 2's build_sam2

The config travels with the weights wherever the layout has room: safetensors metadata, config.json
of a folder, or the "config" entry of a timm .pth (timm reads its "state_dict"). Only the official
.pth layout has no room for it; convert such a file of a custom model with --model, or from the
folder it came from.""",
    )
    p.add_argument("input", help="weights file or directory (official .pth, ours, timm, transformers, safetensors)")
    p.add_argument("--to", required=True, choices=TARGETS,
                   help="target layout (sam2: a SAM 2 trunk as SAM 2's checkpoints hold it)")
    p.add_argument("--out", "-o", required=True, help="output file, or directory for --to hf / official repo layout")
    p.add_argument("--model", "-m", help="zoo model name the weights are for, when the input carries no config "
                                         "(checked against every weight shape)")
    p.set_defaults(func=_run)


@exit_on_interrupt("convert")
def _run(args) -> int:
    try:
        with warnings.catch_warnings(record=True) as notes:
            warnings.simplefilter("always", UserWarning)
            out = convert_checkpoint(args.input, args.out, args.to, model=args.model)
    except (CheckpointError, ValueError, OSError) as e:
        return fail("convert", e)
    for note in notes:  # what the conversion left out or changed, one line each
        print(f"note: {note.message}", file=sys.stderr)
    print(f"wrote {out} ({args.to} layout)")
    return 0
