"""The training engine shared by MAE pretraining and fine-tuning: plain PyTorch.

One process or many through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU), bf16/fp16 autocast
(a GradScaler for fp16), gradient accumulation, clipping, optional ``torch.compile`` and gradient
checkpointing, an EMA of the weights, and nothing lost: checkpoints are written atomically every
``save_every`` steps and at the end, with everything needed to continue the run exactly (model,
optimizer, schedule, scaler, EMA, every process's random state, the step; the data position
follows from the step, see :mod:`hiera.data`).

What is task-specific (the loss, the evaluation, pictures) lives in a small task object:
:class:`MAETask` and :class:`ClassifyTask`.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader

from .data import StepSampler, collate


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class RunConfig:
    """How to run (the recipe's numbers live in :mod:`hiera.recipes`)."""

    out_dir: str
    total_steps: int
    batch_size: int  # samples per optimizer step, over all processes
    accum: int = 1  # micro-batches per process per step
    precision: str = "fp32"  # fp32 | bf16 | fp16
    clip_grad: Optional[float] = None
    compile: Union[bool, str] = False  # True, or a torch.compile backend name
    grad_checkpointing: bool = False
    seed: int = 0
    save_every: int = 0  # steps between checkpoints (0: only at epoch ends and the end)
    eval_every: int = 0  # steps between evaluations (0: at epoch ends)
    log_every: int = 10
    num_workers: int = 0
    device: str = "auto"
    ema_decay: Optional[float] = None
    progress: bool = True
    extra: Dict = field(default_factory=dict)  # recorded with the run (recipe, data, ...)


# ---------------------------------------------------------------------------------- processes
def setup_distributed(device: str = "auto"):
    """(rank, world size, device) from ``torchrun``'s environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    else:
        dev = torch.device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return rank, world, dev


def _all_reduce_mean(value: torch.Tensor, world: int) -> torch.Tensor:
    if world > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= world
    return value


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)  # torch.compile
    return getattr(model, "module", model)  # DDP


# ---------------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: Path) -> None:
    """Write to a temporary file in the same folder, flush it to disk, then rename over ``path``:
    a crash leaves either the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_run_checkpoint(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# ---------------------------------------------------------------------------------- the loop
class Trainer:
    """Runs ``task`` on ``model`` for ``cfg.total_steps`` optimizer steps.

    Args:
        model: a Hiera model (built, weights loaded).
        task: :class:`MAETask` or :class:`ClassifyTask`.
        train_set, val_set: :class:`hiera.data.ImageFiles` (val optional).
        make_optimizer: ``model -> optimizer`` (param groups may carry ``lr_scale``).
        lr_at: ``step -> learning rate`` before ``lr_scale`` (per-step warmup + cosine).
    """

    def __init__(self, model: nn.Module, task, train_set, val_set, make_optimizer: Callable,
                 lr_at: Callable[[int], float], cfg: RunConfig):
        self.cfg, self.task, self.lr_at = cfg, task, lr_at
        self.rank, self.world, self.device = setup_distributed(cfg.device)
        self.is_main = self.rank == 0
        self.out = Path(cfg.out_dir)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)
        np.random.seed((cfg.seed + self.rank) % 2**32)

        if cfg.precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, got {cfg.precision!r}")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None

        model.to(self.device)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.model = model
        self.optimizer = make_optimizer(model)
        self.ema = None
        if cfg.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(model, decay=cfg.ema_decay)
        self.net = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if cfg.compile:
            self.net = torch.compile(self.net, **({"backend": cfg.compile} if isinstance(cfg.compile, str) else {}))

        self.train_set, self.val_set = train_set, val_set
        self.steps_per_epoch = len(train_set) // cfg.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(train_set)} training samples are fewer than one batch of {cfg.batch_size}")
        self.step = 0
        self.last_eval: dict = {}
        self.metrics_path = self.out / "metrics.jsonl"
        self.last_path = self.out / "last.pt"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        model = _unwrap(self.model)
        rng = _rng_state()
        if self.world > 1:  # every process's random state, so each continues where it stopped
            states = [None] * self.world
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        return {
            "model": model.state_dict(),
            "config": dict(getattr(model, "config", {})),
            "class": type(model).__name__,
            "task": self.task.name,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.module.state_dict() if self.ema else None,
            "rng": states,
            "step": self.step,
            "world": self.world,
            "run": {k: v for k, v in asdict(self.cfg).items() if k != "extra"},
            "extra": self.cfg.extra,
        }

    def save(self, path: Optional[Path] = None) -> Path:
        state = self.state_dict()  # collective: every process takes part
        path = path or self.last_path
        if self.is_main:
            atomic_save(state, path)
        if self.world > 1:
            dist.barrier()
        return path

    def resume(self, path: Optional[Path] = None) -> int:
        """Continue from ``path`` (default ``out_dir/last.pt``); returns the step reached."""
        path = Path(path or self.last_path)
        if not path.exists():
            raise FileNotFoundError(f"nothing to resume: {path} does not exist")
        state = load_run_checkpoint(path)
        if state.get("task") != self.task.name:
            raise ValueError(f"{path} is a {state.get('task')} run, not {self.task.name}")
        if state["run"]["batch_size"] != self.cfg.batch_size:
            raise ValueError(
                f"{path} was trained with batch size {state['run']['batch_size']}; resume with the same "
                f"batch size (not {self.cfg.batch_size}) so the data order continues"
            )
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
        rng = state["rng"]
        _set_rng_state(rng[self.rank] if len(rng) == self.world else rng[0])
        self.step = int(state["step"])
        if self.is_main and self.metrics_path.exists():  # forget what the interrupted run logged later
            kept = [line for line in self.metrics_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= self.step]
            self.metrics_path.write_text("".join(line + "\n" for line in kept))
        return self.step

    # ------------------------------------------------------------------ logging
    def log(self, record: dict) -> None:
        if self.is_main:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ loop
    def _loader(self, dataset, start_step: int, total_steps: int, batch_size: int, shuffle=True, accum=1):
        sampler = StepSampler(len(dataset), batch_size, seed=self.cfg.seed, rank=self.rank, world=self.world,
                              accum=accum, start_step=start_step, total_steps=total_steps, shuffle=shuffle)
        # The loader gets its own generator: creating its iterator must not draw from the global
        # random state, which a resumed run restores exactly.
        return DataLoader(dataset, batch_sampler=sampler, num_workers=self.cfg.num_workers, collate_fn=collate,
                          generator=torch.Generator().manual_seed(self.cfg.seed),
                          persistent_workers=False, pin_memory=self.device.type == "cuda")

    def _set_lr(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def fit(self) -> dict:
        cfg = self.cfg
        loader = self._loader(self.train_set, self.step, cfg.total_steps, cfg.batch_size, accum=cfg.accum)
        batches = iter(loader)
        bar = None
        if cfg.progress and self.is_main:
            from tqdm import tqdm

            bar = tqdm(total=cfg.total_steps, initial=self.step, desc=self.task.name, dynamic_ncols=True)
        self.net.train()
        bad_total, last = 0, {}
        tick, seen = time.perf_counter(), 0
        while self.step < cfg.total_steps:
            lr = self._set_lr(self.step)
            loss_sum = torch.zeros((), device=self.device)
            for micro in range(cfg.accum):
                batch = next(batches)
                bad_total += batch["n_bad"]
                if batch["n"] == 0:
                    raise RuntimeError(
                        f"every file of a batch was unreadable ({batch['n_bad']} in a row); check the data"
                    )
                batch = {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                         for k, v in batch.items()}
                sync = micro == cfg.accum - 1 or self.world == 1
                ctx = self.net.no_sync() if (not sync and hasattr(self.net, "no_sync")) else _null()
                with ctx:
                    with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                        enabled=self.autocast_dtype is not None):
                        loss = self.task.loss(self.net, batch)
                    scaled = loss / cfg.accum
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.detach()
                seen += batch["n"]
            loss_mean = _all_reduce_mean(loss_sum / cfg.accum, self.world)
            if not torch.isfinite(loss_mean):
                raise TrainingDiverged(
                    f"loss is {loss_mean.item()} at step {self.step}: training stopped. The last good "
                    f"checkpoint ({self.last_path}) is intact; resume from it with a lower learning rate, "
                    "gradient clipping (--clip-grad) or bf16 instead of fp16"
                )
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema:
                self.ema.update(self.model, step=self.step)
            self.step += 1

            epoch = self.step / self.steps_per_epoch
            last = {"step": self.step, "epoch": round(epoch, 4), "split": "train",
                    "loss": round(loss_mean.item(), 6), "lr": lr}
            if bar:
                bar.update(1)
            if self.step % cfg.log_every == 0 or self.step == cfg.total_steps:
                elapsed = time.perf_counter() - tick
                last["samples_per_s"] = round(seen * self.world / max(elapsed, 1e-9), 2)
                last["unreadable"] = bad_total
                tick, seen = time.perf_counter(), 0
                self.log(last)
                if bar:
                    bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{lr:.2e}", ips=last["samples_per_s"])
            end_of_epoch = self.step % self.steps_per_epoch == 0
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or (not cfg.eval_every and end_of_epoch) \
                    or self.step == cfg.total_steps:
                self.evaluate()
            if (cfg.save_every and self.step % cfg.save_every == 0) or end_of_epoch or self.step == cfg.total_steps:
                self.save()
                if self.is_main:
                    self.task.on_checkpoint(self)
        if bar:
            bar.close()
        if bad_total and self.is_main:
            print(f"skipped {bad_total} unreadable files")
        return last

    @torch.no_grad()
    def evaluate(self) -> dict:
        if self.val_set is None:
            return {}
        model = self.ema.module if self.ema else self.model
        was_training = model.training
        model.eval()
        result = self.task.evaluate(self, model)
        model.train(was_training)
        self.last_eval = result
        if result:
            self.log({"step": self.step, "epoch": round(self.step / self.steps_per_epoch, 4), "split": "val", **result})
        return result

    def val_batches(self, batch_size: int):
        """The validation set in order, sharded over processes (the last partial batch included)."""
        n = len(self.val_set)
        idx = list(range(self.rank, n, self.world))
        for start in range(0, len(idx), batch_size):
            batch = collate([self.val_set[(0, i)] for i in idx[start:start + batch_size]])
            if batch["n"]:
                yield {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _sum_over_processes(values: List[float], device, world: int) -> List[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(t)
    return t.tolist()


# ---------------------------------------------------------------------------------- tasks
class MAETask:
    """MAE pretraining: the model's own normalised-pixel loss on the masked units; the mask comes
    with each sample (seeded per sample, see :mod:`hiera.data`)."""

    name = "pretrain"

    def __init__(self, viz_batch: int = 4):
        self.viz_batch = viz_batch

    def loss(self, net, batch) -> torch.Tensor:
        return net(batch["image"], mask=batch["mask"])[0]

    def evaluate(self, trainer: Trainer, model) -> dict:
        total, count = 0.0, 0
        for batch in trainer.val_batches(32):
            with torch.autocast(trainer.device.type, dtype=trainer.autocast_dtype,
                                enabled=trainer.autocast_dtype is not None):
                loss = model(batch["image"], mask=batch["mask"])[0]
            total += loss.item() * batch["n"]
            count += batch["n"]
        total, count = _sum_over_processes([total, count], trainer.device, trainer.world)
        return {"loss": round(total / max(count, 1), 6)} if count else {}

    def on_checkpoint(self, trainer: Trainer) -> None:
        """A reconstruction grid of a fixed validation batch (the same images and masks each time)."""
        source = trainer.val_set or trainer.train_set
        picks = range(0, len(source), max(1, len(source) // self.viz_batch))[: self.viz_batch]  # spread out
        samples = [s for s in (source[(0, i)] for i in picks) if s is not None]
        if not samples:
            return
        from PIL import Image

        from .viz import mae_reconstruction, render_grid

        batch = collate(samples)
        model = _unwrap(trainer.model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            result = mae_reconstruction(model, batch["image"].to(trainer.device), mask=batch["mask"].to(trainer.device))
        model.train(was_training)
        frames = 4 if result.is_video else None  # 4 of the 8 reconstructed frames keep a video sheet readable
        rows = [render_grid(result, i, frames=frames) for i in range(len(samples))]
        sheet = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
        y = 0
        for r in rows:
            sheet.paste(r, (0, y))
            y += r.height
        out = trainer.out / "reconstructions"
        out.mkdir(exist_ok=True)
        sheet.save(out / f"step_{trainer.step:07d}.png")


class ClassifyTask:
    """Supervised classification with optional mixup/cutmix and label smoothing (timm's)."""

    name = "finetune"

    def __init__(self, num_classes: int, mixup_args: Optional[dict] = None, label_smoothing: float = 0.0):
        from timm.data import Mixup
        from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

        self.num_classes = num_classes
        self.mixup = None
        if mixup_args and (mixup_args.get("mixup_alpha", 0) > 0 or mixup_args.get("cutmix_alpha", 0) > 0):
            self.mixup = Mixup(**mixup_args)  # applies the label smoothing itself
            self.criterion = SoftTargetCrossEntropy()
        elif label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=label_smoothing)
        else:
            self.criterion = nn.CrossEntropyLoss()

    def loss(self, net, batch) -> torch.Tensor:
        x, y = batch["image"], batch["label"]
        if self.mixup is not None:
            if x.shape[0] % 2:  # timm's batch-mode mixup pairs samples: needs an even batch
                x, y = x[:-1], y[:-1]
            if x.ndim == 5:
                # Clips [B, C, T, H, W]: timm's cutmix slices dims 2 and 3 as H and W, so fold time
                # into channels; the box then covers the same pixels in every frame (one cutmix per clip).
                folded, y = self.mixup(x.flatten(1, 2), y)
                x = folded.view_as(x)
            else:
                x, y = self.mixup(x, y)
        return self.criterion(net(x, return_logits=True).float(), y)

    def evaluate(self, trainer: Trainer, model) -> dict:
        stats = evaluate_classifier(model, trainer.val_batches(64), self.num_classes, trainer.device, trainer.world,
                                    autocast_dtype=trainer.autocast_dtype)
        return {k: stats[k] for k in ("loss", "acc1", "acc5")}

    def on_checkpoint(self, trainer: Trainer) -> None:
        pass


@torch.no_grad()
def evaluate_classifier(model, batches, num_classes: int, device, world: int = 1, autocast_dtype=None) -> dict:
    """Top-1 / top-5 accuracy, loss and the confusion matrix ``[true, predicted]`` over ``batches``."""
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    top5 = torch.zeros((), dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in batches:
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(batch["image"], return_logits=True).float()
        y = batch["label"]
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").double()
        k = min(5, num_classes)
        top5 += (logits.topk(k, dim=1).indices == y[:, None]).any(dim=1).sum()
        confusion.index_put_((y, logits.argmax(dim=1)), torch.ones_like(y, dtype=torch.float64), accumulate=True)
    if world > 1:
        for t in (confusion, top5, loss_sum):
            dist.all_reduce(t)
    n = confusion.sum().item()
    if n == 0:
        return {"loss": math.nan, "acc1": math.nan, "acc5": math.nan, "n": 0, "confusion": confusion.cpu()}
    return {
        "loss": round(loss_sum.item() / n, 6),
        "acc1": round(100 * confusion.diag().sum().item() / n, 3),
        "acc5": round(100 * top5.item() / n, 3),
        "n": int(n),
        "confusion": confusion.cpu(),
    }
