"""Loading weights through every path, offline: torch-hub cache and download, Hugging Face Hub
(pre-filled cache, and a hub server on 127.0.0.1), local files, and the fixes to upstream's loading."""

import io
import json
import warnings
from pathlib import Path

import pytest
import torch
from hubserver import (  # noqa: F401  (fixtures)
    file_server,
    hf_offline,
    hub_server,
    prefill_hf_cache,
    prefill_torch_hub_cache,
    torch_home,
)
from safetensors.torch import save as safetensors_bytes

import hiera
from hiera import CheckpointError, Hiera, MaskedAutoencoderHiera

REPO_ROOT = Path(__file__).resolve().parents[1]


def _random_state(model):
    g = torch.Generator().manual_seed(5)
    return {k: torch.randn(v.shape, generator=g) * 0.05 for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny_states():
    """Random classifier and MAE state dicts of hiera_tiny_224 / mae_hiera_tiny_224."""
    with torch.device("meta"):
        cls_shapes, mae_shapes = hiera.hiera_tiny_224(), hiera.mae_hiera_tiny_224()
    return _random_state(cls_shapes), _random_state(mae_shapes)


def _pth_bytes(state):
    buf = io.BytesIO()
    torch.save({"model_state": state, "epoch": 99}, buf)
    return buf.getvalue()


def _assert_loaded(model, state, skip=()):
    own = model.state_dict()
    for k, v in state.items():
        if k in own and k not in skip:
            assert torch.equal(own[k], v), k


# ---------------------------------------------------------------- torch hub (official URLs)
def test_pretrained_from_prefilled_torch_hub_cache(torch_home, tiny_states):
    cls_state, _ = tiny_states
    prefill_torch_hub_cache(torch_home, "hiera_tiny_224.pth", _pth_bytes(cls_state))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an exact load says nothing
        model = hiera.hiera_tiny_224(pretrained=True)
    _assert_loaded(model, cls_state)
    assert model.load_report.exact and model.head.projection.out_features == 1000


def test_pretrained_downloads_through_torch_hub(torch_home, file_server, monkeypatch, tiny_states):
    _, mae_state = tiny_states
    file_server.add_file("mae_hiera_tiny_224.pth", _pth_bytes(mae_state))
    monkeypatch.setenv("HIERA_WEIGHTS_MIRROR", file_server.url)
    model = hiera.mae_hiera_tiny_224(pretrained=True, checkpoint="mae_in1k")
    _assert_loaded(model, mae_state)
    cached = torch_home / "hub" / "checkpoints" / "mae_hiera_tiny_224.pth"
    assert cached.exists()
    downloads = [c for c in file_server.calls if c[0] == "GET"]
    hiera.mae_hiera_tiny_224(pretrained=True)  # second time: from the cache
    assert [c for c in file_server.calls if c[0] == "GET"] == downloads


def test_offline_and_uncached_fails_fast_with_instructions(torch_home, monkeypatch):
    monkeypatch.setenv("HIERA_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # closed port
    with pytest.raises(CheckpointError, match=r"could not reach .*Put the file at .*hiera_base_224\.pth"):
        hiera.hiera_base_224(pretrained=True)


def test_num_classes_other_than_checkpoint_gives_fresh_head(torch_home, tiny_states):
    cls_state, _ = tiny_states
    prefill_torch_hub_cache(torch_home, "hiera_tiny_224.pth", _pth_bytes(cls_state))
    torch.manual_seed(0)
    model = hiera.hiera_tiny_224(pretrained=True, num_classes=10)  # upstream: error
    assert model.head.projection.weight.shape == (10, 768)
    _assert_loaded(model, cls_state, skip=("head.projection.weight", "head.projection.bias"))
    assert model.load_report.fresh_head and not model.load_report.missing
    # strict=True is about the checkpoint matching; a requested new head is not a mismatch.
    hiera.hiera_tiny_224(pretrained=True, num_classes=10, strict=True)


def test_mae_checkpoint_into_classifier_reports_then_strict_refuses(torch_home, tiny_states):
    _, mae_state = tiny_states
    prefill_torch_hub_cache(torch_home, "mae_hiera_tiny_224.pth", _pth_bytes(mae_state))
    with pytest.warns(UserWarning, match=r"mae checkpoint -> classifier model.*norm\.weight.*head\.projection"):
        model = hiera.hiera_tiny_224(pretrained=True, checkpoint="mae_in1k")
    _assert_loaded(model, mae_state)
    report = model.load_report
    assert sorted(report.missing) == ["head.projection.bias", "head.projection.weight", "norm.bias", "norm.weight"]
    assert any(k.startswith("decoder_blocks.") for k in report.unexpected)
    with pytest.raises(CheckpointError, match=r"an MAE \(encoder \+ decoder\) checkpoint.*a classifier"):
        hiera.hiera_tiny_224(pretrained=True, checkpoint="mae_in1k", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = hiera.hiera_tiny_224(pretrained=True, checkpoint="mae_in1k", strict=False)
    assert quiet.load_report.missing == report.missing


def test_checkpoint_may_be_a_local_file(tmp_path, tiny_states):
    cls_state, _ = tiny_states
    from safetensors.torch import save_file

    path = tmp_path / "mine.safetensors"
    save_file(cls_state, str(path))
    model = hiera.hiera_tiny_224(pretrained=True, checkpoint=str(path))
    _assert_loaded(model, cls_state)
    model = hiera.create_model("hiera_tiny_224", pretrained=True, checkpoint=str(path), num_classes=3)
    assert model.head.projection.out_features == 3


# ---------------------------------------------------------------- Hugging Face Hub
def _small(cls=Hiera, **kw):
    torch.manual_seed(1)
    cfg = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=6)
    if cls is MaskedAutoencoderHiera:
        cfg.update(q_pool=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    cfg.update(kw)
    model = cls(**cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def test_save_pretrained_round_trip_local_dir(tmp_path):
    x = torch.randn(2, 3, 64, 64)
    for cls in (Hiera, MaskedAutoencoderHiera):
        model = _small(cls)
        model.save_pretrained(tmp_path / cls.__name__, config=model.config)
        config = json.loads((tmp_path / cls.__name__ / "config.json").read_text())
        assert config == json.loads(json.dumps(model.config))
        again = cls.from_pretrained(tmp_path / cls.__name__)
        assert again.load_report.exact and not again.training
        if cls is Hiera:
            torch.testing.assert_close(again(x), model(x))
        else:
            mask = model.get_random_mask(x, 0.5)
            torch.testing.assert_close(again(x, mask=mask)[0], model(x, mask=mask)[0])
    # config defaults to model.config
    model = _small(num_classes=4)
    model.save_pretrained(tmp_path / "implicit")
    assert json.loads((tmp_path / "implicit" / "config.json").read_text())["num_classes"] == 4


def test_push_to_hub_and_from_pretrained_through_a_hub_server(hub_server):
    model = _small()
    model.push_to_hub("test-user/tiny-hiera", config=model.config)
    assert set(hub_server.list_files("test-user/tiny-hiera")) >= {"config.json", "model.safetensors"}
    assert ("POST", "/api/models/test-user/tiny-hiera/commit/main") in hub_server.calls
    again = Hiera.from_pretrained("test-user/tiny-hiera")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x))
    # num_classes override: fresh head, trunk from the hub.
    other = Hiera.from_pretrained("test-user/tiny-hiera", num_classes=2)
    assert other.head.projection.out_features == 2 and other.load_report.fresh_head
    with pytest.raises(CheckpointError, match="could not get test-user/missing"):
        Hiera.from_pretrained("test-user/missing")


def test_from_pretrained_offline_from_prefilled_cache(hf_offline):
    """The official repo layout (config.json + model.safetensors) loads with no network at all."""
    model = _small(num_classes=1000)
    repo = "facebook/hiera_tiny_224.mae_in1k_ft_in1k"
    prefill_hf_cache(hf_offline, repo, {
        "config.json": json.dumps(model.config),
        "model.safetensors": safetensors_bytes(model.state_dict()),
    })
    again = Hiera.from_pretrained(repo)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(again(x), model(x))
    with pytest.raises(CheckpointError, match=r"Offline\?"):
        Hiera.from_pretrained("facebook/hiera_base_224.mae_in1k")


def test_mae_repo_into_encoder_class_reports(hf_offline):
    mae = _small(MaskedAutoencoderHiera)
    repo = "facebook/hiera_tiny_224.mae_in1k"
    prefill_hf_cache(hf_offline, repo, {
        "config.json": json.dumps(mae.config),
        "model.safetensors": safetensors_bytes(mae.state_dict()),
    })
    with pytest.warns(UserWarning, match="mae checkpoint -> classifier model"):
        model = Hiera.from_pretrained(repo)
    assert "norm.weight" in model.load_report.missing
    with pytest.raises(CheckpointError, match="MAE .* checkpoint.*classifier"):
        Hiera.from_pretrained(repo, strict=True)


# ---------------------------------------------------------------- torch.hub.load (hubconf.py)
def test_hubconf_exposes_every_constructor():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hubconf_under_test", REPO_ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = [n for n in dir(module) if callable(getattr(module, n)) and not n.startswith("_")]
    assert set(hiera.list_models()) <= set(entries)
    assert "mae_hiera_large_16x224" in entries  # missing from upstream's hubconf
    model = torch.hub.load(str(REPO_ROOT), "hiera_tiny_224", source="local", num_classes=5)
    assert isinstance(model, Hiera) and model.head.projection.out_features == 5


def test_official_module_paths_and_decorator(tmp_path):
    """Code importing the official package's submodules keeps working, its decorator included."""
    from hiera.hfhub import has_config  # noqa: F401
    from hiera.hiera import Hiera as H  # noqa: F401
    from hiera.hiera import hiera_tiny_224
    from hiera.hiera_mae import MaskedAutoencoderHiera as M  # noqa: F401
    from hiera.hiera_mae import mae_hiera_base_16x224
    from hiera.hiera_utils import Reroll, Unroll, pretrained_model, undo_windowing  # noqa: F401

    small = _small(num_classes=4)
    torch.save({"model_state": small.state_dict()}, tmp_path / "small.pth")

    @pretrained_model({"mine": str(tmp_path / "small.pth")}, default="mine")
    def my_hiera(**kw):
        return Hiera(**{**small.config, **kw})

    assert my_hiera.checkpoints == {"mine": str(tmp_path / "small.pth")} and my_hiera.default == "mine"
    loaded = my_hiera(pretrained=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded.eval()(x), small(x))
    assert my_hiera(pretrained=True, num_classes=9).head.projection.out_features == 9
    with pytest.raises(RuntimeError, match="unknown checkpoint 'other'"):
        my_hiera(pretrained=True, checkpoint="other")
