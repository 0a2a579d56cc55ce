# Sourced by the run_*.sh scripts: run from the repository root, pick the interpreter ($PYTHON,
# else .venv/bin/python, else python) and the results folder ($OUT, default benchmarks/results).
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python; fi
fi
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
