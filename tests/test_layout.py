"""The package's layout is a checked contract: read every module's imports and check that

* nothing outside ``hiera.cli`` imports the command line;
* the benchmark worker imports nothing from the package (it also runs in the official package's own
  environment, as a script);
* the imports between modules, module-level and inside functions alike, have no loop;
* an import inside a function says why it is there (a comment on its line or the line above).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hiera

ROOT = Path(hiera.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = ["hiera", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str):
    """``(imported module, line, inside a function)`` for every import of a ``hiera`` module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f) if n is not f}
    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            targets = [f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names]
        for target in targets:
            if target == "hiera" or target.startswith("hiera."):
                found.append((target, node.lineno, id(node) in in_function))
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def test_the_reader_sees_the_imports_it_must():
    """The checks below are only as good as this reader: it must see known edges of both kinds."""
    assert "hiera.zoo" in {t for t, _, _ in GRAPH["hiera.cli.common"]}
    assert any(t == "hiera.model" and not inside for t, _, inside in GRAPH["hiera.mae"])
    assert any(t == "hiera.formats.read" for t, _, _ in GRAPH["hiera.zoo"])


def test_nothing_below_the_command_line_imports_it():
    offenders = [f"{name}:{line} imports {target}" for name, edges in GRAPH.items() if not name.startswith("hiera.cli")
                 for target, line, _ in edges if target == "hiera.cli" or target.startswith("hiera.cli.")]
    assert not offenders, offenders


def test_the_benchmark_worker_imports_nothing_from_the_package():
    assert GRAPH["hiera.bench.worker"] == []


def test_no_import_loops():
    edges = {name: {t for t, _, _ in found if t in MODULES and t != name} for name, found in GRAPH.items()}
    # Tarjan's strongly connected components: any component of two or more modules is a loop.
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not loops, loops


def _comment_above(lines, line: int) -> bool:
    """A comment line above the block of imports that ``line`` (1-based) belongs to."""
    for text in reversed(lines[max(0, line - 8): line - 1]):
        text = text.strip()
        if text.startswith("#"):
            return True
        if not text.startswith(("from ", "import ")):
            return False
    return False


def test_an_import_inside_a_function_says_why():
    unexplained = []
    for name, found in GRAPH.items():
        lines = MODULES[name].read_text().splitlines()
        for target, line, inside in found:
            if inside and "#" not in lines[line - 1] and not _comment_above(lines, line):
                unexplained.append(f"{name}:{line} imports {target}")
    assert not unexplained, unexplained


@pytest.mark.parametrize("path", ["hiera.hiera", "hiera.hiera_mae", "hiera.hiera_utils", "hiera.hfhub",
                                  "hiera.benchmarking"])
def test_the_official_import_paths_stay(path):
    assert path in MODULES
