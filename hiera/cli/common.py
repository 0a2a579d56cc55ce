"""What every command shares: one-line errors, Ctrl-C, ``--device`` and ``--threads``.

A user error ends a command with ``hiera COMMAND: error: MESSAGE`` on stderr and exit code 1
(2 for bad arguments, as argparse; 130 for Ctrl-C), never a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable, Sequence, Tuple, Type

import torch

from ..data.media import Skipped
from ..devices import DEVICE_HELP
from ..weights import CheckpointError
from ..zoo import load_model

# What a command turns into one line: bad values and files, unreadable checkpoints, a model that
# does not fit the input. Anything else is a bug and keeps its traceback.
USER_ERRORS: Tuple[Type[BaseException], ...] = (CheckpointError, ValueError, OSError)


def fail(command: str, message, code: int = 1) -> int:
    """Report a user error as one line, ``hiera COMMAND: error: MESSAGE``, and return the exit code."""
    print(f"hiera {command}: error: {message}", file=sys.stderr)
    return code


def one_line(error) -> str:
    """An exception (or text) as one line: an OS error's reason and file, else its message."""
    if isinstance(error, OSError) and error.strerror and not isinstance(error, FileNotFoundError):
        text = f"{error.strerror}: {error.filename}" if error.filename else error.strerror
    else:
        text = str(error) or type(error).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def interrupted(command: str, message: str = "interrupted") -> int:
    """Ctrl-C: one line on stderr and exit code 130 (the shell's code for SIGINT)."""
    sys.stdout.flush()
    # A progress bar on a terminal may leave the cursor mid-line: start a fresh one.
    lead = "\n" if sys.stderr.isatty() else ""
    print(f"{lead}hiera {command}: {message}", file=sys.stderr)
    return 130


def exit_on_interrupt(command: str):
    """Decorate a command so that Ctrl-C ends it with :func:`interrupted` instead of a traceback.
    Outputs are written whole or not at all, so nothing half-written is left behind."""
    def wrap(run: Callable) -> Callable:
        @functools.wraps(run)
        def guarded(args) -> int:
            try:
                return run(args)
            except KeyboardInterrupt:
                return interrupted(command)
        return guarded
    return wrap


def guard(command: str, run: Callable[[], int], errors: Tuple[Type[BaseException], ...] = ()) -> int:
    """Run a command body: user errors (:data:`USER_ERRORS` and ``errors``) end in one line and exit
    code 1, Ctrl-C in 130, running out of memory in a line that says what to lower."""
    try:
        return run()
    except KeyboardInterrupt as e:  # a run that stops mid-way says where its last checkpoint is
        return fail(command, one_line(e) if str(e) else "interrupted; nothing was written", 130)
    except (*USER_ERRORS, *errors) as e:
        return fail(command, one_line(e))
    except torch.OutOfMemoryError as e:
        return fail(command, f"out of memory ({one_line(e)[:200]}); lower --batch-size, or use --accum, "
                             "--grad-checkpointing or --precision bf16")


THREADS_HELP = ("CPU threads for PyTorch (default: its own choice, one per core); give fewer when other jobs hold "
                "cores, as two threads on two busy cores run many times slower")


def set_threads(args) -> None:
    """``--threads N``: asked for on the command line, so the process-wide setting is the user's."""
    threads = getattr(args, "threads", None)
    if threads is not None:
        if isinstance(threads, bool) or threads < 1:
            raise ValueError(f"--threads must be a whole number >= 1, got {threads}")
        torch.set_num_threads(threads)


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model`` / ``--weights`` / ``--device``, the same for every tool (both go to
    :func:`hiera.load_model`)."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", metavar="NAME",
                       help="zoo name (e.g. hiera_base_224, hiera_base_224.mae_in1k_ft_in1k) or Hub repo id; "
                            "with --weights: the architecture of the weights")
    group.add_argument("--weights", "-w", metavar="PATH",
                       help="weights file or save_pretrained folder (official .pth, safetensors, timm, "
                            "transformers, our training checkpoints)")
    group.add_argument("--device", default="auto", help=DEVICE_HELP)


def load_model_or_fail(args: argparse.Namespace, command: str, need_head: bool = False):
    """``(load_model(args.model, args.weights), 0)``, or ``(None, exit code)`` after a one-line error.
    ``need_head``: refuse weights whose classification head was not loaded (see ``load_model``)."""
    if args.model is None and args.weights is None:
        return None, fail(command, "say which model: --model NAME (see `hiera zoo`) or --weights PATH")
    try:
        return load_model(model=args.model, weights=args.weights, need_head=need_head), 0
    except KeyboardInterrupt:
        raise
    except Exception as e:  # whatever the cause (missing file, bad config, network), one clear line
        what = str(args.weights or args.model)
        message = str(e) if str(e).startswith((what, "could not get ")) else f"could not load the model {what}: {e}"
        return None, fail(command, one_line(message))


def report_skipped(skipped: Sequence[Skipped], done: int, what: str, stream=None) -> None:
    """One stderr line per skipped input, then a count, so a partial run is never silent."""
    stream = stream or sys.stderr
    for s in skipped:
        print(f"skipped {s.path}: {s.reason}", file=stream)
    if skipped:
        print(f"{done} {what}, {len(skipped)} skipped", file=stream)
