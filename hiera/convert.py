"""``hiera convert``: move a checkpoint between the official, timm and Hugging Face layouts.

The input may be in any supported layout (detected from its keys); the architecture comes from
the checkpoint's own config, ``--model``, or the zoo model whose weight shapes it matches.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

from .cli import fail
from .weights import CheckpointError, save_atomic, write_atomic

TARGETS = ("official", "safetensors", "timm", "hf")


def _atomic_safetensors(state, path: Path, metadata=None) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.contiguous() for k, v in state.items()}
    write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def convert_checkpoint(src, dst, to: str, model: Optional[str] = None) -> Path:
    """Convert ``src`` (any supported layout) to ``dst`` in the ``to`` layout.

    * ``official``: ``.pth`` holding ``{"model_state": ...}`` as the official package's files do,
      or, when ``dst`` is a directory, ``config.json`` + ``model.safetensors`` as its Hub repos;
    * ``safetensors``: one ``.safetensors`` file, official keys, the config in its metadata;
    * ``timm``: timm's keys (``.safetensors`` or ``.pth``), for ``timm.create_model(...,
      pretrained_cfg_overlay=dict(file=dst))``;
    * ``hf``: a directory for transformers' ``Hiera*.from_pretrained`` (config.json + weights).
    """
    from . import formats
    from .resolve import match_zoo, read_any
    from .zoo import MODELS

    if to not in TARGETS:
        raise ValueError(f"unknown target layout {to!r}; choose one of {list(TARGETS)}")
    state, config, _ = read_any(src)
    if model is not None:
        name = model.split(".", 1)[0]
        if name not in MODELS:
            raise CheckpointError(f"unknown model {model!r}; see `hiera zoo`")
        config = dict(MODELS[name].kwargs)
    if config is None:
        name = match_zoo(state)
        config = dict(MODELS[name].kwargs) if name else None
    if config is not None and "head.projection.weight" in state:
        config["num_classes"] = int(state["head.projection.weight"].shape[0])
    dst = Path(dst)

    if to == "official" and dst.suffix in (".pth", ".pt"):
        save_atomic({"model_state": state}, dst)
    elif to in ("official", "hf"):
        if config is None:
            raise CheckpointError(f"{src} carries no config and matches no zoo model: pass --model NAME")
        if to == "official":
            weights, cfg = state, {k: v for k, v in config.items() if not k.startswith("_")}
        else:
            weights, cfg = formats.official_to_hf(state, config)
        text = json.dumps(cfg, indent=2, sort_keys=True, default=list) + "\n"
        # Weights first: a folder with a config.json but no weights would look like a finished repo.
        _atomic_safetensors(weights, dst / "model.safetensors", metadata={"format": "pt"})
        write_atomic(dst / "config.json", lambda tmp: tmp.write_text(text))
    elif to == "safetensors":
        meta = {"format": "pt", "layout": "official"}
        if config is not None:
            meta["config"] = json.dumps(config, default=list)
        _atomic_safetensors(state, dst, metadata=meta)
    else:  # timm
        timm_state = formats.official_to_timm(state)
        if dst.suffix == ".safetensors":
            _atomic_safetensors(timm_state, dst, metadata={"format": "pt"})
        else:
            save_atomic(timm_state, dst)
    return dst


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert checkpoints between the official, timm and Hugging Face layouts",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""examples:
  hiera convert hiera_base_224.pth --to hf --out hiera-base-hf/        # for transformers
  hiera convert timm_model.safetensors --to official --out base.pth    # for the official package
  hiera convert base.pth --to timm --out base_timm.safetensors
  hiera convert run/checkpoint.pt --to safetensors --out model.safetensors""",
    )
    p.add_argument("input", help="weights file or directory (official .pth, ours, timm, transformers, safetensors)")
    p.add_argument("--to", required=True, choices=TARGETS, help="target layout")
    p.add_argument("--out", "-o", required=True, help="output file, or directory for --to hf / official repo layout")
    p.add_argument("--model", "-m", help="zoo model name, when the input carries no config")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .predict import exit_on_interrupt

    return exit_on_interrupt("hiera convert")(_convert)(args)


def _convert(args) -> int:
    try:
        out = convert_checkpoint(args.input, args.out, args.to, model=args.model)
    except (CheckpointError, ValueError, OSError) as e:
        return fail("convert", e)
    print(f"wrote {out} ({args.to} layout)")
    return 0
