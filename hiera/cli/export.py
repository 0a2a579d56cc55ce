"""``hiera export``: a classifier to ONNX, checked against PyTorch (:mod:`hiera.tools.export`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..tools.export import EXPORTERS, OnnxRuntimeMissing, export_onnx, verify_onnx
from ..weights import CheckpointError
from ..zoo import load_model
from .common import exit_on_interrupt, fail


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``export`` on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "export",
        help="export a classifier to ONNX (logits), checked with onnxruntime",
        description="Export a Hiera classifier's logits to ONNX and compare onnxruntime's output with PyTorch's.",
        epilog="""examples:
  hiera export --model hiera_base_224 --out hiera_base_224.onnx
      the ImageNet classifier (downloaded once), symbolic batch, checked with onnxruntime
  hiera export --weights quickstart/finetune/model --out mine.onnx
      a classifier you trained (its model/ folder)
  hiera export --model hiera_base_16x224 --no-dynamic-batch --batch 2
      a video classifier with a fixed batch of 2: input [2, 3, 16, 224, 224]

The graph maps "input" (float32, normalised as for the model) to "logits" [B, classes], no softmax.
Weights over 1.5 GiB go to a side file OUT.data next to the .onnx.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="zoo name (e.g. hiera_base_224, or hiera_base_224.mae_in1k_ft_in1k) or Hub "
                   "repo id; with --weights it names the architecture")
    p.add_argument("--weights", help="weights file or save_pretrained directory")
    p.add_argument("--out", help="the .onnx file to write (default: <model>.onnx)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the graph / of the check (default 1)")
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="symbolic batch dimension (default on; --no-dynamic-batch fixes it to --batch)")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="compare onnxruntime's logits with PyTorch's on random input (default on)")
    p.add_argument("--atol", type=float, default=1e-3,
                   help="largest absolute logit difference accepted by --verify (default 1e-3)")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's, 20 with torch 2.14)")
    p.add_argument("--exporter", choices=EXPORTERS, default="auto",
                   help="auto: torch.export, falling back to TorchScript (default)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="spatial input size (H W, or T H W for video); default the model's")
    p.set_defaults(func=_cmd_export)
    return p


@exit_on_interrupt("export")
def _cmd_export(args: argparse.Namespace) -> int:
    if args.model is None and args.weights is None:
        return fail("export", "say which model: --model NAME and/or --weights PATH", 2)
    if args.batch < 1:
        return fail("export", f"--batch must be >= 1, got {args.batch}", 2)
    if args.opset is not None and not 7 <= args.opset <= 30:
        return fail("export", f"--opset must be an ONNX opset version (e.g. 17, 18, 20), got {args.opset}", 2)
    if not args.atol > 0:
        return fail("export", f"--atol must be > 0, got {args.atol}", 2)
    try:
        # The graph outputs classifier logits: a head left at its random init would export nonsense.
        model = load_model(args.model, args.weights, mae=False, need_head=True)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        return fail("export", f"could not load the model: {e}", 1)
    if hasattr(model, "forward_decoder"):
        return fail("export", "this is an MAE model (no classification head); export needs a classifier", 2)
    model = model.float().cpu().eval()
    if args.input_size is not None and len(args.input_size) != len(model.input_size):
        return fail("export", f"--input-size needs {len(model.input_size)} numbers for this model "
                      f"(its size is {' '.join(map(str, model.input_size))})", 2)
    if args.out:
        out = Path(args.out)
    else:
        if args.model:
            stem = args.model.replace("/", "_")
        else:
            stem = Path(args.weights).name
            for suffix in (".safetensors", ".pth", ".pt", ".bin", ".ckpt"):
                stem = stem[: -len(suffix)] if stem.endswith(suffix) else stem
        out = Path(stem + ".onnx")
    try:
        info = export_onnx(model, out, input_size=args.input_size, batch=args.batch,
                           dynamic_batch=args.dynamic_batch, opset=args.opset, exporter=args.exporter)
    except (ValueError, TypeError) as e:
        return fail("export", str(e), 2)
    except Exception as e:  # noqa: BLE001 - exporter failures: missing packages, unsupported operators
        lines = str(e).strip().splitlines() or [type(e).__name__]
        return fail("export", f"export failed: {type(e).__name__}: " + "\n  ".join(lines[:3]), 1)
    extra = f" + {info.path}.data" if info.external_data else ""
    print(f"wrote {info.path}{extra} ({info.exporter} exporter, opset {info.opset}, input {list(info.input_shape)})")
    if not args.verify:
        return 0
    size = tuple(args.input_size) if args.input_size else tuple(model.input_size)
    batches = [args.batch] + ([args.batch + 1] if args.dynamic_batch else [])
    worst = 0.0
    for b in batches:
        x = torch.randn(b, model.in_chans, *size)
        try:
            diff = verify_onnx(info.path, model, x, missing_ok=False)
        except OnnxRuntimeMissing as e:
            print(f"note: {e}", file=sys.stderr)
            return 0
        worst = max(worst, diff)
        print(f"onnxruntime vs PyTorch, batch {b}: max |logit difference| = {diff:.3g}")
    if worst > args.atol:
        return fail("export", f"onnxruntime's logits differ from PyTorch's by {worst:.3g} > --atol {args.atol:g}", 1)
    return 0
