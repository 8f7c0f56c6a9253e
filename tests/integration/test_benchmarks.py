"""Every benchmark runs, in its quick mode, in ``make test``: benchmarks cannot rot.

``benchmarks/run_all.py --quick NAME``: small sizes, one round. Each test checks that the script
still runs against the code it measures and prints its table (what names its sides and their
ratio) — never a figure: timings are the benchmarks' business, not the tests'. Slurm and the
development Kubernetes are brought up by the tests' shared fixtures first, so that a script's
own ``up`` finds them running and the tests take them down after the last user.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

BENCHMARKS = REPO / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
#: what each one's table must show (its sides, and that it compared them)
TABLE = {
    "bench_audit.py": ["ingestion", "ratio"],
    "bench_bridge.py": ["api download", "ratio bridge/curl"],
    "bench_datasets.py": ["create_dataset", "ratio curl/ours"],
    "bench_kube_spawn.py": ["xnat-kube", "KubeSpawner", "ratio"],
    "bench_offload.py": ["submit -> RUNNING", "sbatch --wrap", "slurm_start", "worker_start",
                         "extract_bundle", "age -d | tar -x", "ratio ours/plain"],
    "bench_plugin_api.py": ["ratio"],
    "bench_publish.py": ["ratio ours/plain"],
    "bench_spawn.py": ["xnat-slurm", "batchspawner", "ratio ours/plain", "listening",
                       "simultaneous xnat-local spawns"],
    "bench_staging.py": ["through XNAT REST", "from the read-only mount", "tar -c | age -r",
                         "extract_bundle", "age -d | tar -x", "peak RSS", "ratio ours/plain"],
}
NEEDS = {"bench_offload.py": "slurm", "bench_spawn.py": "slurm", "bench_kube_spawn.py": "kube_cluster"}


def _quick() -> dict[str, list[str]]:
    spec = importlib.util.spec_from_file_location("bench_run_all", BENCHMARKS / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # run_all's main() only runs as a script
    return module.QUICK


def test_every_benchmark_has_a_quick_mode_and_a_table_checked_here():
    assert SCRIPTS, "no benchmark found: the glob is broken"
    assert sorted(_quick()) == SCRIPTS
    assert sorted(TABLE) == SCRIPTS


#: those that run alone, after the parallel run (``-m exclusive``): the Kubernetes one opens a
#: site in the tests' namespace (its claims' names are the kube tests'), the Slurm ones wait for
#: an idle partition and start hubs of their own
ALONE = {"bench_kube_spawn.py", "bench_offload.py", "bench_spawn.py"}


@pytest.mark.parametrize("script", [pytest.param(s, marks=pytest.mark.exclusive) if s in ALONE else s
                                    for s in SCRIPTS])
def test_the_benchmark_runs_in_its_quick_mode_and_prints_its_table(script, request):
    if script in NEEDS:
        request.getfixturevalue(NEEDS[script])
    before = set(_temp_dirs())
    env = {**os.environ, "TMPDIR": "/var/tmp", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "run_all.py"), "--quick", script],
                          capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    out = done.stdout + done.stderr
    print(out)  # the table, in the test's report
    assert done.returncode == 0, out[-4000:]
    missing = [word for word in TABLE[script] if word not in out]
    assert not missing, f"{script}'s table lacks {missing}:\n{out[-3000:]}"
    assert "Traceback" not in out, out[-3000:]
    assert set(_temp_dirs()) - before == set(), "the benchmark left its temp dir behind"


def _temp_dirs() -> list[Path]:
    return [p for pattern in ("bench-*", "xnat-hpc-bench-*") for p in Path("/var/tmp").glob(pattern)]
