"""The model zoo: every named model, its configuration and its checkpoints, written once.

The 20 constructors of the official package (``hiera_base_224``, ``mae_hiera_base_16x224``, ...) are
generated from the tables below and keep its calling convention::

    model = hiera.hiera_base_224(pretrained=True, checkpoint="mae_in1k_ft_in1k")

``checkpoint`` may also be a local weights file or a URL. Each constructor has ``.checkpoints``
(name -> URL) and ``.default`` like upstream's.
"""

from __future__ import annotations

import fnmatch
import inspect
import json
import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .backbone import HieraFeatures
from .formats.read import read_any, to_official
from .hieradet import HieraDet
from .hub import hub_download
from .mae import MaskedAutoencoder, MaskedAutoencoderHiera, MaskedAutoencoderHieraDet
from .model import Hiera
from .weights import (
    _HEAD_KEYS,
    MAE_PREFIX,
    CheckpointError,
    StateDict,
    download_checkpoint,
    load_weights,
    with_head_classes,
    zoo_name_for,
)

CHECKPOINT_BASE_URL = "https://dl.fbaipublicfiles.com/hiera/"
SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/"

# Trunk sizes: (embed_dim, num_heads, stages).
SIZES = {
    "tiny": (96, 1, (1, 2, 7, 2)),
    "small": (96, 1, (1, 2, 11, 2)),
    "base": (96, 1, (2, 3, 16, 3)),
    "base_plus": (112, 2, (2, 3, 16, 3)),
    "large": (144, 2, (2, 6, 36, 4)),
    "huge": (256, 4, (2, 6, 36, 4)),
}

# The 16x224 video models: 16 frames, 2-frame tubelets, mask units of 1x8x8 tokens, K400 head.
VIDEO = dict(
    num_classes=400,
    input_size=(16, 224, 224),
    q_stride=(1, 2, 2),
    mask_unit_size=(1, 8, 8),
    patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4),
    patch_padding=(1, 3, 3),
    sep_pos_embed=True,
)

# SAM 2 / SAM 2.1's image-encoder trunks (HieraDet), as SAM 2's configs (sam2.1_hiera_{t,s,b+,l}.yaml) set
# them; the rest are HieraDet's defaults (SAM 2's: stages (2, 3, 16, 3), global_att_blocks (12, 16, 20),
# window_spec (8, 4, 14, 7), background position embedding 14x14). SAM 2 runs every size at 1024x1024.
SAM2_TRUNKS = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
                 window_pos_embed_bkg_spatial_size=(7, 7)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_att_blocks=(7, 10, 13),
                  window_pos_embed_bkg_spatial_size=(7, 7)),
    "base_plus": dict(embed_dim=112, num_heads=2),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4), global_att_blocks=(23, 33, 43),
                  window_pos_embed_bkg_spatial_size=(7, 7), window_spec=(8, 4, 16, 8)),
}

# ImageNet-1k / Kinetics-400 top-1 of the fine-tuned checkpoints, from the paper (Tables 9 and 10).
# (The SAM 2 paper reports no ImageNet accuracy for its trunks: they have none here.)
TOP1 = {
    "hiera_tiny_224": 82.8, "hiera_small_224": 83.8, "hiera_base_224": 84.5,
    "hiera_base_plus_224": 85.2, "hiera_large_224": 86.1, "hiera_huge_224": 86.9,
    "hiera_base_16x224": 84.0, "hiera_base_plus_16x224": 85.0,
    "hiera_large_16x224": 87.3, "hiera_huge_16x224": 87.8,
}


# How the released checkpoints saw their inputs (the data side reads these from the zoo entry).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)
CROP_PCT = 224 / 256  # crop / resize ratio of the ImageNet evaluation transform


@dataclass
class ModelSpec:
    """One zoo model: its class and configuration, its checkpoints, and how its checkpoints want
    their inputs (normalisation and evaluation crop), as timm's pretrained configs record them."""

    name: str
    cls: type
    kwargs: dict
    checkpoints: Dict[str, str] = field(default_factory=dict)  # checkpoint name -> URL
    default: Optional[str] = None
    crop_pct: float = CROP_PCT  # evaluation crop / resize ratio
    mean: Optional[Tuple[float, ...]] = None  # default: ImageNet's for images, Kinetics' for video
    std: Optional[Tuple[float, ...]] = None

    def __post_init__(self):
        if self.mean is None:
            self.mean = KINETICS_MEAN if self.video else IMAGENET_MEAN
        if self.std is None:
            self.std = KINETICS_STD if self.video else IMAGENET_STD

    @property
    def video(self) -> bool:
        return len(self.kwargs.get("input_size", (224, 224))) == 3


def _specs() -> Dict[str, ModelSpec]:
    specs = {}
    for size, (dim, heads, stages) in SIZES.items():
        trunk = dict(embed_dim=dim, num_heads=heads, stages=stages)
        for video in (False, True):
            if video and size in ("tiny", "small"):
                continue  # no video models of these sizes were released
            suffix, data = ("16x224", "k400") if video else ("224", "in1k")
            extra = VIDEO if video else {}
            name = f"hiera_{size}_{suffix}"
            specs[name] = ModelSpec(
                name, Hiera, {**trunk, **extra},
                {f"mae_{data}_ft_{data}": f"{CHECKPOINT_BASE_URL}{name}.pth",
                 f"mae_{data}": f"{CHECKPOINT_BASE_URL}mae_{name}.pth"},
                f"mae_{data}_ft_{data}",
            )
            # MAE pretraining pools twice: the last two stages share the final resolution.
            specs["mae_" + name] = ModelSpec(
                "mae_" + name, MaskedAutoencoderHiera, {**trunk, **extra, "q_pool": 2},
                {f"mae_{data}": f"{CHECKPOINT_BASE_URL}mae_{name}.pth"},
                f"mae_{data}",
            )
    # timm's abswin models ("Window Attention is Bugged"): layer scale, a global + per-window
    # position embedding, and (small) no projection at stage transitions. Weights: timm's Hub repos.
    abswin = dict(input_size=(256, 256), abs_win_pos_embed=True, init_values=1e-5)
    small_tags = ("sbb2_e200_in12k_ft_in1k", "sbb2_pd_e200_in12k_ft_in1k", "sbb2_e200_in12k", "sbb2_pd_e200_in12k")
    specs["hiera_small_abswin_256"] = ModelSpec(
        "hiera_small_abswin_256", Hiera,
        dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2), global_pos_size=(16, 16), use_expand_proj=False, **abswin),
        {tag: f"hf-hub:timm/hiera_small_abswin_256.{tag}" for tag in small_tags},
        small_tags[0],
        crop_pct=0.95,  # timm's evaluation setting for these weights
    )
    specs["hiera_base_abswin_256"] = ModelSpec(
        "hiera_base_abswin_256", Hiera, dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3), **abswin)
    )  # timm lists no released weights for it
    # Their MAEs, for pretraining your own (no weights were released): the window embedding tiles
    # once per mask unit, so a masked unit takes its window embedding with it, as in pretraining the
    # plain models; the global one is interpolated to other sizes, the window one tiled, as the
    # "Window Attention is Bugged" paper prescribes.
    for name in ("hiera_small_abswin_256", "hiera_base_abswin_256"):
        specs["mae_" + name] = ModelSpec("mae_" + name, MaskedAutoencoderHiera, {**specs[name].kwargs, "q_pool": 2},
                                         crop_pct=specs[name].crop_pct)
    # SAM 2's trunks, without a head. Weights: timm's Hub repos, converted from SAM 2's checkpoints
    # (fb_r*: SAM 2, fb_r*_2pt1: SAM 2.1; r896 / r1024 is timm's evaluation size; the default, as
    # timm's), or SAM 2's own checkpoint files (sam2, sam2_1: the whole SAM 2 model, whose image
    # encoder's trunk is taken). Inputs: resized whole to the model's size, ImageNet statistics.
    for size, trunk in SAM2_TRUNKS.items():
        name = f"sam2_hiera_{size}"
        tag = "fb_r1024" if size == "large" else "fb_r896"
        specs[name] = ModelSpec(
            name, HieraDet, {**trunk, "input_size": (1024, 1024)},
            {**{t: f"hf-hub:timm/{name}.{t}" for t in (tag, tag + "_2pt1")},
             "sam2": f"{SAM2_BASE_URL}072824/sam2_hiera_{size}.pt",
             "sam2_1": f"{SAM2_BASE_URL}092824/sam2.1_hiera_{size}.pt"},
            tag,
            crop_pct=1.0,
        )
        # Their MAEs, for pretraining your own (neither SAM 2 nor timm released one): at the
        # smallest size where every window tiles the map (224; 256 for L's 16-token windows), so
        # the MAE's trunk computes exactly the trunk's forward (see MaskedAutoencoderHieraDet).
        side = 256 if size == "large" else 224
        specs["mae_" + name] = ModelSpec("mae_" + name, MaskedAutoencoderHieraDet, {**trunk, "input_size": (side, side)})
    return specs


MODELS: Dict[str, ModelSpec] = _specs()


def checkpoint_source(location: str) -> str:
    """Who published a checkpoint location: ``"Hiera"`` (the paper's files), ``"SAM 2"`` (SAM 2's
    files), ``"timm"`` (timm's Hub repos), else the Hub organisation or ``"local"``."""
    if location.startswith(CHECKPOINT_BASE_URL):
        return "Hiera"
    if location.startswith(SAM2_BASE_URL):
        return "SAM 2"
    if location.startswith("hf-hub:"):
        return location[len("hf-hub:"):].split("/", 1)[0]
    return "local"


def list_models(pattern: str = "*") -> List[str]:
    """Names of the zoo models matching a shell-style ``pattern``."""
    return sorted(n for n in MODELS if fnmatch.fnmatch(n, pattern))


def get_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise CheckpointError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return MODELS[name]


def resolve_checkpoint(spec: ModelSpec, checkpoint: Optional[str]) -> str:
    """Checkpoint name, path or URL -> a path or URL to read."""
    checkpoint = checkpoint or spec.default
    if checkpoint in spec.checkpoints:
        return spec.checkpoints[checkpoint]
    if checkpoint and (os.path.exists(checkpoint) or checkpoint.startswith(("http://", "https://", "hf-hub:"))):
        return checkpoint
    raise CheckpointError(
        f"unknown checkpoint {checkpoint!r} for {spec.name}; choose one of {list(spec.checkpoints)}, "
        "or pass the path of a weights file"
    )


def read_weights(location: str, progress: bool = True):
    """A state dict in our layout from a URL (torch-hub cache), ``hf-hub:org/name`` (Hugging Face
    Hub cache; timm-layout repos are converted) or a local file or directory in any format."""
    if location.startswith(("http://", "https://")):  # official files, or SAM 2's (its trunk is taken)
        return to_official(download_checkpoint(location, progress=progress))[0]
    if location.startswith("hf-hub:"):
        location = _hub_file(location[len("hf-hub:"):])
    return read_any(location)[0]


def _hub_file(repo_id: str) -> str:
    """The weights of a Hub-hosted checkpoint: downloaded once, then from the cache; without a
    network, the cached copy or within seconds an error that says what to do."""
    return str(hub_download(repo_id, "model.safetensors"))


def create_model(
    name: str,
    pretrained: Optional[bool] = None,
    checkpoint: Optional[str] = None,
    strict: Optional[bool] = None,
    progress: bool = True,
    **kwargs,
) -> nn.Module:
    """Build zoo model ``name`` (``"hiera_base_224"``, or ``"hiera_base_224.mae_in1k"`` naming the
    checkpoint too, which loads it unless ``pretrained=False`` is given, as in timm). With
    ``pretrained=True`` load ``checkpoint`` (default: the model's default);
    ``num_classes=K`` different from the checkpoint's gives a fresh K-way head on the pretrained
    trunk. See :func:`hiera.weights.load_weights` for ``strict``. ``kwargs`` override the config.

    ``features_only=True`` returns a :class:`hiera.backbone.HieraFeatures` backbone (with
    ``out_indices`` and ``output_fmt``); ``dynamic_size=True`` accepts any input size that tiles
    (a :class:`hiera.HieraDet` does by default, as SAM 2).
    """
    features = {k: kwargs.pop(k) for k in ("out_indices", "output_fmt") if k in kwargs}
    features_only = kwargs.pop("features_only", False)
    dynamic_size = kwargs.pop("dynamic_size", None)  # None: the class's own (Hiera: fixed; HieraDet: any)
    if features and not features_only:
        raise ValueError(f"{sorted(features)} only apply with features_only=True")
    if "." in name and checkpoint is None:
        name, checkpoint = name.split(".", 1)
        pretrained = pretrained is not False  # an explicit pretrained=False wins over the name
    spec = get_spec(name)
    if checkpoint is not None and not pretrained:
        resolve_checkpoint(spec, checkpoint)  # a misspelt checkpoint is an error even when nothing loads
    state, source = None, None
    if pretrained:
        source = resolve_checkpoint(spec, checkpoint)
        state = read_weights(source, progress=progress)
        if spec.cls in (Hiera, HieraDet):
            kwargs = with_head_classes(state, kwargs)
    model = spec.cls(**{**spec.kwargs, **kwargs})
    if pretrained:
        model.load_report = load_weights(model, state, strict=strict, source=f"{spec.name}:{checkpoint or spec.default}")
    if dynamic_size is not None:
        model.dynamic_size = dynamic_size
    model.zoo_name = spec.name  # lets tools find the zoo facts (e.g. the evaluation crop)
    if features_only:
        return HieraFeatures(model, **features)
    return model


def _constructor(spec: ModelSpec) -> Callable[..., nn.Module]:
    def build(pretrained: bool = False, checkpoint: Optional[str] = None, strict: Optional[bool] = None, **kwargs):
        return create_model(spec.name, pretrained=pretrained, checkpoint=checkpoint, strict=strict, **kwargs)

    build.__name__ = build.__qualname__ = spec.name
    build.__doc__ = (
        f"Build ``{spec.name}`` ({spec.cls.__name__}). ``pretrained=True`` loads ``checkpoint`` "
        f"(one of {list(spec.checkpoints)}, default {spec.default!r}, or a weights file path)."
    )
    build.checkpoints = dict(spec.checkpoints)
    build.default = spec.default
    return build


CONSTRUCTORS: Dict[str, Callable[..., nn.Module]] = {name: _constructor(spec) for name, spec in MODELS.items()}


# ------------------------------------------------------------------------------ what a person types
def match_zoo(state: StateDict) -> Optional[str]:
    """The zoo model whose weights have these shapes (head and position-embedding sizes aside)."""
    ignore = ("head.projection.", "pos_embed", "decoder_pos_embed")
    want = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(ignore)}
    for name in sorted(MODELS, key=lambda n: (n.startswith(MAE_PREFIX), n)):
        with torch.device("meta"):
            model = create_model(name)
        have = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith(ignore)}
        if have == want:
            return name
    return None


def load_model(
    model: Optional[str] = None,
    weights: Optional[os.PathLike] = None,
    mae: bool = False,
    need_head: bool = False,
    **kwargs,
) -> nn.Module:
    """Build and load a model for a tool.

    Args:
        model: a zoo name (``hiera_base_224``, or ``hiera_base_224.mae_in1k`` to pick the
            checkpoint), or a Hugging Face repo id (``facebook/hiera_base_224.mae_in1k_ft_in1k``).
            With ``weights`` it only names the architecture.
        weights: a weights file or directory in any supported format (official ``.pth``, our
            training checkpoints, ``save_pretrained`` directories, safetensors, timm, transformers).
        mae: build the MAE model (encoder + decoder) rather than the classifier; the checkpoint's
            own kind does not decide, the tool does (``load_weights`` reports any mismatch).
        need_head: the caller classifies: raise a :class:`CheckpointError` unless the
            classification head was loaded from the weights (an MAE or features-only checkpoint, a
            head missing from the state dict, under other key names, or of another size than
            ``num_classes`` would leave a randomly initialised head that still gives confident
            answers).
        kwargs: constructor overrides (e.g. ``num_classes``, ``input_size``).
    """
    if not need_head:
        return _load_model(model, weights, mae, **kwargs)
    if mae:
        raise ValueError("need_head=True asks for a classifier; an MAE model (mae=True) has no head")
    if weights is None and model is not None:
        known = _zoo_checkpoint_without_head(model)
        if known:  # said before downloading hundreds of megabytes only to refuse them
            raise CheckpointError(f"{model}: {known}")
    # The load warns about a missing head; when that ends in a refusal the warning only repeats it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        built = _load_model(model, weights, mae, **kwargs)
    problem = head_problem(built)
    if problem:
        raise CheckpointError(f"{weights if weights is not None else model}: {problem}")
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return built


_HEADLESS_USES = ("use its weights with `hiera features` (feature maps), `hiera mae-viz` (MAE reconstructions), "
                  "or fine-tune a classifier from them with `hiera finetune --init`")


def _zoo_checkpoint_without_head(model: str) -> Optional[str]:
    """Why a zoo classifier's named checkpoint has no head (None when it has one, or is unknown):
    the official MAE-pretraining files (``mae_hiera_*.pth``) hold encoder + decoder only."""
    name, _, checkpoint = model.partition(".")
    spec = MODELS.get(name)
    if spec is None:
        return None
    if spec.cls is HieraDet:
        return ("SAM 2's image-encoder trunk (HieraDet), without a classification head; use it as a backbone "
                "(model.forward_intermediates(x): feature maps at strides 4, 8, 16, 32)")
    if spec.cls is not Hiera:  # the MAE constructors
        return (f"an MAE model (encoder + decoder), without a classification head; {_HEADLESS_USES}"
                f"; to classify, use {zoo_name_for(name, mae=False)}")
    url = spec.checkpoints.get(checkpoint or spec.default or "", "")
    if not url.rsplit("/", 1)[-1].startswith(MAE_PREFIX):  # the official MAE-pretraining files
        return None
    tuned = [f"{name}.{c}" for c in spec.checkpoints if "_ft_" in c]
    return (f"the {checkpoint} checkpoint is MAE-pretrained (encoder + decoder), without a trained "
            f"classification head; {_HEADLESS_USES}" + (f"; to classify, use {' or '.join(tuned)}" if tuned else ""))


def head_problem(model: nn.Module) -> Optional[str]:
    """Why ``model`` cannot classify with a trained head (None when it can), judged from the
    ``load_report`` that loading left on it."""

    inner = getattr(model, "model", model)  # HieraFeatures wraps the Hiera
    uses = _HEADLESS_USES
    if isinstance(inner, MaskedAutoencoder):
        return f"{type(inner).__name__} is an MAE (encoder + decoder) without a classification head; {uses}"
    if isinstance(inner, HieraDet) and not hasattr(inner, "head"):
        return ("a SAM 2 trunk (HieraDet) without a classification head; use it as a backbone (`hiera "
                "features`, `features_only=True`); to classify, train a head on it first (`hiera finetune "
                "--model sam2_hiera_<size> --init <these weights>`)")
    if not hasattr(inner, "head"):
        return f"{type(inner).__name__} is a feature model without a classification head; {uses}"
    report = getattr(inner, "load_report", None)
    if report is None:
        return "no weights were loaded, so the classification head is random"
    if report.fresh_head:
        return (f"the checkpoint's classification head has another number of classes than the "
                f"{inner.head.projection.out_features} asked for, so the head is new and untrained; drop "
                "num_classes to use the checkpoint's head, or fine-tune (`hiera finetune`)")
    missing = [k for k in _HEAD_KEYS if k in report.missing]
    if not missing:
        return None
    if report.checkpoint_kind == "mae":
        what = "an MAE-pretrained checkpoint (encoder + decoder): it was never trained to classify"
    else:
        heads = [k for k in report.unexpected if "head" in k or "classifier" in k or "fc." in k]
        what = ("weights without a classification head (an encoder / features-only checkpoint)" if not heads
                else f"a checkpoint whose head keys {heads[:4]} do not match this model's {list(_HEAD_KEYS)}")
    return (f"{what}, so the classifier's head ({', '.join(missing)}) would keep its random initialisation and "
            f"give meaningless classes; {uses}; to classify, pass fine-tuned weights (e.g. a zoo name ending in "
            "_ft_in1k or _ft_k400)")


def model_class(config: dict, cls_name: Optional[str] = None, mae: Optional[bool] = None) -> type:
    """The class a checkpoint's config builds: the family named by ``cls_name`` (a class name our
    checkpoints record), else :class:`HieraDet`'s for a config with SAM 2's trunk settings
    (arguments no plain Hiera takes: ``window_spec``, ``global_att_blocks``, ...), else
    :class:`Hiera`'s; the MAE of that family when ``mae`` (``None``: when the class name or the
    config's ``decoder_*`` arguments say it is one)."""
    known = {c.__name__: c for c in (Hiera, HieraDet, MaskedAutoencoderHiera, MaskedAutoencoderHieraDet)}
    named = known.get(cls_name)
    if named is not None:
        sam2 = issubclass(named, HieraDet)
        mae = issubclass(named, MaskedAutoencoder) if mae is None else mae
    else:
        det, plain = sorted(_HIERADET_ONLY & set(config)), sorted(_HIERA_ONLY & set(config))
        if det and plain:
            raise ValueError(f"the config mixes SAM 2 trunk (HieraDet) arguments {det} with plain Hiera arguments "
                             f"{plain}; a model is one or the other: drop one kind")
        sam2 = bool(det)
        mae = any(k.startswith("decoder_") for k in config) if mae is None else mae
    if sam2:
        return MaskedAutoencoderHieraDet if mae else HieraDet
    return MaskedAutoencoderHiera if mae else Hiera


def trunk_class(config: dict, cls_name: Optional[str] = None) -> type:
    """The class a config builds without an MAE decoder (see :func:`model_class`)."""
    return model_class(config, cls_name, mae=False)


def trunk_config(config: dict) -> dict:
    """``config`` without the MAE decoder's arguments (``decoder_*``): what builds its trunk."""
    return {k: v for k, v in config.items() if not k.startswith("decoder_")}


# Constructor arguments only one of the two trunks takes: a config with SAM 2's (window_spec,
# global_att_blocks, ...) builds a HieraDet, one with the plain Hiera's (mask_unit_size, ...) a Hiera.
_HIERADET_ONLY = frozenset(inspect.signature(HieraDet).parameters) - frozenset(inspect.signature(Hiera).parameters)
_HIERA_ONLY = frozenset(inspect.signature(Hiera).parameters) - frozenset(inspect.signature(HieraDet).parameters)


def _load_model(model, weights, mae, **kwargs) -> nn.Module:
    if model is None and weights is None:
        raise CheckpointError("say which model: a zoo name (see `hiera zoo`), a Hub repo id, or --weights PATH")
    if weights is None:
        name = model.split(".", 1)[0]
        if mae:
            name = zoo_name_for(name, mae=True)
        if name in MODELS:
            checkpoint = model.split(".", 1)[1] if "." in model else None
            location = resolve_checkpoint(MODELS[name], checkpoint)
            if location.startswith("hf-hub:"):  # fetched here so that an offline run fails in seconds
                checkpoint = str(hub_download(location[len("hf-hub:"):], "model.safetensors"))
            return create_model(name, pretrained=True, checkpoint=checkpoint, **kwargs)
        if "/" in model:  # a Hub repo written by save_pretrained: its config.json says which family
            where = {k: kwargs[k] for k in ("revision", "cache_dir", "token", "local_files_only") if k in kwargs}
            config = json.loads(hub_download(model, "config.json", **where).read_text(encoding="utf-8"))
            return model_class(config, mae=bool(mae)).from_pretrained(model, **kwargs)
        raise CheckpointError(f"unknown model {model!r}: not in the zoo (`hiera zoo`) and not a Hub repo id (org/name)")

    state, config, cls_name = read_any(weights)
    if model is not None:
        name = model.split(".", 1)[0]
        if config and config.get("input_size") and "input_size" not in kwargs:
            # The name gives the architecture; the size is the one the weights were trained at (a
            # SAM 2 trunk fine-tuned at 224 is not evaluated at the zoo's 1024).
            kwargs["input_size"] = tuple(config["input_size"])
        built = create_model(zoo_name_for(name, mae=True) if mae else name, **kwargs)
    elif config is not None:
        cls = model_class(config, cls_name, mae=bool(mae))
        if not issubclass(cls, MaskedAutoencoder):
            config = trunk_config(config)
        built = cls(config=config, **with_head_classes(state, kwargs))
    else:
        name = match_zoo(state)
        if name is None:
            raise CheckpointError(
                f"cannot tell which architecture {weights} is (no config inside and no zoo model has these "
                "weight shapes); pass --model NAME"
            )
        built = create_model(zoo_name_for(name, mae), **with_head_classes(state, kwargs))
    built.load_report = load_weights(built, state, strict=None, source=str(weights))
    return built
