"""The dependency rules of DESIGN.md, read from the source: who may import grpc, the wire and the service,
and no import cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WIRE_USERS = {"protssl.client", "protssl.wire"}
"""The only modules of protssl that may import protssl._proto or protssl.wire (service/ may too)."""
GRPC_USERS = {"protssl.client"}
"""The only module of protssl that may import grpc."""
CYCLE_FREE = ("service", "protssl")
"""Packages whose modules must not import each other in a circle."""


def _modules(package: str) -> dict[str, Path]:
    """Every module of a package by dotted name (the generated stubs excluded)."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "_proto" in parts:
            continue
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _imports(path: Path, known: set[str]) -> set[str]:
    """What a module imports when it runs (lazy imports included, TYPE_CHECKING ones not); a
    `from package import name` counts as importing `package.name` when that is a module."""
    tree = ast.parse(path.read_text())
    skipped = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and _is_type_checking(node)
        for inner in ast.walk(node)
    }
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if f"{node.module}.{alias.name}" in known
            )
    return names


def _within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_core_imports_neither_grpc_nor_the_wire_nor_the_service() -> None:
    modules = _modules("protssl")
    broken = []
    for name, path in modules.items():
        for imported in _imports(path, set(modules) | {"protssl._proto"}):
            wire = _within(imported, "protssl._proto") or _within(imported, "protssl.wire")
            if wire and name not in WIRE_USERS:
                broken.append(f"{name} imports {imported}")
            if _within(imported, "grpc") and name not in GRPC_USERS:
                broken.append(f"{name} imports {imported}")
            face = name.startswith(("protssl.cli", "protssl.demo"))
            if _within(imported, "service") and not face:
                broken.append(f"{name} imports {imported}")
    assert not broken, broken


def test_no_import_cycles() -> None:
    for package in CYCLE_FREE:
        modules = _modules(package)
        graph = {
            name: _imports(path, set(modules)) & set(modules) for name, path in modules.items()
        }
        for name in graph:  # a package's __init__ runs before its modules: not an edge back;
            # `from protssl.cli import db` in protssl/cli/__init__.py imports db, not itself
            graph[name] -= {p for p in graph if _within(name, p)}
        cycles = _cycles(graph)
        assert not cycles, cycles


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module, or one that imports itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found
