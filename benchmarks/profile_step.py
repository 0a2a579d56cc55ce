"""Profile one Hiera step of whichever ``hiera`` package is importable: where does the time go?

The comparison suite (``hiera benchmark --compare``) says *how fast*; this says *why*. It times a
step, counts its floating-point work and prints the operators (or GPU kernels) that took the time.
It lives outside the package on purpose: run from this folder it imports any ``hiera``, so the
official package can be profiled from its own environment (``-I`` keeps our package off the path):

    PYTHONPATH=. python benchmarks/profile_step.py --device cuda --batch 256 --dtype bf16
    .cache/reference/venv/bin/python -I benchmarks/profile_step.py --device cuda --batch 256 --dtype bf16

Figures: median step time over ``--steps`` timed steps, items/s, model TFLOP/s (matrix products
and attention counted by ``torch.utils.flop_counter``; training counts the backward's too).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
import torch.nn.functional as F


def build_step(args, device):
    import hiera

    model = getattr(hiera, args.model)().to(device)
    model.train(args.mode == "train")
    fn = torch.compile(model) if args.compile else model
    size = tuple(args.input_size or (224, 224))
    x = torch.randn(args.batch, 3, *size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else contextlib.nullcontext
    mae = args.model.startswith("mae_")
    if args.mode == "inference":
        def step():
            with torch.inference_mode(), autocast():
                fn(x)
        return step, hiera
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        with autocast():
            out = fn(x, mask_ratio=args.mask_ratio) if mae else fn(x)
            loss = out[0] if mae else F.cross_entropy(out.float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step, hiera


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hiera_small_224", help="constructor name (mae_* for MAE)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--input-size", type=int, nargs="+", default=None)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--mode", choices=("inference", "train"), default="inference")
    p.add_argument("--mask-ratio", type=float, default=0.6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--top", type=int, default=25, help="rows of the profile table (0: no profile)")
    p.add_argument("--trace", default=None, help="also write a Chrome trace here")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    torch.manual_seed(0)
    step, hiera = build_step(args, device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    print(f"hiera from {hiera.__file__}; torch {torch.__version__}; "
          f"{torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}")
    t0 = time.perf_counter()
    for _ in range(3 if args.compile else 2):
        step()
    sync()
    print(f"warm-up {time.perf_counter() - t0:.1f} s")

    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t0)
    t = statistics.median(times)
    # Counted after timing: a dispatch mode during a compiled call can send that frame back to eager.
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    label = f"{args.model} {args.mode} {args.dtype}{' compiled' if args.compile else ''} batch {args.batch}"
    print(f"{label}: {t * 1e3:.2f} ms/step, {args.batch / t:.1f} items/s, "
          f"{flops / args.batch / 1e9:.2f} GFLOP/item, {flops / t / 1e12:.1f} TFLOP/s")
    if args.top <= 0:
        return
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        sync()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
