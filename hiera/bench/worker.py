"""One implementation of Hiera, timed on request: the worker process of ``hiera benchmark --compare``.

Run by :mod:`hiera.bench.runner` as ``PYTHON -P worker.py --impl IMPL`` (``-I`` for the official
package's own environment). It imports only the standard library and torch at start, then the one
implementation it was started for (through :func:`importlib.import_module`):

    ours      this package (``import hiera``)
    official  the official ``hiera-transformer`` package (also ``import hiera``: its own environment)
    timm      ``timm.models.hiera``
    hf        Hugging Face ``transformers`` (``HieraForImageClassification`` / ``HieraForPreTraining``)
    vit_b16   timm's plain ViT-B/16 (``vit_base_patch16_224`` at the case's image size): a reference,
    vit_s16   and ViT-S/16, that Hiera is measured against (classification only)

This file must never import anything from the package it sits in: in the official environment
``hiera`` is the official package. That is also why it is started with ``-P`` / ``-I``: the script's
own folder (our ``hiera/``) must not go on ``sys.path``, where our modules would shadow top-level
names.

Protocol: one JSON object per line on stdin, one JSON answer per line on stdout, always with
``"ok"``; a failure answers ``{"ok": false, "error": ..., "traceback": ...}`` and the worker keeps
reading. Everything else the process prints (library warnings, compiler logs) goes to stderr:
file descriptor 1 is pointed at stderr at start, and answers go to a private copy of the original.

    {"op": "hello"}               -> implementation, versions, file, RSS after the imports
    {"op": "build", "case": {...}} -> builds the model and a step, runs the warm-up steps
    {"op": "run", "iters": N}      -> times N steps (or "min_time": S, at least "min_iters")
    {"op": "quit"}                 -> exits

A case (see :class:`hiera.bench.plan.Case`) names the task (``classify`` / ``mae``), the mode
(``inference`` / ``train``), the zoo constructor and/or class with its keyword arguments, the input
size, batch, dtype (autocast), torch.compile backend, device, threads and warm-up steps.

It is also the one home of the timing loop (:func:`warm_up`, :func:`time_steps`) and of the memory
reader (:func:`reset_peak`, :func:`read_peak_mb`): ``hiera benchmark`` (:func:`hiera.bench.timing.benchmark`)
and :func:`hiera.benchmarking.benchmark` import them from here, so every tool times and measures alike.
"""

import argparse
import contextlib
import ctypes
import gc
import importlib
import importlib.metadata as md
import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

try:
    import resource
except ImportError:  # not on Windows: no lifetime peak there
    resource = None

IMPLS = ("ours", "official", "timm", "hf", "vit_b16", "vit_s16")
VIT_MODELS = {"vit_b16": "vit_base_patch16_224", "vit_s16": "vit_small_patch16_224"}  # timm's names
DTYPES = ("fp32", "bf16", "fp16")


# ----------------------------------------------------------------------------------------- memory
def rss_mb(field="VmRSS"):
    """This process's resident set (``VmRSS``) or its peak (``VmHWM``) in MB; None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_rss_peak():
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0), so a peak covers only what follows."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def lifetime_peak_mb():
    """The process's peak resident set since it started, in MB; None where unknown (Windows)."""
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def release_memory():
    """Give freed heap back to the system, so the next case's peak does not start high."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak(cuda=None):
    """Start a new memory peak; return its kind: ``cuda_max_allocated`` (the CUDA allocator's peak on
    the ``cuda`` device), ``cpu_rss_peak`` (the process's ``VmHWM``, reset now) or, where it cannot
    be reset, ``cpu_rss_peak_process_lifetime``."""
    if cuda is not None:
        torch.cuda.reset_peak_memory_stats(cuda)
        return "cuda_max_allocated"
    return "cpu_rss_peak" if reset_rss_peak() else "cpu_rss_peak_process_lifetime"


def read_peak_mb(kind, cuda=None):
    """The peak in MB since :func:`reset_peak` returned ``kind``; None where it cannot be read."""
    if kind == "cuda_max_allocated":
        return torch.cuda.max_memory_allocated(cuda) / 2**20
    peak = rss_mb("VmHWM") if kind == "cpu_rss_peak" else None
    return peak if peak is not None else lifetime_peak_mb()


# ----------------------------------------------------------------------------------------- timing
def synchronizer(cuda=None):
    """A function that waits for the work queued on the ``cuda`` device; for None, one that returns."""
    if cuda is None:
        return lambda: None
    return lambda: torch.cuda.synchronize(cuda)


def warm_up(step, steps, cuda=None):
    """Run ``steps`` untimed steps, each waited for; return (seconds of the first, or None; seconds
    of them all). A compiled step compiles in the first."""
    sync = synchronizer(cuda)
    first, start = None, time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        step()
        sync()
        if i == 0:
            first = time.perf_counter() - t0
    return first, time.perf_counter() - start


def time_steps(step, iters=None, min_time=None, min_iters=1, cuda=None, sync_each=True, memory=True):
    """The timing loop: run ``step()`` ``iters`` times, or until ``min_time`` seconds have passed
    and at least ``min_iters`` steps have run (neither: ``min_iters`` steps).

    ``cuda``: the CUDA device the step runs on (None: the CPU, nothing to wait for). With
    ``sync_each`` every step is waited for and timed by the clock (a latency, launches included);
    without it, GPU steps are queued back to back as in a pipeline, each timed by CUDA events, and
    only the end is waited for. ``memory``: also measure the peak memory over these steps
    (:func:`reset_peak`; it resets the device's or the process's peak).

    Returns ``latencies_ms`` (one per step), ``total_s`` (wall clock, the last step finished) and,
    with ``memory``, ``peak_mb`` and ``memory_kind``."""
    sync = synchronizer(cuda)
    events = cuda is not None and not sync_each
    kind = reset_peak(cuda) if memory else None
    latencies, pairs = [], []
    start = time.perf_counter()
    while True:
        if events:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            pairs.append((begin, end))
        else:
            t0 = time.perf_counter()
            step()
            sync()
            latencies.append((time.perf_counter() - t0) * 1000.0)
        count = len(pairs) if events else len(latencies)
        if iters is not None:
            if count >= int(iters):
                break
        elif count >= int(min_iters) and time.perf_counter() - start >= float(min_time or 0):
            break
    sync()
    total = time.perf_counter() - start
    if events:
        latencies = [b.elapsed_time(e) for b, e in pairs]
    out = {"latencies_ms": latencies, "total_s": total}
    if memory:
        out.update({"peak_mb": read_peak_mb(kind, cuda), "memory_kind": kind})
    return out


def percentile(values, q):
    """Linear-interpolated percentile ``q`` (0-100)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ----------------------------------------------------------------------------------------- impls
def import_hiera():
    """The ``hiera`` package of this process's environment: ours, or in its own environment the
    official one. Imported by name, not by an import statement: this file imports nothing from the
    package it sits in."""
    return importlib.import_module("hiera")


def import_impl(impl):
    """Import the implementation; return facts about it for the record."""
    if impl in ("ours", "official"):
        hiera = import_hiera()
        path = os.path.abspath(hiera.__file__)
        if impl == "official":
            # The file must belong to the hiera-transformer distribution, not to any other `hiera`.
            try:
                dist = md.distribution("hiera-transformer")
            except md.PackageNotFoundError:
                raise RuntimeError(f"hiera-transformer is not installed here ({sys.executable}); "
                                   f"`import hiera` found {path}") from None
            owned = os.path.abspath(str(dist.locate_file("hiera/__init__.py")))
            if owned != path:
                raise RuntimeError(f"`import hiera` found {path}, not the official package ({owned})")
            return {"version": dist.version, "file": path}
        if not hasattr(hiera, "load_model"):  # the official package has no load_model
            raise RuntimeError(f"`import hiera` found {path}, which is not this toolkit")
        hiera.fast.reuse_memory()  # as every `hiera` command does (a process of ours)
        return {"version": getattr(hiera, "__version__", None), "file": path}
    # timm and transformers are optional: only the worker of that implementation imports them.
    if impl == "timm" or impl in VIT_MODELS:
        import timm
        import timm.models.hiera  # noqa: F401

        return {"version": timm.__version__, "file": os.path.abspath(timm.__file__)}
    if impl == "hf":
        import transformers

        return {"version": transformers.__version__, "file": os.path.abspath(transformers.__file__)}
    raise ValueError(f"unknown implementation {impl!r}; choose one of {IMPLS}")


def hf_config(arch, task):
    """A ``transformers.HieraConfig`` for the constructor keyword arguments ``arch`` of the
    official/our ``Hiera`` (``MaskedAutoencoderHiera`` for ``task == "mae"``)."""
    from transformers import HieraConfig  # optional: the hf worker's only

    arch = dict(arch)
    size = tuple(arch.pop("input_size", (224, 224)))
    if len(size) != 2 or arch.pop("sep_pos_embed", False):
        raise ValueError("transformers' Hiera takes images only (no video)")
    stages = tuple(arch.pop("stages", (2, 3, 16, 3)))
    heads = arch.pop("num_heads", 1)
    head_mul = arch.pop("head_mul", 2.0)
    names = {  # ours / official -> transformers
        "embed_dim": "embed_dim", "q_pool": "num_query_pool", "q_stride": "query_stride",
        "mask_unit_size": "masked_unit_size", "mask_unit_attn": "masked_unit_attention",
        "dim_mul": "embed_dim_multiplier", "patch_kernel": "patch_size", "patch_stride": "patch_stride",
        "patch_padding": "patch_padding", "mlp_ratio": "mlp_ratio", "drop_path_rate": "drop_path_rate",
        "in_chans": "num_channels", "num_classes": "num_labels", "decoder_embed_dim": "decoder_hidden_size",
        "decoder_depth": "decoder_depth", "decoder_num_heads": "decoder_num_heads",
    }
    unknown = sorted(set(arch) - set(names))
    if unknown:
        raise ValueError(f"no transformers HieraConfig equivalent for {', '.join(unknown)}")
    kwargs = {names[k]: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in arch.items()}
    kwargs.setdefault("num_labels", 1000)  # the official default; transformers' is 2
    if task == "mae":  # the official MAE decoder's defaults; transformers has none
        kwargs.setdefault("decoder_hidden_size", 512)
        kwargs.setdefault("decoder_depth", 8)
        kwargs.setdefault("decoder_num_heads", 16)
    return HieraConfig(image_size=list(size), depths=list(stages),
                       num_heads=[int(heads * head_mul**i) for i in range(len(stages))], **kwargs)


def timm_kwargs(arch):
    """timm's ``Hiera`` spells ``input_size`` as ``img_size``; the rest match."""
    arch = dict(arch)
    if "input_size" in arch:
        arch["img_size"] = tuple(arch.pop("input_size"))
    return arch


def build_model(impl, case):
    """The model of ``case`` for ``impl``. With no keyword overrides a zoo name is built through
    the implementation's own constructor (the user's path); otherwise its class is built from the
    full keyword arguments ``case["arch"]``."""
    task, name, arch, plain = case["task"], case["model"], case["arch"], not case.get("overrides")
    if impl in ("ours", "official"):
        hiera = import_hiera()
        if plain and hasattr(hiera, name):
            return getattr(hiera, name)()
        cls = hiera.MaskedAutoencoderHiera if task == "mae" else hiera.Hiera
        return cls(**arch)
    if impl == "timm":
        if task == "mae":
            raise ValueError("timm has no Hiera MAE")
        import timm  # optional, as above
        from timm.models.hiera import Hiera

        if plain and name in timm.list_models("hiera*"):
            return timm.create_model(name, pretrained=False)
        return Hiera(**timm_kwargs(arch))
    if impl in VIT_MODELS:
        size = tuple(case["input_size"])
        if task == "mae" or len(size) != 2:
            raise ValueError(f"{impl} is an image classifier reference: no MAE, no video")
        import timm  # optional, as above

        return timm.create_model(VIT_MODELS[impl], pretrained=False, img_size=size,
                                 num_classes=int(arch.get("num_classes", 1000)), in_chans=int(arch.get("in_chans", 3)))
    if impl == "hf":
        from transformers import HieraForImageClassification, HieraForPreTraining  # optional, as above

        config = hf_config(arch, task)
        return HieraForPreTraining(config) if task == "mae" else HieraForImageClassification(config)
    raise ValueError(f"unknown implementation {impl!r}")


def forward_fn(impl, task, fn, mask_ratio):
    """The call that a user makes: logits/probabilities for ``classify``, the loss for ``mae``."""
    if impl == "hf":
        if task == "mae":
            return lambda x: fn(pixel_values=x).loss  # the mask ratio is in the config
        return lambda x: fn(pixel_values=x).logits
    if task == "mae":
        return lambda x: fn(x, mask_ratio=mask_ratio)[0]  # (loss, predictions, labels, mask)
    return fn


# ----------------------------------------------------------------------------------------- worker
class Bench:
    """The state of one worker: its implementation and the case it holds."""

    def __init__(self, impl):
        if impl not in IMPLS:
            raise SystemExit(f"hiera benchmark worker: unknown implementation {impl!r}; choose one of {IMPLS}")
        self.impl = impl
        self.info = None
        self.step = None
        self.model = None
        self.cuda = None  # the CUDA device of the case built, None on the CPU

    def hello(self, msg):
        if self.info is None:
            self.info = import_impl(self.impl)
        # torch.optim and torch.compile import torch._dynamo on first use (~150 MB of RSS), timm (so
        # also the official package) imports it at once. Importing it here in every worker gives all
        # implementations the same baseline: peak RSS then compares models, not import order. (Here,
        # not at the top: the library modules that import this file's timing loop stay light.)
        import torch._dynamo  # noqa: F401

        return {"impl": self.impl, **self.info, "torch": torch.__version__, "python": sys.executable,
                "pid": os.getpid(), "threads": torch.get_num_threads(), "idle_rss_mb": rss_mb()}

    def build(self, msg):
        case = msg["case"]
        self.step = None
        self.model = None
        release_memory()
        if self.info is None:
            self.info = import_impl(self.impl)
        if case.get("threads"):
            torch.set_num_threads(int(case["threads"]))
        dtype = case.get("dtype", "fp32")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        device = torch.device(case.get("device", "cpu"))
        self.cuda = device if device.type == "cuda" else None
        mode, task = case.get("mode", "inference"), case.get("task", "classify")
        torch.manual_seed(int(case.get("seed", 0)))

        t0 = time.perf_counter()
        model = build_model(self.impl, case).to(device)
        model.train(mode == "train")
        build_s = time.perf_counter() - t0
        fn = model
        if case.get("compile"):
            fn = torch.compile(model, backend=case["compile"], mode=case.get("compile_mode"))
        forward = forward_fn(self.impl, task, fn, float(case.get("mask_ratio", 0.6)))
        size = tuple(case["input_size"])
        x = torch.randn(int(case["batch"]), int(case["arch"].get("in_chans", 3)), *size, device=device)
        classes = int(case["arch"].get("num_classes", 1000))
        y = torch.randint(0, classes, (int(case["batch"]),), device=device)
        if dtype == "fp32":
            autocast = contextlib.nullcontext
        else:
            tdtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
            autocast = lambda: torch.autocast(device.type, dtype=tdtype)  # noqa: E731

        if mode == "inference":
            def step():
                with torch.inference_mode(), autocast():
                    forward(x)
        elif mode == "train":
            params = [p for p in model.parameters() if p.requires_grad]
            name = case.get("optimizer", "adamw")
            if name in ("adamw", "adamw-fused"):
                fused = True if name == "adamw-fused" else None  # the fused kernel: hiera train's choice
                optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.05, fused=fused)
            elif name == "sgd":
                optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
            else:
                raise ValueError(f"optimizer must be adamw, adamw-fused or sgd, got {name!r}")
            scaler = torch.amp.GradScaler(device.type) if dtype == "fp16" else None

            def step():
                with autocast():
                    out = forward(x)
                    loss = out if task == "mae" else F.cross_entropy(out.float(), y)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        else:
            raise ValueError(f"mode must be inference or train, got {mode!r}")

        model_rss = rss_mb()
        # Compiled: the first step compiles, the second shows any recompilation (e.g. once the
        # optimizer has state); neither may be timed.
        warmup = max(int(case.get("warmup", 2)), 2 if case.get("compile") else 0)
        first_step_s, warmup_s = warm_up(step, warmup, self.cuda)
        self.step = step
        self.model = model  # kept alive with the step
        return {"params_m": sum(p.numel() for p in model.parameters()) / 1e6, "build_s": build_s,
                "model_rss_mb": model_rss, "first_step_s": first_step_s,
                "warmup_s": warmup_s, "warmup": warmup, "threads": torch.get_num_threads()}

    def run(self, msg):
        """One slice of timed steps, each waited for (a latency), with the peak memory over them."""
        if self.step is None:
            raise RuntimeError("no case built: send build first")
        timed = time_steps(self.step, iters=msg.get("iters"), min_time=msg.get("min_time"),
                           min_iters=int(msg.get("min_iters", 1)), cuda=self.cuda, sync_each=True)
        return {**timed, "rss_mb": rss_mb()}


def main(argv=None):
    parser = argparse.ArgumentParser(description="hiera benchmark --compare worker (JSON lines on stdin/stdout)")
    parser.add_argument("--impl", required=True, choices=IMPLS)
    args = parser.parse_args(argv)

    # Answers go to a private copy of stdout; fd 1 (print, C libraries) now writes to stderr.
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    bench = Bench(args.impl)
    ops = {"hello": bench.hello, "build": bench.build, "run": bench.run}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            msg = json.loads(line)
            op = msg.get("op")
            if op == "quit":
                answers.write(json.dumps({"ok": True}) + "\n")
                break
            if op not in ops:
                raise ValueError(f"unknown op {op!r}; one of {sorted(ops) + ['quit']}")
            reply = {"ok": True, **ops[op](msg)}
        except Exception as e:  # noqa: BLE001 - every failure is an answer, the worker lives on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reply = {"ok": False, "error": f"{type(e).__name__}: {first}"[:2000],
                     "traceback": traceback.format_exc()[-6000:]}
        answers.write(json.dumps(reply) + "\n")
        answers.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
