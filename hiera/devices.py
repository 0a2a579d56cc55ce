"""Which device a tool runs on: one rule for every command and library function.

``"auto"`` (or ``None``) means a CUDA GPU if there is one, else an Apple (mps) GPU, else the CPU.
"""

from __future__ import annotations

from typing import List, Optional, Union

import torch


def available_devices() -> List[str]:
    """The devices torch can use here, e.g. ``["cpu", "cuda:0", "cuda:1"]``."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    return found


DEVICE_HELP = "auto (a CUDA GPU if present, else an Apple mps GPU, else the CPU), cpu, cuda, cuda:1, mps (default: auto)"


def resolve_device(device: Optional[Union[str, torch.device]] = None) -> torch.device:
    """``None`` / ``"auto"``: a CUDA GPU if there is one, else an Apple (mps) GPU, else the CPU;
    anything else as torch reads it.

    Every tool resolves ``--device`` here, so a device that is not present fails at once with a
    ValueError naming it and the devices there are (rather than at the first tensor moved to it)."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {str(device)!r}; use auto, cpu, cuda, cuda:N or mps "
                         f"(available here: {', '.join(available_devices())})") from None
    if dev.type == "cpu":
        return dev
    have = available_devices()
    names = {"cuda": "CUDA GPU", "mps": "Apple (mps) GPU", "xpu": "Intel (xpu) GPU"}
    present = [d for d in have if d.split(":")[0] == dev.type]
    if not present:
        raise ValueError(f"device {str(device)!r} asked for, but torch sees no {names.get(dev.type, dev.type + ' device')} "
                         f"here; available: {', '.join(have)}")
    index_ok = dev.index is None or (dev.index == 0 if dev.type == "mps" else f"{dev.type}:{dev.index}" in present)
    if not index_ok:
        raise ValueError(f"device {str(device)!r} asked for, but there {'is' if len(present) == 1 else 'are'} only "
                         f"{len(present)} {names.get(dev.type, dev.type)}{'' if len(present) == 1 else 's'}; "
                         f"available: {', '.join(have)}")
    return dev
