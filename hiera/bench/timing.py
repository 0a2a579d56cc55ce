"""Throughput, latency and memory of Hiera models: the library of ``hiera benchmark``.

    from hiera.bench.timing import benchmark
    r = benchmark(hiera.create_model("hiera_base_224"), batch_size=32, dtype="bf16", device="cuda")
    r["throughput"], r["latency_ms_median"], r["peak_memory_mb"]

Inference runs under ``torch.inference_mode()``; ``bf16`` / ``fp16`` use ``torch.autocast`` (the
weights stay float32). Training steps are forward + backward + an SGD step (so they change the
weights: benchmark a copy if that matters). GPU timings use CUDA events and synchronise before the
clock stops; CPU timings use ``time.perf_counter``. The loop and the memory reader are the compare
workers' (:func:`hiera.bench.worker.time_steps`).

Memory: on GPU ``torch.cuda.max_memory_allocated`` over the timed iterations; on CPU the peak
resident set size of the process (Linux: ``VmHWM``, reset before the timed iterations through
``/proc/self/clear_refs``; elsewhere ``resource.getrusage``'s lifetime peak, said in ``memory_kind``).
Both include the model's weights.

``hiera benchmark --compare`` (:mod:`hiera.bench.plan`, :mod:`~hiera.bench.runner`,
:mod:`~hiera.bench.report`) times this package against the official one, timm and Hugging Face
transformers instead, each in its own process, interleaved. The command line is :mod:`hiera.cli.benchmark`.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import __version__
from ..model import Hiera
from .worker import percentile, time_steps, warm_up

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("inference", "train")
DEVICES = ("cpu", "cuda")
DEFAULT_MIN_TIME = 1.0  # seconds of timed iterations when neither iters nor min_time is given


class UnsupportedDtype(ValueError):
    """The dtype cannot run on the device; the message says why."""


# ----------------------------------------------------------------------------------------- system
def _cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def system_info(device: Union[str, torch.device] = "cpu") -> dict:
    """Machine, library versions and (for CUDA) GPU details, for a benchmark record."""
    info = {
        "hiera": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(idx)
        info["gpu"] = {
            "name": props.name,
            "capability": f"{props.major}.{props.minor}",
            "memory_gb": round(props.total_memory / 2**30, 2),
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version(),
        }
    return info


def dtype_support(device: Union[str, torch.device], dtype: str) -> Tuple[bool, str]:
    """Whether ``dtype`` autocast runs on ``device``: ``(ok, note)``; the note says why not, or
    warns when it runs emulated (e.g. fp16 on a CPU without AVX512-FP16 / AMX-FP16)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    dev = torch.device(device)
    if dtype == "fp32":
        return True, ""
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            return False, "CUDA is not available"
        name = torch.cuda.get_device_name(dev)
        if dtype == "fp16":
            return True, ""
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, ""
        return False, f"{name} has no native bf16 (it needs compute capability 8.0 or newer); use fp16"
    if dev.type != "cpu":
        return False, f"device type {dev.type!r} is not supported (cpu or cuda)"
    tdtype = DTYPES[dtype]
    try:
        with torch.autocast("cpu", dtype=tdtype):
            a = torch.ones(1, 1, 4, 8)
            ok = F.scaled_dot_product_attention(a, a, a).dtype == tdtype and (a[0, 0] @ a[0, 0].T).dtype == tdtype
    except Exception as e:  # noqa: BLE001
        return False, f"torch {torch.__version__} cannot autocast to {dtype} on this CPU ({type(e).__name__}: {e})"
    if not ok:
        return False, f"torch {torch.__version__} does not autocast to {dtype} on CPU"
    native = {"bf16": ("avx512_bf16", "amx_bf16"), "fp16": ("avx512_fp16", "amx_fp16")}[dtype]
    flags = _cpu_flags()
    if flags and not flags & set(native):
        return True, (f"{dtype} runs on this CPU but is emulated (no {' / '.join(native)}): expect it to be "
                      "slower than fp32")
    return True, ""


# ----------------------------------------------------------------------------------------- steps
def model_kind(model: nn.Module) -> str:
    """``"mae"`` (timed on its loss), ``"classifier"`` (a :class:`hiera.Hiera`, timed on its logits)
    or ``"other"``."""
    if hasattr(model, "forward_decoder"):
        return "mae"
    if isinstance(model, Hiera):
        return "classifier"
    return "other"


def _make_forward(kind: str, fn: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    if kind == "mae":
        return lambda x: fn(x)[0]  # (loss, preds, labels, mask): random masking in every call
    if kind == "classifier":
        return lambda x: fn(x, return_logits=True)
    return fn


def _loss(kind: str, out, targets: Optional[torch.Tensor]) -> torch.Tensor:
    if kind == "mae":
        return out
    if kind == "classifier":
        return F.cross_entropy(out.float(), targets)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return sum(o.float().mean() for o in outs if isinstance(o, torch.Tensor))


def benchmark(
    model: nn.Module,
    batch_size: int,
    input_size: Optional[Sequence[int]] = None,
    dtype: str = "fp32",
    device: Union[str, torch.device] = "cpu",
    compile: Union[bool, str] = False,
    mode: str = "inference",
    warmup: int = 3,
    iters: Optional[int] = None,
    min_time: Optional[float] = None,
    min_iters: int = 3,
) -> Dict[str, object]:
    """Time a model on random input ``[batch_size, C, *input_size]``.

    Args:
        model: a :class:`hiera.Hiera` (timed on its logits), a :class:`MaskedAutoencoderHiera`
            (timed on its loss, random masking every call) or any module taking one tensor.
            It is moved to ``device``; its train/eval mode is restored afterwards.
        batch_size: items per step.
        input_size: spatial size ``(H, W)`` / ``(T, H, W)``; default the model's (another size
            switches ``model.dynamic_size`` on and must tile).
        dtype: ``"fp32"``, or ``"bf16"`` / ``"fp16"`` autocast (see :func:`dtype_support`;
            raises :class:`UnsupportedDtype` where it cannot run).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"``, ...).
        compile: ``torch.compile`` the model (``True``: the default inductor backend; a string names
            the backend, e.g. ``"eager"``). The first warm-up step includes compilation.
        mode: ``"inference"`` (forward under ``torch.inference_mode``) or ``"train"`` (forward,
            backward and an SGD step; fp16 uses a gradient scaler).
        warmup: untimed steps first (at least 1 when compiling).
        iters: timed steps; or ``min_time``: time steps until this many seconds have passed (and
            at least ``min_iters``). Neither: ``min_time=1.0``.
    Returns:
        a JSON-serialisable dict: ``throughput`` (items/s), ``latency_ms_median`` /
        ``latency_ms_p90`` / ``latency_ms_mean`` / ``latency_ms_min`` (per step), ``peak_memory_mb``
        and ``memory_kind``, ``first_step_s`` (the first warm-up step, compilation included), the
        settings, ``iters`` and ``total_s``; ``note`` when the dtype runs emulated.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if warmup < 0 or (iters is not None and iters < 1) or (min_time is not None and not min_time > 0):
        raise ValueError(f"need warmup >= 0, iters >= 1 and min_time > 0; got {warmup}, {iters}, {min_time}")
    if iters is not None and min_time is not None:
        raise ValueError("give iters or min_time, not both")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"bad device {device!r}: {e}") from None
    if dev.type not in DEVICES:
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but CUDA is not available")
    ok, note = dtype_support(dev, dtype)
    if not ok:
        raise UnsupportedDtype(f"{dtype} on {dev.type}: {note}")
    if iters is None and min_time is None:
        min_time = DEFAULT_MIN_TIME
    if compile:
        warmup = max(warmup, 1)

    kind = model_kind(model)
    size = tuple(getattr(model, "input_size", ())) if input_size is None else tuple(int(s) for s in input_size)
    if not size:
        raise ValueError("input_size is needed for a model without .input_size")
    in_chans = getattr(model, "in_chans", 3)
    was_training = model.training
    dyn = getattr(model, "dynamic_size", None)
    if dyn is not None and size != tuple(model.input_size):
        model.dynamic_size = True
    model.to(dev)
    model.train(mode == "train")

    fn: Callable = model
    if compile:
        backend = compile if isinstance(compile, str) else "inductor"
        fn = torch.compile(model, backend=backend)
    forward = _make_forward(kind, fn)
    x = torch.randn(int(batch_size), in_chans, *size, device=dev)
    targets = None
    if kind == "classifier":
        targets = torch.randint(0, model.head.projection.out_features, (int(batch_size),), device=dev)
    tdtype = DTYPES[dtype]
    autocast = (lambda: torch.autocast(dev.type, dtype=tdtype)) if dtype != "fp32" else contextlib.nullcontext
    cuda = dev if dev.type == "cuda" else None  # what the timing loop waits for

    if mode == "inference":
        def step():
            with torch.inference_mode(), autocast():
                forward(x)
    else:
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("mode='train' needs trainable parameters")
        optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(dev.type) if dtype == "fp16" else None

        def step():
            with autocast():
                loss = _loss(kind, forward(x), targets)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    try:
        first_step_s, _ = warm_up(step, warmup, cuda)
        # Steps queued back to back (CUDA events time each); memory over the timed steps only.
        timed = time_steps(step, iters=iters, min_time=min_time, min_iters=min_iters, cuda=cuda, sync_each=False)
    finally:
        model.train(was_training)
        if dyn is not None:
            model.dynamic_size = dyn

    latencies, total, peak_mb = timed["latencies_ms"], timed["total_s"], timed["peak_mb"]
    count = len(latencies)
    result = {
        "batch_size": int(batch_size),
        "input_size": list(size),
        "dtype": dtype,
        "device": str(dev),
        "mode": mode,
        "compile": compile if isinstance(compile, str) else bool(compile),
        "warmup": int(warmup),
        "iters": count,
        "total_s": total,
        "throughput": int(batch_size) * count / total,
        "latency_ms_median": statistics.median(latencies),
        "latency_ms_p90": percentile(latencies, 90),
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_min": min(latencies),
        "peak_memory_mb": None if peak_mb is None else round(peak_mb, 1),
        "memory_kind": timed["memory_kind"],
        "first_step_s": None if first_step_s is None else round(first_step_s, 4),
    }
    if note:
        result["note"] = note
    return result
