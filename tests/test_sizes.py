"""Any input size that tiles, position-embedding resizing, and the backbone (feature map) API."""

import pytest
import torch
from test_equivalence import assert_close, build_like_official

import hiera
from hiera import Hiera, HieraFeatures


def small(**kw):
    torch.manual_seed(0)
    cfg = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), num_classes=7)
    cfg.update(kw)
    model = Hiera(**cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def test_feature_maps_of_non_square_input_match_official_intermediates(reference_case):
    """The upstream way: a model built for 64x96. Our backbone API gives the same maps, NCHW."""
    case = reference_case("tiny_image_nonsquare")
    model = build_like_official("tiny_image_nonsquare").eval()
    x = case["inputs"]["x"]
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        strides = [64 // m.shape[2] for m in maps]
        assert strides == [4, 8, 16, 32] and [96 // m.shape[3] for m in maps] == strides
        for i, (ours, ref) in enumerate(zip(maps, case["outputs"]["intermediates"])):
            assert_close(ours, ref.permute(0, 3, 1, 2), f"stage {i} NCHW")
        nhwc = model.forward_intermediates(x, indices=[2, 0], output_fmt="NHWC")
        assert_close(nhwc[0], case["outputs"]["intermediates"][2], "stage 2 NHWC")
        assert_close(nhwc[1], case["outputs"]["intermediates"][0], "stage 0 NHWC")


def test_resized_model_at_its_own_size_is_the_original():
    model = small()
    x = torch.randn(2, 3, 64, 64)
    ref = model(x)
    model.dynamic_size = True
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    again = Hiera(**{**model.config, "input_size": (64, 64)}).eval()
    report = hiera.load_weights(again, model.state_dict())
    assert report.exact and not report.resized
    torch.testing.assert_close(again(x), ref, rtol=0, atol=0)


def test_load_time_resize_equals_on_the_fly_resize():
    model = small()
    x = torch.randn(1, 3, 96, 128)
    big = Hiera(**{**model.config, "input_size": (96, 128)}).eval()
    report = hiera.load_weights(big, model.state_dict())
    assert report.resized == ["pos_embed"] and not report.missing
    model.dynamic_size = True
    torch.testing.assert_close(big(x), model(x))
    # Both see the same pixels at the new size: the maps have the new grid.
    assert [tuple(m.shape[2:]) for m in big.forward_intermediates(x)] == [(24, 32), (12, 16), (6, 8), (3, 4)]


def test_video_pos_embed_resizes_space_and_time():
    torch.manual_seed(0)
    video = hiera.hiera_base_16x224(
        input_size=(8, 64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=3
    ).eval()
    longer = hiera.hiera_base_16x224(
        input_size=(16, 96, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=3
    ).eval()
    report = hiera.load_weights(longer, video.state_dict())
    assert sorted(report.resized) == ["pos_embed_spatial", "pos_embed_temporal"]
    x = torch.randn(1, 3, 16, 96, 64)
    video.dynamic_size = True
    torch.testing.assert_close(longer(x), video(x))
    maps = video.forward_intermediates(x)
    assert [tuple(m.shape) for m in maps] == [(1, 8, 8, 24, 16), (1, 16, 8, 12, 8), (1, 32, 8, 6, 4), (1, 64, 8, 3, 2)]


def test_masked_forward_and_random_mask_at_another_size():
    model = small()
    model.dynamic_size = True
    x = torch.randn(2, 3, 96, 64)
    mask = model.get_random_mask(x, 0.5)
    assert mask.shape == (2, 6)
    out, maps = model(x, mask=mask, return_intermediates=True)
    assert out.shape == (2, 3, 128) and maps[0].shape == (2, 3, 8, 8, 16)
    with pytest.raises(ValueError, match=r"\[2, 6\].*got \(2, 4\)"):
        model(x, mask=torch.ones(2, 4, dtype=torch.bool))


def test_sizes_that_cannot_work_say_which_can():
    model = small()
    model.dynamic_size = True
    assert model.size_multiple == (32, 32)
    with pytest.raises(ValueError, match=r"input size \(64, 80\) does not tile.*multiple of \(32, 32\)"):
        model(torch.randn(1, 3, 64, 80))


def test_features_only_backbone():
    backbone = hiera.create_model("hiera_tiny_224", features_only=True, out_indices=(1, 3))
    assert isinstance(backbone, HieraFeatures)
    assert backbone.feature_info == [
        {"num_chs": 192, "reduction": 8, "module": "blocks.2"},
        {"num_chs": 768, "reduction": 32, "module": "blocks.11"},
    ]
    feats = backbone(torch.randn(1, 3, 256, 192))
    assert [tuple(f.shape) for f in feats] == [(1, 192, 32, 24), (1, 768, 8, 6)]
    per_block = HieraFeatures(small(), out_indices=(0, -1), per_block=True, output_fmt="NHWC")
    assert [f["reduction"] for f in per_block.feature_info] == [4, 32]
    with pytest.raises(ValueError, match="out_indices"):
        HieraFeatures(small(), out_indices=(7,))
    with pytest.raises(ValueError, match="only apply with features_only"):
        hiera.create_model("hiera_tiny_224", out_indices=(1,))


def test_forward_features_and_head_compose_to_the_model():
    model = small()
    x = torch.randn(2, 3, 64, 64)
    tokens = model.forward_features(x)
    assert tokens.shape == (2, 4, 128)
    torch.testing.assert_close(model.forward_head(tokens), model(x, return_logits=True))
    assert model.forward_head(tokens, pre_logits=True).shape == (2, 128)


def test_mae_runs_at_another_size_with_resized_decoder_positions():
    torch.manual_seed(0)
    mae = hiera.MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, stages=(1, 1, 2, 1), q_pool=2,
                                       decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
    big = hiera.MaskedAutoencoderHiera(**{**mae.config, "input_size": (96, 64)})
    report = hiera.load_weights(big, mae.state_dict())
    assert sorted(report.resized) == ["decoder_pos_embed", "pos_embed"]
    mae.dynamic_size = True
    x = torch.randn(2, 3, 96, 64)
    mask = mae.get_random_mask(x, 0.5)
    assert mask.shape == (2, 6) and mae.final_grid((96, 64)) == [6, 4]
    ours, ref = mae(x, mask=mask), big(x, mask=mask)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    assert ours[1].shape == (2 * 3 * 4, 3 * 16 * 16)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = small(drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 64)
    model(x, return_logits=True).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x, return_logits=True).square().sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[n], msg=n)


def test_forward_compiles_without_graph_breaks():
    model = small()
    x = torch.randn(2, 3, 64, 64)
    for mode in ("eval", "train"):
        getattr(model, mode)()
        explained = torch._dynamo.explain(model)(x, return_intermediates=True)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(model.eval(), backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), model(x))
