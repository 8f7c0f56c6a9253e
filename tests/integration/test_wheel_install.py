"""Install xnat-hpc-hub the way a site does: build the wheel, install it where there is no Node.

From a clean copy of the tree (its tracked files, and the untracked ones git does not ignore:
no node_modules, no built extension), ``python -m build`` builds the sdist and from it the
wheel (the jupyter-builder hook runs npm once, for the sdist); ``twine check`` and
``check-wheel-contents`` accept them. The wheel is then installed with the ``server`` extra
into a fresh virtualenv from Debian's python3, with a PATH on which there is no node or npm,
and there:

* ``jupyter labextension list`` shows the prebuilt lab extension enabled and OK;
* ``jupyter server extension list`` shows ``xnat_bridge.serverext`` enabled and OK;
* ``import xnat_bridge`` (with offload, server extension, widgets) works with only ``[server]``,
  and the hub's backends fail with a message naming the ``[hub]`` extra.

Dependencies come from PyPI once, into a wheelhouse (``/var/tmp/xnat-hpc-pytest/wheelhouse``,
kept between runs); later runs install from it without the network.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from tests.fixtures.shared_service import machine_lock

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path(os.environ.get("XNAT_HPC_WHEELHOUSE", "/var/tmp/xnat-hpc-pytest/wheelhouse"))
LAB = "share/jupyter/labextensions/xnat-hpc-hub"
ANSI = re.compile(r"\x1b\[[0-9;]*m")

# the npm install of the build and the first download of the dependencies take minutes
pytestmark = pytest.mark.timeout(1800)

TIMINGS: dict[str, float] = {}


def _run(argv, *, cwd=None, env=None, timeout=900, check=True) -> subprocess.CompletedProcess:
    t0 = time.monotonic()
    proc = subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    proc.seconds = time.monotonic() - t0
    if check and proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n"
                    f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def _tree_files() -> list[str]:
    """The files of a clean checkout: tracked, or untracked and not ignored (before a commit)."""
    out = _run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"]).stdout
    return sorted({f for f in out.split("\0") if f and (ROOT / f).is_file()})


def _no_node_path() -> str:
    """PATH without the directories that hold node or npm (Debian's are in /usr/bin)."""
    keep = [d for d in os.environ.get("PATH", "").split(os.pathsep)
            if d and not any(os.path.exists(os.path.join(d, p)) for p in ("node", "nodejs", "npm"))]
    return os.pathsep.join(keep)


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> dict[str, Path]:
    src = tmp_path_factory.mktemp("wheel-src")
    files = _tree_files()
    assert "pyproject.toml" in files and "labextension/package-lock.json" in files
    for rel in files:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    assert not (src / "xnat_bridge/labextension").exists()
    assert not (src / "labextension/node_modules").exists()
    # npm: take what its cache holds without asking the registry again (the lock file pins it)
    env = {**os.environ, "npm_config_prefer_offline": "true", "npm_config_audit": "false",
           "npm_config_fund": "false", "npm_config_update_notifier": "false"}
    proc = _run([sys.executable, "-m", "build", "--outdir", src / "dist", src], cwd=src, env=env,
                timeout=1200)
    TIMINGS["python -m build (sdist + wheel, npm install + build:prod)"] = proc.seconds
    wheels = sorted((src / "dist").glob("xnat_hpc_hub-*.whl"))
    sdists = sorted((src / "dist").glob("xnat_hpc_hub-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list((src / "dist").iterdir())
    # the wheel was built from the sdist, which carries the built extension: npm ran once
    assert "Skip-if-exists file(s) found" in proc.stdout + proc.stderr
    return {"wheel": wheels[0], "sdist": sdists[0], "src": src}


def test_twine_and_check_wheel_contents_accept_the_distributions(dist):
    proc = _run([sys.executable, "-m", "twine", "check", "--strict", dist["wheel"], dist["sdist"]])
    assert proc.stdout.count("PASSED") == 2, proc.stdout
    _run([sys.executable, "-m", "check_wheel_contents", dist["wheel"]], cwd=dist["src"])


def test_the_wheel_holds_the_built_extension_and_the_server_config_not_the_dev_tooling(dist):
    names = zipfile.ZipFile(dist["wheel"]).namelist()
    data = next(n.split("/data/")[0] for n in names if ".data/data/" in n) + "/data/"
    for needed in (f"{LAB}/package.json", f"{LAB}/install.json", f"{LAB}/static/style.js",
                   "etc/jupyter/jupyter_server_config.d/xnat_hpc_hub.json",
                   "share/jupyter/lab/settings/overrides.d/xnat-hpc-hub.json"):
        assert data + needed in names, needed
    assert any(re.fullmatch(re.escape(data + LAB) + r"/static/remoteEntry\.[0-9a-f]+\.js", n) for n in names)
    tops = {n.split("/")[0] for n in names if not n.startswith("xnat_hpc_hub-")}
    assert tops == {"hub_ext", "spawner", "xnat_bridge", "xnat_hpc_governance"}, tops
    assert "xnat_bridge/serverext/openapi.yaml" in names
    assert not any("/labextension/" in n and not n.startswith(data) for n in names)
    meta = zipfile.ZipFile(dist["wheel"]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    for extra in ("hub", "server", "demo", "test"):
        assert f"Provides-Extra: {extra}" in meta
    assert re.search(r"^Requires-Dist: batchspawner>=1.3; extra == ['\"]hub['\"]$", meta, re.M)
    assert not re.search(r"^Requires-Dist: (jupyterhub|numpy|scikit-learn)[^;]*$", meta, re.M)


def test_the_sdist_can_rebuild_the_extension_and_carries_no_node_modules(dist):
    with tarfile.open(dist["sdist"]) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for needed in ("labextension/package.json", "labextension/package-lock.json",
                   "labextension/tsconfig.json", "labextension/src/index.ts",
                   "labextension/install.json", "xnat_bridge/labextension/static/style.js",
                   "devxnat/__init__.py", "devstack/__init__.py", "tests/conftest.py",
                   "docs/admin.md", "config/profiles.yaml",
                   "jupyter-config/jupyter_server_config.d/xnat_hpc_hub.json"):
        assert needed in names, needed
    assert not any(n.startswith(("labextension/node_modules/", "labextension/lib/")) for n in names)


def _install(venv: Path, wheel: Path, env: dict) -> subprocess.CompletedProcess:
    with machine_lock("wheelhouse"):  # the wheelhouse is shared with the kube image's build
        return _install_locked(venv, wheel, env)


def _install_locked(venv: Path, wheel: Path, env: dict) -> subprocess.CompletedProcess:
    # --no-compile: no .pyc for ~140 distributions (a minute on a busy machine); imports still work
    pip = [venv / "bin/python", "-m", "pip", "install", "-q", "--no-compile", "--no-index",
           "--find-links", WHEELHOUSE, f"{wheel}[server]"]
    for stale in WHEELHOUSE.glob("xnat_hpc_hub-*"):
        stale.unlink()  # the wheel under test comes from dist/, never from the wheelhouse
    proc = _run(pip, env=env, timeout=900, check=False)
    if proc.returncode != 0:
        # first run (or new dependencies): fill the wheelhouse from PyPI, then install offline
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        fill = _run([sys.executable, "-m", "pip", "wheel", "-q", "--find-links", WHEELHOUSE,
                     "-w", WHEELHOUSE, f"{wheel}[server]"], timeout=1200)
        TIMINGS["pip wheel into the wheelhouse (PyPI)"] = fill.seconds
        for stale in WHEELHOUSE.glob("xnat_hpc_hub-*"):
            stale.unlink()
        proc = _run(pip, env=env, timeout=900)
    TIMINGS["pip install wheel[server] from the wheelhouse"] = proc.seconds
    return proc


@pytest.fixture(scope="module")
def server_venv(dist, tmp_path_factory) -> tuple[Path, dict]:
    venv = tmp_path_factory.mktemp("server-venv") / "venv"
    _run(["/usr/bin/python3", "-m", "venv", venv])
    home = tmp_path_factory.mktemp("home")
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{_no_node_path()}", "HOME": str(home),
           "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           "PYTHONNOUSERSITE": "1"}
    _install(venv, dist["wheel"], env)
    return venv, env


def test_no_node_on_the_install_machine(server_venv):
    venv, env = server_venv
    proc = _run([venv / "bin/python", "-c",
                 "import shutil; print(shutil.which('node'), shutil.which('npm'), shutil.which('jupyter'))"],
                env=env, cwd="/")
    node, npm, jupyter = proc.stdout.split()
    assert node == "None" and npm == "None"
    assert jupyter == str(venv / "bin/jupyter")


def test_both_extensions_are_enabled_in_the_fresh_venv(server_venv):
    venv, env = server_venv
    lab = _run([venv / "bin/jupyter", "labextension", "list"], env=env, cwd="/")
    out = ANSI.sub("", lab.stdout + lab.stderr)
    assert re.search(r"^\s*xnat-hpc-hub v\S+ enabled OK \(python, xnat-hpc-hub\)", out, re.M), out
    assert str(venv / LAB.rpartition("/")[0]) in out
    server = _run([venv / "bin/jupyter", "server", "extension", "list"], env=env, cwd="/")
    out = ANSI.sub("", server.stdout + server.stderr)
    assert re.search(r"^\s*xnat_bridge\.serverext enabled\s*$", out, re.M), out
    assert re.search(r"^\s*xnat_bridge\.serverext\s.*\bOK\b", out, re.M), out
    # the lab's defaults (no "Jupyter news" prompt) arrive with the wheel, where JupyterLab reads them
    settings = json.loads((venv / "share/jupyter/lab/settings/overrides.d/xnat-hpc-hub.json").read_text())
    assert settings["@jupyterlab/apputils-extension:notification"]["fetchNews"] == "false"


def test_the_server_extra_imports_the_bridge_and_names_the_hub_extra_for_the_hub(server_venv):
    venv, env = server_venv
    py = venv / "bin/python"
    _run([py, "-c", "import xnat_bridge, xnat_bridge.offload, xnat_bridge.serverext, "
                    "xnat_bridge.serverext.app, xnat_bridge.widgets, xnat_bridge.offload.slurm as s; "
                    "s.load_slurm_cluster()"], env=env, cwd="/")
    assert (venv / "bin/jupyterhub-singleuser").exists()
    for module, dists in (("spawner.slurm", ["batchspawner"]),
                          ("spawner.kube", ["jupyterhub-kubespawner", "kubernetes-asyncio"])):
        proc = _run([py, "-c", f"import {module}"], env=env, cwd="/", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "MissingExtra" in proc.stderr and "xnat-hpc-hub[hub]" in proc.stderr, proc.stderr[-2000:]
        assert any(f"needs {d}, which is not installed" in proc.stderr for d in dists), proc.stderr[-2000:]
    # nothing of the development tooling came with the wheel
    proc = _run([py, "-c", "import devxnat"], env=env, cwd="/", check=False)
    assert proc.returncode == 1 and "No module named 'devxnat'" in proc.stderr
    _run([py, "-m", "pip", "check"], env=env, cwd="/")


def test_report_timings(server_venv):
    for what, seconds in TIMINGS.items():
        print(f"{what}: {seconds:.0f} s")
    assert TIMINGS
