"""Classify images and videos: :func:`predict` (the library side of ``hiera predict``).

    from hiera import load_model
    from hiera.tools.predict import predict

    model = load_model("hiera_base_224")
    for r in predict(model, ["photos/"], topk=3):
        print(r["path"], r["labels"])          # [("tabby", 0.81), ("tiger cat", 0.12), ...]

Inputs are decoded with :mod:`hiera.data.media` and prepared with the checkpoints' evaluation transforms
(:func:`hiera.data.transforms.eval_transform`). A file that cannot be read is skipped and listed in the
result's ``.skipped``; it never stops the run.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..backbone import HieraFeatures
from ..data.labels import class_names as default_names
from ..data.labels import stored_class_names
from ..data.media import MediaError, MediaList, Skipped, find_media, load_image
from ..data.transforms import ResizeTooLarge, eval_transform
from ..devices import resolve_device
from ..mae import MaskedAutoencoder

# ------------------------------------------------------------------------------------------ shared
# Helpers the feature extractor (hiera.tools.features) shares with predict.


def unwrap_model(model: nn.Module) -> nn.Module:
    """The :class:`hiera.Hiera` inside a ``HieraFeatures`` backbone (or the model itself)."""

    return model.model if isinstance(model, HieraFeatures) else model


def is_video_model(model: nn.Module) -> bool:
    return len(unwrap_model(model).input_size) == 3


def classifier_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The logits ``[B, K]`` of a classifier of this package for ``x``, in any mode.

    A :class:`hiera.Hiera` returns probabilities in eval mode unless asked for logits
    (``return_logits=True``, the official package's convention); a :class:`hiera.HieraDet` returns
    logits from ``forward(x)`` and takes no such argument. Which one ``model`` is, is read from
    the signature of the ``forward`` inside it, and ``model`` itself is called, so that the
    hooks of a wrapper (DDP's gradient synchronisation, torch.compile) run."""
    return model(x, return_logits=True) if _takes_return_logits(model) else model(x)


def _takes_return_logits(model: nn.Module) -> bool:
    inner = model
    for _ in range(4):  # torch.compile (_orig_mod) and DDP / EMA (module) wrappers, in either order
        inner = getattr(inner, "_orig_mod", inner)
        nxt = getattr(inner, "module", None)
        if not isinstance(nxt, nn.Module):
            break
        inner = nxt
    try:  # a module's forward, or a plain function standing in for a model
        params = inspect.signature(getattr(inner, "forward", inner)).parameters
    except (TypeError, ValueError):  # no signature to read: ask as for the plain Hiera
        return True
    return "return_logits" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


class _LoadDataset(torch.utils.data.Dataset):
    """``files[i]`` -> ``(i, tensor or None, error or None)``: a failed load is returned, not raised,
    so one bad file neither stops a run nor kills a DataLoader worker."""

    def __init__(self, files: Sequence[Path], load: Callable[[Path], torch.Tensor]):
        self.files, self.load = list(files), load

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        try:
            return i, self.load(self.files[i]), None
        except MediaError as e:
            return i, None, e.reason
        except Exception as e:  # decoder or transform failure on this file only
            return i, None, f"{type(e).__name__}: {e}"


def load_batches(files: Sequence[Path], load: Callable, batch_size: int, num_workers: int = 0):
    """Iterate ``(indices, tensors, failures)`` over ``files`` in order: ``tensors`` the loaded items
    (stacked on a new first dim), ``failures`` a list of ``(index, reason)``."""
    loader = torch.utils.data.DataLoader(
        _LoadDataset(files, load), batch_size=max(1, batch_size), num_workers=num_workers,
        collate_fn=list,  # keep failures (None) in the batch; stacking happens below
    )
    for batch in loader:
        good = [(i, x) for i, x, err in batch if err is None]
        failures = [(i, err) for i, _, err in batch if err is not None]
        tensors = torch.stack([x for _, x in good]) if good else None
        yield [i for i, _ in good], tensors, failures


def _media_kind(model: nn.Module) -> str:
    return "video" if is_video_model(model) else "image"


def make_loader(model: nn.Module, transform=None, views: str = "single") -> Callable[[Path], torch.Tensor]:
    """A function ``path -> [V, 3, ...]`` (``V`` views; 1 for images) for this model's inputs."""

    transform = transform or eval_transform(unwrap_model(model), views=views)
    if is_video_model(model):
        return transform.load
    return _ImageLoader(transform, load_image)


class _ImageLoader:
    """``path -> [1, 3, H, W]``; a class rather than a lambda so DataLoader workers can pickle it
    (spawned workers on macOS and Windows)."""

    def __init__(self, transform, read):
        self.transform, self.read = transform, read

    def __call__(self, path: Path) -> torch.Tensor:

        image = self.read(path)
        try:
            return self.transform(image).unsqueeze(0)
        except ResizeTooLarge as e:
            raise MediaError(path, str(e)) from None


# ------------------------------------------------------------------------------------------ library
def predict(
    model: nn.Module,
    inputs: Union[str, Path, Sequence[Union[str, Path]]],
    topk: int = 5,
    batch_size: int = 16,
    class_names: Optional[Union[Sequence[str], str, Path]] = None,
    views: str = "single",
    device: Optional[Union[str, torch.device]] = None,
    transform=None,
    num_workers: int = 0,
    progress: bool = True,
) -> MediaList:
    """Top-k classes of every image or video in ``inputs``.

    Args:
        model: a :class:`hiera.Hiera` classifier (image ``[B, 3, H, W]`` or video ``[B, 3, T, H, W]``),
            or a :class:`hiera.HieraDet` with a head (images).
        inputs: files and folders (searched recursively for images, or videos for a video model).
        topk: classes per input (at most the number of classes).
        batch_size: model inputs per forward pass (views count: a 15-view video is 15 inputs).
        class_names: ``num_classes`` names, or a file / ImageFolder folder of them; default
            ImageNet-1k or Kinetics-400 names when the head matches, else ``class_i``.
        views: video only: ``"single"`` (centre clip, centre crop) or ``"multi"`` (5 clips x 3
            crops, probabilities averaged); ``"multi"`` with an image model raises a ValueError.
        device: ``"auto"`` (default: GPU when present), ``"cpu"``, ``"cuda"``, ...
        transform: replaces the evaluation transform (a callable PIL -> ``[3, H, W]`` for images;
            an object with ``.load(path) -> [V, 3, T, H, W]`` for videos).
        num_workers: DataLoader workers decoding inputs in parallel (0: in this process).
        progress: show a tqdm progress bar (on stderr).
    Returns:
        a :class:`hiera.data.media.MediaList` of ``{"path": str, "labels": [(name, probability), ...],
        "indices": [class index, ...]}`` in input order, best first; probabilities are softmax
        scores (averaged over views). ``.skipped`` lists ``(path, reason)`` for every input that was
        left out (missing, wrong kind, corrupt, or so elongated that resizing it would take
        gigabytes: see :func:`hiera.data.transforms.check_resize`).
    """


    if isinstance(model, MaskedAutoencoder) or not hasattr(unwrap_model(model), "head"):
        raise TypeError("predict needs a classifier (hiera.Hiera, or hiera.HieraDet with a head), not an MAE or "
                        "backbone model")
    model = unwrap_model(model)
    if views not in ("single", "multi"):
        raise ValueError(f"views must be 'single' or 'multi', got {views!r}")
    if topk < 1:
        raise ValueError(f"topk must be >= 1, got {topk}")
    num_classes = model.head.projection.out_features
    video = is_video_model(model)
    if views == "multi" and not video:
        raise ValueError(MULTI_VIEW_IMAGE)
    if class_names is None or isinstance(class_names, (str, Path)):
        names = default_names(num_classes, video=video, source=class_names)
    else:
        names = list(class_names)
        if len(names) != num_classes:
            raise ValueError(f"{len(names)} class names given but the model has {num_classes} classes")
    topk = min(topk, num_classes)

    files = find_media(inputs, kinds=(_media_kind(model),))
    results = MediaList(skipped=files.skipped)
    device = resolve_device(device)
    model = model.to(device).eval()

    transform = transform or eval_transform(model, views=views)
    load = make_loader(model, transform)
    num_views = getattr(transform, "num_views", 1) if video else 1
    per_batch = max(1, batch_size // num_views)  # inputs per loader batch, so a pass holds ~batch_size views

    with tqdm(total=len(files), unit=_media_kind(model), disable=not progress, dynamic_ncols=True) as bar:
        for indices, x, failures in load_batches(files, load, per_batch, num_workers):
            for i, reason in failures:
                results.skipped.append(Skipped(str(files[i]), reason))
            if x is not None:
                probs = _probabilities(model, x, batch_size, device)  # [B, K]
                scores, classes = probs.topk(topk, dim=1)
                for i, s, c in zip(indices, scores.tolist(), classes.tolist()):
                    results.append({
                        "path": str(files[i]),
                        "labels": [(names[k], p) for k, p in zip(c, s)],
                        "indices": c,
                    })
            bar.update(len(indices) + len(failures))
    return results


@torch.inference_mode()
def _probabilities(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """``[B, V, 3, ...]`` views -> softmax probabilities averaged over views ``[B, K]`` (float32).

    Probabilities, not logits, are averaged: SlowFast's multi-view test loop (which the Hiera video
    evaluation builds on) sums the heads' softmax outputs over views (``TEST.ENSEMBLE_METHOD "sum"``)."""
    b, v = x.shape[:2]
    flat = x.flatten(0, 1)
    chunks = [classifier_logits(model, flat[i:i + batch_size].to(device)).float().softmax(dim=-1).cpu()
              for i in range(0, len(flat), max(1, batch_size))]
    return torch.cat(chunks).view(b, v, -1).mean(dim=1)


# ------------------------------------------------------------------------------------------ output
def format_results(results: Sequence[dict], fmt: str = "table", skipped: Sequence[Skipped] = (),
                   model_name: Optional[str] = None, rich_table: bool = False) -> str:
    """Render results as ``"json"``, ``"csv"`` (one row per path and rank) or a plain ``"table"``."""
    if fmt == "json":
        return json.dumps({
            "model": model_name,
            "predictions": [
                {"path": r["path"],
                 "labels": [{"label": n, "index": k, "score": p} for (n, p), k in zip(r["labels"], r["indices"])]}
                for r in results
            ],
            "skipped": [{"path": s.path, "reason": s.reason} for s in skipped],
        }, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["path", "rank", "index", "label", "score"])
        for r in results:
            for rank, ((name, p), k) in enumerate(zip(r["labels"], r["indices"]), start=1):
                writer.writerow([r["path"], rank, k, name, f"{p:.6f}"])
        return buf.getvalue()
    if fmt == "table":
        lines = []
        width = max([len(r["path"]) for r in results] + [4])
        for r in results:
            for rank, (name, p) in enumerate(r["labels"]):
                lines.append(f"{r['path'] if rank == 0 else '':<{width}}  {100 * p:6.2f}%  {name}")
        return "\n".join(lines) + ("\n" if lines else "")
    raise ValueError(f"unknown format {fmt!r}; use table, json or csv")


MULTI_VIEW_IMAGE = ("views='multi' (5 clips x 3 crops, averaged) is for video models; this is an image model, "
                    "which sees each image once (resize, centre crop): use views='single'")


def saved_class_names(weights, model: nn.Module):
    """``(names, None)``: the class names saved with ``weights`` (``classes.txt`` of a model
    folder, the ``id2label`` of a transformers config, the classes a training checkpoint records),
    or ``(None, None)`` when there are none; ``(None, message)`` when they do not fit the model."""
    try:
        names, where = stored_class_names(Path(weights))
    except (ValueError, OSError) as e:  # a damaged classes.txt: say so rather than number the classes
        return None, f"the class names saved with {weights}: {e}; give them with --classes FILE"
    if not names:
        return None, None
    outputs = unwrap_model(model).head.projection.out_features
    if len(names) != outputs:
        return None, (f"{where} holds {len(names)} class names but the model has {outputs} outputs; "
                      "give the right names with --classes FILE")
    return names, None


