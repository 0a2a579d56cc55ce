"""Generate reference data from the OFFICIAL Hiera implementation (hiera-transformer 0.1.4).

Runs INSIDE the official environment (see ``official_env.py``); it imports only the
standard library, torch and the official ``hiera`` (the latter lazily, inside the
functions, so that this module's case table can be imported from our own env too).

    python generate.py OUT_DIR [--only CASE ...] [--no-zoo] [--no-hub]

writes into OUT_DIR:

``zoo.pt``
    ``{constructor_name: {"keys", "shapes", "num_params", "config", "hub_mixin_config",
    "checkpoints", "default", "class"}}`` for the 20 official constructors (built with the
    ``torch.nn.init`` functions disabled, so this is about structure only).

``case_<name>.pt`` (one per entry of :data:`CASES`)
    ``{"name", "constructor", "kwargs", "class", "config", "meta", "state_dict", "inputs",
    "outputs"}`` -- see :func:`make_classifier_case` / :func:`make_mae_case` for the keys.

``hub_official/<case>/``
    A Hugging Face style save made by the official ``save_pretrained`` and the outputs of
    the saved model (see :func:`make_hub_saves`).

``api.json``
    ``{module: [public names]}`` for ``hiera`` and its submodules ``hiera``, ``hiera_utils``,
    ``hiera_mae`` and ``hfhub``: what code written against the official package can import
    (typing helpers and third-party modules left out, the submodules themselves kept).

``index.json``
    Human readable summary: cases, their input/output shapes, timings, hub notes.

All tensors are float32 on CPU.  Every file loads with ``torch.load(p, weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

BATCH = 2

# Seeds (recorded in every case's "meta").
SEED_INIT = 0  # torch.manual_seed before constructing the model (real init)
SEED_PERTURB = 1  # torch.Generator for the deterministic parameter perturbation
SEED_INPUT = 2  # torch.Generator for the input x
SEED_MASK = 3  # torch.manual_seed before model.get_random_mask(...)
SEED_RNG_FORWARD = 4  # torch.manual_seed before MAE forward with random masking
SEED_LABEL_MASK = 5  # torch.Generator for the prediction-resolution mask of the label fns

CLASSIFIER_MASK_RATIO = 0.5
MAE_MASK_RATIO_IMAGE = 0.6
MAE_MASK_RATIO_VIDEO = 0.9
MAE_RNG_MASK_RATIO = 0.75

PERTURB_STD = 0.02
HEAD_STD = 0.05
HEAD_KEYS = ("head.projection.weight", "head.projection.bias")

IMAGE_CONSTRUCTORS = ["tiny_224", "small_224", "base_224", "base_plus_224", "large_224", "huge_224"]
VIDEO_CONSTRUCTORS = ["base_16x224", "base_plus_16x224", "large_16x224", "huge_16x224"]
ZOO_NAMES = [f"hiera_{n}" for n in IMAGE_CONSTRUCTORS + VIDEO_CONSTRUCTORS] + [
    f"mae_hiera_{n}" for n in IMAGE_CONSTRUCTORS + VIDEO_CONSTRUCTORS
]

_TINY_IMAGE = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2, 1))
_TINY_VIDEO = dict(
    input_size=(8, 64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1),
    q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True,
)
_SMALL_DECODER = dict(decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)

# name -> (class, constructor or None, kwargs, input shape without batch)
CASES = {
    # ---- classifiers (class Hiera)
    "hiera_tiny_224": ("Hiera", "hiera_tiny_224", {}, (3, 224, 224)),
    "hiera_base_16x224": ("Hiera", "hiera_base_16x224", {}, (3, 16, 224, 224)),
    "tiny_image": ("Hiera", None, dict(_TINY_IMAGE, num_classes=7), (3, 64, 64)),
    "tiny_image_qpool2": ("Hiera", None, dict(_TINY_IMAGE, num_classes=7, q_pool=2), (3, 64, 64)),
    "tiny_image_qpool1_mua": (
        "Hiera", None,
        dict(_TINY_IMAGE, num_classes=7, q_pool=1, mask_unit_attn=(True, False, False, False)),
        (3, 64, 64),
    ),
    "tiny_image_nonsquare": ("Hiera", None, dict(_TINY_IMAGE, num_classes=7, input_size=(64, 96)), (3, 64, 96)),
    # dim/head multipliers, mlp ratio, grey-scale input, 2 heads from the start
    "tiny_image_muls": (
        "Hiera", None,
        dict(_TINY_IMAGE, num_heads=2, dim_mul=1.5, head_mul=1.0, mlp_ratio=2.0, in_chans=1, num_classes=3),
        (1, 64, 64),
    ),
    # 4x4 mask units (smaller than q_stride**(#stages-1) = 8x8), q_pool=2, 2 blocks per stage
    # and a non-monotonic mask_unit_attn, which exercises the "lag by one block" rule
    # (the first block of stage k uses mask_unit_attn[k-1]).
    # Upstream quirk recorded here: with mask units smaller than the unroll windows, the
    # masked forward is self-inconsistent -- PatchEmbed zeroes pixels by the row-major mask
    # unit index, but the token dropping (mask tiled over the unrolled tokens) maps mask
    # index -> window position in unroll order, so e.g. keeping mask unit (0,1) keeps the
    # tokens of mask unit (0,2); and the masked intermediates come back grouped in 8x8
    # windows ([B, 2, 8, 8, C] for 8 kept 4x4 units), not per mask unit.
    "tiny_image_mu4_lag": (
        "Hiera", None,
        dict(_TINY_IMAGE, num_heads=2, stages=(2, 2, 2, 2), mask_unit_size=(4, 4), q_pool=2,
             mask_unit_attn=(False, True, True, False), patch_kernel=(5, 5), patch_padding=(2, 2),
             num_classes=4),
        (3, 64, 64),
    ),
    "tiny_video": ("Hiera", None, dict(_TINY_VIDEO, num_classes=5), (3, 8, 64, 64)),
    # ---- masked autoencoders (class MaskedAutoencoderHiera)
    "mae_hiera_tiny_224": ("MaskedAutoencoderHiera", "mae_hiera_tiny_224", {}, (3, 224, 224)),
    "mae_hiera_base_16x224": ("MaskedAutoencoderHiera", "mae_hiera_base_16x224", {}, (3, 16, 224, 224)),
    "mae_tiny_image": ("MaskedAutoencoderHiera", None, dict(_TINY_IMAGE, q_pool=2, **_SMALL_DECODER), (3, 64, 64)),
    # q_pool=1: a single fusion head; non-square grey-scale input; decoder of depth 1
    "mae_tiny_image_qpool1": (
        "MaskedAutoencoderHiera", None,
        dict(_TINY_IMAGE, input_size=(64, 96), in_chans=1, stages=(1, 1, 1, 1), q_pool=1, mlp_ratio=2.0,
             decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1),
        (1, 64, 96),
    ),
    "mae_tiny_video": ("MaskedAutoencoderHiera", None, dict(_TINY_VIDEO, q_pool=2, **_SMALL_DECODER), (3, 8, 64, 64)),
}
CASE_NAMES = list(CASES)

# Cases additionally saved with the official save_pretrained (see make_hub_saves).
HUB_CASES = ("tiny_image", "mae_tiny_image")

CLASSIFIER_OUTPUT_KEYS = (
    "train_logits", "eval_probs", "eval_out", "intermediates",
    "mask", "masked_out", "masked_intermediates",
)
MAE_OUTPUT_KEYS = (
    "mask", "loss", "preds", "labels", "out_mask",
    "latent", "pred", "pred_mask",
    "rng_loss", "rng_preds", "rng_labels", "rng_mask",
    "label_mask", "label_norm", "label_raw",
)


# --------------------------------------------------------------------------- helpers


def log(msg: str) -> None:
    print(msg, flush=True)


def plain(value):
    """Plain-python (torch.load weights_only friendly) version of a config value.

    bool/int/float/str/None stay, tuples stay tuples, lists stay lists, dicts recurse;
    anything else (e.g. the ``functools.partial`` norm_layer of the official MAE) is
    replaced by its ``repr()``.
    """
    # exact builtin types only: e.g. torch.__version__ is a str subclass (TorchVersion)
    # that torch.load(weights_only=True) refuses to unpickle
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, tuple):
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    return repr(value)


def jsonable(value):
    """Like :func:`plain` but with tensors summarised, for index.json."""
    if isinstance(value, torch.Tensor):
        return {"shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    return plain(value)


_INIT_FUNCS = (
    "uniform_", "normal_", "trunc_normal_", "constant_", "ones_", "zeros_", "eye_", "dirac_",
    "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_", "orthogonal_",
    "sparse_",
)


@contextlib.contextmanager
def no_init():
    """Temporarily turn the ``torch.nn.init`` in-place initialisers into no-ops."""
    saved = {}
    for name in _INIT_FUNCS:
        if hasattr(torch.nn.init, name):
            saved[name] = getattr(torch.nn.init, name)
            setattr(torch.nn.init, name, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(torch.nn.init, name, fn)


def clone_tree(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone().contiguous()
    if isinstance(obj, (list, tuple)):
        return type(obj)(clone_tree(o) for o in obj)
    if isinstance(obj, dict):
        return {k: clone_tree(v) for k, v in obj.items()}
    return obj


def save(obj, path: Path) -> None:
    """torch.save atomically, after checking the file loads with weights_only=True."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    torch.load(tmp, weights_only=True, mmap=True)  # raises if anything is not allowlisted
    os.replace(tmp, path)


def official():
    import hiera  # the official package (this script runs in the official env)

    return hiera


def official_version() -> str:
    try:
        import importlib.metadata as md

        return md.version("hiera-transformer")
    except Exception:  # pragma: no cover
        return "unknown"


def build_case_model(name: str):
    cls_name, constructor, kwargs, _ = CASES[name]
    h = official()
    torch.manual_seed(SEED_INIT)
    if constructor is not None:
        model = getattr(h, constructor)(**kwargs)
    else:
        model = getattr(h, cls_name)(**kwargs)
    assert type(model).__name__ == cls_name, (name, type(model).__name__)
    perturb_(model)
    return model


@torch.no_grad()
def perturb_(model: torch.nn.Module) -> None:
    """Make every float parameter non-trivial, deterministically (see module docs)."""
    g = torch.Generator().manual_seed(SEED_PERTURB)
    for pname, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not p.is_floating_point():
            continue
        noise = torch.randn(p.shape, generator=g)
        if pname in HEAD_KEYS:
            p.copy_(noise * HEAD_STD)
        else:
            p.add_(noise * PERTURB_STD)


def make_input(shape) -> torch.Tensor:
    return torch.randn(BATCH, *shape, generator=torch.Generator().manual_seed(SEED_INPUT))


def state_dict_of(model) -> dict:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- zoo


def make_zoo(out_dir: Path) -> dict:
    h = official()
    zoo = {}
    for name in ZOO_NAMES:
        t0 = time.time()
        ctor = getattr(h, name)
        with no_init():
            model = ctor()
        sd = model.state_dict()
        zoo[name] = {
            "keys": list(sd.keys()),
            "shapes": {k: list(v.shape) for k, v in sd.items()},
            "num_params": int(sum(p.numel() for p in model.parameters())),
            "config": plain(dict(model.config)),
            # what huggingface_hub's mixin recorded at construction; it is what
            # save_pretrained() writes as config.json when no config= is passed
            "hub_mixin_config": plain(getattr(model, "_hub_mixin_config", None)),
            "checkpoints": dict(getattr(ctor, "checkpoints", None) or {}),
            "default": getattr(ctor, "default", None),
            "class": type(model).__name__,
        }
        log(f"  zoo {name:28s} {type(model).__name__:24s} {zoo[name]['num_params']:>12,d} params "
            f"{time.time() - t0:5.1f}s")
        del model, sd
        gc.collect()
    save(zoo, out_dir / "zoo.pt")
    return zoo


API_MODULES = ["hiera", "hiera.hiera", "hiera.hiera_utils", "hiera.hiera_mae", "hiera.hfhub"]


def make_api(out_dir: Path) -> dict:
    """The public names of each official module after a plain ``import hiera``."""
    import importlib
    import inspect

    official()
    api = {}
    for name in API_MODULES:
        module = importlib.import_module(name)
        names = []
        for attr in sorted(dir(module)):
            if attr.startswith("_"):
                continue
            obj = getattr(module, attr)
            if inspect.ismodule(obj):
                if obj.__name__.startswith("hiera."):
                    names.append(attr)
            elif getattr(obj, "__module__", None) not in ("typing", "functools"):
                names.append(attr)
        api[name] = names
    (out_dir / "api.json").write_text(json.dumps(api, indent=1) + "\n")
    return api


FLOP_CASES = {  # constructor -> input shape at batch 1 (counted in inference mode and in a training step)
    "hiera_tiny_224": (1, 3, 224, 224),
    "hiera_base_16x224": (1, 3, 16, 224, 224),
}


def make_flops(out_dir: Path) -> dict:
    """``torch.utils.flop_counter`` totals of the official models: a forward under
    ``torch.inference_mode()`` in eval mode, and a training step's forward + backward."""
    from torch.utils.flop_counter import FlopCounterMode

    h = official()
    flops = {}
    for name, shape in FLOP_CASES.items():
        torch.manual_seed(0)
        model = getattr(h, name)()
        x = torch.randn(shape)
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
        inference = counter.get_total_flops()
        with FlopCounterMode(display=False) as counter:
            model.train()(x).float().logsumexp(-1).sum().backward()
        flops[name] = {"shape": list(shape), "inference": inference, "train": counter.get_total_flops()}
    (out_dir / "flops.json").write_text(json.dumps(flops, indent=1) + "\n")
    return flops


# --------------------------------------------------------------------------- cases


def case_meta(**extra) -> dict:
    meta = {
        "batch": BATCH,
        "seed_init": SEED_INIT,
        "seed_perturb": SEED_PERTURB,
        "seed_input": SEED_INPUT,
        "seed_mask": SEED_MASK,
        "perturb_std": PERTURB_STD,
        "head_std": HEAD_STD,
        "torch_version": str(torch.__version__),
        "official_version": official_version(),
        "num_threads": torch.get_num_threads(),
    }
    meta.update(extra)
    return plain(meta)


@torch.no_grad()
def make_classifier_case(name: str) -> dict:
    """Outputs of an official ``Hiera`` classifier.

    inputs:  x [B, C, (T,) H, W]; mask (same tensor as outputs["mask"]).
    outputs:
      train_logits          model.train(); model(x)                       [B, num_classes]
      eval_probs            model.eval();  model(x)  (softmax probs)      [B, num_classes]
      eval_out, intermediates = model(x, return_intermediates=True)  (eval)
                            intermediates[i]: [B, *spatial_i, C_i] one per stage
      mask                  torch.manual_seed(3); model.get_random_mask(x, 0.5)  bool [B, #MUs]
      masked_out, masked_intermediates = model(x, mask=mask, return_intermediates=True) (eval)
                            masked_out: final tokens [B, N_kept, C] (no norm/head when masked)
                            masked_intermediates[i]: [B, #MUs_kept, *mu_shape_i, C_i]
    """
    cls_name, constructor, kwargs, in_shape = CASES[name]
    model = build_case_model(name)
    x = make_input(in_shape)
    out = {}

    model.train()
    out["train_logits"] = model(x)
    model.eval()
    out["eval_probs"] = model(x)
    eval_out, interm = model(x, return_intermediates=True)
    out["eval_out"], out["intermediates"] = eval_out, list(interm)

    torch.manual_seed(SEED_MASK)
    mask = model.get_random_mask(x, CLASSIFIER_MASK_RATIO)
    out["mask"] = mask
    masked_out, masked_interm = model(x, mask=mask, return_intermediates=True)
    out["masked_out"], out["masked_intermediates"] = masked_out, list(masked_interm)

    case = {
        "name": name,
        "constructor": constructor,
        "kwargs": dict(kwargs),
        "class": cls_name,
        "config": plain(dict(model.config)),
        "meta": case_meta(mask_ratio=CLASSIFIER_MASK_RATIO),
        "state_dict": state_dict_of(model),
        "inputs": {"x": x.clone(), "mask": mask.clone()},
        "outputs": clone_tree(out),
    }
    assert set(case["outputs"]) == set(CLASSIFIER_OUTPUT_KEYS)
    return case


@torch.no_grad()
def make_mae_case(name: str) -> dict:
    """Outputs of an official ``MaskedAutoencoderHiera`` (train mode throughout).

    inputs:  x; mask (same tensor as outputs["mask"]); label_mask (= outputs["label_mask"]).
    outputs:
      mask                  torch.manual_seed(3); model.get_random_mask(x, 0.6 image / 0.9 video)
      loss, preds, labels, out_mask = model(x, mask=mask)
                            loss: scalar; preds/labels: [N_masked_pred_tokens, pred_dim];
                            out_mask: the MU-level keep mask (returned unchanged)
      latent, _ = model.forward_encoder(x, mask_ratio, mask=mask)
                            fused encoder output [B, #MUs_kept, *mu_final, C_enc]
      pred, pred_mask = model.forward_decoder(latent, mask)
                            pred: [B, #pred_tokens, pred_dim]; pred_mask: bool [B, #pred_tokens]
                            (True = visible; the loss uses ~pred_mask)
      rng_loss, rng_preds, rng_labels, rng_mask:
                            torch.manual_seed(4); model(x, mask_ratio=0.75)
      label_mask            bool [B, #pred_tokens] (torch.Generator seed 5, p=0.5)
      label_norm / label_raw  model.get_pixel_label_{2d,3d}(x, label_mask, norm=True / False)
    """
    cls_name, constructor, kwargs, in_shape = CASES[name]
    model = build_case_model(name)
    model.train()
    x = make_input(in_shape)
    is_video = len(model.q_stride) == 3
    ratio = MAE_MASK_RATIO_VIDEO if is_video else MAE_MASK_RATIO_IMAGE
    out = {}

    torch.manual_seed(SEED_MASK)
    mask = model.get_random_mask(x, ratio)
    out["mask"] = mask
    loss, preds, labels, out_mask = model(x, mask=mask)
    out.update(loss=loss, preds=preds, labels=labels, out_mask=out_mask)

    latent, _ = model.forward_encoder(x, ratio, mask=mask)
    pred, pred_mask = model.forward_decoder(latent, mask)
    out.update(latent=latent, pred=pred, pred_mask=pred_mask)

    torch.manual_seed(SEED_RNG_FORWARD)
    rng = model(x, mask_ratio=MAE_RNG_MASK_RATIO)
    for k, v in zip(("rng_loss", "rng_preds", "rng_labels", "rng_mask"), rng):
        out[k] = v

    n_pred = math.prod(model.tokens_spatial_shape_final)
    label_mask = torch.rand(BATCH, n_pred, generator=torch.Generator().manual_seed(SEED_LABEL_MASK)) < 0.5
    label_fn = model.get_pixel_label_3d if is_video else model.get_pixel_label_2d
    out["label_mask"] = label_mask
    out["label_norm"] = label_fn(x, label_mask, norm=True)
    out["label_raw"] = label_fn(x, label_mask, norm=False)

    case = {
        "name": name,
        "constructor": constructor,
        "kwargs": dict(kwargs),
        "class": cls_name,
        "config": plain(dict(model.config)),
        "meta": case_meta(
            mask_ratio=ratio,
            rng_mask_ratio=MAE_RNG_MASK_RATIO,
            seed_rng_forward=SEED_RNG_FORWARD,
            seed_label_mask=SEED_LABEL_MASK,
            label_fn="get_pixel_label_3d" if is_video else "get_pixel_label_2d",
            pred_stride=int(model.pred_stride),
            tokens_spatial_shape_final=tuple(model.tokens_spatial_shape_final),
            mask_unit_spatial_shape_final=tuple(model.mask_unit_spatial_shape_final),
        ),
        "state_dict": state_dict_of(model),
        "inputs": {"x": x.clone(), "mask": mask.clone(), "label_mask": label_mask.clone()},
        "outputs": clone_tree(out),
    }
    assert set(case["outputs"]) == set(MAE_OUTPUT_KEYS)
    return case


def make_case(name: str) -> dict:
    if CASES[name][0] == "Hiera":
        return make_classifier_case(name)
    return make_mae_case(name)


# --------------------------------------------------------------------------- hub saves


@torch.no_grad()
def _hub_outputs(model, x, mask):
    """Outputs used to check that a saved model loads to the same numbers."""
    if type(model).__name__ == "Hiera":
        model.eval()
        return {"eval_probs": model(x)}
    model.train()
    loss, preds, labels, out_mask = model(x, mask=mask)
    return {"loss": loss, "preds": preds, "labels": labels}


def make_hub_saves(out_dir: Path) -> dict:
    """Save small models with the OFFICIAL ``save_pretrained`` and record what happened.

    For each case in :data:`HUB_CASES` this writes ``hub_official/<case>/``:

    * whatever ``model.save_pretrained(dir, config=model.config)`` wrote
      (``model.safetensors``, ``config.json``, ``README.md``);
    * ``reference.pt``: ``{"inputs": {"x", "mask"}, "outputs": ..., "state_dict": ...}``
      (classifier: eval softmax probs; MAE: train-mode loss/preds/labels for the mask);
    * ``result.json``: what happened (see below).

    What actually happens with hiera-transformer 0.1.4 + huggingface_hub 2.x (this is
    recorded, not assumed, in result.json on every run):

    * Classifier (``Hiera``): ``model.config`` is plain data (``norm_layer="LayerNorm"``,
      tuples become JSON lists), so ``save_pretrained(dir, config=model.config)``
      works and writes model.safetensors + config.json + README.md.  The official
      ``Hiera.from_pretrained(dir)`` loads it back to identical numbers (JSON lists
      instead of tuples are fine) and returns the model in eval mode.
    * MAE (``MaskedAutoencoderHiera``): ``model.config`` is captured by the ``has_config``
      wrapper of ``Hiera.__init__`` and so (a) holds only the *encoder* arguments (no
      ``decoder_*``) and (b) contains ``norm_layer=functools.partial(nn.LayerNorm,
      eps=1e-6)``.  ``save_pretrained(dir, config=model.config)`` first writes
      model.safetensors, then ``json.dumps(config)`` raises ``TypeError: Object of type
      partial is not JSON serializable`` (no config.json, no README.md is left).  We
      record that, and instead call ``save_pretrained(dir)`` without a config: then the
      mixin writes its own ``_hub_mixin_config`` (the jsonable constructor arguments the
      mixin captured in ``__new__``: the jsonable defaults of MaskedAutoencoderHiera's own
      signature -- in_chans, patch_stride, mlp_ratio, decoder_* -- plus the explicitly
      passed kwargs; no norm_layer, no other Hiera defaults) as config.json.  The official
      ``MaskedAutoencoderHiera.from_pretrained(dir)`` loads that back to identical numbers.
    """
    h = official()
    hub_root = out_dir / "hub_official"
    hub_root.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in HUB_CASES:
        t0 = time.time()
        cls_name, _, _, in_shape = CASES[name]
        model = build_case_model(name)
        x = make_input(in_shape)
        torch.manual_seed(SEED_MASK)
        ratio = CLASSIFIER_MASK_RATIO if cls_name == "Hiera" else MAE_MASK_RATIO_IMAGE
        mask = model.get_random_mask(x, ratio)
        ref_out = _hub_outputs(model, x, mask)

        target = hub_root / name
        if target.exists():
            shutil.rmtree(target)
        result = {"case": name, "class": cls_name, "model_config": jsonable(dict(model.config))}

        # 1) the documented way: save_pretrained(dir, config=model.config)
        with tempfile.TemporaryDirectory() as tmp:
            attempt = Path(tmp) / name
            try:
                model.save_pretrained(attempt, config=model.config)
                result["save_with_config"] = {"ok": True}
                shutil.copytree(attempt, target)
            except Exception as exc:  # noqa: BLE001 - we record whatever happens
                result["save_with_config"] = {
                    "ok": False,
                    "exception_type": type(exc).__name__,
                    "exception": str(exc),
                    "traceback_tail": traceback.format_exc().strip().splitlines()[-6:],
                    "files_left_behind": sorted(p.name for p in attempt.iterdir()) if attempt.exists() else [],
                }
        # 2) fallback: save without an explicit config
        if not result["save_with_config"]["ok"]:
            model.save_pretrained(target)
            result["saved_without_config"] = True
        else:
            result["saved_without_config"] = False

        result["files"] = sorted(p.name for p in target.iterdir())
        cfg_path = target / "config.json"
        result["config_json"] = json.loads(cfg_path.read_text()) if cfg_path.exists() else None

        # 3) does the official from_pretrained load it back to the same numbers?
        try:
            loaded = getattr(h, cls_name).from_pretrained(str(target))
            result["official_from_pretrained"] = {
                "ok": True,
                "training_after_load": bool(loaded.training),
                "loaded_config": jsonable(dict(getattr(loaded, "config", {}) or {})),
            }
            got = _hub_outputs(loaded, x, mask)
            diffs = {k: float((got[k] - ref_out[k]).abs().max()) if got[k].shape == ref_out[k].shape else "shape mismatch"
                     for k in ref_out}
            result["official_from_pretrained"]["max_abs_diff"] = diffs
        except Exception as exc:  # noqa: BLE001
            result["official_from_pretrained"] = {
                "ok": False,
                "exception_type": type(exc).__name__,
                "exception": str(exc),
                "traceback_tail": traceback.format_exc().strip().splitlines()[-6:],
            }

        save({"inputs": {"x": x, "mask": mask}, "outputs": clone_tree(ref_out),
              "state_dict": state_dict_of(model), "case": name, "class": cls_name},
             target / "reference.pt")
        (target / "result.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        summary[name] = result
        log(f"  hub {name:20s} save_with_config ok={result['save_with_config']['ok']} "
            f"files={result['files']} from_pretrained ok={result['official_from_pretrained']['ok']} "
            f"{time.time() - t0:.1f}s")
        del model
        gc.collect()
    return summary


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Generate Hiera reference data from the official package.")
    parser.add_argument("out_dir")
    parser.add_argument("--only", nargs="*", default=None, help="only these numeric cases")
    parser.add_argument("--no-zoo", action="store_true")
    parser.add_argument("--no-hub", action="store_true")
    ns = parser.parse_args(argv)

    import warnings

    # timm>=1 warns that hiera imports timm.models.layers; irrelevant here.
    warnings.filterwarnings("ignore", category=FutureWarning)
    h = official()
    log(f"official hiera {official_version()} from {h.__file__}; torch {torch.__version__}; "
        f"threads {torch.get_num_threads()}")

    out_dir = Path(ns.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_all = time.time()
    index = {
        "official_version": official_version(),
        "official_file": h.__file__,
        "torch_version": str(torch.__version__),
        "batch": BATCH,
        "cases": {},
        "timings_s": {},
    }

    if not ns.no_zoo:
        t0 = time.time()
        log("zoo:")
        zoo = make_zoo(out_dir)
        index["zoo"] = {k: {"class": v["class"], "num_params": v["num_params"]} for k, v in zoo.items()}
        index["timings_s"]["zoo"] = round(time.time() - t0, 2)

    make_api(out_dir)
    make_flops(out_dir)
    names = CASE_NAMES if ns.only is None else ns.only
    for name in names:
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; known: {CASE_NAMES}")
        t0 = time.time()
        case = make_case(name)
        save(case, out_dir / f"case_{name}.pt")
        dt = time.time() - t0
        index["timings_s"][f"case_{name}"] = round(dt, 2)
        index["cases"][name] = {
            "class": case["class"],
            "constructor": case["constructor"],
            "kwargs": jsonable(case["kwargs"]),
            "num_params": int(sum(v.numel() for v in case["state_dict"].values())),
            "inputs": jsonable(case["inputs"]),
            "outputs": jsonable(case["outputs"]),
        }
        log(f"  case {name:24s} {case['class']:24s} {dt:6.1f}s")
        del case
        gc.collect()

    if not ns.no_hub:
        t0 = time.time()
        log("hub_official:")
        index["hub_official"] = make_hub_saves(out_dir)
        index["timings_s"]["hub_official"] = round(time.time() - t0, 2)

    index["timings_s"]["total"] = round(time.time() - t_all, 2)
    (out_dir / "index.json").write_text(json.dumps(index, indent=1, sort_keys=False) + "\n")
    log(f"done in {time.time() - t_all:.1f}s -> {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
