"""``hiera zoo``: the models, their checkpoints, sizes and reported accuracy."""

from __future__ import annotations

import argparse
import json
from typing import List

import torch

from ..zoo import MODELS, TOP1, create_model


def zoo_table() -> List[dict]:
    """One row per zoo model: name, class, input, parameters, checkpoints, reported top-1."""
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


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("zoo", help="list models, checkpoints, sizes and reported accuracy",
                              description="List the zoo: every model name, its class, input size, parameters, "
                                          "released checkpoints (* = default) and the top-1 accuracy the paper "
                                          "reports.",
                              epilog="""examples:
  hiera zoo
  hiera zoo --json > zoo.json
  hiera predict --model hiera_small_224.mae_in1k_ft_in1k cat.jpg      # a name and checkpoint from the list""",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_zoo)
