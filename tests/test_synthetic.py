"""hiera.data.synthetic: deterministic, balanced, and only separable by spatial structure."""

import json

import numpy as np
import pytest
from PIL import Image

from hiera.data import synthetic
from hiera.data.synthetic import CLASSES, MARKER, generate, make_dataset, render

NUM_CLASSES = len(CLASSES)
CHANCE = 1.0 / NUM_CLASSES


@pytest.fixture(scope="module")
def split_arrays():
    """In-memory train/val splits (the pixels make_dataset writes), shared by the statistics tests."""
    return generate("train", 150, size=64, seed=0), generate("val", 60, size=64, seed=0)


def _nearest_centroid_accuracy(f_train, y_train, f_val, y_val):
    """Nearest class centroid on standardised features (numpy only)."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-8
    a, b = (f_train - mu) / sd, (f_val - mu) / sd
    centroids = np.stack([a[y_train == c].mean(0) for c in range(NUM_CLASSES)])
    pred = ((b[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == y_val).mean())


def _orientation_histogram(images, bins=8):
    """Gradient-orientation histogram (a one-cell HOG): per pixel, the gradient of the colour
    channel where it is strongest; orientation modulo 180 degrees, magnitude-weighted, normalised."""
    f = images.astype(np.float32) / 255.0
    gx, gy = np.zeros_like(f), np.zeros_like(f)
    gx[:, :, 1:-1] = f[:, :, 2:] - f[:, :, :-2]
    gy[:, 1:-1] = f[:, 2:] - f[:, :-2]
    channel = np.hypot(gx, gy).argmax(-1)[..., None]
    gx = np.take_along_axis(gx, channel, -1)[..., 0]
    gy = np.take_along_axis(gy, channel, -1)[..., 0]
    mag = np.hypot(gx, gy)
    bin_index = np.minimum((np.mod(np.arctan2(gy, gx), np.pi) / np.pi * bins).astype(int), bins - 1)
    hist = np.stack([(mag * (bin_index == k)).sum((1, 2)) for k in range(bins)], 1)
    return hist / (hist.sum(1, keepdims=True) + 1e-8)


def test_classes_sorted_and_distinct():
    assert list(CLASSES) == sorted(set(CLASSES)) and 6 <= NUM_CLASSES <= 10


def test_render_shapes_and_determinism():
    for name in CLASSES:
        a = render(name, 4, size=32, rng=123)
        assert a.shape == (4, 32, 32, 3) and a.dtype == np.uint8
        assert np.array_equal(a, render(name, 4, size=32, rng=123))
        assert not np.array_equal(a, render(name, 4, size=32, rng=124))
        assert a.std() > 10  # a visible pattern, not a flat image
    assert render("disc", 0).shape == (0, 64, 64, 3)
    with pytest.raises(ValueError, match="unknown class"):
        render("hexagon", 1)


def test_colour_alone_does_not_separate_classes(split_arrays):
    (x_train, y_train), (x_val, y_val) = split_arrays
    mean_rgb = x_train.reshape(len(x_train), -1, 3).mean(1) / 255.0
    class_means = np.stack([mean_rgb[y_train == c].mean(0) for c in range(NUM_CLASSES)])
    # Every class averages to mid-grey in every channel (foreground and background colours are
    # drawn from the same distribution, independently of the class)...
    assert np.abs(class_means - 0.5).max() < 0.05
    # ...the spread between class means is a fraction of the spread between images...
    assert class_means.std(0).max() < 0.25 * mean_rgb.std(0).min()
    # ...and a classifier on mean colour is at chance.
    val_rgb = x_val.reshape(len(x_val), -1, 3).mean(1) / 255.0
    assert _nearest_centroid_accuracy(mean_rgb, y_train, val_rgb, y_val) < CHANCE + 0.08


def test_spatial_structure_separates_classes(split_arrays):
    (x_train, y_train), (x_val, y_val) = split_arrays
    acc = _nearest_centroid_accuracy(
        _orientation_histogram(x_train), y_train, _orientation_histogram(x_val), y_val
    )
    assert acc > 0.6  # chance is 0.125; ~0.87 measured


def test_make_dataset_layout_counts_and_idempotence(tmp_path):
    root = tmp_path / "shapes"
    info = make_dataset(root, num_per_class_train=5, num_per_class_val=3, size=32, seed=1, unlabelled_extra=7)
    assert info.created and info.num_train == 5 * NUM_CLASSES and info.num_val == 3 * NUM_CLASSES
    assert info.train_dir == root / "train" and info.unlabelled_dir == root / "unlabelled"
    for split, count in (("train", 5), ("val", 3)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for name in CLASSES:
            files = sorted((root / split / name).glob("*.png"))
            assert len(files) == count  # balanced
    assert len(list((root / "unlabelled").glob("*.png"))) == 7
    img = Image.open(next((root / "train" / "disc").glob("*.png")))
    assert img.size == (32, 32) and img.mode == "RGB"
    marker = json.loads((root / MARKER).read_text())
    assert marker["complete"] and marker["params"]["seed"] == 1

    # The files hold exactly the in-memory pixels.
    arrays, labels = generate("val", 3, size=32, seed=1)
    first_cross = np.asarray(Image.open(root / "val" / "cross" / "cross_00000.png"))
    assert np.array_equal(first_cross, arrays[labels == CLASSES.index("cross")][0])

    # Same parameters: nothing is rewritten.
    mtime = (root / "train" / "disc" / "disc_00000.png").stat().st_mtime_ns
    again = make_dataset(root, num_per_class_train=5, num_per_class_val=3, size=32, seed=1, unlabelled_extra=7)
    assert not again.created
    assert (root / "train" / "disc" / "disc_00000.png").stat().st_mtime_ns == mtime

    # A file removed by hand: regenerated. Other parameters: replaced, no stale files left.
    (root / "val" / "rings" / "rings_00001.png").unlink()
    assert make_dataset(root, 5, 3, size=32, seed=1, unlabelled_extra=7).created
    assert make_dataset(root, 2, 1, size=32, seed=1).created
    assert len(list((root / "train" / "rings").glob("*.png"))) == 2
    assert not (root / "unlabelled").exists()


def test_make_dataset_is_deterministic(tmp_path):
    a = make_dataset(tmp_path / "a", 3, 2, size=32, seed=7, unlabelled_extra=4)
    b = make_dataset(tmp_path / "b", 3, 2, size=32, seed=7, unlabelled_extra=4)
    c = make_dataset(tmp_path / "c", 3, 2, size=32, seed=8)
    files = sorted(p.relative_to(a.root) for p in a.root.rglob("*.png"))
    assert files == sorted(p.relative_to(b.root) for p in b.root.rglob("*.png"))
    for rel in files:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes()
    rel = files[0]  # train/checkerboard/checkerboard_00000.png
    assert (a.root / rel).read_bytes() != (c.root / rel).read_bytes()  # another seed, other images
    # train and val are independent draws
    train, _ = generate("train", 2, size=32, seed=7)
    val, _ = generate("val", 2, size=32, seed=7)
    assert not np.array_equal(train, val)


def test_make_dataset_refuses_foreign_folders(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "cats" / "x.png").write_bytes(b"")
    with pytest.raises(FileExistsError, match="marker"):
        make_dataset(tmp_path, 1, 1)
    with pytest.raises(ValueError):
        make_dataset(tmp_path / "new", -1, 1)


def test_make_dataset_is_fast(tmp_path):
    import time

    start = time.perf_counter()
    make_dataset(tmp_path, 100, 25, size=64)  # 1000 images
    assert time.perf_counter() - start < 10  # ~1.5 s measured on 2 CPU cores
    assert synthetic.SyntheticInfo  # re-exported type
