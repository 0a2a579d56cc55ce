"""Hugging Face Hub support: ``from_pretrained``, ``save_pretrained`` and ``push_to_hub``.

Repos hold ``config.json`` (the constructor arguments, ``model.config``) and ``model.safetensors``,
the layout the official package writes and reads, so repos move both ways between the two. A saved
folder also gets a ``README.md`` model card (:func:`model_card`) and, when class names are given,
``classes.txt``. Loading goes through :func:`hiera.weights.load_weights`, which reports what did
not match instead of silently loading non-strictly.

Without a network the Hub is not asked at all: when its host cannot be reached (or
``HF_HUB_OFFLINE=1`` is set) files come from the local cache, and a file that is not cached is an
error within seconds that says what to do (:func:`hub_download`).
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
)

from .weights import (
    CheckpointError,
    default_file_mode,
    load_weights,
    read_checkpoint,
    unreachable,
    with_head_classes,
    write_atomic,
    zoo_name_for,
)

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The model cards this package writes carry this line, so a later save may replace them (a card
# written by a person is never overwritten).
CARD_MARKER = "<!-- model card written by hiera's save_pretrained -->"


# ------------------------------------------------------------------------------------------ offline
def hub_unreachable() -> Optional[str]:
    """Why the Hugging Face Hub cannot be asked now (None when it can): ``HF_HUB_OFFLINE`` is set,
    or its host (``HF_ENDPOINT``, default huggingface.co) does not accept a connection."""
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    why = unreachable(constants.ENDPOINT)
    return None if why is None else f"cannot reach {constants.ENDPOINT} ({why})"


def offline_help(repo_id: str) -> str:
    """What to do about a Hub repo that is needed but neither reachable nor cached."""
    then = ("keep HF_HUB_OFFLINE=1 to use the cache without trying the network" if constants.HF_HUB_OFFLINE else
            "set HF_HUB_OFFLINE=1 to use the cache without trying the network")
    where = "with HF_HUB_OFFLINE unset, where the Hub is reachable" if constants.HF_HUB_OFFLINE else \
        "where the Hub is reachable"
    return (f"Offline? Download it once {where} (run this command there, or 'hf download {repo_id}'); it is "
            f"kept in the Hugging Face cache ({constants.HF_HUB_CACHE}) and used from there; {then}. Or pass "
            "local weights: --weights PATH (a file, or a folder with config.json and model.safetensors)")


def _offline_error(repo_id: str, reason: str, error: BaseException) -> CheckpointError:
    return CheckpointError(f"could not get {repo_id} from the Hugging Face Hub: {reason}, and it is not in the "
                           f"local cache. {offline_help(repo_id)}")


def hub_download(repo_id: str, filename: str, **kwargs) -> Path:
    """``huggingface_hub.hf_hub_download(repo_id, filename, **kwargs)``, failing within seconds when
    the Hub cannot be reached: the cached copy is used if there is one, otherwise a
    :class:`CheckpointError` says what to do (download once online, ``HF_HUB_OFFLINE=1``, or local
    weights). Other failures (no such repo or file) are a CheckpointError naming them."""
    reason = None if kwargs.get("local_files_only") else hub_unreachable()
    if reason is not None:
        kwargs["local_files_only"] = True
    return Path(_asking_hub(repo_id, reason, lambda: hf_hub_download(repo_id, filename, **kwargs)))


def _asking_hub(repo_id: str, reason: Optional[str], fetch):
    """``fetch()``, with huggingface_hub's failures turned into a :class:`CheckpointError` that
    says what to do: not cached while offline (``reason`` says why the Hub was not asked), no
    such repo or file, or a connection that failed after all."""
    try:
        return fetch()
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        raise _offline_error(repo_id, reason or "only the local cache was searched", e) from e
    except (EntryNotFoundError, HfHubHTTPError) as e:  # the Hub answered: no such repo, file or access
        raise CheckpointError(f"could not get {repo_id} from the Hugging Face Hub ({type(e).__name__}: "
                              f"{_first_line(e)}); check the name (and, for a private repo, 'hf auth login')") from e
    except OSError as e:  # the connection failed after all
        raise CheckpointError(f"could not get {repo_id} from the Hugging Face Hub ({type(e).__name__}: "
                              f"{_first_line(e)}). {offline_help(repo_id)}") from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


# ------------------------------------------------------------------------------------------ model card
def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt_value(v) for v in value)
    return str(value)


def _facts(info: Union[str, Mapping[str, Any], Sequence[str]]) -> list:
    """Markdown lines for free-form facts: a sentence, a list of sentences or a ``{name: value}`` dict."""
    if isinstance(info, str):
        return [info]
    if isinstance(info, Mapping):
        return [f"- {k}: {_fmt_value(v)}" for k, v in info.items()]
    return [f"- {item}" for item in info]


def _finetune_model_args(model: torch.nn.Module) -> str:
    """``--model ...`` for fine-tuning a classifier of this MAE's architecture."""
    zoo = getattr(model, "zoo_name", None)
    if zoo:
        return f"--model {zoo_name_for(zoo, mae=False)}"
    encoder = {k: v for k, v in (getattr(model, "config", None) or {}).items()
               if not k.startswith("decoder_") and k != "num_classes"}
    return f"--model custom --config '{json.dumps(encoder, default=list)}'"


def model_card(
    model: torch.nn.Module,
    *,
    classes: Optional[Sequence[str]] = None,
    data: Union[str, Mapping[str, Any], Sequence[str], None] = None,
    training: Union[str, Mapping[str, Any], Sequence[str], None] = None,
    metrics: Optional[Mapping[str, Any]] = None,
    location: Optional[str] = None,
) -> str:
    """The ``README.md`` of a saved model folder: what the model is, its classes, data, training,
    metrics and how to load it. Only what is known is written; nothing is claimed about the Hub.
    A model without a head is a feature encoder, and its card claims no classification.

    Args:
        model: the :class:`hiera.Hiera`, :class:`hiera.HieraDet` (SAM 2's trunk) or MAE being saved.
        classes: class names in output order (``save_pretrained`` also writes them to classes.txt).
        data: what it was trained (and validated) on: a sentence, a list of them, or a dict such as
            ``{"train": "photos/train (4000 images, 10 classes)", "val": "photos/val (1000 images)"}``.
        training: how it was trained, in the same forms, e.g. ``{"task": "finetune", "init":
            "runs/mae/last.pt", "epochs": 10, "batch size": 64, "peak lr": 0.002}``.
        metrics: ``{name: value}``, e.g. ``{"top-1 (%)": 68.0, "top-5 (%)": 97.1, "val loss": 0.91}``.
        location: where the folder is, for the loading example (a path or a Hub repo id; default
            ``path/to/this/folder``).
    """
    config = dict(getattr(model, "config", {}) or {})
    is_mae = hasattr(model, "forward_decoder")  # an MAE has a decoder (hub sits below mae.py: no import)
    # SAM 2's trunk, or an MAE of it: by class name, as hub.py sits below hieradet.py too.
    sam2 = any(c.__name__ == "HieraDet" for c in type(model).__mro__)
    input_size = tuple(config.get("input_size", getattr(model, "input_size", ())))
    video = len(input_size) == 3
    params = sum(p.numel() for p in model.parameters())
    stages = tuple(config.get("stages", ()))
    embed_dim = config.get("embed_dim")
    dim_mul = config.get("dim_mul", 2.0)
    widths = [int(embed_dim * dim_mul ** i) for i in range(len(stages))] if embed_dim else []
    head = getattr(getattr(model, "head", None), "projection", None)
    num_classes = getattr(head, "out_features", None) if not is_mae else None
    zoo = getattr(model, "zoo_name", None)
    kind = "MAE (encoder + decoder)" if is_mae else ("video classifier" if video else "image classifier")
    if not is_mae and not num_classes:
        kind = "video feature encoder" if video else "image feature encoder"
    title = (f"SAM 2's HieraDet trunk, {kind}" if sam2 else f"Hiera {kind}") + (f" ({zoo} architecture)" if zoo else "")
    size = " x ".join(str(s) for s in input_size)
    where = location or "path/to/this/folder"
    hub_id = location is not None and not os.path.exists(location) and location.count("/") == 1

    tags = ["hiera"] + (["hieradet", "sam2"] if sam2 else []) + ["vision", "video" if video else "image"]
    lines = ["---", "library_name: hiera", "tags:"] + [f"- {t}" for t in tags]
    if num_classes and not is_mae:
        lines.append(f"pipeline_tag: {'video-classification' if video else 'image-classification'}")
    lines += ["---", CARD_MARKER, "", f"# {title}", ""]

    summary = [f"`{type(model).__name__}`, {params / 1e6:.2f} M parameters"]
    if size:
        dims = " x ".join(str(d) for d in input_size)
        summary.append(f"input 3 x {dims}" + (" (channels x frames x height x width)" if video else ""))
    if stages:
        summary.append(f"{len(stages)} stages of {', '.join(map(str, stages))} blocks"
                       + (f", widths {', '.join(map(str, widths))}" if widths else ""))
    if num_classes:
        summary.append(f"{num_classes} output classes")
    elif is_mae:
        depth = config.get("decoder_depth")
        summary.append(f"a decoder of {depth} block{'' if depth == 1 else 's'}, width {config.get('decoder_embed_dim')}")
    hiera_paper = "Ryali et al., ICML 2023, https://arxiv.org/abs/2306.00989"
    if sam2:
        what = ("The architecture of SAM 2's image-encoder trunk (HieraDet; Ravi et al., 2024, "
                f"https://arxiv.org/abs/2408.00714): a hierarchical vision transformer (Hiera; {hiera_paper}) "
                "with windowed attention, a few global-attention blocks and an absolute-window position embedding.")
        multiple = sorted(set(getattr(model, "size_multiple", ())))
        if multiple and not is_mae:
            what += (f" It takes any input whose sides are multiples of {' and '.join(map(str, multiple))} "
                     "(`model.dynamic_size`, on by default).")
    else:
        what = f"A hierarchical vision transformer (Hiera; {hiera_paper})."
    lines += ["## Model", "", "; ".join(summary) + ".",
              what + " The constructor arguments are in `config.json`, the weights in `model.safetensors`.", ""]
    norm = "Kinetics (mean 0.45, std 0.225)" if video else "ImageNet (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225)"
    lines += [f"Inputs are RGB {'clips' if video else 'images'} of {size or 'the configured size'}, normalised with the "
              f"{norm} statistics, as the `hiera` tools prepare them.", ""]

    if num_classes:
        lines += ["## Classes", ""]
        if classes:
            shown = ", ".join(str(c) for c in list(classes)[:50]) + (", ..." if len(classes) > 50 else "")
            lines += [f"{len(classes)} classes, in output order (also in `classes.txt`): {shown}.", ""]
        else:
            lines += [f"{num_classes} outputs. Their names are not recorded in this card: a `classes.txt` beside the "
                      "weights (one name per line, in output order, as `hiera finetune` writes it) names them, and "
                      "the tools read it. Without one the tools print class_0, class_1, ... (ImageNet-1k / "
                      "Kinetics-400 names for a 1000- / 400-way head); pass --classes FILE to name them.", ""]
    if data:
        lines += ["## Data", ""] + _facts(data) + [""]
    if training:
        lines += ["## Training", ""] + _facts(training) + [""]
    if metrics:
        lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt_value(v)} |" for k, v in metrics.items()] + [""]

    load = f'hiera.load_model("{where}"' if hub_id else f'hiera.load_model(weights="{where}"'
    load += ", mae=True)" if is_mae else ")"
    lines += ["## How to use", "", "```python", "import hiera", "", f"model = {load}.eval()"]
    shape = f"[B, 3, {', '.join(map(str, input_size))}]" if input_size else "[B, 3, H, W]"
    if is_mae:
        lines += [f"loss, pred, label, mask = model(x)  # x: {shape}, normalised", "```", "",
                  "Command line: MAE reconstructions, and fine-tuning a classifier from these weights:", "", "```",
                  f"hiera mae-viz --weights {where} {'clip.mp4' if video else 'photo.jpg'}",
                  f"hiera finetune --data train/ --val val/ {_finetune_model_args(model)} --init {where} --out runs/ft",
                  "```", ""]
    else:
        if num_classes:
            # The plain Hiera is asked for logits (in eval mode it returns probabilities, as the
            # official package); HieraDet's forward returns logits and takes no such argument.
            asks = "return_logits" in inspect.signature(model.forward).parameters
            lines.append(f"logits = model(x{', return_logits=True' if asks else ''})  # x: {shape}, normalised")
        features = "features = model.forward_intermediates(x)  # one feature map per stage"
        lines += [features + ("" if num_classes else f"; x: {shape}, normalised"), "```", "",
                  "Command line:", "", "```"]
        if num_classes:
            lines.append(f"hiera predict --weights {where} {'clip.mp4' if video else 'photo.jpg'}")
            lines.append(f"hiera evaluate --weights {where} --data val/")
        lines += [f"hiera features --weights {where} {'clips/' if video else 'photos/'} --out features/", "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ mixin
class HubMixin(
    PyTorchModelHubMixin,
    library_name="hiera",
    repo_url="https://github.com/facebookresearch/hiera",
    paper_url="https://arxiv.org/abs/2306.00989",
    tags=["hiera", "vision"],
):
    """Mixed into :class:`hiera.Hiera`; see the module docstring."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Union[str, Path], **kwargs):
        """Load ``"org/name"`` from the Hub (or a local directory) written by ``save_pretrained``,
        e.g. ``Hiera.from_pretrained("facebook/hiera_base_224.mae_in1k_ft_in1k")``.

        Extra keyword arguments override ``config.json`` (``num_classes=10`` gives a fresh 10-way
        head on the pretrained trunk); ``strict=True`` demands an exact match. When the Hub cannot
        be reached the cached copy is used, and a repo that is not cached fails within seconds.
        """
        name = str(pretrained_model_name_or_path)
        reason = None
        if not os.path.isdir(name) and not kwargs.get("local_files_only"):
            reason = hub_unreachable()
            if reason is not None:  # the cache or nothing: no retries against a host that is not there
                kwargs["local_files_only"] = True
        return _asking_hub(name, reason, lambda: super(HubMixin, cls).from_pretrained(pretrained_model_name_or_path,
                                                                                       **kwargs))

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: Optional[str],
        cache_dir,
        force_download: bool,
        local_files_only: bool,
        token,
        map_location: str = "cpu",
        strict: Optional[bool] = None,
        **model_kwargs,
    ):
        weights_file = _find_weights(model_id, revision, cache_dir, force_download, local_files_only, token)
        state = read_checkpoint(weights_file)
        model = cls(**with_head_classes(state, model_kwargs))
        model.load_report = load_weights(model, state, strict=strict, source=model_id)
        model.to(torch.device(map_location))
        model.eval()
        return model

    def save_pretrained(
        self,
        save_directory: Union[str, Path],
        *,
        config: Optional[dict] = None,
        classes: Optional[Sequence[str]] = None,
        data: Union[str, Mapping[str, Any], Sequence[str], None] = None,
        training: Union[str, Mapping[str, Any], Sequence[str], None] = None,
        metrics: Optional[Mapping[str, Any]] = None,
        model_card_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs,
    ):
        """Write ``config.json`` (``model.config`` unless ``config`` is given), ``model.safetensors``,
        a ``README.md`` model card (see :func:`model_card` for ``classes``, ``data``, ``training``
        and ``metrics``) and, with ``classes``, ``classes.txt`` (one name per line, in output order),
        which the tools read as the model's class names."""
        config = dict(self.config if config is None else config)
        try:
            json.dumps(config)
        except TypeError as e:
            raise TypeError(f"config must be JSON-serialisable to be saved ({e}); got {config}") from e
        if classes is not None:
            classes = [str(c) for c in classes]
            head = getattr(getattr(self, "head", None), "projection", None)
            if head is not None and len(classes) != head.out_features:
                raise ValueError(f"{len(classes)} class names for a head of {head.out_features} classes")
            if any(not c.strip() or "\n" in c for c in classes):
                raise ValueError("class names must be non-empty single lines")
        card_kwargs = dict(model_card_kwargs or {})
        for key, value in (("classes", classes), ("data", data), ("training", training), ("metrics", metrics)):
            if value is not None:
                card_kwargs[key] = value
        card_kwargs.setdefault("location", str(save_directory))
        readme = Path(save_directory) / "README.md"
        try:  # a card this package wrote is replaced; one written by a person is kept
            if CARD_MARKER in readme.read_text(encoding="utf-8"):
                readme.unlink()
        except (OSError, UnicodeDecodeError):
            pass
        result = super().save_pretrained(save_directory, config=config, model_card_kwargs=card_kwargs, **kwargs)
        # safetensors writes through a private temporary file (mode 0600): give the weights the
        # mode every other file gets
        weights = Path(save_directory) / "model.safetensors"
        if weights.exists():
            os.chmod(weights, default_file_mode())
        if classes is not None:
            text = "\n".join(classes) + "\n"
            write_atomic(Path(save_directory) / "classes.txt", lambda tmp: tmp.write_text(text, encoding="utf-8"))
        return result

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: Optional[Dict[str, Any]] = None, **kwargs):
        """``huggingface_hub``'s ``push_to_hub``, with a model card whose loading example names the repo."""
        card_kwargs = {"location": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The model card of :func:`model_card` (replaces huggingface_hub's template)."""
        known = ("classes", "data", "training", "metrics", "location")
        return ModelCard(model_card(self, **{k: v for k, v in kwargs.items() if k in known}))


def _find_weights(model_id, revision, cache_dir, force_download, local_files_only, token) -> Path:
    if os.path.isdir(model_id):
        for name in WEIGHT_FILES:
            if os.path.exists(os.path.join(model_id, name)):
                return Path(model_id) / name
        raise CheckpointError(f"{model_id} holds none of {list(WEIGHT_FILES)}")
    last_error = None
    for name in WEIGHT_FILES:
        try:
            return hub_download(model_id, name, revision=revision, cache_dir=cache_dir,
                                force_download=force_download, token=token, local_files_only=local_files_only)
        except CheckpointError as e:
            cause = e.__cause__
            if isinstance(cause, EntryNotFoundError) and not isinstance(cause, LocalEntryNotFoundError):
                last_error = e  # not in this repo: try the next file name
                continue
            raise
    raise CheckpointError(f"{model_id} holds none of {list(WEIGHT_FILES)}") from last_error
