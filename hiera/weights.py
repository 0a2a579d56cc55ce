"""Reading checkpoints and loading them into models, with a report of what did not match.

Checkpoints come as the official ``.pth`` (``{"model_state": state_dict}``), plain state dicts
(``.pth``/``.pt``/``.bin``) or ``.safetensors``; every path here loads with ``weights_only=True`` or
safetensors, so a checkpoint can never run code.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Union
from urllib.parse import urlsplit

import torch
import torch.nn as nn
from safetensors.torch import load_file

from .pos_embed import adapt_pos_embed, resize_pos_embed

StateDict = Dict[str, torch.Tensor]

# Keys that only an MAE model (encoder + decoder) has.
_MAE_PREFIXES = ("decoder_", "multi_scale_fusion_heads.", "mask_token", "encoder_norm.")
_HEAD_KEYS = ("head.projection.weight", "head.projection.bias")
# Containers that training scripts wrap a state dict in, tried in this order.
_WRAPPER_KEYS = ("model_state", "model", "state_dict", "module")


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint could not be found, read or matched to a model.

    Subclasses both ValueError and RuntimeError: the official package raised RuntimeError for
    unknown checkpoint names, and code written against it keeps working.
    """


@dataclass
class LoadReport:
    """What happened when a checkpoint was loaded into a model."""

    source: str
    checkpoint_kind: str
    model_kind: str
    missing: List[str] = field(default_factory=list)  # model weights not in the checkpoint
    unexpected: List[str] = field(default_factory=list)  # checkpoint weights the model has no use for
    fresh_head: bool = False  # head re-initialised because its size differs from the checkpoint's
    resized: List[str] = field(default_factory=list)  # position embeddings resized to the model's grid

    @property
    def exact(self) -> bool:
        return not self.missing and not self.unexpected and not self.fresh_head

    def __str__(self) -> str:
        parts = [f"{self.source}: {self.checkpoint_kind} checkpoint -> {self.model_kind} model"]
        if self.fresh_head:
            parts.append("new classifier head (size differs from the checkpoint)")
        if self.resized:
            parts.append(f"resized to the model's input size: {self.resized}")
        if self.missing:
            listed = self.missing if len(self.missing) <= 8 else _summarise(self.missing)  # (a whole decoder: by module)
            parts.append(f"{len(self.missing)} weights not in the checkpoint, left initialised: {listed}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} checkpoint weights unused: {_summarise(self.unexpected)}")
        return "; ".join(parts)


def _summarise(keys: List[str], limit: int = 6) -> str:
    prefixes = sorted({k.split(".")[0] for k in keys})
    return ", ".join(prefixes[:limit]) + (", ..." if len(prefixes) > limit else "")


def checkpoint_kind(state_dict: Mapping[str, torch.Tensor]) -> str:
    """``"mae"`` (encoder + decoder), ``"classifier"`` (encoder + head) or ``"encoder"`` (trunk only)."""
    if any(k.startswith(_MAE_PREFIXES) for k in state_dict):
        return "mae"
    if _HEAD_KEYS[0] in state_dict:
        return "classifier"
    return "encoder"


def encoder_only(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """An MAE checkpoint's encoder (trunk) weights: ``state_dict`` without the decoder, fusion heads,
    mask token and encoder norm, which only MAE pretraining uses."""
    return {k: v for k, v in state_dict.items() if not k.startswith(_MAE_PREFIXES)}


def head_classes(state_dict: Mapping[str, torch.Tensor]) -> Optional[int]:
    """The number of classes of the classification head in ``state_dict`` (None: no head)."""
    head = state_dict.get(_HEAD_KEYS[0])
    return None if head is None else int(head.shape[0])


def with_head_classes(state_dict: Mapping[str, torch.Tensor], kwargs: dict) -> dict:
    """``kwargs`` with ``num_classes`` from the checkpoint's head, unless the caller gave one: a
    pretrained head of another size than the config's default loads as it is."""
    classes = head_classes(state_dict)
    return kwargs if classes is None or "num_classes" in kwargs else {**kwargs, "num_classes": classes}


# Zoo names: ``mae_X`` is the MAE (encoder + decoder) form of the classifier ``X``.
MAE_PREFIX = "mae_"


def zoo_name_for(name: str, mae: bool) -> str:
    """The zoo name of architecture ``name`` as an MAE (``mae_hiera_base_224``) or as a classifier
    (``hiera_base_224``), whichever ``name`` was given as."""
    base = name[len(MAE_PREFIX):] if name.startswith(MAE_PREFIX) else name
    return MAE_PREFIX + base if mae else base


def model_kind(model: nn.Module) -> str:
    return checkpoint_kind(dict(model.named_parameters()))


_KIND_WORDS = {
    "mae": "an MAE (encoder + decoder)",
    "classifier": "a classifier (encoder + head)",
    "encoder": "an encoder-only (no head)",
}


def unwrap_state_dict(obj, source: str = "checkpoint") -> StateDict:
    """Find the state dict inside a loaded checkpoint object."""
    while isinstance(obj, Mapping):
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            found = sorted(k for k in obj if isinstance(k, str))[:10]
            raise CheckpointError(
                f"{source} does not hold a state dict: expected tensors, or one of the keys "
                f"{list(_WRAPPER_KEYS)}; found keys {found}"
            )
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{source} does not hold a state dict (got {type(obj).__name__})")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_checkpoint(path: Union[str, os.PathLike]) -> StateDict:
    """Read a state dict from ``.safetensors`` or a torch file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}")
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).exists():
                return read_checkpoint(path / name)
        raise CheckpointError(f"{path} is a directory without model.safetensors or pytorch_model.bin")
    try:
        if path.suffix == ".safetensors":

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated, or a pickle that needs code to load
        raise CheckpointError(
            f"could not read weights file {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "expected a .safetensors file or a torch checkpoint holding only tensors"
        ) from e
    return unwrap_state_dict(obj, source=str(path))


def mirror_url(url: str) -> str:
    """Rewrite an official checkpoint URL to ``$HIERA_WEIGHTS_MIRROR`` when that is set (a local or
    corporate mirror holding the same file names)."""
    mirror = os.environ.get("HIERA_WEIGHTS_MIRROR")
    if not mirror:
        return url
    return mirror.rstrip("/") + "/" + url.rsplit("/", 1)[-1]


def unreachable(url: str, timeout: Optional[float] = None) -> Optional[str]:
    """Why a connection to the host of ``url`` cannot be opened (None when it can), within seconds.

    Download clients retry for tens of seconds before giving up (huggingface_hub backs off five
    times; torch.hub has no timeout at all), so tools ask this first and, when the host cannot be
    reached, fail at once or use what is cached. The connection goes to the proxy when one is set
    for the URL's scheme (``HTTPS_PROXY`` ...) and the host is not in ``NO_PROXY``. The timeout is
    ``$HIERA_CONNECT_TIMEOUT`` seconds (default 5).
    """

    parts = urlsplit(url)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return f"no host in {url!r}"
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(host):
        via = urlsplit(proxy if "://" in proxy else "http://" + proxy)
        if via.hostname:
            host, port = via.hostname, via.port or (443 if via.scheme == "https" else 80)
    if timeout is None:
        try:
            timeout = float(os.environ.get("HIERA_CONNECT_TIMEOUT", "5"))
        except ValueError:
            timeout = 5.0
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        return f"{host}:{port}: {e.strerror or e}"
    return None


def _probe(url: str, offline_help: str) -> None:
    """Fail within seconds when the host cannot be reached (torch.hub itself has no timeout)."""
    why = unreachable(url)
    if why is not None:
        raise CheckpointError(f"could not reach {why}, to download {url}. {offline_help}")


def download_checkpoint(url: str, progress: bool = True) -> StateDict:
    """Fetch a checkpoint through the torch-hub cache (``$TORCH_HOME/hub/checkpoints``)."""
    url = mirror_url(url)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    offline_help = (
        f"Offline? Put the file at {cached}, set HIERA_WEIGHTS_MIRROR to a folder URL holding it, "
        "or pass a local weights file instead of a checkpoint name"
    )
    if not cached.exists():
        _probe(url, offline_help)
    try:
        obj = torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=progress, weights_only=True)
    except (urllib.error.URLError, OSError) as e:
        raise CheckpointError(f"could not download {url} ({e}). {offline_help}") from e
    except Exception as e:
        raise CheckpointError(
            f"could not read the downloaded checkpoint {cached} ({type(e).__name__}: {e}); "
            "delete it to download it again"
        ) from e
    return unwrap_state_dict(obj, source=url)


def _fit_pos_embeds(model: nn.Module, state: StateDict, own: StateDict):
    """Resize position embeddings of a checkpoint made for another input size (bicubic)."""

    def differs(key):
        return key in state and key in own and state[key].shape != own[key].shape

    keys = ("pos_embed", "pos_embed_spatial", "pos_embed_temporal")
    resized = [k for k in keys + ("decoder_pos_embed",) if differs(k)]
    if not resized:
        return state, resized
    state = dict(state)
    if differs("pos_embed") and state["pos_embed"].ndim == 4:  # abswin: a global [1, C, h, w] grid
        glob = state["pos_embed"]
        state["pos_embed"] = resize_pos_embed(
            glob.flatten(2).transpose(1, 2), glob.shape[2:], own["pos_embed"].shape[2:]
        ).transpose(1, 2).reshape(own["pos_embed"].shape)
    grid = getattr(model, "tokens_spatial_shape", None)
    if grid is not None and any(differs(k) for k in keys):
        state = adapt_pos_embed(state, grid)
    final = getattr(model, "tokens_spatial_shape_final", None)
    if final is not None and differs("decoder_pos_embed"):
        state["decoder_pos_embed"] = adapt_pos_embed({"pos_embed": state["decoder_pos_embed"]}, final)["pos_embed"]
    return state, resized


def _check_values(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse weights that would load without complaint and then give nonsense.

    ``load_state_dict`` copies with a cast, so integer tensors land in a float model silently (a
    truncated or mis-saved checkpoint), and NaN / Inf weights turn every prediction into "nan%".
    Only the tensors the model takes are checked; a model tensor that is itself integer (or bool)
    may receive integers.
    """
    wrong_type = [
        f"{k} ({str(v.dtype).removeprefix('torch.')})"
        for k, v in state.items()
        if k in own and own[k].is_floating_point() and not v.is_floating_point()
    ]
    if wrong_type:
        raise CheckpointError(
            f"{source} holds {len(wrong_type)} non-float tensors where the model has float weights: "
            f"{_first(wrong_type)}; expected float32 / float16 / bfloat16 weights (a damaged or mis-saved checkpoint?)"
        )
    bad = []
    for k, v in state.items():
        if k in own and v.is_floating_point() and v.device.type != "meta":
            count = v.numel() - int(torch.isfinite(v).sum())
            if count:
                bad.append(f"{k} ({count} of {v.numel()})")
    if bad:
        raise CheckpointError(
            f"{source} holds NaN or Inf values in {len(bad)} tensors: {_first(bad)}; every weight must be "
            "finite (the training run that saved it diverged, or the file is damaged)"
        )


def _first(items: List[str], limit: int = 5) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def load_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    strict: Optional[bool] = None,
    source: str = "checkpoint",
) -> LoadReport:
    """Load ``state_dict`` into ``model`` and say what did not match.

    * A classifier head of another size than the model's is dropped and the model keeps its fresh
      head (so ``num_classes=K`` works with any classifier checkpoint).
    * ``strict=None`` (default): load every weight the two share; warn about model weights the
      checkpoint lacks (e.g. the head, when an MAE checkpoint goes into a classifier).
    * ``strict=True``: the checkpoint must be of the model's kind and match it exactly (apart from
      a replaced head); otherwise a :class:`CheckpointError` names both kinds.
    * ``strict=False``: load what is shared, silently; the report says the rest.

    Whatever ``strict``, weights that are not finite, or integers where the model has floats, raise
    a :class:`CheckpointError` naming them: loading them would only give nonsense outputs.
    """
    state = unwrap_state_dict(state_dict, source)
    ckpt_kind, own_kind = checkpoint_kind(state), model_kind(model)
    own = model.state_dict()
    _check_values(state, own, source)

    fresh_head = False
    if _HEAD_KEYS[0] in state and _HEAD_KEYS[0] in own and state[_HEAD_KEYS[0]].shape != own[_HEAD_KEYS[0]].shape:
        state = {k: v for k, v in state.items() if k not in _HEAD_KEYS}
        fresh_head = True
    state, resized = _fit_pos_embeds(model, state, own)

    if strict and ckpt_kind != own_kind:
        raise CheckpointError(
            f"{source} is {_KIND_WORDS[ckpt_kind]} checkpoint, but {type(model).__name__} here is "
            f"{_KIND_WORDS[own_kind]} model; load it with strict=False (or the default strict=None) to "
            f"take the weights the two share, or build the matching model"
            + (" (the mae_ constructor)" if ckpt_kind == "mae" else "")
        )

    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    if mismatched:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: {len(mismatched)} weights differ in shape "
            f"(different model size or input size?): {mismatched[:5]}"
        )

    missing = [k for k in own if k not in state and not (fresh_head and k in _HEAD_KEYS)]
    unexpected = [k for k in state if k not in own]
    report = LoadReport(source, ckpt_kind, own_kind, missing, unexpected, fresh_head, resized)
    if strict and (report.missing or report.unexpected):  # checked before touching the model
        raise CheckpointError(f"strict load failed: {report}")

    model.load_state_dict(state, strict=False)
    if strict is None and report.missing:
        warnings.warn(f"Loaded {report}", UserWarning, stacklevel=3)
    return report


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask can only set, and that races other threads)
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a newly created file gets here (``0o666`` less the umask, usually ``0o644``)."""
    return 0o666 & ~_umask()


# ------------------------------------------------------------------ writing files
def temp_name(path: Path) -> Path:
    """The temporary file an atomic write of ``path`` goes through: a hidden sibling, so a rename
    replaces ``path`` in one step (run folders remove leftovers of killed writes by this name)."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_atomic(path: Union[str, os.PathLike], write: Callable[[Path], object]) -> Path:
    """Write ``path`` whole or not at all: ``write(tmp)`` fills a temporary file beside it, which
    is flushed to disk and then replaces ``path``; a crash leaves the old file or the new one.

    On any failure (a full disk, no permission, Ctrl-C) the temporary file is removed; an
    OSError says what could not be written and keeps the cause's ``errno``. Parent folders are
    created. The file gets the usual permissions (``0o666`` less the umask): writers that go
    through their own temporary files (safetensors' ``save_file``) leave it owner-only.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error_of(f"cannot create the folder {path.parent} for {path.name}", e) from None
    tmp = temp_name(path)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if not isinstance(e, Exception):  # Ctrl-C, SystemExit: cleaned up, then on its way
            raise
        cause = _os_error(e)
        if cause is not None:
            raise _os_error_of(f"cannot write {path}", cause) from None
        if isinstance(e, RuntimeError) or type(e).__name__ == "SafetensorError":
            # torch.save reports I/O failures as RuntimeError, safetensors as its own error type
            raise OSError(f"cannot write {path}: {_first_line(e)}") from None
        raise
    _fsync_folder(path.parent)
    return path


def save_atomic(obj, path: Union[str, os.PathLike]) -> Path:
    """``torch.save(obj, path)`` through :func:`write_atomic`."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            try:
                torch.save(obj, sink)
            except RuntimeError as e:
                if sink.error is not None:
                    raise sink.error from e
                raise

    return write_atomic(path, save)


class _Sink:
    """The file ``torch.save`` writes to, keeping the OSError behind a failed write: torch reports
    it as a RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except BaseException as e:  # OSError, or Ctrl-C landing in the write
            self.error = e
            raise

    def flush(self):
        self.f.flush()


class WriteError(OSError):
    """A failed write: the message says what could not be written and why; ``errno`` and
    ``strerror`` are the cause's (a full disk stays recognisable as ``ENOSPC``)."""

    def __init__(self, message: str, cause: Optional[OSError] = None):
        if cause is not None and cause.errno is not None:
            super().__init__(cause.errno, cause.strerror)
        else:
            super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _os_error_of(what: str, cause: OSError) -> WriteError:
    return WriteError(f"{what}: {cause.strerror or _first_line(cause)}", cause)


def _os_error(e: BaseException) -> Optional[OSError]:
    """The OSError behind ``e`` (torch.save raises RuntimeError over the file's own OSError)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a power cut could otherwise undo it)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
