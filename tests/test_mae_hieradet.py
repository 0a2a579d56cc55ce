"""MAE pretraining for SAM 2's HieraDet trunk (hiera.MaskedAutoencoderHieraDet): the masked encoder
computes what the trunk computes, attends only where the trunk's windows allow, learns on shapes
where the answer is known, and hands its trunk to a classifier and to SAM 2's layout."""

import pytest
import torch
from mae_checks import pretrain_briefly, synthetic_tensors

import hiera
from hiera.formats.read import read_any
from hiera.hieradet import HieraDet
from hiera.mae import MaskedAutoencoderHieraDet
from hiera.token_order import undo_windowing
from hiera.tools.convert import convert_checkpoint
from hiera.train.probe import heldout_mae_loss

# 64x64 inputs: 16x16 tokens, mask units of 4x4 tokens (16 px, a 4x4 grid of units). Stage 3's
# 2-token windows span 2x2 units of its 4x4 map: the case where windows cover several units but
# not the whole map; block 5 is global.
SMALL = dict(input_size=(64, 64), embed_dim=32, num_heads=1, stages=(1, 2, 3), q_pool=2, window_spec=(4, 2, 2),
             global_att_blocks=(5,), window_pos_embed_bkg_spatial_size=(4, 4))
DECODER = dict(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=2)
SAM2_T = dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2), global_att_blocks=(5, 7, 9),
              window_pos_embed_bkg_spatial_size=(7, 7))


def _maps(mae, x, mask=None):
    """The MAE encoder's stage maps; without a mask, tiled back to [B, h, w, C] maps."""
    with torch.no_grad():
        _, maps = mae.forward_tokens(x, mask, return_intermediates=True)
    if mask is not None:
        return maps
    grid = [s // 4 for s in x.shape[2:]]
    out = []
    for m in maps:
        unit = m.shape[2:4]
        shape = [g * u // mae.mask_unit_size[0] for g, u in zip(grid, unit)]
        out.append(undo_windowing(m.flatten(1, 1), shape, unit))
    return out


@pytest.mark.parametrize("kwargs, size", [
    (dict(SAM2_T, embed_dim=16), (224, 224)),  # windows of stages 3 and 4 are the whole map
    (dict(SAM2_T, embed_dim=16), (448, 224)),  # 14-token windows span 7x7 units: 2x1 windows in stages 3, 4
    (dict(SAM2_T, embed_dim=16, window_spec=(8, 4, 16, 8), stages=(1, 2, 5, 2), global_att_blocks=(4, 8)), (256, 256)),
    (SMALL, (64, 64)),
])
def test_every_unit_visible_computes_the_trunk(kwargs, size):
    """With no unit masked, the MAE's encoder (run on a list of units) gives the trunk's stage maps
    exactly, wherever the windows tile the map: the pretrained trunk is the trunk SAM 2 runs."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderHieraDet(**{**kwargs, "input_size": size}, **DECODER).eval()
    trunk = HieraDet(**{**kwargs, "input_size": size}).eval()
    trunk.load_state_dict({k: v for k, v in mae.state_dict().items() if k in trunk.state_dict()})
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = trunk.forward_intermediates(x, output_fmt="NHWC")
    got = _maps(mae, x)
    assert len(got) == len(ref)
    for stage, (g, r) in enumerate(zip(got, ref)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5, msg=f"stage {stage + 1} at {size}")


def test_a_masked_unit_is_absent_and_windows_keep_to_themselves():
    """Under a mask, each kept unit's stage maps (a) before any attention across units equal the
    trunk's on the image with the masked pixels zeroed, and (b) after attention across units depend
    only on the kept units of their own window: changing a kept unit in another window changes
    nothing, changing one in the same window does."""
    torch.manual_seed(0)
    mae = MaskedAutoencoderHieraDet(**SMALL, **DECODER).eval()
    trunk = HieraDet(**SMALL).eval()
    trunk.load_state_dict({k: v for k, v in mae.state_dict().items() if k in trunk.state_dict()})
    x = torch.randn(1, 3, 64, 64)
    # 4x4 units of 16 px; stage 3's windows are the 2x2 blocks of units {0,1,4,5}, {2,3,6,7}, ...
    kept_units = [0, 1, 4, 6, 7, 10, 13, 15]
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, kept_units] = True
    # (a) stages 1 and 2 attend within units: the trunk on the zeroed image, at the kept units.
    pixels = mask.view(1, 1, 4, 4).repeat_interleave(16, 2).repeat_interleave(16, 3)
    with torch.no_grad():
        ref = trunk.forward_intermediates(x * pixels, output_fmt="NHWC", indices=[0, 1])
    got = _maps(mae, x, mask)
    for stage in range(2):
        unit = got[stage].shape[2]
        ref_units = ref[stage].reshape(1, 4, unit, 4, unit, -1).transpose(2, 3).reshape(1, 16, unit, unit, -1)
        torch.testing.assert_close(got[stage], ref_units[:, kept_units], rtol=1e-5, atol=1e-5)

    # (b) Without the global block, stage 3 attends only in windows of 2x2 units.
    local = MaskedAutoencoderHieraDet(**dict(SMALL, global_att_blocks=()), **DECODER).eval()
    assert local._unit_groups == [0, 0, 0, 0, 2, 2]
    base = _maps(local, x, mask)[2][0]  # [K, 1, 1, C]: stage 3 has one token per unit
    other = x.clone()
    other[..., 32:48, 32:48] += 3.0  # unit 10: window {10, 11, 14, 15}
    changed = (_maps(local, other, mask)[2][0] - base).abs().flatten(1).amax(1)
    in_window = [kept_units.index(u) for u in (10, 15)]
    elsewhere = [i for i in range(len(kept_units)) if i not in in_window]
    assert changed[elsewhere].max() == 0, changed
    assert changed[in_window].min() > 1e-3, changed


def test_short_pretraining_reconstructs_held_out_images_far_better_than_the_mean():
    torch.manual_seed(0)
    pool, _ = synthetic_tensors("train", 250, seed=1)
    x_val, _ = synthetic_tensors("val", 50, seed=0)
    net = MaskedAutoencoderHieraDet(**SMALL, **DECODER)
    before = heldout_mae_loss(net, x_val)
    pretrain_briefly(net, pool, steps=150)
    after = heldout_mae_loss(net.eval(), x_val)
    assert after["baseline"] == pytest.approx(1.0, abs=0.02)  # per-patch normalised targets
    assert before["loss"] > after["baseline"], before
    assert after["loss"] < 0.7 * after["baseline"], after


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    net = MaskedAutoencoderHieraDet(**SMALL, **DECODER)
    x = torch.randn(2, 3, 64, 64)
    mask = net.get_random_mask(x, 0.5)
    grads = []
    for checkpointing in (False, True):
        net.set_grad_checkpointing(checkpointing)
        net.zero_grad()
        net(x, mask=mask)[0].backward()
        grads.append({k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(net.parameters()))
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-5, atol=1e-6, msg=k)


def test_the_trained_trunk_hands_over_to_a_classifier_and_to_sam2s_layout(tmp_path):
    torch.manual_seed(0)
    mae = MaskedAutoencoderHieraDet(**SMALL, **DECODER)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(torch.randn_like(p))  # weights no initialiser would give
    path = tmp_path / "mae.pt"
    torch.save({"model": mae.state_dict(), "config": mae.config, "class": type(mae).__name__}, path)

    # A classifier from the zoo-style loader: every trunk weight taken, only the head is new.
    clf = hiera.load_model(weights=str(path), num_classes=4)
    assert type(clf) is HieraDet and clf.num_classes == 4
    assert set(clf.load_report.missing) == {"norm.weight", "norm.bias", "head.projection.weight",
                                            "head.projection.bias"}
    trunk_keys = [k for k in clf.state_dict() if not k.startswith(("head.", "norm."))]
    assert all(torch.equal(clf.state_dict()[k], mae.state_dict()[k]) for k in trunk_keys)
    # The MAE itself comes back from its checkpoint with mae=True.
    back = hiera.load_model(weights=str(path), mae=True)
    assert type(back) is MaskedAutoencoderHieraDet
    x = torch.randn(2, 3, 64, 64)
    keep = mae.get_random_mask(x, 0.6)
    torch.testing.assert_close(back.eval()(x, mask=keep)[0], mae.eval()(x, mask=keep)[0])

    # SAM 2's layout: the trunk under image_encoder.trunk., nothing of the decoder.
    out = convert_checkpoint(path, tmp_path / "sam2.pt", "sam2")
    sam2 = torch.load(out, map_location="cpu", weights_only=True)["model"]
    assert sorted(sam2) == sorted("image_encoder.trunk." + k for k in trunk_keys)
    assert all(torch.equal(sam2["image_encoder.trunk." + k], mae.state_dict()[k]) for k in trunk_keys)
    # (A SAM 2 file has no room for a config: a custom trunk is named by building it.)
    state, _, cls_name = read_any(out)
    assert cls_name == "HieraDet"
    trunk = HieraDet(**SMALL)
    assert not hiera.load_weights(trunk, state, strict=True).missing


def test_zoo_maes_have_the_trunks_weights_and_tile_their_windows():
    for size in ("tiny", "small", "base_plus", "large"):
        with torch.device("meta"):
            mae, trunk = hiera.create_model(f"mae_sam2_hiera_{size}"), hiera.create_model(f"sam2_hiera_{size}")
        shapes = {k: v.shape for k, v in trunk.state_dict().items()}
        assert {k: v.shape for k, v in mae.state_dict().items() if k in shapes} == shapes
        # Every window tiles the map at the MAE's size (see test_every_unit_visible_computes_the_trunk).
        side = mae.input_size[0] // 4
        for blk in mae.blocks:
            assert blk.window_size == 0 or side % blk.window_size == 0, (size, blk.window_size, side)
            side //= blk.q_stride[0] if blk.q_stride else 1
        assert mae.pred_stride == 32 and mae.num_mask_units == (mae.input_size[0] // 32) ** 2


def test_windows_that_split_mask_units_are_refused():
    # Block 2 attends in 3-token windows of stage 2, whose mask units are 2x2 tokens.
    bad = dict(SMALL, window_spec=(4, 3, 2), global_att_blocks=(3,))
    HieraDet(**bad)  # the trunk is fine: only masking needs windows made of whole units
    with pytest.raises(ValueError, match=r"block 2 attends within 3-token windows where a mask unit is \(2, 2\)"):
        MaskedAutoencoderHieraDet(**bad, **DECODER)
    with pytest.raises(ValueError, match="decoder_num_heads"):
        MaskedAutoencoderHieraDet(**SMALL, decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=3)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(2, 15, dtype=torch.bool), r"mask must have shape \[B, #mask units\] = \[2, 16\]"),
    (torch.ones(2, 16), "mask must be a bool tensor"),
    (torch.tensor([[True] * 8 + [False] * 8, [True] * 7 + [False] * 9]), "same number of mask units"),
])
def test_bad_masks_and_sizes_get_clear_errors(mask, message):
    mae = MaskedAutoencoderHieraDet(**SMALL, **DECODER)
    with pytest.raises((ValueError, TypeError), match=message):
        mae(torch.randn(2, 3, 64, 64), mask=mask)
    with pytest.raises(ValueError, match="does not tile"):
        mae(torch.randn(2, 3, 64, 60))
    with pytest.raises(ValueError, match="mask_ratio"):
        mae(torch.randn(2, 3, 64, 64), mask_ratio=1.0)


def test_the_commands_pretrain_show_and_hand_over_a_hieradet_mae(tmp_path, capsys):
    """`hiera pretrain` of a custom HieraDet MAE, `hiera mae-viz` of its checkpoint (and its refusal of
    a trunk without decoder), `hiera finetune --init` of a HieraDet classifier from it, `hiera evaluate`."""
    import json

    from hiera.cli import main
    from hiera.data.synthetic import make_dataset

    data = make_dataset(tmp_path / "data", 4, 2, size=64, seed=0, unlabelled_extra=64)
    common = ["--workers", "0", "--threads", "1", "--no-progress"]
    mae_out = tmp_path / "mae"
    assert main(["pretrain", "--data", str(data.unlabelled_dir), "--model", "custom",
                 "--config", json.dumps(dict(SMALL, **DECODER)), "--epochs", "2", "--batch-size", "16",
                 "--out", str(mae_out), *common]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["step"] > 0 and 0 < last["loss"] < 10
    state = torch.load(mae_out / "last.pt", weights_only=True)
    assert state["class"] == "MaskedAutoencoderHieraDet"

    assert main(["mae-viz", str(next(data.val_dir.rglob("*.png"))), "--weights", str(mae_out / "last.pt"),
                 "--out", str(tmp_path / "viz")]) == 0
    assert list((tmp_path / "viz").glob("*.png"))
    capsys.readouterr()
    trunk = HieraDet(**SMALL)
    torch.save({"model": trunk.state_dict(), "config": trunk.config, "class": "HieraDet"}, tmp_path / "trunk.pt")
    assert main(["mae-viz", str(next(data.val_dir.rglob("*.png"))), "--weights", str(tmp_path / "trunk.pt"),
                 "--out", str(tmp_path / "viz2")]) == 1
    err = capsys.readouterr().err
    assert "holds no MAE decoder (a trunk's weights)" in err and len(err.strip().splitlines()) == 1

    ft_out = tmp_path / "ft"
    assert main(["finetune", "--data", str(data.train_dir), "--val", str(data.val_dir), "--model", "custom",
                 "--config", json.dumps(SMALL), "--init", str(mae_out / "last.pt"), "--epochs", "1",
                 "--batch-size", "16", "--out", str(ft_out), *common]) == 0
    tuned = torch.load(ft_out / "last.pt", weights_only=True)
    assert tuned["class"] == "HieraDet" and tuned["model"]["head.projection.weight"].shape[0] == len(data.classes)
    capsys.readouterr()
    assert main(["evaluate", "--data", str(data.val_dir), "--weights", str(ft_out / "last.pt"), "--workers", "0",
                 "--json", str(tmp_path / "eval.json")]) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["n"] == 2 * len(data.classes)
