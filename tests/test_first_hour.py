"""A newcomer's first hour (issue 18): every tool works on the user's own model, offline Hub names
fail fast with what to do, saved folders describe themselves, and every --help teaches.

Tiny random models and generated inputs only; nothing is downloaded (Hub names are pointed at a
closed port on 127.0.0.1).
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from test_tools import write_clip  # clips written with a real codec, shared with the tool tests

import hiera
from hiera.cli import build_parser, main
from hiera.tools import mae_viz as viz

# The quickstart's model: 3 stages, not the zoo's 4.
THREE_STAGES = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 2, 2), q_pool=2,
                    mask_unit_size=(4, 4), mask_unit_attn=(True, False, False))
CLASSES = ["circle", "square", "triangle"]


def one_error_line(err: str, command: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hiera {command}: error: ") and "Traceback" not in err, err
    return lines[0]


def write_image(path, size=(80, 72), seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None]
    Image.fromarray(arr).save(path)
    return path


def three_stage_classifier(num_classes=len(CLASSES)):
    torch.manual_seed(0)
    model = hiera.Hiera(num_classes=num_classes, **THREE_STAGES).eval()
    with torch.no_grad():  # a head with a real range, so that the classes differ
        model.head.projection.weight.normal_(std=0.5)
    return model


def three_stage_mae():
    torch.manual_seed(0)
    return hiera.MaskedAutoencoderHiera(decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2, **THREE_STAGES)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Model folders as a run writes them (save_pretrained), and an image."""
    root = tmp_path_factory.mktemp("first_hour")
    classifier = three_stage_classifier()
    classifier.save_pretrained(root / "finetune" / "model")
    (root / "finetune" / "model" / "classes.txt").write_text("\n".join(CLASSES) + "\n")  # as a finetune run does
    mae = three_stage_mae()
    mae.save_pretrained(root / "pretrain" / "model")
    return {"root": root, "classifier": root / "finetune" / "model", "mae": root / "pretrain" / "model",
            "image": write_image(root / "photo.png"), "classifier_model": classifier, "mae_model": mae}


# ------------------------------------------------------------------------------ tools on your model
def test_features_defaults_come_from_the_model(folders, tmp_path, capsys):
    out = tmp_path / "feats"
    assert main(["features", str(folders["image"]), "--weights", str(folders["classifier"]), "--out", str(out),
                 "--no-progress"]) == 0
    maps = load_file(str(out / "photo.safetensors"))
    assert sorted(maps) == ["stage0", "stage1", "stage2"]  # every stage the model has: three
    assert [maps[f"stage{i}"].shape[0] for i in range(3)] == [16, 32, 64]
    # A stage the model does not have is a one-line error naming how many it has.
    assert main(["features", str(folders["image"]), "--weights", str(folders["classifier"]), "--out", str(out),
                 "--stages", "3", "--no-progress"]) == 1
    assert "the model has 3" in one_error_line(capsys.readouterr().err, "features")


def test_predict_names_classes_from_the_model_folder(folders, tmp_path, capsys):
    assert (folders["classifier"] / "classes.txt").read_text().split() == CLASSES
    out = tmp_path / "p.json"
    assert main(["predict", str(folders["image"]), "--weights", str(folders["classifier"]), "--output", str(out),
                 "--no-progress"]) == 0
    labels = [entry["label"] for entry in json.loads(out.read_text())["predictions"][0]["labels"]]
    assert sorted(labels) == CLASSES  # the top-3 of a 3-way head, by the names saved with it
    # --classes still wins over the saved names.
    (tmp_path / "names.txt").write_text("a\nb\nc\n")
    assert main(["predict", str(folders["image"]), "--weights", str(folders["classifier"]), "--classes",
                 str(tmp_path / "names.txt"), "--output", str(out), "--no-progress"]) == 0
    assert {e["label"] for e in json.loads(out.read_text())["predictions"][0]["labels"]} == {"a", "b", "c"}
    # A classes.txt that does not fit the head is an error naming it, not a silent renumbering.
    broken = tmp_path / "broken"
    shutil.copytree(folders["classifier"], broken)
    (broken / "classes.txt").write_text("only\ntwo\n")
    assert main(["predict", str(folders["image"]), "--weights", str(broken), "--no-progress"]) == 1
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "classes.txt holds 2 class names but the model has 3 outputs" in line


# ------------------------------------------------------------------------------ convert
def test_convert_refuses_weights_of_another_width_before_writing(tmp_path, capsys):
    # A 48-channel Hiera with Hiera-T's depths: every shape differs from hiera_tiny_224's 96 channels.
    with torch.device("meta"):
        shapes = hiera.Hiera(embed_dim=48, num_heads=1, stages=(1, 2, 7, 2)).state_dict()
    torch.save({"model_state": {k: torch.zeros(v.shape) for k, v in shapes.items()}}, tmp_path / "narrow.pth")
    for to, out in (("hf", "hf"), ("timm", "t.safetensors"), ("safetensors", "s.safetensors"), ("official", "o.pth")):
        assert main(["convert", str(tmp_path / "narrow.pth"), "--model", "hiera_tiny_224", "--to", to,
                     "--out", str(tmp_path / out)]) == 1
        line = one_error_line(capsys.readouterr().err, "convert")
        key, have, want = re.search(r"does not fit --model hiera_tiny_224: (\S+) is (\[[^]]*\]) in the weights but "
                                    r"(\[[^]]*\]) in the model", line).groups()
        assert have != want and shapes[key].shape == tuple(json.loads(have))
        assert not (tmp_path / out).exists()


def test_convert_never_resizes_a_position_embedding(tmp_path, capsys):
    # Hiera-T's weights made at 256 x 256: only the position embedding differs from hiera_tiny_224.
    with torch.device("meta"):
        shapes = hiera.hiera_tiny_224(input_size=(256, 256)).state_dict()
    state = {k: torch.zeros(v.shape) for k, v in shapes.items()}
    torch.save({"model_state": state}, tmp_path / "t256.pth")
    assert main(["convert", str(tmp_path / "t256.pth"), "--model", "hiera_tiny_224", "--to", "hf",
                 "--out", str(tmp_path / "hf")]) == 1
    line = one_error_line(capsys.readouterr().err, "convert")
    assert "pos_embed is [1, 4096, 96] in the weights but [1, 3136, 96] in the model" in line
    assert "never resized" in line and not (tmp_path / "hf").exists()
    # Without --model no zoo config describes these weights, so a layout that needs one says so.
    assert main(["convert", str(tmp_path / "t256.pth"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 1
    assert "pass --model" in one_error_line(capsys.readouterr().err, "convert")


def test_convert_to_timm_keeps_a_custom_model_config(folders, tmp_path):
    import timm.models.hiera as timm_hiera
    from timm.models import load_checkpoint

    from hiera import formats
    from hiera.zoo import load_model

    model = folders["classifier_model"]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x, return_logits=True)
    for name in ("mine_timm.safetensors", "mine_timm.pth"):
        timm_file = tmp_path / name
        assert main(["convert", str(folders["classifier"]), "--to", "timm", "--out", str(timm_file)]) == 0
        # timm itself reads it...
        net = timm_hiera.Hiera(**formats.official_config_to_timm(model.config)).eval()
        load_checkpoint(net, str(timm_file))
        with torch.no_grad():
            torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)
        # ...and it converts on with no architecture named (a custom model has no zoo name).
        for to in ("hf", "official"):
            out = tmp_path / f"{name}.{to}"
            assert main(["convert", str(timm_file), "--to", to, "--out", str(out)]) == 0
            with torch.no_grad():
                torch.testing.assert_close(load_model(weights=out)(x, return_logits=True), ref, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # and the tools read the file itself with its kept config
            torch.testing.assert_close(load_model(weights=timm_file)(x, return_logits=True), ref)


# ------------------------------------------------------------------------------ saved folders
def test_saved_model_folder_has_a_true_model_card(folders, tmp_path):
    folders["classifier_model"].save_pretrained(
        tmp_path / "model", classes=CLASSES,
        data={"train": "data/train (600 images, 3 classes)", "val": "data/val (150 images)"},
        training={"task": "finetune", "init": "pretrain/last.pt", "epochs": 10},
        metrics={"top-1 (%)": 68.0, "val loss": 0.912})
    assert (tmp_path / "model" / "classes.txt").read_text().split() == CLASSES
    card = (tmp_path / "model" / "README.md").read_text()
    params = sum(p.numel() for p in folders["classifier_model"].parameters())
    assert f"{params / 1e6:.2f} M parameters" in card
    assert "3 stages of 1, 2, 2 blocks" in card and "3 output classes" in card
    assert "circle, square, triangle" in card and "data/train (600 images, 3 classes)" in card
    assert "| top-1 (%) | 68 |" in card and "epochs: 10" in card
    for untrue in ("More Information Needed", "pushed", "push_to_hub", "Code:"):
        assert untrue not in card
    # The loading example in the card runs as written.
    (line,) = [line for line in card.splitlines() if "hiera.load_model(" in line]
    scope = {"hiera": hiera}
    exec(line, scope)
    loaded = scope["model"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, return_logits=True), folders["classifier_model"](x, return_logits=True))

    # An MAE's card loads it as an MAE, and tells how to fine-tune from it.
    mae_card = (folders["mae"] / "README.md").read_text()
    (line,) = [line for line in mae_card.splitlines() if "hiera.load_model(" in line]
    scope = {"hiera": hiera}
    exec(line, scope)
    assert isinstance(scope["model"], hiera.MaskedAutoencoderHiera)
    assert "hiera finetune" in mae_card and "## Classes" not in mae_card

    # Saving again replaces the card this package wrote, never one a person wrote.
    folder = tmp_path / "again"
    old = os.umask(0o022)
    try:
        folders["classifier_model"].save_pretrained(folder)
        folders["classifier_model"].save_pretrained(folder, classes=CLASSES)
        assert "circle, square, triangle" in (folder / "README.md").read_text()
        for path in folder.iterdir():  # classes.txt and the weights alike: readable by others
            assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
        (folder / "README.md").write_text("# my notes\n")
        folders["classifier_model"].save_pretrained(folder, classes=CLASSES)
    finally:
        os.umask(old)
    assert (folder / "README.md").read_text() == "# my notes\n"
    with pytest.raises(ValueError, match="2 class names for a head of 3"):
        folders["classifier_model"].save_pretrained(tmp_path / "bad", classes=["a", "b"])


# ------------------------------------------------------------------------------ mae-viz
def _ink_columns(cell: np.ndarray) -> np.ndarray:
    return np.nonzero((cell < 128).any(axis=(0, 2)))[0]


def test_mae_viz_pictures_are_readable_and_captioned(folders, tmp_path):
    out = tmp_path / "viz"
    assert main(["mae-viz", str(folders["image"]), "--weights", str(folders["mae"]), "--out", str(out)]) == 0
    img = np.asarray(Image.open(out / "photo.png").convert("RGB"))
    scale = viz.auto_scale(64, 64)
    assert 64 * scale >= viz.MIN_PANEL
    width, grid_height = viz.grid_size(64, 64, scale=scale, columns=5, font_size=viz.CLI_FONT_SIZE)
    assert img.shape[1] == width and width >= 5 * viz.MIN_PANEL  # five panels, each readable
    below = img[grid_height:]
    assert below.shape[0] > 40 and (below < 128).any()  # a caption under the pictures
    # Every title fits its column: no ink reaches the edge where the title would be clipped.
    header = img[: grid_height - 64 * scale - 4]
    panel, pad = 64 * scale, 2
    for c in range(5):
        ink = _ink_columns(header[:, pad + c * (panel + pad): pad + c * (panel + pad) + panel])
        assert ink.size and ink.max() < panel - 8, c


def test_mae_viz_video_caption_explains_the_layout_and_shows_the_raw_prediction(tmp_path):
    torch.manual_seed(0)
    video_mae = hiera.mae_hiera_base_16x224(input_size=(8, 64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1),
                                            decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1)
    video_mae.save_pretrained(tmp_path / "vmae")
    x = torch.randn(1, 3, 8, 64, 64)
    result = viz.mae_reconstruction(video_mae, x)
    text = viz.caption_text(result)
    assert "mean and std of the true patch" in text and "random weights" in text and "raw prediction" in text
    assert "clip frames 0, 2, 4, 6, each the first frame of a tubelet" in text
    assert "clip frames 0, 6, each" in viz.caption_text(result, frames=2)  # the rows a --frames 2 grid shows
    # The raw prediction is the decoder's per-patch normalised output, mid-grey at each patch's mean.
    assert result.raw is not None and result.raw.shape == result.reconstruction.shape
    with torch.no_grad():
        latent, mask = video_mae.forward_encoder(x, 0.9, mask=result.mask)
        pred, _ = video_mae.forward_decoder(latent, mask)
    expected = viz.tokens_to_video((0.5 + pred / 4).clamp(0, 1), 3, (4, 4, 4), 16)
    torch.testing.assert_close(result.raw, expected)

    clip = write_clip(tmp_path / "clip.mp4")
    assert main(["mae-viz", str(clip), "--weights", str(tmp_path / "vmae"), "--frames", "2",
                 "--out", str(tmp_path / "viz")]) == 0
    with Image.open(tmp_path / "viz" / "clip.png") as img:
        width, grid_height = viz.grid_size(64, 64, rows=2, scale=viz.auto_scale(64, 64), columns=5,
                                           font_size=viz.CLI_FONT_SIZE)
        assert img.width == width and img.height > grid_height + 40  # 5 columns, 2 rows, a caption


def test_one_meaning_of_device_auto():
    from hiera.tools import predict
    from hiera.train import engine

    assert engine.resolve_device is predict.resolve_device
    expected = "cuda" if torch.cuda.is_available() else (
        "mps" if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available() else "cpu")
    assert predict.resolve_device("auto").type == predict.resolve_device(None).type == expected
    parser = build_parser()
    checked = []
    for name, sub in _subcommands(parser).items():
        if name == "benchmark":  # its --device is resolved by benchmark's own code (cpu or cuda only)
            continue
        device = [a for a in sub._actions if "--device" in a.option_strings]
        if device:
            assert device[0].default == "auto", name
            checked.append(name)
    assert {"predict", "features", "mae-viz", "finetune", "evaluate"} <= set(checked)


# ------------------------------------------------------------------------------ Hub names offline
@pytest.fixture()
def hub_unreachable(tmp_path, monkeypatch):
    """huggingface_hub pointed at a closed port on 127.0.0.1 with an empty cache, offline mode off."""
    from hubserver import patch_hf_environment, unused_local_url

    return patch_hf_environment(monkeypatch, endpoint=unused_local_url(), hf_home=tmp_path / "hf_home", token=None)


@pytest.mark.parametrize("command,model", [
    ("predict", "facebook/hiera_base_224.mae_in1k_ft_in1k"),
    ("features", "hiera_small_abswin_256"),
])
def test_hub_names_offline_fail_fast_with_what_to_do(hub_unreachable, folders, capsys, command, model):
    start = time.monotonic()
    code = main([command, str(folders["image"]), "--model", model, "--no-progress"])
    elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 10, (elapsed, err)  # huggingface_hub's own retries take about 26 s
    assert "Retrying" not in err
    line = one_error_line(err, command)
    assert "cannot reach" in line and "not in the local cache" in line
    assert "HF_HUB_OFFLINE=1" in line and "--weights PATH" in line and "hf download" in line


def test_hub_name_offline_with_hf_hub_offline_set(hub_unreachable, folders, monkeypatch, capsys):
    from hubserver import set_hf_offline

    set_hf_offline(monkeypatch)
    assert main(["predict", str(folders["image"]), "--model", "facebook/hiera_base_224.mae_in1k_ft_in1k"]) == 1
    line = one_error_line(capsys.readouterr().err, "predict")
    assert "HF_HUB_OFFLINE=1 is set" in line and "not in the local cache" in line


def test_hub_name_unreachable_but_cached_loads_from_the_cache(hub_unreachable, folders, capsys):
    from hubserver import prefill_hf_cache
    from safetensors.torch import save

    model = folders["classifier_model"]
    prefill_hf_cache(hub_unreachable, "someone/tiny-hiera", {
        "config.json": json.dumps(model.config, default=list),
        "model.safetensors": save({k: v.contiguous() for k, v in model.state_dict().items()}),
    })
    start = time.monotonic()
    assert main(["predict", str(folders["image"]), "--model", "someone/tiny-hiera", "--no-progress",
                 "--format", "json"]) == 0
    assert time.monotonic() - start < 10
    assert len(json.loads(capsys.readouterr().out)["predictions"][0]["labels"]) == 3


# ------------------------------------------------------------------------------ command line
def _subcommands(parser: argparse.ArgumentParser) -> dict:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"hiera {version('hiera-toolkit')}"


SPHINX = re.compile(r"``|:(mod|func|class|meth|attr|data):`")


def test_every_help_has_an_example_and_no_stale_names():
    parser = build_parser()
    helps = {"hiera": parser.format_help()}
    helps.update({f"hiera {name}": sub.format_help() for name, sub in _subcommands(parser).items()})
    assert {"hiera zoo", "hiera mae-viz", "hiera export", "hiera benchmark", "hiera convert"} <= set(helps)
    for name, text in helps.items():
        assert re.search(r"^examples?:$", text, re.M), f"{name} --help has no example"
        assert not re.search(r"hiera train\b", text), name  # the commands are pretrain / finetune / evaluate
        assert "best.pth" not in text, name  # runs write last.pt and model/
        assert not SPHINX.search(text), f"{name} --help shows Sphinx markup: {SPHINX.search(text).group()}"


def test_default_output_folders_are_ignored_by_git():
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    parser = build_parser()
    outs = []
    for name, sub in _subcommands(parser).items():
        for action in sub._actions:
            if "--out" in action.option_strings and isinstance(action.default, str):
                outs.append(action.default)
    assert {"quickstart", "features", "mae_viz"} <= set(outs)
    for out in outs + ["runs", "hiera_base_224.onnx"]:
        probe = f"{out}/x.png" if "." not in out else out
        ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=root).returncode == 0
        assert ignored, f"{probe} is not in .gitignore"
