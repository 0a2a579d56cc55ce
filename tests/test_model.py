"""Behaviour of the architecture itself, checked against independent formulations."""

import copy
import io
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

import hiera
from hiera import Hiera, MaskedAutoencoderHiera
from hiera.layers import do_pool
from hiera.pos_embed import sincos_pos_embed
from hiera.token_order import Reroll, Unroll, undo_windowing, unroll_positions


def small_image(**kw):
    cfg = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), num_classes=7)
    cfg.update(kw)
    return Hiera(**cfg)


def small_video(**kw):
    cfg = dict(
        input_size=(8, 64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=5,
        q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
        patch_padding=(1, 3, 3), sep_pos_embed=True,
    )
    cfg.update(kw)
    return Hiera(**cfg)


# ---------------------------------------------------------------- token order
@pytest.mark.parametrize("size,strides", [((16, 16), (2, 2)), ((4, 16, 16), (1, 2, 2)), ((8, 18), (2, 3))])
def test_unroll_makes_max_pool_a_view(size, strides):
    """After unrolling, pooling the leading stride block equals a max-pool of the spatial map."""
    torch.manual_seed(0)
    channels = 3
    schedule = [strides] * 2
    x = torch.randn(2, math.prod(size), channels)
    order = unroll_positions(size, schedule)
    assert sorted(order.tolist()) == list(range(math.prod(size)))  # a permutation
    pooled = do_pool(x[:, order], stride=math.prod(strides))
    # Reference: max-pool in raster space, then unroll the pooled grid with the remaining schedule.
    spatial = x.transpose(1, 2).reshape(2, channels, *size)
    pool = F.max_pool3d if len(size) == 3 else F.max_pool2d
    ref = pool(spatial, kernel_size=strides, stride=strides).flatten(2).transpose(1, 2)
    small = [s // t for s, t in zip(size, strides)]
    assert torch.equal(pooled, ref[:, unroll_positions(small, schedule[1:])])


def test_unroll_groups_mask_units_with_stride_num_units():
    """Token n of the unrolled sequence belongs to mask unit n % #units (units in raster order)."""
    size, unit = (16, 24), (8, 8)
    order = unroll_positions(size, [(2, 2)] * 3)
    units_per_row = size[1] // unit[1]
    num_units = (size[0] // unit[0]) * units_per_row
    for n, raster in enumerate(order.tolist()):
        y, x = divmod(raster, size[1])
        assert (y // unit[0]) * units_per_row + x // unit[1] == n % num_units


def test_unroll_then_reroll_is_identity_and_undo_windowing_tiles():
    unroll = Unroll((32, 32), (4, 4), [(2, 2)] * 3)
    reroll = Reroll((32, 32), (4, 4), [(2, 2)] * 3, stage_ends=[0, 1, 2, 3], q_pool=3)
    x = torch.randn(2, 64, 5)
    assert torch.equal(reroll(unroll(x), 0), x.view(2, 8, 8, 5))
    windows = torch.randn(2, 4, 3, 5, 7)  # 2x2 units of 3x5 tokens
    out = undo_windowing(windows, (6, 10), (3, 5))
    assert torch.equal(out[:, 3:6, 5:10], windows[:, 3])
    assert torch.equal(out[:, 0:3, 5:10], windows[:, 1])


# ---------------------------------------------------------------- attention
def test_mask_unit_attention_is_attention_within_each_window():
    """Stage-1 mask-unit attention equals plain attention run separately on each 8x8 window."""
    torch.manual_seed(0)
    model = small_image(input_size=(64, 64)).eval()
    block = model.blocks[0]
    attn = block.attn
    assert attn.use_mask_unit_attn and attn.q_stride == 1
    x = torch.randn(1, 16 * 16, 16)
    out = attn(model.unroll(x))
    out_spatial = model.reroll(out, 0)  # [1, 16, 16, C]
    grid = x.view(1, 16, 16, 16)
    for wy in range(2):
        for wx in range(2):
            win = grid[:, wy * 8:(wy + 1) * 8, wx * 8:(wx + 1) * 8].reshape(1, 64, 16)
            q, k, v = attn.qkv(win).view(1, 64, 3, 1, 16).permute(2, 0, 3, 1, 4)
            ref = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(1, 64, 16))
            got = out_spatial[:, wy * 8:(wy + 1) * 8, wx * 8:(wx + 1) * 8].reshape(1, 64, 16)
            torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- outputs
def test_eval_gives_probabilities_and_logits_on_request():
    torch.manual_seed(0)
    model = small_image().eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        probs = model(x)
        logits = model(x, return_logits=True)
        assert torch.allclose(probs.sum(-1), torch.ones(3))
        torch.testing.assert_close(logits.softmax(-1), probs)
        torch.testing.assert_close(model.forward_logits(x), logits)
        torch.testing.assert_close(model.forward_head(model.forward_tokens(x)[0]), logits)
        model.head.act_func = None
        torch.testing.assert_close(model(x), logits)
    model.train()
    torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-6)


def test_intermediates_are_spatial_maps_of_each_stage():
    model = small_image().eval()
    x = torch.randn(2, 3, 64, 64)
    _, maps = model(x, return_intermediates=True)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 16), (2, 8, 8, 32), (2, 4, 4, 64), (2, 2, 2, 128)]
    video = small_video().eval()
    _, maps = video(torch.randn(1, 3, 8, 64, 64), return_intermediates=True)
    assert [tuple(m.shape) for m in maps] == [(1, 4, 16, 16, 16), (1, 4, 8, 8, 32), (1, 4, 4, 4, 64), (1, 4, 2, 2, 128)]


def test_masked_forward_only_sees_kept_units():
    """Changing pixels of a dropped mask unit changes nothing; changing a kept one does."""
    torch.manual_seed(0)
    model = small_image(input_size=(64, 64)).eval()  # 2x2 mask units of 32x32 pixels
    x = torch.randn(1, 3, 64, 64)
    mask = torch.tensor([[True, False, False, True]])
    out, maps = model(x, mask=mask, return_intermediates=True)
    assert out.shape == (1, 2 * 1, 128) and maps[0].shape == (1, 2, 8, 8, 16)
    y = x.clone()
    y[..., 0:32, 32:64] += 5  # unit 1: dropped
    torch.testing.assert_close(model(y, mask=mask), out)
    y = x.clone()
    y[..., 32:64, 32:64] += 5  # unit 3: kept
    assert not torch.allclose(model(y, mask=mask), out)


def test_random_mask_keeps_same_count_per_row():
    model = small_image(input_size=(128, 128))
    mask = model.get_random_mask(torch.zeros(4, 3, 128, 128), 0.6)
    assert mask.dtype == torch.bool and mask.shape == (4, 16)
    assert mask.sum(1).tolist() == [int(16 * 0.4)] * 4


def test_drop_path_is_active_in_training_only():
    torch.manual_seed(0)
    model = small_image(drop_path_rate=0.5)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    torch.testing.assert_close(model(x), model(x))


def test_mae_loss_is_on_masked_tokens_only():
    torch.manual_seed(0)
    mae = MaskedAutoencoderHiera(
        input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_pool=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
    )
    x = torch.randn(2, 3, 64, 64)
    mask = torch.tensor([[True, False, False, False], [False, False, True, False]])
    loss, preds, labels, out_mask = mae(x, mask=mask)
    assert torch.equal(out_mask, mask)
    # 3 masked units of 2x2 prediction tokens (16 px each) per image.
    assert preds.shape == labels.shape == (2 * 3 * 4, 3 * 16 * 16)
    torch.testing.assert_close(loss, ((preds - labels) ** 2).mean())
    torch.testing.assert_close(labels.mean(-1), torch.zeros(24), atol=1e-5, rtol=0)
    loss.backward()
    assert mae.mask_token.grad is not None and mae.mask_token.grad.abs().sum() > 0


# ---------------------------------------------------------------- plumbing
def test_model_pickles_and_deepcopies():
    torch.manual_seed(0)
    model = small_image().eval()
    x = torch.randn(1, 3, 64, 64)
    ref = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)  # full-module pickling, as people do with torch.save(model)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(clone(x), ref)
    mae = copy.deepcopy(MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, stages=(1, 1, 2, 1), q_pool=2))
    assert isinstance(mae, MaskedAutoencoderHiera)


@pytest.mark.parametrize("load", ["to_empty", "assign"])
def test_meta_device_construction_then_loading(load):
    """Built on the meta device (no memory, no init), then materialised by ``to_empty()`` +
    ``load_state_dict`` or by ``load_state_dict(assign=True)``: the token-order index tables, which
    are not in the state dict, are rebuilt, so the outputs are the original model's."""
    torch.manual_seed(0)
    kwargs = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=4)
    for cls, extra in ((Hiera, {}), (MaskedAutoencoderHiera, dict(decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1))):
        reference = cls(**kwargs, **extra).eval()
        with torch.device("meta"):
            model = cls(**kwargs, **extra)
        if load == "to_empty":
            model = model.to_empty(device="cpu")
            model.load_state_dict(reference.state_dict())
        else:
            model.load_state_dict(reference.state_dict(), assign=True)
        model.eval()
        for name, buf in reference.named_buffers():
            assert torch.equal(model.get_buffer(name), buf), name
        x = torch.randn(2, 3, 64, 64)
        with torch.inference_mode():
            if cls is Hiera:
                out, maps = model(x, return_intermediates=True)
                want, want_maps = reference(x, return_intermediates=True)
                torch.testing.assert_close(maps[-1], want_maps[-1])
            else:
                mask = reference.get_random_mask(x, 0.6)
                out, want = model(x, mask=mask)[0], reference(x, mask=mask)[0]
        torch.testing.assert_close(out, want)


def test_config_round_trip_and_explicit_arguments_win():
    model = small_image(head_mul=1.0)
    assert model.config["head_mul"] == 1.0 and model.config["input_size"] == (64, 64)
    again = Hiera(config=model.config)
    assert again.config == model.config
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    other = Hiera(config=model.config, num_classes=3)
    assert other.head.projection.out_features == 3 and other.config["num_classes"] == 3
    with pytest.raises(TypeError, match="unexpected arguments"):
        Hiera(embed_dims=8)


def test_same_seed_same_weights():
    torch.manual_seed(123)
    a = small_image().state_dict()
    torch.manual_seed(123)
    b = small_image().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_constructors_match_the_official_list():
    names = [f"hiera_{s}_224" for s in ("tiny", "small", "base", "base_plus", "large", "huge")]
    names += [f"hiera_{s}_16x224" for s in ("base", "base_plus", "large", "huge")]
    names += ["mae_" + n for n in names]
    for name in names:
        fn = getattr(hiera, name)
        assert callable(fn) and fn.default in fn.checkpoints
        assert all(url.startswith("https://dl.fbaipublicfiles.com/hiera/") for url in fn.checkpoints.values())
    assert set(names) <= set(hiera.list_models())
    assert {"hiera_small_abswin_256", "hiera_base_abswin_256"} <= set(hiera.list_models())


def test_reset_classifier_gives_a_fresh_head_and_updates_config():
    model = small_image()
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.")}
    model.reset_classifier(3)
    assert model.head.projection.weight.shape == (3, 128) and model.config["num_classes"] == 3
    assert model.head.projection.weight.abs().max() < 0.01  # head_init_scale applied
    assert all(torch.equal(model.state_dict()[k], v) for k, v in trunk.items())
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3)
    assert Hiera(config=model.config).head.projection.out_features == 3


def test_sincos_pos_embed_encodes_each_axis_and_tells_every_position_apart():
    grid = (3, 4, 5)
    emb = sincos_pos_embed(grid, 62)[0]  # 62 = 3 axes x 2 x 10 frequencies + 2 zero channels
    assert emb.shape == (60, 62) and emb.dtype == torch.float32
    assert torch.equal(emb[:, 60:], torch.zeros(60, 2))
    by_axis = emb[:, :60].reshape(*grid, 3, 20)  # [t, h, w, axis, sin+cos]
    for axis in range(3):  # axis a's channels depend on the a-th coordinate alone
        part = by_axis[..., axis, :].movedim(axis, 0)
        assert torch.allclose(part, part[:, :1, :1].expand_as(part))
    assert torch.allclose(by_axis[..., 0, :10] ** 2 + by_axis[..., 0, 10:] ** 2, torch.ones(*grid, 10))
    distances = torch.cdist(emb, emb) + torch.eye(60) * 1e3
    assert distances.min() > 0.1  # no two positions share an embedding
    # A neighbour is more alike than any position 4 or more steps away.
    row = sincos_pos_embed((16,), 32)[0]
    similarity = row @ row[0]
    assert similarity[1] > similarity[4:].max() and torch.all(similarity[1:4] < similarity[:3])
    with pytest.raises(ValueError, match="at least 6"):
        sincos_pos_embed(grid, 5)


def test_sincos_pos_embed_init_starts_every_position_embedding_from_the_grid():
    model = small_image(pos_embed_init="sincos")
    torch.testing.assert_close(model.pos_embed, sincos_pos_embed(model.tokens_spatial_shape, model.pos_embed.shape[-1]))
    # An init, not an architecture: config.json stays loadable by the official package.
    assert "pos_embed_init" not in model.config
    assert Hiera(config=model.config).pos_embed.std() < 0.05  # the official init: small random values
    mae = MaskedAutoencoderHiera(config=model.config, pos_embed_init="sincos")
    torch.testing.assert_close(mae.decoder_pos_embed, sincos_pos_embed(mae.tokens_spatial_shape_final,
                                                                       mae.decoder_pos_embed.shape[-1]))
    video = Hiera(input_size=(4, 32, 32), embed_dim=16, num_heads=1, stages=(1, 1), q_pool=1, q_stride=(1, 2, 2),
                  mask_unit_size=(1, 4, 4), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
                  sep_pos_embed=True, pos_embed_init="sincos")
    torch.testing.assert_close(video.pos_embed_spatial, sincos_pos_embed((8, 8), 16))
    torch.testing.assert_close(video.pos_embed_temporal, sincos_pos_embed((2,), 16))
    abswin = hiera.zoo.create_model("hiera_small_abswin_256", pos_embed_init="sincos")
    want = sincos_pos_embed(abswin.pos_embed.shape[2:], abswin.pos_embed.shape[1])
    torch.testing.assert_close(abswin.pos_embed.flatten(2).transpose(1, 2), want)
    with pytest.raises(ValueError, match="pos_embed_init must be one of"):
        small_image(pos_embed_init="sin-cos")
