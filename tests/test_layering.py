"""Imports flow one way: core <- Lightning modules, data <- evaluation <- callbacks <- entry points.

Every import statement counts, also the ones inside functions or under `TYPE_CHECKING`: a lazy
import hides a cycle from Python, not from a reader.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

# Package -> layer. A module may import its own package and packages of lower layers only.
LAYERS = {"safety_signal": 0, "lightning_modules": 1, "datamodules": 1, "evaluation": 2, "callbacks": 3, "cli": 4}
# Entry points import any layer but never each other (a script is not a library).
ENTRY_POINTS = {"main", "demo", "serve"}
ENTRY_DIRS = ("benchmarks", "scripts")


def project_imports(path: Path) -> set[str]:
    """Top-level project modules (or `package.module`) imported anywhere in `path`."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            names.add(f"{path.parent.name}.{node.module or ''}".rstrip("."))
    top = LAYERS.keys() | ENTRY_POINTS
    return {n for n in names if n.split(".")[0] in top}


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def sources() -> list[Path]:
    files = [p for package in LAYERS if (ROOT / package).is_dir() for p in (ROOT / package).glob("*.py")]
    files += [ROOT / f"{name}.py" for name in ENTRY_POINTS | {"cli"} if (ROOT / f"{name}.py").exists()]
    files += [p for d in ENTRY_DIRS for p in (ROOT / d).rglob("*.py")]
    return files


def test_imports_only_flow_down_the_layers():
    upward = []
    for path in sources():
        name = module_name(path)
        package = name.split(".")[0]
        for imported in project_imports(path):
            target = imported.split(".")[0]
            if package in ENTRY_POINTS or package in ENTRY_DIRS:
                if target in ENTRY_POINTS:
                    upward.append(f"{name} imports the script {imported}")
                continue
            if target in ENTRY_POINTS or (target != package and LAYERS[target] >= LAYERS[package]):
                upward.append(f"{name} (layer {LAYERS[package]}) imports {imported}")
    assert not upward, "\n".join(sorted(upward))


def test_no_module_import_cycles():
    graph = {module_name(p): {i for i in project_imports(p)} for p in sources()}
    graph = {m: {i for i in deps if i in graph and i != m} for m, deps in graph.items()}
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from evaluation.runner import X\n"
                    "def f():\n    import lightning_modules.safety_signal_lm\n")
    assert project_imports(path) == {"evaluation.runner", "lightning_modules.safety_signal_lm"}
