"""The shape of the package: the core stands alone, imports run one way, no cycles.

The import graph is read from the source (every ``import`` statement, inside
functions too; ``if TYPE_CHECKING:`` blocks are skipped because they never run),
so a cycle hidden behind a lazy import fails here as well.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("optuna", "pandas", "plotly", "pydantic", "ray")
# Core modules that reach the search layer on purpose: the CLI entry calls the
# public search API, and the deprecated `compresstune.config` alias re-exports it.
CORE_EXCEPTIONS = {"compresstune.cli", "compresstune.config"}


def _package_dirs() -> dict[str, Path]:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {pkg: ROOT / path for pkg, path in setuptools["package-dir"].items()}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for pkg, folder in _package_dirs().items():
        for file in folder.rglob("*.py"):
            parts = list(file.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([pkg, *parts])] = file
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST):
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            yield from (n for child in node.orelse for n in _import_nodes_of(child))
            continue
        yield from _import_nodes_of(node)


def _import_nodes_of(node: ast.AST):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        yield node
    else:
        yield from _import_nodes(node)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name in known}
    base = node.module or ""
    if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([node.module] if node.module else []))
    hits = set()
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        hits.add(sub if sub in known else base)
    return hits & known


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, file in modules.items():
        tree = ast.parse(file.read_text(), filename=str(file))
        edges = set()
        for node in _import_nodes(tree):
            edges |= _targets(node, name, file.name == "__init__.py", known)
        graph[name] = edges - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "compresstune.search.report" in graph["compresstune.search._controller"]  # imported inside a method
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (count function-level imports too):\n" + "\n".join(" <-> ".join(c) for c in cycles)


SCHEMA = {"compresstune.search._schema", "compresstune.search._imports"}  # the study file's schema, read by spaces


def _layer(module: str) -> str:
    if module in SCHEMA:
        return "schema"
    for layer in ("search", "spaces", "objectives"):
        if module == f"compresstune.{layer}" or module.startswith(f"compresstune.{layer}."):
            return layer
    return "core"


def test_imports_run_one_way():
    """search -> spaces / objectives -> (the study schema) -> core; the core imports none of them."""
    allowed = {"core": {"core"}, "schema": {"schema", "core"}, "objectives": {"objectives", "core"},
               "spaces": {"spaces", "schema", "core"}}
    wrong = []
    for module, targets in import_graph().items():
        layer = _layer(module)
        if layer == "search" or module in CORE_EXCEPTIONS:
            continue
        wrong += [f"{module} -> {t}" for t in sorted(targets) if _layer(t) not in allowed[layer]]
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def _fresh(code: str) -> dict:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT / "tests", timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


_LOADED = "import json, sys; print(json.dumps(sorted(m for m in sys.modules)))"


def _core_modules() -> list[str]:
    return sorted(m for m in _modules() if _layer(m) == "core" and m not in CORE_EXCEPTIONS)


def test_the_core_loads_no_search_stack():
    imports = "; ".join(f"import {m}" for m in _core_modules())
    loaded = _fresh(f"import warnings; warnings.simplefilter('ignore'); {imports}; {_LOADED}")
    heavy = [m for m in loaded if m.split(".")[0] in HEAVY]
    assert not heavy, f"importing the core loaded {sorted({m.split('.')[0] for m in heavy})}"
    assert not [m for m in loaded if m.split(".")[0] == "studies"]


@pytest.mark.parametrize("module", ["compresstune.objectives", "compresstune.search._trial"])
def test_objectives_and_the_trial_import_no_example_study_code(module):
    loaded = _fresh(f"import {module}; {_LOADED}")
    study_code = [m for m in loaded if m.split(".")[0] in ("studies", "sklearn") or m in ("compresstune.models", "compresstune.train")]
    assert not study_code, f"{module} loaded example-study code: {study_code}"


def test_the_old_names_still_work_with_a_warning():
    import compresstune.data
    import compresstune.models
    import compresstune.train

    with pytest.warns(DeprecationWarning, match="moved to `studies.models.LeNet5`"):
        from compresstune.models import LeNet5
    with pytest.warns(DeprecationWarning, match="moved to `studies.datasets.load_digits`"):
        load = compresstune.data.load_digits
    with pytest.warns(DeprecationWarning, match="moved to `compresstune.objectives.accuracy`"):
        accuracy = compresstune.train.accuracy
    assert LeNet5.__module__ == "studies.models" and load.__module__ == "studies.datasets"
    assert accuracy.__module__ == "compresstune.objectives._metrics"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        compresstune.models.nope  # noqa: B018
    with pytest.raises(AttributeError, match="CifarResNet"):
        compresstune.models.ResNet20  # noqa: B018
