"""Imports point one way: the module graph has no cycles, and layers only import downwards.

Every ``import`` of a likeness module counts, the ones inside functions too (a lazy import only
hides a cycle until the day someone moves it to the top). Edges into a package's ``__init__`` from
its own modules are the registry pattern (``get_method`` imports ``likeness.methods`` so that the
built-in methods register) and are left out. Then every module is imported in a fresh
interpreter, leaves first and roots first, which would expose an import-time cycle either way.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "likeness"

# Which top-level parts each part may import (the layering in HELPER_RULES / README).
GROUND = {"data", "faces", "models", "segmentation", "registry", "__init__", "__main__"}
ALLOWED = {
    "data": {"data"}, "faces": {"faces", "data"}, "models": {"models", "data"},
    "segmentation": {"segmentation", "data", "faces", "models"},
    "metrics": {"metrics", "data", "faces", "models", "segmentation"},
    "methods": {"methods", "data", "faces", "models", "segmentation"},
    "compose": {"compose", "methods", "models", "data", "faces", "segmentation"},
    "bench": {"bench", "methods", "metrics", "data", "faces", "models", "segmentation"},
    # Weights writers and tiny ONNX builders for tests and benchmarks: anything below, imported by nothing.
    "testing": {"testing", "bench", "compose", "methods", "metrics", "data", "faces", "models", "segmentation"},
}
# Inside methods: the shared modules (base, preparation, training, model_card) import no family; a family
# imports the shared modules and itself, never another family (the registry, methods/__init__, imports them all).
METHOD_FAMILIES = {"baselines", "celeb_basis", "editors", "peers", "photoverse", "stellarnet"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges = {}
    for name, path in mods.items():
        targets = imports(path, name, known)
        # registry pattern: a module importing its own package (to run its registrations)
        edges[name] = {t for t in targets if not (name.startswith(t + ".") and mods[t].name == "__init__.py")}
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_layers_import_only_downwards():
    wrong = []
    for name, targets in graph().items():
        part = name.split(".")[1] if "." in name else "__init__"
        if part not in ALLOWED:
            continue  # cli, app: they parse and call anything
        for target in targets:
            other = target.split(".")[1] if "." in target else "__init__"
            if other not in ALLOWED[part] and other not in ("registry", "__init__"):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_nothing_in_likeness_imports_the_testing_package():
    wrong = [f"{name} imports {target}" for name, targets in graph().items() if not name.startswith("likeness.testing")
             for target in targets if target == "likeness.testing" or target.startswith("likeness.testing.")]
    assert not wrong, "\n".join(wrong)


def family(name: str) -> str | None:
    """The method family a module of likeness.methods belongs to (None: the shared modules, the registry)."""
    parts = name.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "methods" and parts[2] in METHOD_FAMILIES else None


def test_method_families_import_only_the_shared_modules_and_themselves():
    assert METHOD_FAMILIES == {p.name for p in (PACKAGE / "methods").iterdir() if (p / "__init__.py").exists()}
    wrong = []
    for name, targets in graph().items():
        if not name.startswith("likeness.methods.") or name == "likeness.methods":
            continue
        for target in targets:
            if target.startswith("likeness.methods.") and family(target) not in (None, family(name)):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_every_module_imports_in_a_fresh_interpreter_in_either_order():
    names = sorted(n for n in modules() if not n.endswith("__main__"))
    code = ("import importlib, sys\n"
            "for name in sys.argv[1:]:\n"
            "    importlib.import_module(name)\n")
    for order in (names, list(reversed(names))):
        done = subprocess.run([sys.executable, "-c", code, *order], capture_output=True, text=True, timeout=180,
                              cwd=PACKAGE.parent)
        assert done.returncode == 0, done.stderr[-3000:]
