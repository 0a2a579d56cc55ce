"""`hiera convert` between layouts, checked by loading the results in the real libraries."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import HieraForImageClassification

import hiera
from hiera import formats
from hiera.cli import main
from hiera.zoo import load_model


@pytest.fixture()
def saved(tmp_path):
    torch.manual_seed(0)
    model = hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=10).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(tmp_path / "src")
    return model, tmp_path


def test_convert_to_every_layout_and_load_back(saved):
    model, tmp = saved
    x = torch.randn(2, 3, 64, 64)
    ref = model(x, return_logits=True)
    for to, out in [("official", "a.pth"), ("official", "repo"), ("safetensors", "b.safetensors"),
                    ("timm", "c.safetensors"), ("hf", "hf")]:
        assert main(["convert", str(tmp / "src"), "--to", to, "--out", str(tmp / out)]) == 0

    official = torch.load(tmp / "a.pth", weights_only=True)
    assert set(official) == {"model_state"} and official["model_state"].keys() == model.state_dict().keys()
    for src in ("repo", "b.safetensors", "hf"):  # each carries its config
        torch.testing.assert_close(load_model(weights=tmp / src)(x, return_logits=True), ref)

    hf = HieraForImageClassification.from_pretrained(tmp / "hf").eval()
    assert json.loads((tmp / "hf" / "config.json").read_text())["model_type"] == "hiera"
    torch.testing.assert_close(hf(x).logits, ref, rtol=1e-5, atol=1e-5)

    import timm.models.hiera as timm_hiera

    timm_net = timm_hiera.Hiera(**formats.official_config_to_timm(model.config)).eval()
    timm_net.load_state_dict(load_file(str(tmp / "c.safetensors")))
    torch.testing.assert_close(timm_net(x), ref, rtol=1e-5, atol=1e-5)
    # timm back to the official .pth layout (which needs no config): the same weights.
    assert main(["convert", str(tmp / "c.safetensors"), "--to", "official", "--out", str(tmp / "d.pth")]) == 0
    back = torch.load(tmp / "d.pth", weights_only=True)["model_state"]
    assert all(torch.equal(back[k], v) for k, v in model.state_dict().items())
    # The timm file keeps the config in its metadata, so it converts on to a repo directory...
    assert main(["convert", str(tmp / "c.safetensors"), "--to", "hf", "--out", str(tmp / "e")]) == 0
    torch.testing.assert_close(load_model(weights=tmp / "e")(x, return_logits=True), ref)
    # ...but timm weights from elsewhere carry none: say so when the architecture cannot be inferred.
    from safetensors.torch import save_file

    save_file(load_file(str(tmp / "c.safetensors")), str(tmp / "bare.safetensors"))
    assert main(["convert", str(tmp / "bare.safetensors"), "--to", "hf", "--out", str(tmp / "f")]) == 1
    assert not (tmp / "f").exists()


def test_convert_zoo_checkpoint_without_config_matches_the_zoo(tmp_path):
    with torch.device("meta"):
        shapes = hiera.hiera_tiny_224().state_dict()
    state = {k: torch.randn(v.shape) * 0.02 for k, v in shapes.items()}
    torch.save({"model_state": state}, tmp_path / "hiera_tiny_224.pth")
    assert main(["convert", str(tmp_path / "hiera_tiny_224.pth"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["depths"] == [1, 2, 7, 2] and config["embed_dim"] == 96


def test_convert_errors_are_one_line(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pth"), "--to", "timm", "--out", str(tmp_path / "x")]) == 1
    assert "weights file not found" in capsys.readouterr().err


def test_mae_converts_to_timm_as_its_encoder_and_says_so(tmp_path, capsys):
    torch.manual_seed(0)
    cfg = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1))
    mae = hiera.MaskedAutoencoderHiera(**cfg, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1).eval()
    mae.save_pretrained(tmp_path / "mae")
    assert main(["convert", str(tmp_path / "mae"), "--to", "timm", "--out", str(tmp_path / "t.safetensors")]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "note:" in err and "timm's Hiera has no MAE decoder: wrote its encoder only" in err
    weights = load_file(str(tmp_path / "t.safetensors"))
    assert not [k for k in weights if k.startswith(("decoder", "mask_token", "multi_scale_fusion"))]

    import timm.models.hiera as timm_hiera

    timm_net = timm_hiera.Hiera(**formats.official_config_to_timm(dict(cfg, num_classes=1000))).eval()
    report = timm_net.load_state_dict(weights, strict=False)
    # Only the classifier's final norm and head are new: every encoder weight found its place.
    assert not report.unexpected_keys and set(report.missing_keys) == {"head.fc.weight", "head.fc.bias",
                                                                       "head.norm.weight", "head.norm.bias"}
    x = torch.randn(2, 3, 64, 64)
    trunk = hiera.Hiera(**cfg).eval()
    trunk.load_state_dict(mae.state_dict(), strict=False)
    with torch.no_grad():
        ours = trunk(x, return_intermediates=True)[1][-1]  # [B, H, W, C] of the last stage
        theirs = timm_net.forward_intermediates(x, intermediates_only=True, output_fmt="NHWC")[-1]
    torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    # The converted file carries the encoder's config (no decoder arguments), so it loads back by itself.
    from safetensors import safe_open

    with safe_open(str(tmp_path / "t.safetensors"), "pt") as f:
        assert "decoder_depth" not in json.loads(f.metadata()["config"])
    back = load_model(weights=tmp_path / "t.safetensors").eval()
    torch.testing.assert_close(back(x, return_intermediates=True)[1][-1], ours)
