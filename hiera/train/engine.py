"""The training engine shared by MAE pretraining and fine-tuning: plain PyTorch.

One process or many through ``torchrun`` (DDP; gloo on CPU, NCCL on GPU), bf16/fp16 autocast
(a GradScaler for fp16), gradient accumulation, clipping, optional ``torch.compile`` and gradient
checkpointing, an EMA of the weights, and nothing lost: checkpoints are written atomically every
``save_every`` steps and at the end, with everything needed to continue the run exactly (model,
optimizer, schedule, scaler, EMA, every process's random state, the step; the data position
follows from the step, see :mod:`hiera.data`).

What is on disk can be trusted: the loss, gradients and weights are checked before every update
and every save, so a diverging run stops (:class:`TrainingDiverged`) with its last finite
checkpoint in place; a failed or interrupted write leaves the previous checkpoint and no
temporary file; a run folder is locked while a run writes to it (:class:`RunFolder`).

What is task-specific (the loss, the evaluation, pictures) lives in a small task object:
:class:`MAETask` and :class:`ClassifyTask`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import random
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.images import StepSampler, collate
from ..devices import resolve_device
from ..tools.mae_viz import CLI_FONT_SIZE, caption_text, mae_reconstruction, render_grid
from ..tools.predict import classifier_logits
from ..weights import CheckpointError, save_atomic, write_atomic

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: run folders are not locked there
    fcntl = None


class TrainingDiverged(RuntimeError):
    """The loss, the gradients or the weights became NaN or infinite; nothing non-finite was saved."""


class RunError(ValueError):
    """A run cannot start or go on; the message says why and what to do."""


class RunFolderBusy(RunError):
    """Another process holds the run folder."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says where the last checkpoint is."""


@dataclass
class RunConfig:
    """How to run (the recipe's numbers live in :mod:`hiera.train.recipes`)."""

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
    label: Optional[str] = None  # the progress bar's name (default: the task's, pretrain / finetune)
    extra: Dict = field(default_factory=dict)  # recorded with the run (recipe, data, ...)


# ---------------------------------------------------------------------------------- processes
def setup_distributed(device: str = "auto"):
    """(rank, world size, device) from ``torchrun``'s environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device)
    if dev.type == "cuda" and (dev.index is None or world > 1):
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    elif dev.type == "cuda":
        torch.cuda.set_device(dev)
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


_RUN_KEYS = ("model", "optimizer", "step", "task", "run", "rng")


def load_run_checkpoint(path) -> dict:
    """A training checkpoint (``last.pt``) written by :class:`Trainer`, loaded with
    ``weights_only=True``; a :class:`hiera.weights.CheckpointError` says what is wrong with a
    missing, empty, damaged or foreign file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a training checkpoint (last.pt)")
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): it holds no checkpoint; {_NO_RESUME_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, random bytes, a pickle that needs code to load
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise CheckpointError(
            f"{path} cannot be read as a checkpoint ({size} bytes; {type(e).__name__}: {first[:200]}): it is "
            f"damaged or not a torch file; {_NO_RESUME_HINT}") from None
    if not isinstance(state, dict) or not all(k in state for k in _RUN_KEYS):
        found = sorted(str(k) for k in state)[:8] if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path} is not a training checkpoint of `hiera pretrain` / `hiera finetune` (expected the keys "
            f"{list(_RUN_KEYS)}, found {found}); weights to start from go to --init, --resume continues a "
            "run from its own last.pt")
    return state


# Our own writes are atomic, so a damaged last.pt was damaged after it was written.
_NO_RESUME_HINT = ("a run cannot continue from it. Restore a copy of the file, or start the run again "
                   "with --overwrite")


def checkpoint_step(path) -> Optional[int]:
    """The step of the training checkpoint at ``path``, or None when there is none readable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["step"])
    except Exception:
        return None


def describe_checkpoint(path) -> str:
    """Where the last checkpoint is, in words that are true whatever happened before."""
    step = checkpoint_step(path)
    if step is None:
        return f"no checkpoint was written ({path} does not exist)" if not Path(path).exists() else \
            f"{path} could not be read"
    return f"the last checkpoint is {path}, from step {step}"


def _nonfinite(named: Iterable[Tuple[str, torch.Tensor]]) -> Optional[str]:
    """The name of the first tensor holding NaN or infinity, or None. The screen is one max-abs
    per tensor (finite exactly when every value is, and unlike a 2-norm it cannot overflow)."""
    items = [(n, t.detach()) for n, t in named if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    if not items:
        return None
    norms = torch._foreach_norm([t for _, t in items], ord=math.inf)
    if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
        return None
    for n, t in items:
        if not bool(torch.isfinite(t).all()):
            return n
    return None


# ---------------------------------------------------------------------------------- run folders
# Run artefacts: what makes a folder hold a run (and what --overwrite removes).
RUN_ARTEFACTS = ("last.pt", "metrics.jsonl", "model", "curves.png", "reconstructions")
_HELD: Dict[str, list] = {}  # resolved run folder -> [lock file, depth], for this process


def _lock_holder(text: str) -> str:
    try:
        info = json.loads(text)
        who = f"process {info['pid']} on {info['host']}"
        if info.get("started"):
            who += f", started {info['started']}"
        if info.get("command"):
            who += f": {info['command']}"
        return who
    except (ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def lock_run_folder(out):
    """Hold ``out/.lock`` exclusively (``flock``) while a run writes to ``out``: a second run on the
    same folder fails at once with :class:`RunFolderBusy` naming the holder. Re-entrant within a
    process; released on exit, and by the kernel if the process dies."""
    out = Path(out)
    key = str(out.resolve())
    held = _HELD.get(key)
    if held is not None:
        held[1] += 1
        try:
            yield
        finally:
            held[1] -= 1
        return
    if fcntl is None:
        yield
        return
    try:
        f = open(out / ".lock", "a+")
    except OSError as e:
        raise RunError(f"cannot write in the run folder {out} ({e.strerror}); choose a writable --out") from None
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        text = f.read()
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise RunFolderBusy(f"{out} is in use by another run ({_lock_holder(text)}); wait for it to end, "
                                "or choose another --out") from None
        raise RunError(f"cannot lock the run folder {out} ({e.strerror})") from None
    with contextlib.suppress(OSError):  # who holds it: for the message of a second run only
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "command": " ".join(["hiera" if i == 0 else a for i, a in enumerate(sys.argv)])[:300]}))
        f.flush()
    _HELD[key] = [f, 1]
    try:
        yield
    finally:
        del _HELD[key]
        with contextlib.suppress(OSError):
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _remove_stale_temp_files(out: Path) -> None:
    """Temporary files of a :func:`hiera.weights.save_atomic` killed mid-write (SIGKILL, power cut): with the
    folder locked no other process can be writing them."""
    for tmp in out.glob(".*.tmp*"):
        if tmp.is_file() and any(tmp.name.startswith(f".{name}.tmp") for name in RUN_ARTEFACTS):
            with contextlib.suppress(OSError):
                tmp.unlink()


class RunFolder:
    """The run folder of one run, from before its first write to after its last.

    On entry (main process only; other ``torchrun`` processes write nothing): ``out`` must be a
    folder or creatable and writable; it is locked (:func:`lock_run_folder`); temporary files of a
    killed save are removed; a folder that already holds a run is refused unless ``resume``
    (continue it) or ``overwrite`` (its run artefacts are deleted first). A run that fails before
    writing anything leaves no folder behind.
    """

    def __init__(self, out, resume: bool = False, overwrite: bool = False, main: Optional[bool] = None):
        self.out, self.resume, self.overwrite = Path(out), resume, overwrite
        self.main = int(os.environ.get("RANK", "0")) == 0 if main is None else main
        self._lock = None
        self.created = False

    def existing(self) -> List[str]:
        return [name for name in RUN_ARTEFACTS if (self.out / name).exists()]

    def __enter__(self) -> "RunFolder":
        if self.resume and self.overwrite:
            raise RunError("--resume and --overwrite contradict each other: continue the run in "
                           f"{self.out}, or start it again, not both")
        if not self.main:
            return self
        out = self.out
        if out.exists() and not out.is_dir():
            raise RunError(f"--out {out} is a file, not a folder; give a folder for the run's checkpoints and logs")
        try:
            self.created = not out.exists()
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create the run folder {out} ({e.strerror}); choose a writable --out") from None
        self._lock = lock_run_folder(out)
        try:
            self._lock.__enter__()
        except BaseException:
            self._lock = None
            self._cleanup()
            raise
        try:
            self._check()
        except BaseException as e:
            self.__exit__(type(e), e, e.__traceback__)
            raise
        return self

    def _check(self) -> None:
        out = self.out
        _remove_stale_temp_files(out)
        found = self.existing()
        if self.resume:
            if not (out / "last.pt").exists():
                raise FileNotFoundError(f"nothing to resume: {out / 'last.pt'} does not exist"
                                        + (f" (the folder holds {', '.join(found)})" if found else ""))
            return
        if found and not self.overwrite:
            step = checkpoint_step(out / "last.pt")
            what = f"a run at step {step}" if step is not None else "a run"
            raise RunError(f"{out} already holds {what} ({', '.join(found)}); continue it with --resume, start "
                           "it again with --overwrite (deletes those files), or choose another --out")
        for name in found:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()

    def _cleanup(self) -> None:
        # Only a folder this run created and left empty (apart from its lock) is removed.
        if self.created:
            with contextlib.suppress(OSError):
                if {p.name for p in self.out.iterdir()} <= {".lock"}:
                    with contextlib.suppress(FileNotFoundError):
                        (self.out / ".lock").unlink()
                    self.out.rmdir()

    def __exit__(self, kind, exc, tb) -> bool:
        if self._lock is not None:
            lock, self._lock = self._lock, None
            lock.__exit__(kind, exc, tb)
        if exc is not None and self.main:
            self._cleanup()
        return False


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
            if self.out.exists() and not self.out.is_dir():
                raise RunError(f"--out {self.out} is a file, not a folder")
            try:
                self.out.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RunError(f"cannot create the run folder {self.out} ({e.strerror}); "
                               "choose a writable --out") from None
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

    def _diverged(self, what: str) -> TrainingDiverged:
        saved = checkpoint_step(self.last_path)
        if saved is None:
            where = (f"{_cap(describe_checkpoint(self.last_path))}; nothing non-finite was saved. Start again with a "
                     "lower learning rate, gradient clipping (--clip-grad) or bf16 instead of fp16")
        else:  # every save checks the weights first: what is on disk is finite
            where = (f"The last good checkpoint is {self.last_path}, from step {saved} (finite weights); resume from "
                     "it with --resume and a lower learning rate, gradient clipping (--clip-grad) or bf16 instead "
                     "of fp16")
        return TrainingDiverged(f"{what}: training stopped. {where}")

    def _check_state(self, when: str, full: bool = True) -> None:
        """Refuse to go on with non-finite weights, or to save with non-finite weights, EMA or
        optimizer state (``full``; per step the weights suffice, the rest follows from them)."""
        bad = _nonfinite(_unwrap(self.model).named_parameters())
        if full and bad is None and self.ema is not None:
            bad = _nonfinite(("EMA " + n, p) for n, p in self.ema.module.named_parameters())
        if full and bad is None:
            bad = _nonfinite((f"optimizer state {k}", v) for state in self.optimizer.state.values()
                             for k, v in state.items())
        if bad is not None:
            raise self._diverged(f"{bad} is not finite {when}")

    def save(self, path: Optional[Path] = None) -> Path:
        """Write the run's state to ``path`` (default ``last.pt``) atomically, after checking that
        every weight is finite: the checkpoint on disk is always the last finite state."""
        self._check_state(f"after step {self.step}, so it was not saved")
        state = self.state_dict()  # collective: every process takes part
        path = Path(path or self.last_path)
        if self.is_main:
            try:
                save_atomic(state, path)
            except OSError as e:
                reason = "the disk is full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else e.strerror or str(e)
                raise RunError(
                    f"could not write the checkpoint of step {self.step} to {path} ({reason}); "
                    f"{describe_checkpoint(path)} (unchanged). Make room, then continue with --resume") from None
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
            raise CheckpointError(f"{path} is a {state.get('task')} run, not {self.task.name}")
        if state["run"]["batch_size"] != self.cfg.batch_size:
            raise CheckpointError(
                f"{path} was trained with batch size {state['run']['batch_size']}; resume with the same "
                f"batch size (not {self.cfg.batch_size}) so the data order continues"
            )
        model = _unwrap(self.model)
        self._check_same_model(path, state, model)
        bad = _nonfinite(state["model"].items())
        if bad is not None:
            raise CheckpointError(f"{path} holds non-finite weights ({bad}): it was saved after its run diverged, "
                                  "and no run can continue from it; start again with --overwrite")
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this run's model: {str(e).splitlines()[0]}; resume with "
                                  "the --model and --config the run was started with") from None
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"the optimizer state in {path} does not fit this run's optimizer ({e}); "
                                  "resume with the options the run was started with (--linear-probe, ...)") from None
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        if self.ema and state.get("ema"):
            self.ema.module.load_state_dict(state["ema"])
        rng = state["rng"]
        try:
            _set_rng_state(rng[self.rank] if len(rng) == self.world else rng[0])
        except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"the random state in {path} cannot be restored ({e})") from None
        self.step = int(state["step"])
        if self.is_main and self.metrics_path.exists():  # forget what the interrupted run logged later
            with lock_run_folder(self.out):
                kept = [line for line, record in self._read_metrics() if record.get("step", 0) <= self.step]
                text = "".join(line + "\n" for line in kept)
                write_atomic(self.metrics_path, lambda tmp: tmp.write_text(text))
        return self.step

    def _check_same_model(self, path: Path, state: dict, model: nn.Module) -> None:
        cls = state.get("class")
        if cls and cls != type(model).__name__:
            raise CheckpointError(f"{path} holds a {cls}, this run builds a {type(model).__name__}")
        saved = _jsonable(state.get("config") or {})
        own = _jsonable(dict(getattr(model, "config", {}) or {}))
        # Keys only one side has are left alone: a config key added by a later version of this
        # project takes the value the older checkpoint was built with by default.
        diff = [k for k in sorted(set(saved) & set(own)) if saved[k] != own[k]]
        if diff:
            parts = ", ".join(f"{k} {saved[k]} there, {own[k]} here" for k in diff[:6])
            raise CheckpointError(f"{path} was trained with another model configuration ({parts}); resume with the "
                                  "--model and --config the run was started with")
        then, now = (state.get("extra") or {}).get("classes"), self.cfg.extra.get("classes")
        if then is not None and now is not None and list(then) != list(now):
            raise CheckpointError(f"{path} was trained on the classes {list(then)}, the data now has {list(now)}; "
                                  "resume on the data the run was started with")

    def _read_metrics(self) -> List[Tuple[str, dict]]:
        """``(line, record)`` of ``metrics.jsonl``. A half-written last line (a crash in mid-write)
        is dropped; a damaged line before it is an error that names it."""
        lines = self.metrics_path.read_text(errors="replace").splitlines()
        records = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
            except ValueError as e:
                if all(not rest.strip() for rest in lines[n:]):
                    break
                raise RunError(f"{self.metrics_path}:{n} is not a metrics record ({e}): {line[:80]!r}; delete or "
                               "repair that line, then resume") from None
            records.append((line, record))
        return records

    # ------------------------------------------------------------------ logging
    def log(self, record: dict) -> None:
        if self.is_main:
            try:
                with open(self.metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
            except OSError as e:
                raise RunError(f"could not write to {self.metrics_path} ({e.strerror}); "
                               f"{describe_checkpoint(self.last_path)}") from None

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
        """Train to ``cfg.total_steps``. Ctrl-C raises :class:`RunInterrupted` (a KeyboardInterrupt)
        whose message says where the last checkpoint is; divergence raises :class:`TrainingDiverged`
        before anything non-finite is saved."""
        with lock_run_folder(self.out) if self.is_main else contextlib.nullcontext():
            try:
                return self._fit()
            except KeyboardInterrupt:
                raise RunInterrupted(f"interrupted at step {self.step}; {describe_checkpoint(self.last_path)}"
                                     + ("; continue with --resume" if checkpoint_step(self.last_path) is not None
                                        else "")) from None

    def _fit(self) -> dict:
        cfg = self.cfg
        loader = self._loader(self.train_set, self.step, cfg.total_steps, cfg.batch_size, accum=cfg.accum)
        batches = iter(loader)
        bar = None
        if cfg.progress and self.is_main:

            left = cfg.total_steps - self.step
            threads = f", {torch.get_num_threads()} CPU threads" if self.device.type == "cpu" else ""
            print(f"{cfg.label or self.task.name}: {left} steps of {cfg.batch_size} samples "
                  f"({len(self.train_set)} in the data) on {self.device}{threads}, into {self.out}; the bar below "
                  "shows the time left once the first steps ran", flush=True)

            bar = tqdm(total=cfg.total_steps, initial=self.step, desc=cfg.label or self.task.name, dynamic_ncols=True)
        try:
            return self._steps(batches, bar)
        finally:
            if bar:
                bar.close()

    def _steps(self, batches, bar) -> dict:
        cfg = self.cfg
        self.net.train()
        bad_total, last = 0, {}
        tick, seen = time.perf_counter(), 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        while self.step < cfg.total_steps:
            lr = self._set_lr(self.step)
            loss_sum = torch.zeros((), device=self.device)
            for micro in range(cfg.accum):
                batch = next(batches)
                bad_total += batch["n_bad"]
                if batch["n"] == 0:
                    raise RunError(
                        f"every file of a batch was unreadable ({batch['n_bad']} in a row, {bad_total} so far) at "
                        f"step {self.step}; check the data. {_cap(describe_checkpoint(self.last_path))}"
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
            # Everything is checked before the update: an update from a non-finite loss or gradient
            # makes the weights non-finite, and the next checkpoint with them. Steps are counted as
            # in metrics.jsonl and the checkpoints: step N is the N-th update.
            if not torch.isfinite(loss_mean):
                raise self._diverged(f"loss is {loss_mean.item()} at step {self.step + 1}")
            if self.scaler:
                self.scaler.unscale_(self.optimizer)
            else:  # (with fp16 the scaler skips the steps with inf gradients itself)
                bad = _nonfinite((f"the gradient of {n}", p.grad) for n, p in _unwrap(self.model).named_parameters()
                                 if p.grad is not None)
                if bad is not None:
                    raise self._diverged(f"{bad} is not finite at step {self.step + 1} "
                                         f"(the loss is {loss_mean.item():.4g})")
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            if self.scaler:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self._check_state(f"after step {self.step + 1}", full=False)
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


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _jsonable(config: dict) -> dict:
    """A model config as JSON would give it back (tuples as lists), to compare saved and built ones."""
    return json.loads(json.dumps(config, default=str))


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


        batch = collate(samples)
        model = _unwrap(trainer.model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            result = mae_reconstruction(model, batch["image"].to(trainer.device), mask=batch["mask"].to(trainer.device))
        model.train(was_training)
        frames = 4 if result.is_video else None  # 4 of the 8 reconstructed frames keep a video sheet readable
        # Panels scaled up to a readable size; the caption under the last row says what the
        # columns are and that reconstructions carry each patch's true mean and contrast.
        rows = [render_grid(result, i, frames=frames, scale=None, raw=True, font_size=CLI_FONT_SIZE,
                            caption=caption_text(result, frames=frames) if i == len(samples) - 1 else None)
                for i in range(len(samples))]
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
        return self.criterion(classifier_logits(net, x).float(), y)

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
            logits = classifier_logits(model, batch["image"]).float()
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
