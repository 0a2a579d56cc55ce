"""Build and use a private environment holding the OFFICIAL ``hiera`` package.

The official implementation (``hiera-transformer`` on PyPI) also imports as ``hiera``,
so it can never live in the environment that runs our package.  This module builds a
tiny side venv in which ``import hiera`` is the official release, *without* a second
copy of torch:

* the venv is created from the *base* interpreter (no ``--system-site-packages``);
* a ``.pth`` file in the venv's site-packages lists the site-packages directories of
  the interpreter running this module (the ones holding torch, timm, huggingface_hub,
  safetensors, numpy, ...).  Lines of a ``.pth`` are appended to ``sys.path`` AFTER the
  venv's own site-packages, so the official ``hiera`` installed there shadows ours.
  (Plain directory lines are not processed as site dirs, so the editable-install
  finder ``.pth`` files of our own environment are NOT activated in the side venv.)
* ``pip install --no-deps hiera-transformer==0.1.4`` goes into the venv.

Everything is idempotent (a marker file records a finished build and what it was built
against) and guarded by a lock file so that concurrent builders (pytest-xdist
workers, several sessions) do not race.

This file is also a CLI::

    python tests/reference/official_env.py ROOT     # builds ROOT/venv, prints its python

Set ``HIERA_OFFICIAL_WHEEL=/path/to/hiera_transformer-0.1.4-py3-none-any.whl`` to install
from a local wheel instead of the package index (offline machines).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

OFFICIAL_DIST = "hiera-transformer"
OFFICIAL_VERSION = "0.1.4"
MARKER_NAME = ".hiera-official-env.json"
PTH_NAME = "_hiera_host_site_packages.pth"
MARKER_FORMAT = 1

# Modules the official package (and the reference generator) need from the host
# environment; the site-packages directories holding them are put on the side venv's path.
HOST_MODULES = (
    "torch",
    "torchvision",
    "timm",
    "huggingface_hub",
    "safetensors",
    "tqdm",
    "packaging",
    "numpy",
    "yaml",
    "filelock",
    "fsspec",
    "typing_extensions",
    "sympy",
    "networkx",
    "jinja2",
)

PathLike = Union[str, os.PathLike]


class OfficialEnvError(RuntimeError):
    """Building or running the official-hiera environment failed."""


# --------------------------------------------------------------------------- locking


@contextlib.contextmanager
def file_lock(path: PathLike, timeout: float = 3600.0, poll: float = 0.5) -> Iterator[None]:
    """Exclusive inter-process lock on ``path`` (created if missing).

    Uses ``fcntl.flock`` on POSIX (released by the kernel if the holder dies) and
    falls back to the ``filelock`` package elsewhere.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        import filelock

        with filelock.FileLock(str(path), timeout=timeout):
            yield
        return

    deadline = time.monotonic() + timeout
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not acquire lock {path} within {timeout:.0f}s")
                time.sleep(poll)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------- helpers


def base_interpreter() -> str:
    """The interpreter this (possibly virtual) environment was created from."""
    base = getattr(sys, "_base_executable", None) or sys.executable
    if not os.path.exists(base):  # pragma: no cover - unusual layouts
        base = sys.executable
    return base


def host_site_dirs() -> list:
    """Site-packages directories of the *current* interpreter, deduplicated, in order.

    First the directories actually holding :data:`HOST_MODULES` (found without
    importing them), then the interpreter's remaining site-packages directories so
    that transitive dependencies resolve too.
    """
    dirs = []

    def add(d: Optional[str]) -> None:
        if not d:
            return
        d = os.path.realpath(d)
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)

    for name in HOST_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        if spec.submodule_search_locations:  # package: <sitedir>/<name>/
            for loc in spec.submodule_search_locations:
                add(os.path.dirname(loc))
                break
        elif spec.origin and spec.origin not in ("built-in", "frozen"):
            add(os.path.dirname(spec.origin))

    try:
        for d in site.getsitepackages():
            add(d)
    except AttributeError:  # pragma: no cover - very old virtualenv
        pass
    if site.ENABLE_USER_SITE:
        add(site.getusersitepackages())
    return dirs


def venv_python(venv: PathLike) -> Path:
    venv = Path(venv)
    if os.name == "nt":  # pragma: no cover
        return venv / "Scripts" / "python.exe"
    return venv / "bin" / "python"


def _venv_site_packages(python: Path) -> Path:
    out = _check_output([str(python), "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    return Path(out.strip())


def _check_output(cmd: Sequence[str], timeout: float = 900, env=None) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise OfficialEnvError(f"command timed out after {timeout}s: {' '.join(cmd)}") from exc
    if proc.returncode != 0:
        raise OfficialEnvError(
            f"command failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}"
        )
    return proc.stdout


def _tail(text: Optional[str], limit: int = 8000) -> str:
    text = text or ""
    return text if len(text) <= limit else "...[truncated]...\n" + text[-limit:]


def _expected_marker() -> dict:
    return {
        "format": MARKER_FORMAT,
        "dist": OFFICIAL_DIST,
        "version": OFFICIAL_VERSION,
        "base_interpreter": os.path.realpath(base_interpreter()),
        "host_site_dirs": host_site_dirs(),
        "wheel": os.environ.get("HIERA_OFFICIAL_WHEEL") or None,
    }


_MARKER_KEYS = ("format", "dist", "version", "base_interpreter", "host_site_dirs", "wheel")


def _read_marker(venv: Path) -> Optional[dict]:
    """The identifying part of a finished build's marker (None if there is none)."""
    try:
        data = json.loads((venv / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in _MARKER_KEYS}


_VERIFY_CODE = r"""
import json, sys, importlib.metadata as md
import hiera, timm, torch
print(json.dumps({
    "hiera_file": hiera.__file__,
    "version": md.version("hiera-transformer"),
    "has_constructors": all(hasattr(hiera, n) for n in ("hiera_tiny_224", "mae_hiera_tiny_224", "Hiera", "MaskedAutoencoderHiera")),
    "torch": torch.__version__,
    "torch_file": torch.__file__,
    "timm": timm.__version__,
    "prefix": sys.prefix,
}))
"""


def verify_official_env(python: PathLike, venv: Optional[PathLike] = None) -> dict:
    """Check that ``python`` imports the official hiera from inside its venv. Returns facts."""
    python = Path(python)
    venv = Path(venv) if venv is not None else python.parent.parent
    try:
        out = _check_output([str(python), "-I", "-c", _VERIFY_CODE], timeout=300)
        info = json.loads(out.strip().splitlines()[-1])
    except (OfficialEnvError, ValueError, IndexError) as exc:
        raise OfficialEnvError(f"the official-hiera env at {venv} is not usable "
                               f"(import hiera/timm/torch failed):\n{exc}") from exc
    hiera_file = Path(info["hiera_file"]).resolve()
    if venv.resolve() not in hiera_file.parents:
        raise OfficialEnvError(
            f"in the official env {venv}, `import hiera` resolved to {hiera_file}, which is "
            f"not inside the venv (our own package is shadowing the official one?)"
        )
    if info["version"] != OFFICIAL_VERSION or not info["has_constructors"]:
        raise OfficialEnvError(f"unexpected official hiera in {venv}: {info}")
    return info


# --------------------------------------------------------------------------- building


def ensure_official_env(root: PathLike, *, quiet: bool = True, lock_timeout: float = 3600.0) -> Path:
    """Return the python of ``root/venv``, a venv where ``import hiera`` is the official 0.1.4.

    Builds the venv if needed (see module docstring).  Raises :class:`OfficialEnvError`
    (a ``RuntimeError``) with the underlying output if anything fails, e.g. when pip
    cannot reach the package index.
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    python = venv_python(venv)
    expected = _expected_marker()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[official_env] {msg}", file=sys.stderr, flush=True)

    # Fast path without the lock: a finished build never changes afterwards.
    if _read_marker(venv) == expected and python.exists():
        return python

    with file_lock(root / ".venv.lock", timeout=lock_timeout):
        if _read_marker(venv) == expected and python.exists():
            return python

        t0 = time.time()
        if venv.exists():
            log(f"removing stale/incomplete env {venv}")
            shutil.rmtree(venv)

        base = base_interpreter()
        log(f"creating venv {venv} from base interpreter {base}")
        _check_output([base, "-m", "venv", str(venv)], timeout=600)
        if not python.exists():
            raise OfficialEnvError(f"`{base} -m venv {venv}` did not create {python}")

        site_packages = _venv_site_packages(python)
        site_packages.mkdir(parents=True, exist_ok=True)
        (site_packages / PTH_NAME).write_text(
            "# Added by tests/reference/official_env.py: the host environment's site-packages\n"
            "# (torch, timm, huggingface_hub, ...). Appended AFTER this venv's own site-packages,\n"
            "# so the official `hiera` installed here shadows any other `hiera`.\n"
            + "".join(d + "\n" for d in expected["host_site_dirs"])
        )

        target = expected["wheel"] or f"{OFFICIAL_DIST}=={OFFICIAL_VERSION}"
        log(f"pip install --no-deps {target}")
        try:
            _check_output(
                [str(python), "-m", "pip", "install", "--no-deps", "--no-input",
                 "--disable-pip-version-check", target],
                timeout=900,
            )
        except OfficialEnvError as exc:
            raise OfficialEnvError(
                f"could not install the official package ({target}) into {venv}; is the "
                f"package index reachable? (set HIERA_OFFICIAL_WHEEL to a local wheel to "
                f"install offline)\n{exc}"
            ) from exc

        info = verify_official_env(python, venv)
        marker = dict(expected, built_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      build_seconds=round(time.time() - t0, 2), verified=info)
        (venv / (MARKER_NAME + ".tmp")).write_text(json.dumps(marker, indent=2))
        os.replace(venv / (MARKER_NAME + ".tmp"), venv / MARKER_NAME)
        log(f"official env ready in {time.time() - t0:.1f}s: {python}")
        return python


# --------------------------------------------------------------------------- running


def run_official(
    python: PathLike,
    script: Optional[PathLike] = None,
    *args: Union[str, os.PathLike],
    code: Optional[str] = None,
    timeout: float = 1800,
    cwd: Optional[PathLike] = None,
    echo: bool = False,
    env: Optional[dict] = None,
) -> subprocess.CompletedProcess:
    """Run ``script`` (or the code string ``code``) with the official env's ``python``.

    The interpreter runs isolated (``-I``: no PYTHONPATH, no user site, and neither the
    script's directory nor the cwd is put on ``sys.path``), so ``import hiera`` can only
    resolve to the official package, whatever ``cwd`` is (default: inherited).
    With ``echo=True`` the child's stdout/stderr are also streamed to ours (stderr) as
    they arrive.  Raises :class:`OfficialEnvError` (including the captured stderr and the
    tail of stdout) if the process fails or times out.
    """
    # absolute, but NOT resolved: the venv's python is a symlink to the base interpreter
    python = Path(os.path.abspath(python))
    if (script is None) == (code is None):
        raise ValueError("pass exactly one of `script` or `code`")
    cmd = [str(python), "-I"]
    cmd += ["-c", code] if code is not None else [str(Path(script).absolute())]
    cmd += [str(a) for a in args]
    run_env = dict(os.environ if env is None else env)
    run_env.pop("PYTHONPATH", None)
    run_env.setdefault("PYTHONUNBUFFERED", "1")

    proc = subprocess.Popen(cmd, cwd=None if cwd is None else str(cwd), env=run_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    chunks = {"out": [], "err": []}

    def pump(stream, key):
        for line in iter(stream.readline, ""):
            chunks[key].append(line)
            if echo:
                sys.stderr.write(line)
                sys.stderr.flush()
        stream.close()

    threads = [threading.Thread(target=pump, args=(proc.stdout, "out"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "err"), daemon=True)]
    for t in threads:
        t.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for t in threads:
            t.join(5)
        raise OfficialEnvError(
            f"official-env command timed out after {timeout}s: {' '.join(cmd[:3])} ...\n"
            f"--- stdout ---\n{_tail(''.join(chunks['out']))}\n"
            f"--- stderr ---\n{_tail(''.join(chunks['err']))}"
        )
    for t in threads:
        t.join()
    out, err = "".join(chunks["out"]), "".join(chunks["err"])
    if rc != 0:
        what = f"script {script}" if script is not None else "code string"
        raise OfficialEnvError(
            f"official-env {what} failed (exit {rc}); command: {' '.join(cmd[:3])} ...\n"
            f"--- stdout (tail) ---\n{_tail(out)}\n--- stderr ---\n{_tail(err)}"
        )
    return subprocess.CompletedProcess(cmd, rc, out, err)


def run_official_code(python: PathLike, code: str, *args, **kwargs) -> subprocess.CompletedProcess:
    """Shorthand for ``run_official(python, None, *args, code=code, ...)``."""
    return run_official(python, None, *args, code=code, **kwargs)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="directory to hold the env (the venv goes to ROOT/venv)")
    ns = parser.parse_args(argv)
    t0 = time.time()
    try:
        python = ensure_official_env(ns.root, quiet=False)
    except OfficialEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[official_env] done in {time.time() - t0:.1f}s", file=sys.stderr)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
