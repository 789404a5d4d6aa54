"""The layout docs/ARCHITECTURE.md draws: layers import only downward, modules stay small.

Read from the source (every import, lazy ones inside functions included), so a
new upward or sideways import fails here before anyone draws the wrong picture.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: each first-party package and the packages it may import (docs/ARCHITECTURE.md)
MAY_IMPORT: dict[str, frozenset[str]] = {
    "protocol": frozenset(),
    "transport": frozenset({"protocol"}),
    "models": frozenset({"protocol"}),
    "coordinator": frozenset({"protocol", "transport", "models"}),
    "edge_agent": frozenset({"protocol", "transport", "models"}),
    "fedmq": frozenset({"protocol", "transport", "models", "coordinator", "edge_agent"}),
    "fedmq_tools": frozenset(
        {"protocol", "transport", "models", "coordinator", "edge_agent", "fedmq"}
    ),
}
PRODUCT = ("protocol", "transport", "models", "coordinator", "edge_agent", "fedmq")
MAX_PRODUCT_LINES = 400


def _package_dir(package: str) -> Path:
    return REPO / "tools" / package if package == "fedmq_tools" else REPO / package


def _modules(package: str) -> list[Path]:
    return sorted(_package_dir(package).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``, lazy ones included."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def _module_name(path: Path) -> str:
    root = REPO / "tools" if path.is_relative_to(REPO / "tools") else REPO
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_every_import_runs_downward_or_within_its_package() -> None:
    wrong = []
    for package, allowed in MAY_IMPORT.items():
        for path in _modules(package):
            for line, module in _imports(path):
                top = module.split(".")[0]
                if top in MAY_IMPORT and top != package and top not in allowed:
                    wrong.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert wrong == []


def test_no_product_module_exceeds_400_lines() -> None:
    long = {
        str(path.relative_to(REPO)): n
        for package in PRODUCT
        for path in _modules(package)
        if (n := len(path.read_text().splitlines())) > MAX_PRODUCT_LINES
    }
    assert long == {}


def test_the_application_modules_import_no_cycle() -> None:
    """cli, demo and entry once imported each other; the app layer is a tree now."""
    graph: dict[str, set[str]] = {}
    for path in _modules("fedmq"):
        name = _module_name(path)
        graph[name] = {m for _, m in _imports(path) if m.startswith("fedmq.") and m != name}

    def cycle_from(start: str, seen: tuple[str, ...]) -> tuple[str, ...] | None:
        for nxt in sorted(graph.get(start, ())):
            if nxt in seen:
                return (*seen[seen.index(nxt):], nxt)
            found = cycle_from(nxt, (*seen, nxt))
            if found:
                return found
        return None

    cycles = {c for name in graph if (c := cycle_from(name, (name,))) is not None}
    assert cycles == set()


def test_the_agent_with_the_numpy_trainer_loads_no_mnist_bench_or_torch() -> None:
    probe = (
        "import sys, edge_agent.mqtt, edge_agent.numpy_trainer, edge_agent.personal; "
        "print('\\n'.join(sorted(sys.modules)))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    unwanted = [
        m
        for m in loaded
        if m.split(".")[0] in ("torch", "fedmq", "fedmq_tools", "coordinator") or "mnist" in m
    ]
    assert unwanted == []


@pytest.mark.slow
def test_the_wheel_ships_no_benchmark_or_simulation_code(tmp_path: Path) -> None:
    # build from a copy: setuptools writes build/ beside the sources it builds
    source = tmp_path / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "node_modules", "build", "*.egg-info", "__pycache__", "bench-results"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(source)],
        check=True,
    )
    (wheel,) = tmp_path.glob("fedmq-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.startswith("fedmq-")}
    assert tops == {"protocol", "transport", "models", "coordinator", "edge_agent", "fedmq"}
    tooling = [n for n in names if any(w in n for w in ("bench", "swarm", "reference", "chaos"))]
    assert tooling == []


def test_no_two_test_modules_share_a_name() -> None:
    """pytest imports test modules by basename (no packages under tests/): a second
    ``test_x.py`` anywhere stops the whole collection."""
    seen: dict[str, list[str]] = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
