"""``hiera quickstart``: what MAE pretraining buys, shown end to end on a laptop CPU, offline.

The steps, as ``hiera quickstart --help`` tells them: generate shapes whose classes differ in
structure, not colour (:mod:`hiera.data.synthetic`); MAE-pretrain a small Hiera on an unlabelled
pool; compare the MAE encoder with the same network untrained (reconstructions, a linear probe,
fine-tuning with few and with all labels) through the package's own commands; write a report."""

from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from ..data.images import open_images
from ..data.synthetic import CLASSES, PERIODIC, make_dataset
from ..data.transforms import ImageEvalTransform
from ..mae import MaskedAutoencoderHiera
from ..tools.mae_viz import _font, _to_uint8, mae_reconstruction
from ..tools.predict import predict
from ..zoo import load_model
from .commands import evaluate, finetune, pretrain
from .plots import plot_comparison, plot_curves
from .probe import encoder_features, heldout_mae_loss, linear_probe, per_class_subset, shared_component

# A small Hiera for 64x64 images: 3 stages (strides 4, 8, 16), 4x4-token mask units, so an
# image has 16 mask units of 16x16 pixels and MAE keeps 6 of them at mask ratio 0.6.
SMALL = dict(input_size=(64, 64), embed_dim=48, num_heads=2, stages=(1, 2, 3), q_pool=2, mask_unit_size=(4, 4),
             mask_unit_attn=(True, False, False))
# The MAE's position embeddings start as sine-cosine of the token position (Hiera.pos_embed_init), as
# MAE's own are: on this budget its encoder learns markedly more from them than from the official
# small random init. The classifiers trained from scratch keep the official init: from sine-cosine
# they learned far slower (benchmarks/records/2026-12-01-cpu-quickstart-pretraining.md). Each side
# starts from the init that suits it; the networks are the same.
MAE = dict(SMALL, pos_embed_init="sincos", decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4)
# What the encoder learns grows with the number of images it has reconstructed (the scale curve
# of benchmarks/mae_scale.py, in benchmarks/records/2026-11-30-h200-mae-scale.json). The recipe's
# 8e-4 per 4096 images would be 3e-5 here, far too little for a few hundred steps; batches of 128 at
# 1.5e-3 learned more per image than batches of 256 and cost no more per image on 2 cores
# (benchmarks/records/2026-12-01-cpu-quickstart-pretraining.md).
PRETRAIN = dict(batch_size=128, lr=1.5e-3)
# ImageNet's regularisation (RandAugment's rotations and shears, erasing, mixup) is made for 300
# epochs of 1.28M images; on a few epochs of small shapes it mostly hides the orientation that
# tells the classes apart, so the quickstart fine-tunes with crops and flips only.
LIGHT_FINETUNE = dict(rand_augment=None, reprob=0.0, crop_scale=(0.5, 1.0), drop_path_rate=0.0)
# Layer-wise lr decay (the paper's 0.7 for 12+ blocks over 100+ epochs) holds the lower blocks of
# this 6-block trunk almost still for a few epochs: from scratch that is what keeps the lr stable,
# from the MAE trunk it keeps the trunk from adapting. Each side keeps the setting that suited it
# (benchmarks/records/2026-12-01-cpu-quickstart-finetune-recipes.md), and the report says so.
MAE_FINETUNE = dict(LIGHT_FINETUNE, layer_decay=None)
FINETUNE_LR = 2e-3
# Fine-tuning from the MAE trunk first fits the fresh head by a linear probe, then trains
# everything ("LP-FT"): a short fine-tuning otherwise spends its steps finding the head and
# distorts the features meanwhile (on this data, from the same trunk: 42% top-1 with a fresh head,
# 67% after the probe). From scratch there are no features to keep, and the probe of random
# features on few labels overfits (58% with a fresh head, 35% after the probe), so the scratch runs
# train a fresh head: each side gets the recipe that suits it.
# Seconds per image on 2 cores (evaluations and checkpoints included), from a whole default run;
# only for the estimate printed first.
# A longer pretraining the report and --help suggest (more of the scale curve, under an hour).
LONGER_EPOCHS = 120
_SECONDS = dict(pretrain=2.2e-3, finetune=4.9e-3, fixed=20.0)


def _estimate(pool: int, epochs: int, train: int, few: int, ft_epochs: int, few_epochs: int) -> float:
    return (_SECONDS["pretrain"] * pool * epochs + 2 * _SECONDS["finetune"] * (train * ft_epochs + few * few_epochs)
            + _SECONDS["fixed"])


def quickstart(out="quickstart", per_class: int = 200, val_per_class: int = 50, pool: int = 8000,
               pretrain_epochs: int = 20, few: int = 10, finetune_epochs: int = 10, few_epochs: int = 40,
               few_seeds: int = 3, batch_size: int = 64, workers: int = 1, seed: int = 0, progress: bool = True) -> dict:
    """Run the demonstration into ``out`` and return the report as a dict (also ``report.json``).

    ``pool`` unlabelled images are MAE-pretrained on for ``pretrain_epochs``; ``per_class``
    labelled images per class train the classifiers (``few`` per class for the few-label runs);
    ``val_per_class`` held-out images per class measure everything. The few-label runs are
    repeated with ``few_seeds`` training seeds on each side and reported as their mean and spread.
    """

    for name, value, low in (("--per-class", per_class, 1), ("val_per_class", val_per_class, 1), ("--pool", pool, 1),
                             ("--pretrain-epochs", pretrain_epochs, 1), ("--few", few, 1),
                             ("--finetune-epochs", finetune_epochs, 1), ("--few-epochs", few_epochs, 1),
                             ("--few-seeds", few_seeds, 1),
                             ("batch_size", batch_size, 1), ("--workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    if len(CLASSES) * per_class < batch_size:
        raise ValueError(f"--per-class {per_class} gives {len(CLASSES) * per_class} training images, fewer than one "
                         f"batch of {batch_size}; use --per-class {-(-batch_size // len(CLASSES))} or more")
    if few > per_class:
        raise ValueError(f"--few {few} must not exceed --per-class {per_class}: the few-label set is drawn from it")
    if pool < PRETRAIN["batch_size"]:
        raise ValueError(f"--pool {pool} is fewer images than one pretraining batch of {PRETRAIN['batch_size']}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    train_images = len(CLASSES) * per_class
    minutes = _estimate(pool, pretrain_epochs, train_images, len(CLASSES) * few * few_seeds, finetune_epochs,
                        few_epochs) / 60
    print(f"quickstart: MAE-pretrain a small Hiera on {pool} unlabelled 64x64 images ({pretrain_epochs} epochs), "
          f"then compare it with the same network untrained: reconstructions, a linear probe, fine-tuning on "
          f"{few} and {per_class} labels per class; about {minutes:.0f} minutes on 2 CPU cores. Report: "
          f"{out / 'report.md'}", flush=True)

    # The runs are the quickstart's own sub-folders: running it again replaces them.
    run = dict(progress=progress, log_every=10, num_workers=workers, seed=seed, overwrite=True)
    times = {}
    start = time.perf_counter()
    data = make_dataset(out / "data", per_class, val_per_class, size=64, seed=seed, unlabelled_extra=pool)
    few_dir = _few_label_folder(data.train_dir, out / "data" / f"train_{few}_per_class", few, seed)
    times["data"] = time.perf_counter() - start
    return _compare(out, data, few_dir, few, pretrain_epochs, finetune_epochs, few_epochs, few_seeds, batch_size, run,
                    times, start, seed)


def _few_label_folder(train_dir: Path, dest: Path, per_class: int, seed: int) -> Path:
    """``dest/<class>/``: ``per_class`` images of each class of ``train_dir``, picked at random
    (seeded) and copied, so the few-label runs read an ordinary folder."""

    if dest.exists():
        shutil.rmtree(dest)
    rng = random.Random(seed)
    for cls in sorted(d for d in train_dir.iterdir() if d.is_dir()):
        files = sorted(cls.glob("*.png"))
        (dest / cls.name).mkdir(parents=True)
        for f in sorted(rng.sample(files, per_class)):
            shutil.copyfile(f, dest / cls.name / f.name)
    return dest


def _load_split(folder: Path, size) -> tuple:
    """All images of a labelled folder as normalised tensors: ``([N, 3, H, W], [N] labels)``."""

    dataset = open_images(folder, labelled=True, transform=ImageEvalTransform(size, crop_pct=None))
    samples = [dataset[i] for i in range(len(dataset))]
    if any(s is None for s in samples):
        raise ValueError(f"{folder} holds images that cannot be read")
    return torch.stack([s["image"] for s in samples]), torch.tensor([s["label"] for s in samples])


def _compare(out, data, few_dir, few, pretrain_epochs, finetune_epochs, few_epochs, few_seeds, batch_size, run, times,
             start, seed) -> dict:

    t = time.perf_counter()
    pretrain(data.unlabelled_dir, out / "pretrain", val=data.val_dir, model="custom", config=MAE,
             epochs=pretrain_epochs, **PRETRAIN, **run)
    times["pretrain"] = time.perf_counter() - t

    # The MAE encoder against the same network at its random initialisation: pretrain builds the
    # model right after seeding with `seed`, so doing the same here gives its starting weights.
    t = time.perf_counter()
    mae = load_model(weights=out / "pretrain" / "model", mae=True).eval()
    torch.manual_seed(seed)
    untrained = MaskedAutoencoderHiera(**MAE).eval()
    x_train, y_train = _load_split(data.train_dir, SMALL["input_size"])
    x_val, y_val = _load_split(data.val_dir, SMALL["input_size"])
    subset = per_class_subset(y_train, few, seed)
    probe, recon, shared = {}, {}, {}
    for name, net in (("mae", mae), ("random", untrained)):
        shared[name] = shared_component(net, x_train)
        f_train, f_val = encoder_features(net, x_train), encoder_features(net, x_val)
        probe[name] = {"all": linear_probe(f_train, y_train, f_val, y_val),
                       "few": linear_probe(f_train[subset], y_train[subset], f_val, y_val)}
        recon[name] = heldout_mae_loss(net, x_val, seed=seed)
    # What the MAE reconstructs well and what not: its masked error per class, against the mean's.
    by_class = {name: heldout_mae_loss(mae, x_val[y_val == i], seed=seed)["ratio"]
                for i, name in enumerate(data.classes)}
    pictures = _reconstruction_sheet(mae, untrained, x_val, y_val, out / "reconstructions.png", seed)
    times["probe"] = time.perf_counter() - t

    results = {}
    init = str(out / "pretrain" / "last.pt")
    # The few-label runs have an epoch of a few steps: validate every 5 epochs, not every epoch.
    few_steps = max(1, (len(data.classes) * few) // 16) * 5
    # With a few images per class one run's top-1 swings with its training seed (10-20 points on 80
    # images), so the few-label runs are repeated with other seeds and reported as mean and spread.
    few_names = {side: [f"{side}_few" + (f"_seed{i}" if i else "") for i in range(few_seeds)] for side in ("mae", "scratch")}
    runs = [(few_names[side][i], few_dir, start_from, few_epochs, 16, few_steps, seed + i)
            for i in range(few_seeds) for side, start_from in (("mae", init), ("scratch", None))]
    runs += [("mae_all", data.train_dir, init, finetune_epochs, batch_size, 0, seed),
             ("scratch_all", data.train_dir, None, finetune_epochs, batch_size, 0, seed)]
    for name, train_dir, start_from, epochs, batch, eval_every, run_seed in runs:
        t = time.perf_counter()
        finetune(train_dir, out / name, val=data.val_dir, model="custom", config=SMALL, init=start_from,
                 epochs=epochs, batch_size=batch, lr=FINETUNE_LR, mixup=False,
                 recipe_overrides=MAE_FINETUNE if start_from else LIGHT_FINETUNE,
                 probe_head=start_from is not None, label=name.replace("_", " "), eval_every=eval_every,
                 **dict(run, seed=run_seed))
        times[name] = time.perf_counter() - t
        results[name] = evaluate(data.val_dir, weights=out / name / "model", device=run.get("device", "auto"))
    few_runs = {"MAE": [results[n]["acc1"] for n in few_names["mae"]],
                "no pretraining": [results[n]["acc1"] for n in few_names["scratch"]],
                "seeds": [seed + i for i in range(few_seeds)]}

    chance = 100.0 / len(data.classes)
    comparison = {
        "linear probe, all labels": {"MAE": probe["mae"]["all"], "no pretraining": probe["random"]["all"]},
        f"linear probe, {few}/class": {"MAE": probe["mae"]["few"], "no pretraining": probe["random"]["few"]},
        f"fine-tuned, {few}/class": {k: statistics.mean(few_runs[k]) for k in ("MAE", "no pretraining")},
        "fine-tuned, all labels": {"MAE": results["mae_all"]["acc1"], "no pretraining": results["scratch_all"]["acc1"]},
    }
    plot_comparison(comparison, out / "comparison.png", chance=chance,
                    title=f"MAE-pretrained encoder vs the same network untrained ({len(data.classes)} classes)",
                    runs={f"fine-tuned, {few}/class": {k: few_runs[k] for k in ("MAE", "no pretraining")}})
    plot_curves({f"MAE, {few}/class": out / "mae_few" / "metrics.jsonl",
                 f"no pretraining, {few}/class": out / "scratch_few" / "metrics.jsonl",
                 "MAE, all labels": out / "mae_all" / "metrics.jsonl",
                 "no pretraining, all labels": out / "scratch_all" / "metrics.jsonl"},
                out / "finetune_curves.png", keys=("loss", "acc1"), title="fine-tuning on the synthetic shapes")
    model = load_model(weights=out / "mae_all" / "model")
    samples = [sorted((data.val_dir / c).glob("*.png"))[0] for c in data.classes]
    predictions = predict(model, samples, topk=3, class_names=list(data.classes), progress=False)

    report = {
        "classes": list(data.classes),
        "pool_images": data.num_unlabelled,
        "train_images": data.num_train,
        "few_per_class": few,
        "val_images": data.num_val,
        "chance_acc1": round(chance, 2),
        "pretrain_images_seen": _images_seen(out / "pretrain"),
        "reconstruction": {k: {m: round(v, 4) for m, v in r.items()} for k, r in recon.items()},
        "reconstruction_by_class": {k: round(v, 3) for k, v in by_class.items()},
        "linear_probe": {k: {m: round(v, 2) for m, v in r.items()} for k, r in probe.items()},
        "shared_component": {k: round(v, 3) for k, v in shared.items()},
        "finetune": {k: {m: r[m] for m in ("acc1", "acc5", "loss")} for k, r in results.items()},
        "comparison": comparison,
        "few_runs": few_runs,
        "most_confused": results["mae_all"]["confused"][:3],
        "predictions": [{"image": str(Path(p["path"]).relative_to(out)), "true": Path(p["path"]).parent.name,
                         "top3": [(n, round(s, 3)) for n, s in p["labels"]]} for p in predictions],
        "seconds": {k: round(v, 1) for k, v in times.items()} | {"total": round(time.perf_counter() - start, 1)},
        "settings": {"pretrain_epochs": pretrain_epochs, "pretrain": PRETRAIN, "finetune_epochs": finetune_epochs,
                     "few_epochs": few_epochs, "few_seeds": few_seeds, "batch_size": batch_size, "finetune_lr": FINETUNE_LR,
                     "layer_decay": {"MAE": None, "no pretraining": "recipe's"},
                     "classifier": SMALL, "mae": MAE, "seed": seed},
        "files": {"comparison": "comparison.png", "reconstructions": pictures, "finetune_curves": "finetune_curves.png",
                  "pretrain_curves": "pretrain/curves.png", "model": "mae_all/model"},
    }
    missing = [f for f in report["files"].values() if not (out / f).exists()]
    if missing:
        raise RuntimeError(f"the report would link files that were not written: {missing}")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _images_seen(run_dir: Path) -> int:
    """Images the pretraining went through (steps x batch), from its last logged record."""
    last = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "step" in record:
            last = record
    return int(last.get("step", 0)) * PRETRAIN["batch_size"]


def _reconstruction_sheet(mae, untrained, x_val, y_val, path: Path, seed: int) -> str:
    """One held-out image per class, masked the same way, reconstructed by the untrained and the
    pretrained MAE: rows of original | masked | untrained | pretrained | pretrained + visible."""


    picks = [int(torch.nonzero(y_val == c)[0, 0]) for c in torch.unique(y_val).tolist()]
    x = x_val[picks]
    ours = mae_reconstruction(mae, x, seed=seed)
    before = mae_reconstruction(untrained, x, mask=ours.mask)
    columns = [("original", ours.original), ("masked (60%)", ours.masked), ("untrained", before.reconstruction),
               ("after MAE", ours.reconstruction), ("after MAE + visible", ours.pasted)]
    scale, pad, head = 3, 4, 40
    side = x.shape[-1] * scale
    sheet = Image.new("RGB", (len(columns) * (side + pad) + pad, head + len(picks) * (side + pad) + 44), "white")
    draw = ImageDraw.Draw(sheet)
    font = _font(14)
    for j, (title, pics) in enumerate(columns):
        draw.text((pad + j * (side + pad), 12), title, fill="black", font=font)
        for i in range(len(picks)):
            tile = Image.fromarray(_to_uint8(pics[i])).resize((side, side), Image.NEAREST)
            sheet.paste(tile, (pad + j * (side + pad), head + i * (side + pad)))
    draw.text((pad, sheet.height - 38), f"Held-out images, 60% of 16x16-pixel units hidden. Masked MSE (normalised pixels): "
              f"untrained {before.loss:.2f}, after MAE {ours.loss:.2f}; predicting each patch's mean scores about 1.",
              fill="black", font=_font(12))
    draw.text((pad, sheet.height - 20), "Reconstructions are shown with each patch's true mean and contrast, as MAE's "
              "normalised-pixel targets are.", fill="black", font=_font(12))
    sheet.save(path)
    return path.name


def _verdict(mae: float, other: float, spread: float = 0.0) -> str:
    """Ahead / behind by at least 2 points and by more than ``spread`` (the runs' standard
    deviation, for rows that are a mean of several runs); else even."""
    gap, margin = mae - other, max(2.0, spread)
    if abs(gap) < margin:
        return "even" if margin == 2.0 else "even within the runs' spread"
    return "MAE ahead" if gap > 0 else "MAE behind"


def _spread(r: dict, row: str) -> float:
    """The run-to-run spread of a comparison row: the larger standard deviation of its two sides
    over the few-label runs' seeds (0 for the rows of one run)."""
    runs = r.get("few_runs") or {}
    if not row.startswith("fine-tuned, ") or row == "fine-tuned, all labels" or len(runs.get("MAE", [])) < 2:
        return 0.0
    return max(statistics.stdev(runs["MAE"]), statistics.stdev(runs["no pretraining"]))


def _row_verdict(r: dict, row: str) -> str:
    pair = r["comparison"][row]
    return _verdict(pair["MAE"], pair["no pretraining"], _spread(r, row))


def _markdown(r: dict) -> str:
    c, chance, few = r["comparison"], r["chance_acc1"], r["few_per_class"]
    rec = r["reconstruction"]
    lines = [
        "# Hiera quickstart: what MAE pretraining buys", "",
        f"{len(r['classes'])} classes of synthetic shapes ({', '.join(r['classes'])}); colours carry no class "
        f"information. A small Hiera was MAE-pretrained on {r['pool_images']} unlabelled images "
        f"({r['pretrain_images_seen']:,} reconstructed in all; its position embeddings start as sine-cosine of the "
        f"position, as MAE's do), then compared with the same network untrained. Classifiers train on "
        f"{r['train_images']} labelled images ({few} per class for the few-label rows): from the MAE trunk the head "
        f"is first fitted by a linear probe, then everything is fine-tuned (LP-FT) without layer-wise lr decay; from "
        f"scratch the network starts from Hiera's own initialisation with a fresh head and the recipe's layer decay "
        f"(each side's best of the settings tried: `benchmarks/records/2026-12-01-cpu-quickstart-finetune-recipes.md`, "
        f"`benchmarks/records/2026-12-01-cpu-quickstart-pretraining.md`). Everything is measured on "
        f"{r['val_images']} held-out images. Chance is {chance:.1f}%.", "",
        "![comparison](comparison.png)", "",
        "| top-1 on held-out images | MAE-pretrained | no pretraining | |", "|---|---|---|---|",
    ]
    for name, pair in c.items():
        lines.append(f"| {name} | {pair['MAE']:.1f}% | {pair['no pretraining']:.1f}% | {_row_verdict(r, name)} |")
    runs = r.get("few_runs")
    if runs and len(runs["MAE"]) > 1:
        each = {k: ", ".join(f"{v:.1f}" for v in runs[k]) for k in ("MAE", "no pretraining")}
        lines += ["", f"Fine-tuned with {few} labels per class: the mean of {len(runs['MAE'])} runs on each side "
                      f"(training seeds {', '.join(map(str, runs['seeds']))}): MAE {each['MAE']}; no pretraining "
                      f"{each['no pretraining']}. With {few * len(r['classes'])} training images one run's top-1 moves by "
                      "many points with its seed: a single run would say little."]
    lines += [
        "", "## Reconstructions", "",
        f"Masked-patch error on held-out images (normalised pixels; predicting each patch's mean scores "
        f"{rec['mae']['baseline']:.2f}): after MAE **{rec['mae']['loss']:.3f}**, untrained {rec['random']['loss']:.3f}.", "",
        f"![reconstructions]({r['files']['reconstructions']})", "",
        "## What the numbers mean", "",
        *_meaning(r), "",
        "## Details", "",
        f"Fine-tuning curves: ![fine-tuning curves]({r['files']['finetune_curves']})", "",
        f"Pretraining curves: `{r['files']['pretrain_curves']}`; reconstructions during pretraining: "
        "`pretrain/reconstructions/`; the fine-tuned model: `mae_all/model` (`hiera predict --weights "
        "<this folder>/mae_all/model image.png`).", "",
        f"Time: {r['seconds']['total']:.0f} s (data {r['seconds']['data']:.0f}, pretraining {r['seconds']['pretrain']:.0f}, "
        f"probes {r['seconds']['probe']:.0f}, fine-tuning " + ", ".join(
            f"{k.replace('_', ' ')} {v:.0f}" for k, v in r["seconds"].items() if k.startswith(("mae_", "scratch_"))) + ").", "",
        "### Predictions of the MAE-pretrained model fine-tuned on all labels", "",
        "| image | true | top-3 |", "|---|---|---|",
    ]
    for p in r["predictions"]:
        lines.append(f"| {p['image']} | {p['true']} | " + ", ".join(f"{n} {s:.2f}" for n, s in p["top3"]) + " |")
    if r["most_confused"]:
        lines += ["", "Most confused: " + "; ".join(f"{m['true']} -> {m['predicted']} ({m['count']})"
                                                    for m in r["most_confused"])]
    return "\n".join(lines) + "\n"


def _by_class(ratios: dict) -> str:
    """The reconstruction per class, in words: single shapes against periodic patterns."""
    shapes = {k: v for k, v in ratios.items() if k not in PERIODIC}
    periodic = {k: v for k, v in ratios.items() if k in PERIODIC}
    listed = ", ".join(f"{k.replace('_', ' ')} {v:.2f}" for k, v in sorted(ratios.items(), key=lambda kv: kv[1]))
    text = f"its masked error per class, as a fraction of the mean's, is {listed}."
    if not shapes or not periodic:
        return text
    a, b = sum(shapes.values()) / len(shapes), sum(periodic.values()) / len(periodic)
    if a < b - 0.1:
        return (text + f" It places the single shapes' edges in the hidden units ({a:.2f} on average) far better than it "
                f"continues the periodic patterns ({b:.2f}), which come back close to their mean colour: continuing "
                "stripes or rings into a hidden 16x16 unit needs their exact period and phase, which takes more "
                "pretraining than this run had.")
    if b < a - 0.1:
        return text + f" It continues the periodic patterns ({b:.2f} on average) better than it places single shapes ({a:.2f})."
    return text + f" It continues the periodic patterns ({b:.2f} on average) about as well as it places single shapes ({a:.2f})."


def _meaning(r: dict) -> list:
    """The paragraph under the numbers, written from what this run measured."""
    c, few, rec = r["comparison"], r["few_per_class"], r["reconstruction"]
    probe = c["linear probe, all labels"]
    ft_few, ft_all = c[f"fine-tuned, {few}/class"], c["fine-tuned, all labels"]
    out = []
    learned = rec["mae"]["loss"] < 0.8 * rec["mae"]["baseline"]
    out.append(
        f"**Reconstruction.** The pretrained MAE {'fills' if learned else 'does not fill'} the hidden patches better "
        f"than their mean colour ({rec['mae']['loss']:.2f} against {rec['mae']['baseline']:.2f})"
        + (": " + _by_class(r["reconstruction_by_class"]) if learned else ": the pretraining was too short to learn it."))
    verdict = _verdict(probe["MAE"], probe["no pretraining"])
    out.append("")
    out.append(
        f"**Linear probe.** Frozen, the MAE encoder's features give {probe['MAE']:.1f}% against "
        f"{probe['no pretraining']:.1f}% for the same encoder untrained ({verdict}): "
        + ("pretraining without a single label taught the encoder features that separate the classes."
           if verdict == "MAE ahead" else "at this budget the features are not yet better than random ones."))
    out.append("")
    rows = ((f"{few} labels per class", f"fine-tuned, {few}/class", ft_few), ("all labels", "fine-tuned, all labels", ft_all))
    said = []
    for name, row, pair in rows:
        verdict = _row_verdict(r, row)
        word = {"MAE ahead": "ahead", "MAE behind": "behind"}.get(verdict, "level" + verdict[4:])
        spread = _spread(r, row)
        mean = f", the mean of {len(r['few_runs']['MAE'])} runs" if spread else ""
        said.append((verdict, f"with {name} it is {word} ({pair['MAE']:.1f}% against {pair['no pretraining']:.1f}%{mean})"))
    out.append("**Fine-tuning.** From the MAE trunk, " + "; ".join(text for _, text in said) + ".")
    if any(v != "MAE ahead" for v, _ in said):
        share = r["shared_component"]
        few_probe = c[f"linear probe, {few}/class"]
        settings = r["settings"]
        longer = _estimate(r["pool_images"], LONGER_EPOCHS, r["train_images"],
                           few * len(r["classes"]) * settings.get("few_seeds", 1), settings["finetune_epochs"],
                           settings["few_epochs"]) / 60
        out[-1] += (
            f" The frozen MAE features with {few} labels per class give {few_probe['MAE']:.1f}% against "
            f"{few_probe['no pretraining']:.1f}% (the probe above), but fine-tuning does not turn that into a clear "
            "lead: the classifier's head reads the last stage, whose pooled features after this pretraining are "
            f"nearly one vector shared by every image (its length is {share['mae']:.0%} of theirs; "
            f"{share['random']:.0%} for the untrained encoder). The LayerNorm before the head normalises each image, "
            f"not each feature, so it cannot remove that shared part, and {few} images per class are too few to train "
            "it away, while a network this small trained from scratch learns these shapes quickly from labels. That "
            f"is the budget, not a fault: this run reconstructed {r['pretrain_images_seen']:,} images. The same "
            "comparison at scale (`benchmarks/mae_scale.py`, H200, 2026-11-30, this model with its official init, "
            "this data, a fresh head) measured fine-tuning from MAE behind after 0.4 M reconstructed images (48% "
            "against 65% with 10 labels per class), ahead after 1.3 M (80% against 65%) and far ahead after 3 M (94% "
            "against 65%; all labels 99.8% against 96.8%), while its linear probe rose from 65% (untrained) to 88%, "
            f"96% and 99%. Pretrain longer (`hiera quickstart --pretrain-epochs {LONGER_EPOCHS}`, "
            f"{LONGER_EPOCHS * r['pool_images'] / 1e6:.1f} M images, about {longer:.0f} minutes on 2 cores) to see "
            "more of it here.")
    return out
