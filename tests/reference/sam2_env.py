"""Build and use a private environment holding the ``sam2`` package (SAM 2's HieraDet trunk).

SAM2's image encoder trunk (``sam2.modeling.backbones.hieradet.Hiera``) is the reference for
our ``hiera.HieraDet``.  The ``sam2`` package (PyPI ``sam2==1.1.0``, an sdist only) is kept
out of the environment that runs our package: it drags in hydra/omegaconf/iopath, and its
setup.py wants to compile a CUDA extension.  This module builds a side venv for it the same
way :mod:`official_env` does for the official ``hiera`` (whose helpers it imports):

* the venv is created from the *base* interpreter, and a ``.pth`` file in its site-packages
  lists the site-packages of the interpreter running this module, so torch, torchvision,
  numpy, tqdm, pillow, PyYAML, packaging, typing_extensions are the host's (no second torch);
* the only packages installed into it are :data:`BUILD_REQUIREMENTS` and
  :data:`REQUIREMENTS`, all with ``--no-deps`` (so pip never touches torch), exactly pinned:
  what ``import sam2.modeling.backbones.hieradet`` needs on top of the host environment
  (``import sam2`` initialises hydra; ``hieradet.py`` imports ``iopath``);
* ``sam2`` is built from its sdist with ``SAM2_BUILD_CUDA=0`` (the variable its setup.py
  reads: no ``sam2._C`` CUDA extension, which only SAM2's mask post-processing uses) and
  ``--no-build-isolation`` (its ``[build-system]`` asks for ``torch>=2.5.1``, which an
  isolated build would try to download; the host's torch is used instead).

The downloaded files are kept in ``ROOT/wheelhouse`` (or ``$HIERA_SAM2_WHEELHOUSE``) and
installed from there with ``--no-index``: once they are there, (re)building the venv needs no
network.  To prepare an offline machine, copy a wheelhouse holding the files of
:data:`BUILD_REQUIREMENTS` + :data:`REQUIREMENTS` (``pip download --no-deps`` of each) there.

Everything is idempotent (a marker file records a finished build and what it was built
against) and guarded by a lock file.  Note: PyPI's ``sam2`` is not published by Meta (its
metadata names a third-party uploader); its ``sam2/modeling/backbones/hieradet.py`` is Meta's
file from facebookresearch/sam2 (the SAM 2.1 version, with ``weights_path``).

This file is also a CLI::

    python tests/reference/sam2_env.py ROOT     # builds ROOT/venv, prints its python

The reference script that runs inside the env is ``tests/reference/sam2_reference.py``
(see :func:`run_sam2_reference`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence, Union

_HERE = Path(__file__).resolve().parent


def _load_official_env():
    # The same private module name as tests/conftest.py uses, so the module is loaded once.
    name = "_hiera_reference_official_env"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _HERE / "official_env.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


official_env = _load_official_env()
OfficialEnvError = official_env.OfficialEnvError
file_lock = official_env.file_lock

SAM2_DIST = "sam2"
SAM2_VERSION = "1.1.0"
# Needed to BUILD the sdist without isolation (setuptools >= 70.1 builds wheels by itself,
# without the `wheel` package; the venv's bundled setuptools may be older or absent).
BUILD_REQUIREMENTS = ("setuptools==80.9.0",)
# What `import sam2.modeling.backbones.hieradet` needs beyond the host environment:
#   sam2/__init__.py              -> hydra (hydra-core -> omegaconf, antlr4 4.9.*, packaging)
#   omegaconf                     -> antlr4-python3-runtime 4.9.*, PyYAML (host)
#   modeling/backbones/hieradet   -> iopath (-> portalocker, tqdm (host), typing_extensions (host))
#   modeling/sam2_utils, utils/misc -> numpy, PIL, tqdm (host)
REQUIREMENTS = (
    "hydra-core==1.3.2",
    "omegaconf==2.3.0",
    "antlr4-python3-runtime==4.9.3",
    "iopath==0.1.10",
    "portalocker==3.2.0",
    f"{SAM2_DIST}=={SAM2_VERSION}",
)
MARKER_NAME = ".hiera-sam2-env.json"
PTH_NAME = official_env.PTH_NAME
MARKER_FORMAT = 1
REFERENCE_SCRIPT = _HERE / "sam2_reference.py"

PathLike = Union[str, os.PathLike]


class Sam2EnvError(OfficialEnvError):
    """Building or running the sam2 environment failed."""


def _build_env() -> dict:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    env["SAM2_BUILD_CUDA"] = "0"  # read by sam2's setup.py: no CUDA extension
    env["SAM2_BUILD_ALLOW_ERRORS"] = "0"  # ... and fail loudly on anything else
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    env["PIP_NO_INPUT"] = "1"
    return env


def wheelhouse_dir(root: PathLike) -> Path:
    env = os.environ.get("HIERA_SAM2_WHEELHOUSE")
    return Path(env).absolute() if env else Path(root).absolute() / "wheelhouse"


def _expected_marker() -> dict:
    return {
        "format": MARKER_FORMAT,
        "dist": SAM2_DIST,
        "version": SAM2_VERSION,
        "requirements": list(BUILD_REQUIREMENTS + REQUIREMENTS),
        "base_interpreter": os.path.realpath(official_env.base_interpreter()),
        "host_site_dirs": official_env.host_site_dirs(),
    }


def _read_marker(venv: Path) -> Optional[dict]:
    try:
        data = json.loads((venv / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return {k: data.get(k) for k in _expected_marker()}


_VERIFY_CODE = r"""
import json, sys, importlib.metadata as md
import torch
import sam2
from sam2.modeling.backbones.hieradet import Hiera
try:
    import sam2._C  # noqa: F401
    has_c = True
except ImportError:
    has_c = False
m = Hiera(embed_dim=8, num_heads=1, stages=[1, 1, 2, 1], global_att_blocks=[3],
          window_pos_embed_bkg_spatial_size=[2, 2], window_spec=[2, 2, 2, 2])
out = m(torch.zeros(1, 3, 32, 32))
print(json.dumps({
    "sam2_file": sam2.__file__,
    "version": md.version("sam2"),
    "has_cuda_extension": has_c,
    "smoke_shapes": [list(o.shape) for o in out],
    "torch": torch.__version__,
    "torch_file": torch.__file__,
    "versions": {d: md.version(d) for d in
                 ("hydra-core", "omegaconf", "antlr4-python3-runtime", "iopath", "portalocker")},
    "prefix": sys.prefix,
}))
"""


def verify_sam2_env(python: PathLike, venv: Optional[PathLike] = None) -> dict:
    """Check that ``python`` imports sam2's HieraDet from inside its venv and runs it. Returns facts."""
    python = Path(python)
    venv = Path(venv) if venv is not None else python.parent.parent
    try:
        out = official_env._check_output([str(python), "-I", "-c", _VERIFY_CODE], timeout=300)
        info = json.loads(out.strip().splitlines()[-1])
    except (OfficialEnvError, ValueError, IndexError) as exc:
        raise Sam2EnvError(f"the sam2 env at {venv} is not usable "
                           f"(import sam2.modeling.backbones.hieradet failed):\n{exc}") from exc
    sam2_file = Path(info["sam2_file"]).resolve()
    if venv.resolve() not in sam2_file.parents:
        raise Sam2EnvError(f"in the sam2 env {venv}, `import sam2` resolved to {sam2_file}, outside the venv")
    if info["version"] != SAM2_VERSION or info["has_cuda_extension"]:
        raise Sam2EnvError(f"unexpected sam2 in {venv}: {info}")
    return info


def _pip(python: Path, *args: str, timeout: float = 900) -> str:
    return official_env._check_output([str(python), "-m", "pip", *args], timeout=timeout, env=_build_env())


def _fill_wheelhouse(python: Path, wheelhouse: Path, reqs: Sequence[str], log) -> None:
    """Make sure ``wheelhouse`` holds a file for each of ``reqs`` (downloads what is missing).

    Preparing an sdist's metadata runs its build backend in the venv (``--no-build-isolation``),
    so :data:`BUILD_REQUIREMENTS` must be installed before the sdists are fetched.
    """
    wheelhouse.mkdir(parents=True, exist_ok=True)
    reqs = list(reqs)
    common = ["download", "--no-deps", "--no-build-isolation", "-d", str(wheelhouse)]
    try:  # offline: everything already there?
        _pip(python, *common, "--no-index", "--find-links", str(wheelhouse), *reqs)
        return
    except OfficialEnvError:
        pass
    log(f"downloading {' '.join(reqs)} into {wheelhouse}")
    try:
        _pip(python, *common, *reqs)
    except OfficialEnvError as exc:
        present = sorted(p.name for p in wheelhouse.iterdir()) if wheelhouse.is_dir() else []
        everything = " ".join(BUILD_REQUIREMENTS + REQUIREMENTS)
        raise Sam2EnvError(
            f"could not download {' '.join(reqs)} into {wheelhouse} (is the package index reachable? "
            f"the wheelhouse holds {present or 'nothing'}; to build offline, put the files of "
            f"`pip download --no-deps {everything}` there, or point HIERA_SAM2_WHEELHOUSE at a folder "
            f"holding them)\n{exc}"
        ) from exc


def ensure_sam2_env(root: PathLike, *, quiet: bool = True, lock_timeout: float = 3600.0) -> Path:
    """Return the python of ``root/venv``, a venv where ``import sam2`` is sam2 1.1.0 (no CUDA ext).

    Builds the venv if needed (see module docstring).  Raises :class:`Sam2EnvError` (a
    ``RuntimeError``) with the underlying output if anything fails.
    """
    root = Path(root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    venv = root / "venv"
    python = official_env.venv_python(venv)
    expected = _expected_marker()

    def log(msg: str) -> None:
        if not quiet:
            print(f"[sam2_env] {msg}", file=sys.stderr, flush=True)

    if _read_marker(venv) == expected and python.exists():
        return python

    with file_lock(root / ".venv.lock", timeout=lock_timeout):
        if _read_marker(venv) == expected and python.exists():
            return python

        t0 = time.time()
        if venv.exists():
            log(f"removing stale/incomplete env {venv}")
            shutil.rmtree(venv)
        base = official_env.base_interpreter()
        log(f"creating venv {venv} from base interpreter {base}")
        try:
            official_env._check_output([base, "-m", "venv", str(venv)], timeout=600)
        except OfficialEnvError as exc:
            raise Sam2EnvError(f"could not create the venv {venv}:\n{exc}") from exc
        if not python.exists():
            raise Sam2EnvError(f"`{base} -m venv {venv}` did not create {python}")

        site_packages = official_env._venv_site_packages(python)
        site_packages.mkdir(parents=True, exist_ok=True)
        (site_packages / PTH_NAME).write_text(
            "# Added by tests/reference/sam2_env.py: the host environment's site-packages\n"
            "# (torch, torchvision, numpy, PIL, ...). Appended AFTER this venv's own site-packages.\n"
            + "".join(d + "\n" for d in expected["host_site_dirs"])
        )

        wheelhouse = wheelhouse_dir(root)
        offline = ["install", "--no-deps", "--no-index", "--find-links", str(wheelhouse)]
        try:
            _fill_wheelhouse(python, wheelhouse, BUILD_REQUIREMENTS, log)
            log(f"pip install --no-deps {' '.join(BUILD_REQUIREMENTS)}")
            _pip(python, *offline, *BUILD_REQUIREMENTS)
            _fill_wheelhouse(python, wheelhouse, REQUIREMENTS, log)
            log(f"SAM2_BUILD_CUDA=0 pip install --no-deps --no-build-isolation {' '.join(REQUIREMENTS)}")
            _pip(python, *offline, "--no-build-isolation", *REQUIREMENTS)
        except Sam2EnvError:
            raise
        except OfficialEnvError as exc:
            raise Sam2EnvError(f"could not install the sam2 environment's packages into {venv} "
                               f"from {wheelhouse}:\n{exc}") from exc

        info = verify_sam2_env(python, venv)
        marker = dict(expected, built_at=time.strftime("%Y-%m-%dT%H:%M:%S"),
                      build_seconds=round(time.time() - t0, 2), verified=info)
        (venv / (MARKER_NAME + ".tmp")).write_text(json.dumps(marker, indent=2))
        os.replace(venv / (MARKER_NAME + ".tmp"), venv / MARKER_NAME)
        log(f"sam2 env ready in {time.time() - t0:.1f}s: {python}")
        return python


# --------------------------------------------------------------------------- running


def run_sam2_reference(python: PathLike, request: dict, out: PathLike, *, timeout: float = 1800,
                       echo: bool = False) -> dict:
    """Run ``sam2_reference.py`` in the sam2 env on ``request``; return what it wrote to ``out``.

    The result is ``torch.load(out, weights_only=True)`` (see sam2_reference.py for its layout).
    Raises :class:`Sam2EnvError` if the script fails.
    """
    import torch  # the host's; only needed to read the result

    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out.parent, delete=False) as fh:
        json.dump(request, fh)
        request_file = fh.name
    try:
        official_env.run_official(python, REFERENCE_SCRIPT, out, "--request", request_file,
                                  timeout=timeout, echo=echo)
    except OfficialEnvError as exc:
        raise Sam2EnvError(f"sam2_reference.py failed on request {json.dumps(request)[:2000]}:\n{exc}") from exc
    finally:
        os.unlink(request_file)
    return torch.load(out, weights_only=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="directory to hold the env (the venv goes to ROOT/venv, downloads to "
                                     "ROOT/wheelhouse)")
    ns = parser.parse_args(argv)
    t0 = time.time()
    try:
        python = ensure_sam2_env(ns.root, quiet=False)
    except OfficialEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"[sam2_env] done in {time.time() - t0:.1f}s", file=sys.stderr)
    print(python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
