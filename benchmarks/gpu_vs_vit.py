"""Hiera against the plain ViT it beats, on one GPU, in one process, every case interleaved.

Why one process: a GPU is lent for minutes, and a process per case (``hiera benchmark --compare``)
spends them starting up and compiling the same graphs again. Here every implementation is loaded
side by side: ours (``import hiera`` from this checkout), the official package (a copy of its
folder renamed ``hiera_official``: it uses only relative imports), and timm's ViT-B/16 and
ViT-S/16. The cases of a section are timed in rounds, the order rotated every round, so a slow
spell of the machine hits every case alike.

Sections (``--sections``, default all):

    ceiling    the device's dense bf16 matrix rate (8192^3 products, random data) and copy
               bandwidth, measured now: the MFU figures below are against this rate
    inference  batch --batch (256), eval, inference_mode: bf16 autocast and a model cast to bf16
    compiled   the same through torch.compile (default mode); A/B rows of ours without the Triton
               kernels' custom operators (hiera.gpu.compiled_ops) and without the window kernel's
    train      training steps at --train-batch (128): classification (cross entropy) and MAE
               (mask ratio 0.6), bf16 autocast, fused AdamW, for every implementation alike
    train_compiled  the same steps with the model through torch.compile (default mode)
    latency    batch 1: eager, and torch.compile(mode="reduce-overhead") (CUDA graphs)
    video      Hiera-B 16x224 clips at --video-batch (32), eager, bf16 autocast
    profile    kernel-by-kernel tables (eager and compiled) of Hiera-B and ViT-B: where the time goes;
               also their eager classification training steps
    micro      attention kernels on Hiera-B's window shapes, GELU after a product

    python benchmarks/gpu_vs_vit.py --official /path/to/folder/holding/hiera_official --json out.json
    python benchmarks/gpu_vs_vit.py --device cpu --quick      # the whole script end to end on a CPU

Figures: items per second (median over rounds), the model FLOP utilisation against the ceiling
(FLOPs counted by torch.utils.flop_counter on each implementation's own model: matrix products,
convolutions and attention) and the ratios asked of Hiera: ours / ViT, ours / official.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import hiera  # noqa: E402  (this checkout)
from hiera import gpu  # noqa: E402

PROFILED = ("ours Hiera-B autocast", "ours Hiera-B autocast compiled", "timm vit_b16 autocast",
            "timm vit_b16 autocast compiled")
# Training steps profiled too (eager): where a classification step of each spends its time.
TRAIN_PROFILED = ("ours Hiera-B classify", "timm vit_b16 classify")
VIT = {"vit_b16": "vit_base_patch16_224", "vit_s16": "vit_small_patch16_224"}


# ------------------------------------------------------------------------------------ utilities
class Timer:
    """Wall time of device work: CUDA events on a GPU, the host clock after a sync elsewhere."""

    def __init__(self, device: torch.device):
        self.device = device

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn, iters: int) -> float:
        """Seconds per call of ``fn`` over ``iters`` calls."""
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / iters
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - t0) / iters


def log(msg: str) -> None:
    print(msg, flush=True)


def measure_ceiling(device: torch.device, quick: bool) -> dict:
    """Dense bf16 matrix rate and device copy bandwidth, measured now."""
    timer = Timer(device)
    n = 1024 if device.type == "cpu" or quick else 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    timer.sync()
    t = statistics.median(timer.time(lambda: a @ b, 5) for _ in range(3))
    tflops = 2 * n**3 / t / 1e12
    size = (64 if device.type == "cpu" or quick else 2048) * 2**20
    src = torch.randn(size // 4, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    timer.sync()
    t = statistics.median(timer.time(lambda: dst.copy_(src), 5) for _ in range(3))
    gbps = 2 * size / t / 1e9
    return {"bf16_tflops": tflops, "copy_gbps": gbps, "gemm_n": n}


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


# ------------------------------------------------------------------------------------ models
QUICK = {"embed_dim": 8, "num_heads": 1, "stages": (1, 1, 1, 1), "input_size": (64, 64)}
QUICK_VIDEO = dict(QUICK, input_size=(4, 64, 64), q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8),
                   patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3), sep_pos_embed=True)
QUICK_VIT = {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2}


def build(impl: str, name: str, device, official=None, quick: bool = False):
    """A fresh model: impl in ours / official / timm (name a ViT key of VIT); ``quick``: a tiny
    model of the same kind."""
    torch.manual_seed(0)
    if impl == "timm":
        import timm

        return timm.create_model(VIT[name], **(QUICK_VIT if quick else {})).to(device)
    package = hiera if impl == "ours" else official
    if not quick:
        return getattr(package, name)().to(device)
    cls = package.MaskedAutoencoderHiera if name.startswith("mae_") else package.Hiera
    return cls(**(QUICK_VIDEO if "16x" in name else QUICK)).to(device)


class Case:
    """One row: a label, a step function, items per step and model FLOPs per item."""

    def __init__(self, label, group, step, items, flops_fn=None):
        self.label, self.group, self.step, self.items = label, group, step, items
        self.flops_fn = flops_fn
        self.flops_per_item = None
        self.times = []
        self.error = None
        self.peak_mb = None


def inference_case(label, group, model, x, dtype, cast=False, compile_mode=None):
    model.eval()
    if cast:
        model = model.to(dtype)
        x = x.to(dtype)
    fn = torch.compile(model, mode=compile_mode) if compile_mode else model

    def step():
        with torch.inference_mode(), torch.autocast(x.device.type, dtype=dtype, enabled=not cast):
            return fn(x)

    def flops():
        with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=not cast):
            return model(x[:2])

    return Case(label, group, step, x.shape[0], lambda: count_flops(flops) / 2)


def train_case(label, group, model, x, dtype, mae=False, compile_mode=None):
    model.train()
    fn = torch.compile(model, mode=compile_mode) if compile_mode else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=x.is_cuda)
    y = torch.randint(0, 1000, (x.shape[0],), device=x.device)

    def loss_of(f, xb, yb):
        with torch.autocast(x.device.type, dtype=dtype):
            if mae:
                return f(xb, mask_ratio=0.6)[0]
            return F.cross_entropy(f(xb).float(), yb)

    def step():
        loss_of(fn, x, y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def flops():
        loss_of(model, x[:2], y[:2]).backward()
        model.zero_grad(set_to_none=True)

    return Case(label, group, step, x.shape[0], lambda: count_flops(flops) / 2)


def with_settings(case: Case, suffix: str, **settings) -> Case:
    """The same case run with attributes of hiera.gpu set (``enabled=False``: the stock layers;
    ``window_kernel_max_keys=0``, ``gelu_epilogue=False``, ``compiled_ops=False``): A/B rows
    measured in the same run. (A compiled case compiles once per setting: torch.compile guards on
    these module attributes.)"""
    inner = case.step
    # enabled: set_enabled's own variable (None, the HIERA_FAST default, is restored as None)
    attr = {k: "_setting" if k == "enabled" else k for k in settings}
    for k in settings:
        getattr(gpu, attr[k])  # a setting that hiera.gpu no longer has fails here, not in a run

    def step():
        saved = {k: getattr(gpu, attr[k]) for k in settings}
        for k, v in settings.items():
            setattr(gpu, attr[k], v)
        try:
            return inner()
        finally:
            for k, v in saved.items():
                setattr(gpu, attr[k], v)

    case.step = step
    case.label += f" ({suffix})"
    return case


def micro(device, timer: Timer, batch: int, quick: bool) -> list:
    """Attention kernels on Hiera-B's window shapes (heads-last views against the folded copy) and
    GELU after a product (separate pass against cuBLASLt's epilogue)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    rows = []

    def timed(label, fn):
        """Add a row: the median ms of ``fn`` (10 calls, 3 times), or why it cannot run."""
        try:
            fn()
            timer.sync()
            rows.append((label, statistics.median(timer.time(fn, 10) for _ in range(3)) * 1e3))
        except Exception as e:  # a backend that refuses a shape is a finding, not a failure
            rows.append((label, f"n/a ({type(e).__name__})"))

    # (what, windows, tokens per window, queries per window, heads, head dim)
    shapes = [("stage 1", 49, 64, 64, 1, 96), ("stage 2 pooling", 49, 64, 16, 2, 96), ("stage 2", 49, 16, 16, 2, 96),
              ("stage 3", 1, 196, 196, 4, 96), ("stage 4", 1, 49, 49, 8, 96)]
    if quick:
        shapes = shapes[:1]
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
                "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}
    for what, w, l, lq, h, d in shapes:
        qkv = torch.randn(3, batch, l, w * h, d, device=device, dtype=torch.bfloat16)
        q = qkv[0][:, :lq]
        layouts = {
            "heads-last views": (q.transpose(1, 2), qkv[1].transpose(1, 2), qkv[2].transpose(1, 2)),
            "folded copies": tuple(t.reshape(batch, t.shape[1], w, h, d).permute(0, 2, 3, 1, 4).reshape(batch * w, h, t.shape[1], d)
                                   for t in (q, qkv[1], qkv[2])),
        }
        if gpu.window_attention_fits(q, qkv[1]):
            timed(f"attention {what}, heads-last views, hiera window kernel",
                  lambda: gpu.window_attention(q, qkv[1], qkv[2]))
        for layout, (qq, kk, vv) in layouts.items():
            for name, backend in backends.items():
                if name == "math" and layout == "heads-last views":
                    continue

                def attend(qq=qq, kk=kk, vv=vv, backend=backend):
                    with sdpa_kernel([backend]):
                        return F.scaled_dot_product_attention(qq, kk, vv)

                timed(f"attention {what}, {layout}, {name}", attend)
    for what, m, c in (("stage 1", batch * 3136, 96), ("stage 3", batch * 196, 384)):
        if quick:
            m = 64
        x = torch.randn(m, c, device=device, dtype=torch.bfloat16)
        w1 = torch.randn(4 * c, c, device=device, dtype=torch.bfloat16) / c**0.5
        b1 = torch.randn(4 * c, device=device, dtype=torch.bfloat16)
        variants = {
            "linear + gelu": lambda: F.gelu(F.linear(x, w1, b1)),
            "linear only": lambda: F.linear(x, w1, b1),
            "addmm_activation gelu (tanh)": lambda: torch._addmm_activation(b1, x, w1.t(), use_gelu=True),
            "3 linears of C (qkv split)": lambda: [F.linear(x, w1[i * c:(i + 1) * c], b1[i * c:(i + 1) * c]) for i in range(3)],
            "1 linear of 3C (qkv)": lambda: F.linear(x, w1[:3 * c], b1[:3 * c]),
        }
        for name, fn in variants.items():
            timed(f"mlp {what} M={m} C={c}: {name}", fn)
    log("\n### Kernels on Hiera-B's shapes\n\n| what | ms |\n|---|---:|")
    for what, t in rows:
        log(f"| {what} | {t if isinstance(t, str) else f'{t:.3f}'} |")
    return rows


# ------------------------------------------------------------------------------------ running
def run_group(cases, timer: Timer, rounds: int, min_time: float, warmup: int, device) -> None:
    """Warm each case up (compiling it), then time the cases in rotated rounds."""
    live = []
    for c in cases:
        t0 = time.perf_counter()
        try:
            for _ in range(warmup):
                c.step()
            timer.sync()
            c.flops_per_item = c.flops_fn() if c.flops_fn else None
            live.append(c)
            log(f"  warm-up {c.label}: {time.perf_counter() - t0:.1f} s")
        except Exception as e:  # report and go on: one failing implementation must not stop the run
            c.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            log(f"  FAILED {c.label}: {c.error}")
    iters = {}
    for c in live:  # steps per slice: enough for min_time
        t = timer.time(c.step, 1)
        iters[c] = max(1, int(min_time / max(t, 1e-6)))
    for r in range(rounds):
        order = live[r % len(live):] + live[: r % len(live)] if live else []
        for c in order:
            if device.type == "cuda":
                base = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            c.times.append(timer.time(c.step, iters[c]))
            if device.type == "cuda":  # what the step takes above what was held before it
                c.peak_mb = (torch.cuda.max_memory_allocated(device) - base) / 2**20


def summarize(c: Case, ceiling_tflops: float) -> dict:
    row = {"label": c.label, "group": c.group, "error": c.error}
    if c.times:
        t = statistics.median(c.times)
        row["items_per_s"] = c.items / t
        row["ms_per_step"] = t * 1e3
        row["spread"] = (max(c.times) - min(c.times)) / t
        row["peak_mb"] = c.peak_mb
        if c.flops_per_item:
            row["gflop_per_item"] = c.flops_per_item / 1e9
            row["tflops"] = c.flops_per_item * row["items_per_s"] / 1e12
            row["mfu"] = row["tflops"] / ceiling_tflops if ceiling_tflops else None
    return row


def print_rows(title: str, rows) -> None:
    log(f"\n### {title}\n")
    log("| case | items/s | ms/step | GFLOP/item | TFLOP/s | MFU | step MB | spread |")
    log("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        if r.get("error"):
            log(f"| {r['label']} | failed: {r['error'][:120]} | | | | | | |")
            continue
        f = lambda k, d=1: "" if r.get(k) is None else f"{r[k]:.{d}f}"  # noqa: E731
        mfu = "" if r.get("mfu") is None else f"{100 * r['mfu']:.1f}%"
        log(f"| {r['label']} | {f('items_per_s')} | {f('ms_per_step', 2)} | {f('gflop_per_item', 2)} | "
            f"{f('tflops')} | {mfu} | {f('peak_mb', 0)} | {100 * r.get('spread', 0):.1f}% |")


# ------------------------------------------------------------------------------------ profile
CATEGORIES = [  # first match wins; kernel names of cuBLAS, cuDNN, flash, inductor, ours
    ("attention", r"flash|fmha|attention|sdpa|softmax"),
    ("matmul", r"gemm|nvjet|cutlass|xmma|cublas|matmul|sm90_|sm80_|ampere_|splitK|bmm"),
    ("conv", r"conv|implicit|winograd|cudnn"),
    ("layer norm", r"layer_norm|layernorm|LayerNorm"),
    ("inductor fused", r"^triton_"),
    ("gelu", r"gelu|GeLU|Gelu"),
    ("elementwise (adds)", r"Functor_add|Functor_mul|AddFunctor|MulFunctor"),  # before copies: their names say Cast too
    ("copy / cast / gather", r"copy|Copy|cast|index|gather|CatArray|permute|transpose"),
    ("reduce (pool, mean)", r"reduce|max|amax|mean|Reduce"),
    ("elementwise", r"elementwise|vectorized"),
]


def profile_case(label: str, step, timer: Timer, steps: int = 3, top: int = 18) -> dict:
    from torch.profiler import ProfilerActivity, profile

    cuda = timer.device.type == "cuda"  # (elsewhere, as a check of the script: the operators' own CPU time)
    step()
    timer.sync()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        for _ in range(steps):
            step()
        timer.sync()
    kernels = {}
    for evt in prof.events():
        if cuda and (getattr(evt, "device_type", None) is None or "CUDA" not in str(evt.device_type)):
            continue
        us = evt.time_range.elapsed_us() if cuda else evt.self_cpu_time_total
        kernels[evt.name] = kernels.get(evt.name, 0.0) + us
    total = sum(kernels.values()) or 1.0
    cats = {}
    for name, us in kernels.items():
        cat = next((c for c, rx in CATEGORIES if re.search(rx, name)), "other")
        cats[cat] = cats.get(cat, 0.0) + us
    log(f"\n#### {label}: {total / steps / 1e3:.2f} ms of kernels per step\n")
    log("| category | ms/step | share |\n|---|---:|---:|")
    for cat, us in sorted(cats.items(), key=lambda kv: -kv[1]):
        log(f"| {cat} | {us / steps / 1e3:.2f} | {100 * us / total:.1f}% |")
    log("\n| kernel | ms/step | share |\n|---|---:|---:|")
    for name, us in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]:
        log(f"| `{name[:110]}` | {us / steps / 1e3:.3f} | {100 * us / total:.1f}% |")
    return {"label": label, "kernel_ms_per_step": total / steps / 1e3,
            "categories": {k: v / steps / 1e3 for k, v in cats.items()},
            "top": [(n, us / steps / 1e3) for n, us in sorted(kernels.items(), key=lambda kv: -kv[1])[:top]]}


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--official", default=None, help="folder holding hiera_official/ (the official package, renamed)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--video-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--min-time", type=float, default=0.5, help="seconds per timed slice")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes: check the script end to end")
    p.add_argument("--json", default=None, help="write the record here (after every section)")
    p.add_argument("--variants", nargs="*", default=None, help="only cases whose label contains one of these")
    p.add_argument("--skip", nargs="*", default=[], help="no case whose label contains one of these")
    args = p.parse_args(argv)
    run = Run(args)
    failed = []
    for key in SECTIONS:
        if key not in args.sections:
            continue
        try:
            getattr(run, key)()
        except Exception as e:  # one broken section must not cost the others (a GPU lease is short)
            failed.append(key)
            log(f"\nSECTION {key} FAILED: {type(e).__name__}: {e}")
        run.save()
    run.report()
    run.save()
    return 1 if failed else 0


SECTIONS = ("ceiling", "inference", "compiled", "profile", "train", "train_compiled", "video", "latency", "micro")


class Run:
    """The sections of one run, sharing the device, the models' builders and the record."""

    def __init__(self, args):
        self.args = args
        self.device = device = torch.device(args.device)
        self.timer = Timer(device)
        if args.quick:
            args.batch, args.train_batch, args.video_batch = 2, 2, 1
            args.rounds, args.min_time, args.warmup = 2, 0.01, 1
        self.official = None
        if args.official:
            sys.path.insert(0, args.official)
            import hiera_official

            self.official = hiera_official
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        log(f"# Hiera vs ViT: {name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d %H:%M')}")
        self.record = {"device": name, "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
                       "rows": [], "profiles": [], "ceiling": {"bf16_tflops": None}}
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.size = 64 if args.quick else 224
        self.kept = {}  # compiled cases kept for the profile, so that nothing compiles twice
        self.impls = ["ours"] + (["official"] if self.official else [])

    # -------------------------------------------------------------------- helpers
    def build(self, impl, name):
        return build(impl, name, self.device, self.official, quick=self.args.quick)

    def img(self, batch):
        return torch.randn(batch, 3, self.size, self.size, device=self.device)

    def want(self, label):
        if any(v in label for v in self.args.skip):
            return False
        return not self.args.variants or any(v in label for v in self.args.variants)

    def section(self, title, key, cases):
        cases = [c for c in cases if self.want(c.label)]
        if not cases:
            return
        log(f"\n{title}: {len(cases)} cases")
        run_group(cases, self.timer, self.args.rounds, self.args.min_time, self.args.warmup, self.device)
        rows = [summarize(c, self.record["ceiling"]["bf16_tflops"]) for c in cases]
        for r in rows:
            r["section"] = key
        self.record["rows"].extend(rows)
        print_rows(title, rows)
        for c in cases:
            if "profile" in self.args.sections and c.label in PROFILED:
                self.kept[c.label] = c
            else:
                c.step = None  # free the compiled graphs and models
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def save(self):
        if self.args.json:
            Path(self.args.json).write_text(json.dumps(self.record, indent=1, default=str))

    # -------------------------------------------------------------------- sections
    def ceiling(self):
        c = measure_ceiling(self.device, self.args.quick)
        self.record["ceiling"] = c
        log(f"ceiling: dense bf16 {c['bf16_tflops']:.0f} TFLOP/s ({c['gemm_n']}^3), "
            f"copy {c['copy_gbps']:.0f} GB/s (read + write)")

    def inference(self):
        x, bf16, cases = self.img(self.args.batch), torch.bfloat16, []
        for name in ("hiera_base_224", "hiera_small_224"):
            short = "Hiera-" + name.split("_")[1][0].upper()
            for impl in self.impls:
                cases.append(inference_case(f"{impl} {short} autocast", "inference", self.build(impl, name), x, bf16))
            cases.append(inference_case(f"ours {short} bf16 weights", "inference", self.build("ours", name), x, bf16, cast=True))
            for suffix, settings in AB_SETTINGS:
                cases.append(with_settings(inference_case(f"ours {short} autocast", "inference", self.build("ours", name), x, bf16),
                                           suffix, **settings))
        for vit in ("vit_b16", "vit_s16"):
            cases.append(inference_case(f"timm {vit} autocast", "inference", self.build("timm", vit), x, bf16))
            cases.append(inference_case(f"timm {vit} bf16 weights", "inference", self.build("timm", vit), x, bf16, cast=True))
        self.section(f"Inference, batch {self.args.batch}, eager", "inference", cases)

    def compiled(self):
        x, bf16 = self.img(self.args.batch), torch.bfloat16
        cases = [inference_case("ours Hiera-B autocast compiled", "compiled", self.build("ours", "hiera_base_224"), x, bf16, compile_mode="default"),
                 inference_case("timm vit_b16 autocast compiled", "compiled", self.build("timm", "vit_b16"), x, bf16, compile_mode="default"),
                 inference_case("ours Hiera-S autocast compiled", "compiled", self.build("ours", "hiera_small_224"), x, bf16, compile_mode="default")]
        # A/B: the graph without the Triton kernels' custom operators (inductor's norms, cuDNN on
        # the short windows, as in the 2026-11-30 runs), and with the fused norm's but not the
        # window kernel's
        for name, short in (("hiera_base_224", "Hiera-B"), ("hiera_small_224", "Hiera-S")):
            for suffix, settings in COMPILED_AB_SETTINGS[: None if short == "Hiera-B" else 1]:
                cases.append(with_settings(inference_case(f"ours {short} autocast compiled", "compiled", self.build("ours", name), x,
                                                          bf16, compile_mode="default"), suffix, **settings))
        if self.official:
            cases.append(inference_case("official Hiera-B autocast compiled", "compiled",
                                        self.build("official", "hiera_base_224"), x, bf16, compile_mode="default"))
        self.section(f"Inference, batch {self.args.batch}, torch.compile", "compiled", cases)

    def profile(self):
        if self.device.type != "cuda" and not self.args.quick:  # (--quick: the section runs, as a check)
            return
        x = self.img(self.args.batch)
        log("\n## Where the time goes (kernels; eager, then compiled)")
        for label in PROFILED:
            case = self.kept.pop(label, None)
            if case is None:
                if not self.want(label):
                    continue
                impl, what = label.split()[:2]
                name = {"Hiera-B": "hiera_base_224", "vit_b16": "vit_b16"}[what]
                case = inference_case(label, "profile", self.build(impl, name), x, torch.bfloat16,
                                      compile_mode="default" if "compiled" in label else None)
                for _ in range(self.args.warmup):
                    case.step()
            self.record["profiles"].append(profile_case(label, case.step, self.timer))
            case.step = None
        xt = self.img(self.args.train_batch)
        for label in TRAIN_PROFILED:
            if not self.want(label):
                continue
            impl, what = label.split()[:2]
            name = {"Hiera-B": "hiera_base_224", "vit_b16": "vit_b16"}[what]
            case = train_case(label, "profile", self.build(impl, name), xt, torch.bfloat16)
            for _ in range(self.args.warmup):
                case.step()
            self.record["profiles"].append(profile_case(f"{label} (training step, batch {self.args.train_batch})",
                                                        case.step, self.timer))
            case.step = None

    def train(self):
        x, bf16 = self.img(self.args.train_batch), torch.bfloat16
        specs = [("classify", "Hiera-B", "hiera_base_224"), ("MAE", "Hiera-S", "mae_hiera_small_224"),
                 ("MAE", "Hiera-B", "mae_hiera_base_224")]
        cases = [train_case("timm vit_b16 classify", "train", self.build("timm", "vit_b16"), x, bf16)]
        for impl in self.impls:
            for task, short, name in specs:
                if self.want(f"{impl} {short} {task}"):
                    cases.append(train_case(f"{impl} {short} {task}", "train", self.build(impl, name), x, bf16, mae=task == "MAE"))
        for task, short, name in specs[::2]:  # the stock layers beside ours (heads-last attention is on in training)
            cases.append(with_settings(train_case(f"ours {short} {task}", "train", self.build("ours", name), x, bf16,
                                                  mae=task == "MAE"), "fast paths off", enabled=False))
        self.section(f"Training steps, batch {self.args.train_batch}, bf16 autocast, fused AdamW", "train", cases)

    def train_compiled(self):
        x, bf16 = self.img(self.args.train_batch), torch.bfloat16
        cases = [train_case("timm vit_b16 classify compiled", "train_compiled", self.build("timm", "vit_b16"), x, bf16,
                            compile_mode="default")]
        for impl in self.impls:
            for task, short, name in (("classify", "Hiera-B", "hiera_base_224"), ("MAE", "Hiera-S", "mae_hiera_small_224")):
                cases.append(train_case(f"{impl} {short} {task} compiled", "train_compiled", self.build(impl, name), x, bf16,
                                        mae=task == "MAE", compile_mode="default"))
        self.section(f"Training steps, batch {self.args.train_batch}, bf16 autocast, fused AdamW, torch.compile",
                     "train_compiled", cases)

    def video(self):
        frames = 4 if self.args.quick else 16
        v = torch.randn(self.args.video_batch, 3, frames, self.size, self.size, device=self.device)
        cases = [inference_case(f"{impl} Hiera-B 16x224 video", "video", self.build(impl, "hiera_base_16x224"), v, torch.bfloat16)
                 for impl in self.impls]
        self.section(f"Video inference, batch {self.args.video_batch}, eager, bf16 autocast", "video", cases)

    def latency(self):
        x, bf16 = self.img(1), torch.bfloat16
        cases = [inference_case("ours Hiera-S b1 eager", "latency", self.build("ours", "hiera_small_224"), x, bf16),
                 inference_case("timm vit_b16 b1 eager", "latency", self.build("timm", "vit_b16"), x, bf16),
                 inference_case("ours Hiera-S b1 graphs", "latency", self.build("ours", "hiera_small_224"), x, bf16, compile_mode="reduce-overhead"),
                 inference_case("timm vit_b16 b1 graphs", "latency", self.build("timm", "vit_b16"), x, bf16, compile_mode="reduce-overhead")]
        self.section("Latency, batch 1", "latency", cases)

    def micro(self):
        self.record["micro"] = micro(self.device, self.timer, self.args.batch, self.args.quick)

    def report(self):
        """The asks of Hiera, from this run's rows."""
        by = {r["label"]: r for r in self.record["rows"] if r.get("items_per_s")}

        def ratio(a, b):
            return by[a]["items_per_s"] / by[b]["items_per_s"] if a in by and b in by else None

        log("\n### Against the targets\n\n| ratio | measured | target |\n|---|---:|---:|")
        asks = []
        for what, a, b, target in ASKS:
            value = ratio(a, b)
            if value is not None:
                asks.append({"what": what, "ratio": value, "target": target})
                log(f"| {what} | {value:.2f}x | {'' if target is None else f'>= {target}x'} |")
        self.record["asks"] = asks


# A/B rows of ours (hiera.gpu settings), measured beside the default.
AB_SETTINGS = [("fast paths off", {"enabled": False}), ("window kernel off", {"window_kernel_max_keys": 0}),
               ("window kernel for 16 keys only", {"window_kernel_max_keys": 16}), ("gelu epilogue off", {"gelu_epilogue": False})]

# A/B rows of ours compiled: the kernels' custom operators off, or the window kernel's alone.
COMPILED_AB_SETTINGS = [("custom ops off", {"compiled_ops": False}), ("window kernel off", {"window_kernel_max_keys": 0})]

ASKS = [  # (what, numerator row, denominator row, target)
    ("Hiera-B / ViT-B eager (autocast)", "ours Hiera-B autocast", "timm vit_b16 autocast", 1.2),
    ("Hiera-B / ViT-B eager (bf16 weights)", "ours Hiera-B bf16 weights", "timm vit_b16 bf16 weights", 1.2),
    ("Hiera-S / ViT-B eager (autocast)", "ours Hiera-S autocast", "timm vit_b16 autocast", 1.5),
    ("Hiera-S / ViT-B eager (bf16 weights)", "ours Hiera-S bf16 weights", "timm vit_b16 bf16 weights", 1.5),
    ("Hiera-B / ViT-B compiled", "ours Hiera-B autocast compiled", "timm vit_b16 autocast compiled", 1.5),
    ("ours / official Hiera-B eager", "ours Hiera-B autocast", "official Hiera-B autocast", None),
    ("ours / official Hiera-B compiled", "ours Hiera-B autocast compiled", "official Hiera-B autocast compiled", None),
    ("Hiera-B compiled, custom ops on / off", "ours Hiera-B autocast compiled", "ours Hiera-B autocast compiled (custom ops off)", None),
    ("Hiera-S compiled, custom ops on / off", "ours Hiera-S autocast compiled", "ours Hiera-S autocast compiled (custom ops off)", None),
    ("Hiera-B compiled / eager (autocast)", "ours Hiera-B autocast compiled", "ours Hiera-B autocast", None),
    ("MAE Hiera-S ours / official", "ours Hiera-S MAE", "official Hiera-S MAE", 2.0),
    ("MAE Hiera-B ours / official", "ours Hiera-B MAE", "official Hiera-B MAE", 2.0),
    ("classify Hiera-B / ViT-B step", "ours Hiera-B classify", "timm vit_b16 classify", 1.2),
    ("classify Hiera-B / ViT-B step, compiled", "ours Hiera-B classify compiled", "timm vit_b16 classify compiled", 1.2),
    ("MAE Hiera-S ours / official, compiled", "ours Hiera-S MAE compiled", "official Hiera-S MAE compiled", 2.0),
    ("classify Hiera-B ours / official", "ours Hiera-B classify", "official Hiera-B classify", None),
    ("b1 graphs: Hiera-S speed / ViT-B speed", "ours Hiera-S b1 graphs", "timm vit_b16 b1 graphs", 1.0),
    ("video Hiera-B ours / official", "ours Hiera-B 16x224 video", "official Hiera-B 16x224 video", 3.0),
]


if __name__ == "__main__":
    sys.exit(main())
