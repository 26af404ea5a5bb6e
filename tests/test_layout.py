"""The package's layout rules, checked on its source with ``ast``: no module
uses another module's private names, and no module grows past about 500
lines unless its docstring says why."""

import ast
from pathlib import Path

import chsnn

PACKAGE = Path(chsnn.__file__).parent
MAX_LINES = 500
SLACK = 50  # "about" 500 lines


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_names_defined(tree: ast.Module) -> set[str]:
    """Private functions, classes, module names and attributes (``self._x = ...``) a module defines."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
    return {n for n in names if is_private(n)}


def test_no_module_uses_another_modules_private_names():
    trees = {name: ast.parse(path.read_text()) for name, path in modules().items()}
    defined = {name: private_names_defined(tree) for name, tree in trees.items()}
    ours = set().union(*defined.values())
    found = []
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("chsnn"):
                found += [f"{name}:{node.lineno} imports {a.name} from {node.module}" for a in node.names if is_private(a.name)]
            elif isinstance(node, ast.Attribute) and is_private(node.attr) and node.attr in ours - defined[name]:
                found.append(f"{name}:{node.lineno} uses {ast.unparse(node)}, private to another module")
    assert not found, "\n".join(found)


def test_modules_stay_small_or_say_why():
    too_long = []
    for name, path in modules().items():
        lines = len(path.read_text().splitlines())
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > MAX_LINES + SLACK and "lines because" not in doc:
            too_long.append(f"{name}: {lines} lines and no 'lines because ...' in its docstring")
    assert not too_long, "\n".join(too_long)


def test_the_checks_see_a_violation():
    """The private-name rule flags a planted cross-module use."""
    planted = ast.parse("from chsnn.x import _hidden\nvalue = engine._rigl_acc\n")
    imports = [n for n in ast.walk(planted) if isinstance(n, ast.ImportFrom)]
    attrs = [n for n in ast.walk(planted) if isinstance(n, ast.Attribute)]
    assert is_private(imports[0].names[0].name) and is_private(attrs[0].attr)
    assert "_rigl_acc" not in private_names_defined(planted)
