"""HieraDet (SAM 2's trunk) as a classifier of the training and tools: ``hiera finetune`` of a custom
and of a zoo trunk (at the classification recipe's 224 x 224, from a SAM 2 checkpoint), then
``evaluate``, ``predict`` and ``features`` on what the run wrote; ``save_pretrained`` round trips and
the model card; a trunk without head refused by ``predict``.

Models are tiny (5 blocks, 64 x 64 inputs; the zoo trunk is replaced by one of that width and depth
for the run) so that every test takes a few seconds on one core."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from hubserver import hub_server  # noqa: F401 - fixture
from hubserver import prefill_torch_hub_cache
from safetensors.torch import load_file

import hiera
from hiera import HieraDet
from hiera.cli import main
from hiera.data.media import load_image
from hiera.data.synthetic import make_dataset
from hiera.data.transforms import eval_transform
from hiera.formats import ours_to_sam2
from hiera.hub import model_card
from hiera.train.commands import _build, finetune
from hiera.train.modality import Images
from hiera.train.probe import fit_head
from hiera.train.recipes import finetune_recipe, model_size, pretrain_recipe
from hiera.zoo import MODELS

# A HieraDet that keeps what matters here: four stages, three q-poolings, windowed blocks and one
# global block; sides must be multiples of 32.
TRUNK = dict(embed_dim=32, num_heads=1, stages=(1, 1, 2, 1), global_att_blocks=(3,),
             window_pos_embed_bkg_spatial_size=(4, 4))
TINY = dict(TRUNK, input_size=(64, 64))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), 4, 2, size=64, seed=0)  # 8 classes: 32 / 16 images


def tiny(num_classes=0, seed=0) -> HieraDet:
    """A tiny HieraDet with every weight (position embeddings, head) moved off its init, so that
    loading the wrong tensor anywhere changes the outputs."""
    torch.manual_seed(seed)
    model = HieraDet(**TINY, num_classes=num_classes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def cli_json(capsys) -> dict:
    """The JSON line that `hiera finetune` prints last."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def first_image(data) -> Path:
    return sorted(Path(data.val_dir).glob("*/*.png"))[0]


# ============================================================================ recipes
@pytest.mark.parametrize("name, size", [("sam2_hiera_tiny", "tiny"), ("sam2_hiera_small.sam2_1", "small"),
                                        ("sam2_hiera_base_plus", "base_plus"), ("sam2_hiera_large", "large"),
                                        ("mae_sam2_hiera_base_plus", "base_plus"), ("mae_sam2_hiera_large", "large")])
def test_sam2_trunks_get_the_recipe_of_their_hiera_size(name, size):
    assert model_size(name) == size
    ours, plain = finetune_recipe(name), finetune_recipe(size)
    assert ours == plain and ours.layer_decay == plain.layer_decay and pretrain_recipe(name) == pretrain_recipe(size)


def test_the_recipe_size_applies_to_zoo_backbones_only():
    """A zoo trunk built without a head at another size is fine-tuned at 224 unless --config says
    otherwise; zoo classifiers keep the size they were built at (224, or 256 for the abswin models)."""
    images = Images()
    size, note = images.recipe_input_size("sam2_hiera_large.sam2_1", finetune_recipe("large"), None)
    assert size == {"input_size": (224, 224)}
    assert note.startswith("sam2_hiera_large is built at 1024x1024") and "fine-tuning at 224x224" in note
    assert "--config '{\"input_size\": [H, W]}'" in note and "\n" not in note
    assert images.recipe_input_size("mae_sam2_hiera_tiny", finetune_recipe("tiny"), None)[0] == {"input_size": (224, 224)}
    for model, config in [("sam2_hiera_tiny", {"input_size": [512, 512]}), ("hiera_base_224", None),
                          ("hiera_small_abswin_256", None), ("hiera_tiny_224.mae_in1k", None),
                          ("custom", dict(TINY, input_size=(1024, 1024)))]:
        assert images.recipe_input_size(model, finetune_recipe("base"), config) == ({}, None), model


# ============================================================================ custom configs
def test_a_custom_config_builds_the_trunk_its_keys_belong_to():
    det = _build("custom", mae=False, overrides=dict(TINY, num_classes=3))
    assert type(det) is HieraDet and det.num_classes == 3 and det.global_att_blocks == (3,)
    plain = _build("custom", mae=False, overrides=dict(input_size=(64, 64), embed_dim=16, num_heads=1,
                                                       stages=(1, 1), q_pool=1, num_classes=3))
    assert type(plain) is hiera.Hiera
    with pytest.raises(ValueError, match=r"mixes SAM 2 trunk \(HieraDet\) arguments \['global_att_blocks', "
                                         r"'window_pos_embed_bkg_spatial_size'\] with plain Hiera arguments "
                                         r"\['mask_unit_size'\]"):
        _build("custom", mae=False, overrides=dict(TINY, mask_unit_size=(8, 8)))


def test_a_mixed_custom_config_is_one_line_on_the_command_line(data, tmp_path, capsys):
    config = json.dumps(dict(TINY, mask_unit_attn=[True, False, False, False]))
    assert main(["finetune", "--data", str(data.train_dir), "--model", "custom", "--config", config,
                 "--out", str(tmp_path / "ft"), "--no-progress", "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "mixes SAM 2 trunk (HieraDet) arguments" in err and "mask_unit_attn" in err
    assert not (tmp_path / "ft" / "last.pt").exists()


# ============================================================================ fine-tune, then the tools
def test_finetune_a_custom_hieradet_then_evaluate_predict_and_extract_features(data, tmp_path, capsys):
    out = tmp_path / "ft"
    assert main(["finetune", "--data", str(data.train_dir), "--val", str(data.val_dir), "--model", "custom",
                 "--config", json.dumps(TINY), "--epochs", "2", "--batch-size", "16", "--lr", "1e-3",
                 "--no-mixup", "--workers", "0", "--threads", "1", "--no-progress", "--out", str(out)]) == 0
    last = cli_json(capsys)
    assert last["step"] == 4 and 0 <= last["val_acc1"] <= 100
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["class"] == "HieraDet" and state["model"]["head.projection.weight"].shape == (8, 256)

    model = hiera.load_model(weights=out / "model", need_head=True).eval()
    assert type(model) is HieraDet and model.num_classes == 8 and tuple(model.input_size) == (64, 64)
    assert model.global_att_blocks == (3,) and not model.load_report.missing
    assert (out / "model" / "classes.txt").read_text().split() == list(data.classes)

    # evaluate, on the model folder and on the run's checkpoint: the run's own validation numbers.
    for weights in (out / "model", out / "last.pt"):
        assert main(["evaluate", "--data", str(data.val_dir), "--weights", str(weights), "--workers", "0",
                     "--json", str(tmp_path / "eval.json")]) == 0
        result = json.loads((tmp_path / "eval.json").read_text())
        assert result["n"] == 16 and result["acc1"] == pytest.approx(last["val_acc1"], abs=1e-6)
        assert result["classes"] == list(data.classes) and result["assumed"] is None
    capsys.readouterr()

    # predict: the class names saved with the run, and the model's own softmax.
    image = first_image(data)
    assert main(["predict", str(image), "--weights", str(out / "model"), "--format", "json", "--topk", "3",
                 "--no-progress"]) == 0
    labels = json.loads(capsys.readouterr().out)["predictions"][0]["labels"]
    x = eval_transform(model)(load_image(image)).unsqueeze(0)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    top = probs.topk(3)
    assert [entry["label"] for entry in labels] == [data.classes[i] for i in top.indices.tolist()]
    assert [entry["score"] for entry in labels] == pytest.approx(top.values.tolist(), abs=1e-5)

    # features: one map per stage at strides 4 ... 32, at the model's size and at another that tiles.
    assert main(["features", str(image), "--weights", str(out / "model"), "--out", str(tmp_path / "f"),
                 "--size", "96", "96", "--no-progress"]) == 0
    maps = load_file(next((tmp_path / "f").rglob("*.safetensors")))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "stage0": (32, 24, 24), "stage1": (64, 12, 12), "stage2": (128, 6, 6), "stage3": (256, 3, 3)}
    capsys.readouterr()
    assert main(["features", str(image), "--weights", str(out / "model"), "--out", str(tmp_path / "g"),
                 "--size", "80", "80", "--no-progress"]) == 1
    assert "multiples of (32, 32)" in capsys.readouterr().err and not (tmp_path / "g").exists()


def test_a_zoo_trunk_is_fine_tuned_at_224_from_a_sam2_checkpoint(data, tmp_path, capsys, monkeypatch):
    """`--model sam2_hiera_tiny --init sam2_hiera_tiny.sam2_1`: the zoo builds the trunk at 1024, the
    run fine-tunes it at 224 and says so, starting from SAM 2.1's file (its trunk) in the torch-hub
    cache. The zoo entry keeps its name, checkpoints and 1024 size but gets the tiny width and depth."""
    torch_home = tmp_path / "torch_home"  # where the zoo's download finds SAM 2's file, offline
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    spec = MODELS["sam2_hiera_tiny"]
    small_spec = dataclasses.replace(spec, kwargs=dict(TRUNK, input_size=(1024, 1024)))
    monkeypatch.setitem(MODELS, "sam2_hiera_tiny", small_spec)
    trunk = tiny(seed=1)
    prefill_torch_hub_cache(torch_home, spec.checkpoints["sam2_1"].rsplit("/", 1)[-1],
                            {"model": ours_to_sam2(trunk.state_dict())})
    out = tmp_path / "ft"
    # One step of the whole set: the warmup's first step runs at lr 0, so the trunk is SAM 2's as loaded.
    assert main(["finetune", "--data", str(data.train_dir), "--model", "sam2_hiera_tiny", "--init",
                 "sam2_hiera_tiny.sam2_1", "--epochs", "1", "--batch-size", "32", "--workers", "0", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("sam2_hiera_tiny is built at 1024x1024") == 1 and "fine-tuning at 224x224" in printed
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["input_size"] == [224, 224] and config["num_classes"] == 8 and config["embed_dim"] == 32
    saved = load_file(out / "model" / "model.safetensors")
    for key, value in trunk.state_dict().items():
        assert torch.equal(saved[key], value), key
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["extra"]["recipe"]["layer_decay"] == finetune_recipe("tiny").layer_decay
    assert state["extra"]["init"] == "sam2_hiera_tiny.sam2_1"

    # An input_size given in --config wins, and nothing is said.
    assert main(["finetune", "--data", str(data.train_dir), "--model", "sam2_hiera_tiny", "--config",
                 '{"input_size": [64, 64]}', "--epochs", "1", "--batch-size", "32", "--workers", "0",
                 "--no-progress", "--out", str(tmp_path / "own")]) == 0
    assert "built at 1024x1024" not in capsys.readouterr().out
    assert json.loads((tmp_path / "own" / "model" / "config.json").read_text())["input_size"] == [64, 64]


def test_init_from_the_other_trunk_is_refused(data, tmp_path):
    """The plain Hiera and HieraDet share no block weights: --init across them says what to use."""
    plain_config = dict(input_size=(64, 64), embed_dim=32, num_heads=1, stages=(1, 1, 2, 1))
    torch.save(hiera.Hiera(**plain_config).state_dict(), tmp_path / "plain.pth")
    torch.save({"model": ours_to_sam2(tiny().state_dict())}, tmp_path / "sam2.pt")
    run = dict(epochs=1, batch_size=32, progress=False, num_workers=0)
    with pytest.raises(ValueError, match=r"plain\.pth holds a plain Hiera, which does not load into the HieraDet"):
        finetune(data.train_dir, tmp_path / "a", model="custom", config=TINY, init=str(tmp_path / "plain.pth"), **run)
    with pytest.raises(ValueError, match=r"sam2\.pt holds SAM 2's trunk \(HieraDet\).*--model sam2_hiera_tiny"):
        finetune(data.train_dir, tmp_path / "b", model="custom", config=plain_config, init=str(tmp_path / "sam2.pt"),
                 **run)
    for out in ("a", "b"):
        assert not (tmp_path / out / "last.pt").exists()


def test_probe_head_fits_a_hieradet_head(data, tmp_path):
    model = tiny(num_classes=8)
    images = torch.randn(16, 3, 64, 64)
    labels = torch.arange(16) % 8
    before = model.head.projection.weight.clone()
    acc = fit_head(model, images, labels)
    assert acc == 100.0  # 16 points in 256 dimensions: a linear probe separates them
    assert not torch.equal(model.head.projection.weight, before) and not model.training
    result = finetune(data.train_dir, tmp_path / "lpft", model="custom", config=TINY, epochs=1, batch_size=32,
                      probe_head=True, mixup=False, progress=False, num_workers=0)
    assert result["step"] == 1


# ============================================================================ save_pretrained, model card
def test_save_pretrained_round_trips_and_predict_reads_the_folder(data, tmp_path, capsys):
    model = tiny(num_classes=8)
    model.save_pretrained(tmp_path / "m", classes=data.classes)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want = model(x)
        for loaded in (hiera.load_model(weights=tmp_path / "m"), HieraDet.from_pretrained(tmp_path / "m")):
            assert type(loaded) is HieraDet and json.dumps(loaded.config) == json.dumps(model.config)
            torch.testing.assert_close(loaded.eval()(x), want, rtol=0, atol=0)
    image = first_image(data)
    assert main(["predict", str(image), "--weights", str(tmp_path / "m"), "--format", "json", "--no-progress"]) == 0
    labels = json.loads(capsys.readouterr().out)["predictions"][0]["labels"]
    assert len(labels) == 5 and {entry["label"] for entry in labels} <= set(data.classes)


def test_predict_refuses_a_trunk_without_head(data, tmp_path, capsys):
    model = tiny()
    model.save_pretrained(tmp_path / "trunk")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(hiera.load_model(weights=tmp_path / "trunk").eval()(x), model(x), rtol=0, atol=0)
    assert main(["predict", str(first_image(data)), "--weights", str(tmp_path / "trunk"), "--no-progress"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "without a classification head" in err and not captured.out


def python_snippet(card: str) -> str:
    return re.search(r"```python\n(.*?)```", card, re.S).group(1)


def test_the_model_card_of_a_hieradet_says_what_it_is_and_its_example_runs(tmp_path):
    x = torch.randn(2, 3, 64, 64)
    classifier, trunk = tiny(num_classes=5), tiny()
    classifier.save_pretrained(tmp_path / "c")
    trunk.save_pretrained(tmp_path / "t")

    card = (tmp_path / "c" / "README.md").read_text()
    assert "# SAM 2's HieraDet trunk, image classifier" in card and "pipeline_tag: image-classification" in card
    assert "return_logits" not in card and "hiera predict --weights" in card
    scope = {"x": x}
    exec(python_snippet(card), scope)  # loads the folder, as the card says
    torch.testing.assert_close(scope["logits"], classifier(x))  # (grad mode, as in the snippet)
    assert [tuple(m.shape) for m in scope["features"]] == [(2, 32, 16, 16), (2, 64, 8, 8), (2, 128, 4, 4),
                                                           (2, 256, 2, 2)]

    card = (tmp_path / "t" / "README.md").read_text()
    assert "# SAM 2's HieraDet trunk, image feature encoder" in card
    for claim in ("classifier", "pipeline_tag", "logits", "## Classes", "hiera predict", "hiera evaluate"):
        assert claim not in card, claim
    scope = {"x": x}
    exec(python_snippet(card), scope)
    assert len(scope["features"]) == 4 and "logits" not in scope

    # A Hub repo of it loads through load_model (test_hub_repos_of_hieradets_load_by_name); the plain
    # Hiera's card keeps asking for logits.
    assert 'model = hiera.load_model("org/trunk").eval()' in model_card(classifier, location="org/trunk")
    plain = hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1), q_pool=1, num_classes=3).eval()
    plain_card = model_card(plain, location=str(tmp_path / "p"))
    assert "# Hiera image classifier" in plain_card and "logits = model(x, return_logits=True)" in plain_card
    assert "HieraDet" not in plain_card


def test_hub_repos_of_hieradets_load_by_name(hub_server):
    """``hiera.load_model("org/name")`` reads the repo's config.json to pick the family: a HieraDet
    classifier, and with ``mae=True`` a HieraDet MAE, pushed to a Hub server (a local one here)."""
    from hiera.mae import MaskedAutoencoderHieraDet

    classifier = tiny(num_classes=5)
    classifier.push_to_hub("test-user/tiny-hieradet")
    loaded = hiera.load_model("test-user/tiny-hieradet").eval()
    x = torch.randn(2, 3, 64, 64)
    assert type(loaded) is HieraDet
    torch.testing.assert_close(loaded(x), classifier(x))

    torch.manual_seed(0)
    mae = MaskedAutoencoderHieraDet(**TINY, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=1).eval()
    mae.push_to_hub("test-user/tiny-hieradet-mae")
    again = hiera.load_model("test-user/tiny-hieradet-mae", mae=True).eval()
    assert type(again) is MaskedAutoencoderHieraDet and again.load_report.exact
    mask = mae.get_random_mask(x, 0.5)
    torch.testing.assert_close(again(x, mask=mask)[0], mae(x, mask=mask)[0])


def test_a_hieradet_classifier_exports_to_onnx_and_a_trunk_is_refused(tmp_path):
    from hiera.tools.export import export_onnx, verify_onnx

    pytest.importorskip("onnx")
    model = tiny(num_classes=5)
    done = export_onnx(model, tmp_path / "det.onnx")
    assert done.input_shape == ("batch", 3, 64, 64)
    for batch in (1, 3):  # a symbolic batch
        diff = verify_onnx(done.path, model, torch.randn(batch, 3, 64, 64), missing_ok=False)
        assert diff < 1e-4, diff
    other = export_onnx(model, tmp_path / "det96.onnx", input_size=(96, 128))  # any size that tiles by 32
    assert verify_onnx(other.path, model, torch.randn(2, 3, 96, 128), missing_ok=False) < 1e-4
    with pytest.raises(ValueError, match=r"does not tile: every side must be a positive multiple of \(32, 32\)"):
        export_onnx(model, tmp_path / "bad.onnx", input_size=(80, 80))
    with pytest.raises(TypeError, match="without a classification head"):
        export_onnx(tiny(), tmp_path / "trunk.onnx")
