"""The layering rules of docs/ARCHITECTURE.md, checked on the source (module-level and deferred
imports alike): verbs -> workflows -> methods / engine / tasks -> artifacts, no cycles, and
only engine/ touches Accelerate or DeepSpeed."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bert_ticket_cli"
ROOT = "bert_ticket_cli"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path) -> set[str]:
    """Every module this file imports, anywhere in it (deferred imports count)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES else base)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _area(module: str) -> str:
    """The top-level part of the package a module belongs to (``engine``, ``cli``, ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


#: area -> areas it must never import (the layers above it, or its siblings' internals).
FORBIDDEN = {
    "engine": {"data", "tasks", "commands", "workflows", "methods", "cli", "sweeps"},
    "methods": {"engine", "data", "tasks", "commands", "workflows", "cli", "sweeps"},
    "tasks": {"engine", "commands", "workflows", "methods", "cli", "sweeps"},
    "data": {"engine", "tasks", "commands", "workflows", "methods", "cli", "sweeps"},
    "metrics": {"engine", "data", "tasks", "commands", "workflows", "methods", "cli", "sweeps"},
    "model": {"engine", "commands", "workflows", "methods", "cli", "sweeps"},
    "sparsity": {"engine", "data", "tasks", "commands", "workflows", "cli", "sweeps"},
    "artifacts": {"engine", "commands", "workflows", "cli", "sweeps"},
    "config": {"commands", "workflows", "cli", "data", "tasks", "methods", "sweeps"},
    "workflows": {"commands", "cli", "sweeps"},
    "commands": {"cli"},
    # sweeps/ runs the CLI in processes of its own: it composes configs and names runs, never
    # trains (of engine/ it reads only the stop-signal flag: test below).
    "sweeps": {"data", "tasks", "commands", "workflows", "methods", "cli", "model", "sparsity", "metrics"},
}


def test_package_was_found():
    assert len(MODULES) > 30 and f"{ROOT}.cli" in MODULES


@pytest.mark.parametrize("library", ["accelerate", "deepspeed"])
def test_only_the_engine_imports_the_training_libraries(library):
    offenders = sorted(m for m, deps in GRAPH.items()
                       if _area(m) != "engine" and any(d == library or d.startswith(library + ".") for d in deps))
    assert offenders == []


@pytest.mark.parametrize("area", sorted(FORBIDDEN))
def test_layers_import_only_downwards(area):
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _area(m) == area
                 for d in deps if d.startswith(ROOT + ".") and _area(d) in FORBIDDEN[area])
    assert bad == []


def test_sweeps_use_only_the_engines_stop_flag():
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _area(m) == "sweeps"
                 for d in deps if _area(d) == "engine" and d != f"{ROOT}.engine.signals")
    assert bad == []


def test_no_verb_imports_another_verb():
    bad = sorted(f"{m} -> {d}" for m, deps in GRAPH.items() if _area(m) == "commands"
                 for d in deps if _area(d) == "commands" and d != f"{ROOT}.commands" and d != m)
    assert bad == []


def test_no_import_cycles():
    """Between modules of the package (a package's __init__ counts as its own module)."""
    edges = {m: {d for d in deps if d in MODULES and d != m} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [])
    assert [" -> ".join(c) for c in cycles] == []
