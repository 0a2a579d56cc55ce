"""Side-by-side benchmark of Hiera implementations: ``hiera benchmark --compare``.

Compares this package ("ours") with the official ``hiera-transformer`` package, timm and Hugging
Face transformers on the same machine, in the same run, and prints markdown tables of throughput,
latency, peak memory and the ratios ours / official; ``--json`` writes a record, ``--plot`` a PNG.

How it measures (why each choice):

* One worker process per implementation and case (:mod:`hiera.bench_worker`), importing only torch
  and that implementation. The official package also imports as ``hiera``, so it runs from its own
  environment (``--official-python``, ``$HIERA_OFFICIAL_PYTHON`` or ``.cache/reference/venv``, made
  by ``python tests/reference/official_env.py .cache/reference``); nothing is installed at run time.
  A fresh process per case also means that one case's memory, compiled graphs or thread settings
  never leak into the next.
* The cases of a group (e.g. every implementation at batch 8) are interleaved: in each of several
  rounds every worker in turn times a slice of steps, the order rotated from round to round, and
  only one worker computes at a time. A slow spell of a shared machine then hits every
  implementation alike instead of whichever happened to run during it. Throughput is the median
  over the rounds; latency percentiles pool every timed step.
* A step is what a user runs: inference is ``model.eval()``, ``torch.inference_mode()``, optional
  ``torch.autocast`` and a forward pass on a random batch; training is forward, loss (cross entropy,
  or the MAE loss), backward and an optimizer step (AdamW by default, the same for everyone).
* Peak memory is the worker's peak RSS over the timed steps (``VmHWM`` reset first); it includes
  the libraries the implementation imports, so the record also gives the RSS after the imports and
  the peak above it (what the model, its activations and optimizer take).

Library use::

    from hiera.compare import Settings, markdown, parse_variants, plan, plot, run_plan
    cases = plan(sections=["inference"], model="hiera_small_224", batches=[1, 8],
                 variants=parse_variants(["ours:fp32", "official:fp32"]))
    record = run_plan(cases, Settings(rounds=3), log=print)
    print(markdown(record)); plot(record, "compare.png")
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import importlib.util
import json
import os
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

IMPLS = ("ours", "official", "timm", "hf", "vit_b16", "vit_s16")
NAMES = {"ours": "ours", "official": "official", "timm": "timm", "hf": "HF transformers",
         "vit_b16": "timm ViT-B/16", "vit_s16": "timm ViT-S/16"}
# Plain ViTs (timm's, at the case's image size): what Hiera claims to beat, measured beside it. They
# are references, not Hiera implementations: no ratio to the official package, never a "peer", and
# only in a run that names them (--impl / --variants).
REFERENCES = ("vit_b16", "vit_s16")
DTYPES = ("fp32", "bf16", "fp16")
TASKS = ("classify", "mae")
SECTIONS = ("inference", "train", "scaling")
OPTIMIZERS = ("adamw", "adamw-fused", "sgd")  # the training step's; the same for every implementation
WORKER = Path(__file__).resolve().with_name("worker.py")
OFFICIAL_ENV_HELP = ("the official package runs from its own environment; build it once with "
                     "`python tests/reference/official_env.py .cache/reference` (from the repository root), "
                     "or point --official-python / $HIERA_OFFICIAL_PYTHON at a python that imports "
                     "hiera-transformer")

# The rows of the README table; run_compare.sh passes them.
README_VARIANTS = ("official:fp32", "timm:fp32", "official:bf16", "hf:bf16", "official:bf16:compile",
                   "ours:fp32", "ours:bf16", "ours:fp32:compile", "ours:bf16:compile")
README_TRAIN_VARIANTS = ("official:fp32", "official:bf16", "ours:fp32", "ours:bf16",
                         "ours:fp32:compile", "ours:bf16:compile")


class CompareError(ValueError):
    """A bad option or plan; the message says what to change."""


# ----------------------------------------------------------------------------------------- plan
@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of a table: an implementation at a precision, eager or compiled."""

    impl: str
    dtype: str = "fp32"
    compile: Optional[str] = None  # torch.compile backend, None for eager
    graphs: bool = False  # compiled with mode="reduce-overhead": steps replay as CUDA graphs

    @property
    def label(self) -> str:
        return f"{NAMES[self.impl]} {self.dtype}{_compiled(self.compile, self.graphs)}"


def _compiled(compile: Optional[str], graphs: bool) -> str:
    """How a row was compiled, as its label ends."""
    return " + compile + CUDA graphs" if graphs else " + compile" if compile else ""


def parse_variant(text: str, backend: str = "inductor") -> Variant:
    """``IMPL:DTYPE[:compile[=BACKEND]|:graphs]``, e.g. ``official:bf16:compile``; ``graphs`` is
    ``torch.compile(mode="reduce-overhead")``, which replays each step as a CUDA graph."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or parts[0] not in IMPLS:
        raise CompareError(f"bad variant {text!r}: write IMPL:DTYPE[:compile|:graphs], IMPL one of "
                           f"{', '.join(IMPLS)} (e.g. official:bf16:compile)")
    dtype = parts[1] if len(parts) > 1 else "fp32"
    if dtype not in DTYPES:
        raise CompareError(f"bad variant {text!r}: dtype must be one of {', '.join(DTYPES)}")
    if len(parts) == 3 and parts[2] == "graphs":
        return Variant(parts[0], dtype, "inductor", graphs=True)
    compiled = None
    if len(parts) == 3:
        word, _, name = parts[2].partition("=")
        if word != "compile":
            raise CompareError(f"bad variant {text!r}: the third part can only be 'compile' (or "
                               "compile=BACKEND) or 'graphs'")
        compiled = name or backend
    return Variant(parts[0], dtype, compiled)


def parse_variants(texts: Iterable[str], backend: str = "inductor") -> List[Variant]:
    out: List[Variant] = []
    for t in texts:
        v = parse_variant(t, backend)
        if v not in out:
            out.append(v)
    return out


def cross_variants(impls: Sequence[str], dtypes: Sequence[str], compile: Optional[str]) -> List[Variant]:
    """Every implementation at every precision, eager, plus compiled copies when ``compile``."""
    out = [Variant(i, d) for i in impls for d in dtypes]
    if compile:
        out += [Variant(i, d, compile) for i in impls for d in dtypes]
    return out


@dataclasses.dataclass
class Case:
    """One measurement: a variant on a model, input, batch and mode. ``group`` says which cases are
    interleaved with each other; ``section`` which table it belongs to."""

    section: str
    group: str
    variant: Variant
    task: str  # classify | mae
    mode: str  # inference | train
    model: str  # zoo name (``mae_...`` for task mae)
    arch: dict  # the constructor's full keyword arguments
    overrides: dict  # what differs from the zoo entry (empty: the zoo constructor is called)
    input_size: Tuple[int, ...]
    batch: int
    skip: Optional[str] = None  # why it cannot run, found while planning

    @property
    def impl(self) -> str:
        return self.variant.impl

    @property
    def label(self) -> str:
        return self.variant.label

    @property
    def unit(self) -> str:
        return "clips/s" if len(self.input_size) == 3 else "img/s"

    def spec(self, settings: "Settings") -> dict:
        """The worker's build request."""
        return {"task": self.task, "mode": self.mode, "model": self.model, "arch": self.arch,
                "overrides": self.overrides, "input_size": list(self.input_size), "batch": self.batch,
                "dtype": self.variant.dtype, "compile": self.variant.compile,
                "compile_mode": "reduce-overhead" if self.variant.graphs else None, "device": settings.device,
                "threads": settings.threads, "warmup": settings.warmup, "optimizer": settings.optimizer,
                "mask_ratio": settings.mask_ratio, "seed": settings.seed}

    def describe(self) -> dict:
        return {"section": self.section, "group": self.group, "label": self.label, "impl": self.impl,
                "dtype": self.variant.dtype, "compile": self.variant.compile, "graphs": self.variant.graphs,
                "task": self.task, "mode": self.mode,
                "model": self.model, "overrides": self.overrides, "input_size": list(self.input_size),
                "batch": self.batch, "unit": self.unit}


def _jsonable(value):
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def resolve_model(name: str, task: str, overrides: Optional[dict] = None) -> Tuple[str, dict, Tuple[int, ...]]:
    """The zoo name for ``task`` (``mae_`` prefixed for MAE), the constructor's full keyword
    arguments with ``overrides`` applied, and the input size."""
    from ..zoo import MODELS

    base = name[4:] if name.startswith("mae_") else name
    full = "mae_" + base if task == "mae" else base
    if full not in MODELS:
        known = ", ".join(n for n in sorted(MODELS) if n.startswith("mae_") == (task == "mae"))
        raise CompareError(f"no {'MAE ' if task == 'mae' else ''}zoo model {full!r}; choose one of: {known}")
    arch = _jsonable({**MODELS[full].kwargs, **(overrides or {})})
    size = tuple(int(s) for s in arch.get("input_size", (224, 224)))
    return full, arch, size


def _unsupported(variant: Variant, task: str, size: Sequence[int]) -> Optional[str]:
    if variant.impl in REFERENCES and task == "mae":
        return f"{NAMES[variant.impl]} is a classifier reference (no MAE)"
    if variant.impl in REFERENCES and len(size) != 2:
        return f"{NAMES[variant.impl]} takes images only"
    if variant.impl == "timm" and task == "mae":
        return "timm has no Hiera MAE"
    if variant.impl == "hf" and len(size) == 3:
        return "transformers' Hiera takes images only"
    return None


def plan(
    sections: Sequence[str] = ("inference", "train"),
    model: str = "hiera_small_224",
    variants: Sequence[Variant] = (),
    batches: Sequence[int] = (1, 8, 32),
    train_variants: Optional[Sequence[Variant]] = None,
    train_batch: int = 8,
    tasks: Sequence[str] = TASKS,
    overrides: Optional[dict] = None,
    scaling_variants: Optional[Sequence[Variant]] = None,
    scaling_sizes: Sequence[int] = (224, 384, 512),
    scaling_batch: int = 8,
    video_model: str = "hiera_base_16x224",
    scaling_frames: Sequence[int] = (8, 16),
    video_batch: int = 2,
    scaling_batches: Sequence[int] = (1, 4, 8, 16, 32, 64),
) -> List[Case]:
    """The cases of a comparison, grouped for interleaving.

    ``inference``: one group per batch size, every variant in it. ``train``: one group per task
    (``classify``, ``mae``) at ``train_batch``. ``scaling``: the cost of ``scaling_variants``
    (default ours, at the variants' precisions) against image size, clip length (``video_model``
    built for ``(frames, 224, 224)``) and batch, one group per table. ``overrides`` go to every
    constructor (e.g. a tiny ``embed_dim`` for a smoke test).
    """
    for s in sections:
        if s not in SECTIONS:
            raise CompareError(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    for t in tasks:
        if t not in TASKS:
            raise CompareError(f"unknown task {t!r}; choose from {', '.join(TASKS)}")
    numbers = {"batch sizes": batches, "train batch": [train_batch], "scaling sizes": scaling_sizes,
               "scaling batch": [scaling_batch], "video batch": [video_batch], "frames": scaling_frames,
               "scaling batches": scaling_batches}
    for what, values in numbers.items():
        if any(int(v) < 1 for v in values):
            raise CompareError(f"{what} must be >= 1, got {list(values)}")
    overrides = dict(overrides or {})
    cases: List[Case] = []

    def add(section, group, variant, task, mode, name, extra, batch):
        # The MAE decoder's arguments go to MAE models only, so one set of overrides serves both tasks.
        kw = {k: v for k, v in {**overrides, **extra}.items() if task == "mae" or not k.startswith("decoder_")}
        full, arch, size = resolve_model(name, task, kw)
        cases.append(Case(section, group, variant, task, mode, full, arch, _jsonable(kw), size, int(batch),
                          _unsupported(variant, task, size)))

    if "inference" in sections:
        if not variants:
            raise CompareError("no variants to compare")
        for b in batches:
            for v in variants:
                add("inference", f"inference batch {b}", v, "classify", "inference", model, {}, b)
    if "train" in sections:
        tv = list(train_variants) if train_variants is not None else list(variants)
        if not tv:
            raise CompareError("no variants to train")
        for task in tasks:
            for v in tv:
                add("train", f"train {task}", v, task, "train", model, {}, train_batch)
    if "scaling" in sections:
        sv = list(scaling_variants) if scaling_variants is not None else \
            [v for v in variants if v.impl == "ours"] or [Variant("ours", "fp32")]
        base_size = resolve_model(model, "classify", overrides)[2]
        if len(base_size) != 2:
            raise CompareError(f"scaling needs an image model, {model} takes clips (its video rows use "
                               "--video-model)")
        for s in scaling_sizes:
            for v in sv:
                add("scaling", "scaling size", v, "classify", "inference", model,
                    {"input_size": (int(s), int(s))}, scaling_batch)
        video_size = resolve_model(video_model, "classify")[2]
        if len(video_size) != 3:
            raise CompareError(f"--video-model must take clips; {video_model} takes images")
        for f in scaling_frames:
            for v in sv:
                add("scaling", "scaling video", v, "classify", "inference", video_model,
                    {"input_size": (int(f), *video_size[1:])}, video_batch)
        for b in scaling_batches:
            for v in sv:
                add("scaling", "scaling batch", v, "classify", "inference", model, {}, b)
    return cases


# ----------------------------------------------------------------------------------------- workers
@dataclasses.dataclass
class Settings:
    """How to measure: rounds of interleaved slices, each slice ``iters`` steps or ``min_time``
    seconds (at least one step), after ``warmup`` untimed steps; ``timeout`` seconds per answer."""

    rounds: int = 5
    iters: Optional[int] = None
    min_time: float = 2.0
    warmup: int = 2
    threads: Optional[int] = None
    device: str = "cpu"
    optimizer: str = "adamw"
    mask_ratio: float = 0.6
    seed: int = 0
    timeout: float = 1800.0
    peak_tflops: Optional[float] = None  # the device's peak for MFU (default: measured in the run)
    measure_peak: bool = True  # measure the device's matrix-product rate after the cases, for MFU

    def check(self) -> None:
        if self.rounds < 1:
            raise CompareError(f"rounds must be >= 1, got {self.rounds}")
        if self.iters is not None and self.iters < 1:
            raise CompareError(f"iters must be >= 1, got {self.iters}")
        if not self.min_time >= 0:
            raise CompareError(f"min_time must be >= 0, got {self.min_time}")
        if self.warmup < 0:
            raise CompareError(f"warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise CompareError(f"threads must be >= 1, got {self.threads}")
        if self.optimizer not in OPTIMIZERS:
            raise CompareError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not 0 < self.mask_ratio < 1:
            raise CompareError(f"mask ratio must be in (0, 1), got {self.mask_ratio}")
        if not self.timeout > 0:
            raise CompareError(f"timeout must be > 0, got {self.timeout}")
        if self.peak_tflops is not None and not self.peak_tflops > 0:
            raise CompareError(f"peak TFLOP/s must be > 0, got {self.peak_tflops}")


class WorkerError(RuntimeError):
    """A worker failed, crashed or did not answer in time; ``tail`` is the end of its stderr."""

    def __init__(self, message: str, tail: str = "", traceback: str = ""):
        super().__init__(message)
        self.tail = tail
        self.traceback = traceback


@dataclasses.dataclass
class Launcher:
    """How to start a worker for one implementation: its python, and whether to isolate it (``-I``:
    no PYTHONPATH, no user site; for the official package's own environment)."""

    python: str
    isolated: bool = False
    env: Optional[dict] = None  # extra environment variables

    def command(self, impl: str) -> List[str]:
        if self.isolated:
            flags = ["-I"]
        elif self.python == sys.executable and sys.version_info < (3, 11):
            # -P is new in 3.11: run the file without putting its folder on sys.path.
            code = f"import runpy, sys; sys.argv[0] = {str(WORKER)!r}; runpy.run_path(sys.argv[0], run_name='__main__')"
            return [self.python, "-c", code, "--impl", impl]
        else:
            flags = ["-P"]  # the script's folder (our package) must not shadow top-level names
        return [self.python, *flags, str(WORKER), "--impl", impl]


class Worker:
    """A running worker process: JSON requests in, JSON answers out, stderr kept for reports."""

    def __init__(self, impl: str, launcher: Launcher, tail_lines: int = 60):
        self.impl = impl
        env = dict(os.environ)
        env.update(launcher.env or {})
        self.cmd = launcher.command(impl)
        try:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True, bufsize=1, env=env)
        except OSError as e:
            raise WorkerError(f"could not start {self.cmd[0]}: {e}") from None
        self.answers: "queue.Queue[Optional[str]]" = queue.Queue()
        self.stderr = collections.deque(maxlen=tail_lines)
        threading.Thread(target=self._pump_answers, daemon=True).start()
        self._stderr_done = threading.Thread(target=self._pump_stderr, daemon=True)
        self._stderr_done.start()

    def _pump_answers(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            self.answers.put(line)
        self.answers.put(None)  # end of file: the process is gone

    def _pump_stderr(self) -> None:
        for line in iter(self.proc.stderr.readline, ""):
            self.stderr.append(line.rstrip("\n"))

    def tail(self) -> str:
        self._stderr_done.join(0.5)  # a crash's last words may still be in flight
        return "\n".join(self.stderr)

    def request(self, msg: dict, timeout: float) -> dict:
        """Send one request and wait for its answer; raise :class:`WorkerError` on failure."""
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # it died: the answer queue reports how
        try:
            line = self.answers.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerError(f"no answer to {msg.get('op')!r} within {timeout:.0f} s (killed)", self.tail()) from None
        if line is None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
            raise WorkerError(f"the worker exited (code {code}) during {msg.get('op')!r}", self.tail())
        try:
            answer = json.loads(line)
        except ValueError:
            self.kill()
            raise WorkerError(f"unreadable answer {line[:200]!r}", self.tail()) from None
        if not answer.get("ok"):
            raise WorkerError(answer.get("error", "failed"), self.tail(), answer.get("traceback", ""))
        return answer

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Ask it to quit; kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self.request({"op": "quit"}, timeout=10)
            except WorkerError:
                pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.kill()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


def default_official_python(root: Optional[Path] = None) -> Optional[Path]:
    """``$HIERA_OFFICIAL_PYTHON``, else ``<repo>/.cache/reference/venv/bin/python`` if it exists."""
    env = os.environ.get("HIERA_OFFICIAL_PYTHON")
    if env:
        return Path(env)
    root = root or Path(__file__).resolve().parents[2]
    for candidate in (root / ".cache/reference/venv/bin/python", root / ".cache/reference/venv/Scripts/python.exe"):
        if candidate.exists():
            return candidate
    return None


def launchers(official_python: Optional[str] = None) -> Tuple[Dict[str, Launcher], Dict[str, str]]:
    """How to start each implementation, and why the others cannot be (nothing is installed).
    ``official_python``: the official environment's python (default :func:`default_official_python`)."""
    here = str(Path(__file__).resolve().parents[2])  # so workers import this very package
    pythonpath = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    found: Dict[str, Launcher] = {"ours": Launcher(sys.executable, env={"PYTHONPATH": pythonpath})}
    missing: Dict[str, str] = {}
    python = Path(official_python) if official_python else default_official_python()
    if python is None:
        missing["official"] = f"no official environment found: {OFFICIAL_ENV_HELP}"
    elif not python.exists():
        missing["official"] = f"{python} does not exist: {OFFICIAL_ENV_HELP}"
    else:
        # Absolute, not resolved: a venv's python is a link that finds its venv through its own path.
        found["official"] = Launcher(os.path.abspath(python), isolated=True)
    others = [("timm", "timm"), ("hf", "transformers")] + [(impl, "timm") for impl in REFERENCES]
    for impl, module in others:
        if importlib.util.find_spec(module) is None:
            missing[impl] = f"{module} is not installed (pip install {module})"
        else:
            found[impl] = Launcher(sys.executable)
    return found, missing


# ----------------------------------------------------------------------------------------- running
def schedule(count: int, rounds: int) -> List[List[int]]:
    """The order in which ``count`` interleaved cases run in each round: rotated by one each round,
    so every case takes every position (first after the coordinator, after each other case) in turn."""
    return [[(r + i) % count for i in range(count)] for r in range(rounds)] if count else []


Log = Callable[[str], None]


class Runner:
    """Runs the groups of a plan. ``start(case)`` returns a started worker (default: a
    :class:`Worker` from ``launchers``); tests pass their own."""

    def __init__(self, settings: Settings, launch: Dict[str, Launcher], log: Log = lambda s: None,
                 start: Optional[Callable[[Case], Worker]] = None):
        self.settings = settings
        self.launch = launch
        self.log = log
        self.start = start or (lambda case: Worker(case.impl, self.launch[case.impl]))
        self.impl_info: Dict[str, dict] = {}

    def run_group(self, cases: List[Case]) -> List[dict]:
        """Measure the cases of one group, interleaved; one result per case, in order."""
        workers: Dict[int, Worker] = {}
        try:
            return self._run_group(cases, workers)
        finally:  # on success they have quit already; on an interrupt none may outlive the run
            for w in workers.values():
                w.kill()

    def _run_group(self, cases: List[Case], workers: Dict[int, Worker]) -> List[dict]:
        s = self.settings
        name = cases[0].group
        results = [{"case": c, "rounds": [], "error": None, "skipped": c.skip} for c in cases]

        def fail(i: int, what: str, err: WorkerError) -> None:
            results[i]["error"] = str(err)
            results[i]["stderr_tail"] = err.tail[-4000:]
            if err.traceback:
                results[i]["traceback"] = err.traceback[-4000:]
            tail = "\n".join("    | " + line for line in err.tail.splitlines()[-15:])
            self.log(f"[{name}] {cases[i].label}: {what} failed: {err}" + (f"\n{tail}" if tail else ""))
            w = workers.pop(i, None)
            if w is not None:
                w.kill()

        for i, c in enumerate(cases):  # started together: imports overlap, nothing is timed yet
            if c.skip is None and c.impl not in self.launch:
                results[i]["skipped"] = f"{NAMES[c.impl]} is not available"
            if results[i]["skipped"] is None:
                try:
                    workers[i] = self.start(c)
                except WorkerError as e:
                    fail(i, "start", e)
        for i in list(workers):
            try:
                hello = workers[i].request({"op": "hello"}, s.timeout)
                results[i]["hello"] = hello
                self.impl_info.setdefault(cases[i].impl, {k: v for k, v in hello.items()
                                                          if k in ("version", "file", "python", "torch")})
            except WorkerError as e:
                fail(i, "start", e)
        for i in list(workers):  # built one at a time: compilation is CPU-heavy
            c = cases[i]
            self.log(f"[{name}] building {c.label}, {c.model} {'x'.join(map(str, c.input_size))}, "
                     f"batch {c.batch}, {c.mode}" + (f" {c.task}" if c.mode == "train" else "") + " ...")
            try:
                results[i]["build"] = workers[i].request({"op": "build", "case": c.spec(s)}, s.timeout)
            except WorkerError as e:
                fail(i, "build", e)
        alive = sorted(workers)
        slice_ = {"op": "run", "min_iters": 1}
        slice_.update({"iters": s.iters} if s.iters else {"min_time": s.min_time})
        for r, order in enumerate(schedule(len(alive), s.rounds)):
            for k in order:
                i = alive[k]
                if i not in workers:
                    continue  # failed in an earlier round
                c = cases[i]
                try:
                    ans = workers[i].request(slice_, s.timeout)
                except WorkerError as e:
                    fail(i, f"round {r + 1}", e)
                    continue
                results[i]["rounds"].append(ans)
                thr = c.batch * len(ans["latencies_ms"]) / ans["total_s"]
                self.log(f"[{name}] round {r + 1}/{s.rounds} {c.label}: {thr:.2f} {c.unit}, "
                         f"{len(ans['latencies_ms'])} steps, median {statistics.median(ans['latencies_ms']):.0f} ms")
        for w in workers.values():
            w.close()
        workers.clear()
        return [summarize(r) for r in results]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` (0-100)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(raw: dict) -> dict:
    """One result from a case's raw answers: throughput (median over rounds), latency median/p90
    over all steps, peak memory (max over rounds), or the error / skip reason."""
    case: Case = raw["case"]
    out = case.describe()
    if raw.get("skipped"):
        out["skipped"] = raw["skipped"]
        return out
    hello, build = raw.get("hello", {}), raw.get("build", {})
    rounds = raw.get("rounds", [])
    if raw.get("error"):
        out["error"] = raw["error"]
        for key in ("stderr_tail", "traceback"):
            if raw.get(key):
                out[key] = raw[key]
        if not rounds:
            return out
        out["partial"] = True  # failed after some rounds: what was measured is still reported
    if not rounds:
        out["error"] = "no measurements"
        return out
    per_round = [case.batch * len(a["latencies_ms"]) / a["total_s"] for a in rounds]
    steps = [t for a in rounds for t in a["latencies_ms"]]
    peaks = [a["peak_mb"] for a in rounds if a.get("peak_mb") is not None]
    med = statistics.median(per_round)
    out.update({
        "throughput": med,
        "throughput_rounds": per_round,
        "spread": (max(per_round) - min(per_round)) / med if med else None,
        "rounds": len(rounds),
        "iters": len(steps),
        "latency_ms_median": statistics.median(steps),
        "latency_ms_p90": percentile(steps, 90),
        "latency_ms_min": min(steps),
        "peak_rss_mb": max(peaks) if peaks else None,
        "memory_kind": rounds[-1].get("memory_kind"),
        "idle_rss_mb": hello.get("idle_rss_mb"),
        "params_m": build.get("params_m"),
        "build_s": build.get("build_s"),
        "first_step_s": build.get("first_step_s"),
        "warmup_s": build.get("warmup_s"),
        "threads": build.get("threads"),
    })
    if out["peak_rss_mb"] is not None and out["idle_rss_mb"] is not None and out["memory_kind"] != "cuda_max_allocated":
        out["peak_above_idle_mb"] = out["peak_rss_mb"] - out["idle_rss_mb"]
    return out


def _key(r: dict, compile: bool = True) -> tuple:
    """What must match for two results to be compared: all but the implementation."""
    k = (r["section"], r["task"], r["mode"], r["model"].replace("mae_", ""), tuple(r["input_size"]),
         r["batch"], r["dtype"])
    return k + (r["compile"], r.get("graphs", False)) if compile else k


def _ratio(a, b) -> Optional[float]:
    return a / b if a is not None and b else None


# Dense bf16/fp16 tensor-core and plain fp32 peaks from the vendor's data sheets, TFLOP/s, by the
# start of torch.cuda.get_device_name(): the fallback when a run measured no ceiling of its own.
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},  # SXM
    "NVIDIA H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "fp32": 51.2},
    "NVIDIA H100 NVL": {"bf16": 835.0, "fp16": 835.0, "fp32": 60.0},
    "NVIDIA H200": {"bf16": 989.4, "fp16": 989.4, "fp32": 66.9},
    "NVIDIA A100": {"bf16": 312.0, "fp16": 312.0, "fp32": 19.5},
}


def peak_tflops(system: dict, dtype: str, given: Optional[float] = None) -> Optional[float]:
    """The peak that model FLOP utilisation is measured against: ``given``, else the rate measured
    in this run (:func:`measure_peak`, in ``system["measured_peak_tflops"]``), else the GPU's
    data-sheet figure from :data:`PEAK_TFLOPS`, else ``None`` (no MFU reported)."""
    return _peak(system, dtype, given)[0]


def _peak(system: dict, dtype: str, given: Optional[float] = None) -> Tuple[Optional[float], Optional[str]]:
    """(peak TFLOP/s, where it comes from: "given", "measured" or "data sheet")."""
    if given:
        return given, "given"
    measured = (system.get("measured_peak_tflops") or {}).get(dtype)
    if measured:
        return measured, "measured"
    name = (system.get("gpu") or {}).get("name", "")
    for prefix, peaks in PEAK_TFLOPS.items():
        if name.startswith(prefix):
            return peaks.get(dtype), "data sheet"
    return None, None


def measure_peak(device: str, dtypes: Iterable[str], threads: Optional[int] = None) -> Dict[str, float]:
    """The dense matrix-product rate of ``device`` now, TFLOP/s per dtype: square products of random
    data (8192 on a GPU, 2048 on a CPU, with ``threads`` torch threads), the best of a few. It is
    the ceiling that a model's FLOP utilisation is read against; float32 on a GPU is full float32
    (TF32 off), as the benchmark's float32 rows run."""
    import torch

    dev = torch.device(device)
    n = 8192 if dev.type == "cuda" else 2048
    types = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    saved_threads, saved_tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    if threads:
        torch.set_num_threads(threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    out: Dict[str, float] = {}
    try:
        for dtype in dict.fromkeys(dtypes):
            a = torch.randn(n, n, device=dev).to(types[dtype])
            b = torch.randn(n, n, device=dev).to(types[dtype])
            times = []
            for i in range(5):
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                a @ b
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if i:  # the first is a warm-up
                    times.append(time.perf_counter() - t0)
            out[dtype] = 2 * n**3 / min(times) / 1e12
            del a, b
    finally:
        torch.set_num_threads(saved_threads)
        torch.backends.cuda.matmul.allow_tf32 = saved_tf32
    return out


_FLOPS: Dict[tuple, Optional[float]] = {}


def model_flops(task: str, mode: str, arch: dict, input_size: Sequence[int], mask_ratio: float = 0.6) -> Optional[float]:
    """Floating-point operations per item of one step, counted by ``torch.utils.flop_counter`` on
    this package's model (the same architecture as every implementation's): matrix products,
    convolutions and attention, two per multiply-add; a training step adds the backward's. The
    model runs on the meta device (no memory, no arithmetic), or, where an operator has no meta
    kernel (the MAE's index of kept units), on CPU at batch 1. ``None`` if counting fails."""
    key = (task, mode, json.dumps(arch, sort_keys=True, default=str), tuple(input_size), mask_ratio)
    if key in _FLOPS:
        return _FLOPS[key]
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from ..mae import MaskedAutoencoderHiera
    from ..model import Hiera

    def count(device: str) -> int:
        torch.manual_seed(0)
        with torch.device(device):
            model = (MaskedAutoencoderHiera if task == "mae" else Hiera)(**arch)
        model.train(mode == "train")
        x = torch.randn(1, int(arch.get("in_chans", 3)), *input_size, device=device)
        # The reference attention: the counter has no formula for the CPU's fused kernel, which
        # float32 inference would otherwise take.
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            with torch.set_grad_enabled(mode == "train"):
                out = model(x, mask_ratio=mask_ratio)[0] if task == "mae" else model(x)
                if mode == "train":
                    loss = out if task == "mae" else F.cross_entropy(out.float(), out.new_zeros(1, dtype=torch.long))
                    loss.backward()
        return counter.get_total_flops()

    try:
        try:
            flops = count("meta")  # no memory and no compute: any model size counts instantly
        except NotImplementedError:  # an operator without a meta kernel (the MAE's nonzero): batch 1 on CPU
            flops = count("cpu")
    except Exception:  # noqa: BLE001  (a report without MFU beats no report)
        flops = None
    _FLOPS[key] = float(flops) if flops else None
    return _FLOPS[key]


def reference_flops(impl: str, mode: str, input_size: Sequence[int], num_classes: int = 1000) -> Optional[float]:
    """FLOPs per image of one step of a reference ViT (:data:`REFERENCES`), counted as
    :func:`model_flops` counts Hiera: timm's model on the meta device, the reference attention."""
    key = (impl, mode, tuple(input_size), num_classes)
    if key in _FLOPS:
        return _FLOPS[key]
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    try:
        import timm

        from .worker import VIT_MODELS  # timm's names, kept where the worker builds them

        with torch.device("meta"):
            model = timm.create_model(VIT_MODELS[impl], img_size=tuple(input_size), num_classes=num_classes)
        model.train(mode == "train")
        x = torch.randn(1, 3, *input_size, device="meta")
        with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
            with torch.set_grad_enabled(mode == "train"):
                out = model(x)
                if mode == "train":
                    F.cross_entropy(out.float(), out.new_zeros(1, dtype=torch.long)).backward()
        flops = float(counter.get_total_flops())
    except Exception:  # noqa: BLE001  (a report without MFU beats no report)
        flops = None
    _FLOPS[key] = flops
    return flops



def add_flops(results: List[dict], system: dict, settings: "Settings") -> List[dict]:
    """Add to each measured result ``gflop_per_item``, ``tflops`` (model FLOP/s achieved) and, where
    the device's peak is known, ``mfu`` (model FLOP utilisation: achieved / peak)."""
    for r in results:
        if not r.get("throughput"):
            continue
        _, arch, _ = resolve_model(r["model"], r["task"], r.get("overrides"))
        if r["impl"] in REFERENCES:
            flops = reference_flops(r["impl"], r["mode"], r["input_size"], int(arch.get("num_classes", 1000)))
        else:
            flops = model_flops(r["task"], r["mode"], arch, r["input_size"], settings.mask_ratio)
        if flops is None:
            continue
        r["gflop_per_item"] = flops / 1e9
        r["tflops"] = flops * r["throughput"] / 1e12
        peak, source = _peak(system, r["dtype"], settings.peak_tflops)
        if peak:
            r["mfu"] = r["tflops"] / peak
            r["peak_tflops"], r["peak_source"] = peak, source
    return results


def add_ratios(results: List[dict]) -> List[dict]:
    """Add to each measured result: ``vs_official`` (throughput / the official's at the same
    settings, compilation included), ``memory_vs_official`` (peak RSS) and ``step_memory_vs_official``
    (peak above the imports); and for ours ``vs_best_peer`` / ``best_peer``: against the fastest
    other implementation at the same precision, eager or compiled."""
    ok = [r for r in results if r.get("throughput")]
    official = {_key(r): r for r in ok if r["impl"] == "official"}
    references = {(r["impl"], _key(r)): r for r in ok if r["impl"] in REFERENCES}
    for r in ok:
        if r["impl"] in REFERENCES:
            continue
        for ref in REFERENCES:  # Hiera against the plain ViT at the same settings
            v = references.get((ref, _key(r)))
            if v is not None:
                r[f"vs_{ref}"] = _ratio(r["throughput"], v["throughput"])
        o = official.get(_key(r))
        if o is not None and r["impl"] != "official":
            r["vs_official"] = _ratio(r["throughput"], o["throughput"])
            r["memory_vs_official"] = _ratio(r.get("peak_rss_mb"), o.get("peak_rss_mb"))
            r["step_memory_vs_official"] = _ratio(r.get("peak_above_idle_mb"), o.get("peak_above_idle_mb"))
        if r["impl"] == "ours":
            peers = [p for p in ok if p["impl"] not in ("ours",) + REFERENCES and _key(p, False) == _key(r, False)]
            if peers:
                best = max(peers, key=lambda p: p["throughput"])
                r["vs_best_peer"] = r["throughput"] / best["throughput"]
                r["best_peer"] = best["label"]
    return results


def headline(results: List[dict]) -> List[dict]:
    """The ratios the README quotes, from one run: ours / official per setting, and ours at its
    largest inference batch against the next smaller one (a batch should never make it slower)."""
    rows = []
    for r in results:
        if r["impl"] == "ours" and r.get("vs_official") is not None and r["section"] in ("inference", "train"):
            what = (f"{r['section']} {r['task'] + ' ' if r['mode'] == 'train' else ''}{r['dtype']}"
                    f"{_compiled(r['compile'], r.get('graphs', False))}, batch {r['batch']}")
            rows.append({"what": f"{what}: throughput ours / official", "ratio": r["vs_official"]})
            if r["mode"] == "train" and r.get("memory_vs_official") is not None:
                rows.append({"what": f"{what}: peak RSS ours / official", "ratio": r["memory_vs_official"]})
    for r in results:
        for ref in REFERENCES:
            if r["impl"] == "ours" and r.get(f"vs_{ref}") is not None:
                what = (f"{r['section']} {r['task'] + ' ' if r['mode'] == 'train' else ''}{r['dtype']}"
                        f"{_compiled(r['compile'], r.get('graphs', False))}, batch {r['batch']}")
                rows.append({"what": f"{what}: throughput ours / {NAMES[ref]}", "ratio": r[f"vs_{ref}"]})
    series = collections.defaultdict(dict)
    for r in results:
        if r["section"] == "inference" and r.get("throughput"):
            series[r["label"]][r["batch"]] = r["throughput"]
    for label, by_batch in series.items():
        if len(by_batch) >= 2:
            big, prev = sorted(by_batch)[-1], sorted(by_batch)[-2]
            rows.append({"what": f"inference {label}: batch {big} / batch {prev} throughput",
                         "ratio": by_batch[big] / by_batch[prev]})
    return rows


def run_plan(cases: List[Case], settings: Settings, launch: Optional[Dict[str, Launcher]] = None,
             missing: Optional[Dict[str, str]] = None, log: Log = lambda s: None,
             start: Optional[Callable[[Case], Worker]] = None) -> dict:
    """Measure every group of ``cases``; return the record (see :func:`make_record`)."""
    settings.check()
    if launch is None:
        launch, found_missing = launchers()
        missing = {**found_missing, **(missing or {})}
    missing = dict(missing or {})
    for impl, why in missing.items():
        if any(c.impl == impl for c in cases):
            log(f"skipping {NAMES[impl]}: {why}")
    groups: Dict[str, List[Case]] = {}
    for c in cases:
        if c.impl in missing and c.skip is None:
            c.skip = f"{NAMES[c.impl]} not available: {missing[c.impl]}"
        groups.setdefault(c.group, []).append(c)
    runner = Runner(settings, launch, log, start)
    results: List[dict] = []
    t0 = time.perf_counter()
    for n, (name, group) in enumerate(groups.items(), 1):
        runnable = [c for c in group if c.skip is None]
        log(f"[{name}] group {n}/{len(groups)}: {len(runnable)} cases interleaved over {settings.rounds} rounds"
            + (f" ({len(group) - len(runnable)} skipped)" if len(runnable) < len(group) else ""))
        results += runner.run_group(group)
    add_ratios(results)
    record = make_record(results, settings, runner.impl_info, missing, time.perf_counter() - t0)
    if settings.measure_peak and any(r.get("throughput") for r in results):
        log("measuring the device's matrix-product rate (the MFU ceiling) ...")
        dtypes = sorted({r["dtype"] for r in results if r.get("throughput")})
        record["system"]["measured_peak_tflops"] = measure_peak(settings.device, dtypes, settings.threads)
    add_flops(results, record["system"], settings)
    return record


def make_record(results: List[dict], settings: Settings, impl_info: Dict[str, dict],
                missing: Dict[str, str], seconds: float) -> dict:
    """The JSON record: tool, date, machine, settings, implementations (versions, files, or why
    skipped), every result and the headline ratios."""
    from .timing import system_info

    impls = {k: dict(v) for k, v in impl_info.items()}
    for impl, why in missing.items():
        impls.setdefault(impl, {})["skipped"] = why
    return {
        "tool": "hiera benchmark --compare",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "system": system_info(settings.device),
        "settings": dataclasses.asdict(settings),
        "implementations": impls,
        "seconds": round(seconds, 1),
        "results": results,
        "headline": headline(results),
    }


# ----------------------------------------------------------------------------------------- report
def _fmt(x: Optional[float], digits: int = 1) -> str:
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.{digits}f}" if abs(x) >= 1 else f"{x:.{digits + 1}f}"


def _times(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _cell(r: Optional[dict]) -> str:
    if r is None:
        return ""
    if r.get("skipped"):
        return "skipped"
    if not r.get("throughput"):
        return "failed"
    ratio = f" ({_times(r['vs_official'])})" if r["impl"] != "official" and r.get("vs_official") else ""
    return _fmt(r["throughput"]) + ratio


def _labels(rows: List[dict]) -> List[str]:
    seen: List[str] = []
    for r in rows:
        if r["label"] not in seen:
            seen.append(r["label"])
    return seen


def _size(r: dict) -> str:
    return "x".join(map(str, r["input_size"]))


def markdown(record: dict) -> str:
    """The report as markdown tables (to paste into a README), with notes on failures."""
    results = record["results"]
    s = record["settings"]
    system = record.get("system", {})
    threads = sorted({r["threads"] for r in results if r.get("threads")})
    gpu = system.get("gpu")
    out = [(f"GPU: {gpu['name']} (CUDA {gpu.get('cuda')}); host " if gpu else "Machine: ")
           + f"{system.get('cpu', '?')}, {system.get('cpu_count', '?')} CPUs"
           + (f" ({'/'.join(map(str, threads))} torch threads)" if threads else "")
           + f", torch {system.get('torch', '?')}; "
           f"{s['rounds']} interleaved rounds of "
           + (f"{s['iters']} steps" if s.get("iters") else f">= {s['min_time']:g} s")
           + f" per case after {s['warmup']} warm-up steps.", ""]
    inf = [r for r in results if r["section"] == "inference"]
    if inf:
        first = inf[0]
        batches = sorted({r["batch"] for r in inf})
        out.append(f"### Inference: {first['model']} at {_size(first)}, {_per_second(first['unit'])} "
                   "(median over the rounds; higher is better)")
        out.append("")
        out.append("| implementation | " + " | ".join(f"batch {b}" for b in batches) + " |")
        out.append("| --- |" + " ---: |" * len(batches))
        for label in _labels(inf):
            by_batch = {r["batch"]: r for r in inf if r["label"] == label}
            if all(r.get("skipped") for r in by_batch.values()):
                continue
            out.append(f"| {label} | " + " | ".join(_cell(by_batch.get(b)) for b in batches) + " |")
        out.append("")
        peaks = system.get("measured_peak_tflops") or {}
        ceiling = ("; the ceiling measured in this run: " + ", ".join(f"{d} {_fmt(t)} TFLOP/s" for d, t in peaks.items())
                   if peaks else "")
        out.append("In parentheses: throughput / the official package's at the same precision and compilation, "
                   "measured in the same run. TFLOP/s: the model's matrix-product and attention FLOPs "
                   "(counted once, the same for every Hiera implementation; a ViT reference's own) per second; "
                   f"MFU: that over the device's dense matrix-product rate at the row's precision{ceiling}.")
        out.append("")
        out.append("| implementation | batch | img/s | x official | x best peer | latency median ms | p90 ms "
                   f"| {_memory_header(inf)} | above imports MB | round spread | TFLOP/s | MFU |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in inf:
            if r.get("throughput"):
                peer = f"{_times(r.get('vs_best_peer'))} ({r['best_peer']})" if r.get("best_peer") else "-"
                out.append(f"| {r['label']} | {r['batch']} | {_fmt(r['throughput'])} | {_times(r.get('vs_official'))} "
                           f"| {peer} | {_fmt(r['latency_ms_median'])} | {_fmt(r['latency_ms_p90'])} "
                           f"| {_fmt(r.get('peak_rss_mb'))} | {_fmt(r.get('peak_above_idle_mb'))} "
                           f"| {_pct(r.get('spread'))} | {_fmt(r.get('tflops'))} | {_pct(r.get('mfu'), 1)} |")
        out.append("")
    train = [r for r in results if r["section"] == "train" and not r.get("skipped")]
    if train:
        first = train[0]
        out.append(f"### Training steps: {first['model'].replace('mae_', '')} at {_size(first)}, batch {first['batch']} "
                   f"(forward + loss + backward + {s['optimizer']} step; MAE mask ratio {s['mask_ratio']:g})")
        out.append("")
        out.append("| implementation | task | img/s | x official | step median ms | p90 ms | "
                   f"{_memory_header(train)} | x official | above imports MB | x official | TFLOP/s | MFU |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for r in train:
            if r.get("throughput"):
                out.append(f"| {r['label']} | {r['task']} | {_fmt(r['throughput'])} | {_times(r.get('vs_official'))} "
                           f"| {_fmt(r['latency_ms_median'])} | {_fmt(r['latency_ms_p90'])} "
                           f"| {_fmt(r.get('peak_rss_mb'))} | {_times(r.get('memory_vs_official'))} "
                           f"| {_fmt(r.get('peak_above_idle_mb'))} | {_times(r.get('step_memory_vs_official'))} "
                           f"| {_fmt(r.get('tflops'))} | {_pct(r.get('mfu'), 1)} |")
            else:
                out.append(f"| {r['label']} | {r['task']} | failed | | | | | | | | | |")
        out.append("")
    for group, title in (("scaling size", "input size"), ("scaling video", "clip length"), ("scaling batch", "batch")):
        rows = [r for r in results if r["group"] == group and not r.get("skipped")]
        if not rows:
            continue
        out.append(f"### Scaling: {title} ({rows[0]['model']}" + (f", batch {rows[0]['batch']})" if group != "scaling batch"
                                                                  else f" at {_size(rows[0])})"))
        out.append("")
        out.append("| implementation | input | batch | items/s | ms per item | cost per item x first row "
                   "| latency median ms | peak RSS MB |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        firsts: Dict[str, float] = {}
        for r in rows:
            if not r.get("throughput"):
                out.append(f"| {r['label']} | {_size(r)} | {r['batch']} | failed | | | | |")
                continue
            per_item = 1000.0 / r["throughput"]
            firsts.setdefault(r["label"], per_item)
            out.append(f"| {r['label']} | {_size(r)} | {r['batch']} | {_fmt(r['throughput'])} | {_fmt(per_item)} "
                       f"| {_times(per_item / firsts[r['label']])} | {_fmt(r['latency_ms_median'])} "
                       f"| {_fmt(r.get('peak_rss_mb'))} |")
        out.append("")
    if record.get("headline"):
        out.append("### Ratios (same run)")
        out.append("")
        out.append("| comparison | ratio |")
        out.append("| --- | ---: |")
        for h in record["headline"]:
            out.append(f"| {h['what']} | {_times(h['ratio'])} |")
        out.append("")
    notes = [f"- {NAMES.get(impl, impl)} skipped: {info['skipped']}"
             for impl, info in record.get("implementations", {}).items() if info.get("skipped")]
    absent = {impl for impl, info in record.get("implementations", {}).items() if info.get("skipped")}
    by_reason: Dict[str, List[str]] = {}  # one note per distinct failure, listing where it happened
    for r in results:
        if r.get("error"):
            reason = f"{'partly ' if r.get('partial') else ''}failed: {r['error'][:400]}"
        elif r.get("skipped") and r["impl"] not in absent:
            reason = f"skipped: {r['skipped']}"
        else:
            continue
        by_reason.setdefault(reason, []).append(f"{r['label']} ({r['group']})")
    notes += [f"- {', '.join(where)}: {reason}" for reason, where in by_reason.items()]
    if notes:
        out += ["Notes:", ""] + notes + [""]
    return "\n".join(out)


def _per_second(unit: str) -> str:
    return {"img/s": "images per second", "clips/s": "clips per second"}.get(unit, unit)


def _pct(x: Optional[float], digits: int = 0) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f}%"


def _memory_header(rows: List[dict]) -> str:
    """On a GPU the peak is the CUDA allocator's, not the process's resident set."""
    kinds = {r.get("memory_kind") for r in rows if r.get("throughput")}
    return "peak GPU MB" if kinds == {"cuda_max_allocated"} else "peak RSS MB"


def plot(record: dict, path) -> Path:
    """A PNG: throughput per implementation and batch (bars, ours annotated with its ratio to the
    official), training steps, and the scaling curves; one panel per section that has results."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("--plot needs matplotlib: pip install matplotlib") from e
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = [r for r in record["results"] if r.get("throughput")]
    panels = []
    if any(r["section"] == "inference" for r in results):
        panels.append("inference")
    if any(r["section"] == "train" for r in results):
        panels.append("train")
    panels += [g for g in ("scaling size", "scaling video", "scaling batch") if any(r["group"] == g for r in results)]
    if not panels:
        panels = ["empty"]
    fig = Figure(figsize=(max(8.0, 6.0 * min(len(panels), 2)), 4.8 * ((len(panels) + 1) // 2)), dpi=110)
    FigureCanvasAgg(fig)  # a bare figure: no pyplot state, no backend switch
    # One colour per implementation in every panel; bf16/fp16 lighter, compiled hatched.
    colour = {"ours": "#1f77b4", "official": "#2ca02c", "timm": "#ff7f0e", "hf": "#d62728"}

    def style(r: dict) -> dict:
        return {"color": colour.get(r["impl"], "grey"), "alpha": 1.0 if r["dtype"] == "fp32" else 0.55,
                "hatch": "//" if r["compile"] else None}
    cols = 2 if len(panels) > 1 else 1
    for n, panel in enumerate(panels, 1):
        ax = fig.add_subplot((len(panels) + cols - 1) // cols, cols, n)
        if panel == "empty":
            ax.text(0.5, 0.5, "no measurements", ha="center", va="center")
            ax.set_axis_off()
            continue
        if panel in ("inference", "train"):
            rows = [r for r in results if r["section"] == panel]
            groups = sorted({r["batch"] for r in rows}) if panel == "inference" else \
                list(dict.fromkeys(r["task"] for r in rows))
            labels = _labels(rows)
            width = 0.8 / max(len(labels), 1)
            for j, label in enumerate(labels):
                xs, ys, notes, errs = [], [], [], [[], []]
                for g, group in enumerate(groups):
                    match = [r for r in rows if r["label"] == label and
                             (r["batch"] if panel == "inference" else r["task"]) == group]
                    if match:
                        m = match[0]
                        xs.append(g - 0.4 + width * (j + 0.5))
                        ys.append(m["throughput"])
                        notes.append(m.get("vs_official") if m["impl"] == "ours" else None)
                        spread = m.get("throughput_rounds") or [m["throughput"]]
                        errs[0].append(m["throughput"] - min(spread))  # whiskers: slowest to fastest round
                        errs[1].append(max(spread) - m["throughput"])
                first = next(r for r in rows if r["label"] == label)
                bars = ax.bar(xs, ys, width, label=label, edgecolor="white", yerr=errs,
                              error_kw={"elinewidth": 0.8, "capsize": 2, "alpha": 0.6}, **style(first))
                for bar, note, top in zip(bars, notes, errs[1]):
                    if note is not None:  # above the whisker
                        ax.annotate(f"{note:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height() + top),
                                    ha="center", va="bottom", fontsize=7, rotation=90, xytext=(0, 2),
                                    textcoords="offset points")
            ax.set_xticks(range(len(groups)))
            ax.set_xticklabels([f"batch {g}" if panel == "inference" else str(g) for g in groups])
            unit = rows[0]["unit"]
            ax.set_ylabel(unit)
            title = (f"inference, {rows[0]['model']} {_size(rows[0])}" if panel == "inference"
                     else f"training steps, batch {rows[0]['batch']}")
            ax.set_title(title + " (ours: x official; whiskers: rounds)", fontsize=10)
            ax.margins(y=0.15)
            ax.legend(fontsize=7, ncol=2)
        else:
            rows = [r for r in results if r["group"] == panel]
            for label in _labels(rows):
                mine = [r for r in rows if r["label"] == label]
                if panel == "scaling batch":
                    xs = [r["batch"] for r in mine]
                    ax.plot(xs, [r["throughput"] for r in mine], marker="o", label=label,
                            color=style(mine[0])["color"], alpha=style(mine[0])["alpha"])
                    ax.set_xscale("log", base=2)
                    ax.set_xticks(xs)
                    ax.set_xticklabels([str(x) for x in xs])
                    ax.set_xlabel("batch")
                    ax.set_ylabel(mine[0]["unit"])
                else:
                    names = [_size(r) for r in mine]
                    ax.plot(range(len(mine)), [1000.0 / r["throughput"] for r in mine], marker="o", label=label,
                            color=style(mine[0])["color"], alpha=style(mine[0])["alpha"])
                    ax.set_xticks(range(len(mine)))
                    ax.set_xticklabels(names)
                    ax.set_ylabel("ms per item")
            ax.set_ylim(bottom=0)
            ax.set_title(f"{panel}: {rows[0]['model']}", fontsize=10)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    system = record.get("system", {})
    machine = (system.get("gpu") or {}).get("name") or system.get("cpu", "")
    fig.suptitle(f"Hiera implementations, {machine}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# ----------------------------------------------------------------------------------------- CLI
COMPARE_ONLY = ("impl", "variants", "train_variants", "train_batch_size", "task", "rounds", "quick", "plot",
                "scaling", "official_python", "timeout", "optimizer", "kwargs", "scaling_sizes", "scaling_frames",
                "scaling_batches", "scaling_batch", "video_model", "video_batch", "peak_tflops")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The ``--compare`` options of ``hiera benchmark``."""
    g = p.add_argument_group(
        "comparing implementations (--compare)",
        "Time ours, the official package (from its own environment), timm and HF transformers side by side, "
        "interleaved; print markdown tables. --batch-size, --dtype, --mode, --compile, --warmup, --iters / "
        "--min-time (per round), --threads, --device, --input-size and --json apply too. See benchmarks/README.md.")
    g.add_argument("--compare", action="store_true", help="compare implementations instead of timing one model")
    g.add_argument("--impl", nargs="+", choices=IMPLS, default=None,
                   help="implementations (default: every one available); rows are IMPL x --dtype, plus compiled "
                        "copies with --compile")
    g.add_argument("--variants", nargs="+", metavar="IMPL:DTYPE[:compile]", default=None,
                   help="the inference rows exactly, e.g. official:fp32 ours:bf16:compile (overrides --impl/--dtype)")
    g.add_argument("--train-variants", nargs="+", metavar="IMPL:DTYPE[:compile]", default=None,
                   help="the training rows (default: the inference rows)")
    g.add_argument("--train-batch-size", type=int, default=None, metavar="N", help="training batch (default 8)")
    g.add_argument("--task", nargs="+", choices=TASKS, default=None,
                   help="training tasks (default: classify mae)")
    g.add_argument("--rounds", type=int, default=None, help="interleaved rounds per case (default 5; --quick 3)")
    g.add_argument("--quick", action="store_true",
                   help="a short run: 3 rounds of >= 0.5 s, 1 warm-up step, inference batches 1 8")
    g.add_argument("--plot", metavar="FILE.png", help="write a chart of the results")
    g.add_argument("--scaling", action="store_true",
                   help="the cost of ours against input size, clip length and batch (alone, or with the --mode "
                        "sections when --mode is given)")
    g.add_argument("--scaling-sizes", type=int, nargs="+", default=None, metavar="S",
                   help="image sizes (default 224 384 512)")
    g.add_argument("--scaling-batch", type=int, default=None, metavar="N", help="batch of the size rows (default 8)")
    g.add_argument("--video-model", default=None, help="video model of the clip rows (default hiera_base_16x224)")
    g.add_argument("--scaling-frames", type=int, nargs="+", default=None, metavar="T",
                   help="clip lengths (default 8 16)")
    g.add_argument("--video-batch", type=int, default=None, metavar="N", help="batch of the clip rows (default 2)")
    g.add_argument("--scaling-batches", type=int, nargs="+", default=None, metavar="N",
                   help="batches of the batch rows (default 1 4 8 16 32 64)")
    g.add_argument("--official-python", default=None, metavar="PATH",
                   help="python of the official package's environment (default $HIERA_OFFICIAL_PYTHON, else "
                        ".cache/reference/venv/bin/python)")
    g.add_argument("--peak-tflops", type=float, default=None, metavar="T",
                   help="the device's peak TFLOP/s at the compared precision, for model FLOP utilisation "
                        "(default: the matrix-product rate measured at the end of the run)")
    g.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds to wait for a worker's answer (a build includes compilation; default 1800)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="training optimizer (default adamw; adamw-fused is the fused kernel that hiera pretrain "
                        "and hiera finetune use)")
    g.add_argument("--kwargs", default=None, metavar="JSON",
                   help='constructor keyword arguments for every model, e.g. \'{"embed_dim": 48}\' (a smoke test)')


def check_not_compare(args: argparse.Namespace) -> Optional[str]:
    """The first ``--compare`` option given without ``--compare``, if any."""
    for name in COMPARE_ONLY:
        value = getattr(args, name, None)
        if value not in (None, False):
            return "--" + name.replace("_", "-")
    return None


def _given(value, default):
    return default if value is None else value


def cmd_compare(args: argparse.Namespace) -> int:
    """``hiera benchmark --compare``."""
    from ..cli import fail

    def error(msg: str, code: int = 2) -> int:
        return fail("benchmark", msg, code)

    log = (lambda s: None) if args.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    if args.weights is not None or args.mae:
        return error("--compare builds zoo architectures with random weights: drop --weights/--mae "
                     "(use --task mae for MAE training)")
    try:
        overrides = json.loads(args.kwargs) if args.kwargs else {}
    except ValueError as e:
        return error(f"--kwargs is not JSON: {e}")
    if not isinstance(overrides, dict):
        return error("--kwargs must be a JSON object")
    if args.input_size:
        overrides["input_size"] = list(args.input_size)
    if args.scaling and args.mode is None:
        sections = ["scaling"]
    else:
        sections = list(dict.fromkeys(args.mode or ["inference", "train"])) + (["scaling"] if args.scaling else [])
    backend = args.compile or "inductor"
    try:
        launch, missing = launchers(args.official_python)
        if args.variants:
            variants = parse_variants(args.variants, backend)
        else:
            impls = args.impl or [i for i in IMPLS if i in launch and i not in REFERENCES]
            variants = cross_variants(impls, args.dtype or ["fp32", "bf16"], args.compile)
        train_variants = parse_variants(args.train_variants, backend) if args.train_variants else None
        if args.impl and args.variants:
            raise CompareError("give --impl or --variants, not both")
        settings = Settings(
            rounds=_given(args.rounds, 3 if args.quick else 5), iters=args.iters,
            min_time=args.min_time if args.min_time is not None else (0.5 if args.quick else 2.0),
            warmup=args.warmup if args.warmup is not None else (1 if args.quick else 2),
            threads=args.threads, device=args.device or "cpu", optimizer=args.optimizer or "adamw",
            timeout=_given(args.timeout, 1800.0), peak_tflops=args.peak_tflops)
        settings.check()
        if settings.device != "cpu" and not settings.device.startswith("cuda"):
            raise CompareError(f"--device must be cpu or cuda, got {settings.device!r}")
        scaling_variants = None
        if "scaling" in sections:  # eager: ours, or the --impl ones
            scaling_variants = [v for v in variants if not v.compile and (args.impl or v.impl == "ours")]
            scaling_variants = scaling_variants or [Variant("ours", d) for d in (args.dtype or ["fp32"])]
        cases = plan(
            sections=sections, model=args.model or "hiera_small_224", variants=variants,
            batches=args.batch_size or ([1, 8] if args.quick else [1, 8, 32]), train_variants=train_variants,
            train_batch=_given(args.train_batch_size, 8), tasks=args.task or TASKS, overrides=overrides,
            scaling_variants=scaling_variants, scaling_sizes=args.scaling_sizes or (224, 384, 512),
            scaling_batch=_given(args.scaling_batch, 8), video_model=args.video_model or "hiera_base_16x224",
            scaling_frames=args.scaling_frames or (8, 16), video_batch=_given(args.video_batch, 2),
            scaling_batches=args.scaling_batches or (1, 4, 8, 16, 32, 64))
    except CompareError as e:
        return error(str(e))
    if args.plot:
        try:
            import matplotlib  # noqa: F401  (fail now, not after an hour of measuring)
        except ImportError:
            return error("--plot needs matplotlib: pip install matplotlib")
    runnable = [c for c in cases if c.skip is None and c.impl in launch]
    if not runnable:
        reasons = "; ".join(f"{NAMES[k]}: {v}" for k, v in missing.items())
        return error(f"nothing to run: every case is skipped ({reasons or 'unsupported combinations'})", 1)

    record = run_plan(cases, settings, launch, missing, log)
    record["options"] = {k: v for k, v in vars(args).items() if k not in ("func", "command")}
    print(markdown(record))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=2, default=str) + "\n")
        log(f"wrote {path}")
    if args.plot:
        log(f"wrote {plot(record, args.plot)}")
    failed = [r for r in record["results"] if r.get("error")]
    return 1 if failed else 0
