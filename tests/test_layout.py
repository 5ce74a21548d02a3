"""The three layers and their import rule, read from the source: the experiment and the benchmark use the training
core; the core uses neither; neither uses the other."""

import ast
from pathlib import Path

import pytest

from prefopt.launch import ALGORITHMS, REPO_ROOT

LAYERS = ("prefopt", "experiment", "benchmark")
ALLOWED = {
    "scripts": {"prefopt"},
    "prefopt": {"prefopt"},
    "experiment": {"prefopt", "experiment"},
    "benchmark": {"prefopt", "benchmark"},
}
SCRIPTS = [REPO_ROOT / f"{algorithm}.py" for algorithm in ALGORITHMS]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(path: Path) -> set[str]:
    """The modules of the three layers that `path` imports, anywhere in it (inside functions too)."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {name for name in imported if name.split(".")[0] in LAYERS}


def existing_module(name: str) -> str | None:
    """`name` if it is a module of the tree (not a function or class imported from one)."""
    path = REPO_ROOT.joinpath(*name.split("."))
    return name if path.with_suffix(".py").is_file() or (path / "__init__.py").is_file() else None


SOURCES = {path: layer for layer in LAYERS for path in sorted((REPO_ROOT / layer).rglob("*.py"))}
SOURCES.update({path: "scripts" for path in SCRIPTS})


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_imports_follow_the_layers(path):
    layer = SOURCES[path]
    reached = {name.split(".")[0] for name in project_imports(path)}
    assert reached <= ALLOWED[layer], f"{layer} may import {sorted(ALLOWED[layer])}, not {sorted(reached)}"


def test_the_core_holds_what_the_scripts_use_and_what_the_layers_above_share():
    def reachable(start: list[Path]) -> set[str]:
        seen, pending = set(), list(start)
        while pending:
            for name in filter(None, map(existing_module, project_imports(pending.pop()))):
                if name not in seen:
                    seen.add(name)
                    pending.append(REPO_ROOT.joinpath(*name.split(".")).with_suffix(".py"))
        return seen

    def used_by(layer: str) -> set[str]:
        return reachable([path for path, source_layer in SOURCES.items() if source_layer == layer])

    core = {module_name(path) for path, layer in SOURCES.items() if layer == "prefopt" and path.stem != "__init__"}
    used_by_scripts = reachable(SCRIPTS)
    shared = used_by("experiment") & used_by("benchmark")
    assert core - used_by_scripts - shared == set()
    assert {"prefopt.run_logs", "prefopt.plotting", "prefopt.markdown", "prefopt.launch"} <= used_by_scripts | shared
