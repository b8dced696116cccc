"""The package's shape: imports point one way (streams <- tables <- agents <- views_api <- app),
and no module imports another in a cycle, not even from inside a function or under
TYPE_CHECKING, where a cycle hides rather than goes away. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent / "belvedere"

#: A module may import modules of its own layer or a lower one. Under everything: compat
#: (the workarounds of upstream internals), settings, the data dir's lock, and the log
#: markers of what a worker leaves out of its terminal.
LAYERS = (
    ("belvedere.compat", "belvedere.settings", "belvedere.datadir", "belvedere.console"),
    ("belvedere.streams",),
    ("belvedere.tables",),
    ("belvedere.agents",),
    ("belvedere.views_api",),
    ("belvedere.worker", "belvedere.app"),
    ("belvedere", "belvedere.cli", "belvedere.examples", "belvedere.testing"),
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts).removesuffix(".__init__")] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """Each module's imports of other Belvedere modules, anywhere in it, with a line."""
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    kept = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*kept, base] if base else kept)
                # ``from belvedere import settings`` imports the module, not the package
                targets = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
                targets = targets or [base]
            else:
                continue
            for target in targets:
                if target in modules and target != name:
                    found.setdefault(target, node.lineno)
        graph[name] = found
    return graph


def _layer(module: str) -> int:
    for rank, members in enumerate(LAYERS):
        if module in members or any(
            module.startswith(m + ".") for m in members if m != "belvedere"
        ):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_another_in_a_cycle() -> None:
    graph = _imports(_modules())
    described = [
        " ; ".join(f"{a} -> {b} (line {graph[a][b]})" for a in c for b in graph[a] if b in c)
        for c in _cycles(graph)
    ]
    assert described == []


def test_imports_point_down_the_layers() -> None:
    graph = _imports(_modules())
    upward = [
        f"{module} -> {target} (line {line})"
        for module, targets in sorted(graph.items())
        for target, line in targets.items()
        if _layer(target) > _layer(module)
    ]
    assert upward == []
