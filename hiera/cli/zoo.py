"""``hiera zoo``: the models, their checkpoints, sizes and reported accuracy."""

from __future__ import annotations

import argparse
import json
from typing import List

import torch

from ..zoo import MODELS, TOP1, checkpoint_source, create_model


def zoo_table() -> List[dict]:
    """One row per zoo model: name, class, input, parameters, checkpoints (and who published each),
    reported top-1."""
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
                "sources": {tag: checkpoint_source(url) for tag, url in spec.checkpoints.items()},
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
    width = max(len(r["class"]) for r in rows) + 2
    print(f"{'model':<28}{'class':<{width}}{'input':<12}{'params (M)':>11}  {'top-1':>6}  checkpoints (source)")
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] else "-"
        by_source: dict = {}
        for c in r["checkpoints"]:
            by_source.setdefault(r["sources"][c], []).append(c + ("*" if c == r["default"] else ""))
        print(
            f"{r['model']:<28}{r['class']:<{width}}{r['input']:<12}{r['params_m']:>11.2f}  {top1:>6}  "
            + ("; ".join(f"{', '.join(tags)} ({source})" for source, tags in by_source.items()) or "-")
        )
    print("\n* default checkpoint; top-1: ImageNet-1k (224) or Kinetics-400 (16x224) as reported in the paper "
          "(SAM 2 reports none for its trunks); sources: Hiera = the paper's files, SAM 2 = SAM 2's checkpoint "
          "files (the trunk is taken), timm = timm's Hub repos")
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
