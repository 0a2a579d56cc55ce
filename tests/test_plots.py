"""hiera.train.plots: training curves from JSON-lines metrics to PNG."""

import json
import math

import matplotlib  # noqa: E402,F401  (a dependency of the package)
import numpy as np
import pytest
from PIL import Image

from hiera.train.plots import load_metrics, plot_curves


def fake_run(steps=30, scale=1.0):
    records = []
    for step in range(steps):
        records.append(dict(step=step, epoch=step // 10, split="train", loss=scale * math.exp(-step / 10),
                            lr=1e-3 * min(1.0, step / 5), grad_norm=1.0 + step % 3))
        if step % 10 == 9:
            records.append(dict(step=step, epoch=step // 10, split="val", loss=scale * 1.1 * math.exp(-step / 10),
                                acc1=50.0 + step))
    return records


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_plot_two_runs_from_files(tmp_path):
    mae = write_jsonl(tmp_path / "ft_mae" / "metrics.jsonl", fake_run())
    scratch = write_jsonl(tmp_path / "ft_scratch" / "metrics.jsonl", fake_run(scale=2.0))
    out = plot_curves([mae, scratch], tmp_path / "out" / "curves.png", keys=("loss", "lr", "acc1"),
                      labels=["MAE-pretrained", "from scratch"], figsize=(9, 3), dpi=50, title="fine-tuning")
    assert out == tmp_path / "out" / "curves.png"
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == (450, 150)  # figsize * dpi, exactly
        # not a blank canvas
        assert len(np.unique(np.asarray(img.convert("L")))) > 10


def test_plot_records_mapping_and_default_size(tmp_path):
    out = plot_curves({"a": fake_run(), "b": fake_run(scale=0.5)}, tmp_path / "c.png", keys=["loss"],
                      log_keys=("loss",))
    with Image.open(out) as img:
        assert img.size == (500, 350)  # default: 5 x 3.5 inches per panel at 100 dpi
    out = plot_curves(fake_run(), tmp_path / "d.png", keys=("loss", "lr", "acc1", "grad_norm"),
                      x="epoch")
    with Image.open(out) as img:
        assert img.size == (1500, 700)  # 4 panels: 3 a row, 2 rows


def test_missing_key_is_a_clear_error(tmp_path):
    expected = r"no values for \['acc5'\].*available keys: \['acc1', 'grad_norm', 'loss', 'lr'\]"
    with pytest.raises(ValueError, match=expected):
        plot_curves(fake_run(), tmp_path / "x.png", keys=("loss", "acc5"))
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(ValueError, match="keys is empty"):
        plot_curves(fake_run(), tmp_path / "x.png", keys=())
    # val-only key with only the train split asked for
    with pytest.raises(ValueError, match="acc1"):
        plot_curves(fake_run(), tmp_path / "x.png", keys=("acc1",), splits=("train",))


def test_empty_and_missing_inputs(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        plot_curves(empty, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no records"):
        plot_curves([], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        plot_curves(tmp_path / "nope.jsonl", tmp_path / "x.png")
    with pytest.raises(ValueError, match="2 labels for 1 runs"):
        plot_curves([fake_run()], tmp_path / "x.png", labels=["a", "b"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "loss": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        load_metrics(bad)


def test_load_metrics_skips_blank_lines(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", fake_run(3))
    path.write_text(path.read_text() + "\n\n")
    assert load_metrics(path) == fake_run(3)
