"""``hiera quickstart``: the whole recipe in a few minutes on a laptop CPU, offline.

It generates a small labelled dataset whose classes differ in shape, not colour
(:mod:`hiera.synthetic`), MAE-pretrains a small Hiera on it, fine-tunes that model, fine-tunes
the same architecture from scratch on the same budget, evaluates both on held-out images,
predicts a few of them, and writes a report: accuracies, curves and MAE reconstructions.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

# A small Hiera for 64x64 images: 3 stages (strides 4, 8, 16), 4x4-token mask units, so an
# image has 16 mask units and MAE keeps 6 of them at mask ratio 0.6.
SMALL = dict(input_size=(64, 64), embed_dim=48, num_heads=2, stages=(1, 2, 3), q_pool=2, mask_unit_size=(4, 4),
             mask_unit_attn=(True, False, False))
DECODER = dict(decoder_embed_dim=96, decoder_depth=2, decoder_num_heads=4)
# ImageNet's regularisation (RandAugment's rotations and shears, erasing, mixup) is made for 300
# epochs of 1.28M images; on a few epochs of small shapes it mostly hides the orientation that
# tells the classes apart, so the quickstart fine-tunes with crops and flips only.
# The recipe's lr follows the batch linearly from 8e-4 per 4096 images (1.25e-5 at 64): far too
# little for a dozen epochs. 2e-4 learns within the budget; 1.5e-3 leaves a trunk that fine-tunes
# worse than a random one (measured on this dataset: 29% vs 72% top-1 after fine-tuning).
PRETRAIN_LR = 2e-4
LIGHT_FINETUNE = dict(rand_augment=None, reprob=0.0, crop_scale=(0.5, 1.0), drop_path_rate=0.0)


def quickstart(out="quickstart", per_class: int = 200, val_per_class: int = 50, pretrain_epochs: int = 12,
               finetune_epochs: int = 10, batch_size: int = 64, workers: int = 1, seed: int = 0,
               progress: bool = True) -> dict:
    """Run the demonstration into ``out`` and return the report as a dict (also ``report.json``)."""
    from .plots import plot_curves
    from .predict import predict
    from .resolve import load_model
    from .synthetic import make_dataset
    from .train import evaluate, finetune, pretrain

    from .synthetic import CLASSES

    for name, value, low in (("--per-class", per_class, 1), ("val_per_class", val_per_class, 1),
                             ("--pretrain-epochs", pretrain_epochs, 1), ("--finetune-epochs", finetune_epochs, 1),
                             ("batch_size", batch_size, 1), ("--workers", workers, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    if len(CLASSES) * per_class < batch_size:
        raise ValueError(f"--per-class {per_class} gives {len(CLASSES) * per_class} training images, fewer than one "
                         f"batch of {batch_size}; use --per-class {-(-batch_size // len(CLASSES))} or more")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    # The runs are the quickstart's own sub-folders: running it again replaces them.
    run = dict(progress=progress, log_every=10, num_workers=workers, seed=seed, overwrite=True)
    times = {}
    start = time.perf_counter()
    data = make_dataset(out / "data", per_class, val_per_class, size=64, seed=seed)
    times["data"] = time.perf_counter() - start

    t = time.perf_counter()
    pretrain(data.train_dir, out / "pretrain", model="custom", config=dict(SMALL, **DECODER), epochs=pretrain_epochs,
             batch_size=batch_size, lr=PRETRAIN_LR, **run)
    times["pretrain"] = time.perf_counter() - t

    results = {}
    for name, init in (("finetune", str(out / "pretrain" / "last.pt")), ("scratch", None)):
        t = time.perf_counter()
        finetune(data.train_dir, out / name, val=data.val_dir, model="custom", config=SMALL, init=init,
                 epochs=finetune_epochs, batch_size=batch_size, lr=2e-3, mixup=False,
                 recipe_overrides=LIGHT_FINETUNE, **run)
        times[name] = time.perf_counter() - t
        results[name] = evaluate(data.val_dir, weights=out / name / "model")

    plot_curves({"MAE-pretrained": out / "finetune" / "metrics.jsonl", "from scratch": out / "scratch" / "metrics.jsonl"},
                out / "finetune_curves.png", keys=("loss", "acc1"), title="fine-tuning on the synthetic shapes")
    model = load_model(weights=out / "finetune" / "model")
    samples = [sorted((data.val_dir / c).glob("*.png"))[0] for c in data.classes]
    predictions = predict(model, samples, topk=3, class_names=list(data.classes), progress=False)
    recon = sorted((out / "pretrain" / "reconstructions").glob("*.png"))

    chance = 100.0 / len(data.classes)
    report = {
        "classes": list(data.classes),
        "train_images": len(data.classes) * per_class,
        "val_images": len(data.classes) * val_per_class,
        "chance_acc1": round(chance, 2),
        "mae_pretrained": {k: results["finetune"][k] for k in ("acc1", "acc5", "loss")},
        "from_scratch": {k: results["scratch"][k] for k in ("acc1", "acc5", "loss")},
        "most_confused": results["finetune"]["confused"][:3],
        "predictions": [{"image": str(Path(p["path"]).relative_to(out)), "true": Path(p["path"]).parent.name,
                         "top3": [(n, round(s, 3)) for n, s in p["labels"]]} for p in predictions],
        "seconds": {k: round(v, 1) for k, v in times.items()} | {"total": round(time.perf_counter() - start, 1)},
        "settings": {"pretrain_epochs": pretrain_epochs, "finetune_epochs": finetune_epochs,
                     "batch_size": batch_size, "model": SMALL, "decoder": DECODER},
        "files": {"finetune_curves": "finetune_curves.png", "pretrain_curves": "pretrain/curves.png",
                  "reconstructions": str(recon[-1].relative_to(out)) if recon else None,
                  "model": "finetune/model"},
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(_markdown(report))
    return report


def _markdown(r: dict) -> str:
    lines = [
        "# Hiera quickstart report", "",
        f"{len(r['classes'])} classes of synthetic shapes ({', '.join(r['classes'])}); colours carry no class "
        f"information. {r['train_images']} training and {r['val_images']} held-out images; chance is "
        f"{r['chance_acc1']:.1f}%.", "",
        "| fine-tuned from | top-1 | top-5 | val loss |", "|---|---|---|---|",
        f"| MAE pretraining ({r['settings']['pretrain_epochs']} epochs) | {r['mae_pretrained']['acc1']:.1f}% | "
        f"{r['mae_pretrained']['acc5']:.1f}% | {r['mae_pretrained']['loss']:.3f} |",
        f"| scratch (same fine-tuning budget) | {r['from_scratch']['acc1']:.1f}% | {r['from_scratch']['acc5']:.1f}% | "
        f"{r['from_scratch']['loss']:.3f} |", "",
        f"Time: {r['seconds']['total']:.0f} s (data {r['seconds']['data']:.0f}, pretraining {r['seconds']['pretrain']:.0f}, "
        f"fine-tuning {r['seconds']['finetune']:.0f} + {r['seconds']['scratch']:.0f} from scratch).", "",
        "![fine-tuning curves](finetune_curves.png)", "",
        f"MAE reconstructions (original | masked | reconstruction | reconstruction + visible): "
        f"`{r['files']['reconstructions']}`; pretraining curves: `{r['files']['pretrain_curves']}`.", "",
        "## Predictions of the MAE-pretrained model", "",
        "| image | true | top-3 |", "|---|---|---|",
    ]
    for p in r["predictions"]:
        lines.append(f"| {p['image']} | {p['true']} | " + ", ".join(f"{n} {s:.2f}" for n, s in p["top3"]) + " |")
    if r["most_confused"]:
        lines += ["", "Most confused: " + "; ".join(f"{c['true']} -> {c['predicted']} ({c['count']})"
                                                    for c in r["most_confused"])]
    return "\n".join(lines) + "\n"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="generate data, MAE-pretrain, fine-tune, evaluate and report, offline in minutes",
        description=__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  hiera quickstart --out quickstart/    # then open quickstart/report.md")
    p.add_argument("--out", "-o", default="quickstart",
                   help="folder for the data, runs and report (running again replaces the runs in it)")
    p.add_argument("--per-class", type=int, default=200, help="training images per class")
    p.add_argument("--pretrain-epochs", type=int, default=12)
    p.add_argument("--finetune-epochs", type=int, default=10)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    from .train import _guard

    def go() -> int:
        from .engine import RunInterrupted

        try:
            report = quickstart(args.out, per_class=args.per_class, pretrain_epochs=args.pretrain_epochs,
                                finetune_epochs=args.finetune_epochs, workers=args.workers, seed=args.seed,
                                progress=not args.no_progress)
        except KeyboardInterrupt:  # (a run's own message would offer --resume, which quickstart has not)
            raise RunInterrupted(f"interrupted; {args.out} holds what was done so far, and running "
                                 "`hiera quickstart` again starts over") from None
        print(f"top-1 on held-out images: MAE-pretrained {report['mae_pretrained']['acc1']:.1f}%, "
              f"from scratch {report['from_scratch']['acc1']:.1f}% (chance {report['chance_acc1']:.1f}%); "
              f"{report['seconds']['total']:.0f} s. Report: {Path(args.out) / 'report.md'}")
        return 0 if report["mae_pretrained"]["acc1"] > report["chance_acc1"] else 1
    return _guard("quickstart", go)

