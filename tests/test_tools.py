"""MAE visualisation, ONNX export and benchmarking (hiera.tools.mae_viz, hiera.tools.export, hiera.bench.timing).

Tiny random models and generated inputs only; nothing is downloaded.
"""

import argparse
import json
import sys

import numpy as np
import onnxruntime  # noqa: F401  (a [dev] dependency: the export checks must run)
import pytest
import torch
from PIL import Image

import hiera
from hiera.bench import timing as bench
from hiera.cli import benchmark as bench_cli
from hiera.cli import export as export_cli
from hiera.cli import mae_viz as mae_viz_cli
from hiera.mae import _normalise
from hiera.tools import export as onnx_export
from hiera.tools import mae_viz as viz


# ----------------------------------------------------------------------------------------- helpers
def tiny_classifier(**kw):
    torch.manual_seed(0)
    model = hiera.Hiera(input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), num_classes=10, **kw)
    # The default head is scaled by 1e-3: give the logits a real range so agreement means something.
    torch.nn.init.normal_(model.head.projection.weight, std=0.2)
    return model


def tiny_mae():
    torch.manual_seed(0)
    return hiera.MaskedAutoencoderHiera(
        input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_pool=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
    )


def tiny_video_mae():
    torch.manual_seed(0)
    return hiera.mae_hiera_base_16x224(
        input_size=(8, 64, 64), embed_dim=8, num_heads=1, stages=(1, 1, 1, 1),
        decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=1,
    )


def run_cli(add_parser, argv):
    parser = argparse.ArgumentParser(prog="hiera")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def oracle_decoder(model, x):
    """Make ``model.forward_decoder`` predict the exact normalised targets of ``x``."""
    original = model.forward_decoder

    def forward_decoder(latent, mask, *args, **kwargs):
        pred, visible = original(latent, mask, *args, **kwargs)
        every = torch.ones_like(visible)
        if x.ndim == 4:
            labels = model.get_pixel_label_2d(x, every)
        else:
            labels = model.get_pixel_label_3d(x, every)
        return labels.view(pred.shape), visible

    model.forward_decoder = forward_decoder


def display(x, mean, std):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x * torch.tensor(std).view(shape) + torch.tensor(mean).view(shape)).clamp(0, 1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """save_pretrained directories of the three tiny models."""
    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for name, model in (("cls", tiny_classifier()), ("mae", tiny_mae()), ("video_mae", tiny_video_mae())):
        dirs[name] = root / name
        model.save_pretrained(dirs[name])
    return dirs


def write_clip(path, frames=20, width=96, height=80):
    import av

    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            img = np.zeros((height, width, 3), np.uint8)
            img[..., 0] = np.linspace(0, 255, width, dtype=np.uint8)[None]
            img[..., 1] = (i * 12) % 256
            img[: height // 2, : width // 2, 2] = rng.integers(0, 255)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_image(path, size=(100, 80), seed=0):
    rng = np.random.default_rng(seed)
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[..., 0] = np.linspace(0, 255, size[0], dtype=np.uint8)[None]
    arr[..., 1] = rng.integers(0, 255, (size[1], size[0]), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


# ----------------------------------------------------------------------------------------- viz
def test_reconstruction_unnormalises_image_predictions():
    model = tiny_mae()
    x = torch.randn(2, 3, 64, 64)
    oracle_decoder(model, x)
    out = viz.mae_reconstruction(model, x, mask_ratio=0.5, seed=1)
    original = display(x, viz.IMAGENET_MEAN, viz.IMAGENET_STD)
    assert out.original.shape == out.reconstruction.shape == out.pasted.shape == (2, 3, 64, 64)
    assert out.visible.shape == (2, 1, 64, 64) and out.visible.dtype == torch.bool
    torch.testing.assert_close(out.original, original)
    hidden = ~out.visible.expand_as(original)
    assert hidden.any() and out.visible.any()
    # Perfect per-token predictions, un-normalised with the true patch statistics, are the input.
    torch.testing.assert_close(out.reconstruction[hidden], original[hidden], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.pasted, original, atol=1e-5, rtol=0)
    assert torch.all(out.masked[hidden] == 0.5)
    assert torch.equal(out.masked[~hidden], original[~hidden])
    assert out.loss.item() < 1e-8
    assert out.frames is None and not out.is_video


def test_reconstruction_math_on_a_synthetic_case():
    model = tiny_mae()
    s = model.pred_stride
    x = torch.rand(1, 3, 64, 64) * 0.5 + 0.25  # displayed with mean 0 / std 1: no clamping
    original = model.forward_decoder

    def constant(value):
        def forward_decoder(latent, mask, *args, **kwargs):
            pred, visible = original(latent, mask, *args, **kwargs)
            return torch.full_like(pred, value), visible
        return forward_decoder

    # Prediction 0 in every token -> each s x s patch becomes its mean over all channels and pixels.
    model.forward_decoder = constant(0.0)
    out = viz.mae_reconstruction(model, x, mean=(0, 0, 0), std=(1, 1, 1))
    patch_mean = x.unfold(2, s, s).unfold(3, s, s).mean(dim=(1, 4, 5))  # [1, gh, gw]
    expect = patch_mean.repeat_interleave(s, 1).repeat_interleave(s, 2)
    torch.testing.assert_close(out.reconstruction[0], expect.expand(3, -1, -1))
    # Prediction 1 -> mean + (unbiased) std of the patch.
    model.forward_decoder = constant(1.0)
    out = viz.mae_reconstruction(model, x, mean=(0, 0, 0), std=(1, 1, 1))
    patches = x.unfold(2, s, s).unfold(3, s, s).permute(0, 2, 3, 1, 4, 5).flatten(3)
    expect = patch_mean + (patches.var(-1) + 1e-6).sqrt()
    torch.testing.assert_close(out.reconstruction[0, :, ::s, ::s], expect.expand(3, -1, -1))
    # And the building block itself.
    tokens = torch.randn(5, 48) * 3 + 2
    torch.testing.assert_close(viz.unnormalise_tokens(_normalise(tokens), tokens), tokens, atol=1e-5, rtol=0)


def test_visible_regions_follow_the_mask_units():
    model = tiny_mae()  # 16 x 16 tokens, 8 x 8-token mask units: 2 x 2 units of 32 x 32 pixels
    x = torch.randn(1, 3, 64, 64)
    mask = torch.tensor([[True, False, False, True]])
    out = viz.mae_reconstruction(model, x, mask=mask)
    vis = out.visible[0, 0]
    assert vis[:32, :32].all() and vis[32:, 32:].all()
    assert not vis[:32, 32:].any() and not vis[32:, :32].any()
    assert out.mask_ratio == 0.5
    # Reconstruction + visible keeps the input where the encoder saw it.
    assert torch.equal(out.pasted[0, :, :32, :32], out.original[0, :, :32, :32])
    assert torch.equal(out.pasted[0, :, :32, 32:], out.reconstruction[0, :, :32, 32:])


def test_mask_seed_is_reproducible_and_leaves_the_global_rng_alone():
    model = tiny_mae()
    x = torch.randn(2, 3, 64, 64)
    state = torch.get_rng_state()
    a = viz.mae_reconstruction(model, x, seed=3)
    b = viz.mae_reconstruction(model, x, seed=3)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.reconstruction, b.reconstruction)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.mask.sum(1).tolist() == [1, 1]  # int(4 units * (1 - 0.6)) kept, the image default


def test_reconstruction_video_layout():
    model = tiny_video_mae()
    x = torch.randn(1, 3, 8, 64, 64)
    oracle_decoder(model, x)
    out = viz.mae_reconstruction(model, x, seed=0)
    assert out.is_video and out.frames == [0, 2, 4, 6]  # first frame of every 2-frame tubelet
    assert out.original.shape == out.reconstruction.shape == (1, 3, 4, 64, 64)
    assert out.visible.shape == (1, 1, 4, 64, 64)
    original = display(x[:, :, ::2], viz.KINETICS_MEAN, viz.KINETICS_STD)
    torch.testing.assert_close(out.original, original)
    torch.testing.assert_close(out.reconstruction, original, atol=1e-5, rtol=0)
    assert out.mask_ratio > 0.85  # the video default 0.9: 1 of 16 units kept
    # Visibility is per mask unit (1 x 8 x 8 tokens = one frame x 32 x 32 pixels).
    units = out.visible[0, 0, :, ::32, ::32].flatten()
    assert units.tolist() == out.mask[0].tolist()


def test_reconstruction_errors():
    with pytest.raises(TypeError, match="MaskedAutoencoderHiera"):
        viz.mae_reconstruction(tiny_classifier(), torch.randn(1, 3, 64, 64))
    model = tiny_mae()
    with pytest.raises(ValueError, match="mask_ratio"):
        viz.mae_reconstruction(model, torch.randn(1, 3, 64, 64), mask_ratio=1.0)
    with pytest.raises(ValueError, match="spatial size"):
        viz.mae_reconstruction(model, torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="mean/std"):
        viz.mae_reconstruction(model, torch.randn(1, 3, 64, 64), mean=(0.5,), std=(0.5,))


def test_save_grid_writes_pngs_of_the_expected_size(tmp_path):
    out = viz.mae_reconstruction(tiny_mae(), torch.randn(2, 3, 64, 64))
    paths = viz.save_grid(out, tmp_path / "grids", names=["a", "b.png"])
    assert [p.name for p in paths] == ["a.png", "b.png"]
    expected = (4 * 64 + 5 * 2, viz.HEADER_HEIGHT + 64 + 2 * 2)
    assert viz.grid_size(64, 64) == expected
    for p in paths:
        with Image.open(p) as img:
            assert img.size == expected and img.mode == "RGB"
    # The tiles are the pictures: the "original" tile of the first grid is the input.
    with Image.open(paths[0]) as img:
        tile = np.asarray(img)[viz.HEADER_HEIGHT + 2: viz.HEADER_HEIGHT + 66, 2:66]
    want = (out.original[0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(tile.astype(float) - want).max() <= 1
    single = viz.mae_reconstruction(tiny_mae(), torch.randn(1, 3, 64, 64))
    (p,) = viz.save_grid(single, tmp_path, names=["plain"], titles=False, scale=2, pad=0)
    with Image.open(p) as img:
        assert img.size == (4 * 128, 128)
    with pytest.raises(ValueError, match="names"):
        viz.save_grid(out, tmp_path, names=["only_one"])

    video = viz.mae_reconstruction(tiny_video_mae(), torch.randn(1, 3, 8, 64, 64))
    (p,) = viz.save_grid(video, tmp_path, names=["clip"], frames=3)
    with Image.open(p) as img:
        assert img.size == viz.grid_size(64, 64, rows=3) == (266, viz.HEADER_HEIGHT + 3 * 64 + 4 * 2)


def cli_grid_size(rows):
    """The size of a mae-viz grid of a 64 x 64 model without its caption (five enlarged columns)."""
    return viz.grid_size(64, 64, rows=rows, scale=viz.auto_scale(64, 64), columns=5, font_size=viz.CLI_FONT_SIZE)


def test_mae_viz_cli_images(tmp_path, saved, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    write_image(folder / "one.png", (100, 80), 0)
    write_image(folder / "two.jpg", (64, 120), 1)
    (folder / "notes.txt").write_text("not an image")
    single = write_image(tmp_path / "three.png", (70, 70), 2)
    out = tmp_path / "viz"
    code = run_cli(mae_viz_cli.add_parser, ["mae-viz", str(folder), str(single), "--weights", str(saved["mae"]),
                                    "--out", str(out), "--seed", "1", "--mask-ratio", "0.5"])
    assert code == 0
    written = sorted(p.name for p in out.glob("*.png"))
    assert written == ["one.png", "three.png", "two.png"]
    # mae-viz enlarges small pictures, adds the raw prediction column and a caption under the grid.
    width, height = cli_grid_size(rows=1)
    for p in out.glob("*.png"):
        with Image.open(p) as img:
            assert img.width == width and img.height > height
    assert "mask ratio 0.50" in capsys.readouterr().out


def test_mae_viz_cli_video(tmp_path, saved):
    clip = write_clip(tmp_path / "clip.mp4")
    out = tmp_path / "viz"
    code = run_cli(mae_viz_cli.add_parser, ["mae-viz", str(clip), "--weights", str(saved["video_mae"]),
                                    "--out", str(out), "--frames", "2", "--no-titles", "--no-caption", "--no-raw",
                                    "--scale", "1"])
    assert code == 0
    with Image.open(out / "clip.png") as img:
        assert img.size == viz.grid_size(64, 64, rows=2, titles=False)
    # The default shows every reconstructed frame (8-frame model: 4 tubelets).
    code = run_cli(mae_viz_cli.add_parser, ["mae-viz", str(clip), "--weights", str(saved["video_mae"]), "--out", str(out)])
    assert code == 0
    width, height = cli_grid_size(rows=4)
    with Image.open(out / "clip.png") as img:
        assert img.width == width and img.height > height


def test_mae_viz_cli_errors(tmp_path, saved, capsys):
    image = write_image(tmp_path / "x.png")
    base = ["mae-viz", str(image), "--weights", str(saved["mae"]), "--out", str(tmp_path / "o")]
    assert run_cli(mae_viz_cli.add_parser, base + ["--mask-ratio", "1.5"]) == 2
    assert "--mask-ratio" in capsys.readouterr().err
    assert run_cli(mae_viz_cli.add_parser, base + ["--frames", "0"]) == 2
    assert run_cli(mae_viz_cli.add_parser, ["mae-viz", str(image)]) == 2
    assert "say which model" in capsys.readouterr().err
    # An image given to a video model.
    assert run_cli(mae_viz_cli.add_parser, ["mae-viz", str(image), "--weights", str(saved["video_mae"])]) == 2
    assert "no video inputs" in capsys.readouterr().err
    assert run_cli(mae_viz_cli.add_parser, base[:2] + ["--weights", str(tmp_path / "missing")]) == 1
    assert "could not load the model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(mae_viz_cli.add_parser, base + ["--seed", "abc"])


# ----------------------------------------------------------------------------------------- export
def test_export_onnx_dynamic_batch_matches_onnxruntime(tmp_path):
    model = tiny_classifier()
    model.train()
    info = onnx_export.export_onnx(model, tmp_path / "m.onnx", batch=1, dynamic_batch=True, exporter="dynamo")
    assert model.training  # the mode is restored
    assert info.exporter == "dynamo" and info.path.exists() and info.dynamic_batch
    assert info.input_shape == ("batch", 3, 64, 64) and info.opset >= 17
    for batch in (1, 3):
        x = torch.randn(batch, 3, 64, 64)
        diff = onnx_export.verify_onnx(info.path, model, x)
        assert diff < 1e-4
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64), return_logits=True).abs().max() > 0.1  # real logits


def test_export_onnx_torchscript_static_batch(tmp_path):
    model = tiny_classifier()
    info = onnx_export.export_onnx(model, tmp_path / "static.onnx", batch=2, dynamic_batch=False,
                                   exporter="torchscript", opset=17)
    assert info.exporter == "torchscript" and info.opset == 17 and info.input_shape == (2, 3, 64, 64)
    assert onnx_export.verify_onnx(info.path, model, torch.randn(2, 3, 64, 64)) < 1e-4
    with pytest.raises(ValueError, match="takes input of shape"):
        onnx_export.verify_onnx(info.path, model, torch.randn(3, 3, 64, 64))


def test_export_errors(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="MAE"):
        onnx_export.export_onnx(tiny_mae(), tmp_path / "mae.onnx")
    model = tiny_classifier()
    with pytest.raises(ValueError, match="exporter"):
        onnx_export.export_onnx(model, tmp_path / "m.onnx", exporter="tflite")
    with pytest.raises(ValueError, match="batch"):
        onnx_export.export_onnx(model, tmp_path / "m.onnx", batch=0)
    with pytest.raises(ValueError, match="opset"):
        onnx_export.export_onnx(model, tmp_path / "m.onnx", opset=3)
    with pytest.raises(ValueError, match="tile"):
        onnx_export.export_onnx(model, tmp_path / "m.onnx", input_size=(40, 40))
    # Without onnxruntime the check is skipped with a clear message (or raises when asked to).
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.warns(RuntimeWarning, match="onnxruntime is not installed"):
        assert onnx_export.verify_onnx(tmp_path / "m.onnx", model, torch.randn(1, 3, 64, 64)) is None
    with pytest.raises(onnx_export.OnnxRuntimeMissing, match="pip install onnxruntime"):
        onnx_export.verify_onnx(tmp_path / "m.onnx", model, torch.randn(1, 3, 64, 64), missing_ok=False)


def test_export_cli(tmp_path, saved, capsys):
    out = tmp_path / "cls.onnx"
    code = run_cli(export_cli.add_parser, ["export", "--weights", str(saved["cls"]), "--out", str(out),
                                            "--batch", "2", "--exporter", "torchscript"])
    printed = capsys.readouterr().out
    assert code == 0 and out.exists()
    assert "batch 2" in printed and "batch 3" in printed  # dynamic by default: checked at another size
    code = run_cli(export_cli.add_parser, ["export", "--weights", str(saved["cls"]), "--out", str(out),
                                            "--no-dynamic-batch", "--no-verify", "--exporter", "torchscript"])
    assert code == 0 and "max |logit" not in capsys.readouterr().out
    # Bad options.
    assert run_cli(export_cli.add_parser, ["export", "--out", str(out)]) == 2
    assert run_cli(export_cli.add_parser, ["export", "--weights", str(saved["cls"]), "--batch", "0"]) == 2
    assert run_cli(export_cli.add_parser, ["export", "--weights", str(saved["cls"]), "--opset", "2"]) == 2
    assert run_cli(export_cli.add_parser, ["export", "--weights", str(saved["mae"]), "--model", "mae_hiera_tiny_224",
                                            "--out", str(out)]) in (1, 2)
    assert run_cli(export_cli.add_parser, ["export", "--weights", str(saved["cls"]), "--input-size", "64"]) == 2
    assert "--input-size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(export_cli.add_parser, ["export", "--weights", str(saved["cls"]), "--exporter", "tflite"])


# ----------------------------------------------------------------------------------------- benchmark
def check_result(r, batch):
    assert r["batch_size"] == batch and r["iters"] >= 1
    assert r["throughput"] > 0 and r["total_s"] > 0
    assert 0 < r["latency_ms_min"] <= r["latency_ms_median"] <= r["latency_ms_p90"]
    assert r["peak_memory_mb"] > 10
    assert abs(r["throughput"] - batch * r["iters"] / r["total_s"]) < 1e-6 * r["throughput"] + 1e-9
    json.dumps(r)


def test_benchmark_library():
    model = tiny_classifier()
    model.train()
    r = bench.benchmark(model, 2, warmup=1, iters=3)
    check_result(r, 2)
    assert r["mode"] == "inference" and r["dtype"] == "fp32" and r["device"] == "cpu" and r["iters"] == 3
    assert r["memory_kind"].startswith("cpu_rss_peak") and model.training
    r = bench.benchmark(model, 2, dtype="bf16", mode="train", warmup=0, iters=2)
    check_result(r, 2)
    assert r["first_step_s"] is None
    r = bench.benchmark(tiny_mae(), 1, mode="train", warmup=1, iters=1)  # MAE: timed on its loss
    check_result(r, 1)
    r = bench.benchmark(model, 1, min_time=0.05, warmup=0)
    assert r["iters"] >= 3 and r["total_s"] >= 0.05
    r = bench.benchmark(model, 1, input_size=(96, 96), iters=1, warmup=0)  # another tiling size
    assert r["input_size"] == [96, 96] and model.dynamic_size is False
    r = bench.benchmark(model, 1, compile="eager", iters=1, warmup=1)
    assert r["compile"] == "eager" and r["first_step_s"] > 0


def test_benchmark_dtype_support_and_errors():
    ok, note = bench.dtype_support("cpu", "fp32")
    assert ok and note == ""
    for dtype in ("bf16", "fp16"):
        ok, note = bench.dtype_support("cpu", dtype)
        assert isinstance(ok, bool) and isinstance(note, str)
    model = tiny_classifier()
    with pytest.raises(ValueError, match="dtype"):
        bench.benchmark(model, 1, dtype="int8")
    with pytest.raises(ValueError, match="mode"):
        bench.benchmark(model, 1, mode="serve")
    with pytest.raises(ValueError, match="batch_size"):
        bench.benchmark(model, 0)
    with pytest.raises(ValueError, match="not both"):
        bench.benchmark(model, 1, iters=2, min_time=1.0)
    with pytest.raises(ValueError, match="cpu' or 'cuda"):
        bench.benchmark(model, 1, device="meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            bench.benchmark(model, 1, device="cuda")
        ok, note = bench.dtype_support("cuda", "fp16")
        assert not ok and "CUDA" in note


def test_benchmark_cli_json(tmp_path, saved, capsys):
    record_path = tmp_path / "out" / "bench.json"
    code = run_cli(bench_cli.add_parser, ["benchmark", "--weights", str(saved["cls"]), "--batch-size", "1", "2",
                                      "--dtype", "fp32", "bf16", "--device", "cpu", "--warmup", "1", "--iters", "2",
                                      "--json", str(record_path)])
    captured = capsys.readouterr()
    assert code == 0
    assert "[4/4] batch 2, bf16" in captured.err and "img/s" in captured.out
    record = json.loads(record_path.read_text())
    assert record["system"]["torch"] == torch.__version__ and record["system"]["cpu_count"] >= 1
    assert "date" in record and record["model"]["class"] == "Hiera" and record["model"]["input_size"] == [64, 64]
    assert [(m["batch_size"], m["dtype"]) for m in record["measurements"]] == [
        (1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16")]
    assert "TFLOP/s" in captured.out
    for m in record["measurements"]:
        if "skipped" not in m:
            check_result(m, m["batch_size"])
            # the model's FLOPs at its 64x64 input, counted on the same architecture
            assert m["gflop_per_item"] > 0 and m["tflops"] == pytest.approx(m["gflop_per_item"] * m["throughput"] / 1e3)
            assert "mfu" not in m  # no peak is known for a CPU
    assert len({m["gflop_per_item"] for m in record["measurements"] if "skipped" not in m}) == 1


def test_benchmark_cli_mae(tmp_path, saved, capsys):
    record_path = tmp_path / "mae.json"
    code = run_cli(bench_cli.add_parser, ["benchmark", "--weights", str(saved["mae"]), "--mae", "--mode", "train",
                                      "--warmup", "0", "--iters", "1", "--json", str(record_path), "--quiet"])
    assert code == 0
    record = json.loads(record_path.read_text())
    assert record["model"]["class"] == "MaskedAutoencoderHiera" and record["settings"]["mode"] == "train"
    check_result(record["measurements"][0], 1)


def test_benchmark_cli_zoo_model_random_weights(capsys):
    # A zoo name builds the architecture with random weights: nothing is downloaded.
    code = run_cli(bench_cli.add_parser, ["benchmark", "--model", "hiera_tiny_224", "--device", "cpu",
                                      "--warmup", "0", "--iters", "1", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    assert "img/s" in captured.out


def test_benchmark_cli_errors(saved, capsys):
    def run(*argv):
        return run_cli(bench_cli.add_parser, ["benchmark", *argv])

    assert run("--model", "not_a_model") == 2
    assert "unknown zoo model" in capsys.readouterr().err
    assert run() == 2
    assert run("--weights", str(saved["cls"]), "--batch-size", "0") == 2
    assert run("--weights", str(saved["cls"]), "--device", "tpu") == 2
    assert run("--weights", str(saved["cls"]), "--input-size", "64") == 2
    assert run("--weights", str(saved["cls"]), "--input-size", "40", "40") == 2
    assert "tile" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run("--weights", str(saved["cls"]), "--device", "cuda") == 2
    with pytest.raises(SystemExit):
        run("--weights", str(saved["cls"]), "--dtype", "int8")
    with pytest.raises(SystemExit):
        run("--weights", str(saved["cls"]), "--iters", "2", "--min-time", "1")
