"""CPU fast paths of the model's layers, and the switches that control them.

Two things make eager CPU inference slow that the layers cannot fix by arranging tensors better:

* **Linear layers.** ``F.linear`` on CPU adds the bias with a separate pass over the output and
  hands the matrix product to the BLAS library, re-reading the weight in its plain layout every
  call. :func:`run_linear` instead calls oneDNN's inner product (the kernel ``torch.compile`` itself
  uses on CPU) with the weight packed once into oneDNN's blocked layout, the bias added in the
  kernel and, for the MLP's first layer, GELU fused as a post-op. Under ``torch.autocast("cpu",
  dtype=torch.bfloat16)`` the packed weight is a cached bfloat16 copy, so autocast's per-call
  weight cast disappears too. The packed copy belongs to its layer and is rebuilt whenever the
  weight may have changed: another storage (after ``.to()``), an in-place update (which bumps the
  version counter), an optimizer step (fused optimizers update weights *without* bumping the
  version counter, but an optimizer only updates a weight that holds a gradient: a weight with a
  gradient is not packed, and a forward that can give it one drops its packed copy), and the
  model's own ``train()``/``eval()`` (which cover writes through ``weight.data``, which no counter
  sees; other models keep their copies). :func:`watch_optimizer` adds a step hook to one optimizer
  for the updates these checks cannot see (gradients from a compiled graph, then cleared before
  the next eager inference without a mode change).
* **Memory.** glibc serves every allocation above 32 MiB with a fresh ``mmap`` and unmaps it on
  free, so at batch 32 each large activation is page-faulted in again on every forward (counted
  in ``benchmarks/README.md``, "On this project's CPU", "Memory reuse"). :func:`reuse_memory`
  tells glibc to keep freed memory in its heap instead. It is process-wide, so the library never
  calls it by itself: a program opts in (``hiera``'s command-line tools and trainer do).

The inference path runs only in eager CPU inference (gradients off, plain tensors, float32 or
bfloat16, not while ``torch.compile`` or ``torch.export`` trace). float32 CPU *training* takes
:class:`_TrainLinear`, which runs the forward product and both gradient products in oneDNN (PyTorch
gives float32 products to MKL, whose code path on AMD CPUs is 256 bits wide); bfloat16 autocast
training keeps the stock path, whose products already run in oneDNN. Outputs agree with
``F.linear`` to float rounding (a different summation order; the size of the difference is in
``benchmarks/README.md``, "oneDNN linear layers"), which the equivalence tests against the official
package check.

Switches (``import hiera`` changes no process state; nothing here does until called):

* :func:`set_enabled` turns both linear paths (and the other oneDNN-only CPU paths: the
  channels-last stem, the MAE fusion heads as one product) off for bit-exact stock kernels, or on.
  Its default is the ``HIERA_FAST`` environment variable (``0``, ``false`` or ``no``: off), read
  the first time a layer needs it (and again after ``set_enabled(None)``), so setting it after
  ``import hiera`` counts. :func:`hiera.gpu.set_enabled` is the CUDA paths' switch, with the same
  default.
* :func:`reuse_memory` (opt-in; ``HIERA_REUSE_MEMORY=0`` makes it a no-op).
* :func:`watch_optimizer` (opt-in, per optimizer).
"""

from __future__ import annotations

import ctypes
import os
import sys
import weakref
from typing import Optional

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _module_hooks

# Whether this torch build has oneDNN's linear kernels (fixed for the process; set_enabled is the switch).
_HAS_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")

_setting: Optional[bool] = None  # set_enabled's; None: the HIERA_FAST default
_env_setting: Optional[bool] = None  # HIERA_FAST, once read (see _env_default)


def _env_default() -> bool:
    """``HIERA_FAST``'s setting, the default of :func:`set_enabled` and :func:`hiera.gpu.set_enabled`:
    read when first needed rather than at import, then kept (the layers ask on every call, and a
    read of the environment costs about as much as the rest of the check); ``set_enabled(None)``
    reads it again."""
    global _env_setting
    if _env_setting is None:
        _env_setting = os.environ.get("HIERA_FAST", "1") not in ("0", "false", "no")
    return _env_setting


def _forget_env_default() -> None:
    global _env_setting
    _env_setting = None


def set_enabled(enabled: Optional[bool]) -> bool:
    """Turn the CPU fast paths of this module on (``True``) or off (``False``: PyTorch's stock
    kernels, whose float32 results match other implementations that use ``F.linear`` bit for bit
    instead of to float rounding) for this process, or back to the ``HIERA_FAST`` default
    (``None``, read again). Returns the previous effective setting. The CUDA paths have their own
    switch, :func:`hiera.gpu.set_enabled`."""
    global _setting
    previous = _setting if _setting is not None else _env_default()
    if enabled is None:
        _forget_env_default()
    _setting = None if enabled is None else bool(enabled)
    return previous


def enabled() -> bool:
    """Whether the CPU fast paths are on (:func:`set_enabled`, else ``HIERA_FAST``). They also need
    a torch built with oneDNN (``_HAS_ONEDNN_LINEAR``)."""
    return _setting if _setting is not None else _env_default()


def _exporting() -> bool:
    """True while ``torch.jit`` or ``torch.export`` (ONNX included) traces: graphs that leave
    PyTorch must hold standard operators only."""
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and getattr(compiler, "is_exporting", lambda: False)()


def _tracing() -> bool:
    """True while any tracer runs (``torch.compile`` as well as the exporters)."""
    if _exporting():
        return True
    compiler = getattr(torch, "compiler", None)
    return compiler is not None and getattr(compiler, "is_compiling", lambda: False)()


def _dispatch_mode() -> bool:
    """True while a Python dispatch mode (``torch.utils.flop_counter.FlopCounterMode``, fake
    tensors, ...) intercepts operators in eager mode. (Never while tracing: a tracer cannot follow
    the C call, and its own fake tensors must not count.)"""
    return not _tracing() and _dispatch_stack_len() > 0


_dispatch_stack_len = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def _transformed() -> bool:
    """True inside a functorch transform (``torch.func.vmap``, ``grad``, ``jacrev``, ...) or a
    forward-mode AD level (``torch.autograd.forward_ad.dual_level``): the custom autograd Functions
    of the fast paths have neither a vmap rule nor a jvp, so the stock operators run. (Never while
    tracing, as :func:`_dispatch_mode`.)"""
    return not _tracing() and _transform_active()


def _transform_active() -> bool:
    """:func:`_transformed` without the tracing check, for callers that made it already."""
    return _peek_interpreter() is not None or getattr(_forward_ad, "_current_level", -1) >= 0


_peek_interpreter = getattr(torch._C._functorch, "peek_interpreter_stack", lambda: None)


def _eager_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether oneDNN may run this layer: plain CPU tensors, eager mode (no tracer, no functorch
    transform such as vmap, no Python dispatch mode such as ``FlopCounterMode``, which must see
    the standard operators to count them), PyTorch built with oneDNN, and the paths switched on
    (:func:`set_enabled`)."""
    if not _HAS_ONEDNN_LINEAR or type(x) is not torch.Tensor or not enabled():
        return False
    if x.device.type != "cpu" or weight.device.type != "cpu" or _tracing():
        return False
    return _dispatch_stack_len() == 0 and not _transform_active()  # _dispatch_mode, _transformed


def inference_dtype(x: torch.Tensor, weight: torch.Tensor) -> Optional[torch.dtype]:
    """The dtype the CPU fast path would compute a layer in, or ``None`` when the stock path must
    run (gradients on, another device, a tensor subclass, float16, tracing, ...)."""
    if torch.is_grad_enabled() or not _eager_cpu(x, weight):
        return None
    if torch.is_autocast_enabled("cpu"):
        dtype = torch.get_autocast_dtype("cpu")
        return dtype if dtype in (torch.float32, torch.bfloat16) else None
    if x.dtype in (torch.float32, torch.bfloat16) and x.dtype == weight.dtype:
        return x.dtype
    return None


def training_path(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a float32 CPU training step can run this layer through :class:`_TrainLinear`."""
    if not torch.is_grad_enabled() or torch.is_autocast_enabled("cpu") or not _eager_cpu(x, weight):
        return False
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return False
    return x.requires_grad or weight.requires_grad


_onednn_linear = torch.ops.mkldnn._linear_pointwise if _HAS_ONEDNN_LINEAR else None


class _TrainLinear(torch.autograd.Function):
    """float32 ``F.linear`` whose three matrix products (forward, input and weight gradients) run in
    oneDNN instead of the BLAS library.

    PyTorch sends float32 CPU matrix products to MKL, which takes a 256-bit code path on AMD CPUs;
    oneDNN uses the full AVX-512 kernels. The weight gradient ``g^T x`` goes in as a transposed
    input (oneDNN copies the narrower of the two operands) so no product runs on a strided layout.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return _onednn_linear(x, weight, bias, "none", [], "")

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])  # [N, out]
        x2 = x.reshape(-1, x.shape[-1])  # [N, in]
        grad_x = grad_w = grad_b = None
        if torch.is_grad_enabled():  # double backward (create_graph=True): oneDNN's calls have no derivative
            if ctx.needs_input_grad[0]:
                grad_x = grad @ weight
            if ctx.needs_input_grad[1]:
                grad_w = grad2.t() @ x2
            if ctx.needs_input_grad[2]:
                grad_b = grad2.sum(0)
            return grad_x, grad_w, grad_b
        if ctx.needs_input_grad[0]:
            grad_x = _onednn_linear(grad2, weight.t(), None, "none", [], "").view(x.shape)
        if ctx.needs_input_grad[1]:
            if weight.shape[0] <= weight.shape[1]:  # [out, N] @ [N, in]
                grad_w = _onednn_linear(grad2.t(), x2.t(), None, "none", [], "")
            else:  # ([in, N] @ [N, out])^T
                grad_w = _onednn_linear(x2.t(), grad2.t(), None, "none", [], "").t().contiguous()
        if ctx.needs_input_grad[2]:  # False when there is no bias
            grad_b = grad2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``F.linear`` with oneDNN's float32 products on CPU (training and inference), for weights that
    are not worth packing: :func:`run_linear` packs the layers' own; this serves their training path and
    weights built on the fly, such as a convolution kernel read as a matrix."""
    if training_path(x, weight):
        return _TrainLinear.apply(x, weight, bias)
    if inference_dtype(x, weight) is torch.float32 and x.dtype == weight.dtype == torch.float32:
        return _onednn_linear(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


# Packed copies of the linear layers' weights for the inference path: layer -> (key, packed weight).
# Per-layer state kept beside the layer rather than on it: a weak mapping, so a copy goes away with
# its layer and is never pickled, deep-copied or listed in a state dict with it.
_packed: "weakref.WeakKeyDictionary[nn.Linear, tuple]" = weakref.WeakKeyDictionary()


def _may_be_stepped(weight: torch.Tensor) -> bool:
    """Whether an optimizer may update ``weight`` before the next call: it holds a gradient, or this
    call may give it one. (Optimizers skip weights without a gradient; fused ones update the rest
    without moving the version counter, so a packed copy cannot see their steps.)"""
    return weight.grad is not None or (weight.requires_grad and torch.is_grad_enabled())


def watch_optimizer(optimizer: torch.optim.Optimizer):
    """Drop the packed copies of ``optimizer``'s weights after each of its steps, for updates that
    the checks of :func:`run_linear` cannot see (see the module docstring). Only this optimizer
    gets the hook (nothing process-wide); returns its handle (``handle.remove()`` takes it off)."""
    return optimizer.register_step_post_hook(_drop_stepped)


def _drop_stepped(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    if not _packed:
        return
    stepped = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for layer in list(_packed.keys()):
        if id(getattr(layer, "weight", None)) in stepped:
            _packed.pop(layer, None)


def _hooked(layer: nn.Module) -> bool:
    """Whether calling ``layer`` would run hooks (its own or global ones, such as a FLOP counter's)."""
    return bool(
        layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks or layer._backward_pre_hooks
        or _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
        or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks
    )


def run_linear(layer: nn.Module, x: torch.Tensor, act: str = "none") -> torch.Tensor:
    """``layer(x)``, followed by exact GELU when ``act="gelu"``: ``[..., in] -> [..., out]``.

    The model's linear layers are plain ``nn.Linear`` modules and run through here. An unhooked
    ``nn.Linear`` takes the oneDNN paths of the module docstring (in inference a packed weight with
    the bias, and GELU, fused into the product). Anything else is simply called: a layer with hooks,
    or a replacement such as ``torch.ao.quantization.quantize_dynamic``'s int8 layer or a
    parametrized one, so tools that swap or watch ``nn.Linear`` modules get what they expect.
    """
    # (Tracers too get the module call: jit traces and exported graphs then name the layer.)
    called = type(layer) is not nn.Linear or _hooked(layer) or _tracing() or layer.weight.numel() == 0
    dtype = None if called else inference_dtype(x, layer.weight)
    if not called and _packed and _may_be_stepped(layer.weight):
        _packed.pop(layer, None)  # an optimizer step may follow, unseen by the version counter
    # Weights made under inference_mode (a model built or converted inside it) have no version
    # counter, so a packed copy could not tell when they change: those run unpacked, as do weights
    # holding a gradient (see _may_be_stepped).
    if dtype is not None and not layer.weight.is_inference() and layer.weight.grad is None:
        x = x.to(dtype)
        return _onednn_linear(x, _packed_weight(layer, dtype), layer.bias, act, [], "none" if act == "gelu" else "")
    y = layer(x) if called else linear(x, layer.weight, layer.bias)
    return F.gelu(y) if act == "gelu" else y


def _packed_weight(layer: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    w = layer.weight
    key = (w.data_ptr(), w._version, dtype, tuple(w.shape))
    entry = _packed.get(layer)
    if entry is None or entry[0] != key:
        with torch.no_grad():
            entry = (key, torch.ops.mkldnn._reorder_linear_weight(w.detach().to(dtype), None))
        _packed[layer] = entry
    return entry[1]


class RepacksOnModeChange(nn.Module):
    """Base of the modules whose linear layers run through :func:`run_linear` (each such layer is a
    direct child of one): ``train()`` and ``eval()`` drop the packed copies of this module's own
    layers, which repack on their next inference call, since writes through ``weight.data`` move no
    version counter. (``nn.Module.train`` recurses, so a model's mode change reaches all of its
    layers, and no other model's.)"""

    def train(self, mode: bool = True):
        if _packed:
            for child in self.children():
                _packed.pop(child, None)
        return super().train(mode)


_MALLOPT = {"M_TRIM_THRESHOLD": -1, "M_MMAP_MAX": -4}
_memory_done = False  # whether reuse_memory applied the setting in this process


def reuse_memory() -> bool:
    """Keep freed memory in the process heap instead of returning it to the OS (glibc only): an
    opt-in for programs that run the model on CPU, since it changes the allocator of the whole
    process. The library never calls it; ``hiera``'s command-line tools and trainer do.

    Large allocations then come from the heap (``M_MMAP_MAX=0``) and the heap's top is only
    trimmed past 1 GiB (``M_TRIM_THRESHOLD``), so the second forward of the same size touches
    pages that are already mapped (the cost: a higher steady resident memory; both are measured in
    ``benchmarks/README.md``, "Memory reuse"). Returns whether the setting was applied (False on
    other C libraries and when the ``HIERA_REUSE_MEMORY`` environment variable, read at the call,
    is ``0``). Idempotent; not undone.
    """
    global _memory_done
    if _memory_done:
        return True
    if os.environ.get("HIERA_REUSE_MEMORY", "1") in ("0", "false", "no") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_MALLOPT["M_MMAP_MAX"], 0) == 1
        ok = ok and libc.mallopt(_MALLOPT["M_TRIM_THRESHOLD"], 1 << 30) == 1
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        ok = False
    _memory_done = ok
    return ok
