"""Robustness of the prediction tools and of loading: bad weights, options that do not apply,
failed writes, Ctrl-C, absent devices and inputs whose resize would take gigabytes.

Every error a person can cause must come out as one line (``hiera <tool>: error: ...``) with a
non-zero exit code, never a traceback. Tiny random models and generated files only; nothing is
downloaded.
"""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

import hiera
from hiera import CheckpointError
from hiera.cli import main
from hiera.data import transforms as transforms_mod
from hiera.data.transforms import ImageEvalTransform, VideoEvalTransform, eval_transform
from hiera.tools import features as extract_mod
from hiera.tools import predict as predict_mod
from hiera.zoo import MODELS, ModelSpec, load_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY = dict(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1))


# ----------------------------------------------------------------------------------------- helpers
def tiny_classifier():
    torch.manual_seed(0)
    model = hiera.Hiera(**TINY, num_classes=10)
    torch.nn.init.normal_(model.head.projection.weight, std=0.2)  # a trained-looking head
    return model.eval()


def tiny_mae():
    torch.manual_seed(0)
    return hiera.MaskedAutoencoderHiera(**TINY, q_pool=2, decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2)


def one_error_line(err: str, prog: str) -> str:
    """The single line a command printed on stderr; fails on tracebacks and multi-line errors."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hiera {prog}: "), lines[0]
    return lines[0]


def rewrite_weights(src: Path, dst: Path, change) -> Path:
    """Copy a save_pretrained folder with its weights passed through ``change(state) -> state``."""
    dst.mkdir(parents=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    save_file(change(load_file(str(src / "model.safetensors"))), str(dst / "model.safetensors"))
    return dst


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    tiny_classifier().save_pretrained(root / "cls")
    tiny_mae().save_pretrained(root / "mae")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 80, 3), dtype=np.uint8)).save(root / "photo.png")
    return root


# ------------------------------------------------------------------ 1. weights without a trained head
def test_load_model_need_head_accepts_a_classifier_and_is_quiet(saved, recwarn):
    model = load_model(weights=saved / "cls", need_head=True)
    assert model.load_report.exact and model.head.projection.out_features == 10
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize("case", ["mae", "no_head", "renamed_head", "fresh_head"])
def test_load_model_need_head_refuses_a_random_head(saved, tmp_path, case):
    kwargs = {}
    if case == "mae":
        weights, words = saved / "mae", ["MAE-pretrained", "hiera features", "hiera mae-viz", "hiera finetune"]
    elif case == "no_head":  # features-only weights: the config still says 10 classes
        weights = rewrite_weights(saved / "cls", tmp_path / "enc", lambda s: {k: v for k, v in s.items()
                                                                            if not k.startswith("head.")})
        words = ["without a classification head", "hiera features", "hiera finetune"]
    elif case == "renamed_head":  # keys that do not match leave the head at its init
        weights = rewrite_weights(saved / "cls", tmp_path / "ren", lambda s: {
            k.replace("head.projection.", "head.linear."): v for k, v in s.items()})
        words = ["head.linear.weight", "do not match", "head.projection.weight"]
    else:  # another number of classes than the checkpoint's: a fresh, untrained head
        weights, kwargs, words = saved / "cls", {"num_classes": 5}, ["new and untrained", "5"]
    # Without need_head the load still works (fine-tuning starts from exactly such weights).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the load report of a missing head
        assert load_model(weights=weights, **kwargs) is not None
    with pytest.raises(CheckpointError) as info:
        load_model(weights=weights, need_head=True, **kwargs)
    for word in words:
        assert word in str(info.value)


def test_zoo_mae_checkpoint_refused_before_any_download(monkeypatch, tmp_path):
    """``hiera_tiny_224.mae_in1k`` is the MAE-pretraining file: refused at once, naming the fine-tuned one."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HIERA_WEIGHTS_MIRROR", "http://127.0.0.1:9")  # a download would fail, not hang

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded weights that it was going to refuse")

    monkeypatch.setattr("hiera.zoo.download_checkpoint", no_download)
    with pytest.raises(CheckpointError, match=r"MAE-pretrained.*hiera_tiny_224\.mae_in1k_ft_in1k"):
        load_model("hiera_tiny_224.mae_in1k", need_head=True)
    with pytest.raises(CheckpointError, match="classification head"):
        load_model("mae_hiera_tiny_224", need_head=True)


def test_zoo_checkpoints_with_and_without_head(saved, tmp_path, monkeypatch):
    """The same rule for zoo names, whatever the checkpoint file is called (a tiny zoo entry)."""
    encoder = tmp_path / "encoder.safetensors"
    save_file({k: v for k, v in load_file(str(saved / "cls" / "model.safetensors")).items()
               if not k.startswith("head.")}, str(encoder))
    spec = ModelSpec("hiera_mini_64", hiera.Hiera, dict(TINY),
                     {"ft": str(saved / "cls"), "pre": str(encoder)}, "ft")
    monkeypatch.setitem(MODELS, "hiera_mini_64", spec)
    model = load_model("hiera_mini_64.ft", need_head=True)
    assert model.head.projection.out_features == 10
    with pytest.raises(CheckpointError, match="without a classification head"):
        load_model("hiera_mini_64.pre", need_head=True)


def test_cli_predict_refuses_mae_weights(saved, capsys):
    code = main(["predict", str(saved / "photo.png"), "--weights", str(saved / "mae"), "--no-progress"])
    captured = capsys.readouterr()
    line = one_error_line(captured.err, "predict")
    assert code == 1 and captured.out == ""
    assert "MAE-pretrained" in line and "hiera features" in line and "hiera finetune" in line
    assert "UserWarning" not in captured.err


def test_cli_export_refuses_weights_without_head(saved, tmp_path, capsys):
    enc = rewrite_weights(saved / "cls", tmp_path / "enc", lambda s: {k: v for k, v in s.items()
                                                                      if not k.startswith("head.")})
    code = main(["export", "--weights", str(enc), "--out", str(tmp_path / "m.onnx"), "--no-verify"])
    line = one_error_line(capsys.readouterr().err, "export")
    assert code == 1 and "without a classification head" in line
    assert not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------------ 2. non-finite and integer weights
def test_non_finite_weights_are_refused_by_name(saved, tmp_path, capsys):
    def poison(state):
        state["blocks.0.attn.qkv.weight"][0, 0] = float("nan")
        state["norm.weight"][:2] = float("inf")
        return state

    bad = rewrite_weights(saved / "cls", tmp_path / "nan", poison)
    with pytest.raises(CheckpointError) as info:
        load_model(weights=bad)
    message = str(info.value)
    assert "NaN or Inf" in message and "blocks.0.attn.qkv.weight (1 of" in message and "norm.weight (2 of" in message
    # Straight into a model, too: every loading path goes through load_weights.
    with pytest.raises(CheckpointError, match="NaN or Inf"):
        hiera.load_weights(tiny_classifier(), load_file(str(bad / "model.safetensors")))

    code = main(["predict", str(saved / "photo.png"), "--weights", str(bad), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and "nan" not in captured.out.lower()
    assert "NaN or Inf" in one_error_line(captured.err, "predict")


def test_integer_weights_are_refused_with_their_dtypes(saved, tmp_path):
    def to_int(state):
        state["blocks.0.mlp.fc1.weight"] = (state["blocks.0.mlp.fc1.weight"] * 100).to(torch.int64)
        state["head.projection.bias"] = state["head.projection.bias"].to(torch.int32)
        return state

    bad = rewrite_weights(saved / "cls", tmp_path / "int", to_int)
    with pytest.raises(CheckpointError) as info:
        load_model(weights=bad)
    message = str(info.value)
    assert "blocks.0.mlp.fc1.weight (int64)" in message and "head.projection.bias (int32)" in message


def test_half_precision_and_integer_model_buffers_still_load(saved, tmp_path):
    half = rewrite_weights(saved / "cls", tmp_path / "half", lambda s: {k: v.half() for k, v in s.items()})
    assert load_model(weights=half, need_head=True).load_report.exact

    class WithCounter(hiera.Hiera):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    model = WithCounter(**TINY, num_classes=10)
    state = {**tiny_classifier().state_dict(), "steps": torch.tensor(7)}
    assert hiera.load_weights(model, state, strict=True).exact and int(model.steps) == 7


# ------------------------------------------------------------------ 3. options that do not apply
def test_multi_view_on_an_image_model_is_an_error(saved, capsys):
    code = main(["predict", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--views", "multi",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert "--views multi" in one_error_line(captured.err, "predict") and "video" in captured.err
    with pytest.raises(ValueError, match="video models"):
        predict_mod.predict(tiny_classifier(), [saved / "photo.png"], views="multi", progress=False)
    with pytest.raises(ValueError, match="video models"):
        eval_transform(tiny_classifier(), views="multi")


def test_video_only_and_size_only_options_are_errors(saved, tmp_path, capsys):
    code = main(["features", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--fit", "crop",
                 "--out", str(tmp_path / "f"), "--no-progress"])
    assert code == 1 and "--fit crop applies with --size only" in one_error_line(capsys.readouterr().err, "features")
    for option in (["--frames", "2"], ["--frame-stride", "2"]):
        code = main(["mae-viz", str(saved / "photo.png"), "--weights", str(saved / "mae"), "--out",
                     str(tmp_path / "v"), *option])
        assert code == 2 and "only for video models" in one_error_line(capsys.readouterr().err, "mae-viz")
    assert not (tmp_path / "v").exists() and not (tmp_path / "f").exists()


# ------------------------------------------------------------------ 4. writing files
def test_convert_into_folders_that_do_not_exist_yet(saved, tmp_path):
    for to, out in (("official", "new/deeper/a.pth"), ("safetensors", "other/b.safetensors"),
                    ("timm", "t/c.pth"), ("hf", "fresh/hf")):
        assert main(["convert", str(saved / "cls"), "--to", to, "--out", str(tmp_path / out)]) == 0
    assert load_model(weights=tmp_path / "other" / "b.safetensors").load_report.exact
    assert torch.load(tmp_path / "new" / "deeper" / "a.pth", weights_only=True)["model_state"]


def test_convert_to_a_path_under_a_file_is_one_line(saved, tmp_path, capsys):
    (tmp_path / "plain.txt").write_text("a file, not a folder")
    code = main(["convert", str(saved / "cls"), "--to", "official", "--out", str(tmp_path / "plain.txt" / "a.pth")])
    assert code == 1 and "plain.txt" in one_error_line(capsys.readouterr().err, "convert")


FULL_DISK = """
import resource, signal, sys
from hiera.cli import main
# Writes past 256 kB fail with EFBIG, as they would with ENOSPC on a full disk.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (256_000, 256_000))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
@pytest.mark.parametrize("to,name", [("official", "a.pth"), ("safetensors", "b.safetensors"), ("hf", "repo")])
def test_convert_on_a_full_disk_leaves_nothing_behind(tmp_path, to, name):
    torch.manual_seed(0)
    big = hiera.Hiera(**{**TINY, "embed_dim": 48}, num_classes=1000)  # ~2 MB of weights, over the limit
    big.save_pretrained(tmp_path / "src")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("was here before")
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, "convert", str(tmp_path / "src"), "--to", to,
                           "--out", str(out_dir / name)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}, timeout=300)
    line = one_error_line(proc.stderr, "convert")
    assert proc.returncode == 1 and "cannot write" in line and "File too large" in line
    left = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert left == ["keep.txt"], left


def test_failed_and_interrupted_writes_remove_their_temporary_file(saved, tmp_path, monkeypatch, capsys):
    """A read-only destination (EROFS mid-write) and Ctrl-C mid-write: no temporary file left."""
    def read_only(obj, f, *args, **kwargs):
        f.write(b"partial data")
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(torch, "save", read_only)
    code = main(["convert", str(saved / "cls"), "--to", "official", "--out", str(tmp_path / "a.pth")])
    assert code == 1 and "Read-only file system" in one_error_line(capsys.readouterr().err, "convert")
    assert list(tmp_path.iterdir()) == []

    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial data")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    try:
        code = main(["convert", str(saved / "cls"), "--to", "official", "--out", str(tmp_path / "a.pth")])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a traceback")
    assert code == 130 and "interrupted" in one_error_line(capsys.readouterr().err, "convert")
    assert list(tmp_path.iterdir()) == []


def test_written_safetensors_are_readable_by_others(saved, tmp_path):
    old = os.umask(0o022)
    try:
        assert main(["convert", str(saved / "cls"), "--to", "safetensors", "--out", str(tmp_path / "a.safetensors")]) == 0
        assert main(["convert", str(saved / "cls"), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
        assert main(["features", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--out",
                     str(tmp_path / "feats"), "--no-progress"]) == 0
        assert main(["features", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--out",
                     str(tmp_path / "npy"), "--format", "npy", "--no-progress"]) == 0
        assert main(["predict", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--output",
                     str(tmp_path / "p.json"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 8 and {p.suffix for p in written} >= {".safetensors", ".json", ".npy"}
    for path in written:
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path
    assert not [p for p in written if p.name.endswith(".tmp")]


def test_save_pretrained_weights_are_readable_by_others(tmp_path):
    """A saved model folder (what fine-tuning writes for `predict`) has no owner-only file."""
    import hiera

    model = hiera.Hiera(input_size=(64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=3)
    old = os.umask(0o022)
    try:
        model.save_pretrained(tmp_path / "model", config=model.config)
    finally:
        os.umask(old)
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert "model.safetensors" in files and "config.json" in files
    for path in (tmp_path / "model").iterdir():
        assert oct(path.stat().st_mode & 0o777) == oct(0o644), path


def test_features_that_cannot_be_written_leave_no_partial_file(saved, tmp_path, monkeypatch, capsys):
    def disk_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(extract_mod, "save_file", disk_full)  # where the feature writer looks it up
    code = main(["features", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--out",
                 str(tmp_path / "f"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "No space left on device" in err and "Traceback" not in err
    assert [p for p in (tmp_path / "f").rglob("*") if p.is_file()] == []


# ------------------------------------------------------------------ 5. Ctrl-C
@pytest.mark.parametrize("tool", ["predict", "features", "mae-viz"])
def test_ctrl_c_exits_130_in_one_line(saved, tmp_path, monkeypatch, capsys, tool):
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    if tool == "predict":
        monkeypatch.setattr(predict_mod, "_probabilities", stop)
        argv = ["predict", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--output",
                str(tmp_path / "p.json"), "--no-progress"]
    elif tool == "features":
        monkeypatch.setattr(extract_mod, "_write", stop)
        argv = ["features", str(saved / "photo.png"), "--weights", str(saved / "cls"), "--out", str(tmp_path / "f"),
                "--no-progress"]
    else:
        monkeypatch.setattr("hiera.tools.mae_viz.mae_reconstruction", stop)
        argv = ["mae-viz", str(saved / "photo.png"), "--weights", str(saved / "mae"), "--out", str(tmp_path / "v")]
    try:
        code = main(argv)
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped as a traceback")
    assert code == 130
    assert one_error_line(capsys.readouterr().err, tool) == f"hiera {tool}: interrupted"
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


# ------------------------------------------------------------------ 6. devices that are not there
@pytest.fixture()
def one_cuda_gpu(monkeypatch):
    """Pretend there is exactly one CUDA GPU and no mps."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_resolve_device_names_the_device_and_what_there_is(one_cuda_gpu, monkeypatch):
    assert predict_mod.resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ValueError, match=r"'cuda:3'.*only 1 CUDA GPU; available: cpu, cuda:0"):
        predict_mod.resolve_device("cuda:3")
    with pytest.raises(ValueError, match=r"'mps'.*no Apple \(mps\) GPU.*available: cpu, cuda:0"):
        predict_mod.resolve_device("mps")
    with pytest.raises(ValueError, match=r"unknown device 'gpu'.*available here: cpu, cuda:0"):
        predict_mod.resolve_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"no CUDA GPU here; available: cpu$"):
        predict_mod.resolve_device("cuda")


@pytest.mark.parametrize("tool", ["predict", "features", "mae-viz"])
@pytest.mark.parametrize("device", ["cuda:3", "mps"])
def test_every_tool_refuses_an_absent_device_in_one_line(saved, tmp_path, one_cuda_gpu, capsys, tool, device):
    weights = saved / ("mae" if tool == "mae-viz" else "cls")
    argv = [tool, str(saved / "photo.png"), "--weights", str(weights), "--device", device,
            "--out" if tool != "predict" else "--output", str(tmp_path / "out")]
    code = main(argv + (["--no-progress"] if tool != "mae-viz" else []))
    line = one_error_line(capsys.readouterr().err, tool)
    assert code != 0 and f"'{device}'" in line and "available: cpu, cuda:0" in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ 7. inputs whose resize explodes
@pytest.fixture()
def bounded_resize(monkeypatch):
    """Fail (instead of taking gigabytes) if a transform resizes to more than 64 Mpx."""
    real = transforms_mod.F.resize

    def resize(x, size, *args, **kwargs):
        frames = int(np.prod(x.shape[:-3])) if isinstance(x, torch.Tensor) and x.ndim > 3 else 1
        assert size[0] * size[1] * frames <= 64e6, f"resize to {size} x {frames} frames"
        return real(x, size, *args, **kwargs)

    monkeypatch.setattr(transforms_mod.F, "resize", resize)


def test_extreme_aspect_ratio_images_are_skipped_with_a_reason(saved, tmp_path, bounded_resize, capsys):
    Image.new("RGB", (40000, 1), (200, 10, 10)).save(tmp_path / "line.png")
    Image.new("RGB", (1, 20000), (10, 200, 10)).save(tmp_path / "pole.png")
    Image.new("RGB", (2000, 100), (10, 10, 200)).save(tmp_path / "panorama.png")  # 20:1 is fine
    out = tmp_path / "p.json"
    code = main(["predict", str(tmp_path), "--weights", str(saved / "cls"), "--output", str(out), "--no-progress"])
    data = json.loads(out.read_text())
    assert code == 0 and [Path(p["path"]).name for p in data["predictions"]] == ["panorama.png"]
    reasons = {Path(s["path"]).name: s["reason"] for s in data["skipped"]}
    assert set(reasons) == {"line.png", "pole.png"}
    assert "40000x1 pixels" in reasons["line.png"] and "aspect ratio 40000:1" in reasons["line.png"]
    assert "Traceback" not in capsys.readouterr().err

    # The same for features (whose --size crop keeps the aspect ratio) and the transform itself.
    res = extract_mod.extract_features(tiny_classifier(), [tmp_path], tmp_path / "f", size=(64, 64), progress=False)
    assert len(res) == 3  # stretched to exactly 64 x 64: nothing explodes
    res = extract_mod.extract_features(tiny_classifier(), [tmp_path], tmp_path / "g", progress=False)
    assert len(res) == 1 and len(res.skipped) == 2
    with pytest.raises(transforms_mod.ResizeTooLarge, match="aspect ratio"):
        ImageEvalTransform(224)(Image.new("RGB", (10000, 1)))
    with pytest.raises(transforms_mod.ResizeTooLarge):
        ImageEvalTransform(224)(torch.zeros(3, 1, 10000, dtype=torch.uint8))


def test_extreme_aspect_ratio_video_is_refused_before_resizing(bounded_resize):
    clip = np.zeros((1, 16, 8, 8192, 3), np.uint8)  # 1024:1 frames: 16 x 256 x 262144 after resize
    with pytest.raises(transforms_mod.ResizeTooLarge, match="over 16 frames"):
        VideoEvalTransform((16, 224, 224))(clip)
    normal = np.zeros((1, 16, 72, 128, 3), np.uint8)
    assert VideoEvalTransform((16, 64, 64), views="multi")(np.repeat(normal, 5, 0)).shape == (15, 3, 16, 64, 64)


def test_extreme_aspect_ratio_video_is_skipped_by_predict(tmp_path, bounded_resize, capsys):
    import av

    with av.open(str(tmp_path / "strip.mp4"), "w") as container:  # 1000:1 frames
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = 8000, 8, "yuv420p"
        for i in range(12):
            frame = av.VideoFrame.from_ndarray(np.full((8, 8000, 3), 8 * i, np.uint8), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    torch.manual_seed(0)
    video = hiera.hiera_base_16x224(input_size=(8, 64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1))
    video.save_pretrained(tmp_path / "video")
    code = main(["predict", str(tmp_path / "strip.mp4"), "--weights", str(tmp_path / "video"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "skipped" in err and "8000x8 pixels (aspect ratio 1000:1)" in err and "ResizeTooLarge" not in err


def test_resize_bound_grows_with_the_requested_size():
    """A large --size must not be refused for an ordinary picture: the bound scales with the input."""
    transforms_mod.check_resize(6000, 9000, (6400, 9600), (5600, 5600))  # 61 Mpx, about 2x the model input
    with pytest.raises(transforms_mod.ResizeTooLarge):
        transforms_mod.check_resize(1, 10000, (256, 2_560_000), (224, 224))


def test_ctrl_c_in_any_command_is_one_line_and_130(monkeypatch, capsys):
    """The entry point's own guard, for commands that have none of their own (here `hiera zoo`)."""
    from hiera import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.zoo, "zoo_table", interrupted)
    assert cli.main(["zoo"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "hiera zoo: interrupted"
