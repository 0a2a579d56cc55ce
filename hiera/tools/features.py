"""Multi-scale feature maps of images and videos, written to disk: :func:`extract_features`, and the
``hiera features`` sub-command.

    from hiera.zoo import load_model
    from hiera.tools.features import extract_features

    model = load_model("hiera_base_224.mae_in1k")
    extract_features(model, ["photos/"], "feats/", stages=(2, 3), size=(448, 640))
    # feats/<name>.safetensors: {"stage2": [C2, H/16, W/16], "stage3": [C3, H/32, W/32]}

One safetensors file per input (keys ``stage{i}``), or one ``.npy`` per input and stage. Output
files mirror the inputs' paths below the folders given, so names never collide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..data.media import MediaList, Skipped, find_media
from ..data.transforms import eval_transform
from ..devices import resolve_device
from ..weights import write_atomic
from .predict import is_video_model, load_batches, make_loader, unwrap_model


def _output_stems(files: MediaList) -> Dict[Path, Path]:
    """Relative output path (no suffix) per input: its path below the folder it was found in, without
    the extension; the extension is kept where two inputs would otherwise share a name
    (``a.jpg`` / ``a.png``), and a counter added where even that collides (same name, two folders)."""
    rel = {f: files.relative_name(f) for f in files}
    stems = {f: r.with_suffix("") for f, r in rel.items()}
    counts: Dict[Path, int] = {}
    for s in stems.values():
        counts[s] = counts.get(s, 0) + 1
    stems = {f: (rel[f] if counts[s] > 1 else s) for f, s in stems.items()}
    used: Dict[Path, int] = {}
    out = {}
    for f, s in stems.items():
        n = used.get(s, 0)
        used[s] = n + 1
        out[f] = s if n == 0 else s.with_name(f"{s.name}-{n}")
    return out


def check_size(model: nn.Module, size: Sequence[int]) -> tuple:
    """The full input size for ``size`` (``(H, W)``, or ``(T, H, W)`` / ``(H, W)`` for video), after
    checking that it tiles into the model's mask units (a HieraDet: its ``size_multiple``); raises
    ValueError saying which sizes do."""
    hiera = unwrap_model(model)
    size = tuple(int(s) for s in size)
    if len(hiera.input_size) == 3 and len(size) == 2:
        size = (hiera.input_size[0],) + size
    if len(size) != len(hiera.input_size):
        raise ValueError(f"size {size} has {len(size)} dims but the model takes {len(hiera.input_size)}-D inputs")
    if hasattr(hiera, "geometry"):
        hiera.geometry(size)  # raises ValueError naming the multiple every dim must have
        return size
    # A HieraDet has no mask units: each side must be a multiple of its size_multiple (the patch
    # stride times its window position embedding and query pooling).
    multiple = tuple(hiera.size_multiple)
    if any(s < 1 or s % m for s, m in zip(size, multiple)):
        nearest = tuple(m * max(1, round(s / m)) for s, m in zip(size, multiple))
        raise ValueError(f"size {size} does not tile: both sides must be positive multiples of {multiple}, "
                         f"e.g. {nearest}")
    return size


@torch.inference_mode()
def extract_features(
    model: nn.Module,
    inputs: Union[str, Path, Sequence[Union[str, Path]]],
    out_dir: Union[str, Path],
    stages: Optional[Sequence[int]] = None,
    output_fmt: str = "NCHW",
    pooled: bool = False,
    fmt: str = "safetensors",
    size: Optional[Sequence[int]] = None,
    fit: str = "stretch",
    batch_size: int = 8,
    device: Optional[Union[str, torch.device]] = None,
    transform=None,
    num_workers: int = 0,
    progress: bool = True,
) -> MediaList:
    """Write the feature maps of the given ``stages`` of every image (or video) in ``inputs``.

    Args:
        model: a :class:`hiera.Hiera` (classifier or MAE) or a ``HieraFeatures`` backbone.
        inputs: files and folders (searched recursively).
        out_dir: where the files go (created); inputs found in a folder keep their sub-path.
        stages: stage indices (0 = stride 4 ... 3 = stride 32 for the zoo models; negative from the
            end); default every stage of the model.
        output_fmt: ``"NCHW"``: maps ``[C, H', W']`` (video ``[C, T', H', W']``), or ``"NHWC"``:
            channels last ``[H', W', C]``.
        pooled: average each map over its spatial (and temporal) positions: ``[C]`` per stage.
        fmt: ``"safetensors"`` (one file per input, keys ``stage{i}``, metadata naming the source
            and sizes) or ``"npy"`` (``<name>.stage{i}.npy`` per input and stage).
        size: input size to run at instead of the model's: ``(H, W)`` (video: ``(T, H, W)`` or
            ``(H, W)``); turns on ``model.dynamic_size``. Must tile (a multiple of
            ``model.size_multiple``).
        fit: with ``size``: ``"stretch"`` resizes inputs to exactly that size (the whole image,
            aspect ratio not kept); ``"crop"`` resizes keeping the aspect ratio and crops the centre.
            Without ``size`` the model's evaluation transform is used (resize, centre crop 224/256).
        batch_size, device, num_workers, progress: as for :func:`hiera.tools.predict.predict`.
        transform: replaces the transform (PIL -> ``[3, H, W]``; for video ``.load(path)``).
    Returns:
        a :class:`hiera.data.media.MediaList` of ``{"path": input, "files": [written paths],
        "shapes": {"stage{i}": shape}}``; ``.skipped`` lists inputs left out, with the reason.
    """


    if output_fmt not in ("NCHW", "NHWC"):
        raise ValueError(f"output_fmt must be 'NCHW' or 'NHWC', got {output_fmt!r}")
    if fmt not in ("safetensors", "npy"):
        raise ValueError(f"fmt must be 'safetensors' or 'npy', got {fmt!r}")
    hiera = unwrap_model(model)
    num_stages = len(hiera.stage_ends)
    if stages is None:
        stages = range(num_stages)
    try:
        stages = [s % num_stages if -num_stages <= s < num_stages else None for s in stages]
    except TypeError:
        raise TypeError(f"stages must be integers, got {stages!r}") from None
    if not stages or None in stages:
        raise ValueError(f"stages must be between {-num_stages} and {num_stages - 1} (the model has {num_stages})")
    if size is not None:
        size = check_size(hiera, size)
        hiera.dynamic_size = True
    if transform is None:
        transform = eval_transform(hiera, "single", input_size=size, fit=fit if size is not None else "crop")
    run_size = tuple(size) if size is not None else tuple(hiera.input_size)

    device = resolve_device(device)
    hiera = hiera.to(device).eval()
    video = is_video_model(hiera)
    files = find_media(inputs, kinds=("video",) if video else ("image",))
    results = MediaList(skipped=files.skipped)
    stems = _output_stems(files)
    out_dir = Path(out_dir)
    load = make_loader(hiera, transform)

    # Channels-first maps put the spatial dims after C; channels-last before it.
    def spatial_dims(m: torch.Tensor) -> tuple:
        return tuple(range(2, m.ndim)) if output_fmt == "NCHW" else tuple(range(1, m.ndim - 1))

    with tqdm(total=len(files), unit="video" if video else "image", disable=not progress, dynamic_ncols=True) as bar:
        for indices, x, failures in load_batches(files, load, batch_size, num_workers):
            for i, reason in failures:
                results.skipped.append(Skipped(str(files[i]), reason))
            if x is not None:
                x = x[:, 0].to(device)  # single view: [B, 3, ...]
                maps = hiera.forward_intermediates(x, indices=stages, output_fmt=output_fmt)
                if pooled:
                    maps = [m.mean(dim=spatial_dims(m)) for m in maps]
                maps = [m.float().cpu() for m in maps]
                for b, i in enumerate(indices):
                    tensors = {f"stage{s}": m[b].contiguous() for s, m in zip(stages, maps)}
                    try:
                        written = _write(tensors, out_dir / stems[files[i]], fmt, {
                            "source": str(files[i]), "input_size": "x".join(map(str, run_size)),
                            "output_fmt": output_fmt, "pooled": str(pooled),
                        })
                    except OSError as e:  # disk full, permissions: this input fails, the run goes on
                        results.skipped.append(Skipped(str(files[i]), f"cannot write features: {e}"))
                        continue
                    results.append({"path": str(files[i]), "files": written,
                                    "shapes": {k: tuple(v.shape) for k, v in tensors.items()}})
            bar.update(len(indices) + len(failures))
    return results


def _write(tensors: Dict[str, torch.Tensor], stem: Path, fmt: str, metadata: Dict[str, str]) -> List[str]:
    # Each file whole or not at all: a run stopped by a full disk or Ctrl-C leaves no truncated file
    # that a later reader would take for features.

    if fmt == "safetensors":

        path = stem.with_name(stem.name + ".safetensors")
        write_atomic(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
        return [str(path)]

    written = []
    for key, t in tensors.items():
        path = stem.with_name(f"{stem.name}.{key}.npy")
        arr = t.numpy()

        def save(tmp: Path, arr=arr) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append .npy to the name
                np.save(f, arr)

        write_atomic(path, save)
        written.append(str(path))
    return written
