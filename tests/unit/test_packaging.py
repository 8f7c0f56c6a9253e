"""The wheel's dependency lists agree with the code's imports, per role (pyproject.toml).

* every third-party module a package imports (module level or lazily) is provided by a
  distribution that the package's role declares: ``xnat_bridge`` → base + ``server``,
  ``hub_ext``/``spawner`` → base + ``hub``, the development stand-ins → base + every role +
  ``demo``, ``tests`` → all of them + ``test``;
* what runs at import time is narrower still: ``import xnat_bridge`` (which the hub imports
  too) needs the base dependencies only, the hub's modules base + ``hub``, the server's
  modules base + ``server``;
* an import site of an optional dependency says which extra to install (xnat_bridge.extras),
  checked by importing the real module in a subprocess with that dependency made missing;
* the build configuration ships the built lab extension and the server extension's config,
  and the bootstrap installs one exact configurable-http-proxy.

tests/integration/test_wheel_install.py builds and installs the real wheel.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as md
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from xnat_bridge.extras import MissingExtra, missing_extra_message, needs_extra

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
OWN = {"hub_ext", "spawner", "xnat_bridge", "xnat_hpc_governance", "devxnat", "devstack", "tests"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _names(reqs: list[str]) -> set[str]:
    return {_norm(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in reqs}


BASE = _names(PROJECT["dependencies"])
ROLE = {extra: _names(reqs) for extra, reqs in EXTRAS.items()}
ALL_ROLES = BASE | ROLE["hub"] | ROLE["server"] | ROLE["demo"]
#: what each package may import, as distributions
ALLOWED = {
    "xnat_bridge": BASE | ROLE["server"],
    "hub_ext": BASE | ROLE["hub"],
    "spawner": BASE | ROLE["hub"],
    "xnat_hpc_governance": BASE | ROLE["hub"],
    "devxnat": ALL_ROLES,
    "devstack": ALL_ROLES,
    "tests": ALL_ROLES | ROLE["test"],
}
_DISTS = md.packages_distributions()


def _distributions(top: str) -> set[str]:
    return {_norm(d) for d in _DISTS.get(top, ())}


def _module_files(pkg: str) -> dict[str, Path]:
    mods = {}
    for path in sorted((ROOT / pkg).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = {m: p for pkg in OWN for m, p in _module_files(pkg).items()}


def _absolute(mod: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if MODULES[mod].name == "__init__.py" else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imported(mod: str, nodes) -> list[str]:
    """Absolute names of what *nodes* import (``pkg.sub`` for ``from pkg import sub``)."""
    out = []
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _absolute(mod, node)
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append(sub if sub in MODULES else target)
    return out


def _module_level(tree: ast.Module):
    """Import nodes that run when the module is imported (not in functions, not TYPE_CHECKING)."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo += node.orelse
        else:
            todo += [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.stmt)]


def _trees() -> dict[str, ast.Module]:
    return {m: ast.parse(p.read_text(), str(p)) for m, p in MODULES.items()}


TREES = _trees()


def _third_party(names) -> set[str]:
    tops = {n.split(".")[0] for n in names if n}
    return {t for t in tops if t not in OWN and t not in sys.stdlib_module_names and t != "__future__"}


def _own(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _import_time_closure(start: str) -> set[str]:
    """Third-party top-level modules that importing *start* imports through our own modules."""
    seen, todo, third = set(), [start], set()
    while todo:
        mod = todo.pop()
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        chain = [".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 2)]
        for m in chain:
            if m in seen or m not in MODULES:
                continue
            seen.add(m)
            names = _imported(m, _module_level(TREES[m]))
            third |= _third_party(names)
            todo += [o for o in map(_own, names) if o]
    return third


def _uncovered(tops: set[str], allowed: set[str]) -> dict[str, str]:
    out = {}
    for top in sorted(tops):
        dists = _distributions(top)
        if not dists:
            out[top] = "not installed here: no distribution provides it"
        elif not dists & allowed:
            out[top] = f"provided by {sorted(dists)}, not declared for this role"
    return out


@pytest.mark.parametrize("pkg", sorted(ALLOWED))
def test_every_third_party_import_is_declared_for_the_packages_role(pkg):
    tops = set()
    for mod in (m for m in MODULES if m.split(".")[0] == pkg):
        nodes = [n for n in ast.walk(TREES[mod]) if isinstance(n, (ast.Import, ast.ImportFrom))]
        # relative imports are ours; absolute ones name their top-level module
        tops |= _third_party(_imported(mod, [n for n in nodes if not getattr(n, "level", 0)]))
    if pkg in ("xnat_bridge", "hub_ext", "spawner", "tests"):
        assert tops, f"found no third-party import in {pkg}: the checker is broken"
    assert not _uncovered(tops, ALLOWED[pkg]), (
        f"{pkg} imports modules whose distribution its role does not declare in pyproject.toml")


@pytest.mark.parametrize(("start", "allowed"), [
    ("xnat_bridge", "base"),
    ("xnat_bridge.connection", "base"),
    ("xnat_bridge.offload.manager", "base"),
    ("xnat_bridge.offload.worker", "base"),
    ("xnat_bridge.serverext.app", "server"),
    ("xnat_bridge.widgets", "server"),
    ("hub_ext.auth", "hub"),
    ("xnat_hpc_governance.owner", "hub"),
    ("hub_ext.cli", "base"),
    ("spawner.dispatch", "hub"),
    ("spawner.slurm", "hub"),
    ("spawner.kube", "hub"),
    ("spawner.local", "hub"),
])
def test_what_a_module_imports_at_import_time_comes_with_its_role(start, allowed):
    tops = _import_time_closure(start)
    declared = BASE if allowed == "base" else BASE | ROLE[allowed]
    assert not _uncovered(tops, declared), (start, _uncovered(tops, declared))


def test_the_import_time_check_sees_through_packages_and_relative_imports():
    # the offload manager imports ..staging (pyrage) and ..client (requests) through packages
    assert {"requests", "pyrage"} <= _import_time_closure("xnat_bridge.offload.manager")
    assert "batchspawner" in _import_time_closure("spawner.slurm")
    # xnat_bridge/__init__ imports its names on first use (the node's processes stay light)
    assert _import_time_closure("xnat_bridge") == set()
    assert "batchspawner" in _uncovered({"batchspawner"}, BASE | ROLE["server"])


def test_the_roles_do_not_drag_in_each_other():
    assert not ROLE["hub"] & {"jupyterlab", "jupyter-server", "xnat", "dask-jobqueue", "ipywidgets"}
    assert not ROLE["server"] & {"batchspawner", "jupyterhub-kubespawner"}
    assert not (BASE | ROLE["hub"] | ROLE["server"]) & {"numpy", "scikit-learn"}
    # the single-user server command of every backend (jupyterhub-singleuser) comes with jupyterhub
    assert "jupyterhub" in ROLE["server"]


def test_missing_extra_names_the_extra_and_the_distribution():
    msg = missing_extra_message("kubespawner.spawner", "hub", "the Kubernetes backend")
    assert "jupyterhub-kubespawner" in msg and "xnat-hpc-hub[hub]" in msg
    assert "the Kubernetes backend" in msg
    with pytest.raises(MissingExtra) as info, needs_extra("server", "xnatpy"):
        importlib.import_module("xnat_hpc_hub_no_such_module")
    assert isinstance(info.value, ImportError) and info.value.name == "xnat_hpc_hub_no_such_module"
    assert "xnat-hpc-hub[server]" in str(info.value)
    # a missing module of our own is a broken install, not a missing extra
    with pytest.raises(ModuleNotFoundError) as own, needs_extra("hub", "x"):
        importlib.import_module("xnat_bridge.no_such_module")
    assert not isinstance(own.value, MissingExtra)


#: run first in the subprocess: makes the modules named in BLOCKED (top level) unimportable, as
#: on a machine installed without them
_BLOCK = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, _Block())
"""


def _run_without(missing: str, code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", f"BLOCKED = {{{missing!r}}}\n{_BLOCK}\n{code}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "missing", "extra"), [
    ("spawner.slurm", "batchspawner", "hub"),
    ("spawner.kube", "kubespawner", "hub"),
    ("hub_ext.auth", "jupyterhub", "hub"),
    ("spawner.dispatch", "jupyterhub", "hub"),
    ("xnat_bridge.serverext.app", "jupyter_server", "server"),
    ("xnat_bridge.widgets", "ipywidgets", "server"),
])
def test_importing_without_the_extra_says_which_extra_to_install(module, missing, extra):
    # the real module, in a fresh interpreter where *missing* cannot be imported
    proc = _run_without(missing, f"import {module}")
    assert proc.returncode != 0, f"{module} imported although {missing} was missing"
    assert "MissingExtra" in proc.stderr and f"xnat-hpc-hub[{extra}]" in proc.stderr, proc.stderr[-2000:]


def test_offload_says_which_extra_brings_dask_jobqueue():
    proc = _run_without("dask_jobqueue", "from xnat_bridge.offload.slurm import load_slurm_cluster\n"
                                         "load_slurm_cluster()")
    assert proc.returncode != 0 and "xnat-hpc-hub[server]" in proc.stderr, proc.stderr[-2000:]


def test_the_wheel_ships_the_built_lab_extension_and_the_server_config():
    build = PYPROJECT["tool"]["hatch"]["build"]
    shared = build["targets"]["wheel"]["shared-data"]
    assert shared["xnat_bridge/labextension"] == "share/jupyter/labextensions/xnat-hpc-hub"
    config = [k for k, v in shared.items() if v.startswith("etc/jupyter/jupyter_server_config.d/")]
    assert config and all((ROOT / k).is_file() for k in config)
    assert '"xnat_bridge.serverext": true' in (ROOT / config[0]).read_text()
    hook = build["hooks"]["jupyter-builder"]
    assert "xnat_bridge/labextension/static/style.js" in hook["ensured-targets"]
    assert hook["skip-if-exists"] == ["xnat_bridge/labextension/static/style.js"]
    # the hook runs the same npm script as scripts/build-labextension.sh
    assert hook["build-kwargs"]["build_cmd"] == "build:prod"
    assert "npm run --silent build:prod" in (ROOT / "scripts/build-labextension.sh").read_text()
    # the lab extension's name in package.json is the directory the wheel installs
    import json

    pkg = json.loads((ROOT / "labextension/package.json").read_text())
    assert pkg["name"] == "xnat-hpc-hub"
    assert pkg["jupyterlab"]["outputDir"] == "../xnat_bridge/labextension"


def test_bootstrap_installs_one_exact_configurable_http_proxy():
    text = (ROOT / "scripts/bootstrap.sh").read_text()
    pin = re.search(r'^CHP_VERSION=(\S+)', text, re.M)
    assert pin and re.fullmatch(r"\d+\.\d+\.\d+", pin.group(1)), "CHP_VERSION must be an exact version"
    assert 'configurable-http-proxy@"$CHP_VERSION"' in text


def test_readme_links_stay_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links, "README.md has no link: the checker is broken"
    for link in links:
        assert "://" not in link and not link.startswith(("//", "mailto:")), link
        assert (ROOT / link.split("#")[0]).exists(), f"README.md links {link}, which is not in the repository"
    assert not re.findall(r"<(?:https?|ftp)://[^>]*>", text), "autolinks leave the repository"
    assert not re.findall(r"^\[[^\]]+\]:\s*\S+://", text, re.M), "reference links leave the repository"


def test_readme_quick_start_is_make_demo_and_make_test():
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", quick, re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]
    assert commands == ["make demo", "make test"]
    assert "docs/admin.md" in text.split("## Deploy on a real site", 1)[1].split("\n## ", 1)[0]
