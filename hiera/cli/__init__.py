"""The ``hiera`` command line: one entry point, one sub-command per job, one module per command.

Each command module parses arguments and calls a library function that the tests also call directly;
nothing outside this sub-package imports it.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import List, Optional

from .. import __version__
from ..fast import reuse_memory
from . import benchmark, convert, export, features, mae_viz, predict, quickstart, train, zoo
from .common import fail  # noqa: F401  (hiera.cli.fail: kept for code written against it)


def package_version() -> str:
    """The installed version of this package (its distribution is hiera-toolkit)."""
    try:
        return version("hiera-toolkit")
    except PackageNotFoundError:  # run from a source tree that was never installed
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
    zoo.add_parser(sub)
    quickstart.add_parser(sub)
    train.add_parser(sub)
    predict.add_parser(sub)
    features.add_parser(sub)
    mae_viz.add_parser(sub)
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
        reuse_memory()  # a command's process is ours: keep freed memory for the next batch (hiera.fast)
        return args.func(args)
    except KeyboardInterrupt:  # whatever the command: one line and the shell's code for Ctrl-C
        print(f"hiera {args.command}: interrupted", file=sys.stderr)
        return 130


