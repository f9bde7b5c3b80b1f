"""The shape of the house (ARCHITECTURE.md): imports point down, files stay small, Ray stays in its corner.

Imports are read from the source (``ast``), the ones inside functions included: a function-local import
hides a circle from Python's import machinery, not from this test.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "evolm"
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute, as written or resolved from a relative import)."""
    module = module_name(path)
    return names_in(path.read_text(), module if path.name == "__init__.py" else module.rpartition(".")[0])


def names_in(source: str, package: str) -> set[str]:
    """Every module name ``source`` (a module of ``package``) imports, at any depth: in functions too."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for module, path in files.items():
        edges = set()
        for name in imported_names(path):
            while name and name not in files:  # `from evolm.models import GPT` -> evolm.models
                name = name.rpartition(".")[0]
            # a submodule importing its own package's __init__ is how Python loads it, not a dependency
            if name and name != module and not module.startswith(name + "."):
                edges.add(name)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
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

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_circle():
    # The check above must be able to fail: a three-module circle through a function-local import.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    # and an import inside a function (relative, too) is an edge like any other
    source = "def f():\n    from .engine import run\n    import ray\n"
    assert names_in(source, "evolm") == {"evolm.engine", "evolm.engine.run", "ray"}


def test_no_file_in_evolm_or_benchmarks_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): count
        for folder in ("evolm", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_only_the_evaluators_import_ray():
    outside = sorted(
        str(path.relative_to(ROOT))
        for folder in ("evolm", "benchmarks")
        for path in (ROOT / folder).rglob("*.py")
        if "evolm/evaluators" not in path.as_posix()
        and any(name == "ray" or name.startswith("ray.") for name in imported_names(path))
    )
    assert outside == []
