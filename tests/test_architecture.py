"""The shape of the source tree: no import cycle, imports inside functions only where declared,
no source file over 600 lines. The layers themselves are import-linter's contracts
(``[tool.importlinter]`` in pyproject.toml, run by ``lint-imports`` in scripts/test.sh)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

SRC = Path(__file__).resolve().parents[1] / "src"

#: the only imports of umr's own modules allowed inside functions, and why: the importer must
#: work where the imported module's optional, heavy dependency is not installed
LOCAL_IMPORTS = {
    ("umr.cli.serve", "umr.serve"): "fastapi (pip install 'umr[serve]')",
    ("umr.cli.serve", "umr.serve.batcher"): "fastapi (pip install 'umr[serve]')",
}

MAX_LINES = 600


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of ``graph``: its strongly connected components of more than one node (Tarjan's
    algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
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


def _import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("umr", cache_dir=None)  # imports inside functions included
    return {module: set(graph.find_modules_directly_imported_by(module)) for module in graph.modules}


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}, "f": set()}
    assert sorted(_strongly_connected(graph)) == [["a", "b", "c"], ["d", "e"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_module_is_in_an_import_cycle():
    """Between any two modules, package ``__init__`` files included (a package re-exporting a
    submodule that imports the package back is a cycle), counting imports inside functions."""
    cycles = _strongly_connected(_import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_sub_package_is_in_an_import_cycle():
    """Between umr's sub-packages and top-level modules (umr.index, umr.rerank, umr.ocr, ...)."""
    collapsed: dict[str, set[str]] = {}
    for module, imported in _import_graph().items():
        top = ".".join(module.split(".")[:2])
        collapsed.setdefault(top, set()).update(".".join(m.split(".")[:2]) for m in imported)
    for top, imported in collapsed.items():
        imported.discard(top)
    cycles = _strongly_connected(collapsed)
    assert not cycles, "sub-package cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _local_imports(path: Path, module: str) -> set[str]:
    """umr modules imported inside functions of ``path``, resolved to module names."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = set()
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package[:len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "umr":
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.split(".")[0] == "umr")
    return found


def test_umr_modules_are_imported_inside_functions_only_where_declared():
    """Everything else imports at the top, where import-linter and readers see it."""
    local = set()
    for path in sorted((SRC / "umr").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        local |= {(module, imported) for imported in _local_imports(path, module)}
    assert sorted(local - set(LOCAL_IMPORTS)) == [], "import these at the top of the module, or declare why not"
    assert sorted(set(LOCAL_IMPORTS) - local) == [], "no longer imported inside a function: drop it from LOCAL_IMPORTS"


def test_no_source_file_is_over_600_lines():
    lines = {path.relative_to(SRC).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for path in (SRC / "umr").rglob("*.py")}
    over = sorted(name for name, count in lines.items() if count > MAX_LINES)
    assert over == [], f"split these below {MAX_LINES} lines"
