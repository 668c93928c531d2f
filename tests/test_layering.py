"""The package's layering: pure modules never import nnU-Net, no import cycles, no library module uses the
demo or the CLI.

Pure = every module of ``nnunetv2_petct`` except the nnU-Net-facing ones (``nnunetv2_petct.nnunet.*`` but
``nnunetv2_petct.nnunet.plans``, ``nnunetv2_petct.distributed``, ``nnunetv2_petct._discovery``), the
command lines (``cli``), the benchmarks and the demo. Modules are listed from the files under
``nnunetv2_petct/``, so a new module is covered without editing this test (``pkgutil.walk_packages`` would
miss the folders without an ``__init__.py``; a test below checks it finds nothing we miss).

Two checks: (a) every pure module imported in a fresh interpreter leaves ``nnunetv2`` out of
``sys.modules``; (b) a static graph of every import of an ``nnunetv2_petct`` module, at module level and
inside functions, is acyclic and respects the layers.
"""

from __future__ import annotations

import ast
import json
import os
import pkgutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import nnunetv2_petct

PACKAGE = "nnunetv2_petct"
PACKAGE_DIR = Path(nnunetv2_petct.__file__).resolve().parent

# Not pure: nnU-Net-facing code, command lines, benchmarks, the demo (prefix match on whole name parts).
NOT_PURE = ("nnunetv2_petct.nnunet", "nnunetv2_petct.cli", "nnunetv2_petct.benchmarks", "nnunetv2_petct.demo",
            "nnunetv2_petct.distributed", "nnunetv2_petct._discovery")
PURE_EXCEPTIONS = ("nnunetv2_petct.nnunet.plans",)  # plans arithmetic on JSON: pure although under nnunet/
# Only the front ends may import the demo or the CLI.
FRONT_ENDS = ("nnunetv2_petct.demo", "nnunetv2_petct.cli", "nnunetv2_petct.benchmarks")
FRONT_END_TARGETS = ("nnunetv2_petct.demo", "nnunetv2_petct.cli")
# Stricter promises kept from earlier tests: these never import torch either, and the convert CLI (which
# needs no network) never imports nnunetv2.
TORCH_FREE = ("nnunetv2_petct.conversion.geometry", "nnunetv2_petct.phantoms")
ALSO_NNUNET_FREE = ("nnunetv2_petct.cli.convert",)


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _module_files() -> dict[str, Path]:
    """Every module of the package (a package and its ``__init__`` are one module), by dotted name."""
    files = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts}
    for name in list(files):  # namespace folders (no __init__.py) are importable: count them as nodes too
        parts = name.split(".")
        for i in range(1, len(parts)):
            files.setdefault(".".join(parts[:i]), PACKAGE_DIR.parent.joinpath(*parts[:i]))
    return files


MODULES = _module_files()


def is_pure(name: str) -> bool:
    return _under(name, PURE_EXCEPTIONS) or not _under(name, NOT_PURE)


def pure_modules() -> list[str]:
    # __main__ modules run their program when imported: never part of the pure library
    return sorted(m for m in MODULES if is_pure(m) and not m.endswith(".__main__"))


def test_module_list_is_complete_and_classified():
    walked = {m.name for m in pkgutil.walk_packages(nnunetv2_petct.__path__, PACKAGE + ".")}
    assert walked <= set(MODULES), f"modules found by pkgutil but not from the files: {sorted(walked - set(MODULES))}"
    pure = pure_modules()
    # known members, so that this test cannot pass on an empty or truncated list
    for name in ("nnunetv2_petct", "nnunetv2_petct.io", "nnunetv2_petct.conversion.suv",
                 "nnunetv2_petct.conversion.channels", "nnunetv2_petct.evaluation.metrics",
                 "nnunetv2_petct.phantoms.phantom", "nnunetv2_petct.pretraining.mae",
                 "nnunetv2_petct.transfer.splits", "nnunetv2_petct.nnunet.plans"):
        assert name in pure, name
    for name in ("nnunetv2_petct.nnunet.trainers.mae", "nnunetv2_petct.nnunet.distributed",
                 "nnunetv2_petct.distributed", "nnunetv2_petct._discovery", "nnunetv2_petct.cli.evaluate",
                 "nnunetv2_petct.demo", "nnunetv2_petct.demo.steps", "nnunetv2_petct.benchmarks.bench_predict"):
        assert name in MODULES and name not in pure, name
    assert len(pure) >= 30, pure


# ----------------------------------------------------------------------------- (a) fresh interpreter

_IMPORT_SCRIPT = """
import importlib, json, sys
checks = json.loads(sys.argv[1])
report = []
for module, forbidden in checks:
    try:
        importlib.import_module(module)
    except Exception as e:
        report.append([module, "import failed: %s: %s" % (type(e).__name__, e)])
        continue
    pulled = sorted(f for f in forbidden if f in sys.modules)
    if pulled:
        report.append([module, "imported " + ", ".join(pulled)])
        break  # sys.modules is shared: later modules cannot be judged any more
print(json.dumps(report))
"""


def test_pure_modules_do_not_import_nnunetv2_in_a_fresh_interpreter():
    pure = pure_modules()
    assert "nnunetv2_petct.conversion.geometry" in pure and "nnunetv2_petct.nnunet.plans" in pure
    # torch-free modules first (torch enters sys.modules with the first module that needs it)
    checks = [[m, ["torch", "nnunetv2"]] for m in TORCH_FREE]
    checks += [[m, ["nnunetv2"]] for m in [*pure, *ALSO_NNUNET_FREE] if m not in TORCH_FREE]
    # the user's interpreter: discovery hook active (it must not import nnunetv2 either)
    env = {k: v for k, v in os.environ.items() if k not in ("NNUNETV2_PETCT_NO_HOOK", "nnUNet_extTrainer")}
    proc = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT, json.dumps(checks)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    problems = json.loads(proc.stdout.strip().splitlines()[-1])
    assert problems == [], "\n".join(f"{m}: {what}" for m, what in problems)


# ---------------------------------------------------------------------------------- (b) static graph


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    where: str  # path:line of the import statement


def _resolve(name: str) -> str | None:
    """The module a dotted name refers to: itself if it is a module, else its longest module prefix."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            return candidate
    return None


def _imports(module: str, path: Path) -> list[Edge]:
    """Every import of a package module in ``path``: anywhere in the file, absolute and relative forms,
    and ``from package import submodule`` resolved to the submodule."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), filename=str(path))
    rel = path.relative_to(PACKAGE_DIR.parent) if path.is_relative_to(PACKAGE_DIR.parent) else path
    edges = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".") if is_package else module.split(".")[:-1]
                if node.level > 1:
                    base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # "from x import y": y may be a submodule (an edge to x.y) or a name defined in x (an edge to x)
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            if name != PACKAGE and not name.startswith(PACKAGE + "."):
                continue
            target = _resolve(name)
            assert target is not None, f"{rel}:{node.lineno} imports {name}, which is no module of the package"
            if target != module:
                edges.append(Edge(module, target, f"{rel}:{node.lineno}"))
    return edges


def import_graph() -> dict[str, list[Edge]]:
    return {m: _imports(m, p) for m, p in MODULES.items() if p.suffix == ".py"}


def _cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """One cycle per strongly connected component with more than one module (Tarjan), as its edges."""
    succ = {m: sorted({e.target for e in edges}) for m, edges in graph.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # recursion depth <= number of modules (~70)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(succ):
        if v not in index:
            visit(v)

    cycles = []
    for comp in components:  # a shortest cycle through the component's first module (breadth-first)
        start = min(comp)
        parent: dict[str, Edge | None] = {start: None}
        frontier, closing = [start], None
        while frontier and closing is None:
            nxt = []
            for v in frontier:
                for e in graph[v]:
                    if e.target == start:
                        closing = e
                        break
                    if e.target in comp and e.target not in parent:
                        parent[e.target] = e
                        nxt.append(e.target)
                if closing:
                    break
            frontier = nxt
        path = [closing]
        while parent[path[-1].source] is not None:
            path.append(parent[path[-1].source])
        cycles.append(list(reversed(path)))
    return sorted(cycles, key=lambda c: c[0].source)


def _describe(cycle: list[Edge]) -> str:
    return " -> ".join([cycle[0].source] + [f"{e.target} ({e.where})" for e in cycle])


def test_static_import_graph_sees_relative_function_level_and_submodule_imports(tmp_path):
    graph = import_graph()
    targets = {m: {e.target for e in edges} for m, edges in graph.items()}
    # known edges of the current tree, one per import form, so that the parser cannot go blind silently
    assert "nnunetv2_petct.evaluation.detection" in targets["nnunetv2_petct.evaluation.case"]  # from .x import
    assert "nnunetv2_petct.nnunet.plans" in targets["nnunetv2_petct.cli.tiny_plans"]  # from a.b.c import name
    assert "nnunetv2_petct.nnunet.distributed" in targets["nnunetv2_petct.distributed"]
    assert sum(len(edges) for edges in graph.values()) > 50
    # the forms on a throwaway module: function-level, relative (package and submodule), package-level
    fake = "\n".join([
        "from . import geometry", "from .. import io", "from ..evaluation import metrics as m",
        "import nnunetv2_petct.transfer.splits", "from nnunetv2_petct.conversion import registry",
        "from nnunetv2_petct.conversion import nonexistent_name",
        "def f():", "    from nnunetv2_petct.demo.steps import x", "    import numpy",
    ])
    copy = tmp_path / "core.py"
    copy.write_text(fake)
    edges = _imports("nnunetv2_petct.conversion.core", copy)
    assert sorted(e.target for e in edges) == sorted([
        "nnunetv2_petct.conversion.geometry", "nnunetv2_petct.io", "nnunetv2_petct.evaluation.metrics",
        "nnunetv2_petct.transfer.splits", "nnunetv2_petct.conversion.registry", "nnunetv2_petct.conversion",
        "nnunetv2_petct.demo.steps"])
    # the cycle finder on a small graph: a <-> b, c -> a; a package importing its own submodule is no cycle
    e = Edge
    toy = {"a": [e("a", "b", "1")], "b": [e("b", "a", "2")], "c": [e("c", "a", "3")], "p": [e("p", "p.x", "4")],
           "p.x": [e("p.x", "c", "5")]}
    assert [_describe(c) for c in _cycles(toy)] == ["a -> b (1) -> a (2)"]


def test_no_import_cycles():
    cycles = _cycles(import_graph())
    assert not cycles, "import cycles (counting imports inside functions):\n" + "\n".join(map(_describe, cycles))


def test_only_front_ends_import_the_demo_or_the_cli():
    bad = [e for edges in import_graph().values() for e in edges
           if _under(e.target, FRONT_END_TARGETS) and not _under(e.source, FRONT_ENDS)]
    assert not bad, "\n".join(f"{e.source} imports {e.target} ({e.where})" for e in bad)


def test_pure_modules_do_not_import_nnunet_facing_modules():
    nnunet_facing = ("nnunetv2_petct.nnunet", "nnunetv2_petct.distributed")  # the latter: a shim of the former
    bad = [e for edges in import_graph().values() for e in edges
           if is_pure(e.source) and _under(e.target, nnunet_facing) and not _under(e.target, PURE_EXCEPTIONS)]
    assert not bad, "\n".join(f"{e.source} imports {e.target} ({e.where})" for e in bad)


@pytest.mark.parametrize("name,pure", [("nnunetv2_petct.nnunet.plans", True), ("nnunetv2_petct.nnunet", False),
                                       ("nnunetv2_petct.nnunetish", True), ("nnunetv2_petct.cli", False),
                                       ("nnunetv2_petct.conversion.core", True)])
def test_purity_classification_matches_whole_name_parts(name, pure):
    assert is_pure(name) is pure
