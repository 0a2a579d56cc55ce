"""What a comparison measures: variants, cases and their plan, how to measure, FLOPs and the peak.

``hiera benchmark --compare`` compares this package ("ours") with the official ``hiera-transformer``
package, timm and Hugging Face transformers. A :class:`Variant` is one row of a table (an
implementation at a precision, eager or compiled); a :class:`Case` is one measurement (a variant on
a model, input, batch and mode); :func:`plan` makes the cases of a run, grouped for interleaving;
:class:`Settings` say how to measure them (:mod:`hiera.bench.runner` does). :func:`model_flops` and
:func:`measure_peak` give each result its model FLOP/s and utilisation (:func:`add_flops`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ..mae import MaskedAutoencoderHiera
from ..model import Hiera
from ..weights import MAE_PREFIX, zoo_name_for
from ..zoo import MODELS
from .worker import DTYPES, IMPLS, VIT_MODELS  # the worker's own: it builds what they name

NAMES = {"ours": "ours", "official": "official", "timm": "timm", "hf": "HF transformers",
         "vit_b16": "timm ViT-B/16", "vit_s16": "timm ViT-S/16"}
# Plain ViTs (timm's, at the case's image size): what Hiera claims to beat, measured beside it. They
# are references, not Hiera implementations: no ratio to the official package, never a "peer", and
# only in a run that names them (--impl / --variants).
REFERENCES = ("vit_b16", "vit_s16")
TASKS = ("classify", "mae")
SECTIONS = ("inference", "train", "scaling")
OPTIMIZERS = ("adamw", "adamw-fused", "sgd")  # the training step's; the same for every implementation

# The rows of the README table; run_compare.sh passes them.
README_VARIANTS = ("official:fp32", "timm:fp32", "official:bf16", "hf:bf16", "official:bf16:compile",
                   "ours:fp32", "ours:bf16", "ours:fp32:compile", "ours:bf16:compile")
README_TRAIN_VARIANTS = ("official:fp32", "official:bf16", "ours:fp32", "ours:bf16",
                         "ours:fp32:compile", "ours:bf16:compile")


class CompareError(ValueError):
    """A bad option or plan; the message says what to change."""


# ----------------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a table: an implementation at a precision, eager or compiled."""

    impl: str
    dtype: str = "fp32"
    compile: Optional[str] = None  # torch.compile backend, None for eager
    graphs: bool = False  # compiled with mode="reduce-overhead": steps replay as CUDA graphs

    @property
    def label(self) -> str:
        return f"{NAMES[self.impl]} {self.dtype}{compiled_suffix(self.compile, self.graphs)}"


def compiled_suffix(compile: Optional[str], graphs: bool) -> str:
    """How a row was compiled, as its label ends."""
    return " + compile + CUDA graphs" if graphs else " + compile" if compile else ""


def parse_variant(text: str, backend: str = "inductor") -> Variant:
    """``IMPL:DTYPE[:compile[=BACKEND]|:graphs]``, e.g. ``official:bf16:compile``; ``graphs`` is
    ``torch.compile(mode="reduce-overhead")``, which replays each step as a CUDA graph."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or parts[0] not in IMPLS:
        raise CompareError(f"bad variant {text!r}: write IMPL:DTYPE[:compile|:graphs], IMPL one of "
                           f"{', '.join(IMPLS)} (e.g. official:bf16:compile)")
    dtype = parts[1] if len(parts) > 1 else "fp32"
    if dtype not in DTYPES:
        raise CompareError(f"bad variant {text!r}: dtype must be one of {', '.join(DTYPES)}")
    if len(parts) == 3 and parts[2] == "graphs":
        return Variant(parts[0], dtype, "inductor", graphs=True)
    compiled = None
    if len(parts) == 3:
        word, _, name = parts[2].partition("=")
        if word != "compile":
            raise CompareError(f"bad variant {text!r}: the third part can only be 'compile' (or "
                               "compile=BACKEND) or 'graphs'")
        compiled = name or backend
    return Variant(parts[0], dtype, compiled)


def parse_variants(texts: Iterable[str], backend: str = "inductor") -> List[Variant]:
    out: List[Variant] = []
    for t in texts:
        v = parse_variant(t, backend)
        if v not in out:
            out.append(v)
    return out


def cross_variants(impls: Sequence[str], dtypes: Sequence[str], compile: Optional[str]) -> List[Variant]:
    """Every implementation at every precision, eager, plus compiled copies when ``compile``."""
    out = [Variant(i, d) for i in impls for d in dtypes]
    if compile:
        out += [Variant(i, d, compile) for i in impls for d in dtypes]
    return out


@dataclasses.dataclass
class Case:
    """One measurement: a variant on a model, input, batch and mode. ``group`` says which cases are
    interleaved with each other; ``section`` which table it belongs to."""

    section: str
    group: str
    variant: Variant
    task: str  # classify | mae
    mode: str  # inference | train
    model: str  # zoo name (``mae_...`` for task mae)
    arch: dict  # the constructor's full keyword arguments
    overrides: dict  # what differs from the zoo entry (empty: the zoo constructor is called)
    input_size: Tuple[int, ...]
    batch: int
    skip: Optional[str] = None  # why it cannot run, found while planning

    @property
    def impl(self) -> str:
        return self.variant.impl

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def unit(self) -> str:
        return "clips/s" if len(self.input_size) == 3 else "img/s"

    def spec(self, settings: Settings) -> dict:
        """The worker's build request."""
        return {"task": self.task, "mode": self.mode, "model": self.model, "arch": self.arch,
                "overrides": self.overrides, "input_size": list(self.input_size), "batch": self.batch,
                "dtype": self.variant.dtype, "compile": self.variant.compile,
                "compile_mode": "reduce-overhead" if self.variant.graphs else None, "device": settings.device,
                "threads": settings.threads, "warmup": settings.warmup, "optimizer": settings.optimizer,
                "mask_ratio": settings.mask_ratio, "seed": settings.seed}

    def describe(self) -> dict:
        return {"section": self.section, "group": self.group, "label": self.label, "impl": self.impl,
                "dtype": self.variant.dtype, "compile": self.variant.compile, "graphs": self.variant.graphs,
                "task": self.task, "mode": self.mode,
                "model": self.model, "overrides": self.overrides, "input_size": list(self.input_size),
                "batch": self.batch, "unit": self.unit}


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def resolve_model(name: str, task: str, overrides: Optional[dict] = None) -> Tuple[str, dict, Tuple[int, ...]]:
    """The zoo name for ``task`` (``mae_`` prefixed for MAE), the constructor's full keyword
    arguments with ``overrides`` applied, and the input size."""
    full = zoo_name_for(name, mae=task == "mae")
    if full not in MODELS:
        known = ", ".join(n for n in sorted(MODELS) if n.startswith(MAE_PREFIX) == (task == "mae"))
        raise CompareError(f"no {'MAE ' if task == 'mae' else ''}zoo model {full!r}; choose one of: {known}")
    if MODELS[full].cls not in (Hiera, MaskedAutoencoderHiera):  # (the workers build Hiera / its MAE)
        raise CompareError(f"{full} is a {MODELS[full].cls.__name__} (SAM 2's trunk): the comparison times the plain "
                           "Hiera, which the official package, timm and transformers implement; choose a hiera_* model")
    arch = _jsonable({**MODELS[full].kwargs, **(overrides or {})})
    size = tuple(int(s) for s in arch.get("input_size", (224, 224)))
    return full, arch, size


def _unsupported(variant: Variant, task: str, size: Sequence[int]) -> Optional[str]:
    if variant.impl in REFERENCES and task == "mae":
        return f"{NAMES[variant.impl]} is a classifier reference (no MAE)"
    if variant.impl in REFERENCES and len(size) != 2:
        return f"{NAMES[variant.impl]} takes images only"
    if variant.impl == "timm" and task == "mae":
        return "timm has no Hiera MAE"
    if variant.impl == "hf" and len(size) == 3:
        return "transformers' Hiera takes images only"
    return None


def plan(
    sections: Sequence[str] = ("inference", "train"),
    model: str = "hiera_small_224",
    variants: Sequence[Variant] = (),
    batches: Sequence[int] = (1, 8, 32),
    train_variants: Optional[Sequence[Variant]] = None,
    train_batch: int = 8,
    tasks: Sequence[str] = TASKS,
    overrides: Optional[dict] = None,
    scaling_variants: Optional[Sequence[Variant]] = None,
    scaling_sizes: Sequence[int] = (224, 384, 512),
    scaling_batch: int = 8,
    video_model: str = "hiera_base_16x224",
    scaling_frames: Sequence[int] = (8, 16),
    video_batch: int = 2,
    scaling_batches: Sequence[int] = (1, 4, 8, 16, 32, 64),
) -> List[Case]:
    """The cases of a comparison, grouped for interleaving.

    ``inference``: one group per batch size, every variant in it. ``train``: one group per task
    (``classify``, ``mae``) at ``train_batch``. ``scaling``: the cost of ``scaling_variants``
    (default ours, at the variants' precisions) against image size, clip length (``video_model``
    built for ``(frames, 224, 224)``) and batch, one group per table. ``overrides`` go to every
    constructor (e.g. a tiny ``embed_dim`` for a smoke test).
    """
    for s in sections:
        if s not in SECTIONS:
            raise CompareError(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    for t in tasks:
        if t not in TASKS:
            raise CompareError(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    numbers = {"batch sizes": batches, "train batch": [train_batch], "scaling sizes": scaling_sizes,
               "scaling batch": [scaling_batch], "video batch": [video_batch], "frames": scaling_frames,
               "scaling batches": scaling_batches}
    for what, values in numbers.items():
        if any(int(v) < 1 for v in values):
            raise CompareError(f"{what} must be >= 1, got {list(values)}")
    overrides = dict(overrides or {})
    cases: List[Case] = []

    def add(section, group, variant, task, mode, name, extra, batch):
        # The MAE decoder's arguments go to MAE models only, so one set of overrides serves both tasks.
        kw = {k: v for k, v in {**overrides, **extra}.items() if task == "mae" or not k.startswith("decoder_")}
        full, arch, size = resolve_model(name, task, kw)
        cases.append(Case(section, group, variant, task, mode, full, arch, _jsonable(kw), size, int(batch),
                          _unsupported(variant, task, size)))

    if "inference" in sections:
        if not variants:
            raise CompareError("no variants to compare")
        for b in batches:
            for v in variants:
                add("inference", f"inference batch {b}", v, "classify", "inference", model, {}, b)
    if "train" in sections:
        tv = list(train_variants) if train_variants is not None else list(variants)
        if not tv:
            raise CompareError("no variants to train")
        for task in tasks:
            for v in tv:
                add("train", f"train {task}", v, task, "train", model, {}, train_batch)
    if "scaling" in sections:
        sv = list(scaling_variants) if scaling_variants is not None else \
            [v for v in variants if v.impl == "ours"] or [Variant("ours", "fp32")]
        base_size = resolve_model(model, "classify", overrides)[2]
        if len(base_size) != 2:
            raise CompareError(f"scaling needs an image model, {model} takes clips (its video rows use "
                               "--video-model)")
        for s in scaling_sizes:
            for v in sv:
                add("scaling", "scaling size", v, "classify", "inference", model,
                    {"input_size": (int(s), int(s))}, scaling_batch)
        video_size = resolve_model(video_model, "classify")[2]
        if len(video_size) != 3:
            raise CompareError(f"--video-model must take clips; {video_model} takes images")
        for f in scaling_frames:
            for v in sv:
                add("scaling", "scaling video", v, "classify", "inference", video_model,
                    {"input_size": (int(f), *video_size[1:])}, video_batch)
        for b in scaling_batches:
            for v in sv:
                add("scaling", "scaling batch", v, "classify", "inference", model, {}, b)
    return cases


# ----------------------------------------------------------------------------------------- settings
@dataclasses.dataclass
class Settings:
    """How to measure: rounds of interleaved slices, each slice ``iters`` steps or ``min_time``
    seconds (at least one step), after ``warmup`` untimed steps; ``timeout`` seconds per answer."""

    rounds: int = 5
    iters: Optional[int] = None
    min_time: float = 2.0
    warmup: int = 2
    threads: Optional[int] = None
    device: str = "cpu"
    optimizer: str = "adamw"
    mask_ratio: float = 0.6
    seed: int = 0
    timeout: float = 1800.0
    peak_tflops: Optional[float] = None  # the device's peak for MFU (default: measured in the run)
    measure_peak: bool = True  # measure the device's matrix-product rate after the cases, for MFU

    def check(self) -> None:
        if self.rounds < 1:
            raise CompareError(f"rounds must be >= 1, got {self.rounds}")
        if self.iters is not None and self.iters < 1:
            raise CompareError(f"iters must be >= 1, got {self.iters}")
        if not self.min_time >= 0:
            raise CompareError(f"min_time must be >= 0, got {self.min_time}")
        if self.warmup < 0:
            raise CompareError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise CompareError(f"threads must be >= 1, got {self.threads}")
        if self.optimizer not in OPTIMIZERS:
            raise CompareError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 < self.mask_ratio < 1:
            raise CompareError(f"mask ratio must be in (0, 1), got {self.mask_ratio}")
        if not self.timeout > 0:
            raise CompareError(f"timeout must be > 0, got {self.timeout}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise CompareError(f"peak TFLOP/s must be > 0, got {self.peak_tflops}")


# ----------------------------------------------------------------------------------------- flops
# Dense bf16/fp16 tensor-core and plain fp32 peaks from the vendor's data sheets, TFLOP/s, by the
# start of torch.cuda.get_device_name(): the fallback when a run measured no ceiling of its own.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},  # SXM
    "NVIDIA H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "NVIDIA H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "NVIDIA H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "NVIDIA A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


def peak_tflops(system: dict, dtype: str, given: Optional[float] = None) -> Optional[float]:
    """The peak that model FLOP utilisation is measured against: ``given``, else the rate measured
    in this run (:func:`measure_peak`, in ``system["measured_peak_tflops"]``), else the GPU's
    data-sheet figure from :data:`PEAK_TFLOPS`, else ``None`` (no MFU reported)."""
    return _peak(system, dtype, given)[0]


def _peak(system: dict, dtype: str, given: Optional[float] = None) -> Tuple[Optional[float], Optional[str]]:
    """(peak TFLOP/s, where it comes from: "given", "measured" or "data sheet")."""
    if given:
        return given, "given"
    measured = (system.get("measured_peak_tflops") or {}).get(dtype)
    if measured:
        return measured, "measured"
    name = (system.get("gpu") or {}).get("name", "")
    for prefix, peaks in PEAK_TFLOPS.items():
        if name.startswith(prefix):
            return peaks.get(dtype), "data sheet"
    return None, None


def measure_peak(device: str, dtypes: Iterable[str], threads: Optional[int] = None) -> Dict[str, float]:
    """The dense matrix-product rate of ``device`` now, TFLOP/s per dtype: square products of random
    data (8192 on a GPU, 2048 on a CPU, with ``threads`` torch threads), the best of a few. It is
    the ceiling that a model's FLOP utilisation is read against; float32 on a GPU is full float32
    (TF32 off), as the benchmark's float32 rows run."""
    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 2048
    types = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    saved_threads, saved_tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    out: Dict[str, float] = {}
    try:
        for dtype in dict.fromkeys(dtypes):
            a = torch.randn(n, n, device=dev).to(types[dtype])
            b = torch.randn(n, n, device=dev).to(types[dtype])
            times = []
            for i in range(5):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                a @ b
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if i:  # the first is a warm-up
                    times.append(time.perf_counter() - t0)
            out[dtype] = 2 * n**3 / min(times) / 1e12
            del a, b
    finally:
        torch.set_num_threads(saved_threads)
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return out


_FLOPS: Dict[tuple, Optional[float]] = {}


def model_flops(task: str, mode: str, arch: dict, input_size: Sequence[int], mask_ratio: float = 0.6) -> Optional[float]:
    """Floating-point operations per item of one step, counted by ``torch.utils.flop_counter`` on
    this package's model (the same architecture as every implementation's): matrix products,
    convolutions and attention, two per multiply-add; a training step adds the backward's. The
    model runs on the meta device (no memory, no arithmetic), or, where an operator has no meta
    kernel (the MAE's index of kept units), on CPU at batch 1. ``None`` if counting fails."""
    key = (task, mode, json.dumps(arch, sort_keys=True, default=str), tuple(input_size), mask_ratio)
    if key in _FLOPS:
        return _FLOPS[key]

    def count(device: str) -> int:
        torch.manual_seed(0)
        with torch.device(device):
            model = (MaskedAutoencoderHiera if task == "mae" else Hiera)(**arch)
        model.train(mode == "train")
        x = torch.randn(1, int(arch.get("in_chans", 3)), *input_size, device=device)
        # The reference attention: the counter has no formula for the CPU's fused kernel, which
        # float32 inference would otherwise take.
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            with torch.set_grad_enabled(mode == "train"):
                out = model(x, mask_ratio=mask_ratio)[0] if task == "mae" else model(x)
                if mode == "train":
                    loss = out if task == "mae" else F.cross_entropy(out.float(), out.new_zeros(1, dtype=torch.long))
                    loss.backward()
        return counter.get_total_flops()

    try:
        try:
            flops = count("meta")  # no memory and no compute: any model size counts instantly
        except NotImplementedError:  # an operator without a meta kernel (the MAE's nonzero): batch 1 on CPU
            flops = count("cpu")
    except Exception:  # noqa: BLE001  (a report without MFU beats no report)
        flops = None
    _FLOPS[key] = float(flops) if flops else None
    return _FLOPS[key]


def reference_flops(impl: str, mode: str, input_size: Sequence[int], num_classes: int = 1000) -> Optional[float]:
    """FLOPs per image of one step of a reference ViT (:data:`REFERENCES`), counted as
    :func:`model_flops` counts Hiera: timm's model on the meta device, the reference attention."""
    key = (impl, mode, tuple(input_size), num_classes)
    if key in _FLOPS:
        return _FLOPS[key]
    try:
        import timm  # optional: only runs that name a ViT reference need it

        with torch.device("meta"):
            model = timm.create_model(VIT_MODELS[impl], img_size=tuple(input_size), num_classes=num_classes)
        model.train(mode == "train")
        x = torch.randn(1, 3, *input_size, device="meta")
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            with torch.set_grad_enabled(mode == "train"):
                out = model(x)
                if mode == "train":
                    F.cross_entropy(out.float(), out.new_zeros(1, dtype=torch.long)).backward()
        flops = float(counter.get_total_flops())
    except Exception:  # noqa: BLE001  (a report without MFU beats no report)
        flops = None
    _FLOPS[key] = flops
    return flops


def add_flops(results: List[dict], system: dict, settings: Settings) -> List[dict]:
    """Add to each measured result ``gflop_per_item``, ``tflops`` (model FLOP/s achieved) and, where
    the device's peak is known, ``mfu`` (model FLOP utilisation: achieved / peak)."""
    for r in results:
        if not r.get("throughput"):
            continue
        _, arch, _ = resolve_model(r["model"], r["task"], r.get("overrides"))
        if r["impl"] in REFERENCES:
            flops = reference_flops(r["impl"], r["mode"], r["input_size"], int(arch.get("num_classes", 1000)))
        else:
            flops = model_flops(r["task"], r["mode"], arch, r["input_size"], settings.mask_ratio)
        if flops is None:
            continue
        r["gflop_per_item"] = flops / 1e9
        r["tflops"] = flops * r["throughput"] / 1e12
        peak, source = _peak(system, r["dtype"], settings.peak_tflops)
        if peak:
            r["mfu"] = r["tflops"] / peak
            r["peak_tflops"], r["peak_source"] = peak, source
    return results
