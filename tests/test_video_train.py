"""Video end to end: clips decoded with PyAV, sampled and augmented per clip, video MAE pretraining
(labels against the official package on the same clip), fine-tuning from it, 3x5-view evaluation,
resume after an interruption.

Every clip is written here with a real encoder (PyAV): frame ``i`` of a "level" video is a flat grey
of level ``4 * i`` (easy to recognise after lossy coding), and the two training classes are a bright
bar moving right or moving down. Models are tiny video Hieras (8 frames of 64 x 64).
"""

import json
from pathlib import Path

import av
import conftest
import numpy as np
import pytest
import torch

import hiera
from hiera.cli import main
from hiera.data.images import collate
from hiera.data.media import load_clips
from hiera.data.transforms import KINETICS_MEAN, KINETICS_STD, VideoEvalTransform
from hiera.data.video import ClipSampling, VideoFiles, VideoTrainTransform, ViewAverage, open_videos, read_clips
from hiera.train.commands import evaluate, finetune, pretrain
from hiera.train.recipes import (
    finetune_recipe,
    pretrain_recipe,
    video_finetune_recipe,
    video_pretrain_recipe,
)

CODEC = "libx264" if "libx264" in av.codecs_available else "mpeg4"
VIDEO = dict(input_size=(8, 64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_stride=(1, 2, 2),
             mask_unit_size=(1, 8, 8), patch_kernel=(3, 7, 7), patch_stride=(2, 4, 4), patch_padding=(1, 3, 3),
             sep_pos_embed=True)
MAE = dict(VIDEO, q_pool=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)
FAST = dict(progress=False, num_workers=0, log_every=1)


def write_video(path, num_frames, width=80, height=64, fps=30, frame_fn=None):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODEC, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            arr = frame_fn(i) if frame_fn else np.full((height, width, 3), 4 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def moving_bar(direction, width=80, height=64, phase=0):
    def frame(i):
        arr = np.full((height, width, 3), 20, np.uint8)
        if direction == "right":
            x = (phase + 4 * i) % width
            arr[:, max(0, x - 6):x + 6] = (250, 250, 250)
        else:
            y = (phase + 4 * i) % height
            arr[max(0, y - 6):y + 6, :] = (250, 250, 250)
        return arr
    return frame


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    for split, count in (("train", 8), ("val", 3)):
        for direction in ("right", "down"):
            folder = root / split / direction
            folder.mkdir(parents=True)
            for j in range(count):
                write_video(folder / f"{j}.mp4", 24 + 5 * j, frame_fn=moving_bar(direction, phase=7 * j))
    (root / "train" / "down" / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(300))
    levels = root / "levels"
    levels.mkdir()
    write_video(levels / "long.mp4", 60)
    write_video(levels / "short.mp4", 5)  # fewer frames than one 8-frame clip 4 apart spans (29)
    write_video(levels / "fast.mp4", 60, fps=60)
    return root


def levels(frames):
    """Frame number of each frame of a uint8 clip [T, H, W, 3] of a level video (frame i is grey 4 * i)."""
    return [int(round(float(f.float().mean()) / 4)) for f in torch.as_tensor(np.asarray(frames))]


def metrics(run_dir, split="train"):
    return [r for r in map(json.loads, (Path(run_dir) / "metrics.jsonl").read_text().splitlines()) if r["split"] == split]


# ------------------------------------------------------------------------------------ data
def test_clip_sampling_decodes_the_right_frames(clips):
    long = clips / "levels" / "long.mp4"
    raw = VideoFiles([(long, 0)], sampling=ClipSampling(num_frames=8, stride=4, mode="random"), seed=1)
    a, b = raw[(0, 0)]["image"], raw[(0, 0)]["image"]
    assert a.shape == (8, 64, 80, 3) and a.dtype == torch.uint8 and torch.equal(a, b)  # seeded per sample
    got = levels(a)
    assert [g - got[0] for g in got] == list(range(0, 32, 4)) and 0 <= got[0] <= 60 - 29  # stride 4, in range
    starts = {levels(raw[(epoch, 0)]["image"])[0] for epoch in range(8)}
    assert len(starts) > 2  # a new random start each epoch

    # The stride counts frames at 30 fps: a 60 fps video is read every 8 frames.
    fast = read_clips(clips / "levels" / "fast.mp4", ClipSampling(num_frames=8, stride=4, mode="center"))[0]
    assert np.diff(levels(fast)).tolist() == [8] * 7

    # Evaluation clips are exactly what `hiera predict` reads: the same sampler, the same decoder.
    view = VideoEvalTransform((8, 48, 48), views="multi")
    data = VideoFiles([(long, 0)], transform=view)
    assert data.sampling == ClipSampling(8, 4, 30.0, "uniform", 5, "clamp")
    assert torch.equal(data[(0, 0)]["image"], view.load(long))
    uniform = load_clips(long, 8, 4, "uniform", 5)[0]
    assert [levels(c)[0] for c in uniform] == [0, 8, 16, 23, 31]  # 5 clips spread over 60 frames


def test_short_clips_are_padded_and_unreadable_files_counted(clips, tmp_path):
    short = clips / "levels" / "short.mp4"
    for mode in ("random", "center"):
        clip = read_clips(short, ClipSampling(num_frames=8, stride=4, mode=mode))[0]
        assert levels(clip) == [0, 4, 4, 4, 4, 4, 4, 4]  # frames 0 and 4, then the last one repeated
    data = open_videos(clips / "train", transform=VideoTrainTransform((64, 64)),
                       sampling=ClipSampling(num_frames=8), mask_units=16)
    assert data.classes == ["down", "right"] and len(data) == 17
    broken = [i for i, (p, _) in enumerate(data.items) if p.name == "broken.mp4"]
    batch = collate([data[(0, i)] for i in broken + [0, 1]])
    assert batch["n_bad"] == 1 and batch["n"] == 2 and batch["image"].shape == (2, 3, 8, 64, 64)


def test_csv_lists_with_segments_and_headers(clips, tmp_path):
    long = clips / "levels" / "long.mp4"
    (tmp_path / "plain.csv").write_text(f"{long},walk,1.0,1.5\n{long},run\n")
    data = VideoFiles.from_list(tmp_path / "plain.csv", sampling=ClipSampling(num_frames=4, stride=2, mode="random"))
    assert data.classes == ["run", "walk"] and data.labels == [1, 0] and data.segments[0] == (1.0, 1.5)
    for epoch in range(5):  # seconds 1.0-1.5 are frames 30-44: every clip stays inside
        assert all(30 <= x < 45 for x in levels(data[(epoch, 0)]["image"]))

    (tmp_path / "header.csv").write_text(f"label,path,time_start,time_end\n3,{long},0,0.5\n")
    data = VideoFiles.from_list(tmp_path / "header.csv", sampling=ClipSampling(num_frames=4, stride=2, mode="center"))
    assert data.labels == [3] and max(levels(data[(0, 0)]["image"])) < 15

    (tmp_path / "nopath.csv").write_text(f"label,video,time_start,time_end\n3,{long},0,1\n")
    with pytest.raises(ValueError, match="no 'path' column"):
        VideoFiles.from_list(tmp_path / "nopath.csv")
    (tmp_path / "three.csv").write_text(f"{long},3,0.5\n")
    with pytest.raises(ValueError, match=r"three.csv:1: expected 'path'.*3 columns"):
        VideoFiles.from_list(tmp_path / "three.csv")
    (tmp_path / "late.csv").write_text(f"{long},0,9,10\n")  # the video lasts 2 s
    assert VideoFiles.from_list(tmp_path / "late.csv")[(0, 0)] is None  # skipped, as an unreadable file


def test_training_augmentation_is_one_choice_per_clip():
    frame = np.random.default_rng(0).integers(0, 255, (48, 72, 3), dtype=np.uint8)
    clip = np.stack([frame] * 6)  # a still video: every frame must stay identical after augmentation
    t = VideoTrainTransform((32, 32), scale=(0.2, 1.0), rand_augment="rand-m9-mstd0.5-inc1", reprob=1.0, remode="const")
    outs = []
    for seed in range(4):
        torch.manual_seed(seed)
        x = t(clip)
        assert x.shape == (3, 6, 32, 32) and x.dtype == torch.float32
        assert all(torch.equal(x[:, 0], x[:, k]) for k in range(6)), "a frame got another crop / op / box"
        outs.append(x)
    assert not torch.equal(outs[0], outs[1])  # ... but each clip its own
    erased = [(o == 0).all(dim=0).all(dim=0).float().mean() for o in outs]  # remode "const": zeros
    assert all(e > 0 for e in erased)
    grey = np.full((4, 40, 40, 3), round(0.45 * 255), np.uint8)  # the Kinetics mean colour
    assert VideoTrainTransform((32, 32))(grey).abs().max() < 0.01
    assert KINETICS_MEAN == (0.45,) * 3 and KINETICS_STD == (0.225,) * 3


def test_repeated_clips_share_one_decode(clips):
    data = VideoFiles([(clips / "levels" / "long.mp4", 2)], transform=VideoTrainTransform((32, 32)),
                      sampling=ClipSampling(num_frames=4, stride=2), mask_units=16, repeats=3)
    sample = data[(0, 0)]
    assert sample["image"].shape == (3, 3, 4, 32, 32) and sample["mask"].shape == (3, 16) and sample["repeats"] == 3
    batch = collate([sample, data[(1, 0)]])
    assert batch["n"] == 6 and batch["image"].shape == (6, 3, 4, 32, 32) and batch["label"].tolist() == [2] * 6
    assert not torch.equal(batch["image"][0], batch["image"][1])  # its own start and crop per clip


def test_cutmix_and_mixup_mix_whole_clips():
    from hiera.train.engine import ClassifyTask

    seen = {}

    def net(x, return_logits=True):
        seen["x"] = x.clone()
        return torch.zeros(x.shape[0], 3, requires_grad=True)

    x = torch.arange(4.0).view(4, 1, 1, 1, 1).expand(4, 3, 4, 16, 16).contiguous()  # clip b is all b
    y = torch.tensor([0, 1, 2, 0])
    for cut in (True, False):
        task = ClassifyTask(3, mixup_args=dict(mixup_alpha=0.0 if cut else 0.8, cutmix_alpha=1.0 if cut else 0.0,
                                               prob=1.0, switch_prob=0.0, mode="batch", label_smoothing=0.1,
                                               num_classes=3))
        torch.manual_seed(3)
        task.loss(net, {"image": x.clone(), "label": y})
        mixed = seen["x"]
        assert mixed.shape == x.shape
        assert all(torch.equal(mixed[:, :, 0], mixed[:, :, t]) for t in range(4))  # the same in every frame
        changed = (mixed != x)[0, 0, 0]
        if cut:  # one box, clip 0 takes clip 3's pixels there
            assert 0 < changed.float().mean() < 1 and torch.all(mixed[0, :, :, changed] == 3)
        else:
            assert changed.all()


# ------------------------------------------------------------------------------------ recipes and errors
def test_video_recipes():
    r = video_pretrain_recipe("hiera_base_16x224")
    assert (r.mask_ratio, r.betas, r.weight_decay, r.batch_size) == (0.9, (0.9, 0.95), 0.05, 512)
    assert r.lr() == pytest.approx(8e-4) and r.lr(256) == pytest.approx(4e-4)  # Tab. 11a: 8e-4 at batch 512
    assert (r.epochs, r.warmup_epochs, r.num_frames, r.frame_stride) == (3200, 120, 16, 4)
    assert r.scaled(epochs=80).warmup_epochs == pytest.approx(3)  # the warmup keeps its share
    assert video_pretrain_recipe("mae_hiera_huge_16x224.mae_k400").drop_path_rate == 0.4
    f = video_finetune_recipe("hiera_large_16x224")
    assert (f.mixup, f.cutmix, f.label_smoothing, f.layer_decay, f.drop_path_rate) == (0.8, 1.0, 0.1, 0.875, 0.2)
    assert video_finetune_recipe("base").layer_decay == 0.8 and f.eval_views == "multi"
    with pytest.raises(ValueError, match="video"):
        pretrain_recipe("hiera_base_16x224")
    with pytest.raises(ValueError, match="video"):
        finetune_recipe("mae_hiera_base_16x224")
    with pytest.raises(ValueError, match="image model"):
        video_pretrain_recipe("hiera_base_224")


def test_clear_errors(clips, tmp_path, capsys):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "a" / "notes.txt").write_text("no videos here")
    run = ["--out", str(tmp_path / "o"), "--no-progress", "--workers", "0"]
    assert main(["pretrain", "--data", str(tmp_path / "empty"), "--video", *run]) == 1
    assert "no videos found" in capsys.readouterr().err
    assert main(["finetune", "--data", str(clips / "train"), "--model", "hiera_small_224", *run]) == 1
    assert "is an image model" in capsys.readouterr().err
    config = json.dumps(VIDEO)
    assert main(["finetune", "--data", str(clips / "train"), "--model", "custom", "--config", config,
                 "--frames", "16", *run]) == 1
    err = capsys.readouterr().err
    assert "16 frames were asked for" in err and "takes 8 frames" in err
    images = tmp_path / "images" / "a"
    images.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(images / "x.png")
    assert main(["pretrain", "--data", str(tmp_path / "images"), "--model", "hiera_base_16x224", *run]) == 1
    assert "holds images" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ the official labels
def test_video_mae_labels_match_the_official_package(clips, official_python, tmp_path):
    """Our time-strided, pixel-major normalised-pixel labels (and loss) on a decoded clip and a
    pipeline mask are the official video MAE's on the same clip, mask and weights."""
    torch.manual_seed(0)
    ours = hiera.MaskedAutoencoderHiera(**MAE).train()
    data = open_videos(clips / "train", transform=VideoTrainTransform((64, 64)), sampling=ClipSampling(8),
                       mask_units=ours.num_mask_units, mask_ratio=0.9)
    batch = collate([data[(0, 0)], data[(0, 9)]])
    x, mask = batch["image"], batch["mask"]
    assert mask.shape == (2, 16) and mask.sum(1).tolist() == [1, 1]  # 90% of 16 units dropped: 1 kept
    with torch.no_grad():
        loss, preds, labels, _ = ours(x, mask=mask)
    torch.save({"x": x, "mask": mask, "state": ours.state_dict(), "kwargs": MAE}, tmp_path / "in.pt")
    code = """
import sys, torch, hiera
d = torch.load(sys.argv[1], weights_only=True)
m = hiera.MaskedAutoencoderHiera(**d["kwargs"]).train()
m.load_state_dict(d["state"])
with torch.no_grad():
    loss, preds, labels, _ = m(d["x"], mask=d["mask"])
    every = torch.ones(2, 4 * 4 * 4, dtype=torch.bool)
    raw = m.get_pixel_label_3d(d["x"], every, norm=False)
torch.save({"loss": loss, "preds": preds, "labels": labels, "raw": raw}, sys.argv[2])
"""
    conftest.official_env.run_official_code(official_python, code, str(tmp_path / "in.pt"), str(tmp_path / "out.pt"),
                                            timeout=300)
    ref = torch.load(tmp_path / "out.pt", weights_only=True)
    torch.testing.assert_close(labels, ref["labels"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(preds, ref["preds"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss, ref["loss"], rtol=1e-5, atol=1e-6)
    # The layout: token (t, y, x) holds frame 2t of the clip, pixels (dy, dx) then channels.
    raw = ref["raw"].view(2, 4, 4, 4, 16, 16, 3)
    torch.testing.assert_close(raw[1, 2, 1, 3, 5, 7], x[1, :, 4, 16 + 5, 48 + 7])
    assert labels.shape == (2 * 15 * 4, 16 * 16 * 3)  # 15 masked units x 4 prediction tokens each


# ------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def pretrained(clips, tmp_path_factory):
    """24 steps of video MAE pretraining (decoding in 2 DataLoader workers); records the masks the
    model was given."""
    from hiera.train.engine import MAETask

    out = tmp_path_factory.mktemp("vmae") / "run"
    loss, kept = MAETask.loss, []

    def recording(self, net, batch):
        kept.append(batch["mask"].sum(dim=1))
        return loss(self, net, batch)

    MAETask.loss = recording
    try:
        pretrain(clips / "train", out, model="custom", config=MAE, epochs=6, batch_size=4, lr=3e-3, val=clips / "val",
                 save_every=4, **dict(FAST, num_workers=2))
    finally:
        MAETask.loss = loss
    (out / "kept_units.json").write_text(json.dumps(torch.cat(kept).tolist()))
    return out


def test_pretraining_lowers_the_loss_with_the_video_recipe(pretrained):
    train, val = metrics(pretrained), [r["loss"] for r in metrics(pretrained, "val")]
    assert len(train) == 6 * (17 // 4) and len(val) == 6
    first, last = np.mean([r["loss"] for r in train[:4]]), np.mean([r["loss"] for r in train[-4:]])
    assert last < first, (first, last)
    # The validation loss (fixed clips and masks) falls after every epoch but noise: the model learns.
    assert val[-1] < 0.97 * val[0] and all(b < a + 1e-3 for a, b in zip(val, val[1:])), val
    assert train[-1]["unreadable"] > 0  # broken.mp4 is skipped and counted, the run goes on
    state = torch.load(pretrained / "last.pt", weights_only=True)
    extra = state["extra"]
    assert extra["video"] and extra["mask_ratio"] == 0.9 and extra["frames"] == 8 and extra["frame_stride"] == 4
    kept = json.loads((pretrained / "kept_units.json").read_text())
    repeats = extra["repeat_aug"]  # the recipe's repeated sampling: 4 clips per video [Hiera Tab. 11a]
    assert repeats == 4 and len(kept) + repeats * train[-1]["unreadable"] == 24 * 4 * repeats  # every clip seen ...
    assert set(kept) == {1}  # ... had 1 of its 16 mask units visible
    assert extra["recipe"]["crop_scale"] == [0.5, 1.0] or tuple(extra["recipe"]["crop_scale"]) == (0.5, 1.0)
    assert state["class"] == "MaskedAutoencoderHiera" and list(state["config"]["input_size"]) == [8, 64, 64]
    assert list((pretrained / "reconstructions").glob("*.png"))


def test_mae_viz_sees_the_validation_clips_of_training(pretrained, clips):
    from hiera.tools.mae_viz import load_video_input

    data = open_videos(clips / "val", transform=VideoEvalTransform((8, 64, 64), views="single", crop_pct=1.0))
    path = data.items[2][0]
    assert torch.equal(data[(0, 2)]["image"], load_video_input(path, (8, 64, 64)))


def test_finetune_from_the_video_mae_then_3x5_view_evaluation(pretrained, clips, tmp_path, capsys):
    out = tmp_path / "ft"
    result = finetune(clips / "train", out, val=clips / "val", model="custom", config=VIDEO,
                      init=str(pretrained / "last.pt"), epochs=3, batch_size=4, lr=2e-3, **FAST)
    state = torch.load(out / "last.pt", weights_only=True)
    recipe = state["extra"]["recipe"]
    assert recipe["mixup"] == 0.8 and recipe["cutmix"] == 1.0 and recipe["label_smoothing"] == 0.1
    assert state["run"]["clip_grad"] == 5.0 and state["extra"]["video"]
    mae = torch.load(pretrained / "last.pt", weights_only=True)["model"]["blocks.0.attn.qkv.weight"]
    tuned = state["model"]["blocks.0.attn.qkv.weight"]
    assert not torch.equal(tuned, mae) and torch.allclose(tuned, mae, atol=0.05)  # trained, from the MAE trunk
    assert 0 <= result["val_acc1"] <= 100 and (out / "model" / "classes.txt").read_text().split() == ["down", "right"]

    multi = evaluate(clips / "val", weights=out / "model", batch_size=15)
    single = evaluate(clips / "val", weights=out / "model", views="single")
    assert multi["views"] == "3 spatial x 5 temporal" and single["views"] == "1 spatial x 1 temporal"
    assert multi["n"] == single["n"] == 6 and single["acc1"] == pytest.approx(result["val_acc1"])
    # The 3x5 prediction of each video is the arg-max of its 15 views' averaged softmax (as predict).
    model = hiera.load_model(weights=out / "model").eval()
    data = open_videos(clips / "val", labelled=True, transform=VideoEvalTransform((8, 64, 64), views="multi"))
    with torch.no_grad():
        views = torch.stack([data[(0, i)]["image"] for i in range(len(data))])  # [6, 15, 3, 8, 64, 64]
        probs = model(views.flatten(0, 1), return_logits=True).softmax(-1).view(6, 15, -1).mean(1)
        assert torch.allclose(ViewAverage(model, chunk=7)(views).exp(), probs, atol=1e-6)
    acc1 = 100 * (probs.argmax(1) == torch.tensor(data.labels)).float().mean().item()
    assert multi["acc1"] == pytest.approx(acc1, abs=1e-3)

    # The CLI: `hiera evaluate` and `hiera predict` on a clip with the fine-tuned model.
    assert main(["evaluate", "--data", str(clips / "val"), "--weights", str(out / "model")]) == 0
    assert "3 spatial x 5 temporal" in capsys.readouterr().out
    clip = clips / "val" / "down" / "0.mp4"
    assert main(["predict", str(clip), "--weights", str(out / "model"), "--classes",
                 str(out / "model" / "classes.txt"), "--views", "multi", "--format", "json", "--no-progress"]) == 0
    top = json.loads(capsys.readouterr().out)["predictions"][0]["labels"][0]["label"]
    assert top == data.classes[int(probs[0].argmax())]  # what evaluate counted for this video


def test_finetune_from_an_official_layout_video_mae(clips, tmp_path):
    """An official-format MAE state dict (what `mae_hiera_base_16x224.mae_k400` holds) as --init."""
    torch.manual_seed(1)
    official = hiera.MaskedAutoencoderHiera(**MAE)
    torch.save({"model_state": official.state_dict()}, tmp_path / "mae_official.pth")  # the official file layout
    finetune(clips / "train", tmp_path / "ft", model="custom", config=VIDEO, init=str(tmp_path / "mae_official.pth"),
             epochs=1, batch_size=8, lr=1e-4, mixup=False, **FAST)
    state = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    torch.manual_seed(0)  # the seed the run builds its model with: what it would be without --init
    fresh = hiera.Hiera(**VIDEO, num_classes=2).state_dict()
    key = "blocks.2.attn.qkv.weight"
    moved = (state[key] - official.state_dict()[key]).norm()
    assert moved < 0.1 * (state[key] - fresh[key]).norm()  # it started from the MAE trunk
    assert state["head.projection.weight"].shape == (2, 128)  # a fresh 2-way head


def test_interrupted_video_pretraining_resumes_to_the_same_losses(clips, pretrained, tmp_path, monkeypatch):
    from hiera.train.engine import Trainer

    class Interrupted(Exception):
        pass

    run = dict(model="custom", config=MAE, epochs=6, batch_size=4, lr=3e-3, val=clips / "val", save_every=4, **FAST)
    log = Trainer.log

    def dying_log(self, record):
        log(self, record)
        if record["split"] == "train" and record["step"] == 7:  # 3 steps after the checkpoint at step 4
            raise Interrupted

    monkeypatch.setattr(Trainer, "log", dying_log)
    with pytest.raises(Interrupted):
        pretrain(clips / "train", tmp_path / "r", **run)
    monkeypatch.setattr(Trainer, "log", log)
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["step"] == 4
    # Resumed with the decoding in 2 workers (the first part decoded in the main process).
    pretrain(clips / "train", tmp_path / "r", resume=True, **dict(run, num_workers=2))
    assert [r["loss"] for r in metrics(tmp_path / "r")] == [r["loss"] for r in metrics(pretrained)]
