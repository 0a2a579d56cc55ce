"""``hiera benchmark``: time one model (:mod:`hiera.bench.timing`), or compare implementations
side by side with ``--compare`` (:mod:`hiera.bench.plan`, :mod:`~hiera.bench.runner`, :mod:`~hiera.bench.report`)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import torch.nn as nn

from ..bench.plan import (
    IMPLS,
    NAMES,
    OPTIMIZERS,
    REFERENCES,
    TASKS,
    CompareError,
    Settings,
    Variant,
    cross_variants,
    model_flops,
    parse_variants,
    peak_tflops,
    plan,
)
from ..bench.report import markdown, plot
from ..bench.runner import launchers, run_plan
from ..bench.timing import (
    DEFAULT_MIN_TIME,
    DEVICES,
    DTYPES,
    MODES,
    UnsupportedDtype,
    benchmark,
    model_kind,
    system_info,
)
from ..devices import resolve_device
from ..weights import CheckpointError, zoo_name_for
from ..zoo import MODELS, create_model, load_model
from .common import exit_on_interrupt, fail, one_line, set_threads


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
    add_arguments(p)
    p.set_defaults(func=_cmd_benchmark)
    return p


def _add_flops(model: nn.Module, size: Sequence[int], mode: str, measurements: List[dict], system: dict) -> None:
    """Model FLOPs per item, FLOP/s and (on a GPU with a known peak) MFU for each measurement of a
    Hiera or MAE model (see :func:`hiera.bench.plan.model_flops`); other models get none."""
    kind, config = model_kind(model), getattr(model, "config", None)
    if kind == "other" or not isinstance(config, dict):
        return
    arch = {**config, "input_size": list(size)}
    flops = model_flops("mae" if kind == "mae" else "classify", mode, arch, size)
    if flops is None:
        return
    for m in measurements:
        if "throughput" in m:
            m["gflop_per_item"] = flops / 1e9
            m["tflops"] = flops * m["throughput"] / 1e12
            peak = peak_tflops(system, m["dtype"])
            if peak:
                m["mfu"] = m["tflops"] / peak


def _device(name: Optional[str]) -> torch.device:
    """``--device`` of one model's run: the one rule of :func:`hiera.devices.resolve_device`, on the
    devices that benchmarking times (cpu, cuda); ``auto`` never picks mps."""
    if name in (None, "auto"):
        dev = resolve_device("auto")
        return dev if dev.type in DEVICES else torch.device("cpu")  # Apple mps is not benchmarked
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"bad --device {name!r}: {e}") from None
    if dev.type not in DEVICES:
        raise ValueError(f"--device must be cpu or cuda, got {name!r}")
    return resolve_device(dev)  # a GPU that is not there fails here, naming the devices that are


def _load(args) -> nn.Module:
    if args.weights is None:
        name = args.model.split(".", 1)[0]
        if args.mae:
            name = zoo_name_for(name, mae=True)
        if name not in MODELS:
            raise LookupError(
                f"unknown zoo model {args.model!r}: without --weights the benchmark builds zoo architectures "
                "with random weights (see `hiera zoo`); pass --weights for anything else"
            )
        return create_model(name)
    return load_model(args.model, args.weights, mae=args.mae)


@exit_on_interrupt("benchmark")
def _cmd_benchmark(args: argparse.Namespace) -> int:
    if args.compare:
        return cmd_compare(args)
    option = check_not_compare(args)
    if option:
        return fail("benchmark", f"{option} needs --compare", 2)
    if args.mode is not None and len(args.mode) > 1:
        return fail("benchmark", "one --mode at a time (several only with --compare)", 2)
    # The defaults of one model's run (--compare has its own).
    args.mode = args.mode[0] if args.mode else "inference"
    args.batch_size = args.batch_size or [1]
    args.dtype = args.dtype or ["fp32"]
    args.warmup = 3 if args.warmup is None else args.warmup
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    if args.model is None and args.weights is None:
        return fail("benchmark", "say which model: --model NAME (zoo name) and/or --weights PATH", 2)
    if any(b < 1 for b in args.batch_size):
        return fail("benchmark", f"--batch-size values must be >= 1, got {args.batch_size}", 2)
    if args.warmup < 0:
        return fail("benchmark", f"--warmup must be >= 0, got {args.warmup}", 2)
    if args.iters is not None and args.iters < 1:
        return fail("benchmark", f"--iters must be >= 1, got {args.iters}", 2)
    if args.min_time is not None and not args.min_time > 0:
        return fail("benchmark", f"--min-time must be > 0, got {args.min_time}", 2)
    if args.threads is not None and args.threads < 1:
        return fail("benchmark", f"--threads must be >= 1, got {args.threads}", 2)
    try:
        dev = _device(args.device)
    except ValueError as e:
        return fail("benchmark", one_line(e), 2)
    set_threads(args)
    try:
        model = _load(args)
    except LookupError as e:
        return fail("benchmark", str(e), 2)
    except (CheckpointError, ValueError, TypeError, OSError) as e:
        return fail("benchmark", f"could not load the model: {e}", 1)
    if args.input_size is not None and len(args.input_size) != len(model.input_size):
        return fail("benchmark", f"--input-size needs {len(model.input_size)} numbers for this model "
                      f"(its size is {' '.join(map(str, model.input_size))})", 2)
    size = tuple(args.input_size) if args.input_size else tuple(model.input_size)
    if args.input_size:
        try:
            model.geometry(size)
        except ValueError as e:
            return fail("benchmark", str(e), 2)

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


# ----------------------------------------------------------------------------------------- --compare
COMPARE_ONLY = ("impl", "variants", "train_variants", "train_batch_size", "task", "rounds", "quick", "plot",
                "scaling", "official_python", "timeout", "optimizer", "kwargs", "scaling_sizes", "scaling_frames",
                "scaling_batches", "scaling_batch", "video_model", "video_batch", "peak_tflops")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--compare`` options of ``hiera benchmark``."""
    g = p.add_argument_group(
        "comparing implementations (--compare)",
        "Time ours, the official package (from its own environment), timm and HF transformers side by side, "
        "interleaved; print markdown tables. --batch-size, --dtype, --mode, --compile, --warmup, --iters / "
        "--min-time (per round), --threads, --device, --input-size and --json apply too. See benchmarks/README.md.")
    g.add_argument("--compare", action="store_true", help="compare implementations instead of timing one model")
    g.add_argument("--impl", nargs="+", choices=IMPLS, default=None,
                   help="implementations (default: every one available); rows are IMPL x --dtype, plus compiled "
                        "copies with --compile")
    g.add_argument("--variants", nargs="+", metavar="IMPL:DTYPE[:compile]", default=None,
                   help="the inference rows exactly, e.g. official:fp32 ours:bf16:compile (overrides --impl/--dtype)")
    g.add_argument("--train-variants", nargs="+", metavar="IMPL:DTYPE[:compile]", default=None,
                   help="the training rows (default: the inference rows)")
    g.add_argument("--train-batch-size", type=int, default=None, metavar="N", help="training batch (default 8)")
    g.add_argument("--task", nargs="+", choices=TASKS, default=None,
                   help="training tasks (default: classify mae)")
    g.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 5; --quick 3)")
    g.add_argument("--quick", action="store_true",
                   help="a short run: 3 rounds of >= 0.5 s, 1 warm-up step, inference batches 1 8")
    g.add_argument("--plot", metavar="FILE.png", help="write a chart of the results")
    g.add_argument("--scaling", action="store_true",
                   help="the cost of ours against input size, clip length and batch (alone, or with the --mode "
                        "sections when --mode is given)")
    g.add_argument("--scaling-sizes", type=int, nargs="+", default=None, metavar="S",
                   help="image sizes (default 224 384 512)")
    g.add_argument("--scaling-batch", type=int, default=None, metavar="N", help="batch of the size rows (default 8)")
    g.add_argument("--video-model", default=None, help="video model of the clip rows (default hiera_base_16x224)")
    g.add_argument("--scaling-frames", type=int, nargs="+", default=None, metavar="T",
                   help="clip lengths (default 8 16)")
    g.add_argument("--video-batch", type=int, default=None, metavar="N", help="batch of the clip rows (default 2)")
    g.add_argument("--scaling-batches", type=int, nargs="+", default=None, metavar="N",
                   help="batches of the batch rows (default 1 4 8 16 32 64)")
    g.add_argument("--official-python", default=None, metavar="PATH",
                   help="python of the official package's environment (default $HIERA_OFFICIAL_PYTHON, else "
                        ".cache/reference/venv/bin/python)")
    g.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                   help="the device's peak TFLOP/s at the compared precision, for model FLOP utilisation "
                        "(default: the matrix-product rate measured at the end of the run)")
    g.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for a worker's answer (a build includes compilation; default 1800)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="training optimizer (default adamw; adamw-fused is the fused kernel that hiera pretrain "
                        "and hiera finetune use)")
    g.add_argument("--kwargs", default=None, metavar="JSON",
                   help='constructor keyword arguments for every model, e.g. \'{"embed_dim": 48}\' (a smoke test)')


def check_not_compare(args: argparse.Namespace) -> Optional[str]:
    """The first ``--compare`` option given without ``--compare``, if any."""
    for name in COMPARE_ONLY:
        value = getattr(args, name, None)
        if value not in (None, False):
            return "--" + name.replace("_", "-")
    return None


def _given(value, default):
    return default if value is None else value


def cmd_compare(args: argparse.Namespace) -> int:
    """``hiera benchmark --compare``."""
    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.weights is not None or args.mae:
        return fail("benchmark", "--compare builds zoo architectures with random weights: drop --weights/--mae "
                     "(use --task mae for MAE training)", 2)
    try:
        overrides = json.loads(args.kwargs) if args.kwargs else {}
    except ValueError as e:
        return fail("benchmark", f"--kwargs is not JSON: {e}", 2)
    if not isinstance(overrides, dict):
        return fail("benchmark", "--kwargs must be a JSON object", 2)
    if args.input_size:
        overrides["input_size"] = list(args.input_size)
    if args.scaling and args.mode is None:
        sections = ["scaling"]
    else:
        sections = list(dict.fromkeys(args.mode or ["inference", "train"])) + (["scaling"] if args.scaling else [])
    backend = args.compile or "inductor"
    try:
        launch, missing = launchers(args.official_python)
        if args.variants:
            variants = parse_variants(args.variants, backend)
        else:
            impls = args.impl or [i for i in IMPLS if i in launch and i not in REFERENCES]
            variants = cross_variants(impls, args.dtype or ["fp32", "bf16"], args.compile)
        train_variants = parse_variants(args.train_variants, backend) if args.train_variants else None
        if args.impl and args.variants:
            raise CompareError("give --impl or --variants, not both")
        settings = Settings(
            rounds=_given(args.rounds, 3 if args.quick else 5), iters=args.iters,
            min_time=args.min_time if args.min_time is not None else (0.5 if args.quick else 2.0),
            warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
            threads=args.threads, device=args.device or "cpu", optimizer=args.optimizer or "adamw",
            timeout=_given(args.timeout, 1800.0), peak_tflops=args.peak_tflops)
        settings.check()
        if settings.device != "cpu" and not settings.device.startswith("cuda"):
            raise CompareError(f"--device must be cpu or cuda, got {settings.device!r}")
        try:  # the workers take the name as given; a GPU that is not there fails now, not in each worker
            resolve_device(settings.device)
        except ValueError as e:
            raise CompareError(one_line(e)) from None
        scaling_variants = None
        if "scaling" in sections:  # eager: ours, or the --impl ones
            scaling_variants = [v for v in variants if not v.compile and (args.impl or v.impl == "ours")]
            scaling_variants = scaling_variants or [Variant("ours", d) for d in (args.dtype or ["fp32"])]
        cases = plan(
            sections=sections, model=args.model or "hiera_small_224", variants=variants,
            batches=args.batch_size or ([1, 8] if args.quick else [1, 8, 32]), train_variants=train_variants,
            train_batch=_given(args.train_batch_size, 8), tasks=args.task or TASKS, overrides=overrides,
            scaling_variants=scaling_variants, scaling_sizes=args.scaling_sizes or (224, 384, 512),
            scaling_batch=_given(args.scaling_batch, 8), video_model=args.video_model or "hiera_base_16x224",
            scaling_frames=args.scaling_frames or (8, 16), video_batch=_given(args.video_batch, 2),
            scaling_batches=args.scaling_batches or (1, 4, 8, 16, 32, 64))
    except CompareError as e:
        return fail("benchmark", str(e), 2)
    if args.plot:
        try:  # optional: only --plot needs it; fail now, not after an hour of measuring
            import matplotlib  # noqa: F401
        except ImportError:
            return fail("benchmark", "--plot needs matplotlib: pip install matplotlib", 2)
    runnable = [c for c in cases if c.skip is None and c.impl in launch]
    if not runnable:
        reasons = "; ".join(f"{NAMES[k]}: {v}" for k, v in missing.items())
        return fail("benchmark", f"nothing to run: every case is skipped ({reasons or 'unsupported combinations'})", 1)

    record = run_plan(cases, settings, launch, missing, log)
    record["options"] = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    print(markdown(record))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        log(f"wrote {path}")
    if args.plot:
        log(f"wrote {plot(record, args.plot)}")
    failed = [r for r in record["results"] if r.get("error")]
    return 1 if failed else 0
