"""The library changes nothing outside the models it is asked to run.

``import hiera`` and running a model (train and eval mode, inference and a training step) leave
the process alone: no global optimizer or module hooks, no torch setting, no allocator setting,
no third-party table (timm's RandAugment ops). One model's ``train()``/``eval()``, forward and
optimizer step leave every other model as it was, packed inference weights included. The fast
paths' switches take ``HIERA_FAST`` as their default, read when needed rather than at import.

The process-level checks run in a fresh interpreter (``import hiera`` must be its first import of
the package); each prints the state before and after as JSON.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from timm.data import auto_augment

import hiera
from hiera import fast, gpu
from hiera.data import images as data_images
from hiera.data import video as data_video

needs_onednn = pytest.mark.skipif(not (fast._HAS_ONEDNN_LINEAR and fast.enabled()),
                                  reason="torch built without oneDNN, or HIERA_FAST=0")

_SCRIPT = textwrap.dedent(
    """
    import json, os, resource, sys
    import torch
    import torch.nn.modules.module as module_hooks
    import torch.optim.optimizer as optimizer_hooks
    from timm.data import auto_augment

    def name(fn):
        return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"

    def snapshot():
        state = {
            "threads": torch.get_num_threads(),
            "interop_threads": torch.get_num_interop_threads(),
            "default_dtype": str(torch.get_default_dtype()),
            "grad_enabled": torch.is_grad_enabled(),
            "anomaly": torch.is_anomaly_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "cudnn": [torch.backends.cudnn.enabled, torch.backends.cudnn.benchmark,
                      torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32],
            "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
            "mkldnn": torch.backends.mkldnn.enabled,
            "sdp": [torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled(),
                    torch.backends.cuda.math_sdp_enabled()],
            "optimizer_hooks": {
                "pre": [name(h) for h in optimizer_hooks._global_optimizer_pre_hooks.values()],
                "post": [name(h) for h in optimizer_hooks._global_optimizer_post_hooks.values()],
            },
            "module_hooks": {
                key: [name(h) for h in getattr(module_hooks, key).values()]
                for key in sorted(vars(module_hooks))
                if key.startswith("_global_") and key.endswith("hooks") and isinstance(getattr(module_hooks, key), dict)
            },
            "recursion_limit": sys.getrecursionlimit(),
            "environ": {k: v for k, v in os.environ.items() if k.startswith(("HIERA_", "OMP_", "MKL_", "KMP_"))},
            "timm_name_to_op": {k: name(v) for k, v in auto_augment.NAME_TO_OP.items()},
            "timm_level_to_arg": {k: name(v) for k, v in auto_augment.LEVEL_TO_ARG.items()},
        }
        return state

    def page_faults_of_large_buffers(rounds=10):
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(2):  # warm up
            x = torch.ones(16 * 2**20)
            del x
        before = faults()
        for _ in range(rounds):
            x = torch.ones(16 * 2**20)  # 64 MiB: above glibc's mmap threshold
            del x
        return faults() - before

    out = {"before_import": snapshot()}
    import hiera
    out["after_import"] = snapshot()

    # HIERA_FAST set after the import still counts: it is read when a layer first needs it.
    os.environ["HIERA_FAST"] = "0"
    out["switches_after_env"] = [hiera.fast.enabled(), hiera.gpu.enabled()]
    hiera.fast.set_enabled(True)  # the explicit switches win over the variable
    hiera.gpu.set_enabled(True)
    out["switches_after_set"] = [hiera.fast.enabled(), hiera.gpu.enabled()]
    del os.environ["HIERA_FAST"]
    out["before_forward"] = snapshot()

    torch.manual_seed(0)
    x = torch.randn(8, 3, 128, 128)
    for cls, extra in ((hiera.Hiera, {"num_classes": 5}),
                       (hiera.MaskedAutoencoderHiera, {"decoder_embed_dim": 16, "decoder_depth": 1,
                                                       "decoder_num_heads": 1})):
        model = cls(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(128, 128), **extra)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        out_train = model.train()(x)
        (out_train[0] if isinstance(out_train, tuple) else out_train).float().mean().backward()
        optimizer.step()
        with torch.inference_mode():
            model.eval()(x)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    out["after_forward"] = snapshot()
    out["page_faults"] = page_faults_of_large_buffers()
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def process_state():
    """The fresh process's snapshots (see _SCRIPT)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIERA_")}
    env.update(OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _differences(before: dict, after: dict) -> dict:
    return {k: (before.get(k), after.get(k)) for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)}


def test_import_registers_no_hook_and_changes_no_setting(process_state):
    changed = _differences(process_state["before_import"], process_state["after_import"])
    assert not changed, f"`import hiera` changed process state: {changed}"


def test_running_models_registers_no_hook_and_changes_no_setting(process_state):
    changed = _differences(process_state["before_forward"], process_state["after_forward"])
    assert not changed, f"running models (train, eval, an optimizer step) changed process state: {changed}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_running_models_leaves_the_allocator_alone(process_state):
    """Without the opt-in (hiera.fast.reuse_memory), freed 64 MiB buffers still go back to the OS,
    so each new one is faulted in again: the allocator is as the process set it."""
    buffer_pages = 64 * 2**20 // 4096
    assert process_state["page_faults"] > 5 * buffer_pages, (
        f"only {process_state['page_faults']} page faults for 10 buffers of {buffer_pages} pages: "
        "a forward switched the process's allocator to reusing freed memory"
    )


def test_fast_switches_read_the_environment_when_needed(process_state):
    assert process_state["switches_after_env"] == [False, False], "HIERA_FAST set after `import hiera` was ignored"
    assert process_state["switches_after_set"] == [True, True]


def test_switches_take_the_environment_again_after_reset(monkeypatch):
    for module in (fast, gpu):  # (the settings are put back after the test)
        monkeypatch.setattr(module, "_setting", None)
    monkeypatch.setattr(fast, "_env_setting", None)
    monkeypatch.setenv("HIERA_FAST", "0")
    assert not fast.enabled() and not gpu.enabled()
    monkeypatch.setenv("HIERA_FAST", "1")
    assert not fast.enabled()  # kept once read (the layers ask on every call)...
    assert fast.set_enabled(None) is False  # ...until a reset, which reads it again
    assert fast.enabled() and gpu.enabled()
    assert fast.set_enabled(False) is True and not fast.enabled() and gpu.enabled()  # separate switches
    assert gpu.set_enabled(False) is True and not gpu.enabled()


def _small(cls=hiera.Hiera, **extra):
    torch.manual_seed(0)
    if cls is hiera.MaskedAutoencoderHiera:
        extra = {"decoder_embed_dim": 16, "decoder_depth": 1, "decoder_num_heads": 1, **extra}
    else:
        extra = {"num_classes": 5, **extra}
    return cls(embed_dim=16, num_heads=1, stages=(1, 1, 1, 1), input_size=(64, 64), **extra)


def _packed_copies(model: torch.nn.Module) -> dict:
    return {name: fast._packed[m][1] for name, m in model.named_modules() if m in fast._packed}


@needs_onednn
@pytest.mark.parametrize("other_kind", [hiera.Hiera, hiera.MaskedAutoencoderHiera])
def test_another_model_leaves_this_model_alone(other_kind):
    """Building, switching modes, running (inference and a fused optimizer step) and copying one
    model keeps another model's weights, mode and packed inference weights as they were."""
    x = torch.randn(2, 3, 64, 64)
    model = _small().eval()
    with torch.inference_mode():
        want = model(x, return_logits=True)
    packed = _packed_copies(model)
    assert "blocks.0.attn.qkv" in packed and "head.projection" in packed
    state = copy.deepcopy(model.state_dict())

    other = _small(other_kind).train()
    optimizer = torch.optim.AdamW(other.parameters(), lr=0.1, fused=True)
    fast.watch_optimizer(optimizer)
    result = other(x)
    (result[0] if isinstance(result, tuple) else result).mean().backward()
    optimizer.step()
    optimizer.zero_grad()
    other.eval()
    with torch.inference_mode():
        other(x)
    assert _packed_copies(other), "the other model did not take the packed path"
    other.train()
    copy.deepcopy(other).eval()

    assert not model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    now = _packed_copies(model)
    assert now.keys() == packed.keys() and all(now[k] is packed[k] for k in packed), (
        "another model's train()/eval() or optimizer step dropped this model's packed weights"
    )
    with torch.inference_mode():
        torch.testing.assert_close(model(x, return_logits=True), want, rtol=0, atol=0)


@needs_onednn
def test_mode_change_repacks_only_its_own_model():
    """``train()``/``eval()`` drop the packed weights of that model (the MAE's decoder layers too)."""
    model = _small(hiera.MaskedAutoencoderHiera).eval()
    with torch.inference_mode():
        model(torch.randn(2, 3, 64, 64), mask_ratio=0.5)
    assert {"decoder_embed", "decoder_pred", "blocks.0.mlp.fc1"} <= set(_packed_copies(model))
    model.eval()
    assert not _packed_copies(model)


@needs_onednn
def test_watch_optimizer_drops_only_its_weights():
    """A watched optimizer's step drops the packed copies of its own weights, not others'."""
    x = torch.randn(2, 3, 64, 64)
    model, frozen = _small().eval(), _small().eval()
    with torch.inference_mode():
        model(x)
        frozen(x)
    stepped = torch.optim.SGD(model.blocks[0].parameters(), lr=0.1)
    handle = fast.watch_optimizer(stepped)
    stepped.step()  # (no gradients: nothing changes, but the hook runs)
    handle.remove()
    assert "blocks.0.attn.qkv" not in _packed_copies(model) and "blocks.1.attn.qkv" in _packed_copies(model)
    assert "blocks.0.attn.qkv" in _packed_copies(frozen)


@pytest.mark.parametrize("kind", ["image", "video"])
def test_building_augmentations_leaves_timm_op_table_alone(kind):
    table = dict(auto_augment.NAME_TO_OP)
    try:
        if kind == "image":
            data_images.finetune_transform((32, 32))
        else:
            data_video.VideoTrainTransform((32, 32), rand_augment="rand-m9-mstd0.5-inc1")
        changed = sorted(k for k in set(table) | set(auto_augment.NAME_TO_OP)
                         if table.get(k) is not auto_augment.NAME_TO_OP.get(k))
    finally:
        auto_augment.NAME_TO_OP.clear()
        auto_augment.NAME_TO_OP.update(table)
    assert not changed, f"timm's RandAugment op table changed for the whole process: {changed}"


@pytest.mark.parametrize("kind", ["image", "video"])
def test_our_randaugment_posterizes_to_zero_bits_as_a_black_image(kind):
    """timm's strongest PosterizeIncreasing keeps 0 bits; Pillow refuses that, so our transforms'
    own posterize ops give the black image it means (and only ours: see the test above)."""
    from PIL import Image

    if kind == "image":
        transform = data_images.finetune_transform((32, 32))
        ops = [op for t in transform.transforms for op in (getattr(t, "ops", None) or [])]
    else:
        ops = data_video.VideoTrainTransform((32, 32), rand_augment="rand-m9-mstd0.5-inc1").rand_augment.ops
    posterize = [op for op in ops if op.name.startswith("Posterize")]
    assert posterize, "the policy has a posterize op"
    img = Image.new("RGB", (8, 8), (200, 120, 40))
    for op in posterize:
        assert op.aug_fn is not auto_augment.NAME_TO_OP[op.name]
        assert op.aug_fn(img, 0).getextrema() == ((0, 0),) * 3
        assert op.aug_fn(img, 8).tobytes() == img.tobytes()
