"""Equivalence with the official implementation (hiera-transformer 0.1.4).

Reference data is produced by tests/reference/generate.py inside the official package's own
environment (see conftest.py); here the same weights and inputs go through our models.
"""

import json
import subprocess
import sys

import conftest
import pytest
import torch
from closeness import assert_close
from conftest import CLASSIFIER_CASES, HUB_CASES, MAE_CASES, ZOO_NAMES, load_hub_reference, load_zoo

import hiera

GEN = conftest._generate  # the generator module: seeds, perturbation constants, case table


def build_like_official(case_name):
    """Build our model as the generator built the official one: same seed, same perturbation."""
    cls_name, constructor, kwargs, _ = GEN.CASES[case_name]
    torch.manual_seed(GEN.SEED_INIT)
    if constructor is not None:
        model = getattr(hiera, constructor)(**kwargs)
    else:
        model = getattr(hiera, cls_name)(**kwargs)
    assert type(model).__name__ == cls_name
    GEN.perturb_(model)
    return model


# ---------------------------------------------------------------- the zoo
@pytest.mark.parametrize("name", ZOO_NAMES)
def test_zoo_constructor_matches_official(name, official_reference):
    ref = load_zoo()[name]
    with torch.device("meta"):
        model = getattr(hiera, name)()
    assert type(model).__name__ == ref["class"]
    state = model.state_dict()
    assert list(state) == ref["keys"]
    assert {k: list(v.shape) for k, v in state.items()} == ref["shapes"]
    assert sum(p.numel() for p in model.parameters()) == ref["num_params"]
    fn = getattr(hiera, name)
    assert fn.checkpoints == ref["checkpoints"] and fn.default == ref["default"]
    ours = {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.config.items()}
    theirs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ref["config"].items()}
    if ref["class"] == "Hiera":
        assert ours == theirs
    else:
        # Upstream's MAE config holds a functools.partial for norm_layer and lacks the decoder
        # arguments (so it can be neither saved nor rebuilt); ours is the same plus the decoder.
        theirs.pop("norm_layer")
        decoder = {k: ours.pop(k) for k in ("decoder_embed_dim", "decoder_depth", "decoder_num_heads")}
        assert ours == theirs and decoder == {"decoder_embed_dim": 512, "decoder_depth": 8, "decoder_num_heads": 16}


def test_every_official_public_name_resolves(official_reference):
    """Whatever code written against the official package can reach after a plain ``import hiera``
    (``hiera.hiera.Unroll``, ``from hiera.hiera_mae import undo_windowing``, ...) exists here too.
    A fresh interpreter, so no other test has imported the submodules first."""
    api = json.loads((official_reference / "api.json").read_text())
    assert {"hiera", "hiera.hiera", "hiera.hiera_utils", "hiera.hiera_mae", "hiera.hfhub"} <= api.keys()
    assert "Unroll" in api["hiera.hiera"] and "hiera_mae" in api["hiera"]  # the record is not empty
    code = """
import json, sys
import hiera
missing = []
for module, names in json.loads(sys.argv[1]).items():
    obj = hiera
    for part in module.split(".")[1:]:
        obj = getattr(obj, part)
    missing += [f"{module}.{n}" for n in names if not hasattr(obj, n)]
import timm.layers
from hiera.hiera import DropPath, Mlp  # timm's, as in the official module
assert (DropPath, Mlp) == (timm.layers.DropPath, timm.layers.Mlp)
print(json.dumps(missing))
"""
    out = subprocess.run([sys.executable, "-c", code, json.dumps(api)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == []


def test_flop_count_matches_official(official_reference):
    """``torch.utils.flop_counter`` sees the same work in ours as in the official model, in an
    inference-mode forward and in a training step: the CPU fast paths (packed oneDNN layers, the
    fused attention kernel the counter has no formula for) step aside while a counter listens,
    and the counter does not trip over ours under ``inference_mode``."""
    from torch.utils.flop_counter import FlopCounterMode

    flops = json.loads((official_reference / "flops.json").read_text())
    assert flops, "no FLOP record"
    for name, ref in flops.items():
        torch.manual_seed(0)
        model = getattr(hiera, name)()
        x = torch.randn(ref["shape"])
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model.eval()(x)
        assert counter.get_total_flops() == ref["inference"], name
        with FlopCounterMode(display=False) as counter:
            model.train()(x).float().logsumexp(-1).sum().backward()
        assert counter.get_total_flops() == ref["train"], name


# ---------------------------------------------------------------- classifiers
@pytest.mark.parametrize("name", CLASSIFIER_CASES)
def test_classifier_matches_official(name, reference_case):
    case = reference_case(name)
    model = build_like_official(name)
    # Same seed, same perturbation -> same weights: our initialisation consumes the RNG exactly
    # as upstream's does (module creation order, init calls).
    state = model.state_dict()
    assert list(state) == list(case["state_dict"])
    for k, v in case["state_dict"].items():
        assert torch.equal(state[k], v), f"initial weights differ at {k}"

    x, mask, ref = case["inputs"]["x"], case["inputs"]["mask"], case["outputs"]
    with torch.no_grad():
        model.train()
        assert_close(model(x), ref["train_logits"], "train-mode logits")
        model.eval()
        assert_close(model(x), ref["eval_probs"], "eval probabilities")
        out, maps = model(x, return_intermediates=True)
        assert_close(out, ref["eval_out"], "eval output with intermediates")
        assert len(maps) == len(ref["intermediates"])
        for i, (a, b) in enumerate(zip(maps, ref["intermediates"])):
            assert_close(a, b, f"intermediate {i}")
        torch.manual_seed(GEN.SEED_MASK)
        assert torch.equal(model.get_random_mask(x, GEN.CLASSIFIER_MASK_RATIO), mask)
        out, maps = model(x, mask=mask, return_intermediates=True)
        assert_close(out, ref["masked_out"], "masked output")
        for i, (a, b) in enumerate(zip(maps, ref["masked_intermediates"])):
            assert_close(a, b, f"masked intermediate {i}")


# ---------------------------------------------------------------- MAE
@pytest.mark.parametrize("name", MAE_CASES)
def test_mae_matches_official(name, reference_case):
    case = reference_case(name)
    model = build_like_official(name)
    for k, v in case["state_dict"].items():
        assert torch.equal(model.state_dict()[k], v), f"initial weights differ at {k}"
    model.train()
    x, mask, ref = case["inputs"]["x"], case["inputs"]["mask"], case["outputs"]
    ratio = case["meta"]["mask_ratio"]
    with torch.no_grad():
        torch.manual_seed(GEN.SEED_MASK)
        assert torch.equal(model.get_random_mask(x, ratio), mask)
        loss, preds, labels, out_mask = model(x, mask=mask)
        assert_close(loss, ref["loss"], "loss")
        assert_close(preds, ref["preds"], "preds")
        assert_close(labels, ref["labels"], "labels")
        assert torch.equal(out_mask, ref["out_mask"])

        latent, _ = model.forward_encoder(x, ratio, mask=mask)
        assert_close(latent, ref["latent"], "fused encoder output")
        pred, pred_mask = model.forward_decoder(latent, mask)
        assert_close(pred, ref["pred"], "decoder output")
        assert torch.equal(pred_mask, ref["pred_mask"])

        # Random masking consumes the RNG like upstream: same seed, same mask, same loss.
        torch.manual_seed(GEN.SEED_RNG_FORWARD)
        loss, preds, labels, rng_mask = model(x, mask_ratio=GEN.MAE_RNG_MASK_RATIO)
        assert torch.equal(rng_mask, ref["rng_mask"])
        assert_close(loss, ref["rng_loss"], "loss with random mask")
        assert_close(preds, ref["rng_preds"], "preds with random mask")

        label_fn = getattr(model, case["meta"]["label_fn"])
        label_mask = case["inputs"]["label_mask"]
        assert_close(label_fn(x, label_mask, norm=True), ref["label_norm"], "normalised labels")
        assert_close(label_fn(x, label_mask, norm=False), ref["label_raw"], "raw labels")


# ---------------------------------------------------------------- Hugging Face repos, both ways
@pytest.mark.parametrize("name", HUB_CASES)
def test_repo_written_by_official_loads_here(name, official_reference):
    ref = load_hub_reference(name)
    repo = official_reference / "hub_official" / name
    cls = getattr(hiera, ref["class"])
    model = cls.from_pretrained(repo)
    assert model.load_report.exact
    x, mask = ref["inputs"]["x"], ref["inputs"]["mask"]
    with torch.no_grad():
        if ref["class"] == "Hiera":
            assert_close(model.eval()(x), ref["outputs"]["eval_probs"], "eval probabilities")
        else:
            loss, preds, labels, _ = model.train()(x, mask=mask)
            assert_close(loss, ref["outputs"]["loss"], "loss")
            assert_close(preds, ref["outputs"]["preds"], "preds")


@pytest.mark.parametrize("name", HUB_CASES)
def test_repo_written_here_loads_in_official(name, official_python, tmp_path):
    model = build_like_official(name)
    cls_name = type(model).__name__
    repo = tmp_path / "repo"
    model.save_pretrained(repo, config=model.config)
    x = torch.randn(2, *GEN.CASES[name][3])
    mask = model.get_random_mask(x, 0.5)
    torch.save({"x": x, "mask": mask}, tmp_path / "inputs.pt")
    with torch.no_grad():
        if cls_name == "Hiera":
            ours = model.eval()(x)
        else:
            ours = model.train()(x, mask=mask)[0]
    code = f"""
import sys, torch, hiera
assert "site-packages" in hiera.__file__, hiera.__file__
model = hiera.{cls_name}.from_pretrained(sys.argv[1])
inputs = torch.load(sys.argv[2], weights_only=True)
with torch.no_grad():
    if type(model).__name__ == "Hiera":
        out = model.eval()(inputs["x"])
    else:
        out = model.train()(inputs["x"], mask=inputs["mask"])[0]
torch.save({{"out": out, "config": dict(model.config)}}, sys.argv[3])
"""
    conftest.official_env.run_official_code(
        official_python, code, str(repo), str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt"), timeout=300
    )
    theirs = torch.load(tmp_path / "out.pt", weights_only=False)
    assert_close(ours, theirs["out"], "official model loaded from our repo")
    saved = json.loads((repo / "config.json").read_text())
    assert {k: saved[k] for k in ("embed_dim", "stages", "input_size")} == {
        k: json.loads(json.dumps(model.config[k])) for k in ("embed_dim", "stages", "input_size")
    }


# ---------------------------------------------------------------- gradients (training)
@pytest.mark.parametrize("name", ["mae_tiny_image", "mae_tiny_video", "tiny_image"])
def test_gradients_match_official(name, official_python, tmp_path):
    """One backward pass on the same weights, inputs and mask: every parameter's gradient agrees,
    so training our model is training the official one."""
    model = build_like_official(name)
    x = torch.randn(2, *GEN.CASES[name][3], generator=torch.Generator().manual_seed(7))
    torch.manual_seed(8)
    mask = model.get_random_mask(x, 0.6)
    torch.save({"x": x, "mask": mask, "state": model.state_dict()}, tmp_path / "in.pt")
    code = f"""
import sys, torch, hiera
sys.path.insert(0, {str(conftest._REFERENCE_SRC)!r})
import generate as gen
data = torch.load(sys.argv[1], weights_only=True)
model = gen.build_case_model({name!r})
model.load_state_dict(data["state"])
model.train()
out = model(data["x"], mask=data["mask"]) if type(model).__name__ != "Hiera" else model(data["x"])
loss = out[0] if isinstance(out, tuple) else out.square().mean()
loss.backward()
torch.save({{n: p.grad for n, p in model.named_parameters() if p.grad is not None}}, sys.argv[2])
"""
    conftest.official_env.run_official_code(official_python, code, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"),
                                            timeout=300)
    theirs = torch.load(tmp_path / "out.pt", weights_only=True)
    model.train()
    out = model(x, mask=mask) if type(model).__name__ != "Hiera" else model(x)
    loss = out[0] if isinstance(out, tuple) else out.square().mean()
    loss.backward()
    ours = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(ours) == set(theirs)
    for n, g in theirs.items():
        assert_close(ours[n], g, f"gradient of {n}")
