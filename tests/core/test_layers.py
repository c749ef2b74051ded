"""The package's layers, read from the source with ast: each package imports only from the
layers below it, no import circle, and no tripletkit import hidden inside a function (outside
the command-line modules, which load their commands lazily)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "tripletkit"
# layer of each top-level part; a module may import its own layer's package and lower layers
LAYERS = {"core": 0, "faces": 1, "search": 1, "serve": 2, "cli": 3, "__main__": 4}
# third-party modules the core may import (everything else it imports is the standard library)
CORE_THIRD_PARTY = {"torch", "numpy", "tqdm", "yaml"}
# optional ones it may import inside a function only (tripletkit._onnx: the ONNX runtimes of
# the faces and search extras), so that `import tripletkit` never needs them
CORE_OPTIONAL = {"onnxruntime", "onnx", "onnxscript"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    """ "core" for the modules directly in the package, else the sub-package's name."""
    rest = module.split(".")[1:]
    if not rest:
        return "core"
    head = rest[0]
    return head if head in LAYERS else "core"


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((SRC / PACKAGE).rglob("*.py"))}


class Imports(ast.NodeVisitor):
    """Every import of a module: (imported module, line, whether inside a function)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module, self.is_package = module, is_package
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []

    def visit_FunctionDef(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self.depth > 0))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.module.split(".")
            if not self.is_package:
                parts = parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            # `from . import x` names a module when x is one
            target = f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            self.found.append((target, node.lineno, self.depth > 0))


MODULES = modules()


def imports_of(module: str) -> list[tuple[str, int, bool]]:
    path = MODULES[module]
    visitor = Imports(module, path.name == "__init__.py")
    visitor.visit(ast.parse(path.read_text(), str(path)))
    return visitor.found


def internal_graph() -> dict[str, set[str]]:
    """module -> the tripletkit modules it imports at module level (a package's __init__
    counts as the package)."""
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        graph[module] = {
            t for t, _, inside in imports_of(module) if t in MODULES and t != module and not inside
        }
    return graph


def test_no_import_circle() -> None:
    graph = internal_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circle = stack[stack.index(nxt) :] + [nxt]
                pytest.fail("import circle: " + " -> ".join(circle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_each_part_imports_only_lower_layers() -> None:
    problems = []
    for module in MODULES:
        mine = part_of(module)
        for target, line, _ in imports_of(module):
            if target not in MODULES:
                continue
            theirs = part_of(target)
            if theirs == mine:
                continue
            if LAYERS[theirs] >= LAYERS[mine]:
                problems.append(
                    f"{MODULES[module].relative_to(SRC)}:{line} ({mine}) imports "
                    f"{target} ({theirs})"
                )
    assert not problems, "\n".join(problems)


def test_no_tripletkit_import_inside_a_function() -> None:
    problems = [
        f"{MODULES[module].relative_to(SRC)}:{line} imports {target} inside a function"
        for module in MODULES
        if part_of(module) != "cli"
        for target, line, inside in imports_of(module)
        if inside and target.split(".")[0] == PACKAGE
    ]
    assert not problems, "\n".join(problems)


def test_core_needs_only_torch_and_numpy() -> None:
    """The core imports the standard library, torch, numpy, and tqdm and PyYAML (the training
    loop's progress bar, config files), at module level or not; onnxruntime and onnx inside a
    function only."""
    problems = []
    stdlib = set(sys.stdlib_module_names)
    for module in MODULES:
        if part_of(module) != "core":
            continue
        for target, line, inside in imports_of(module):
            top = target.split(".")[0]
            if top in (PACKAGE, "__future__") or top in stdlib or top in CORE_THIRD_PARTY:
                continue
            if inside and top in CORE_OPTIONAL:
                continue
            problems.append(f"{MODULES[module].relative_to(SRC)}:{line} imports {target}")
    assert not problems, "\n".join(problems)
