"""The house rules of docs/architecture.md, checked on the source.

* no import cycle among the project's modules (lazy imports in functions included);
* dependency direction: ``spawner`` → ``hub_ext`` → ``xnat_bridge``; the
  development stand-ins (``devxnat``, ``devstack``) are imported by nothing of
  the product, and ``devxnat`` imports nothing of the product either;
* ``import xnat_bridge`` (what runs in a researcher's server) loads neither
  numpy nor a development stand-in nor anything of the hub side.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ("hub_ext", "spawner", "xnat_bridge", "xnat_hpc_governance")
STAND_INS = ("devxnat", "devstack")
PACKAGES = PRODUCT + STAND_INS

#: which of our packages each package may import (module level or lazily)
ALLOWED = {
    "xnat_bridge": {"xnat_bridge"},
    "hub_ext": {"hub_ext", "xnat_bridge"},
    "spawner": {"spawner", "hub_ext", "xnat_bridge"},
    # the governance service's process: the hub side's governance modules, never the spawners
    "xnat_hpc_governance": {"xnat_hpc_governance", "hub_ext", "xnat_bridge"},
    "devxnat": {"devxnat"},
    "devstack": {"devstack", "devxnat", "hub_ext", "spawner", "xnat_bridge"},
}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _is_package(mod: str) -> bool:
    return MODULES[mod].name == "__init__.py"


def _resolve(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if _is_package(mod) else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(mod: str, node: ast.AST) -> list[str]:
    """Our modules *node* imports (the submodule when ``from pkg import submodule``)."""
    out = []
    if isinstance(node, ast.Import):
        out = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        target = _resolve(mod, node)
        for alias in node.names:
            sub = f"{target}.{alias.name}"
            out.append(sub if sub in MODULES else target)
    found = []
    for name in out:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.append(name)
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> our modules it imports, at module level or inside functions."""
    graph = {}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
        graph[mod] = {t for n in nodes for t in _targets(mod, n) if t != mod}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_relative_imports_resolve_to_our_modules():
    node = ast.parse("from ..errors import XnatHpcError\nfrom . import engine").body
    assert _targets("xnat_bridge.staging.area", node[0]) == ["xnat_bridge.errors"]
    assert _targets("xnat_bridge.staging.area", node[1]) == ["xnat_bridge.staging.engine"]
    assert _targets("xnat_bridge.staging", node[1]) == ["xnat_bridge.staging.engine"]


def test_no_import_cycle_among_our_modules():
    """Counted with the imports inside functions too: a lazy import that only hides a cycle
    is still two modules that need each other."""
    assert _cycles(_graph()) == []


@pytest.mark.parametrize("package", PACKAGES)
def test_dependency_direction(package):
    wrong = sorted(f"{mod} imports {target}"
                   for mod, targets in _graph().items()
                   if mod.split(".")[0] == package
                   for target in targets if target.split(".")[0] not in ALLOWED[package])
    assert wrong == []


def test_the_researchers_server_package_loads_no_stand_in_and_no_numpy():
    code = ("import sys, xnat_bridge, xnat_bridge.offload, xnat_bridge.serverext, xnat_bridge.staging\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('numpy', 'sklearn', 'devxnat', 'devstack', 'hub_ext', 'spawner', 'jupyterhub'))\n"
            "print(' '.join(bad))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == []
