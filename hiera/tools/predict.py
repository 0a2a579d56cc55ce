"""Classify images and videos: :func:`predict`, and the ``hiera predict`` sub-command.

    from hiera.resolve import load_model
    from hiera.predict import predict

    model = load_model("hiera_base_224")
    for r in predict(model, ["photos/"], topk=3):
        print(r["path"], r["labels"])          # [("tabby", 0.81), ("tiger cat", 0.12), ...]

Inputs are decoded with :mod:`hiera.media` and prepared with the checkpoints' evaluation transforms
(:func:`hiera.transforms.eval_transform`). A file that cannot be read is skipped and listed in the
result's ``.skipped``; it never stops the run.
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import sys
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..data.media import MediaError, MediaList, Skipped, find_media

# ------------------------------------------------------------------------------------------ shared
# Helpers the feature extractor (hiera.extract) shares with predict.


def available_devices() -> List[str]:
    """The devices torch can use here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


DEVICE_HELP = "auto (a CUDA GPU if present, else an Apple mps GPU, else the CPU), cpu, cuda, cuda:1, mps (default: auto)"


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``None`` / ``"auto"``: a CUDA GPU if there is one, else an Apple (mps) GPU, else the CPU;
    anything else as torch reads it.

    Every tool resolves ``--device`` here, so a device that is not present fails at once with a
    ValueError naming it and the devices there are (rather than at the first tensor moved to it)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; use auto, cpu, cuda, cuda:N or mps "
                         f"(available here: {', '.join(available_devices())})") from None
    if dev.type == "cpu":
        return dev
    have = available_devices()
    names = {"cuda": "CUDA GPU", "mps": "Apple (mps) GPU", "xpu": "Intel (xpu) GPU"}
    present = [d for d in have if d.split(":")[0] == dev.type]
    if not present:
        raise ValueError(f"device {str(device)!r} asked for, but torch sees no {names.get(dev.type, dev.type + ' device')} "
                         f"here; available: {', '.join(have)}")
    index_ok = dev.index is None or (dev.index == 0 if dev.type == "mps" else f"{dev.type}:{dev.index}" in present)
    if not index_ok:
        raise ValueError(f"device {str(device)!r} asked for, but there {'is' if len(present) == 1 else 'are'} only "
                         f"{len(present)} {names.get(dev.type, dev.type)}{'' if len(present) == 1 else 's'}; "
                         f"available: {', '.join(have)}")
    return dev


def unwrap_model(model: nn.Module) -> nn.Module:
    """The :class:`hiera.Hiera` inside a ``HieraFeatures`` backbone (or the model itself)."""
    from ..backbone import HieraFeatures

    return model.model if isinstance(model, HieraFeatures) else model


def is_video_model(model: nn.Module) -> bool:
    return len(unwrap_model(model).input_size) == 3


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
    from ..data.media import load_image
    from ..data.transforms import eval_transform

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
        from ..data.transforms import ResizeTooLarge

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
        model: a :class:`hiera.Hiera` classifier (image ``[B, 3, H, W]`` or video ``[B, 3, T, H, W]``).
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
        a :class:`hiera.media.MediaList` of ``{"path": str, "labels": [(name, probability), ...],
        "indices": [class index, ...]}`` in input order, best first; probabilities are softmax
        scores (averaged over views). ``.skipped`` lists ``(path, reason)`` for every input that was
        left out (missing, wrong kind, corrupt, or so elongated that resizing it would take
        gigabytes: see :func:`hiera.transforms.check_resize`).
    """
    from tqdm.auto import tqdm

    from ..data.labels import class_names as default_names
    from ..mae import MaskedAutoencoderHiera

    if isinstance(model, MaskedAutoencoderHiera) or not hasattr(unwrap_model(model), "head"):
        raise TypeError("predict needs a classifier (hiera.Hiera with a head), not an MAE or backbone model")
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
    from ..data.transforms import eval_transform

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
    chunks = [model(flat[i:i + batch_size].to(device), return_logits=True).float().softmax(dim=-1).cpu()
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


def _print_rich_table(results: Sequence[dict], title: Optional[str]) -> bool:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # rich is optional: plain text instead
        return False
    table = Table(title=title, show_lines=True)
    table.add_column("input", overflow="fold")
    table.add_column("class")
    table.add_column("probability", justify="right")
    for r in results:
        table.add_row(r["path"], "\n".join(n for n, _ in r["labels"]),
                      "\n".join(f"{100 * p:.2f}%" for _, p in r["labels"]))
    Console().print(table)
    return True


def report_skipped(skipped: Sequence[Skipped], done: int, what: str, stream=None) -> None:
    """One stderr line per skipped input, then a count, so a partial run is never silent."""
    stream = stream or sys.stderr
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=stream)
    if skipped:
        print(f"{done} {what}, {len(skipped)} skipped", file=stream)


def error(prog: str, message: str) -> int:
    """Print ``prog: error: message`` on stderr and return the exit code 1."""
    from ..cli import fail

    return fail(prog.removeprefix("hiera "), message)


MULTI_VIEW_IMAGE = ("views='multi' (5 clips x 3 crops, averaged) is for video models; this is an image model, "
                    "which sees each image once (resize, centre crop): use views='single'")


def cli_load_model(args: argparse.Namespace, prog: str, need_head: bool = False):
    """``load_model(args.model, args.weights)``, or (None, exit code) after a one-line error.
    ``need_head``: refuse weights whose classification head was not loaded (see ``load_model``)."""
    from ..formats.read import load_model

    if args.model is None and args.weights is None:
        return None, error(prog, "say which model: --model NAME (see `hiera zoo`) or --weights PATH")
    try:
        return load_model(model=args.model, weights=args.weights, need_head=need_head), 0
    except KeyboardInterrupt:
        raise
    except Exception as e:  # whatever the cause (missing file, bad config, network), one clear line
        what = str(args.weights or args.model)
        message = str(e) if str(e).startswith((what, "could not get ")) else f"could not load the model {what}: {e}"
        return None, error(prog, message)


def saved_class_names(weights, model: nn.Module):
    """``(names, None)``: the class names saved with ``weights`` (``classes.txt`` of a model
    folder, the ``id2label`` of a transformers config, the classes a training checkpoint records),
    or ``(None, None)`` when there are none; ``(None, message)`` when they do not fit the model."""
    from ..train.commands import _stored_class_names

    try:
        names, where = _stored_class_names(Path(weights))
    except (ValueError, OSError) as e:  # a damaged classes.txt: say so rather than number the classes
        return None, f"the class names saved with {weights}: {e}; give them with --classes FILE"
    if not names:
        return None, None
    outputs = unwrap_model(model).head.projection.out_features
    if len(names) != outputs:
        return None, (f"{where} holds {len(names)} class names but the model has {outputs} outputs; "
                      "give the right names with --classes FILE")
    return names, None


# ------------------------------------------------------------------------------------------ CLI
EPILOG = """\
examples:
  hiera predict --model hiera_base_224 cat.jpg dog.png
      top-5 ImageNet classes of two images
  hiera predict --model hiera_base_224 photos/ --format csv --output preds.csv
      every image under photos/ (recursively), one CSV row per class
  hiera predict --model hiera_base_16x224 clip.mp4 --views multi
      Kinetics-400 classes of a video, averaged over 5 clips x 3 crops
  hiera predict --weights runs/ft/model images/
      a model you fine-tuned: `hiera finetune --out runs/ft` writes runs/ft/model/ (and runs/ft/last.pt);
      the class names come from the classes.txt saved with it
  hiera predict --weights other.pth --classes names.txt images/
      weights from elsewhere, with their class names (one per line, or an ImageFolder folder)

Models: --model takes a zoo name (`hiera zoo`; add .CHECKPOINT to pick one) or a Hugging Face repo
id; --weights a checkpoint file or save_pretrained folder (any supported format). Images are
resized (shorter side 256/224 x input), centre-cropped and normalised as the checkpoints were
evaluated; videos use 16 frames 4 apart (at 30 fps) with Kinetics normalisation.
Unreadable or corrupt inputs are skipped and listed on stderr; the exit code is 0 when at least
one input was classified (1 with --strict if any was skipped), 1 on errors.
"""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` / ``--weights``, the same for every tool (both go to ``hiera.resolve.load_model``)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", metavar="NAME",
                       help="zoo name (e.g. hiera_base_224, hiera_base_224.mae_in1k_ft_in1k) or Hub repo id; "
                            "with --weights: the architecture of the weights")
    group.add_argument("--weights", "-w", metavar="PATH",
                       help="weights file or save_pretrained folder (official .pth, safetensors, timm, "
                            "transformers, our training checkpoints)")
    group.add_argument("--device", default="auto", help=DEVICE_HELP)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``predict`` sub-command on ``subparsers`` (from ``add_subparsers()``)."""
    p = subparsers.add_parser(
        "predict",
        help="classify images and videos (top-k classes)",
        description="Classify images or videos with a Hiera classifier and print the top-k classes "
                    "with their probabilities.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image or video files, or folders to search recursively")
    add_model_arguments(p)
    p.add_argument("--topk", "-k", type=int, default=5, help="classes to show per input (default: 5)")
    p.add_argument("--batch-size", "-b", type=int, default=16,
                   help="model inputs per forward pass; each video view counts (default: 16)")
    p.add_argument("--views", choices=("single", "multi"), default="single",
                   help="videos: single = centre clip and crop; multi = 5 clips x 3 crops with their "
                        "probabilities averaged (15x the compute) (default: single)")
    p.add_argument("--classes", metavar="FILE",
                   help="class names: a text file (one per line, in class-index order), a JSON list, or "
                        "an ImageFolder folder (its sub-folder names); default: the names saved with --weights "
                        "(classes.txt of a model folder, or those a training checkpoint records), else "
                        "ImageNet-1k / Kinetics-400 names when the head has 1000 / 400 classes")
    p.add_argument("--format", "-f", choices=("table", "json", "csv"), default=None,
                   help="output format (default: from --output's extension, else table)")
    p.add_argument("--output", "-o", metavar="FILE", help="write the results to FILE instead of stdout")
    p.add_argument("--num-workers", type=int, default=0, help="processes decoding inputs (default: 0)")
    p.add_argument("--strict", action="store_true", help="exit with 1 if any input was skipped")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run_predict)
    return p


def _output_format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower() if args.output else ""
    return {".json": "json", ".csv": "csv"}.get(suffix, "table")


def exit_on_interrupt(prog: str):
    """Decorate a command so that Ctrl-C ends it with one line on stderr and exit code 130 (the
    shell's code for SIGINT) instead of a traceback. Outputs are written whole or not at all, so
    nothing half-written is left behind."""
    def wrap(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        @functools.wraps(command)
        def run(args: argparse.Namespace) -> int:
            try:
                return command(args)
            except KeyboardInterrupt:
                sys.stdout.flush()
                # A progress bar on a terminal may leave the cursor mid-line: start a fresh one.
                lead = "\n" if sys.stderr.isatty() else ""
                print(f"{lead}{prog}: interrupted", file=sys.stderr)
                return 130
        return run
    return wrap


@exit_on_interrupt("hiera predict")
def run_predict(args: argparse.Namespace) -> int:
    """The ``hiera predict`` command; returns the exit code."""
    prog = "hiera predict"
    if args.topk < 1 or args.batch_size < 1 or args.num_workers < 0:
        return error(prog, "--topk and --batch-size must be >= 1, --num-workers >= 0")
    try:
        device = resolve_device(args.device)
    except ValueError as e:
        return error(prog, str(e))
    model, code = cli_load_model(args, prog, need_head=True)
    if model is None:
        return code
    if args.views == "multi" and not is_video_model(model):
        return error(prog, "--views multi (5 clips x 3 crops) is for video models; this is an image model, "
                           "which sees each image once: leave --views out")
    class_names = args.classes
    if class_names is None and args.weights is not None:
        class_names, message = saved_class_names(args.weights, model)
        if message:
            return error(prog, message)
    fmt = _output_format(args)
    try:
        results = predict(model, args.inputs, topk=args.topk, batch_size=args.batch_size,
                          class_names=class_names, views=args.views, device=device,
                          num_workers=args.num_workers, progress=not args.no_progress)
    except (ValueError, TypeError, OSError) as e:  # bad --classes file, wrong model kind
        return error(prog, str(e))
    report_skipped(results.skipped, len(results), "classified")
    if not results:
        return error(prog, "no input could be classified")
    name = args.model or str(args.weights)
    if args.output:
        from ..weights import write_atomic

        text = format_results(results, fmt, results.skipped, name)
        try:
            write_atomic(args.output, lambda tmp: tmp.write_text(text, encoding="utf-8"))
        except OSError as e:
            return error(prog, f"cannot write {args.output}: {e}")
    elif not (fmt == "table" and sys.stdout.isatty() and _print_rich_table(results, name)):
        sys.stdout.write(format_results(results, fmt, results.skipped, name))
    return 1 if args.strict and results.skipped else 0
