"""``hiera pretrain``, ``hiera finetune`` and ``hiera evaluate``: the paper's recipes on your images
or videos (see :mod:`hiera.data.video` for the video layouts).

Each command is a thin layer over :func:`pretrain`, :func:`finetune` and :func:`evaluate`, which
tests and notebooks call directly. Several processes: ``torchrun --nproc_per_node N -m hiera.cli
pretrain ...`` (or ``torchrun ... $(which hiera) pretrain ...``).

Images and videos take one path: what differs (recipe, data, transforms, evaluation protocol,
the options each takes) is a :class:`hiera.train.modality.Modality`, chosen once per run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from torch.utils.data import DataLoader

from ..data.images import check_list_source, check_readable, collate, open_images, relabel
from ..data.labels import model_class_names
from ..data.transforms import ImageEvalTransform
from ..devices import resolve_device
from ..formats.read import read_any
from ..hieradet import HieraDet
from ..model import mask_ratio_value
from ..weights import load_weights, zoo_name_for
from ..zoo import MODELS, create_model, load_model, model_class, read_weights, resolve_checkpoint
from .engine import (
    ClassifyTask,
    MAETask,
    RunConfig,
    RunFolder,
    RunInterrupted,
    Trainer,
    _unwrap,
    checkpoint_step,
    describe_checkpoint,
    evaluate_classifier,
)
from .modality import for_model, for_run, positive, whole
from .plots import plot_curves
from .probe import fit_head
from .recipes import adamw, build_optimizer, lr_schedule


# ---------------------------------------------------------------------------------- models
def _custom_class(config: dict, mae: bool) -> type:
    """The class a custom ``--config`` builds (see :func:`hiera.zoo.model_class`: a HieraDet for SAM 2's
    trunk arguments, else a Hiera; a config mixing the two is refused)."""
    try:
        return model_class(config, mae=mae)
    except ValueError as e:
        raise ValueError(f"--config: {e}") from None


def _build(name: str, mae: bool, overrides: dict):
    """A zoo model (``hiera_tiny_224``; ``mae_`` added or removed to fit) with ``overrides``, or a
    custom one when ``name`` is ``custom`` (``overrides`` then is the whole config: a HieraDet for
    SAM 2's trunk arguments, else a Hiera)."""

    try:
        if name == "custom":
            return _custom_class(overrides, mae)(**overrides)
        return create_model(zoo_name_for(name.split(".", 1)[0], mae), **overrides)
    except TypeError as e:  # an unknown or mistyped --config key
        raise ValueError(f"--config does not fit the model: {e}") from None


def _init_weights(model, init: Optional[str], strict=None):
    """Load ``init`` (a weights path in any layout, or a zoo ``name.checkpoint``) into ``model``."""
    if not init:
        return None

    name, _, ckpt = init.partition(".")
    if name in MODELS and not Path(init).exists():
        state = read_weights(resolve_checkpoint(MODELS[name], ckpt or None))
    else:
        state = read_any(init)[0]
    _check_family(state, model, init)
    return load_weights(model, state, strict=strict, source=init)


def _trunk_family(state) -> Optional[str]:
    """Which trunk a state dict (our layout) holds, by its blocks' MLP keys: SAM 2's HieraDet names
    them ``mlp.layers.0`` / ``mlp.layers.1``, the plain Hiera ``mlp.fc1`` / ``mlp.fc2`` (an MAE
    decoder's blocks, ``decoder_blocks.*``, are not looked at). None when it has no blocks."""
    for key in state:
        if key.startswith("blocks."):
            if ".mlp.layers." in key:
                return "HieraDet"
            if ".mlp.fc1." in key or ".mlp.fc2." in key:
                return "Hiera"
    return None


def _check_family(state, model, init: str) -> None:
    """The two trunks share no block weights: loading one into the other would keep nothing but
    fail (or load) deep inside on the position embeddings, so say what to use instead."""
    held, built = _trunk_family(state), "HieraDet" if isinstance(_unwrap(model), HieraDet) else "Hiera"
    if held is None or held == built:
        return
    if held == "HieraDet":
        raise ValueError(f"--init {init} holds SAM 2's trunk (HieraDet), which does not load into the plain Hiera "
                         "this run builds; use --model sam2_hiera_tiny / small / base_plus / large (the size of "
                         "the checkpoint), or --model custom with its HieraDet config")
    raise ValueError(f"--init {init} holds a plain Hiera, which does not load into the HieraDet (SAM 2 trunk) this "
                     "run builds; use a Hiera --model such as hiera_base_224, or --init HieraDet weights")


def _model_config(config: Optional[dict], model: str, defaults: dict) -> dict:
    """``config`` (``--config``), with the recipe's ``defaults`` for what it leaves out of a zoo
    model (a custom model's config is taken whole)."""
    config = dict(config or {})
    return config if model == "custom" else {**defaults, **config}


def _freeze_trunk(net, recipe):
    """A linear probe: only the head (and the norm before it) trains, with the recipe's mixup,
    layer decay and augmentation off."""
    for pname, p in net.named_parameters():
        p.requires_grad = pname.startswith(("head.", "norm."))
    return dataclasses.replace(recipe, layer_decay=None, mixup=0.0, cutmix=0.0, rand_augment=None, reprob=0.0)


# ---------------------------------------------------------------------------------- the run
def _steps_per_epoch(modality, train_set, data, val_set, val, batch_size: int, classes=None) -> int:
    """Optimizer steps per epoch, once the data are known to be readable; ``classes`` names the
    validation labels by the training classes (fine-tuning)."""
    check_readable(train_set, data)
    if val_set is not None:
        if classes is not None:
            # By name: a validation folder without one class must not shift every later label.
            relabel(val_set, classes, val, f"the training data ({data})")
        check_readable(val_set, val)
    steps = len(train_set) // batch_size
    if steps == 0:
        raise ValueError(f"{len(train_set)} {modality.noun} are fewer than one batch of {batch_size}")
    return steps


def _schedule(recipe, steps_per_epoch: int, batch_size: int, lr: Optional[float]):

    total, warmup = recipe.schedule_steps(steps_per_epoch)
    peak = lr if lr is not None else recipe.lr(batch_size)
    return total, warmup, peak, (lambda step: lr_schedule(step, total, warmup, peak, recipe.min_lr))


def _fit(trainer, report, resume: bool, note: Optional[str] = None) -> dict:
    """Train (continuing the run in the folder when ``resume``); the last training record."""
    if trainer.is_main and report is not None:
        print(f"init: {report}")
    if trainer.is_main and note:
        print(note, flush=True)
    if resume:
        trainer.resume()
    return trainer.fit()


def _finish(trainer, model, out: Path, classes=None, data=None) -> None:
    """Final artefacts on the main process: the model as a Hub-style folder (weights, config, a
    model card saying what it was trained on and how, ``classes.txt``), and the curves."""
    if not trainer.is_main:
        return

    final = _unwrap(model)
    cfg = trainer.cfg
    extra = cfg.extra or {}
    training = {"task": "MAE pretraining" if trainer.task.name == "pretrain" else
                ("linear probe" if extra.get("linear_probe") else "fine-tuning"),
                "steps": trainer.step, "batch size": cfg.batch_size * cfg.accum, "peak lr": extra.get("peak_lr"),
                "warmup steps": extra.get("warmup_steps"), "initial weights": extra.get("init") or "random"}
    if "mask_ratio" in extra:
        training["mask ratio"] = extra["mask_ratio"]
    metrics = {f"held-out {k}": v for k, v in (trainer.last_eval or {}).items()
               if k in ("acc1", "acc5", "loss") and isinstance(v, (int, float))}
    final.save_pretrained(out / "model", classes=classes, data=data or extra.get("data"),
                          training={k: v for k, v in training.items() if v is not None}, metrics=metrics or None)
    keys = ("loss", "lr") if trainer.task.name == "pretrain" else ("loss", "acc1", "lr")
    try:
        plot_curves(out / "metrics.jsonl", out / "curves.png", keys=keys)
    except ValueError:  # e.g. a run too short to have logged a value for every key
        plot_curves(out / "metrics.jsonl", out / "curves.png", keys=("loss",))


# ---------------------------------------------------------------------------------- checks
def _check_run(batch_size, accum, lr, epochs, run: dict) -> None:
    """Every number a run takes, checked before any work: a bad one fails at once with what is
    expected instead of being ignored (a negative --save-every), misread or failing hours later."""
    whole(batch_size, "--batch-size", 1)
    whole(accum, "--accum", 1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if batch_size % (world * accum):
        raise ValueError(f"--batch-size {batch_size} must be divisible by processes x --accum = {world} x {accum}")
    if lr is not None:
        positive(lr, "--lr", "learning rate")
    if epochs is not None:
        positive(epochs, "--epochs", "number")
    for key, flag, low in (("save_every", "--save-every", 0), ("eval_every", "--eval-every", 0),
                           ("log_every", "--log-every", 1), ("num_workers", "--workers", 0)):
        if key in run:
            whole(run[key], flag, low)
    if run.get("clip_grad") is not None:
        positive(run["clip_grad"], "--clip-grad", "gradient norm")
    if run.get("precision", "fp32") not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"--precision must be fp32, bf16 or fp16, got {run['precision']!r}")

    resolve_device(run.get("device", "auto"))


@contextlib.contextmanager
def _run_folder(out, resume: bool, overwrite: bool):
    """The run folder ``out``, held for the run (see :class:`hiera.train.engine.RunFolder`); Ctrl-C
    becomes :class:`RunInterrupted` saying where the last checkpoint is."""
    try:
        with RunFolder(out, resume=resume, overwrite=overwrite):
            yield
    except KeyboardInterrupt as e:
        if isinstance(e, RunInterrupted):
            raise
        last = Path(out) / "last.pt"
        raise RunInterrupted(f"interrupted; {describe_checkpoint(last)}"
                             + ("; continue with --resume" if checkpoint_step(last) is not None else "")) from None


# ---------------------------------------------------------------------------------- commands
def pretrain(
    data,
    out,
    model: Optional[str] = None,
    epochs: Optional[float] = None,
    batch_size: int = 64,
    accum: int = 1,
    lr: Optional[float] = None,
    mask_ratio: Optional[float] = None,
    init: Optional[str] = None,
    resume: bool = False,
    val=None,
    config: Optional[dict] = None,
    video: Optional[bool] = None,
    num_frames: Optional[int] = None,
    frame_stride: Optional[float] = None,
    repeat_aug: Optional[int] = None,
    overwrite: bool = False,
    **run,
) -> dict:
    """MAE pretraining on an image or video folder (labels, if any, are ignored) with the paper's
    recipe for the model's size, shrunk to ``epochs`` and ``batch_size``. ``init`` continues from
    existing weights; ``resume`` continues an interrupted run in ``out``; ``overwrite`` replaces the
    run already in ``out`` (without either, a folder holding a run is refused; see
    :class:`hiera.train.engine.RunFolder`). ``run``: fields of :class:`hiera.train.engine.RunConfig`
    (precision, clip_grad, compile, save_every, seed, ...). Bad arguments raise ValueError before
    any work; Ctrl-C raises :class:`hiera.train.engine.RunInterrupted` saying where the last checkpoint is.

    Video (``video=True``, a ``*_16x224`` / 3-D custom model, or a folder / list of videos; the
    default model is then ``hiera_base_16x224``): clips of the model's frame count (``num_frames``
    must agree), ``frame_stride`` frames apart at 30 fps (default 4), one random-resized crop and
    flip per clip, Kinetics statistics, mask ratio 0.9 over 1x8x8-token mask units, the
    time-strided normalised-pixel loss of the official video MAE, and ``repeat_aug`` clips per
    decoded video (default: the recipe's, 4 for pretraining [Hiera Tab. 11a]). ``val``: the centre
    clip of each video, as ``hiera mae-viz`` reads it."""
    _check_run(batch_size, accum, lr, epochs, run)
    if mask_ratio is not None:  # the range now, before anything is built; the model then says
        mask_ratio_value(mask_ratio)  # which ratios its input allows (check_mask_ratio)
    modality = for_run(data, model, config, video, num_frames, frame_stride, repeat_aug)
    with _run_folder(out, resume, overwrite):
        model = model or modality.default_model
        recipe = modality.pretrain_recipe(model, epochs, batch_size)
        seed = run.get("seed", 0)
        train_set = modality.open(data, seed)  # the data first: an empty folder fails before a large model is built
        overrides = _model_config(config, model, {"drop_path_rate": recipe.drop_path_rate})
        torch.manual_seed(seed)  # the same initial weights in every process and every rerun
        net = _build(model, mae=True, overrides=overrides)
        ratio = recipe.mask_ratio if mask_ratio is None else mask_ratio
        net.check_mask_ratio(ratio)  # e.g. 0.98 keeps no unit of 49: say so before any data is read
        report = _init_weights(net, init, strict=False)
        val_set = modality.pretrain_data(train_set, val, net, model, recipe, ratio, seed)
        steps_per_epoch = _steps_per_epoch(modality, train_set, data, val_set, val, batch_size)
        total, warmup, peak, lr_at = _schedule(recipe, steps_per_epoch, batch_size, lr)
        cfg = RunConfig(out_dir=str(out), total_steps=total, batch_size=batch_size, accum=accum,
                        extra={"recipe": recipe.to_dict(), "peak_lr": peak, "warmup_steps": warmup,
                               "mask_ratio": ratio, "data": str(data), "init": init,
                               **modality.run_facts(net, recipe)}, **run)
        trainer = Trainer(net, MAETask(), train_set, val_set,
                          lambda m: build_optimizer(m, recipe, batch_size), lr_at, cfg)
        last = _fit(trainer, report, resume)
        _finish(trainer, net, Path(out), data={"pretraining": f"{data} ({len(train_set)} {modality.noun}, "
                                                              "labels unused)"})
        return last


def finetune(
    data,
    out,
    val=None,
    model: Optional[str] = None,
    init: Optional[str] = None,
    epochs: Optional[float] = None,
    batch_size: int = 64,
    accum: int = 1,
    lr: Optional[float] = None,
    linear_probe: bool = False,
    ema: Optional[bool] = None,
    resume: bool = False,
    config: Optional[dict] = None,
    mixup: Optional[bool] = None,
    recipe_overrides: Optional[dict] = None,
    video: Optional[bool] = None,
    num_frames: Optional[int] = None,
    frame_stride: Optional[float] = None,
    repeat_aug: Optional[int] = None,
    overwrite: bool = False,
    probe_head: bool = False,
    **run,
) -> dict:
    """Supervised fine-tuning on a folder with one sub-folder per class (images or videos, or a
    ``path,label`` list), from ``init`` (an MAE checkpoint of ours, an official one such as
    ``mae_hiera_base_224.mae_in1k`` / ``mae_hiera_base_16x224.mae_k400``, or any weights), with
    the paper's fine-tuning recipe for the model's size. ``linear_probe`` freezes the trunk and
    trains the head only (no mixup, no layer decay). ``val`` is labelled by class name against the
    training classes (a class missing from it is fine, one the training data lacks is an error).
    ``resume`` / ``overwrite`` and errors as for :func:`pretrain`.

    Video (as for :func:`pretrain`): random clips with one crop, flip, RandAugment policy and
    erasing box per clip, mixup / cutmix of whole clips, label smoothing, layer decay, drop path
    and head dropout by size, gradient clipping at 5 unless ``clip_grad`` says otherwise; the
    validation during training uses the centre view (``evaluate`` gives the 3x5-view accuracy).

    ``probe_head`` (images): before training, set the fresh head by a linear probe on the
    training images (up to ``PROBE_HEAD_IMAGES`` of them, centre crops): "linear probe, then
    fine-tune", which lets a short fine-tuning of a pretrained trunk adapt the features instead
    of spending its steps finding the head (see :func:`hiera.train.probe.fit_head`)."""

    _check_run(batch_size, accum, lr, epochs, run)
    modality = for_run(data, model, config, video, num_frames, frame_stride, repeat_aug, probe_head=probe_head)
    with _run_folder(out, resume, overwrite):
        model = model or modality.default_model
        recipe = modality.finetune_recipe(model, epochs, batch_size)
        if recipe_overrides:  # e.g. {"rand_augment": None, "reprob": 0.0} for a lighter recipe
            recipe = dataclasses.replace(recipe, **recipe_overrides)
        seed = run.get("seed", 0)
        train_set = modality.open(data, seed, labelled=True)
        classes = train_set.classes
        if not classes:
            raise ValueError(f"{data} has no class sub-folders: fine-tuning needs labelled {modality.noun}")
        size, size_note = modality.recipe_input_size(model, recipe, config)
        overrides = _model_config(dict(config or {}, num_classes=len(classes)), model,
                                  {**modality.finetune_defaults(recipe, linear_probe), **size})
        torch.manual_seed(seed)
        net = _build(model, mae=False, overrides=overrides)
        report = _init_weights(net, init, strict=False)
        if linear_probe:
            recipe = _freeze_trunk(net, recipe)
        val_set = modality.finetune_data(train_set, val, net, model, recipe, seed)
        run = modality.finetune_run(recipe, run)
        steps_per_epoch = _steps_per_epoch(modality, train_set, data, val_set, val, batch_size, classes=classes)
        lr_batch = modality.finetune_lr_batch(recipe, batch_size)
        total, warmup, peak, lr_at = _schedule(recipe, steps_per_epoch, lr_batch, lr)
        use_mixup = (recipe.mixup > 0 or recipe.cutmix > 0) if mixup is None else mixup
        task = ClassifyTask(len(classes), mixup_args=recipe.mixup_args(len(classes)) if use_mixup else None,
                            label_smoothing=recipe.label_smoothing)
        use_ema = recipe.ema if ema is None else ema
        cfg = RunConfig(out_dir=str(out), total_steps=total, batch_size=batch_size, accum=accum,
                        ema_decay=recipe.ema_decay if use_ema else None,
                        extra={"recipe": recipe.to_dict(), "peak_lr": peak, "warmup_steps": warmup,
                               "classes": classes, "data": str(data), "init": init,
                               "linear_probe": linear_probe, **modality.run_facts(net, recipe)}, **run)
        head_note = None
        if probe_head and not resume:  # before the trainer: its EMA copy must start from the fitted head
            head_note = _probe_head(net, data, tuple(net.input_size), recipe.eval_crop_pct, seed,
                                    run.get("device", "auto"))
        notes = "\n".join(n for n in (size_note, head_note) if n) or None

        def make_optimizer(m):
            return build_optimizer(m, recipe, lr_batch) if not linear_probe else adamw(
                [p for p in m.parameters() if p.requires_grad], lr=peak, betas=recipe.betas, weight_decay=0.0)

        trainer = Trainer(net, task, train_set, val_set, make_optimizer, lr_at, cfg)
        last = _fit(trainer, report, resume, note=notes)
        result = trainer.last_eval
        facts = {"training": f"{data} ({len(train_set)} {modality.noun}, {len(classes)} classes)"}
        if val:
            facts["validation"] = f"{val} ({len(val_set)} {modality.noun})"
        _finish(trainer, trainer.ema.module if trainer.ema else net, Path(out), classes=classes, data=facts)
        return {**last, **{f"val_{k}": v for k, v in result.items()}}


PROBE_HEAD_IMAGES = 10000  # enough for a head of a few hundred classes; more costs time and float64 memory


def _probe_head(net, data, size, crop_pct, seed: int, device) -> str:
    """``finetune(probe_head=True)``: fit the head on (a seeded sample of) the training images, on
    the run's device (under torchrun each process fits the same head; DDP then broadcasts rank 0's)."""

    device = resolve_device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    net.to(device)
    dataset = open_images(data, labelled=True, seed=seed, transform=ImageEvalTransform(size, crop_pct=crop_pct))
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:PROBE_HEAD_IMAGES]
    samples = [s for s in (dataset[int(i)] for i in order) if s is not None]
    if not samples:
        raise ValueError(f"--probe-head: no readable image in {data}")
    acc = fit_head(net, torch.stack([s["image"] for s in samples]).to(device),
                   torch.tensor([s["label"] for s in samples]))
    return f"head: then fitted by a linear probe on {len(samples)} training images (top-1 on them {acc:.1f}%)"


def evaluate(data, model: Optional[str] = None, weights=None, batch_size: int = 64, device: str = "auto",
             views: str = "multi", workers: int = 0, classes=None) -> dict:
    """Top-1 / top-5 accuracy, per-class accuracy and the most confused pairs on a folder with one
    sub-folder per class (or a ``path,label`` list).

    Labels are matched to the model's outputs by class name: the model's names come from
    ``classes`` (a list, or a file / folder as ``hiera predict --classes`` reads), else from the
    weights (``classes.txt`` in a model folder, the class list in a training checkpoint). Classes
    missing from the data are fine; a class the model does not know is an error. A model without
    names (a zoo model) is evaluated only where the mapping is unambiguous: integer labels, class
    folders named by output index, or exactly one folder per output taken in sorted order (the
    ImageNet / Kinetics convention); ``"assumed"`` in the result then says which.

    The weights must hold a trained classification head (an MAE checkpoint is refused).

    Video models are evaluated on 3 spatial x 5 temporal views per video (``views="multi"``, the
    protocol of the Kinetics results) with the softmax averaged over the 15 views, or on the centre
    view (``views="single"``). ``batch_size`` counts model inputs (views). ``workers``: DataLoader
    processes that decode. ``"unreadable"`` counts the files that could not be decoded (skipped)."""

    whole(batch_size, "--batch-size", 1)
    whole(workers, "--workers", 0)
    if views not in ("multi", "single"):
        raise ValueError(f"views must be 'multi' or 'single', got {views!r}")
    dev = resolve_device(device)
    if not Path(data).exists():  # before a model is loaded (or downloaded)
        raise ValueError(f"--data {data} does not exist; give a folder with one sub-folder per class, or a list file")
    check_list_source(Path(data))
    net = load_model(model, weights, need_head=True)
    net.to(dev).eval()
    num_classes = net.head.projection.out_features
    names, named_by = model_class_names(weights, classes, num_classes)
    dataset, runner, per_batch, protocol = for_model(net).evaluation(net, data, views, batch_size)
    assumed = None
    if names is not None:
        relabel(dataset, names, data, f"the model ({named_by})")
    else:
        names, assumed = _unnamed_mapping(dataset, data, num_classes)
    check_readable(dataset, data)
    unreadable = 0
    keys = [[(0, i) for i in range(start, min(start + per_batch, len(dataset)))]
            for start in range(0, len(dataset), per_batch)]
    loader = DataLoader(dataset, batch_sampler=keys, num_workers=workers, collate_fn=collate)

    def batches():
        nonlocal unreadable
        for batch in loader:
            unreadable += batch["n_bad"]
            if batch["n"]:
                yield {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

    stats = evaluate_classifier(runner, batches(), num_classes, dev)
    if not stats["n"]:
        raise ValueError(f"none of the {len(dataset)} files in {data} could be read ({unreadable} unreadable)")
    confusion = stats.pop("confusion")
    return {**stats, "views": protocol, "unreadable": unreadable, "classes": names, "assumed": assumed,
            **_per_class(confusion, dataset, names, num_classes)}


def _per_class(confusion: torch.Tensor, dataset, names: List[str], num_classes: int) -> dict:
    """The per-class part of :func:`evaluate`'s result: accuracy of the classes in the data, the
    classes missing from it, the five most confused pairs and the confusion matrix."""
    present = sorted({label for _, label in dataset.items if label >= 0})
    per_class = (confusion.diag() / confusion.sum(1).clamp(min=1) * 100).tolist()
    off = confusion.clone()
    off.fill_diagonal_(0)
    pairs = []
    for flat in off.flatten().argsort(descending=True)[:5].tolist():
        t, p = divmod(flat, off.shape[1])
        if off[t, p] > 0:
            pairs.append({"true": names[t], "predicted": names[p], "count": int(off[t, p])})
    return {"per_class_acc1": {names[i]: per_class[i] for i in present},
            "missing_classes": [names[i] for i in range(num_classes) if i not in set(present)][:1000],
            "confused": pairs, "confusion": confusion.long().tolist()}


def _unnamed_mapping(dataset, data, num_classes: int) -> Tuple[List[str], Optional[str]]:
    """Labels for a model without class names, only where the mapping is unambiguous."""

    indices = [str(i) for i in range(num_classes)]
    found = dataset.classes
    if found is None:  # a list with integer labels: output indices by definition
        relabel(dataset, indices, data, "the model")
        return indices, None
    if all(name.isdigit() for name in found):
        relabel(dataset, indices, data, f"the model (class folders are read as output indices 0-{num_classes - 1})")
        return indices, (f"the model has no class names; the class folders of {data} are read as output indices")
    if len(found) > num_classes:
        raise ValueError(f"{data} has {len(found)} classes, but the model only {num_classes} outputs")
    if len(found) == num_classes:
        names = list(found)
        shown = ", ".join(names[:3]) + (", ..." if num_classes > 3 else "")
        return names, (f"the model has no class names; its {num_classes} outputs are taken to be the {num_classes} "
                       f"classes of {data} in sorted order ({shown})")
    raise ValueError(
        f"the model has {num_classes} outputs but no class names (no classes.txt with its weights), and {data} has "
        f"{len(found)} classes, so which output each of them is cannot be told; give the model's class names in "
        "output order with --classes FILE (one per line)")
