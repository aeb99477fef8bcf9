"""The layout says what depends on what: no import cycles, and evaluation/dalle/vqvae need no training code.

The import graph is read from the source (``ast``), every ``import`` counted,
including those inside functions, so a cycle hidden behind a lazy import is
still one.
"""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cli", "common", "configs", "dalle", "evaluation", "serve", "synth", "train", "vqvae")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the project's packages."""
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


def _imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name ``path`` imports (``from a.b import c`` gives ``a.b`` and ``a.b.c``)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if path.name != "__init__.py":
                    base = base[:-1]
                base = base[:len(base) - (node.level - 1)]
                pkg = ".".join(base + ([node.module] if node.module else []))
            else:
                pkg = node.module or ""
            names.add(pkg)
            names.update(f"{pkg}.{a.name}" for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (resolved to the longest existing prefix)."""
    mods = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in mods.items():
        deps = {resolve(n) for n in _imported_names(path, module)} - {None, module}
        graph[module] = deps
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_find_cycles_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_imports():
    graph = import_graph()
    assert "evaluation.checker" in graph and "synth.scenes" in graph["evaluation.checker"]
    assert len(graph) > 50


def test_project_import_graph_has_no_cycles():
    assert find_cycles(import_graph()) == []


def test_dalle_and_vqvae_import_no_training_code():
    """Sampling works with torch alone: dalle/ and vqvae/ import no lightning, train or cli."""
    bad = []
    for pkg in ("dalle", "vqvae"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for name in _imported_names(path, module):
                if name.split(".")[0] in ("lightning", "pytorch_lightning", "train", "cli"):
                    bad.append(f"{path.relative_to(ROOT)} imports {name}")
    assert bad == []


def test_evaluation_and_common_import_no_training_code():
    """Counted on the import graph, lazy imports included: evaluation/ and common/ reach train/ nowhere."""
    graph = import_graph()
    bad = [f"{m} -> {d}" for m, deps in graph.items() if m.split(".")[0] in ("evaluation", "common")
           for d in deps if d.split(".")[0] in ("train", "cli")]
    assert bad == []
    assert "common.samples" in graph["evaluation.scorer_eval"]      # the check sees the real edges


@pytest.mark.parametrize("module", ["evaluation.run", "evaluation.scorer_eval"])
def test_importing_evaluation_loads_no_lightning_and_no_train(module):
    code = (f"import sys, json, {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('lightning', 'pytorch_lightning', 'lightning_fabric', 'train', 'cli'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True, timeout=120)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
