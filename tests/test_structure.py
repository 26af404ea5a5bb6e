"""The package's structure: no import cycle among chsnn's modules.

Only module-level imports count: the statements that run when a module is
imported (including those inside module-level ``if`` / ``try`` / ``with`` blocks
and class bodies), not imports inside functions, which run later and are the
usual way to defer a heavy or optional dependency. Imports under
``if TYPE_CHECKING:`` never run and do not count either. The package is then
held to more: no cycle even counting the imports inside functions (the data
registry and synthetic data used to import each other that way, and so did the
engine's config and strategies, and the data caches and run directories).

An edge goes to the module named: ``from chsnn.data import catalog`` to
``chsnn.data.catalog`` when that is a module, else to ``chsnn.data``. Importing
a submodule does not add an edge to its parent package (Python runs the parent's
``__init__`` first, but that is not a cycle the modules can untangle).
"""

from __future__ import annotations

import ast
from pathlib import Path

import chsnn

PACKAGE_DIR = Path(chsnn.__file__).parent


def module_names(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted name -> file of every module of the package."""
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def module_level_imports(tree: ast.Module, in_functions: bool = False) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run on import (function bodies are skipped),
    or with ``in_functions`` every import statement."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and not in_functions:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def import_graph(package_dir: Path = PACKAGE_DIR, in_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level (with
    ``in_functions``, inside functions too)."""
    modules = module_names(package_dir)
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path)), in_functions):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            source = _absolute(node, module, path.name == "__init__.py")
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else source)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the search path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], node, nxt] if nxt in path else [node, nxt]
            if nxt not in state:
                cycle = visit(nxt, [*path, node])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start, [])
            if cycle:
                return cycle
    return None


def test_find_cycle_finds_one_and_only_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_module_level_imports_skip_functions_and_type_checking():
    code = (
        "import a\nif TYPE_CHECKING:\n    import b\ntry:\n    import c\nexcept ImportError:\n    pass\n"
        "def f():\n    import d\nclass K:\n    import e\n"
    )
    names = {alias.name for node in module_level_imports(ast.parse(code)) for alias in node.names}
    assert names == {"a", "c", "e"}


def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"chsnn.cli", "chsnn.train", "chsnn.data.registry", "chsnn.data.catalog"} <= set(graph)
    assert "chsnn.data.registry" in graph["chsnn.data.catalog"]  # from-imports of names
    assert "chsnn.data.catalog" in graph["chsnn.data"]  # from-imports of submodules
    assert "chsnn.data.synthetic" not in graph["chsnn.data.registry"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_in_the_data_layer_even_inside_functions():
    graph = import_graph(in_functions=True)
    data = {m: {t for t in targets if t.startswith("chsnn.data")} for m, targets in graph.items() if m.startswith("chsnn.data")}
    assert "chsnn.data.registry" in data["chsnn.data.synthetic"]
    cycle = find_cycle(data)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_import_cycle_even_inside_functions():
    """Deferred imports inside functions may not hide a cycle either: the
    package's layers import downwards only (the one atomic writer lives in
    chsnn.files, the engine's ConfigError in chsnn.sparse.errors)."""
    cycle = find_cycle(import_graph(in_functions=True))
    assert cycle is None, "import cycle through a function-level import: " + " -> ".join(cycle)
