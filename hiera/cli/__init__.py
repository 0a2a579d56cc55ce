"""The ``hiera`` command line: one entry point, one sub-command per job.

Each sub-command is a thin layer over a library function that the tests call directly.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def fail(command: str, message, code: int = 1) -> int:
    """Report a user error as one line, ``hiera COMMAND: error: MESSAGE``, and return the exit code."""
    print(f"hiera {command}: error: {message}", file=sys.stderr)
    return code


def zoo_table() -> List[dict]:
    """One row per zoo model: name, class, input, parameters, checkpoints, reported top-1."""
    import torch

    from ..zoo import MODELS, TOP1, create_model

    rows = []
    for name, spec in sorted(MODELS.items()):
        with torch.device("meta"):  # sizes only: no memory, no initialisation
            model = create_model(name)
        rows.append(
            {
                "model": name,
                "class": spec.cls.__name__,
                "input": "x".join(str(s) for s in spec.kwargs.get("input_size", (224, 224))),
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                "checkpoints": list(spec.checkpoints),
                "default": spec.default,
                "top1": TOP1.get(name),
            }
        )
    return rows


def _cmd_zoo(args: argparse.Namespace) -> int:
    rows = zoo_table()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'model':<28}{'class':<24}{'input':<12}{'params (M)':>11}  {'top-1':>6}  checkpoints")
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] else "-"
        print(
            f"{r['model']:<28}{r['class']:<24}{r['input']:<12}{r['params_m']:>11.2f}  {top1:>6}  "
            + ", ".join(c + ("*" if c == r["default"] else "") for c in r["checkpoints"])
        )
    print("\n* default checkpoint; top-1: ImageNet-1k (224) or Kinetics-400 (16x224) as reported in the paper")
    return 0


def package_version() -> str:
    """The installed version of this package (its distribution is hiera-toolkit)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hiera-toolkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
        from .. import __version__

        return __version__


EPILOG = """\
examples:
  hiera quickstart
      the whole recipe offline in minutes: synthetic data, MAE pretraining, fine-tuning, a report
  hiera zoo
      the models, their checkpoints and reported accuracy
  hiera predict --model hiera_base_224 cat.jpg
      ImageNet classes of a photo (the checkpoint is downloaded once)
  hiera predict --weights quickstart/finetune/model photo.png
      classes from a model you trained, with the class names saved beside it
  hiera pretrain --data photos/ --model hiera_small_224 --out runs/mae
  hiera finetune --data train/ --val val/ --model hiera_small_224 --init runs/mae/last.pt --out runs/ft
  hiera evaluate --data val/ --weights runs/ft/model

Run "hiera COMMAND --help" for a command's options and more examples. --device auto (the default of
every command that has it) means a CUDA GPU if present, else an Apple mps GPU, else the CPU.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hiera",
        description="Hiera vision transformers: classify, extract features, visualise MAE, pretrain and\n"
                    "fine-tune, convert, export and benchmark.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hiera {package_version()}",
                        help="print the version of this package and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("zoo", help="list models, checkpoints, sizes and reported accuracy",
                       description="List the zoo: every model name, its class, input size, parameters, released "
                                   "checkpoints (* = default) and the top-1 accuracy the paper reports.",
                       epilog="""examples:
  hiera zoo
  hiera zoo --json > zoo.json
  hiera predict --model hiera_small_224.mae_in1k_ft_in1k cat.jpg      # a name and checkpoint from the list""",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_zoo)
    from ..bench import timing as benchmark
    from ..tools import convert, export, features as extract, predict, mae_viz as viz
    from ..train import quickstart, commands as train

    quickstart.add_parser(sub)
    train.add_parser(sub)

    predict.add_parser(sub)
    extract.add_parser(sub)
    viz.add_parser(sub)
    convert.add_parser(sub)
    export.add_parser(sub)
    benchmark.add_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except KeyboardInterrupt:  # whatever the command: one line and the shell's code for Ctrl-C
        print(f"hiera {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
