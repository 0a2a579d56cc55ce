"""pretrain -> finetune -> evaluate end to end on generated images, and several processes."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hiera.cli import main
from hiera.data.synthetic import make_dataset
from hiera.pos_embed import sincos_pos_embed
from hiera.train.commands import evaluate, finetune, pretrain
from hiera.zoo import load_model

TINY = dict(input_size=(64, 64), embed_dim=32, num_heads=1, stages=(1, 2, 2), q_pool=2, mask_unit_size=(4, 4),
            mask_unit_attn=(True, False, False))
DECODER = dict(decoder_embed_dim=64, decoder_depth=1, decoder_num_heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("synthetic"), 24, 8, size=64, seed=0)


def losses(run_dir, split="train"):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == split]


def test_pretrain_then_finetune_then_evaluate(data, tmp_path):
    mae_dir, ft_dir = tmp_path / "mae", tmp_path / "ft"
    pretrain(data.train_dir, mae_dir, model="custom", config=dict(TINY, **DECODER), epochs=6, batch_size=32,
             lr=2e-3, progress=False, log_every=1, num_workers=0, val=data.val_dir)
    train = [r["loss"] for r in losses(mae_dir)]
    assert len(train) == 6 * (8 * 24 // 32) and min(train[-3:]) < train[0]
    assert (mae_dir / "curves.png").exists() and list((mae_dir / "reconstructions").glob("*.png"))
    assert losses(mae_dir, "val")

    result = finetune(data.train_dir, ft_dir, val=data.val_dir, model="custom", config=TINY,
                      init=str(mae_dir / "last.pt"), epochs=2, batch_size=32, lr=1e-3, progress=False,
                      num_workers=0, mixup=False)
    assert "val_acc1" in result and 0 <= result["val_acc1"] <= 100
    assert (ft_dir / "model" / "classes.txt").read_text().split() == list(data.classes)
    state = torch.load(ft_dir / "last.pt", weights_only=True)
    assert state["extra"]["init"] == str(mae_dir / "last.pt") and state["class"] == "Hiera"

    report = evaluate(data.val_dir, weights=ft_dir / "model")
    assert report["n"] == len(data.classes) * 8 and report["acc1"] == pytest.approx(result["val_acc1"], abs=1e-6)
    assert set(report["per_class_acc1"]) == set(data.classes)
    # The fine-tuned model goes straight into `hiera predict`.
    image = next(Path(data.val_dir, data.classes[0]).glob("*.png"))
    assert main(["predict", str(image), "--weights", str(ft_dir / "model"), "--classes",
                 str(ft_dir / "model" / "classes.txt"), "--format", "json", "--no-progress"]) == 0


def test_mask_ratio_reaches_the_model(data, tmp_path):
    from hiera.data.images import ImageFiles

    pretrain(data.train_dir, tmp_path / "r", model="custom", config=dict(TINY, **DECODER), epochs=1,
             batch_size=64, mask_ratio=0.75, progress=False, num_workers=0)
    state = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert state["extra"]["mask_ratio"] == 0.75
    # The masks the data pipeline hands the model keep exactly 25% of the 16 mask units.
    ds = ImageFiles.from_folder(data.train_dir, mask_units=16, mask_ratio=0.75)
    assert int(ds[(0, 0)]["mask"].sum()) == 4


def test_two_processes_match_one_with_the_same_global_batch(data, tmp_path):
    """torchrun with 2 gloo processes (16 samples each) == 1 process (32 samples)."""
    args = ["pretrain", "--data", str(data.train_dir), "--model", "custom", "--config",
            json.dumps(dict(TINY, **DECODER)), "--epochs", "1", "--batch-size", "32", "--lr", "1e-3",
            "--log-every", "1", "--workers", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "hiera.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", "29533", "-m", "hiera.cli", *args, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a = [r["loss"] for r in losses(tmp_path / "one")]
    b = [r["loss"] for r in losses(tmp_path / "two")]
    assert len(a) == len(b) == 8 * 24 // 32
    assert b == pytest.approx(a, rel=1e-4)
    state = torch.load(tmp_path / "two" / "last.pt", weights_only=True)
    assert state["world"] == 2 and len(state["rng"]) == 2


def test_training_commands_reject_bad_input(tmp_path, capsys):
    assert main(["finetune", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--no-progress"]) == 1
    assert "image folder not found" in capsys.readouterr().err


def test_quickstart_writes_its_report(tmp_path):
    from hiera.train.quickstart import quickstart

    report = quickstart(tmp_path / "qs", per_class=8, val_per_class=4, pool=256, pretrain_epochs=1, few=2,
                        finetune_epochs=1, few_epochs=1, few_seeds=2, batch_size=16, workers=0, progress=False)
    out = tmp_path / "qs"
    md = (out / "report.md").read_text()
    # Every picture the report links exists.
    for name in ("report.md", "report.json", "comparison.png", "reconstructions.png", "finetune_curves.png",
                 "pretrain/curves.png", "mae_all/model/config.json", "scratch_few/model/config.json"):
        assert (out / name).exists(), name
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", md):
        assert (out / link).exists(), link
    assert len(list((out / "data" / "train_2_per_class").glob("*/*.png"))) == 2 * len(report["classes"])
    assert len(report["predictions"]) == len(report["classes"]) == 8
    assert all(name in report["classes"] for p in report["predictions"] for name, _ in p["top3"])
    assert set(report["comparison"]) == {"linear probe, all labels", "linear probe, 2/class", "fine-tuned, 2/class",
                                         "fine-tuned, all labels"}
    for pair in report["comparison"].values():
        assert set(pair) == {"MAE", "no pretraining"} and all(0 <= v <= 100 for v in pair.values())
    assert report["pretrain_images_seen"] == 256  # one step of 256
    assert set(report["shared_component"]) == {"mae", "random"}
    assert all(0 <= v <= 1 for v in report["shared_component"].values())
    assert report["reconstruction"]["mae"]["baseline"] == pytest.approx(1.0, abs=0.05)
    assert "| linear probe, all labels |" in md and "What the numbers mean" in md and "chance" in md.lower()
    # The few-label row is the mean of one run per seed on each side, each run in its own folder.
    runs = report["few_runs"]
    assert runs["seeds"] == [0, 1] and len(runs["MAE"]) == len(runs["no pretraining"]) == 2
    assert (out / "mae_few_seed1" / "model").is_dir() and (out / "scratch_few_seed1" / "model").is_dir()
    assert report["comparison"]["fine-tuned, 2/class"]["MAE"] == pytest.approx(sum(runs["MAE"]) / 2)
    assert "the mean of 2 runs on each side (training seeds 0, 1)" in md
    assert set(report["reconstruction_by_class"]) == set(report["classes"])
    assert all(v > 0 for v in report["reconstruction_by_class"].values())
    # The MAE starts from sine-cosine position embeddings (two short steps keep them close), the
    # classifiers trained from scratch from Hiera's own small random ones.
    grid = sincos_pos_embed((16, 16), 48)
    assert torch.allclose(load_model(weights=out / "pretrain" / "model").pos_embed, grid, atol=0.05)
    assert load_model(weights=out / "scratch_few" / "model").pos_embed.std() < 0.1


def test_quickstart_verdicts_weigh_the_spread_of_repeated_runs():
    from hiera.train.quickstart import _row_verdict, _verdict

    assert _verdict(50.0, 45.0) == "MAE ahead" and _verdict(45.0, 50.0) == "MAE behind" and _verdict(50, 49) == "even"
    report = {"comparison": {"fine-tuned, 10/class": {"MAE": 43.0, "no pretraining": 47.3},
                             "fine-tuned, all labels": {"MAE": 43.0, "no pretraining": 47.3}},
              "few_runs": {"MAE": [40.0, 45.0, 44.0], "no pretraining": [58.2, 34.5, 49.2], "seeds": [0, 1, 2]}}
    # 4.3 points apart, but one side's runs spread by 12: no verdict either way.
    assert _row_verdict(report, "fine-tuned, 10/class") == "even within the runs' spread"
    assert _row_verdict(report, "fine-tuned, all labels") == "MAE behind"  # one run: no spread to weigh
    report["few_runs"] = {"MAE": [60.0, 61.0, 62.0], "no pretraining": [45.0, 46.0, 47.0], "seeds": [0, 1, 2]}
    report["comparison"]["fine-tuned, 10/class"] = {"MAE": 61.0, "no pretraining": 46.0}
    assert _row_verdict(report, "fine-tuned, 10/class") == "MAE ahead"


def test_quickstart_words_the_reconstruction_per_class_from_what_it_measured():
    from hiera.train.quickstart import _by_class

    lagging = _by_class({"cross": 0.2, "disc": 0.3, "rings": 0.6, "vertical_stripes": 0.7})
    assert lagging.startswith("its masked error per class, as a fraction of the mean's, is cross 0.20, disc 0.30, "
                              "rings 0.60, vertical stripes 0.70.")
    assert "(0.25 on average) far better than it continues the periodic patterns (0.65)" in lagging
    even = _by_class({"cross": 0.3, "rings": 0.35})
    assert "continues the periodic patterns (0.35 on average) about as well as it places single shapes (0.30)" in even
    reverse = _by_class({"cross": 0.6, "rings": 0.3})
    assert "continues the periodic patterns (0.30 on average) better than it places single shapes (0.60)" in reverse


def test_linear_probe_trains_the_head_only_and_ema_bf16_run(data, tmp_path):
    mae_dir = tmp_path / "mae"
    pretrain(data.train_dir, mae_dir, model="custom", config=dict(TINY, **DECODER), epochs=1, batch_size=32,
             progress=False, num_workers=0)
    init = torch.load(mae_dir / "last.pt", weights_only=True)["model"]
    finetune(data.train_dir, tmp_path / "probe", model="custom", config=TINY, init=str(mae_dir / "last.pt"),
             epochs=1, batch_size=32, linear_probe=True, progress=False, num_workers=0)
    probe = torch.load(tmp_path / "probe" / "last.pt", weights_only=True)["model"]
    assert torch.equal(probe["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])  # frozen trunk
    assert probe["head.projection.weight"].shape[0] == len(data.classes)

    result = finetune(data.train_dir, tmp_path / "ema", val=data.val_dir, model="custom", config=TINY, epochs=1,
                      batch_size=32, ema=True, precision="bf16", progress=False, num_workers=0)
    state = torch.load(tmp_path / "ema" / "last.pt", weights_only=True)
    assert state["ema"] is not None and state["run"]["precision"] == "bf16" and "val_acc1" in result
    assert not torch.equal(state["ema"]["head.projection.weight"], state["model"]["head.projection.weight"])


def test_killed_run_resumes_to_the_same_losses(data, tmp_path):
    """SIGKILL a real `hiera pretrain` process mid-run, resume it, compare with an uninterrupted run."""
    import signal
    import time

    args = [sys.executable, "-m", "hiera.cli", "pretrain", "--data", str(data.train_dir), "--model", "custom",
            "--config", json.dumps(dict(TINY, **DECODER)), "--epochs", "3", "--batch-size", "16", "--lr", "1e-3",
            "--log-every", "1", "--save-every", "2", "--workers", "0", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full = subprocess.run([*args, "--out", str(tmp_path / "full")], env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]

    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([*args, "--out", str(run_dir)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (run_dir / "metrics.jsonl").exists() and len(losses(run_dir)) >= 7:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(losses(run_dir)) < 3 * (8 * 24 // 16)  # it really was cut short
    assert torch.load(run_dir / "last.pt", weights_only=True)["step"] % 2 == 0
    resumed = subprocess.run([*args, "--out", str(run_dir), "--resume"], env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert [r["loss"] for r in losses(run_dir)] == [r["loss"] for r in losses(tmp_path / "full")]
