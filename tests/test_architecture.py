"""The import structure of harness/ (ARCHITECTURE.md, "The layer rule").

Two checks. One of our own, with the standard library only: no import cycle among the modules
of harness/, counting every import statement, at module level or inside a function (a lazy
import is still a dependency). The other runs the import-linter contracts of pyproject.toml
(the layers of the data flow, what the site may not import, no cycle inside a package) through
``lint-imports``; without import-linter that half skips, unless UNLEARN_REQUIRE_TOOLS=1 (CI)
makes it a failure. Imports of libraries outside harness/ (torch, diffusers, ray, ... loaded
lazily inside functions) are not part of either graph.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"


# ----------------------------------------------------------------------------- the graph
def modules(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, is a package's __init__) for every .py file under the package."""
    out = {}
    for f in sorted(package_dir.rglob("*.py")):
        parts = list(f.relative_to(package_dir.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts.pop()
        out[".".join(parts)] = (f, is_pkg)
    return out


def import_graph(package_dir: Path) -> dict[str, dict[str, list[int]]]:
    """module -> {module of the same package it imports: [line numbers]}. Every ``import`` and
    ``from ... import`` statement counts, wherever it stands; relative imports are resolved, and
    ``from pkg import name`` counts ``pkg.name`` where that is a module, else ``pkg``."""
    mods = modules(package_dir)
    top = package_dir.name

    def known(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, dict[str, list[int]]] = {}
    for mod, (path, is_pkg) in mods.items():
        edges = graph.setdefault(mod, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod if is_pkg else mod.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                if t == top or t.startswith(top + "."):
                    found = known(t)
                    if found and found != mod:
                        edges.setdefault(found, []).append(node.lineno)
    return graph


def cycles(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, {})))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return sorted(found)


def describe(graph, comp: list[str]) -> str:
    inside = set(comp)
    edges = [f"  {a} -> {b} (line {', '.join(map(str, lines))})" for a in comp for b, lines in sorted(graph[a].items()) if b in inside]
    return f"{len(comp)} modules in a cycle:\n" + "\n".join(edges)


# ----------------------------------------------------------------------------- the checker itself
def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        p = tmp_path / "pkg" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return tmp_path / "pkg"


def test_a_cycle_through_an_import_inside_a_function_is_found(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "low.py": "def f():\n    from pkg.high import g\n    return g\n",
        "high.py": "from pkg import low\n\ndef g():\n    return low\n",
        "side.py": "import os\nimport pkg.low\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg.low"] == {"pkg.high": [2]} and graph["pkg.high"] == {"pkg.low": [1]}
    assert graph["pkg.side"] == {"pkg.low": [2]}  # os is not of the package
    assert cycles(graph) == [["pkg.high", "pkg.low"]]


def test_relative_imports_and_package_inits_are_resolved(tmp_path):
    pkg = _package(tmp_path, {
        "__init__.py": "from .sub import thing\n",
        "sub/__init__.py": "from . import leaf\nthing = 1\n",
        "sub/leaf.py": "class C:\n    def m(self):\n        from .. import other\n",
        "other.py": "from pkg.sub.leaf import C\n",
    })
    graph = import_graph(pkg)
    assert graph["pkg"] == {"pkg.sub": [1]}
    assert graph["pkg.sub"] == {"pkg.sub.leaf": [1]}
    assert graph["pkg.sub.leaf"] == {"pkg.other": [3]}
    assert graph["pkg.other"] == {"pkg.sub.leaf": [1]}
    assert cycles(graph) == [["pkg.other", "pkg.sub.leaf"]]


def test_the_graph_of_harness_holds_its_function_level_imports():
    graph = import_graph(ROOT / "harness")
    assert len(graph) > 100
    assert "harness.gate.images" in graph["harness.cli.runs"]  # imported inside cmd_images
    assert "harness.metrics.common" in graph["harness.metrics"]


# ----------------------------------------------------------------------------- harness/
def test_no_import_cycle_among_harness_modules():
    graph = import_graph(ROOT / "harness")
    found = cycles(graph)
    assert not found, "\n".join(describe(graph, c) for c in found)


def _contracts() -> list[dict]:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["importlinter"]["contracts"]


def test_every_module_sits_in_a_layer():
    """A new module cannot escape the layers contract: it is a layer, inside one, or a package
    __init__ that imports nothing of harness (the root, which connects harness.catalog, aside)."""
    (layers,) = [c for c in _contracts() if c["type"] == "layers"]
    names = [n.strip() for layer in layers["layers"] for n in layer.replace(":", "|").split("|")]
    graph = import_graph(ROOT / "harness")
    loose = [m for m in graph if m != "harness" and not any(m == n or m.startswith(n + ".") for n in names)
             and (graph[m] or not modules(ROOT / "harness")[m][1])]
    assert not loose, f"modules in no layer of pyproject.toml's layers contract: {loose}"


def _lint_imports() -> str:
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    if Path(exe).is_file():
        return exe
    if os.environ.get("UNLEARN_REQUIRE_TOOLS") == "1":
        pytest.fail("lint-imports missing (the dev extra installs import-linter: make install)")
    pytest.skip("import-linter is not installed")


def _run_contracts(config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([_lint_imports(), "--config", str(config), "--no-cache"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_linter_contracts_are_kept():
    out = _run_contracts(PYPROJECT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout and "Layers of the data flow KEPT" in out.stdout


def test_import_linter_reports_a_layer_out_of_order(tmp_path):
    """The contract is read and enforced: with store above spec (spec reads store), it breaks."""
    text = PYPROJECT.read_text()
    assert text.count('    "harness.spec",\n    "harness.store",\n') == 1
    swapped = tmp_path / "pyproject.toml"
    swapped.write_text(text.replace('    "harness.spec",\n    "harness.store",\n', '    "harness.store",\n    "harness.spec",\n'))
    out = _run_contracts(swapped)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Layers of the data flow BROKEN" in out.stdout and "harness.spec is not allowed to import harness.store" in out.stdout


# ----------------------------------------------------------------------------- harness.catalog
def test_the_suite_checks_ask_the_registries_through_the_catalog(monkeypatch):
    """spec/ imports neither registry: the package root connects them to harness.catalog, and a
    suite's metric and attack names are checked against whatever it connects."""
    from types import SimpleNamespace

    from harness import catalog, metrics
    from harness.attacks.runner import attacks
    from harness.spec import MetricSpec, PromptAttack

    assert catalog.metrics() is metrics and catalog.attacks() == attacks()
    assert "harness.metrics" not in import_graph(ROOT / "harness")["harness.spec.suite"]
    MetricSpec(name="ua")
    PromptAttack(attack="unlearndiffatk")
    stand_in = SimpleNamespace(known_metrics=lambda: {"only_this"}, info=metrics.info)
    monkeypatch.setattr(catalog, "_metrics", lambda: stand_in)
    monkeypatch.setattr(catalog, "_attacks", lambda: {})
    with pytest.raises(ValueError, match="unknown metric 'ua'; known: only_this"):
        MetricSpec(name="ua")
    with pytest.raises(ValueError, match="unknown attack 'unlearndiffatk'"):
        PromptAttack(attack="unlearndiffatk")
    monkeypatch.setattr(catalog, "_metrics", None)
    with pytest.raises(RuntimeError, match="no metric registry connected"):
        catalog.metrics()
