"""Sanity checks that the OFFICIAL reference data (tests/reference/) is well formed.

These tests do not touch our package; they only make sure the files the equivalence
tests rely on exist, load with ``weights_only=True`` and are internally consistent.
"""

import json
import math

import pytest
import torch
from conftest import (
    CLASSIFIER_CASES,
    HUB_CASES,
    MAE_CASES,
    REFERENCE_CASES,
    ZOO_NAMES,
    load_case,
    load_hub_reference,
    load_zoo,
)

pytestmark = pytest.mark.usefixtures("official_reference")


def test_official_env_is_official(official_python):
    import importlib.util

    from conftest import official_env

    info = official_env.verify_official_env(official_python)
    assert info["version"] == "0.1.4"
    assert info["torch"] == torch.__version__  # torch is shared, not a second copy
    # sanity: the official package is NOT importable here (ours is, or nothing)
    spec = importlib.util.find_spec("hiera")
    assert spec is None or "reference" not in str(spec.origin)


def test_index_lists_all_cases(official_reference):
    index = json.loads((official_reference / "index.json").read_text())
    assert index["official_version"] == "0.1.4"
    assert sorted(index["cases"]) == sorted(REFERENCE_CASES)
    for name in REFERENCE_CASES:
        assert (official_reference / f"case_{name}.pt").is_file()


def test_zoo():
    zoo = load_zoo()
    assert len(zoo) == 20 and sorted(zoo) == sorted(ZOO_NAMES)
    for name, entry in zoo.items():
        expected_cls = "MaskedAutoencoderHiera" if name.startswith("mae_") else "Hiera"
        assert entry["class"] == expected_cls, name
        assert entry["keys"] == list(entry["shapes"]), name
        assert len(entry["keys"]) == len(set(entry["keys"]))
        assert entry["num_params"] == sum(math.prod(s) for s in entry["shapes"].values()), name
        assert entry["default"] in entry["checkpoints"], name
        assert all(url.startswith("https://dl.fbaipublicfiles.com/hiera/") for url in entry["checkpoints"].values())
        assert ("head.projection.weight" in entry["shapes"]) == (expected_cls == "Hiera"), name
        assert ("decoder_pred.weight" in entry["shapes"]) == (expected_cls != "Hiera"), name
        assert isinstance(entry["config"], dict) and entry["config"]["embed_dim"] > 0
    assert zoo["hiera_huge_16x224"]["num_params"] > 600_000_000
    assert zoo["hiera_base_16x224"]["shapes"]["head.projection.weight"] == [400, 768]
    # the MAE config holds a functools.partial, recorded as its repr
    assert zoo["mae_hiera_tiny_224"]["config"]["norm_layer"].startswith("functools.partial(")


def _check_case_header(case, name):
    assert case["name"] == name
    assert case["class"] in ("Hiera", "MaskedAutoencoderHiera")
    x = case["inputs"]["x"]
    assert x.dtype == torch.float32 and x.shape[0] == 2
    sd = case["state_dict"]
    assert sd and all(v.is_contiguous() for v in sd.values())
    assert all(torch.isfinite(v).all() for v in sd.values() if v.is_floating_point())
    if case["constructor"] is not None:
        entry = load_zoo()[case["constructor"]]
        assert list(sd) == entry["keys"]
        assert {k: list(v.shape) for k, v in sd.items()} == entry["shapes"]


def _check_mask(mask, ratio=None):
    assert mask.dtype == torch.bool and mask.dim() == 2
    kept = mask.sum(dim=1)
    assert (kept == kept[0]).all(), "same number of kept mask units in every row"
    if ratio is not None:
        assert int(kept[0]) == int(mask.shape[1] * (1 - ratio))


@pytest.mark.parametrize("name", CLASSIFIER_CASES)
def test_classifier_case(name):
    case = load_case(name, mmap=True)
    _check_case_header(case, name)
    out = case["outputs"]
    assert set(out) == {"train_logits", "eval_probs", "eval_out", "intermediates", "mask",
                        "masked_out", "masked_intermediates"}
    probs = out["eval_probs"]
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    assert probs.std() > 0, "head perturbation should make probabilities non-uniform"
    torch.testing.assert_close(out["eval_out"], probs)
    # no dropout/droppath: train mode only differs by the softmax in the head
    torch.testing.assert_close(out["train_logits"].softmax(-1), probs)
    assert len(out["intermediates"]) == len(case["config"]["stages"])
    _check_mask(out["mask"], ratio=case["meta"]["mask_ratio"])
    assert torch.equal(case["inputs"]["mask"], out["mask"])
    kept = int(out["mask"].sum(1)[0])
    cfg = case["config"]
    # Upstream Reroll groups masked tokens in "windows" of q_stride**(#stages-1) tokens, which
    # equal the mask units only when mask_unit_size is that big (not in tiny_image_mu4_lag).
    windows_are_mask_units = list(cfg["mask_unit_size"]) == [
        s ** (len(cfg["stages"]) - 1) for s in cfg["q_stride"]]
    assert windows_are_mask_units == (name != "tiny_image_mu4_lag")
    assert len(out["masked_intermediates"]) == len(out["intermediates"])
    for full, masked in zip(out["intermediates"], out["masked_intermediates"]):
        # full: [B, *spatial, C]; masked: [B, #kept MUs, *mu_shape, C]
        assert masked.shape[-1] == full.shape[-1]
        if windows_are_mask_units:
            assert masked.shape[1] == kept
        n_full = math.prod(full.shape[1:-1])
        n_masked = math.prod(masked.shape[1:-1])
        assert n_masked * out["mask"].shape[1] == n_full * kept
    assert out["masked_out"].dim() == 3 and out["masked_out"].shape[-1] == out["intermediates"][-1].shape[-1]


@pytest.mark.parametrize("name", MAE_CASES)
def test_mae_case(name):
    case = load_case(name, mmap=True)
    _check_case_header(case, name)
    out, meta = case["outputs"], case["meta"]
    _check_mask(out["mask"], ratio=meta["mask_ratio"])
    _check_mask(out["rng_mask"], ratio=meta["rng_mask_ratio"])
    assert torch.equal(out["out_mask"], out["mask"])
    assert out["loss"].dim() == 0
    torch.testing.assert_close(out["loss"], ((out["preds"] - out["labels"]) ** 2).mean())
    torch.testing.assert_close(out["rng_loss"], ((out["rng_preds"] - out["rng_labels"]) ** 2).mean())
    # the loss is taken on the *masked* prediction tokens: pred[~pred_mask]
    n_pred = math.prod(meta["tokens_spatial_shape_final"])
    assert out["pred"].shape[:2] == (2, n_pred) and out["pred_mask"].shape == (2, n_pred)
    torch.testing.assert_close(out["preds"], out["pred"][~out["pred_mask"]])
    assert out["label_norm"].shape == out["label_raw"].shape
    assert out["label_norm"].shape[0] == int(out["label_mask"].sum())
    torch.testing.assert_close(out["label_norm"].mean(-1), torch.zeros(out["label_norm"].shape[0]),
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", HUB_CASES)
def test_hub_official(name):
    ref = load_hub_reference(name)
    folder, result = ref["dir"], ref["result"]
    assert (folder / "model.safetensors").is_file()
    assert sorted(p.name for p in folder.iterdir()) == sorted(result["files"] + ["reference.pt", "result.json"])
    assert result["official_from_pretrained"]["ok"], result["official_from_pretrained"]
    assert all(d == 0.0 for d in result["official_from_pretrained"]["max_abs_diff"].values())
    if ref["class"] == "Hiera":
        assert result["save_with_config"]["ok"]
        assert json.loads((folder / "config.json").read_text())["norm_layer"] == "LayerNorm"
    else:
        # upstream: the MAE's config holds a functools.partial -> json.dumps fails
        assert not result["save_with_config"]["ok"]
        assert "not JSON serializable" in result["save_with_config"]["exception"]
        assert result["saved_without_config"]
