"""SAM2's HieraDet trunk as a reference: runs INSIDE the sam2 env (see ``sam2_env.py``).

Imports only torch, PyYAML and ``sam2`` (never our ``hiera``).  Usage::

    python sam2_reference.py OUT [--request REQUEST.json]     # request read from stdin without --request

The request is a JSON object, either one case or ``{"mode": ..., "cases": [case, ...]}``
(top-level keys other than "cases" are defaults for every case).  A case::

    mode         "random" (default): build SAM2's trunk Hiera(**kwargs) with seeded random weights
                 "load": build it and load the state dict file "state_dict" with strict=True
                 "build_sam2": build the WHOLE SAM2 model of "config" with SAM2's own
                     sam2.build_sam.build_sam2 (seeded random weights), replace its
                     image_encoder.trunk.* weights by those of the file "state_dict" (the key sets
                     must match exactly), save that as a SAM2 checkpoint {"model": state_dict} to
                     "checkpoint" (default: OUT + ".ckpt.pt"), load it back with
                     build_sam2(config, checkpoint) (SAM2's loader: strict, raises on missing or
                     unexpected keys) and run its trunk
    config       "T" | "S" | "B+" | "L" (SAM2.1 configs; "sam2/T", "sam2.1/L", ... pick the family;
                 the trunks of SAM2 and SAM2.1 are the same), or a config file name as
                 build_sam2 takes it ("configs/sam2.1/sam2.1_hiera_t.yaml")
    kwargs       trunk keyword arguments (instead of, or updating, those of "config")
    seed         int (default 0): weights (mode random / build_sam2) and inputs
    input_sizes  [[H, W], ...] (default [[128, 128]])
    batch        int (default 1)
    return_state_dict  bool (default true): put the trunk's weights into OUT (L's are 0.86 GB;
                 without them, "digests" still identifies them)
    state_dict   path (modes load / build_sam2): a torch file (or .safetensors) holding a trunk state
                 dict, either with SAM2's checkpoint names (image_encoder.trunk.*, possibly inside
                 {"model": ...}: then EVERY key must have that prefix) or the trunk's own names

OUT is written with torch.save (tensors, lists, dicts, str, int only: loads with weights_only)::

    {"sam2_version": str, "torch_version": str,
     "cases": [{"name": str, "mode": str, "config": str or None, "kwargs": {trunk kwargs},
                "seed": int, "input_sizes": [[H, W], ...],
                "state_dict": {trunk key: tensor},   # the trunk's weights, trunk key names (unless
                                                     # return_state_dict is false)
                "shapes": {trunk key: [int]}, "digests": {trunk key: sha256 hex of the float32 bytes},
                "inputs": [tensor [B, 3, H, W] per size],
                "outputs": [[tensor [B, C_i, H_i, W_i] per stage, stage 1 (highest res.) first] per size],
                "channel_list": [int]  (SAM2's, deepest stage first),
                "stage_ends": [int], "q_pool_blocks": [int],
                "window_sizes": [int per block] (0 = global attention),
                "checkpoint_keys": [str]  (build_sam2 only: all keys of the SAM2 checkpoint)}]}

Random weights (independent of torch's init functions): for each parameter in name order, from
one ``torch.Generator`` seeded with ``seed``: ``pos_embed*`` ~ 0.5 N(0,1), norm weights
1 + 0.2 N(0,1), biases 0.1 N(0,1), other weights N(0,1)/sqrt(fan_in).  Input i of a case is
``torch.randn(batch, 3, H, W)`` from a generator seeded with ``seed * 1000 + i + 1``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import torch

TRUNK_PREFIX = "image_encoder.trunk."
CONFIG_FILES = {"T": "t", "S": "s", "B+": "b+", "L": "l"}


def config_file(config: str) -> str:
    """Config name ("T", "sam2/L", ...) -> build_sam2's config file name."""
    if config.endswith(".yaml"):
        return config
    family, _, size = config.rpartition("/")
    family = family or "sam2.1"
    if size.upper() not in CONFIG_FILES or family not in ("sam2", "sam2.1"):
        raise SystemExit(f"unknown config {config!r}: use T, S, B+, L, optionally prefixed by sam2/ or sam2.1/")
    return f"configs/{family}/{family}_hiera_{CONFIG_FILES[size.upper()]}.yaml"


def trunk_kwargs(config: str) -> dict:
    """The trunk's keyword arguments in a SAM2 config file (without ``_target_``)."""
    import sam2
    import yaml

    path = Path(sam2.__file__).parent / config_file(config)
    cfg = yaml.safe_load(path.read_text())
    trunk = dict(cfg["model"]["image_encoder"]["trunk"])
    target = trunk.pop("_target_")
    if target != "sam2.modeling.backbones.hieradet.Hiera":
        raise SystemExit(f"{path}: unexpected trunk {target}")
    return trunk


def randomize_(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(module.named_parameters()):
            noise = torch.randn(p.shape, generator=g, dtype=torch.float32)
            last = name.rsplit(".", 1)[-1]
            if last.startswith("pos_embed"):
                value = 0.5 * noise
            elif ".norm" in name and last == "weight":
                value = 1.0 + 0.2 * noise
            elif last == "bias":
                value = 0.1 * noise
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                value = noise / math.sqrt(fan_in)
            p.copy_(value)


def tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's values (as contiguous float32 bytes)."""
    a = t.detach().to(torch.float32).contiguous().cpu().view(torch.uint8).numpy()
    return hashlib.sha256(a).hexdigest()


def read_state_dict(path: str) -> dict:
    """A trunk state dict from a file, with the trunk's own key names (see module docstring)."""
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    keys = list(state)
    prefixed = [k for k in keys if k.startswith(TRUNK_PREFIX)]
    if prefixed:
        others = [k for k in keys if not k.startswith(TRUNK_PREFIX)]
        if others:
            raise SystemExit(f"{path}: keys outside {TRUNK_PREFIX}*: {others[:10]}")
        state = {k[len(TRUNK_PREFIX):]: v for k, v in state.items()}
    return state


def run_trunk(trunk, sizes, batch, seed):
    inputs, outputs = [], []
    with torch.no_grad():
        for i, (h, w) in enumerate(sizes):
            g = torch.Generator().manual_seed(seed * 1000 + i + 1)
            x = torch.randn(batch, 3, h, w, generator=g)
            outs = trunk(x)
            inputs.append(x)
            outputs.append([o.detach().contiguous().clone() for o in outs])
    return inputs, outputs


def run_case(case: dict, out_path: Path, index: int) -> dict:
    from sam2.modeling.backbones.hieradet import Hiera

    mode = case.get("mode", "random")
    config = case.get("config")
    seed = int(case.get("seed", 0))
    sizes = [list(map(int, s)) for s in case.get("input_sizes", [[128, 128]])]
    batch = int(case.get("batch", 1))
    kwargs = trunk_kwargs(config) if config else {}
    kwargs.update(case.get("kwargs") or {})
    result = {"name": case.get("name") or f"{config or 'kwargs'}-{index}", "mode": mode, "config": config,
              "kwargs": kwargs, "seed": seed, "input_sizes": sizes}

    if mode in ("random", "load"):
        torch.manual_seed(seed)
        trunk = Hiera(**kwargs)
        if mode == "random":
            randomize_(trunk, seed)
        else:
            if not case.get("state_dict"):
                raise SystemExit("mode 'load' needs \"state_dict\": a file")
            trunk.load_state_dict(read_state_dict(case["state_dict"]), strict=True)
    elif mode == "build_sam2":
        from sam2.build_sam import build_sam2

        if not config or case.get("kwargs"):
            raise SystemExit("mode 'build_sam2' needs a \"config\" and no \"kwargs\"")
        if not case.get("state_dict"):
            raise SystemExit("mode 'build_sam2' needs \"state_dict\": a file")
        torch.manual_seed(seed)
        model = build_sam2(config_file(config), None, device="cpu")
        full = model.state_dict()
        trunk_keys = {k for k in full if k.startswith(TRUNK_PREFIX)}
        given = {TRUNK_PREFIX + k: v for k, v in read_state_dict(case["state_dict"]).items()}
        if set(given) != trunk_keys:
            raise SystemExit(f"trunk keys differ from SAM2's {config}: missing {sorted(trunk_keys - set(given))[:10]}, "
                             f"unexpected {sorted(set(given) - trunk_keys)[:10]}")
        full.update(given)
        ckpt = Path(case.get("checkpoint") or f"{out_path}.ckpt.pt")
        torch.save({"model": full}, ckpt)
        del model, full
        model = build_sam2(config_file(config), str(ckpt), device="cpu")  # SAM2's own loader
        trunk = model.image_encoder.trunk
        result["checkpoint_keys"] = sorted(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    else:
        raise SystemExit(f"unknown mode {mode!r}")

    trunk.eval()
    state = trunk.state_dict()
    result["shapes"] = {k: list(v.shape) for k, v in state.items()}
    result["digests"] = {k: tensor_digest(v) for k, v in state.items()}
    if case.get("return_state_dict", True):
        result["state_dict"] = {k: v.detach().clone() for k, v in state.items()}
    result["inputs"], result["outputs"] = run_trunk(trunk, sizes, batch, seed)
    result["channel_list"] = [int(c) for c in trunk.channel_list]
    result["stage_ends"] = [int(i) for i in trunk.stage_ends]
    result["q_pool_blocks"] = [int(i) for i in trunk.q_pool_blocks]
    result["window_sizes"] = [int(b.window_size) for b in trunk.blocks]
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="file to write (torch.save)")
    parser.add_argument("--request", help="JSON request file (default: read stdin)")
    ns = parser.parse_args(argv)
    text = Path(ns.request).read_text() if ns.request else sys.stdin.read()
    request = json.loads(text)
    if "cases" in request:
        defaults = {k: v for k, v in request.items() if k != "cases"}
        cases = [dict(defaults, **c) for c in request["cases"]]
    else:
        cases = [request]

    import importlib.metadata as md

    out = Path(ns.out)
    results = [run_case(c, out, i) for i, c in enumerate(cases)]
    payload = {"sam2_version": md.version("sam2"), "torch_version": str(torch.__version__), "cases": results}
    tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
    torch.save(payload, tmp)
    os.replace(tmp, out)
    print(json.dumps({"out": str(out), "cases": [
        {"name": r["name"], "mode": r["mode"], "shapes": [[list(o.shape) for o in outs] for outs in r["outputs"]]}
        for r in results]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
