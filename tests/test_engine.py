"""The training engine: data order, per-sample randomness, resume, divergence, bad files."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import hiera
from hiera.data.images import ImageFiles, StepSampler, collate, pretrain_transform, random_unit_mask
from hiera.train.engine import MAETask, RunConfig, Trainer, TrainingDiverged, load_run_checkpoint
from hiera.zoo import load_model


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(40):
        Image.fromarray(rng.integers(0, 255, (72, 72, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    return root


def tiny_mae():
    torch.manual_seed(0)
    return hiera.MaskedAutoencoderHiera(
        input_size=(64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 2, 1), q_pool=2,
        decoder_embed_dim=32, decoder_depth=1, decoder_num_heads=2,
    )


def run_mae(folder, out, steps, resume=False, lr=1e-3, accum=1, save_every=2):
    model = tiny_mae()
    data = ImageFiles.from_folder(folder, transform=pretrain_transform((64, 64)), mask_units=model.num_mask_units)
    cfg = RunConfig(out_dir=str(out), total_steps=steps, batch_size=8, accum=accum, log_every=1, progress=False,
                    save_every=save_every)
    trainer = Trainer(model, MAETask(viz_batch=2), data, None,
                      lambda m: torch.optim.AdamW(m.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05),
                      lambda s: lr * 0.5 * (1 + math.cos(math.pi * s / 12)), cfg)
    if resume:
        trainer.resume()
    trainer.fit()
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["split"] == "train"]


def test_sampler_shards_each_step_and_resumes_mid_epoch():
    full = list(StepSampler(20, batch_size=4, seed=3, total_steps=10))
    assert len(full) == 10 and all(len(b) == 4 for b in full)
    assert sorted(i for _, i in sum(full[:5], [])) == list(range(20))  # one epoch = a permutation
    assert [e for e, _ in full[5]] == [1] * 4 and full[5] != full[0]  # next epoch, new order
    assert list(StepSampler(20, batch_size=4, seed=3, start_step=7, total_steps=10)) == full[7:]
    # Two processes with two micro-batches each: together exactly the single-process batches.
    shards = [list(StepSampler(20, batch_size=4, seed=3, rank=r, world=2, accum=2, total_steps=10)) for r in (0, 1)]
    for step in range(10):
        assert shards[0][2 * step] + shards[0][2 * step + 1] + shards[1][2 * step] + shards[1][2 * step + 1] == full[step]
    with pytest.raises(ValueError, match="divisible by processes x accumulation"):
        StepSampler(20, batch_size=6, world=2, accum=2)


def test_per_sample_randomness_does_not_depend_on_order_or_process(image_folder):
    data = ImageFiles.from_folder(image_folder, transform=pretrain_transform((64, 64)), mask_units=4)
    state = torch.get_rng_state()
    a, b = data[(2, 5)], data[(2, 5)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(a["image"], data[(3, 5)]["image"])  # another epoch, another crop
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is untouched
    assert a["mask"].sum() == int(4 * 0.4)
    m = random_unit_mask(16, 0.75, torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.sum() == 4


def test_unreadable_files_are_skipped_and_counted(image_folder, tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"not an image")
    Image.new("RGB", (70, 70)).save(tmp_path / "good.png")
    data = ImageFiles.from_folder(tmp_path, transform=pretrain_transform((64, 64)))
    batch = collate([data[(0, i)] for i in range(len(data))])
    assert batch["n_bad"] == 3 and batch["n"] == 1 and batch["image"].shape == (1, 3, 64, 64)


def test_resume_reproduces_the_uninterrupted_losses(image_folder, tmp_path):
    full = run_mae(image_folder, tmp_path / "full", steps=8)
    assert full[-1] < full[0]  # it learns
    run_mae(image_folder, tmp_path / "cut", steps=4)  # "killed" after step 4 (checkpoint at 4)
    resumed = run_mae(image_folder, tmp_path / "cut", steps=8, resume=True)
    assert resumed == full
    state = load_run_checkpoint(tmp_path / "cut" / "last.pt")
    assert state["step"] == 8 and state["class"] == "MaskedAutoencoderHiera"
    # The checkpoint loads straight into the plain constructors and into load_model.
    model = hiera.MaskedAutoencoderHiera(**state["config"])
    model.load_state_dict(state["model"])
    assert load_model(weights=tmp_path / "cut" / "last.pt", mae=True).load_report.exact
    assert list((tmp_path / "full" / "reconstructions").glob("*.png"))


def test_gradient_accumulation_matches_one_big_batch(image_folder, tmp_path):
    assert run_mae(image_folder, tmp_path / "a", steps=3, accum=1) == pytest.approx(
        run_mae(image_folder, tmp_path / "b", steps=3, accum=4), rel=1e-5)


def test_divergence_stops_with_the_last_checkpoint_intact(image_folder, tmp_path):
    run_mae(image_folder, tmp_path / "run", steps=2)
    before = (tmp_path / "run" / "last.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match=r"loss is (nan|inf) at step .*last good checkpoint"):
        run_mae(image_folder, tmp_path / "run", steps=6, resume=True, lr=1e30)
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


def test_list_files_with_labels_by_index_or_name(image_folder, tmp_path):
    from hiera.data.images import open_images

    names = sorted(image_folder.glob("*.png"))[:4]
    (tmp_path / "list.csv").write_text(f"# a comment\n{names[0]},cat\n{names[1]},dog\n\n{names[2]},cat\n")
    data = open_images(tmp_path / "list.csv", labelled=True)
    assert data.classes == ["cat", "dog"] and data.labels == [0, 1, 0]
    (tmp_path / "plain.txt").write_text(f"{names[0]}\n{names[3]}\n")
    assert open_images(tmp_path / "plain.txt").labels == [-1, -1]
    with pytest.raises(ValueError, match="without a label"):
        open_images(tmp_path / "plain.txt", labelled=True)
    (tmp_path / "bad.csv").write_text(f"{names[0]},1,extra\n")
    with pytest.raises(ValueError, match=r"bad.csv:1: expected 'path' or 'path,label'"):
        open_images(tmp_path / "bad.csv")


def test_compiled_training_matches_eager(image_folder, tmp_path):
    def run(out, compile):
        model = tiny_mae()
        data = ImageFiles.from_folder(image_folder, transform=pretrain_transform((64, 64)), mask_units=model.num_mask_units)
        cfg = RunConfig(out_dir=str(out), total_steps=2, batch_size=8, log_every=1, progress=False, compile=compile)
        Trainer(model, MAETask(), data, None, lambda m: torch.optim.AdamW(m.parameters(), lr=1e-3),
                lambda s: 1e-3, cfg).fit()
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert run(tmp_path / "compiled", "aot_eager") == pytest.approx(run(tmp_path / "eager", False), rel=1e-4)
