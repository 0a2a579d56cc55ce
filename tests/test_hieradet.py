"""HieraDet (SAM 2's Hiera trunk): equivalence with timm's ``hieradet_sam2`` on random weights for the
four SAM 2 configurations, the checkpoint conversion both ways, and the backbone API.

Inputs are small (128x128, 224x160) but still pad windows (a 14-token window over an 8- or
10-token map), pool queries inside padded windows and run the global-attention blocks."""

import warnings

import pytest
import timm
import torch
from closeness import assert_close
from hubserver import hf_offline, prefill_torch_hub_cache, torch_home  # noqa: F401  (fixtures)

import hiera
from hiera import HieraDet, InputMismatchError
from hiera import formats as fmt
from hiera.formats.timm_layout import ours_to_timm_hieradet, timm_hieradet_to_ours
from hiera.weights import CheckpointError, with_head_classes
from hiera.zoo import SAM2_TRUNKS

SIZES = ("tiny", "small", "base_plus", "large")


def timm_trunk(size: str, seed: int = 0, scale: float = 0.05, **kw) -> torch.nn.Module:
    """timm's ``sam2_hiera_<size>`` with every trunk weight moved away from its init (the head's norm,
    which timm builds but SAM 2 has not, stays at weight 1, bias 0 unless a head is asked for)."""
    torch.manual_seed(seed)
    model = timm.create_model(f"sam2_hiera_{size}", pretrained=False, **kw)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if kw.get("num_classes") or not name.startswith("head."):
                p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def small(**kw) -> HieraDet:
    """A small HieraDet that keeps every feature: windows that pad, pooling inside windows, a
    global block (block 4), a head when asked."""
    cfg = dict(embed_dim=16, num_heads=1, stages=(1, 2, 2, 1), window_spec=(4, 2, 6, 3), global_att_blocks=(4,),
               window_pos_embed_bkg_spatial_size=(5, 5), input_size=(64, 96))
    cfg.update(kw)
    torch.manual_seed(0)
    return HieraDet(**cfg).eval()


def shapes(state):
    return {k: tuple(v.shape) for k, v in state.items()}


# =============================================================================== timm equivalence
@pytest.mark.parametrize("size", SIZES)
def test_matches_timm_at_two_sizes(size):
    theirs = timm_trunk(size)
    ours = hiera.create_model(f"sam2_hiera_{size}").eval()
    ours.load_state_dict(timm_hieradet_to_ours(theirs.state_dict()), strict=True)
    for height, width in ((128, 128), (224, 160)):
        torch.manual_seed(1)
        x = torch.randn(2, 3, height, width)
        with torch.no_grad():
            want = theirs.forward_intermediates(x, intermediates_only=True)
            got = ours.forward_intermediates(x)
            got_nhwc = ours.forward_intermediates(x, output_fmt="NHWC")
            last = ours(x)
        assert len(got) == len(want) == 4
        for stage, (g, w, n) in enumerate(zip(got, want, got_nhwc)):
            stride = 4 * 2**stage
            assert g.shape == (2, ours.feature_info[stage]["num_chs"], height // stride, width // stride)
            assert_close(g, w, f"{size} {height}x{width} stage {stage}")
            assert torch.equal(n, g.permute(0, 2, 3, 1))
        assert_close(last, want[-1], f"{size} forward")


def test_background_embedding_shrinks_like_sam2():
    """B+'s 14x14 background embedding on a grid smaller than itself is downsampled, as SAM 2 does
    it (bicubic without antialiasing)."""
    theirs = timm_trunk("base_plus")
    ours = hiera.create_model("sam2_hiera_base_plus").eval()
    ours.load_state_dict(timm_hieradet_to_ours(theirs.state_dict()), strict=True)
    x = torch.randn(1, 3, 32, 64)  # an 8x16-token grid
    with torch.no_grad():
        for g, w in zip(ours.forward_intermediates(x), theirs.forward_intermediates(x, intermediates_only=True)):
            assert_close(g, w, "stage output")


@pytest.mark.parametrize("size", SIZES)
def test_state_dict_keys_and_shapes_both_ways(size):
    theirs = timm_trunk(size).state_dict()
    with torch.device("meta"):
        ours_shapes = shapes(hiera.create_model(f"sam2_hiera_{size}").state_dict())
    converted = timm_hieradet_to_ours(theirs)
    assert shapes(converted) == ours_shapes
    assert not any(".mlp.fc" in k or k.startswith("head.") for k in converted)  # SAM 2's trunk names
    back = ours_to_timm_hieradet(converted)
    assert shapes(back) == shapes(theirs)
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)  # timm -> ours -> timm
    again = timm_hieradet_to_ours(back)  # ours -> timm -> ours
    assert list(again) == list(converted) and all(torch.equal(again[k], converted[k]) for k in converted)


def test_head_matches_timm_and_round_trips():
    theirs = timm_trunk("tiny", num_classes=7)
    state = theirs.state_dict()
    ours_state = timm_hieradet_to_ours(state)
    assert {"norm.weight", "norm.bias", "head.projection.weight", "head.projection.bias"} <= set(ours_state)
    ours = HieraDet(**with_head_classes(ours_state, dict(SAM2_TRUNKS["tiny"]))).eval()
    assert ours.num_classes == 7
    ours.load_state_dict(ours_state, strict=True)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), "logits")
        assert_close(ours.forward_head(ours.forward_features(x), pre_logits=True),
                     theirs.forward_head(theirs.forward_features(x), pre_logits=True), "pre-logits")
    back = ours_to_timm_hieradet(ours.state_dict())
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)


def test_gradients_match_timm():
    """Training through padded windows: SAM 2's zero-padded tokens tie in the query max-pool; the
    gradients still agree with timm's (MaxPool2d's) to float rounding."""
    theirs = timm_trunk("tiny").train()
    ours = hiera.create_model("sam2_hiera_tiny").train()
    ours.load_state_dict(timm_hieradet_to_ours(theirs.state_dict()), strict=True)
    x = torch.randn(2, 3, 128, 96)
    for model in (theirs, ours):
        model.zero_grad()
        feats = model.forward_intermediates(x, intermediates_only=True)
        sum((f.float() ** 2).mean() for f in feats).backward()
    grads_theirs = {k: p.grad for k, p in theirs.named_parameters() if p.grad is not None}
    grads_ours = timm_hieradet_to_ours(grads_theirs, keep_norm=False)
    for name, p in ours.named_parameters():
        assert_close(p.grad, grads_ours[name], f"grad {name}", rtol=1e-4)


# =============================================================================== conversion rules
def test_conversion_refuses_unknown_keys_and_keeps_a_trained_norm():
    state = timm_trunk("tiny").state_dict()
    with pytest.raises(ValueError, match="blocks.0.ls1.gamma"):
        timm_hieradet_to_ours({**state, "blocks.0.ls1.gamma": torch.ones(96)})
    with pytest.raises(ValueError, match="head.pre_logits"):
        timm_hieradet_to_ours({**state, "head.pre_logits.fc.weight": torch.ones(2, 2)})
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        dropped = timm_hieradet_to_ours({**state, "blocks.0.ls1.gamma": torch.ones(96)}, drop_unmapped=True)
    assert "blocks.0.ls1.gamma" not in dropped
    ours = timm_hieradet_to_ours(state)
    with pytest.raises(ValueError, match="mystery"):
        ours_to_timm_hieradet({**ours, "mystery.weight": torch.ones(1)})
    # a head norm that was trained (not weight 1, bias 0) is kept, even without a classifier
    trained = {**state, "head.norm.weight": state["head.norm.weight"] * 2}
    assert "norm.weight" in timm_hieradet_to_ours(trained)
    assert "norm.weight" not in timm_hieradet_to_ours(trained, keep_norm=False)
    assert "norm.weight" in timm_hieradet_to_ours(state, keep_norm=True)


def test_layout_detection_and_the_generic_converters():
    theirs = timm_trunk("tiny").state_dict()
    ours = timm_hieradet_to_ours(theirs)
    assert fmt.detect_format(theirs) == "timm"
    assert fmt.detect_format({k: v for k, v in theirs.items() if not k.startswith("head.")}) == "timm"
    assert fmt.detect_format(ours) == "official"  # ours: SAM 2's trunk names
    # the plain-Hiera entry points hand a HieraDet state dict over
    assert list(fmt.timm_to_official(theirs)) == list(ours)
    assert list(fmt.official_to_timm(ours)) == list(ours_to_timm_hieradet(ours))
    converted, _ = fmt.convert(theirs, "official")
    assert shapes(converted) == shapes(ours)


def test_zoo_loads_timm_hub_checkpoint_offline(hf_offline):
    """sam2_hiera_tiny's default checkpoint is timm's Hub repo: fetched through the Hugging Face
    cache, converted, loaded exactly, and it computes what timm computes."""
    from hubserver import prefill_hf_cache
    from safetensors.torch import save as safetensors_bytes

    theirs = timm_trunk("tiny")
    blob = safetensors_bytes({k: v.contiguous() for k, v in theirs.state_dict().items()})
    prefill_hf_cache(hf_offline, "timm/sam2_hiera_tiny.fb_r896", {"model.safetensors": blob})
    ours = hiera.create_model("sam2_hiera_tiny", pretrained=True).eval()
    assert isinstance(ours, HieraDet) and ours.load_report.exact and not ours.has_head
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert_close(ours.forward_intermediates(x)[-1], theirs.forward_intermediates(x, intermediates_only=True)[-1])


@pytest.mark.parametrize("layout", ["ours", "timm"])
def test_zoo_takes_num_classes_from_a_checkpoint_head(tmp_path, layout):
    theirs = timm_trunk("tiny", num_classes=5)
    state = theirs.state_dict() if layout == "timm" else timm_hieradet_to_ours(theirs.state_dict())
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    ours = hiera.create_model("sam2_hiera_tiny", pretrained=True, checkpoint=str(path)).eval()
    assert ours.num_classes == 5 and ours.load_report.exact
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_close(ours(x), theirs(x), "logits")


# =============================================================================== the model's API
def test_zoo_builds_the_sam2_configurations_without_downloading():
    for size, trunk in SAM2_TRUNKS.items():
        with torch.device("meta"):
            model = hiera.create_model(f"sam2_hiera_{size}")
        assert isinstance(model, HieraDet) and model.dynamic_size and model.input_size == (1024, 1024)
        assert {k: model.config[k] for k in trunk} == trunk
        assert model.config["num_classes"] == 0 and not model.has_head
    model = hiera.create_model("sam2_hiera_tiny")
    assert [f["num_chs"] for f in model.feature_info] == [96, 192, 384, 768]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    assert model.size_multiple == (32, 32)
    with pytest.raises(CheckpointError, match="trunk"):  # said before any download
        hiera.load_model("sam2_hiera_tiny", need_head=True)


def test_forward_intermediates_formats_and_indices():
    model = small()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        maps = model.forward_intermediates(x)
        nhwc = model.forward_intermediates(x, output_fmt="NHWC")
        picked = model.forward_intermediates(x, indices=[-1, 1])
        last_two = model.forward_intermediates(x, indices=2)
        blocks = model.forward_intermediates(x, indices=[0, 3], per_block=True)
        final, with_final = model.forward_intermediates(x, indices=[0], intermediates_only=False)
        features = model.forward_features(x)
        out = model(x)
    assert [tuple(m.shape) for m in maps] == [(2, 16, 16, 24), (2, 32, 8, 12), (2, 64, 4, 6), (2, 128, 2, 3)]
    for a, b in zip(maps, nhwc):
        assert torch.equal(a.permute(0, 2, 3, 1), b)
    assert torch.equal(picked[0], maps[3]) and torch.equal(picked[1], maps[1])
    assert torch.equal(last_two[0], maps[2]) and torch.equal(last_two[1], maps[3])
    assert torch.equal(blocks[0], maps[0]) and blocks[1].shape == (2, 64, 4, 6)  # block 3: first of stage 3
    assert torch.equal(with_final[0], maps[0]) and torch.equal(final, features)
    assert features.shape == (2, 2, 3, 128) and torch.equal(out, features.permute(0, 3, 1, 2))
    for bad, match in ((dict(indices=[4]), "out of range"), (dict(output_fmt="NLC"), "output_fmt"),
                       (dict(norm=True), "norm"), (dict(indices=[]), "empty"), (dict(indices=9), "last 9")):
        with pytest.raises(ValueError, match=match):
            model.forward_intermediates(x, **bad)


def test_any_size_that_tiles_and_clear_errors_otherwise():
    model = small()
    for size in ((32, 32), (96, 64), (160, 224)):  # the position embedding follows the size
        with torch.no_grad():
            assert model(torch.randn(1, 3, *size)).shape == (1, 128, size[0] // 32, size[1] // 32)
    with pytest.raises(ValueError, match=r"does not tile.*\(32, 32\).*\(64, 96\)"):
        model(torch.randn(1, 3, 70, 96))
    with pytest.raises(ValueError, match="input channels"):
        model(torch.randn(1, 1, 64, 96))
    with pytest.raises(ValueError, match="4-D"):
        model(torch.randn(3, 64, 96))
    with pytest.raises(InputMismatchError, match="dtype"):
        model(torch.randn(1, 3, 64, 96, dtype=torch.float64))
    model.dynamic_size = False
    assert model(torch.randn(1, 3, 64, 96)).shape == (1, 128, 2, 3)
    with pytest.raises(ValueError, match=r"expected spatial size \(64, 96\)"):
        model(torch.randn(1, 3, 96, 64))


def test_classification_head_option():
    model = small(num_classes=5, head_dropout=0.1)
    keys = set(model.state_dict())
    assert {"norm.weight", "head.projection.weight"} <= keys
    assert not {"norm.weight", "head.projection.weight"} & set(small().state_dict())
    x = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        logits = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    assert logits.shape == (3, 5) and pooled.shape == (3, 128)
    assert_close(logits, model.head.projection(pooled), "logits (eval: no dropout, no softmax)")
    with pytest.raises(ValueError, match="no classification head"):
        small().forward_head(torch.zeros(1, 2, 3, 128))
    # num_classes from a checkpoint's head
    rebuilt = HieraDet(config={**model.config, "num_classes": 0}, **with_head_classes(model.state_dict(), {}))
    assert rebuilt.num_classes == 5
    assert hiera.load_weights(rebuilt, model.state_dict(), strict=True).exact
    # reset_classifier: a fresh head, or back to the trunk; the config follows
    model.reset_classifier(0)
    assert not model.has_head and "norm.weight" not in model.state_dict() and model.config["num_classes"] == 0
    model.reset_classifier(9)
    assert model(x).shape == (3, 9) and HieraDet(config=model.config).num_classes == 9


def test_config_rebuilds_an_identical_model():
    model = small(num_classes=3, drop_path_rate=0.1, mlp_ratio=2.0)
    twin = HieraDet(config=model.config).eval()
    assert twin.config == model.config
    assert shapes(twin.state_dict()) == shapes(model.state_dict())
    twin.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(twin(x), model(x))
    assert repr(twin) == repr(model)


def test_grad_checkpointing_gives_the_same_outputs_and_gradients(monkeypatch):
    model = small(num_classes=4).train()
    x = torch.randn(2, 3, 64, 96)
    calls = []
    checkpoint = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or checkpoint(*a, **k))
    results = []
    for on in (False, True):
        model.set_grad_checkpointing(on)
        model.zero_grad()
        out = model(x)
        out.square().sum().backward()
        results.append((out.detach(), {k: p.grad.clone() for k, p in model.named_parameters()}))
    assert len(calls) == len(model.blocks)  # every block recomputed, only when switched on
    (out0, g0), (out1, g1) = results
    assert_close(out1, out0, "checkpointed output")
    assert g0.keys() == g1.keys()
    for k in g0:
        assert_close(g1[k], g0[k], f"checkpointed grad {k}")


@pytest.mark.parametrize("kw, match", [
    (dict(window_spec=(8, 4, 14)), "one window per stage"),
    (dict(global_att_blocks=(12, 16, 24)), r"out of range"),
    (dict(stages=(1, 2, 7, 2)), r"global_att_blocks=\(12, 16, 20\).*0\.\.11"),  # B+'s blocks in a T trunk
    (dict(global_att_blocks=(5, 5)), "distinct"),
    (dict(window_spec=(8, 4, 7, 7)), r"block 21 .*window_spec\[2\]=7"),  # pools inside an odd window
    (dict(window_spec=(0, 4, 14, 7)), r"window_spec\[0\]"),
    (dict(q_pool=4), "q_pool"),
    (dict(input_size=(1000, 1024)), r"multiples of \(32, 32\)"),
    (dict(num_classes=-1), "num_classes"),
    (dict(embed_dim=96, num_heads=5), "heads"),
    (dict(q_stride=(2, 2, 2)), r"q_stride must be \(h, w\)"),
])
def test_bad_configurations_are_refused_at_construction(kw, match):
    with torch.device("meta"), pytest.raises(ValueError, match=match):
        HieraDet(**kw)


def test_a_global_block_may_pool():
    """SAM 2's and timm's code cannot pool queries in a global-attention block (their window
    arithmetic divides by zero); here it simply pools over the whole map."""
    model = small(global_att_blocks=(1, 4))
    with torch.no_grad():
        assert [m.shape[-2:] for m in model.forward_intermediates(torch.randn(1, 3, 64, 64))] == [
            (16, 16), (8, 8), (4, 4), (2, 2)]


def test_a_sam2_checkpoint_file_loads_as_a_trunk_and_as_a_backbone(tmp_path):
    """A whole SAM 2 checkpoint (``{"model": ...}`` with neck and decoder keys) gives its trunk."""
    from hiera.formats import ours_to_sam2

    torch.manual_seed(0)
    trunk = hiera.HieraDet(**SAM2_TRUNKS["tiny"], input_size=(128, 128)).eval()
    state = ours_to_sam2(trunk.state_dict())
    state["image_encoder.neck.convs.0.conv.weight"] = torch.randn(4, 4)
    state["sam_mask_decoder.iou_token.weight"] = torch.randn(1, 4)
    path = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": state}, path)
    loaded = hiera.load_model(weights=path).eval()
    assert type(loaded) is hiera.HieraDet and not loaded.load_report.missing
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(loaded(x), trunk(x), rtol=0, atol=0)
    with pytest.raises(hiera.CheckpointError, match="without a classification head"):
        hiera.load_model(weights=path, need_head=True)
    # As an MAE: the trunk goes into the zoo's HieraDet MAE (to continue pretraining from SAM 2's
    # weights); the report says the decoder is untrained, and mae-viz refuses it (tests/test_mae_hieradet.py).
    with pytest.warns(UserWarning, match="decoder"):
        mae = hiera.load_model(weights=path, mae=True)
    assert type(mae) is hiera.MaskedAutoencoderHieraDet and mae.load_report.checkpoint_kind == "encoder"
    assert not [k for k in mae.load_report.missing if not k.startswith(("decoder_", "mask_token", "encoder_norm",
                                                                        "multi_scale_fusion_heads"))]
    features = hiera.create_model("sam2_hiera_tiny", features_only=True, out_indices=(1, 3), output_fmt="NHWC")
    maps = features(torch.randn(1, 3, 224, 160))
    assert [tuple(m.shape) for m in maps] == [(1, 28, 20, 192), (1, 7, 5, 768)]
    assert [f["reduction"] for f in features.feature_info] == [8, 32]


def test_convert_moves_a_sam2_trunk_between_layouts_and_back(tmp_path, capsys):
    """SAM 2 file -> our folder -> timm safetensors -> SAM 2 file gives the same tensors; layouts
    that cannot hold a HieraDet (transformers) or that only HieraDet has (sam2) are refused."""
    from hiera.cli import main
    from hiera.formats import ours_to_sam2

    torch.manual_seed(0)
    trunk = hiera.create_model("sam2_hiera_tiny")
    src = tmp_path / "sam2_hiera_tiny.pt"
    torch.save({"model": ours_to_sam2(trunk.state_dict())}, src)
    steps = [(src, "official", tmp_path / "ours"), (tmp_path / "ours", "timm", tmp_path / "t.safetensors"),
             (tmp_path / "t.safetensors", "sam2", tmp_path / "back.pt")]
    for a, to, b in steps:
        assert main(["convert", str(a), "--to", to, "--out", str(b)]) == 0
    back = torch.load(tmp_path / "back.pt", weights_only=True)["model"]
    want = torch.load(src, weights_only=True)["model"]
    assert back.keys() == want.keys() and all(torch.equal(back[k], want[k]) for k in want)
    assert type(hiera.load_model(weights=tmp_path / "ours")) is HieraDet  # the folder's config builds a HieraDet
    capsys.readouterr()
    assert main(["convert", str(src), "--to", "hf", "--out", str(tmp_path / "hf")]) == 1
    assert "transformers has no model for" in capsys.readouterr().err and not (tmp_path / "hf").exists()
    plain = tmp_path / "plain.pth"
    torch.save(hiera.hiera_tiny_224().state_dict(), plain)
    assert main(["convert", str(plain), "--to", "sam2", "--out", str(tmp_path / "no.pt")]) == 1
    assert "only SAM 2 trunks" in capsys.readouterr().err and not (tmp_path / "no.pt").exists()


def test_sam2s_own_checkpoint_loads_through_the_torch_hub_cache(torch_home):
    """``sam2_hiera_tiny.sam2_1`` names SAM 2.1's own file (the whole SAM 2 model): read from the
    torch-hub cache like the official Hiera files, its image encoder's trunk is what loads."""
    from hiera.formats import ours_to_sam2

    torch.manual_seed(0)
    trunk = hiera.create_model("sam2_hiera_tiny", input_size=(128, 128)).eval()
    state = ours_to_sam2(trunk.state_dict())
    state["sam_prompt_encoder.point_embeddings.0.weight"] = torch.randn(1, 8)
    prefill_torch_hub_cache(torch_home, "sam2.1_hiera_tiny.pt", {"model": state})
    loaded = hiera.create_model("sam2_hiera_tiny.sam2_1", input_size=(128, 128)).eval()
    assert not loaded.load_report.missing and not loaded.load_report.unexpected
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(loaded(x), trunk(x), rtol=0, atol=0)
    assert hiera.zoo.MODELS["sam2_hiera_tiny"].checkpoints["sam2"].endswith("/072824/sam2_hiera_tiny.pt")


def test_the_zoo_lists_the_family_with_who_published_each_checkpoint(capsys):
    from hiera.cli import main
    from hiera.cli.zoo import zoo_table

    rows = {r["model"]: r for r in zoo_table()}
    assert rows["sam2_hiera_tiny"]["class"] == "HieraDet"
    assert rows["sam2_hiera_tiny"]["sources"] == {"fb_r896": "timm", "fb_r896_2pt1": "timm", "sam2": "SAM 2",
                                                  "sam2_1": "SAM 2"}
    assert set(rows["hiera_base_224"]["sources"].values()) == {"Hiera"}
    assert main(["zoo"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("sam2_hiera_large "))
    assert "fb_r1024*, fb_r1024_2pt1 (timm); sam2, sam2_1 (SAM 2)" in line
