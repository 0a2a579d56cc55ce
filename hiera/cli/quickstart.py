"""``hiera quickstart``: the whole recipe offline in minutes (:mod:`hiera.train.quickstart`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import guard, set_threads

DESCRIPTION = """The quickstart generates shapes whose classes differ in structure, not colour: a pool of
unlabelled images, a labelled training set and held-out images. It MAE-pretrains a small Hiera on
the unlabelled pool, then compares the MAE encoder against the same network without pretraining:
reconstructions of held-out images, a linear probe of the frozen encoder, and fine-tuning with
few labels and with all labels. Everything runs through the package's own commands (pretrain,
finetune, evaluate, predict) and ends in a report with pictures.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "quickstart", help="MAE-pretrain, probe, fine-tune and compare with no pretraining, offline in minutes",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  hiera quickstart --out quickstart/    # then open quickstart/report.md\n"
               "  hiera quickstart --pretrain-epochs 120   # longer pretraining, ~1 M images (it says its time first)")
    p.add_argument("--out", "-o", default="quickstart",
                   help="folder for the data, runs and report (running again replaces the runs in it)")
    p.add_argument("--pool", type=int, default=8000, help="unlabelled images to pretrain on (default 8000)")
    p.add_argument("--per-class", type=int, default=200, help="labelled training images per class (default 200)")
    p.add_argument("--few", type=int, default=10, help="labels per class of the few-label runs (default 10)")
    p.add_argument("--pretrain-epochs", type=int, default=20, help="MAE epochs over the pool (default 20)")
    p.add_argument("--finetune-epochs", type=int, default=10, help="fine-tuning epochs with all labels (default 10)")
    p.add_argument("--few-epochs", type=int, default=40, help="fine-tuning epochs with few labels (default 40)")
    p.add_argument("--few-seeds", type=int, default=3,
                   help="few-label runs per side, each with its own training seed, reported as mean and spread (default 3)")
    p.add_argument("--workers", type=int, default=1, help="data-loading processes per run (default 1)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for PyTorch (default: its own choice; give 1 when another job holds a core)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data, the weights and the masks (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_run)


def _run(args) -> int:
    # The library is loaded when the command runs: `hiera --help` and the other commands start without it.
    from ..train.engine import RunInterrupted
    from ..train.quickstart import quickstart

    def go() -> int:
        set_threads(args)
        try:
            report = quickstart(args.out, per_class=args.per_class, pool=args.pool, few=args.few,
                                pretrain_epochs=args.pretrain_epochs, finetune_epochs=args.finetune_epochs,
                                few_epochs=args.few_epochs, few_seeds=args.few_seeds, workers=args.workers, seed=args.seed,
                                progress=not args.no_progress)
        except KeyboardInterrupt:  # (a run's own message would offer --resume, which quickstart has not)
            raise RunInterrupted(f"interrupted; {args.out} holds what was done so far, and running "
                                 "`hiera quickstart` again starts over") from None
        c = report["comparison"]
        print("top-1 on held-out images, MAE vs no pretraining (chance "
              f"{report['chance_acc1']:.1f}%): " + "; ".join(
                  f"{k} {v['MAE']:.1f}% vs {v['no pretraining']:.1f}%" for k, v in c.items())
              + f"; {report['seconds']['total']:.0f} s. Report: {Path(args.out) / 'report.md'}")
        return 0 if report["finetune"]["mae_all"]["acc1"] > report["chance_acc1"] else 1
    return guard("quickstart", go)
