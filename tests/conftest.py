"""Shared pytest fixtures."""

# =============================================================================
# Reference data from the OFFICIAL implementation (hiera-transformer 0.1.4)
# -----------------------------------------------------------------------------
# The official package also imports as `hiera`, so it runs in a private side venv
# (tests/reference/official_env.py) that reuses this environment's torch/timm via a
# .pth file.  tests/reference/generate.py runs there and writes reference files.
#
#   fixtures (session scoped):
#     official_python     Path of the side venv's python (built on first use)
#     official_reference  Path of the generated data directory (zoo.pt, case_*.pt,
#                         hub_official/<case>/, index.json)
#     reference_case      the load_case function below (depends on official_reference)
#   helpers (plain functions, importable with `from conftest import ...`):
#     load_case(name, mmap=False) -> dict     torch.load(case_<name>.pt, weights_only=True)
#     load_zoo() -> dict                      torch.load(zoo.pt, weights_only=True)
#     load_hub_reference(name) -> dict        hub_official/<name>/reference.pt
#     reference_dir() -> Path                 $HIERA_REFERENCE_DIR or <repo>/.cache/reference
#     REFERENCE_CASES, CLASSIFIER_CASES, MAE_CASES, HUB_CASES, ZOO_NAMES  (for parametrize;
#                         read from generate.py without building anything)
#
# Layout of reference_dir():  venv/ (the official env), data/ (OUT_DIR of generate.py,
# with data/.stamp.json), .venv.lock, .data.lock.  The data is regenerated whenever the
# sha256 of generate.py (or the official/torch version) differs from the stamp, under a
# file lock so pytest-xdist workers don't race.  If building fails, the fixtures FAIL
# (never skip) with the underlying error.
# =============================================================================

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

# Under pytest-xdist each worker is its own process: with PyTorch's default of one thread per core
# the workers' OpenMP threads spin against each other and long tests run several times slower.
# One thread per worker (and per process a test starts) keeps the cores shared out.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

_REPO_ROOT = Path(__file__).resolve().parent.parent
_REFERENCE_SRC = Path(__file__).resolve().parent / "reference"
_GENERATE_PY = _REFERENCE_SRC / "generate.py"
_STAMP_NAME = ".stamp.json"


def _load_module_from(name: str, path: Path):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Loaded under private names: neither file may be imported as a top-level `hiera*`/`reference`.
official_env = _load_module_from("_hiera_reference_official_env", _REFERENCE_SRC / "official_env.py")
_generate = _load_module_from("_hiera_reference_generate", _GENERATE_PY)  # imports torch only

REFERENCE_CASES = list(_generate.CASE_NAMES)
CLASSIFIER_CASES = [n for n in REFERENCE_CASES if _generate.CASES[n][0] == "Hiera"]
MAE_CASES = [n for n in REFERENCE_CASES if _generate.CASES[n][0] == "MaskedAutoencoderHiera"]
HUB_CASES = list(_generate.HUB_CASES)
ZOO_NAMES = list(_generate.ZOO_NAMES)


def reference_dir() -> Path:
    """``$HIERA_REFERENCE_DIR`` if set, else ``<repo>/.cache/reference``."""
    env = os.environ.get("HIERA_REFERENCE_DIR")
    return Path(env).absolute() if env else _REPO_ROOT / ".cache" / "reference"


def _expected_stamp() -> dict:
    return {
        "generate_sha256": hashlib.sha256(_GENERATE_PY.read_bytes()).hexdigest(),
        "official_version": official_env.OFFICIAL_VERSION,
        "torch_version": torch.__version__,
    }


def _read_stamp(data_dir: Path):
    try:
        return json.loads((data_dir / _STAMP_NAME).read_text())
    except (OSError, ValueError):
        return None


_reference_state = {}  # per process: {"data": Path} or {"error": Exception}


def ensure_reference_data() -> Path:
    """Build the official env and (re)generate the reference data if stale; return its dir.

    Cached per process (a failure is cached too, so it is reported once per test, fast).
    Raises ``official_env.OfficialEnvError`` (a RuntimeError) on failure.
    """
    if "data" in _reference_state:
        return _reference_state["data"]
    if "error" in _reference_state:
        raise _reference_state["error"]
    try:
        _reference_state["data"] = _build_reference_data()
    except Exception as exc:  # noqa: BLE001 - re-raised, cached for the other tests
        _reference_state["error"] = exc
        raise
    return _reference_state["data"]


def _build_reference_data() -> Path:
    root = reference_dir()
    python = official_env.ensure_official_env(root)
    data = root / "data"
    expected = _expected_stamp()
    if _read_stamp(data) == expected:
        return data
    with official_env.file_lock(root / ".data.lock", timeout=3 * 3600):
        if _read_stamp(data) == expected:  # another process generated it meanwhile
            return data
        tmp = root / f"data.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        official_env.run_official(python, _GENERATE_PY, tmp, timeout=3600)
        (tmp / _STAMP_NAME).write_text(json.dumps(expected, indent=2) + "\n")
        old = root / f"data.old-{os.getpid()}"
        if data.exists():
            os.replace(data, old)
        os.replace(tmp, data)
        shutil.rmtree(old, ignore_errors=True)
    return data


def _fail(what: str, exc: BaseException):
    pytest.fail(f"{what} failed (reference dir {reference_dir()}):\n{type(exc).__name__}: {exc}",
                pytrace=False)


@pytest.fixture(scope="session")
def official_python() -> Path:
    """Python of the side venv where ``import hiera`` is the official hiera-transformer."""
    try:
        return official_env.ensure_official_env(reference_dir())
    except Exception as exc:  # noqa: BLE001
        error = exc
    _fail("building the official hiera environment", error)  # outside `except`: no chained noise


@pytest.fixture(scope="session")
def official_reference(official_python) -> Path:
    """Directory of the reference data generated by tests/reference/generate.py."""
    try:
        return ensure_reference_data()
    except Exception as exc:  # noqa: BLE001
        error = exc
    _fail("generating the official reference data", error)


def load_case(name: str, mmap: bool = False) -> dict:
    """Load ``case_<name>.pt`` (see tests/reference/generate.py for its layout).

    ``mmap=True`` maps the tensors from disk (fast, little memory; the big video cases
    are ~300-400 MB).  Each call returns a fresh object; nothing is cached.
    """
    path = ensure_reference_data() / f"case_{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"no reference case {name!r} ({path}); known: {REFERENCE_CASES}")
    return torch.load(path, weights_only=True, mmap=mmap)


def load_zoo() -> dict:
    """``{constructor_name: {"keys", "shapes", "num_params", "config", "hub_mixin_config",
    "checkpoints", "default", "class"}}`` for the 20 official constructors."""
    return torch.load(ensure_reference_data() / "zoo.pt", weights_only=True)


def load_hub_reference(name: str) -> dict:
    """``hub_official/<name>/reference.pt`` plus ``"dir"`` (the save_pretrained folder) and
    ``"result"`` (result.json: what the official save_pretrained/from_pretrained did)."""
    folder = ensure_reference_data() / "hub_official" / name
    ref = torch.load(folder / "reference.pt", weights_only=True)
    ref["dir"] = folder
    ref["result"] = json.loads((folder / "result.json").read_text())
    return ref


@pytest.fixture(scope="session")
def reference_case(official_reference):
    """The :func:`load_case` function, after making sure the data exists."""
    return load_case

# ============================ end of official-reference section ============================
