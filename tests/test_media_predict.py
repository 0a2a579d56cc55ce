"""Media reading, frame sampling, evaluation transforms, class names, ``predict`` and ``features``.

Everything is generated here: tiny random models saved with ``save_pretrained`` (loaded back
through ``hiera.load_model`` by the CLI), images written with PIL, videos with PyAV.
"""

import argparse
import csv
import io
import json

import av
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import hiera
from hiera.cli import features as features_cli
from hiera.cli import predict as predict_cli
from hiera.data.labels import class_names, imagenet_classes, kinetics400_classes, read_class_names
from hiera.data.media import (
    MediaError,
    find_media,
    load_clips,
    load_image,
    probe_video,
    read_video,
    sample_frame_indices,
)
from hiera.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    KINETICS_MEAN,
    KINETICS_STD,
    ImageEvalTransform,
    VideoEvalTransform,
    eval_transform,
)
from hiera.tools import features as extract_mod
from hiera.tools import predict as predict_mod

VIDEO_CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"


# ----------------------------------------------------------------------------------------- helpers
def write_video(path, num_frames, width=64, height=48, fps=30, codec="mpeg4", gop=None, frame_fn=None):
    """Frame i is a flat grey of level 8 * i (or frame_fn(i)), easy to recognise after lossy coding."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for i in range(num_frames):
            arr = frame_fn(i) if frame_fn else np.full((height, width, 3), (8 * i) % 256, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def cli(argv):
    """``hiera <argv>`` with this module's sub-commands on a local parser (hiera.cli wires them all)."""
    parser = argparse.ArgumentParser(prog="hiera")
    sub = parser.add_subparsers(dest="command")
    predict_cli.add_parser(sub)
    features_cli.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    image = hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=10)
    image.save_pretrained(root / "image")
    video = hiera.hiera_base_16x224(input_size=(8, 64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1),
                                    num_classes=400)
    video.save_pretrained(root / "video")
    return {"image": root / "image", "video": root / "video",
            "image_model": image.eval(), "video_model": video.eval()}


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    rng = np.random.default_rng(0)
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)).save(images / "wide.jpg", quality=90)
    Image.fromarray(rng.integers(0, 255, (120, 60, 3), dtype=np.uint8)).save(images / "sub" / "tall.png")
    Image.fromarray(rng.integers(0, 255, (33, 47, 4), dtype=np.uint8), "RGBA").save(images / "alpha.png")
    # Stored 40 wide x 20 high, tagged "rotate 90 CW to display": upright it is 20 x 40.
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = Image.fromarray(rng.integers(0, 255, (20, 40, 3), dtype=np.uint8))
    stored.save(images / "rotated.jpg", exif=exif.tobytes())
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4)
    (images / "notes.txt").write_text("not media")
    (images / ".hidden.png").write_bytes(b"")

    videos = root / "videos"
    videos.mkdir()
    write_video(videos / "clip.mp4", 40, codec=VIDEO_CODEC)
    write_video(videos / "short.mp4", 5)  # fewer frames than one 8-frame clip at stride 4 needs
    write_video(videos / "portrait.mp4", 12, width=48, height=64)
    (videos / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))
    return {"root": root, "images": images, "videos": videos}


# ----------------------------------------------------------------------------------------- labels
def test_dataset_class_names_come_from_torchvision():
    imagenet, kinetics = imagenet_classes(), kinetics400_classes()
    assert len(imagenet) == 1000 and imagenet[0] == "tench"
    assert len(kinetics) == 400 and kinetics[0] == "abseiling"
    assert class_names(1000, video=False) == imagenet
    assert class_names(400, video=True) == kinetics
    assert class_names(10) == [f"class_{i}" for i in range(10)]
    assert class_names(1000, video=True, generic=False) is None  # a 1000-way video head is not ImageNet


def test_user_class_names(tmp_path):
    (tmp_path / "names.txt").write_text("cat\ndog\nbird\n\n")
    assert read_class_names(tmp_path / "names.txt") == ["cat", "dog", "bird"]
    (tmp_path / "names.json").write_text(json.dumps({"1": ["n2", "dog"], "0": ["n1", "cat"]}))
    assert read_class_names(tmp_path / "names.json") == ["cat", "dog"]
    for name in ("zebra", "Ant", "bee"):
        (tmp_path / "train" / name).mkdir(parents=True)
    assert read_class_names(tmp_path / "train") == ["Ant", "bee", "zebra"]  # ImageFolder's order
    assert class_names(3, source=tmp_path / "names.txt") == ["cat", "dog", "bird"]
    with pytest.raises(ValueError, match="holds 3 names but the model has 4"):
        class_names(4, source=tmp_path / "names.txt")
    (tmp_path / "gaps.txt").write_text("a\n\nb\n")
    with pytest.raises(ValueError, match="blank lines"):
        read_class_names(tmp_path / "gaps.txt")


# ----------------------------------------------------------------------------------------- sampling
def test_sample_center_and_uniform():
    idx = sample_frame_indices(100, num_frames=16, stride=4, mode="center")
    assert idx.shape == (1, 16) and idx.dtype == torch.long
    assert torch.all(idx.diff(dim=1) == 4)
    assert abs(idx[0, 0].item() + idx[0, -1].item() - 99) <= 1  # centred

    idx = sample_frame_indices(100, 16, 4, mode="uniform", num_clips=5)
    assert idx.shape == (5, 16)
    assert idx[0, 0] == 0 and idx[-1, -1] == 99  # the clips cover the whole video
    assert torch.all(idx[1:, 0] > idx[:-1, 0])  # evenly spaced, increasing starts
    assert torch.equal(sample_frame_indices(100, 16, 4, "uniform", 1), sample_frame_indices(100, 16, 4, "center"))


def test_sample_random_is_seeded_and_in_range():
    draw = lambda seed: sample_frame_indices(  # noqa: E731
        200, 16, 4, mode="random", num_clips=8, generator=torch.Generator().manual_seed(seed))
    a, b = draw(1), draw(1)
    assert torch.equal(a, b) and not torch.equal(a, draw(2))
    assert a.min() >= 0 and a.max() <= 199 and torch.all(a.diff(dim=1) == 4)


def test_sample_short_videos_are_padded():
    clamp = sample_frame_indices(10, 16, 4, mode="center")
    assert clamp[0].tolist() == [0, 4, 8] + [9] * 13
    stretch = sample_frame_indices(10, 16, 4, mode="uniform", num_clips=3, pad="stretch")
    assert stretch.shape == (3, 16) and stretch[0, 0] == 0 and stretch[0, -1] == 9
    assert torch.all(stretch.diff(dim=1) >= 0)
    one = sample_frame_indices(1, 16, 4, mode="random")
    assert torch.all(one == 0)
    # Fractional strides (other frame rates) keep their pace on average.
    assert sample_frame_indices(1000, 16, 8 / 3, "center")[0].diff().float().mean().item() == pytest.approx(8 / 3, abs=0.1)
    with pytest.raises(ValueError, match="no frames"):
        sample_frame_indices(0)
    with pytest.raises(ValueError, match="single clip"):
        sample_frame_indices(100, mode="center", num_clips=2)


# ----------------------------------------------------------------------------------------- reading
def test_load_image_exif_alpha_and_errors(media):
    assert load_image(media["images"] / "rotated.jpg").size == (20, 40)  # upright: 20 wide, 40 high
    img = load_image(media["images"] / "alpha.png")
    assert img.mode == "RGB" and img.size == (47, 33)
    with pytest.raises(MediaError, match="broken.jpg: (not an image|cannot decode)"):
        load_image(media["images"] / "broken.jpg")
    with pytest.raises(MediaError, match="no such file"):
        load_image(media["images"] / "missing.jpg")


def test_read_video_all_and_selected_frames(media, tmp_path):
    frames, fps = read_video(media["videos"] / "clip.mp4")
    assert frames.shape == (40, 48, 64, 3) and frames.dtype == np.uint8 and fps == pytest.approx(30)
    assert abs(int(frames[10].mean()) - 80) <= 6  # frame i is grey level 8 * i
    info = probe_video(media["videos"] / "clip.mp4")
    assert (info.num_frames, info.width, info.height) == (40, 64, 48)

    # Seeking (keyframe every 8 frames) gives exactly the frames of a full decode, in the order
    # asked, with repeats; indices past the end repeat the last frame.
    path = tmp_path / "gop.mp4"
    write_video(path, 60, gop=8)
    full, _ = read_video(path)
    want = [50, 3, 3, 30, 59, 75]
    some, _ = read_video(path, want, seek_gap=4)
    assert np.array_equal(some, full[[50, 3, 3, 30, 59, 59]])
    clips, info = load_clips(path, 8, 4, "uniform", 3, max_decode_bytes=1)  # forces the seeking path
    expect = full[sample_frame_indices(60, 8, 4, "uniform", 3).numpy()]
    assert clips.shape == (3, 8, 48, 64, 3) and np.array_equal(clips, expect)

    with pytest.raises(MediaError, match="corrupt.mp4"):
        read_video(media["videos"] / "corrupt.mp4")


def test_find_media(media):
    found = find_media([media["images"], media["root"] / "nope.jpg", media["images"] / "notes.txt"])
    names = sorted(p.name for p in found)
    assert names == ["alpha.png", "broken.jpg", "rotated.jpg", "tall.png", "wide.jpg"]  # by extension
    reasons = {s.path.split("/")[-1]: s.reason for s in found.skipped}
    assert "no such file" in reasons["nope.jpg"] and "not an image or video" in reasons["notes.txt"]
    assert str(found.relative_name(media["images"] / "sub" / "tall.png")) == "sub/tall.png"
    vids = find_media([media["videos"], media["images"] / "wide.jpg"], kinds=("video",))
    assert sorted(p.name for p in vids) == ["clip.mp4", "corrupt.mp4", "portrait.mp4", "short.mp4"]
    assert "is an image, but this model takes videos" in vids.skipped[0].reason


# ----------------------------------------------------------------------------------------- transforms
def test_image_transform_matches_reference_and_generalises():
    from torchvision import transforms as T

    reference = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224),
                           T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    rng = np.random.default_rng(0)
    for h, w in ((300, 400), (400, 260)):
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out = ImageEvalTransform(224)(img)
        assert out.shape == (3, 224, 224) and torch.allclose(out, reference(img), atol=1e-5)
    # Mean-coloured image -> zeros: the ImageNet statistics are applied per channel.
    grey = Image.new("RGB", (90, 70), tuple(round(255 * m) for m in IMAGENET_MEAN))
    assert ImageEvalTransform((64, 96))(grey).shape == (3, 64, 96)
    assert ImageEvalTransform(64)(grey).abs().max() < 0.01
    assert ImageEvalTransform((64, 96), crop_pct=None)(grey).shape == (3, 64, 96)


def test_video_transform_views_geometry_and_normalisation():
    # Frames 64 high x 128 wide whose pixel value is the column index: crops can be located exactly.
    ramp = np.broadcast_to(np.arange(128, dtype=np.uint8)[None, None, :, None], (5, 8, 64, 128, 3)).copy()
    multi = VideoEvalTransform((8, 64, 64), views="multi")
    views = multi(ramp)
    assert views.shape == (15, 3, 8, 64, 64) and multi.num_views == 15
    cols = (views * KINETICS_STD[0] + KINETICS_MEAN[0]) * 255  # undo the normalisation
    # Short side already equals the crop (64): left / centre / right crops start at 0, 32, 64.
    assert [round(cols[v, 0, 0, 0, 0].item()) for v in range(3)] == [0, 32, 64]
    assert round(cols[2, 0, 0, 0, -1].item()) == 127

    tall = np.broadcast_to(np.arange(128, dtype=np.uint8)[None, None, :, None, None], (1, 8, 128, 64, 3)).copy()
    rows = (VideoEvalTransform((8, 64, 64), views="multi", num_clips=1)(tall) * 0.225 + 0.45) * 255
    assert [round(rows[v, 0, 0, 0, 0].item()) for v in range(3)] == [0, 32, 64]  # top / centre / bottom

    single = VideoEvalTransform((8, 64, 64))
    grey = np.full((8, 48, 80, 3), round(0.45 * 255), np.uint8)
    out = single(grey)
    assert out.shape == (1, 3, 8, 64, 64) and out.abs().max() < 0.01  # Kinetics mean -> 0
    assert single.indices(100).shape == (1, 8) and multi.indices(100).shape == (5, 8)
    assert single.indices(200, fps=60).diff().float().mean() == pytest.approx(8, abs=0.2)  # same pace in seconds


def test_eval_transform_picks_from_the_model(models):
    t = eval_transform(models["image_model"])
    assert isinstance(t, ImageEvalTransform) and t.input_size == (64, 64)
    v = eval_transform(models["video_model"], views="multi")
    assert isinstance(v, VideoEvalTransform) and v.num_frames == 8 and v.num_views == 15
    assert eval_transform("hiera_base_224").input_size == (224, 224)
    zoo_video = eval_transform(hiera.MODELS["hiera_base_16x224"])
    assert (zoo_video.num_frames, zoo_video.stride, zoo_video.crop_size) == (16, 4, (224, 224))


# ----------------------------------------------------------------------------------------- predict
def test_predict_library(models, media):
    results = predict_mod.predict(models["image_model"], [media["images"]], topk=3, batch_size=2,
                                  class_names=[f"c{i}" for i in range(10)], progress=False)
    assert len(results) == 4 and [s.path.split("/")[-1] for s in results.skipped] == ["broken.jpg"]
    for r in results:
        scores = [p for _, p in r["labels"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1
        assert all(name == f"c{k}" for (name, _), k in zip(r["labels"], r["indices"]))
    # Same numbers as running the model by hand on the transformed image.
    x = ImageEvalTransform(64)(load_image(media["images"] / "wide.jpg"))[None]
    with torch.no_grad():
        probs = models["image_model"](x, return_logits=True).softmax(-1)[0]
    wide = next(r for r in results if r["path"].endswith("wide.jpg"))
    assert wide["labels"][0][1] == pytest.approx(probs.max().item(), rel=1e-5)


def test_predict_multi_view_short_clip_averages_15_views(models, media):
    rows = []
    hook = models["video_model"].head.register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    try:
        results = predict_mod.predict(models["video_model"], [media["videos"] / "short.mp4"], views="multi",
                                      batch_size=4, progress=False)
    finally:
        hook.remove()
    assert sum(rows) == 15 and max(rows) <= 4  # 5 clips x 3 crops, in passes of at most 4
    assert len(results) == 1 and len(results[0]["labels"]) == 5
    assert results[0]["labels"][0][0] in kinetics400_classes()


def test_cli_predict_json_csv_and_corrupt_file(models, media, tmp_path, capsys):
    out = tmp_path / "preds.json"
    code = cli(["predict", str(media["images"]), "--weights", str(models["image"]), "--topk", "2",
                "--output", str(out), "--no-progress"])
    assert code == 0
    data = json.loads(out.read_text())
    assert len(data["predictions"]) == 4 and len(data["skipped"]) == 1
    assert data["skipped"][0]["path"].endswith("broken.jpg")
    assert all(len(p["labels"]) == 2 and p["labels"][0]["label"].startswith("class_") for p in data["predictions"])
    err = capsys.readouterr().err
    assert "4 classified, 1 skipped" in err and "Traceback" not in err

    code = cli(["predict", str(media["images"] / "wide.jpg"), str(media["images"] / "sub"), "--weights",
                str(models["image"]), "--format", "csv", "--topk", "3", "--no-progress"])
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert code == 0 and len(rows) == 6 and [r["rank"] for r in rows[:3]] == ["1", "2", "3"]
    assert 0 < float(rows[0]["score"]) <= 1

    assert cli(["predict", str(media["images"]), "--weights", str(models["image"]), "--strict",
                "--format", "json", "--no-progress"]) == 1  # a skipped input fails with --strict


def test_cli_predict_video_multi_view(models, media, capsys):
    code = cli(["predict", str(media["videos"]), "--weights", str(models["video"]), "--views", "multi",
                "--topk", "3", "--format", "json", "--no-progress"])
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert code == 0
    assert sorted(p["path"].split("/")[-1] for p in data["predictions"]) == ["clip.mp4", "portrait.mp4", "short.mp4"]
    assert [s["path"].split("/")[-1] for s in data["skipped"]] == ["corrupt.mp4"]


def test_cli_errors_are_one_line(models, media, tmp_path, capsys):
    assert cli(["predict", str(media["images"]), "--weights", str(tmp_path / "missing.pth")]) == 1
    err = capsys.readouterr().err
    assert "could not load the model" in err and "Traceback" not in err
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert cli(["predict", str(media["images"]), "--weights", str(tmp_path / "junk.pth")]) == 1
    assert "could not load the model" in capsys.readouterr().err
    assert cli(["predict", str(media["images"])]) == 1
    assert "--model NAME" in capsys.readouterr().err
    assert cli(["predict", str(tmp_path / "nothing_here"), "--weights", str(models["image"]), "--no-progress"]) == 1
    assert "no input could be classified" in capsys.readouterr().err
    (tmp_path / "two.txt").write_text("a\nb\n")
    assert cli(["predict", str(media["images"]), "--weights", str(models["image"]), "--classes",
                str(tmp_path / "two.txt"), "--no-progress"]) == 1
    assert "holds 2 names but the model has 10 classes" in capsys.readouterr().err


def test_help_teaches(capsys):
    for command in ("predict", "features"):
        with pytest.raises(SystemExit):
            cli([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and "--model" in text and "--weights" in text


# ----------------------------------------------------------------------------------------- features
def test_cli_features_non_square(models, media, tmp_path, capsys):
    out = tmp_path / "feats"
    code = cli(["features", str(media["images"]), "--weights", str(models["image"]), "--size", "64", "96",
                "--out", str(out), "--no-progress"])
    assert code == 0
    assert "4 written, 1 skipped" in capsys.readouterr().err
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.safetensors"))
    assert written == ["alpha.safetensors", "rotated.safetensors", "sub/tall.safetensors", "wide.safetensors"]
    maps = load_file(str(out / "wide.safetensors"))
    assert {k: tuple(v.shape) for k, v in maps.items()} == {
        "stage0": (16, 16, 24), "stage1": (32, 8, 12), "stage2": (64, 4, 6), "stage3": (128, 2, 3)}

    code = cli(["features", str(media["images"] / "wide.jpg"), "--weights", str(models["image"]), "--stages", "1", "-1",
                "--pooled", "--format", "npy", "--out", str(out / "npy"), "--no-progress"])
    assert code == 0
    assert np.load(out / "npy" / "wide.stage3.npy").shape == (128,)
    assert np.load(out / "npy" / "wide.stage1.npy").shape == (32,)

    assert cli(["features", str(media["images"]), "--weights", str(models["image"]), "--size", "64", "90",
                "--out", str(out)]) == 1
    assert "multiple of (32, 32)" in capsys.readouterr().err


def test_extract_features_library_nhwc_and_video(models, media, tmp_path):
    res = extract_mod.extract_features(models["image_model"], [media["images"] / "sub"], tmp_path / "a",
                                       stages=(0, 3), output_fmt="NHWC", progress=False)
    assert res[0]["shapes"] == {"stage0": (16, 16, 16), "stage3": (2, 2, 128)}
    res = extract_mod.extract_features(models["video_model"], [media["videos"] / "clip.mp4"], tmp_path / "v",
                                       stages=(0,), progress=False)
    assert res[0]["shapes"] == {"stage0": (8, 4, 16, 16)}  # [C, T/2, H/4, W/4]


def test_zoo_name_offline_and_uncached_fails_fast_with_instructions(tmp_path, monkeypatch, capsys):
    """No weights in the torch-hub cache and no way to download: a one-line error saying what to do."""
    import time

    from PIL import Image

    from hiera.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HIERA_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # nothing listens there
    Image.new("RGB", (32, 32)).save(tmp_path / "a.png")
    start = time.monotonic()
    assert main(["predict", str(tmp_path / "a.png"), "--model", "hiera_tiny_224"]) != 0
    assert time.monotonic() - start < 30
    err = capsys.readouterr().err
    assert "Put the file at" in err and "hiera_tiny_224.pth" in err and "Traceback" not in err
