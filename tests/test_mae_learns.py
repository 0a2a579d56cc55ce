"""MAE checked the way the MAE literature checks it, on shapes where the answer is known:
held-out reconstruction against the predict-the-mean baseline, a linear probe against the same
encoder untrained, and the handover of every encoder weight to a classifier."""

import math

import numpy as np
import pytest
import torch
from mae_checks import pretrain_briefly, synthetic_tensors

import hiera
from hiera.data.synthetic import CLASSES
from hiera.mae import MaskedAutoencoderHiera
from hiera.model import Hiera
from hiera.train.probe import encoder_features, heldout_mae_loss, linear_probe, per_class_subset, shared_component

SMALL = dict(input_size=(64, 64), embed_dim=48, num_heads=2, stages=(1, 2, 3), q_pool=2, mask_unit_size=(4, 4),
             mask_unit_attn=(True, False, False))
DECODER = dict(decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4)


@pytest.fixture(scope="module")
def pretrained():
    """A short MAE pretraining on an unlabelled pool (other images than the labelled ones):
    (untrained copy, pretrained model, labelled train, held-out val)."""
    torch.manual_seed(0)
    pool, _ = synthetic_tensors("train", 250, seed=1)  # 2000 images, none of them in the probe's sets
    net = MaskedAutoencoderHiera(**SMALL, **DECODER)
    untrained = MaskedAutoencoderHiera(**SMALL, **DECODER)
    untrained.load_state_dict(net.state_dict())
    pretrain_briefly(net, pool, steps=600, flip=True)
    return untrained.eval(), net.eval(), synthetic_tensors("train", 200, seed=0), synthetic_tensors("val", 50, seed=0)


def test_pretraining_reconstructs_held_out_images_far_better_than_the_mean(pretrained):
    untrained, net, _, (x_val, _) = pretrained
    before, after = heldout_mae_loss(untrained, x_val), heldout_mae_loss(net, x_val)
    assert after["baseline"] == pytest.approx(1.0, abs=0.02)  # per-patch normalised targets: unit variance
    assert after["loss"] < 0.7 * after["baseline"], after
    assert before["loss"] > after["baseline"], before  # untrained predictions are worse than the mean


def test_linear_probe_of_the_pretrained_encoder_beats_the_untrained_one(pretrained):
    untrained, net, (x, y), (xv, yv) = pretrained
    acc = {}
    for name, model in (("untrained", untrained), ("mae", net)):
        acc[name] = linear_probe(encoder_features(model, x), y, encoder_features(model, xv), yv)
    chance = 100 / len(CLASSES)
    assert acc["untrained"] > chance  # random features are not useless: the bar MAE must clear
    assert acc["mae"] > acc["untrained"] + 3, acc


def test_mae_checkpoint_hands_every_encoder_weight_to_the_classifier(tmp_path):
    from hiera.train.commands import _init_weights

    torch.manual_seed(0)
    mae = MaskedAutoencoderHiera(**SMALL, **DECODER)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(torch.randn_like(p))  # weights no initialiser would give
    path = tmp_path / "mae.pt"
    torch.save({"model": mae.state_dict()}, path)
    clf = Hiera(**SMALL, num_classes=len(CLASSES))
    _init_weights(clf, str(path), strict=False)
    mae_state, clf_state = mae.state_dict(), clf.state_dict()
    encoder = [k for k in clf_state if not k.startswith(("head.", "norm."))]
    assert encoder and all(torch.equal(clf_state[k], mae_state[k]) for k in encoder)
    # The classifier's trunk computes what the MAE encoder computes on an unmasked image.
    x = torch.randn(2, 3, 64, 64)
    keep = torch.ones(2, mae.num_mask_units, dtype=torch.bool)
    with torch.no_grad():
        ours, _ = clf.forward_tokens(x)
        theirs, _ = mae.forward_tokens(x, keep)
    torch.testing.assert_close(ours, theirs)


ABSWIN = dict(SMALL, abs_win_pos_embed=True, global_pos_size=(4, 4))  # a window embedding per 4x4 mask unit


def test_abswin_mae_learns_and_hands_its_encoder_to_the_abswin_classifier():
    """The "Window Attention is Bugged" position embedding (a global one interpolated, a window one
    tiled once per mask unit) under MAE: a short pretraining reconstructs held-out images far better
    than the mean, and the zoo's abswin MAE hands every encoder weight to the abswin classifier."""
    torch.manual_seed(0)
    pool, _ = synthetic_tensors("train", 250, seed=1)
    x_val, _ = synthetic_tensors("val", 50, seed=0)
    net = MaskedAutoencoderHiera(**ABSWIN, **DECODER)
    assert net.pos_embed_win.shape[-2:] == SMALL["mask_unit_size"]
    before = heldout_mae_loss(net, x_val)
    pretrain_briefly(net, pool, steps=150)
    after = heldout_mae_loss(net.eval(), x_val)
    assert before["loss"] > after["baseline"] and after["loss"] < 0.7 * after["baseline"], (before, after)

    with torch.device("meta"):
        mae, clf = hiera.create_model("mae_hiera_small_abswin_256"), hiera.create_model("hiera_small_abswin_256")
    mae_state, clf_state = mae.state_dict(), clf.state_dict()
    encoder = [k for k in clf_state if not k.startswith(("head.", "norm."))]
    assert {k: v.shape for k, v in mae_state.items() if k in encoder} == {k: clf_state[k].shape for k in encoder}


def test_mask_units_that_the_token_order_would_split_are_refused():
    bad = dict(SMALL, q_pool=1, mask_unit_size=(2, 2))  # 3 stages unroll by 4: a 2x2 unit is split
    with pytest.raises(ValueError, match=r"masking needs mask_unit_size=\(2, 2\) to be a multiple of"):
        MaskedAutoencoderHiera(**bad, **DECODER)
    clf = Hiera(**bad, num_classes=3)  # the classifier builds: without a mask its windows are right
    assert clf(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_linear_probe_fits_separable_features_and_refuses_broken_ones():
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(4).repeat(50)
    centres = torch.randn(4, 16, generator=gen) * 3
    x = centres[y] + torch.randn(200, 16, generator=gen)
    assert linear_probe(x[:120], y[:120], x[120:], y[120:]) > 95
    assert linear_probe(torch.randn(120, 16, generator=gen), y[:120], x[120:], y[120:]) < 50  # noise: near chance
    bad = x.clone()
    bad[3, 2] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        linear_probe(bad[:120], y[:120], x[120:], y[120:])
    with pytest.raises(ValueError, match="same C"):
        linear_probe(x[:120, :8], y[:120], x[120:], y[120:])


def test_per_class_subset_takes_the_same_number_of_every_class():
    y = torch.tensor(np.repeat(np.arange(3), [5, 7, 9]))
    idx = per_class_subset(y, 4, seed=1)
    assert torch.bincount(y[idx]).tolist() == [4, 4, 4] and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, per_class_subset(y, 4, seed=1))
    with pytest.raises(ValueError, match="fewer than 6"):
        per_class_subset(y, 6)


def test_plot_comparison_draws_every_group(tmp_path):
    from PIL import Image

    from hiera.train.plots import plot_comparison

    path = plot_comparison({"probe": {"MAE": 80.0, "untrained": 60.0}, "fine-tuned": {"MAE": 90.0, "untrained": 95.0}},
                           tmp_path / "c.png", chance=12.5, title="t")
    with Image.open(path) as im:
        assert im.width > 400 and im.height > 300
    with pytest.raises(ValueError, match="at least one"):
        plot_comparison({}, tmp_path / "d.png")
    # Bars that are means show their runs as dots: the picture changes where the dots are.
    groups = {"fine-tuned": {"MAE": 50.0, "untrained": 50.0}}
    plain = plot_comparison(groups, tmp_path / "plain.png")
    dotted = plot_comparison(groups, tmp_path / "dots.png", runs={"fine-tuned": {"MAE": [20.0, 80.0]}})
    with Image.open(plain) as a, Image.open(dotted) as b:
        a, b = np.asarray(a.convert("L")), np.asarray(b.convert("L"))
        assert a.shape == b.shape and (a != b).sum() > 30


def test_fit_head_sets_the_head_the_probe_found():
    from hiera.train.probe import fit_head

    torch.manual_seed(0)
    model = Hiera(**SMALL, num_classes=len(CLASSES)).train()
    x, y = synthetic_tensors("train", 12, seed=0)
    before = model.head.projection.weight.clone()
    acc = fit_head(model, x, y)
    assert model.training  # mode restored
    assert not torch.equal(before, model.head.projection.weight)
    model.eval()
    with torch.no_grad():
        logits = model(x, return_logits=True)
    # The head computes what the probe fitted: the same training accuracy, well above chance.
    assert float((logits.argmax(1) == y).float().mean() * 100) == pytest.approx(acc, abs=1.0)
    assert acc > 60
    with pytest.raises(ValueError, match="linear head"):
        fit_head(Hiera(**SMALL, num_classes=0), x, y)


def test_finetune_probe_head_is_refused_for_video(tmp_path):
    from hiera.train.commands import finetune

    with pytest.raises(ValueError, match="--probe-head"):
        finetune(tmp_path, tmp_path / "out", model="hiera_base_16x224", probe_head=True, video=True)


@pytest.mark.parametrize("mae", [False, True])
def test_our_own_abswin_checkpoints_load_back(tmp_path, mae):
    """The abswin models name their window embedding and layer scale as timm does; a checkpoint of
    ours holding them (with our head, or an MAE decoder) is still ours, not a "mix of layouts"."""
    torch.manual_seed(0)
    kwargs = dict(ABSWIN, init_values=1e-5)
    model = MaskedAutoencoderHiera(**kwargs, **DECODER) if mae else Hiera(**kwargs, num_classes=5)
    path = tmp_path / "abswin.pt"
    torch.save({"model": model.state_dict(), "config": model.config}, path)
    loaded = hiera.load_model(weights=path, mae=mae)
    assert type(loaded) is type(model) and not loaded.load_report.missing and not loaded.load_report.unexpected
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


def test_shared_component_measures_what_every_image_has_in_common():
    """The share of the pooled last-stage features that is one vector for every image: moderate for
    a random encoder, near 1 once a large constant is added to every token of the last stage."""
    torch.manual_seed(0)
    net = MaskedAutoencoderHiera(**SMALL, **DECODER).eval()
    x, _ = synthetic_tensors("val", 4, seed=0)
    before = shared_component(net, x)
    assert 0.05 < before < 0.9, before
    with torch.no_grad():
        net.blocks[-1].mlp.fc2.bias.add_(torch.full_like(net.blocks[-1].mlp.fc2.bias, 50.0))
    after = shared_component(net, x)
    assert after > 0.99 and after > before, (before, after)
