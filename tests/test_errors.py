"""Bad input gets a clear ValueError / TypeError naming what is expected."""

import pytest
import torch

import hiera
from hiera import CheckpointError, Hiera, MaskedAutoencoderHiera


@pytest.fixture(scope="module")
def model():
    return Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=4).eval()


@pytest.fixture(scope="module")
def video():
    return Hiera(
        input_size=(4, 32, 32), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=3,
        q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
        patch_padding=(1, 3, 3), sep_pos_embed=True,
    ).eval()


def test_wrong_number_of_channels(model):
    with pytest.raises(ValueError, match=r"expected 3 input channels.*got 1"):
        model(torch.randn(1, 1, 64, 64))


def test_wrong_number_of_dims(model, video):
    with pytest.raises(ValueError, match=r"4-D input \[B, C, H, W\].*got shape \(3, 64, 64\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match=r"5-D input \[B, C, T, H, W\]"):
        video(torch.randn(1, 3, 32, 32))


def test_spatial_size_mismatch(model):
    with pytest.raises(ValueError, match=r"expected spatial size \(64, 64\).*got \(96, 64\)"):
        model(torch.randn(1, 3, 96, 64))


def test_integer_input(model):
    with pytest.raises(TypeError, match="floating point"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


def test_input_dtype_must_match_the_model_outside_autocast(model):
    x = torch.randn(1, 3, 64, 64)
    for dtype in (torch.float16, torch.bfloat16, torch.float64):
        with pytest.raises(TypeError, match=rf"input dtype {dtype} does not match the model's torch.float32.*autocast"):
            model(x.to(dtype))
        with pytest.raises(RuntimeError):  # what PyTorch raised for it, and so the official package
            model(x.to(dtype))
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts: allowed
        torch.testing.assert_close(model(x.bfloat16()).float(), model(x).float(), rtol=0.05, atol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_input_on_another_device_than_the_model(model):
    with pytest.raises(RuntimeError, match=r"input is on cuda:0 but the model is on cpu"):
        model(torch.randn(1, 3, 64, 64, device="cuda"))


def test_mask_shape_dtype_and_counts(model):
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(ValueError, match=r"mask must have shape \[B, #mask units\] = \[2, 4\].*got \(2, 5\)"):
        model(x, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool tensor.*float32"):
        model(x, mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"same number of mask units, got \[2, 1\]"):
        model(x, mask=torch.tensor([[True, True, False, False], [True, False, False, False]]))
    with pytest.raises(ValueError, match="keeps no mask unit"):
        model(x, mask=torch.zeros(2, 4, dtype=torch.bool))


def test_mae_mask_ratio_range():
    """Every ratio that cannot work is refused where it enters, with the range and the unit count:
    out of [0, 1) (it used to wrap around), one that keeps no unit (it died in a reshape), and for
    the MAE one that masks none (its loss over no unit was NaN)."""
    mae = MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=8, stages=(1, 1, 1, 1), q_pool=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    x = torch.randn(1, 3, 64, 64)
    for bad in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
            mae(x, mask_ratio=bad)
    with pytest.raises(TypeError, match="must be a number"):
        mae(x, mask_ratio="0.6")
    assert mae.num_mask_units == 4
    with pytest.raises(ValueError, match="keeps no mask unit of 4: it must be at most 0.75"):
        mae(x, mask_ratio=0.8)
    with pytest.raises(ValueError, match="masks no mask unit of 4.*must be above 0"):
        mae(x, mask_ratio=0.0)
    assert mae.check_mask_ratio(0.75) == 1 and mae.check_mask_ratio(0.01) == 3
    loss = mae(x, mask_ratio=0.75)[0]
    assert torch.isfinite(loss)
    big = hiera.mae_hiera_tiny_224()  # 49 units: 0.98 keeps none
    with pytest.raises(ValueError, match="keeps no mask unit of 49: it must be at most 0.9795"):
        big.check_mask_ratio(0.98)
    assert big.check_mask_ratio(0.9795) == 1
    classifier = Hiera(input_size=(64, 64), embed_dim=8, stages=(1, 1, 1, 1), q_pool=2)
    assert classifier.get_random_mask(x, 0.0).all()  # a classifier may keep every unit


@pytest.mark.parametrize("kwargs, message", [
    ({"num_classes": -1}, "num_classes must be an integer >= 0"),
    ({"num_classes": 2.5}, "num_classes must be an integer >= 0"),
    ({"input_size": (0, 224)}, "input_size must hold integers >= 1"),
    ({"input_size": (-224, 224)}, "input_size must hold integers >= 1"),
    ({"embed_dim": 0}, "embed_dim must be an integer >= 1"),
    ({"num_heads": 0}, "num_heads must be an integer >= 1"),
    ({"num_heads": 5}, "stage 1 would have 96 channels in 5 heads"),
    ({"num_heads": 3, "head_mul": 1.5}, "stage 4 would have 768 channels in 9 heads"),
    ({"stages": (2, 0, 3, 1)}, "stages must hold integers >= 1"),
    ({"q_stride": (0, 2)}, "q_stride must hold integers >= 1"),
    ({"patch_stride": (4, 0)}, "patch_stride must hold integers >= 1"),
    ({"in_chans": 0}, "in_chans must be an integer >= 1"),
    ({"mlp_ratio": 0}, "mlp_ratio must be a positive number"),
    ({"dim_mul": -2.0}, "dim_mul must be a positive number"),
    ({"drop_path_rate": 1.0}, r"drop_path_rate must be in \[0, 1\)"),
    ({"head_dropout": -0.5}, r"head_dropout must be in \[0, 1\)"),
])
def test_constructor_arguments_that_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Hiera(**kwargs)
    if "num_classes" not in kwargs:
        with pytest.raises(ValueError, match=message):
            MaskedAutoencoderHiera(**kwargs)


@pytest.mark.parametrize("kwargs, message", [
    ({"decoder_embed_dim": 0}, "decoder_embed_dim must be an integer >= 1"),
    ({"decoder_num_heads": 0}, "decoder_num_heads must be an integer >= 1"),
    ({"decoder_depth": -1}, "decoder_depth must be an integer >= 0"),
    ({"decoder_embed_dim": 100, "decoder_num_heads": 16}, "must be divisible by decoder_num_heads"),
])
def test_mae_decoder_arguments_that_cannot_work(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskedAutoencoderHiera(**kwargs)


def test_reset_classifier_refuses_a_negative_or_fractional_class_count(model):
    for bad in (-3, 1.5, "10"):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
            model.reset_classifier(bad)
    with pytest.raises(ValueError, match=r"head_dropout must be in \[0, 1\)"):
        model.reset_classifier(3, head_dropout=1.0)
    assert model.head.projection.out_features == 4  # untouched by the refused calls


def test_empty_batch_runs_unmasked_and_is_refused_masked(model, video):
    """An empty batch gives empty outputs of the right shapes (classifier, feature maps, video,
    training mode); a masked forward and the MAE, which count kept units per row, say why not."""
    with torch.inference_mode():
        assert model(torch.randn(0, 3, 64, 64)).shape == (0, 4)
        out, maps = model(torch.randn(0, 3, 64, 64), return_intermediates=True)
        assert [tuple(m.shape) for m in maps] == [(0, 16, 16, 16), (0, 8, 8, 32), (0, 4, 4, 64), (0, 2, 2, 128)]
        assert video(torch.randn(0, 3, 4, 32, 32)).shape == (0, 3)
    model.train()
    try:
        assert model(torch.randn(0, 3, 64, 64, requires_grad=True)).shape == (0, 4)
    finally:
        model.eval()
    with pytest.raises(ValueError, match="masked forward needs at least one sample"):
        model(torch.randn(0, 3, 64, 64), mask=torch.ones(0, 4, dtype=torch.bool))
    mae = MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=8, stages=(1, 1, 1, 1), q_pool=2,
                                 decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    with pytest.raises(ValueError, match="MAE needs at least one sample"):
        mae(torch.randn(0, 3, 64, 64))


def test_config_that_does_not_tile():
    with pytest.raises(ValueError, match="does not tile"):
        Hiera(input_size=(100, 100))
    with pytest.raises(ValueError, match="q_stride=.*has 2 dims but input_size"):
        Hiera(input_size=(16, 224, 224))
    with pytest.raises(ValueError, match="q_pool=4 must be smaller"):
        Hiera(q_pool=4)


def test_unknown_model_and_checkpoint_names_list_the_choices():
    with pytest.raises(ValueError, match="unknown model 'hiera_giant_224'.*hiera_base_224"):
        hiera.create_model("hiera_giant_224")
    with pytest.raises(ValueError, match=r"unknown checkpoint 'in22k' for hiera_tiny_224.*mae_in1k_ft_in1k"):
        hiera.hiera_tiny_224(pretrained=True, checkpoint="in22k")
    # Code written against the official package caught RuntimeError: still works.
    with pytest.raises(RuntimeError):
        hiera.mae_hiera_tiny_224(pretrained=True, checkpoint="mae_in1k_ft_in1k")


def test_missing_and_corrupt_weights_files(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        hiera.read_checkpoint(tmp_path / "nope.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match=r"could not read weights file .*bad\.pth"):
        hiera.hiera_tiny_224(pretrained=True, checkpoint=str(bad))
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(CheckpointError, match="could not read weights file"):
        hiera.read_checkpoint(truncated)
    odd = tmp_path / "odd.pth"
    torch.save({"epoch": 3, "args": "x"}, odd)
    with pytest.raises(CheckpointError, match="does not hold a state dict"):
        hiera.read_checkpoint(odd)


def test_checkpoint_of_another_size_says_so(tmp_path):
    small = Hiera(input_size=(64, 64), embed_dim=16, stages=(1, 1, 1, 1))
    path = tmp_path / "small.pth"
    torch.save({"model_state": small.state_dict()}, path)
    with pytest.raises(CheckpointError, match="differ in shape"):
        hiera.load_weights(Hiera(input_size=(64, 64), embed_dim=32, stages=(1, 1, 1, 1)),
                           torch.load(path, weights_only=True), source="small.pth")
