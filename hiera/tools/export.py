"""ONNX export of Hiera classifiers, checked against onnxruntime; the ``export`` command.

The exported graph maps ``input`` ``[B, C, *input_size]`` (float32, normalised as for the model)
to ``logits`` ``[B, num_classes]`` (no softmax). ``B`` is a symbolic dimension with
``dynamic_batch=True``.

Exporters (torch 2.14): the default ``torch.export``-based exporter (``dynamo=True``) handles the
model as it is: the precomputed token-order ``index_select`` buffers become constants (``Gather``),
``scaled_dot_product_attention`` is decomposed into ``MatMul``/``Softmax``, ``amax`` becomes
``ReduceMax``, and the Python-side input checks run at trace time only. The legacy TorchScript
exporter also works (faster to run, but deprecated and it warns); ``exporter="auto"`` tries
``torch.export`` first and falls back to TorchScript if that fails.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import warnings
from pathlib import Path
from typing import NamedTuple, Optional, Sequence, Union

import torch
import torch.nn as nn

from ..hieradet import HieraDet
from ..model import Hiera
from .predict import classifier_logits

EXPORTERS = ("auto", "dynamo", "torchscript")
TORCHSCRIPT_DEFAULT_OPSET = 17
# Weights above this go to a side file (<name>.onnx.data): protobuf files cannot exceed 2 GiB.
EXTERNAL_DATA_BYTES = 1536 * 2**20


class LogitsModule(nn.Module):
    """Wraps a :class:`hiera.Hiera` or :class:`hiera.HieraDet` classifier so that ``forward(x)``
    returns logits ``[B, num_classes]`` (never softmax probabilities, whatever the mode)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return classifier_logits(self.model, x)


class OnnxExport(NamedTuple):
    """What :func:`export_onnx` wrote."""

    path: Path
    exporter: str  # "dynamo" or "torchscript": the one that produced the file
    opset: Optional[int]  # the default-domain opset of the file (None if onnx cannot read it)
    input_shape: tuple  # the example input's shape; dim 0 is symbolic when dynamic_batch
    dynamic_batch: bool
    external_data: bool  # weights in <path>.data beside the graph


def _check_classifier(model: nn.Module) -> None:

    if hasattr(model, "forward_decoder"):
        raise TypeError(
            "this is an MAE model (encoder + decoder, no classification head): ONNX export writes "
            "classifier logits; load the classifier (load_model(..., mae=False))"
        )
    if not isinstance(model, (Hiera, HieraDet)):
        raise TypeError(f"export_onnx needs a hiera.Hiera or hiera.HieraDet classifier, got {type(model).__name__}")
    if isinstance(model, HieraDet) and not model.has_head:
        raise TypeError("this HieraDet is SAM 2's trunk without a classification head: ONNX export writes "
                        "classifier logits; fine-tune a head first (`hiera finetune --model sam2_hiera_<size>`)")


@contextlib.contextmanager
def _eval_mode(model: nn.Module, dynamic_size: Optional[bool] = None):
    training, dyn = model.training, getattr(model, "dynamic_size", None)
    model.eval()
    if dynamic_size is not None:
        model.dynamic_size = dynamic_size
    try:
        yield model
    finally:
        model.train(training)
        if dyn is not None:
            model.dynamic_size = dyn


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _export_dynamo(wrapper, x, path, dynamic_batch, opset, external_data):
    missing = [m for m in ("onnx", "onnxscript") if not _have(m)]
    if missing:
        raise ImportError(
            f"the torch.export-based ONNX exporter needs {' and '.join(missing)}: pip install onnx onnxscript "
            "(or use exporter='torchscript')"
        )
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    log = io.StringIO()
    with contextlib.redirect_stdout(log), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (x,), str(path), dynamo=True, dynamic_shapes=dynamic_shapes,
            input_names=["input"], output_names=["logits"], opset_version=opset,
            external_data=external_data, verbose=False,
        )


def _export_torchscript(wrapper, x, path, dynamic_batch, opset):
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic_batch else None
    # Quiet: the exporter's deprecation notice, tracer warnings on the input checks, and the whole
    # graph it prints to stdout when an operator is not supported.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                wrapper, (x,), str(path), dynamo=False, input_names=["input"], output_names=["logits"],
                dynamic_axes=axes, opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET, do_constant_folding=True,
            )
        except Exception as e:  # noqa: BLE001 - re-raised with the first line only
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise RuntimeError(f"the TorchScript ONNX exporter failed: {first}") from e


def _file_opset(path: Path) -> Optional[int]:
    try:
        import onnx

        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - only informative
        return None
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return None


def export_onnx(
    model: nn.Module,
    path: Union[str, Path],
    input_size: Optional[Sequence[int]] = None,
    batch: int = 1,
    dynamic_batch: bool = True,
    opset: Optional[int] = None,
    exporter: str = "auto",
    external_data: Optional[bool] = None,
) -> OnnxExport:
    """Export a classifier's logits to ONNX.

    Args:
        model: a :class:`hiera.Hiera` classifier (image or video) or a :class:`hiera.HieraDet` with a
            head; exported in eval mode (its mode is restored afterwards).
        path: the ``.onnx`` file to write (parent folders are created).
        input_size: spatial size ``(H, W)`` / ``(T, H, W)``; default the model's. Another size must
            tile (``model.size_multiple``); the graph is then built for that size.
        batch: batch size of the graph when ``dynamic_batch=False`` (and of the example input).
        dynamic_batch: make the batch dimension symbolic, so any batch size runs.
        opset: ONNX opset; default the exporter's own (20 for the torch.export exporter in
            torch 2.14, 17 for TorchScript).
        exporter: ``"auto"`` (torch.export, falling back to TorchScript on failure), ``"dynamo"``
            or ``"torchscript"``.
        external_data: store the weights in ``<path>.data``; default only when they exceed 1.5 GiB
            (torch.export exporter only: TorchScript decides by itself).
    Returns:
        an :class:`OnnxExport` (path, exporter used, opset, input shape, ...).

    The graph: ``input`` float32 ``[B, C, *input_size]`` -> ``logits`` float32 ``[B, num_classes]``.
    """
    _check_classifier(model)
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if int(batch) < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    if opset is not None and not 7 <= int(opset) <= 30:
        raise ValueError(f"opset must be an ONNX opset version (e.g. 17, 18, 20), got {opset}")
    size = tuple(model.input_size) if input_size is None else tuple(int(s) for s in input_size)
    if len(size) != len(model.input_size):
        raise ValueError(f"input_size needs {len(model.input_size)} dims like the model's {tuple(model.input_size)}, got {size}")
    other_size = size != tuple(model.input_size)
    if other_size:  # a clear error when the size does not tile
        multiple = tuple(model.size_multiple)
        if any(s % m or s <= 0 for s, m in zip(size, multiple)):
            raise ValueError(f"input_size {size} does not tile: every side must be a positive multiple of {multiple}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = Path(str(path) + ".data")  # the weights of an earlier export to the same path
    if stale.is_file():
        stale.unlink()
    param = next(model.parameters())
    if external_data is None:
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        nbytes += sum(b.numel() * b.element_size() for b in model.buffers())
        external_data = nbytes > EXTERNAL_DATA_BYTES
    # torch.export specialises a dimension whose example value is 1: trace a batch of >= 2.
    example_batch = max(int(batch), 2) if dynamic_batch else int(batch)
    x = torch.randn(example_batch, model.in_chans, *size, device=param.device, dtype=param.dtype)

    before = _identity(path)
    try:
        used = _export(model, x, path, exporter, other_size, dynamic_batch, opset, external_data)
    except BaseException:
        # A failed or interrupted export can leave a truncated graph that onnxruntime would choke
        # on; a file the export never touched stays.
        if path.is_file() and _identity(path) != before:
            path.unlink()
        if stale.is_file():
            stale.unlink()
        raise
    ext = Path(str(path) + ".data").exists() if used == "dynamo" else bool(external_data)
    shape = ("batch" if dynamic_batch else int(batch), model.in_chans, *size)
    return OnnxExport(path, used, _file_opset(path), shape, bool(dynamic_batch), ext)


def _identity(path: Path):
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def _export(model, x, path, exporter, other_size, dynamic_batch, opset, external_data) -> str:
    """Write the graph; returns the exporter that did ("dynamo" or "torchscript")."""
    used = exporter
    with _eval_mode(model, dynamic_size=True if other_size else None), torch.no_grad():
        wrapper = LogitsModule(model).eval()
        if exporter in ("auto", "dynamo"):
            try:
                _export_dynamo(wrapper, x, path, dynamic_batch, opset, external_data)
                used = "dynamo"
            except Exception as e:  # noqa: BLE001 - reported, then the fallback is tried
                if exporter == "dynamo":
                    raise
                warnings.warn(
                    f"torch.export-based ONNX export failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                    "falling back to the TorchScript exporter",
                    RuntimeWarning,
                    stacklevel=3,
                )
                used = "torchscript"
        if used == "torchscript":
            _export_torchscript(wrapper, x, path, dynamic_batch, opset)
    return used


class OnnxRuntimeMissing(ImportError):
    """onnxruntime is not installed."""


ORT_MISSING = "onnxruntime is not installed, so the exported file was not checked (pip install onnxruntime)"


def verify_onnx(path: Union[str, Path], model: nn.Module, x: torch.Tensor, missing_ok: bool = True) -> Optional[float]:
    """Run the ONNX file with onnxruntime (CPU) and the model in eval mode on ``x``.

    Args:
        path: an ``.onnx`` file written by :func:`export_onnx`.
        model: the classifier it was exported from.
        x: input ``[B, C, *input_size]``.
        missing_ok: without onnxruntime, warn and return None (False: raise
            :class:`OnnxRuntimeMissing`).
    Returns:
        the largest absolute difference between the two sets of logits ``[B, num_classes]``
        (None when onnxruntime is missing and ``missing_ok``).
    """
    try:
        import onnxruntime as ort
    except ImportError:
        if not missing_ok:
            raise OnnxRuntimeMissing(ORT_MISSING) from None
        warnings.warn(ORT_MISSING, RuntimeWarning, stacklevel=2)
        return None
    _check_classifier(model)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    want = session.get_inputs()[0]
    static = [d for d in want.shape]
    if len(static) != x.ndim or any(isinstance(d, int) and d != s for d, s in zip(static, x.shape)):
        raise ValueError(f"{path} takes input of shape {static}, got {tuple(x.shape)}")
    with _eval_mode(model, dynamic_size=True if tuple(x.shape[2:]) != tuple(model.input_size) else None), torch.no_grad():
        ref = classifier_logits(model, x).float().cpu().numpy()
    out = session.run(None, {want.name: x.detach().float().cpu().numpy()})[0]
    if out.shape != ref.shape:
        raise ValueError(f"onnxruntime returned shape {out.shape}, the model {ref.shape}")
    return float(abs(out - ref).max())
