"""The official package's ``hiera.benchmarking`` import path: ``benchmark(model, ...)`` -> images/s.

For code written against the official package. This project's own tool, ``hiera benchmark``
(:mod:`hiera.bench.timing`), reports latency percentiles, memory, FLOPs and side-by-side comparisons;
both time with the same loop (:func:`hiera.bench.worker.time_steps`).
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
import torch.nn as nn
from tqdm import tqdm

from .bench.worker import time_steps, warm_up


def benchmark(
    model: nn.Module,
    device: Union[torch.device, str, int] = 0,
    input_size: Sequence[int] = (3, 224, 224),
    batch_size: int = 64,
    runs: int = 40,
    throw_out: float = 0.25,
    use_fp16: bool = False,
    verbose: bool = False,
) -> float:
    """Throughput of ``model`` on random inputs, in images (or clips) per second.

    The signature and defaults are the official ones. Args:
        model: put in eval mode and moved to ``device``.
        device: a ``torch.device``, a name (``"cpu"``, ``"cuda:1"``) or a CUDA index (the default,
            0, is the first GPU).
        input_size: one input without the batch dim, ``(C, H, W)`` or ``(C, T, H, W)``.
        batch_size: inputs per forward pass.
        runs: forward passes in all; the first ``int(runs * throw_out)`` are warm-up, not timed.
        use_fp16: run under float16 autocast.
        verbose: show a progress bar and print the throughput.
    """
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"benchmark: device {device} asked for (the default device=0 means cuda:0), "
                           "but CUDA is not available here; pass device='cpu'")
    if not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be a positive integer, got {runs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not 0 <= throw_out < 1:
        raise ValueError(f"throw_out must be in [0, 1) (the fraction of runs used to warm up), got {throw_out!r}")
    size = tuple(input_size)
    if not size or any(not isinstance(s, int) or s < 1 for s in size):
        raise ValueError(f"input_size must be positive integers without the batch dim (e.g. (3, 224, 224)), got {input_size!r}")

    model = model.eval().to(device)
    x = torch.rand(batch_size, *size, device=device)
    untimed = int(runs * throw_out)
    cuda = device if device.type == "cuda" else None
    with tqdm(total=runs, disable=not verbose, desc="Benchmarking") as bar:
        def step():
            model(x)
            bar.update()

        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=use_fp16):
            warm_up(step, untimed, cuda)  # the timed part starts after the warm-up passes have finished
            # Passes queued back to back, as upstream; the user's memory peaks are left alone.
            timed = time_steps(step, iters=runs - untimed, cuda=cuda, sync_each=False, memory=False)
    throughput = batch_size * len(timed["latencies_ms"]) / timed["total_s"]
    if verbose:
        print(f"Throughput: {throughput:.2f} im/s")
    return throughput
