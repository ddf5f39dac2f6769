"""The package's layering, read from its source with `ast` (no module is imported for it).

Shared code lives below the stages that share it: a module may import from its own layer or a
lower one, never from a higher one, and no modules import each other in a circle. Every import
counts, the ones inside a function too: those keep torch, vLLM or Ray out of a command that does
not need them, which is fine, but they must still point down. `from pkg import name` is an edge
to `pkg.name` where that is a module, else to `pkg`; the parent packages a dotted import also
runs are not edges (their `__init__` files import nothing of ours).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "blspdata"

# Lowest first. A module matches the longest prefix listed ("blspdata.generate" also names its
# submodules); every module must match one, so a new module is placed here on purpose.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base: errors, one record type, locks, labels, audio, workers, how options are declared, "
     "the rejects contract",
     ("blspdata", "blspdata.errors", "blspdata.records", "blspdata.locks", "blspdata.labels",
      "blspdata.audio", "blspdata.parallel", "blspdata.options", "blspdata.rejects")),
    ("corpora: one importer per corpus and their base types", ("blspdata.corpora",)),
    ("stage ingest", ("blspdata.ingest",)),
    ("stage generate", ("blspdata.generate",)),
    ("stage curate", ("blspdata.curate",)),
    ("stage publish", ("blspdata.publish", "blspdata.publish_options")),
    ("stage export: manifests in other toolkits' formats", ("blspdata.export",)),
    ("stage train", ("blspdata.train",)),
    ("orchestration: the run folder's layout, pipeline, report", ("blspdata.layout", "blspdata.pipeline", "blspdata.report")),
    ("command line", ("blspdata.cli", "blspdata.__main__")),
]


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int]]:
    """`(module, line)` for each import of one of our modules in `path`, at any depth."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import blspdata.x.y` where y is a name
                target = target.rpartition(".")[0]
            if target.startswith("blspdata") and target != name:
                edges.append((target, node.lineno))
    return edges


def layer_of(module: str) -> int | None:
    best, found = -1, None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, found = len(prefix), index
    return found


def graph() -> dict[str, list[tuple[str, int]]]:
    known = modules()
    return {name: imports(name, path, known) for name, path in known.items()}


def test_every_module_has_a_layer():
    assert [m for m in modules() if layer_of(m) is None] == []


def test_no_import_runs_up_a_layer():
    upward = []
    for module, edges in graph().items():
        for target, line in edges:
            if layer_of(target) > layer_of(module):
                upward.append(f"{module}:{line} imports {target} "
                              f"({LAYERS[layer_of(module)][0]} -> {LAYERS[layer_of(target)][0]})")
    assert upward == []


def test_no_import_circle():
    edges = {module: sorted({target for target, _ in targets}) for module, targets in graph().items()}
    circles, state = [], {}  # state: 1 on the current path, 2 done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in edges[module]:
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in edges:
        if module not in state:
            visit(module, [module])
    assert circles == []


@pytest.mark.parametrize("module", sorted(modules()))
def test_module_imports_on_its_own(module: str):
    """Each module imports in a fresh interpreter: nothing relies on another having run first."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=180, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr[-2000:]
