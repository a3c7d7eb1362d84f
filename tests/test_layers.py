"""The package's architecture: five layers, imports only downward, no cycles, no kind branches.

    components < models < inference < training < runs        (docs/DESIGN.md)

A module may import from its own layer and those below; inference works on any model/guide
pair, so it imports nothing from models either. Imports are read from the source (every
``import`` statement at any depth, ``TYPE_CHECKING`` blocks excepted), as the hooks' import
graph does.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pyrovae"
LAYERS = ("components", "models", "inference", "training", "runs")
FORBIDDEN = {"inference": {"models"}}  # besides everything above a layer


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def imported_modules(module: str) -> set[str]:
    """The pyrovae modules ``module`` imports (resolved to the deepest existing module)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    found = set()

    def visit(node, in_type_checking=False):
        for child in ast.iter_child_nodes(node):
            guarded = in_type_checking or (isinstance(child, ast.If)
                                           and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, (ast.Import, ast.ImportFrom)) and not guarded:
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                else:
                    base = child.module or ""
                    if child.level:
                        here = module.split(".") if path.name == "__init__.py" \
                            else module.split(".")[:-1]
                        base = ".".join(here[:len(here) - child.level + 1] + [base] * bool(base))
                    names = [base] + [f"{base}.{a.name}" for a in child.names]
                for name in names:
                    while name and name not in MODULES:
                        name = name.rpartition(".")[0]
                    if name and name not in (module, "pyrovae"):
                        found.add(name)
            visit(child, guarded)

    visit(tree)
    return found


GRAPH = {m: imported_modules(m) for m in MODULES}


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if layer_of(m) is None
             and m not in ("pyrovae", "pyrovae.__main__", *(f"pyrovae.{x}" for x in LAYERS))]
    assert not loose, f"modules outside the layers: {loose}"


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_from_itself_and_below(layer):
    allowed = set(LAYERS[:LAYERS.index(layer) + 1]) - FORBIDDEN.get(layer, set())
    upward = sorted(f"{m} imports {t}" for m in MODULES if layer_of(m) == layer
                    for t in GRAPH[m] if layer_of(t) is not None and layer_of(t) not in allowed)
    assert not upward, "\n".join(upward)


def test_the_check_finds_an_upward_import(tmp_path):
    """The parser sees function-level imports too (the kind that hid a cycle before)."""
    source = "def f():\n    from pyrovae.runs.train import train_run\n"
    tree = ast.parse(source)
    assert any(isinstance(n, ast.ImportFrom) and n.module == "pyrovae.runs.train"
               for n in ast.walk(tree))
    assert "pyrovae.runs.train" in GRAPH["pyrovae.runs.cli"]  # imported inside a function


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def strongly_connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                strongly_connect(w)
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
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            strongly_connect(module)
    assert not cycles, cycles


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_come_before_the_code(module):
    """No import at the bottom of a file (one that works only because of import order)."""
    body = ast.parse(MODULES[module].read_text()).body
    seen_code = False
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            seen_code = True
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            assert not seen_code, f"{module}: import after code at line {node.lineno}"


def test_only_the_jobs_know_the_model_kinds():
    """Nothing outside a job's module compares the model kind with a name."""
    pattern = re.compile(r"""[!=]=\s*["'](vae|cvae)["']|["'](vae|cvae)["']\s*[!=]=""")
    offenders = [f"{m}:{n}" for m, path in MODULES.items() if not m.endswith("_job")
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if pattern.search(line)]
    assert not offenders, offenders


def test_importing_pyrovae_selects_no_matplotlib_backend():
    code = ("import sys, matplotlib, pyrovae; "
            "assert 'matplotlib.pyplot' not in sys.modules; "
            "assert matplotlib.rcParams._get_backend_or_none() is None")
    subprocess.run([sys.executable, "-c", code], check=True)
