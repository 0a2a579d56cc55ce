"""How a comparison runs: worker processes, interleaved rounds, and a result per case.

How it measures (why each choice):

* One worker process per implementation and case (:mod:`hiera.bench.worker`), importing only torch
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
"""

from __future__ import annotations

import collections
import dataclasses
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
from typing import Callable, Dict, List, Optional, Tuple

from . import worker
from .plan import NAMES, REFERENCES, Case, Settings, add_flops, measure_peak
from .report import add_ratios, make_record

WORKER = Path(worker.__file__).resolve()  # run as a script, by path: see Launcher.command
OFFICIAL_ENV_HELP = ("the official package runs from its own environment; build it once with "
                     "`python tests/reference/official_env.py .cache/reference` (from the repository root), "
                     "or point --official-python / $HIERA_OFFICIAL_PYTHON at a python that imports "
                     "hiera-transformer")


# ----------------------------------------------------------------------------------------- workers
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
        "latency_ms_p90": worker.percentile(steps, 90),
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


def run_plan(cases: List[Case], settings: Settings, launch: Optional[Dict[str, Launcher]] = None,
             missing: Optional[Dict[str, str]] = None, log: Log = lambda s: None,
             start: Optional[Callable[[Case], Worker]] = None) -> dict:
    """Measure every group of ``cases``; return the record (see :func:`hiera.bench.report.make_record`)."""
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
