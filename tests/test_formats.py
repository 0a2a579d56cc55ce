"""Checkpoint conversion to and from timm's and Hugging Face transformers' Hiera, verified by running
the real libraries on small random models (nothing is downloaded)."""

import warnings

import pytest
import timm
import timm.models.hiera as timm_hiera
import torch
from closeness import assert_close
from hubserver import hf_offline  # noqa: F401  (fixture)
from transformers import HieraConfig, HieraForImageClassification, HieraForPreTraining, HieraModel

import hiera
from hiera import Hiera, MaskedAutoencoderHiera
from hiera import formats as fmt
from hiera.formats.common import _official_defaults


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.2) -> torch.nn.Module:
    """Move every parameter (norms, head, position embeddings included) away from its init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return model.eval()


def strict_load(model: torch.nn.Module, state: dict) -> None:
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


# =============================================================================== timm
TIMM_CASES = {
    # the official defaults, shrunk
    "image": dict(img_size=(64, 64), embed_dim=16, num_heads=1, num_classes=10, stages=(1, 2, 2, 1)),
    # MAE-like pooling, other attention pattern, non-default patching / widths / heads / mlp
    "image_varied": dict(
        img_size=(64, 96), embed_dim=16, num_heads=2, num_classes=5, stages=(2, 1, 3, 2), q_pool=2,
        mask_unit_attn=(True, False, False, False), dim_mul=1.5, head_mul=1.5, patch_kernel=(4, 4),
        patch_stride=(4, 4), patch_padding=(0, 0), mlp_ratio=2.0,
    ),
    "video": dict(
        img_size=(4, 32, 32), embed_dim=16, num_heads=1, num_classes=6, stages=(1, 1, 2, 1),
        q_stride=(1, 2, 2), mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4),
        patch_padding=(1, 3, 3), sep_pos_embed=True,
    ),
}


def timm_model(seed=0, **kw):
    torch.manual_seed(seed)
    return perturb(timm_hiera.Hiera(**kw), seed)


@pytest.mark.parametrize("case", list(TIMM_CASES))
def test_timm_to_official_matches_timm(case):
    timm_net = timm_model(**TIMM_CASES[case])
    timm_state = timm_net.state_dict()
    assert fmt.detect_format(timm_state) == "timm"

    kwargs = fmt.timm_config_to_official(timm_net)
    state = fmt.timm_to_official(timm_state)
    assert fmt.detect_format(state) == "official"
    ours = Hiera(**kwargs).eval()
    strict_load(ours, state)
    assert hiera.load_weights(ours, state, strict=True).exact

    torch.manual_seed(1)
    x = torch.randn(2, 3, *kwargs["input_size"])
    with torch.no_grad():
        ref = timm_net(x)
        assert_close(ours(x, return_logits=True), ref)
        # eval mode: the official model (and ours) return probabilities
        assert_close(ours(x), ref.softmax(-1))

        # per-stage feature maps, spatial order
        ref_maps = timm_net.forward_intermediates(x, output_fmt="NHWC", intermediates_only=True)
        _, maps = ours(x, return_intermediates=True, return_logits=True)
        assert len(maps) == len(ref_maps) == len(kwargs["stages"])
        for a, b in zip(maps, ref_maps):
            assert_close(a, b)

        # masked encoder tokens, same mask
        mask = ours.get_random_mask(x, mask_ratio=0.5)
        assert_close(ours(x, mask=mask), timm_net.forward_features(x, mask=mask))

    # official -> timm: exact inverse, loads strictly into a timm model built from our kwargs
    back = fmt.official_to_timm(state)
    assert back.keys() == timm_state.keys()
    assert all(torch.equal(back[k], v) for k, v in timm_state.items())
    rebuilt = timm_hiera.Hiera(**fmt.official_config_to_timm(ours.config)).eval()
    strict_load(rebuilt, back)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), ref, rtol=0, atol=0)


def test_official_model_to_timm_round_trip():
    """Start from our model (random weights) instead: ours -> timm -> ours."""
    torch.manual_seed(0)
    ours = perturb(Hiera(input_size=(64, 64), embed_dim=16, num_heads=2, stages=(1, 1, 2, 1), num_classes=3), 3)
    timm_net = timm_hiera.Hiera(**fmt.official_config_to_timm(ours.config)).eval()
    strict_load(timm_net, fmt.official_to_timm(ours.state_dict()))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(timm_net(x), ours(x, return_logits=True))
    again = fmt.timm_to_official(timm_net.state_dict())
    assert again.keys() == ours.state_dict().keys()
    assert all(torch.equal(again[k], v) for k, v in ours.state_dict().items())
    kwargs = fmt.timm_config_to_official(timm_net)
    assert kwargs == {k: ours.config[k] for k in kwargs}


@pytest.mark.parametrize("size", ["tiny", "small", "base", "base_plus", "large", "huge"])
def test_timm_registry_configs_match_zoo(size):
    """timm's hiera_<size>_224 (built on the meta device) is our hiera_<size>_224."""
    kwargs = fmt.timm_config_to_official(f"hiera_{size}_224")
    zoo = {**_official_defaults(False), **hiera.zoo.MODELS[f"hiera_{size}_224"].kwargs}
    assert kwargs == {k: zoo[k] for k in kwargs}
    assert {"embed_dim", "num_heads", "stages", "q_pool", "mask_unit_attn", "dim_mul", "head_mul", "patch_kernel",
            "input_size", "num_classes", "sep_pos_embed", "mlp_ratio", "norm_layer"} <= set(kwargs)
    assert fmt.timm_config_to_official(f"hiera_{size}_224", num_classes=0)["num_classes"] == 0


def test_timm_layer_scale_loads_natively_or_folds_exactly():
    timm_net = timm_model(**TIMM_CASES["image"], init_values=0.5)
    state = timm_net.state_dict()
    assert "blocks.0.ls1.gamma" in state and state["blocks.0.ls1.gamma"].shape == (16,)
    x = torch.randn(2, 3, 64, 64)
    kwargs = fmt.timm_config_to_official(timm_net)
    assert kwargs["init_values"] == 0.5
    native = Hiera(**kwargs).eval()
    strict_load(native, fmt.timm_to_official(state))
    # Folded: plain official layout (loadable by the official package), same function.
    folded = Hiera(**fmt.timm_config_to_official(timm_net, fold_layer_scale=True)).eval()
    assert "init_values" not in folded.config
    strict_load(folded, fmt.timm_to_official(state, fold_layer_scale=True))
    with torch.no_grad():
        assert_close(native(x, return_logits=True), timm_net(x))
        assert_close(folded(x, return_logits=True), timm_net(x))
    back = fmt.official_to_timm(native.state_dict())
    assert torch.equal(back["blocks.0.ls1.gamma"], state["blocks.0.ls1.gamma"])


def test_timm_abswin_loads_natively_or_bakes_into_pos_embed():
    timm_net = timm_model(**TIMM_CASES["image"], abs_win_pos_embed=True, global_pos_size=(6, 6))
    state = timm_net.state_dict()
    assert state["pos_embed"].shape == (1, 16, 6, 6) and state["pos_embed_win"].shape == (1, 16, 8, 8)
    x = torch.randn(2, 3, 64, 64)
    kwargs = fmt.timm_config_to_official(timm_net)
    assert kwargs["abs_win_pos_embed"] and kwargs["global_pos_size"] == (6, 6)
    native = Hiera(**kwargs).eval()
    strict_load(native, fmt.timm_to_official(state))
    kwargs = fmt.timm_config_to_official(timm_net, bake_abswin=True)
    converted = fmt.timm_to_official(state, abswin_input_size=kwargs["input_size"], patch_stride=kwargs["patch_stride"])
    assert converted["pos_embed"].shape == (1, 256, 16)
    baked = Hiera(**kwargs).eval()
    strict_load(baked, converted)
    with torch.no_grad():
        assert_close(native(x, return_logits=True), timm_net(x))
        assert_close(baked(x, return_logits=True), timm_net(x))
        # abswin is defined for any size: at 96x64 too.
        native.dynamic_size = True
        y = torch.randn(1, 3, 96, 64)
        assert native(y, return_logits=True).shape == (1, kwargs["num_classes"])


def test_timm_abswin_zoo_configs_run_like_timm():
    """timm's hiera_small_abswin_256 (layer scale, abswin, no expand projection) at a small size."""
    timm_net = timm.create_model("hiera_small_abswin_256", pretrained=False, num_classes=5, img_size=128).eval()
    with torch.no_grad():
        for p in timm_net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    kwargs = fmt.timm_config_to_official(timm_net)
    assert kwargs["use_expand_proj"] is False and kwargs["init_values"] == 1e-5
    ours = Hiera(**kwargs).eval()
    strict_load(ours, fmt.timm_to_official(timm_net.state_dict()))
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        assert_close(ours(x, return_logits=True), timm_net(x))
    with pytest.raises(ValueError, match="use_expand_proj=False"):
        Hiera(embed_dim=96, dim_mul=3.0, use_expand_proj=False)

def test_mae_checkpoint_to_timm_needs_explicit_drop():
    torch.manual_seed(0)
    mae = perturb(MaskedAutoencoderHiera(input_size=(64, 64), embed_dim=16, stages=(1, 1, 2, 1), q_pool=2,
                                         decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2))
    with pytest.raises(ValueError, match=r"decoder_blocks\.\*\.attn\.qkv\.weight.*mask_token.*no MAE decoder"):
        fmt.official_to_timm(mae.state_dict())
    with pytest.warns(UserWarning, match="mask_token"):
        state = fmt.official_to_timm(mae.state_dict(), drop_unmapped=True)
    timm_net = timm_hiera.Hiera(**fmt.official_config_to_timm(mae.config)).eval()
    assert timm_net.num_classes == 0
    strict_load(timm_net, state)
    assert torch.equal(state["head.norm.weight"], mae.encoder_norm.weight)


# =============================================================================== transformers
def hf_config(**kw):
    cfg = dict(embed_dim=16, image_size=[64, 64], depths=[1, 2, 2, 1], num_heads=[1, 2, 4, 8], num_labels=10,
               decoder_hidden_size=32, decoder_depth=2, decoder_num_heads=2, mask_ratio=0.5)
    cfg.update(kw)
    return HieraConfig(**cfg)


def hf_model(cls, config, seed=0):
    torch.manual_seed(seed)
    return perturb(cls(config), seed)


def test_hf_image_classification_to_official_and_back():
    config = hf_config()
    net = hf_model(HieraForImageClassification, config)
    hf_state = net.state_dict()
    assert fmt.detect_format(hf_state) == "hf"
    state, kwargs = fmt.hf_to_official(hf_state, config)
    assert kwargs["num_classes"] == 10 and kwargs["stages"] == (1, 2, 2, 1)
    ours = Hiera(**kwargs).eval()
    strict_load(ours, state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        assert_close(ours(x, return_logits=True), ref.logits)

    back, cfg = fmt.official_to_hf(ours.state_dict(), ours.config)
    assert cfg["architectures"] == ["HieraForImageClassification"] and cfg["num_labels"] == 10
    assert back.keys() == hf_state.keys() and all(torch.equal(back[k], v) for k, v in hf_state.items())
    rebuilt = HieraForImageClassification(HieraConfig(**cfg)).eval()
    strict_load(rebuilt, back)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).logits, ref.logits, rtol=0, atol=0)
    # the config survives as a dict, a HieraConfig, and config.json round trips
    assert fmt.hf_config_to_official(HieraConfig(**cfg)) == fmt.hf_config_to_official(cfg) == kwargs


def test_hf_base_model_to_official_and_back():
    """HieraModel: last_hidden_state = our final tokens, pooler_output = our pooled+norm features,
    reshaped_hidden_states = [embeddings, *our per-stage maps]. It has no classifier: only our head
    is left unmapped."""
    config = hf_config()
    net = hf_model(HieraModel, config, seed=1)
    state, kwargs = fmt.hf_to_official(net.state_dict(), config)
    assert "num_classes" not in kwargs and "norm.weight" in state
    ours = Hiera(**kwargs).eval()
    result = ours.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["head.projection.bias", "head.projection.weight"]
    assert not result.unexpected_keys

    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = net(x, output_hidden_states=True)
        tokens, maps = ours.forward_tokens(x, return_intermediates=True)
        assert_close(tokens, out.last_hidden_state)
        assert_close(ours.forward_head(tokens, pre_logits=True), out.pooler_output)
        embedded = (ours.patch_embed(x) + ours.get_pos_embed()).view(2, 16, 16, -1)
        assert_close(out.reshaped_hidden_states[0], embedded)
        assert len(out.reshaped_hidden_states) == len(maps) + 1
        for a, b in zip(maps, out.reshaped_hidden_states[1:]):
            assert_close(a, b)

    # ours (with a head) -> HieraModel: the head has no place unless dropped explicitly
    with pytest.raises(ValueError, match="head.projection.weight"):
        fmt.official_to_hf(ours.state_dict(), ours.config, architecture="HieraModel")
    with pytest.warns(UserWarning, match="head.projection"):
        back, cfg = fmt.official_to_hf(ours.state_dict(), ours.config, architecture="HieraModel", drop_unmapped=True)
    assert back.keys() == net.state_dict().keys()
    rebuilt = HieraModel(HieraConfig(**cfg)).eval()
    strict_load(rebuilt, back)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x).pooler_output, out.pooler_output, rtol=0, atol=0)


def test_hf_pretraining_to_official_same_mask():
    """HieraForPreTraining with noise= vs our MAE with the mask that noise selects."""
    config = hf_config(num_query_pool=2)
    net = hf_model(HieraForPreTraining, config, seed=2)
    hf_state = net.state_dict()
    state, kwargs = fmt.hf_to_official(hf_state, config)
    assert kwargs["decoder_embed_dim"] == 32 and kwargs["q_pool"] == 2
    ours = MaskedAutoencoderHiera(**kwargs).eval()
    strict_load(ours, state)

    torch.manual_seed(3)
    x = torch.randn(3, 3, 64, 64)
    noise = torch.rand(3, ours.num_mask_units)
    mask = fmt.mask_from_noise(noise, config.mask_ratio)
    hf_mask, _ = net.hiera.embeddings.patch_embeddings.random_masking(x, noise=noise)
    assert torch.equal(mask, hf_mask) and mask.sum(1).tolist() == [2, 2, 2]
    with torch.no_grad():
        out = net(pixel_values=x, noise=noise)
        loss, preds, labels, mask_out = ours(x, mask=mask)
        assert_close(loss, out.loss)
        latent, _ = ours.forward_encoder(x, 0.5, mask=mask)
        pred, visible = ours.forward_decoder(latent, mask)
    assert_close(pred, out.logits)
    assert torch.equal(visible, out.bool_masked_pos)
    assert_close(preds, out.logits[~out.bool_masked_pos])

    back, cfg = fmt.official_to_hf(ours.state_dict(), ours.config)
    assert cfg["architectures"] == ["HieraForPreTraining"]
    assert back.keys() == hf_state.keys() and all(torch.equal(back[k], v) for k, v in hf_state.items())
    rebuilt = HieraForPreTraining(HieraConfig(**{**cfg, "mask_ratio": 0.5})).eval()
    strict_load(rebuilt, back)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(pixel_values=x, noise=noise).loss, out.loss, rtol=0, atol=0)


def test_timm_to_hf_through_convert():
    """timm -> transformers directly with the dispatcher, checked by both libraries' logits."""
    timm_net = timm_model(**TIMM_CASES["image"])
    state, cfg = fmt.convert(timm_net.state_dict(), "hf", config=timm_net)
    net = HieraForImageClassification(HieraConfig(**cfg)).eval()
    strict_load(net, state)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_close(net(x).logits, timm_net(x))
    back, timm_kwargs = fmt.convert(state, "timm", config=cfg)
    rebuilt = timm_hiera.Hiera(**timm_kwargs).eval()
    strict_load(rebuilt, back)
    assert all(torch.equal(back[k], v) for k, v in timm_net.state_dict().items())
    # a transformers HieraModel (no classifier) -> timm: a num_classes=0 timm model
    with pytest.warns(UserWarning, match=r"head\.projection\.weight"):
        base, base_cfg = fmt.convert(timm_net.state_dict(), "hf", config=timm_net, architecture="HieraModel",
                                     drop_unmapped=True)
    base_timm, base_kwargs = fmt.convert(base, "timm", config=HieraConfig(**base_cfg))
    assert base_kwargs["num_classes"] == 0
    strict_load(timm_hiera.Hiera(**base_kwargs), base_timm)
    same, none = fmt.convert(state, "hf")
    assert none is None and same.keys() == state.keys()


def test_hf_configs_without_official_equivalent_raise():
    # HF's first layer of a stage attends in mask units if this OR the previous stage does;
    # the official one only if the previous stage does.
    with pytest.raises(ValueError, match="block 1: use_mask_unit_attn"):
        fmt.hf_config_to_official(hf_config(masked_unit_attention=[False, True, False, False]))
    with pytest.raises(ValueError, match="num_heads|head"):
        fmt.hf_config_to_official(hf_config(num_heads=[1, 3, 4, 8]))
    with pytest.raises(ValueError, match="2-D only"):
        fmt.official_config_to_hf(hiera.zoo.MODELS["hiera_base_16x224"].kwargs)


# =============================================================================== full-size layouts
# The configs of transformers' convert_hiera_to_hf.py (facebook/hiera-*-224-hf on the Hub).
HF_HUB_CONFIGS = {
    "tiny": dict(depths=[1, 2, 7, 2]),
    "base_plus": dict(embed_dim=112, num_heads=[2, 4, 8, 16]),
    "huge": dict(embed_dim=256, num_heads=[4, 8, 16, 32], depths=[2, 6, 36, 4]),
}


@pytest.mark.parametrize("size", list(HF_HUB_CONFIGS))
def test_zoo_models_convert_to_full_size_layouts(size):
    """Our zoo classifier / MAE state dicts have the key sets and shapes of the real timm and HF models
    (all built on the meta device)."""
    shapes = lambda sd: {k: tuple(v.shape) for k, v in sd.items()}  # noqa: E731
    with torch.device("meta"):
        ours, mae = hiera.create_model(f"hiera_{size}_224"), hiera.create_model(f"mae_hiera_{size}_224")
        timm_net = timm_hiera.Hiera(**fmt.official_config_to_timm(ours.config))
        hf_cls, cfg = fmt.official_to_hf(ours.state_dict(), ours.config)
        hf_mae, cfg_mae = fmt.official_to_hf(mae.state_dict(), mae.config)
        hf_cls_net = HieraForImageClassification(HieraConfig(**cfg))
        hf_mae_net = HieraForPreTraining(HieraConfig(**cfg_mae))
    assert shapes(fmt.official_to_timm(ours.state_dict())) == shapes(timm_net.state_dict())
    assert shapes(hf_cls) == shapes(hf_cls_net.state_dict())
    assert shapes(hf_mae) == shapes(hf_mae_net.state_dict())
    hub = HieraConfig(**HF_HUB_CONFIGS[size], num_labels=1000)
    norm = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    fields = [k for k in cfg if k not in ("architectures", "model_type", "num_labels")]
    assert {k: norm(cfg[k]) for k in fields} == {k: norm(getattr(hub, k)) for k in fields}
    kwargs = fmt.hf_config_to_official(hub)
    assert all(ours.config[k] == v for k, v in kwargs.items())
    assert cfg_mae["num_query_pool"] == 2 and cfg_mae["decoder_hidden_size"] == 512


# =============================================================================== errors, detection
def test_unmapped_keys_are_named():
    torch.manual_seed(0)
    ours = Hiera(input_size=(64, 64), embed_dim=16, stages=(1, 1, 2, 1), num_classes=3)
    state = {**ours.state_dict(), "extra.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"extra\.weight.*drop_unmapped"):
        fmt.official_to_timm(state)
    timm_state = {**fmt.official_to_timm(ours.state_dict()), "head.pre_logits.fc.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match=r"head\.pre_logits\.fc\.weight"):
        fmt.timm_to_official(timm_state)
    hf_state, cfg = fmt.official_to_hf(ours.state_dict(), ours.config)
    with pytest.raises(ValueError, match=r"hidden_states_norms\.stage1\.weight"):
        fmt.hf_to_official({**hf_state, "hidden_states_norms.stage1.weight": torch.zeros(1)}, cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fmt.official_to_timm(ours.state_dict())  # nothing to warn about


def test_detect_format():
    torch.manual_seed(0)
    ours = Hiera(input_size=(64, 64), embed_dim=16, stages=(1, 1, 2, 1), num_classes=3)
    official = ours.state_dict()
    timm_state = fmt.official_to_timm(official)
    hf_state, _ = fmt.official_to_hf(official, ours.config)
    assert fmt.detect_format(official) == "official"
    assert fmt.detect_format({"model_state": official}) == "official"  # official .pth wrapper
    assert fmt.detect_format(timm_state) == "timm"
    assert fmt.detect_format(hf_state) == "hf"
    assert fmt.detect_format({k[len("hiera."):]: v for k, v in hf_state.items() if k.startswith("hiera.")}) == "hf"
    trunk = {k: v for k, v in official.items() if not k.startswith(("norm.", "head."))}
    assert fmt.detect_format(trunk) == "official"  # official and timm trunks are identical
    with pytest.raises(ValueError, match="mixes timm keys"):
        fmt.detect_format({**official, "head.fc.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a Hiera state dict"):
        fmt.detect_format({"conv1.weight": torch.zeros(1)})


def test_abswin_zoo_model_loads_timm_hub_checkpoint_offline(hf_offline):
    """hiera_small_abswin_256's default checkpoint is a timm-layout Hub repo: fetched through the
    Hugging Face cache, converted, and it computes what timm computes."""
    from hubserver import prefill_hf_cache
    from safetensors.torch import save as safetensors_bytes

    torch.manual_seed(0)
    timm_net = timm.create_model("hiera_small_abswin_256", pretrained=False).eval()
    with torch.no_grad():
        for p in timm_net.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    with torch.device("meta"):
        shapes = hiera.hiera_small_abswin_256().state_dict()
    converted = fmt.timm_to_official(timm_net.state_dict())
    assert {k: tuple(v.shape) for k, v in shapes.items()} == {k: tuple(v.shape) for k, v in converted.items()}
    prefill_hf_cache(hf_offline, "timm/hiera_small_abswin_256.sbb2_e200_in12k_ft_in1k",
                     {"model.safetensors": safetensors_bytes({k: v.contiguous() for k, v in timm_net.state_dict().items()})})
    ours = hiera.hiera_small_abswin_256(pretrained=True).eval()
    assert ours.load_report.exact
    x = torch.randn(1, 3, 256, 256)
    with torch.no_grad():
        assert_close(ours(x, return_logits=True), timm_net(x))
