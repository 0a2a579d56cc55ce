"""Throughput, latency and memory of Hiera models; the ``benchmark`` command.

    from hiera.benchmark import benchmark
    r = benchmark(hiera.create_model("hiera_base_224"), batch_size=32, dtype="bf16", device="cuda")
    r["throughput"], r["latency_ms_median"], r["peak_memory_mb"]

Inference runs under ``torch.inference_mode()``; ``bf16`` / ``fp16`` use ``torch.autocast`` (the
weights stay float32). Training steps are forward + backward + an SGD step (so they change the
weights: benchmark a copy if that matters). GPU timings use CUDA events and synchronise before the
clock stops; CPU timings use ``time.perf_counter``.

Memory: on GPU ``torch.cuda.max_memory_allocated`` over the timed iterations; on CPU the peak
resident set size of the process (Linux: ``VmHWM``, reset before the timed iterations through
``/proc/self/clear_refs``; elsewhere ``resource.getrusage``'s lifetime peak, said in ``memory_kind``).
Both include the model's weights.

``hiera benchmark --compare`` (:mod:`hiera.compare`) times this package against the official one,
timm and Hugging Face transformers instead, each in its own process, interleaved.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from . import compare
from ..cli import fail
import torch.nn as nn
import torch.nn.functional as F

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
    from .. import __version__

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


# ----------------------------------------------------------------------------------------- memory
def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS; Linux >= 4.0
        return True
    except OSError:
        return False


def _rss_peak_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


# ----------------------------------------------------------------------------------------- steps
def _model_kind(model: nn.Module) -> str:
    from ..model import Hiera

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


_percentile = compare.percentile


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

    kind = _model_kind(model)
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
    cuda = dev.type == "cuda"

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

    def sync():
        if cuda:
            torch.cuda.synchronize(dev)

    try:
        first_step_s = None
        for i in range(warmup):
            t0 = time.perf_counter()
            step()
            sync()
            if i == 0:
                first_step_s = time.perf_counter() - t0
        # Memory over the timed steps only.
        if cuda:
            torch.cuda.reset_peak_memory_stats(dev)
            memory_kind = "cuda_max_allocated"
        else:
            memory_kind = "cpu_rss_peak" if _reset_rss_peak() else "cpu_rss_peak_process_lifetime"
        latencies: List[float] = []
        events = []
        count = 0
        start = time.perf_counter()
        while True:
            if cuda:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                step()
                end.record()
                events.append((begin, end))
            else:
                t0 = time.perf_counter()
                step()
                latencies.append((time.perf_counter() - t0) * 1000.0)
            count += 1
            if iters is not None and count >= iters:
                break
            if min_time is not None and count >= min_iters and time.perf_counter() - start >= min_time:
                break
        sync()
        total = time.perf_counter() - start
        if cuda:
            latencies = [b.elapsed_time(e) for b, e in events]
            peak_mb = torch.cuda.max_memory_allocated(dev) / 2**20
        else:
            peak_mb = _rss_peak_mb()
    finally:
        model.train(was_training)
        if dyn is not None:
            model.dynamic_size = dyn

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
        "latency_ms_p90": _percentile(latencies, 90),
        "latency_ms_mean": statistics.fmean(latencies),
        "latency_ms_min": min(latencies),
        "peak_memory_mb": round(peak_mb, 1),
        "memory_kind": memory_kind,
        "first_step_s": None if first_step_s is None else round(first_step_s, 4),
    }
    if note:
        result["note"] = note
    return result


# ----------------------------------------------------------------------------------------- CLI
def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``benchmark`` on an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "benchmark",
        help="measure throughput, latency and memory",
        description=(
            "Time a model on random input for each batch size x dtype. Zoo names are built with random "
            "weights (nothing is downloaded); --weights loads real ones."
        ),
        epilog="""examples:
  hiera benchmark --model hiera_base_224 --batch-size 1 8 32 --dtype fp32 bf16
      inference throughput, latency and memory with random weights (on a CUDA GPU if there is one)
  hiera benchmark --model hiera_tiny_224 --device cpu --threads 2 --mode train --json bench.json
      training steps on the CPU with 2 threads, the record written to bench.json
  hiera benchmark --weights quickstart/finetune/model --batch-size 64
      a model you trained
  hiera benchmark --compare --quick
      ours against the official package, timm and transformers, interleaved (see benchmarks/README.md)

On a CPU shared with other work, set --threads to the cores that are free: torch's threads wait
for each other by spinning, and one thread held up by another process slows every step.""",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="zoo name (e.g. hiera_base_224, mae_hiera_base_16x224); with --weights it "
                   "names the architecture (optional if the weights carry a config)")
    p.add_argument("--weights", help="weights file or save_pretrained directory (optional)")
    p.add_argument("--mae", action="store_true",
                   help="time the MAE model (encoder + decoder, timed on its loss) of --weights / a zoo name")
    p.add_argument("--batch-size", type=int, nargs="+", default=None, metavar="N",
                   help="one or more (default 1; with --compare 1 8 32)")
    p.add_argument("--dtype", nargs="+", default=None, choices=list(DTYPES),
                   help="one or more (default fp32; with --compare fp32 bf16)")
    p.add_argument("--device", default=None,
                   help="auto (a CUDA GPU if present, else the CPU; Apple mps is not benchmarked), cpu, cuda, cuda:1 "
                        "(default: auto; with --compare cpu)")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (optionally naming the backend; default inductor)")
    p.add_argument("--mode", nargs="+", choices=MODES, default=None,
                   help="inference (default) or train steps; with --compare one or both (default both)")
    p.add_argument("--input-size", type=int, nargs="+", default=None, metavar="N",
                   help="spatial input size (H W, or T H W for video); default the model's")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; with --compare 2)")
    stop = p.add_mutually_exclusive_group()
    stop.add_argument("--iters", type=int, default=None, help="timed steps (with --compare: per round)")
    stop.add_argument("--min-time", type=float, default=None,
                      help=f"time steps for at least this many seconds (default {DEFAULT_MIN_TIME}; with --compare "
                           "per round, default 2)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core)")
    p.add_argument("--json", metavar="FILE", help="write a record: machine, versions, date and every measurement")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    compare.add_arguments(p)
    p.set_defaults(func=_cmd_benchmark)
    return p


def _add_flops(model: nn.Module, size: Sequence[int], mode: str, measurements: List[dict], system: dict) -> None:
    """Model FLOPs per item, FLOP/s and (on a GPU with a known peak) MFU for each measurement of a
    Hiera or MAE model (see :func:`hiera.compare.model_flops`); other models get none."""
    kind, config = _model_kind(model), getattr(model, "config", None)
    if kind == "other" or not isinstance(config, dict):
        return
    arch = {**config, "input_size": list(size)}
    flops = compare.model_flops("mae" if kind == "mae" else "classify", mode, arch, size)
    if flops is None:
        return
    for m in measurements:
        if "throughput" in m:
            m["gflop_per_item"] = flops / 1e9
            m["tflops"] = flops * m["throughput"] / 1e12
            peak = compare.peak_tflops(system, m["dtype"])
            if peak:
                m["mfu"] = m["tflops"] / peak


def _error(msg: str, code: int) -> int:
    return fail("benchmark", msg, code)


def _load(args) -> nn.Module:
    from ..formats.read import load_model
    from ..zoo import MODELS, create_model

    if args.weights is None:
        name = args.model.split(".", 1)[0]
        if args.mae and not name.startswith("mae_"):
            name = "mae_" + name
        if name not in MODELS:
            raise LookupError(
                f"unknown zoo model {args.model!r}: without --weights the benchmark builds zoo architectures "
                "with random weights (see `hiera zoo`); pass --weights for anything else"
            )
        return create_model(name)
    return load_model(args.model, args.weights, mae=args.mae)


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from ..weights import CheckpointError

    if args.compare:
        return compare.cmd_compare(args)
    option = compare.check_not_compare(args)
    if option:
        return _error(f"{option} needs --compare", 2)
    if args.mode is not None and len(args.mode) > 1:
        return _error("one --mode at a time (several only with --compare)", 2)
    # The defaults of one model's run (--compare has its own).
    args.mode = args.mode[0] if args.mode else "inference"
    args.batch_size = args.batch_size or [1]
    args.dtype = args.dtype or ["fp32"]
    args.warmup = 3 if args.warmup is None else args.warmup
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.model is None and args.weights is None:
        return _error("say which model: --model NAME (zoo name) and/or --weights PATH", 2)
    if any(b < 1 for b in args.batch_size):
        return _error(f"--batch-size values must be >= 1, got {args.batch_size}", 2)
    if args.warmup < 0:
        return _error(f"--warmup must be >= 0, got {args.warmup}", 2)
    if args.iters is not None and args.iters < 1:
        return _error(f"--iters must be >= 1, got {args.iters}", 2)
    if args.min_time is not None and not args.min_time > 0:
        return _error(f"--min-time must be > 0, got {args.min_time}", 2)
    if args.threads is not None and args.threads < 1:
        return _error(f"--threads must be >= 1, got {args.threads}", 2)
    device = args.device if args.device not in (None, "auto") else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        return _error(f"bad --device {device!r}: {e}", 2)
    if dev.type not in DEVICES:
        return _error(f"--device must be cpu or cuda, got {device!r}", 2)
    if dev.type == "cuda" and not torch.cuda.is_available():
        return _error("--device cuda, but CUDA is not available", 2)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model = _load(args)
    except LookupError as e:
        return _error(str(e), 2)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        return _error(f"could not load the model: {e}", 1)
    if args.input_size is not None and len(args.input_size) != len(model.input_size):
        return _error(f"--input-size needs {len(model.input_size)} numbers for this model "
                      f"(its size is {' '.join(map(str, model.input_size))})", 2)
    size = tuple(args.input_size) if args.input_size else tuple(model.input_size)
    if args.input_size:
        try:
            model.geometry(size)
        except ValueError as e:
            return _error(str(e), 2)

    name = args.model or str(args.weights)
    if args.weights is None and args.model and "." in args.model:
        log(f"note: {args.model.split('.', 1)[1]!r} ignored: without --weights the weights are random")
    video = len(size) == 3
    unit = "clips/s" if video else "img/s"
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    log(f"{name}: {type(model).__name__}, {params_m:.1f} M parameters, input {'x'.join(map(str, size))}, "
        f"{dev}, {args.mode}" + (f", compiled ({args.compile})" if args.compile else ""))

    combos = [(b, d) for d in args.dtype for b in args.batch_size]
    measurements, failed = [], 0
    for i, (batch, dtype) in enumerate(combos, 1):
        label = f"[{i}/{len(combos)}] batch {batch}, {dtype}"
        log(f"{label} ...")
        record = {"batch_size": batch, "dtype": dtype}
        try:
            r = benchmark(model, batch, input_size=size, dtype=dtype, device=dev, compile=args.compile or False,
                          mode=args.mode, warmup=args.warmup, iters=args.iters, min_time=args.min_time)
        except UnsupportedDtype as e:
            log(f"{label}: skipped: {e}")
            measurements.append({**record, "skipped": str(e)})
            continue
        except (RuntimeError, ValueError) as e:  # out of memory, compile failures, ...
            failed += 1
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            log(f"{label}: failed: {type(e).__name__}: {msg}")
            measurements.append({**record, "error": f"{type(e).__name__}: {msg}"})
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            continue
        measurements.append(r)
        log(f"{label}: {r['throughput']:.1f} {unit}, median {r['latency_ms_median']:.2f} ms, "
            f"p90 {r['latency_ms_p90']:.2f} ms, peak {r['peak_memory_mb']:.0f} MB ({r['iters']} steps)"
            + (f"  note: {r['note']}" if r.get("note") else ""))

    _add_flops(model, size, args.mode, measurements, system_info(dev))
    print(f"{'batch':>6} {'dtype':>6} {unit:>12} {'median ms':>10} {'p90 ms':>9} {'peak MB':>9} {'TFLOP/s':>8} {'MFU':>6}")
    for m in measurements:
        if "throughput" in m:
            mfu = f"{100 * m['mfu']:.1f}%" if "mfu" in m else "-"
            tflops = f"{m['tflops']:.2f}" if "tflops" in m else "-"
            print(f"{m['batch_size']:>6} {m['dtype']:>6} {m['throughput']:>12.1f} {m['latency_ms_median']:>10.2f} "
                  f"{m['latency_ms_p90']:>9.2f} {m['peak_memory_mb']:>9.0f} {tflops:>8} {mfu:>6}")
        else:
            print(f"{m['batch_size']:>6} {m['dtype']:>6}  {'skipped' if 'skipped' in m else 'failed'}: "
                  f"{m.get('skipped') or m.get('error')}")

    if args.json:
        record = {
            "tool": "hiera benchmark",
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "system": system_info(dev),
            "model": {"name": name, "weights": str(args.weights) if args.weights else None,
                      "class": type(model).__name__, "params_m": round(params_m, 3), "input_size": list(size)},
            "settings": {"device": str(dev), "mode": args.mode, "compile": args.compile, "warmup": args.warmup,
                         "iters": args.iters,
                         "min_time": (args.min_time or DEFAULT_MIN_TIME) if args.iters is None else None,
                         "unit": unit.replace("/s", " per second")},
            "measurements": measurements,
        }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2) + "\n")
        log(f"wrote {path}")
    return 1 if failed else 0
