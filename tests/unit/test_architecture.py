"""The package's layers, checked: no import cycles, and every import points down (docs/architecture.md).

The graph is built from the source with `ast`, imports inside functions included, so a lazy import
cannot hide a cycle or an upward dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "workbench"

# bottom to top; a module may import from its own layer or below (docs/architecture.md)
LAYERS = [
    ("workbench", "workbench.errors", "workbench.io", "workbench.logs"),
    ("workbench.core",),
    ("workbench.tasks", "workbench.data", "workbench.models"),
    ("workbench.store",),
    ("workbench.train", "workbench.evaluate"),
    ("workbench.jobs",),
    ("workbench.experiments", "workbench.analysis", "workbench.deploy"),
    ("workbench.cli", "workbench.app", "workbench.notebook", "workbench.__main__"),
]


def modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = list(p.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """{module: the package's modules it imports}, at module level and inside functions alike."""
    mods = modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                while t and t not in mods:  # a name inside a module: the module
                    t = t.rsplit(".", 1)[0] if "." in t else ""
                if t and t != name:
                    graph[name].add(t)
    return graph


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, names in enumerate(LAYERS):
        for n in names:
            if (module == n or module.startswith(n + ".")) and len(n) > best:
                best, found = len(n), i
    if found is None:
        raise AssertionError(f"{module} belongs to no layer: add its package to LAYERS and docs/architecture.md")
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    colour: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        colour[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if colour.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if colour.get(m) is None:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(graph):
        if colour.get(n) is None:
            found = visit(n)
            if found:
                return found
    return None


def test_architecture_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_architecture_imports_point_down_the_layers():
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, deps in import_graph().items() for b in sorted(deps) if layer_of(b) > layer_of(a)]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_architecture_every_module_has_a_layer():
    for m in modules():
        layer_of(m)


def test_architecture_cycle_check_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", ["workbench.analysis.compare", "workbench.analysis.report",
                                    "workbench.analysis.describe", "workbench.store.runs", "workbench.jobs.queue"])
def test_architecture_views_import_without_torch(module):
    code = f"import sys, {module}; sys.exit(1 if 'torch' in sys.modules else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"importing {module} loaded torch\n{proc.stderr}"


def _calls_and_compares():
    for name, path in modules().items():
        yield name, ast.walk(ast.parse(path.read_text()))


def test_architecture_no_code_outside_the_methods_compares_a_method_name():
    """A method speaks for itself (its primary, temperature and weight keys, `distils`, `note`): front ends, the
    config and the views never ask `method == "kd"`."""
    from workbench.core.methods import METHODS

    def strings(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return {node.value}
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
        return set()

    wrong = []
    for name, nodes in _calls_and_compares():
        if name == "workbench.core.methods":
            continue
        nodes = list(nodes)
        # schema 1 of config.json knew its objectives by name: its migration reads those names, and nothing else does
        migration = [range(n.lineno, n.end_lineno + 1) for n in nodes
                     if isinstance(n, ast.FunctionDef) and n.name == "migrate_config"]
        for node in nodes:
            if not isinstance(node, ast.Compare) or any(node.lineno in r for r in migration):
                continue
            sides = [node.left, *node.comparators]
            named = {s for side in sides for s in strings(side)} & set(METHODS)
            about_method = any("method" in ast.unparse(side) or ast.unparse(side).endswith(".name")
                               for side in sides if not strings(side))
            if named and about_method:
                wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert not wrong, "method names compared outside workbench.core.methods:\n" + "\n".join(wrong)


def test_architecture_runs_are_launched_only_through_experiments_launch():
    """One launch path: only `experiments.launch` checks a setup for a launch and submits runs to the queue."""
    wrong = []
    for name, nodes in _calls_and_compares():
        if name.startswith("workbench.jobs") or name in ("workbench.experiments.launch", "workbench.train.loop"):
            continue
        for node in nodes:
            if isinstance(node, ast.Call):
                f = node.func
                called = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
                via_launch = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "launch"
                if called in ("submit", "check_setup") and not via_launch:
                    wrong.append(f"{name}:{node.lineno}: {ast.unparse(node)[:80]}")
    assert not wrong, "runs launched outside workbench.experiments.launch:\n" + "\n".join(wrong)
