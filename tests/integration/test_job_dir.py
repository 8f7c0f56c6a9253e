"""The offload job's node-local directory against another account on the node (issue 12,
finding 5), on the real single-node Slurm, devxnat and dask-jobqueue.

Another Unix account (``bob``, through ``runuser``) prepares the directory a job would
use — predicted as the job script used to name it, ``<base>/xnat-hpc-slurm-$SLURM_JOB_ID``,
for the next job ids — as a directory of his or as a symbolic link to one; tries to read,
enter, rename and replace the directory of a running job; a dask worker preload (a test
double under tests/fixtures) swaps the training script on disk right after the bundle
verified. The node-local base is a root-owned 1777 directory, as a node's ``/tmp`` is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures.accounts import unix_name
from tests.fixtures.offload import SECRET_MARK, scan_tree
from xnat_bridge.offload import JobState

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat]

BOB = unix_name("bob")  # another Unix account: this session's throwaway one
PRELOAD = Path(__file__).resolve().parents[1] / "fixtures" / "swap_preload.py"
SQUAT_AHEAD = 60  # job ids ahead of Slurm's next one that bob prepares (other tests submit too)

SHOW_DIRS = """
import os, sys
data = os.environ["DATASET_DIR"]
n = sum(len(f) for _, _, f in os.walk(data))
print("DATASET_DIR=" + data, flush=True)
print("OUTPUT_DIR=" + os.environ["OUTPUT_DIR"], flush=True)
print("files", n, flush=True)
open(os.path.join(os.environ["OUTPUT_DIR"], "count.txt"), "w").write(str(n))
sys.exit(int(os.environ.get("XNAT_HPC_TEST_EXIT", "0")))
"""

WAITER = """
import os, time
print("DATASET_DIR=" + os.environ["DATASET_DIR"], flush=True)
print("READY", flush=True)
for _ in range(1200):
    time.sleep(0.25)
"""

REAL = """
import os
print("REAL SCRIPT RAN", flush=True)
open(os.path.join(os.environ["OUTPUT_DIR"], "real.txt"), "w").write("real")
"""


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", user, "--", *argv], capture_output=True, text=True,
                          timeout=60, check=False)


def next_job_id() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.split("=")[0].strip() == "NEXT_JOB_ID":
            return int(line.split("=", 1)[1])
    raise AssertionError("scontrol show config gave no NEXT_JOB_ID")


@pytest.fixture
def node_base(offload_env, unix_users, monkeypatch):
    """A node-local base like a node's /tmp (root's, 1777), outside pytest's private
    directories so that bob reaches it, and outside /tmp (a per-job /tmp would hide it)."""
    base = Path(tempfile.mkdtemp(prefix="xnat-hpc-node-", dir="/var/tmp"))
    os.chmod(base, 0o1777)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(base))
    yield base
    shutil.rmtree(base, ignore_errors=True)


def manager(env, **kw):
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.offload import OffloadManager, OffloadPolicy

    policy = OffloadPolicy(staging_dir=str(env.staging), exclusive=False, default_memory=512 * 2**20,
                           default_walltime=600)
    return OffloadManager(env.conn, workspace=env.workspace, policy=policy, sink=MemorySink(), **kw)


def wait_running(m, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = m.get(job_id)
        if rec.state == JobState.RUNNING and "READY" in m.logs(job_id)[0]:
            return rec
        assert not rec.terminal, f"job ended {rec.state.value}: {rec.message}"
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not start: {m.get(job_id).state.value}")


def logged(m, job_id, key: str) -> str:
    for line in m.logs(job_id)[0].splitlines():
        if line.startswith(key + "="):
            return line.split("=", 1)[1]
    raise AssertionError(f"the job's log has no {key}: {m.logs(job_id)[0][-2000:]}")


def job_dirs(base: Path, slurm_job_id: str) -> list[Path]:
    return sorted(base.glob(f"xnat-hpc-slurm-{slurm_job_id}.*"))


def gone(base: Path, slurm_job_id: str, timeout=20) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and job_dirs(base, slurm_job_id):
        time.sleep(0.2)
    return job_dirs(base, slurm_job_id)


def everything_under(path: Path) -> list[str]:
    return [str(p) for p in path.rglob("*")]


def test_directories_bob_prepared_are_never_used(slurm, offload_env, node_base):
    env = offload_env
    first = next_job_id()
    squats = [node_base / f"xnat-hpc-slurm-{i}" for i in range(first, first + SQUAT_AHEAD)]
    for d in squats:  # bob's, open to everyone so that the job could write into it
        r = as_user(BOB, "mkdir", "-m", "777", str(d))
        assert r.returncode == 0, r.stderr
    m = manager(env)
    try:
        rec = m.wait(m.submit("mri", env.script("showdirs.py", SHOW_DIRS)).id, timeout=240)
        assert rec.state == JobState.DONE, rec.message
        assert int(rec.slurm_job_id) < first + SQUAT_AHEAD, "the job's id was not among those prepared"
        data_dir = Path(logged(m, rec.id, "DATASET_DIR"))
        # the job used a fresh directory with a name nobody could predict, not bob's
        job_dir = node_base / data_dir.relative_to(node_base).parts[0]
        assert job_dir.name.startswith(f"xnat-hpc-slurm-{rec.slurm_job_id}.")
        assert job_dir.name != f"xnat-hpc-slurm-{rec.slurm_job_id}" and len(job_dir.name.split(".")[-1]) >= 12
        assert int((m.job_dir(rec.id) / "results" / "count.txt").read_text()) == len(env.dataset.files)
        # nothing of the job landed in bob's directories; they are still his, still there
        for d in squats:
            assert d.is_dir() and d.stat().st_uid != 0 and everything_under(d) == [], d
        assert gone(node_base, rec.slurm_job_id) == []  # wiped after success
    finally:
        m.close()


def test_a_symbolic_link_bob_prepared_is_never_followed(slurm, offload_env, node_base):
    env = offload_env
    trap = Path(tempfile.mkdtemp(prefix="bob-trap-", dir="/var/tmp"))
    os.chmod(trap, 0o777)
    shutil.chown(trap, BOB, BOB)
    first = next_job_id()
    links = [node_base / f"xnat-hpc-slurm-{i}" for i in range(first, first + SQUAT_AHEAD)]
    for link in links:
        r = as_user(BOB, "ln", "-s", str(trap), str(link))
        assert r.returncode == 0, r.stderr
    m = manager(env)
    try:
        # the script runs (so the job had a usable directory), then fails: the wipe after a failure
        env.script("showdirs_fail.py", SHOW_DIRS.replace('os.environ.get("XNAT_HPC_TEST_EXIT", "0")', '"3"'))
        rec = m.wait(m.submit("mri", "showdirs_fail.py").id, timeout=240)
        assert rec.state == JobState.FAILED and rec.exit_code == 3, rec.message
        assert int(rec.slurm_job_id) < first + SQUAT_AHEAD
        data_dir = Path(logged(m, rec.id, "DATASET_DIR"))
        assert not data_dir.is_relative_to(trap) and data_dir.is_relative_to(node_base)
        assert data_dir.relative_to(node_base).parts[0].startswith(f"xnat-hpc-slurm-{rec.slurm_job_id}.")
        assert everything_under(trap) == []  # nothing went through bob's links
        assert all(link.is_symlink() for link in links)
        assert gone(node_base, rec.slurm_job_id) == []  # wiped after failure
    finally:
        m.close()
        shutil.rmtree(trap, ignore_errors=True)


def test_another_account_cannot_read_or_replace_a_running_jobs_directory(slurm, offload_env, node_base):
    env = offload_env
    m = manager(env)
    try:
        rec = m.submit("mri", env.script("waiter.py", WAITER))
        rec = wait_running(m, rec.id)
        data_dir = Path(logged(m, rec.id, "DATASET_DIR"))
        [job_dir] = job_dirs(node_base, rec.slurm_job_id)
        assert data_dir.is_relative_to(job_dir)
        st = job_dir.lstat()
        assert (st.st_uid, st.st_mode & 0o7777) == (os.getuid(), 0o700)
        a_file = next(p for p in data_dir.rglob("*") if p.is_file())
        script = next(job_dir.rglob("waiter.py"))
        attempts = {
            "list": ["ls", "-la", str(job_dir)],
            "read": ["cat", str(a_file)],
            "read the script": ["cat", str(script)],
            "create inside": ["touch", str(job_dir / "bob-was-here")],
            "replace the script": ["cp", "/etc/hostname", str(script)],
            "rename away": ["mv", str(job_dir), str(node_base / "bobs-now")],
            "remove": ["rm", "-rf", str(job_dir)],
            "open the data directory": ["ls", str(data_dir)],
        }
        for what, argv in attempts.items():
            r = as_user(BOB, *argv)
            assert r.returncode != 0, f"bob could {what}: {r.stdout}{r.stderr}"
            assert "denied" in r.stderr or "not permitted" in r.stderr, f"{what}: {r.stderr}"
        assert job_dirs(node_base, rec.slurm_job_id) == [job_dir] and a_file.is_file()
        assert not (node_base / "bobs-now").exists() and not (job_dir / "bob-was-here").exists()
        rec = m.cancel(rec.id)
        rec = m.wait(rec.id, timeout=90)
        assert rec.state == JobState.CANCELLED
        assert gone(node_base, rec.slurm_job_id) == []  # wiped after cancel
        assert scan_tree(node_base, env.samples() + [SECRET_MARK]) == []
    finally:
        m.close()


def test_the_script_that_runs_is_the_verified_one_even_if_the_file_is_swapped(slurm, offload_env, node_base):
    env = offload_env

    def cluster_with_swapper(**options):
        from xnat_bridge.offload.slurm import make_slurm_cluster

        options["worker_extra_args"] = [*options.get("worker_extra_args", []), "--preload", str(PRELOAD)]
        return make_slurm_cluster(**options)

    m = manager(env, cluster_factory=cluster_with_swapper)
    try:
        rec = m.wait(m.submit("mri", env.script("swapcheck.py", REAL)).id, timeout=240)
        markers = list((env.staging / env.conn.user).glob("*.swapped"))
        assert markers and "swapcheck.py" in markers[0].read_text(), "the preload did not swap the script"
        text = m.logs(rec.id)[0]
        assert "SWAPPED SCRIPT RAN" not in text, "the job ran the file swapped in after verification"
        assert rec.state == JobState.DONE, rec.message
        assert "REAL SCRIPT RAN" in text
        results = m.job_dir(rec.id) / "results"
        assert (results / "real.txt").read_text() == "real" and not (results / "swapped.txt").exists()
        assert gone(node_base, rec.slurm_job_id) == []
    finally:
        m.close()


def test_a_base_others_may_rename_in_refuses_the_job_before_the_key(slurm, offload_env, node_base, monkeypatch):
    """A node-local base that another account can write without the sticky bit: bob could
    rename the job's directory away and put his own in its place. The node guard refuses
    the job before a worker starts; the dataset key is never released."""
    env = offload_env
    open_base = node_base / "open"
    open_base.mkdir()
    os.chmod(open_base, 0o777)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(open_base))
    m = manager(env)
    try:
        rec = m.wait(m.submit("mri", env.script("showdirs.py", SHOW_DIRS)).id, timeout=240)
        assert rec.state == JobState.FAILED, rec.message
        out = "".join(p.read_text(errors="replace") for p in (m.job_dir(rec.id) / "slurm").glob("*"))
        assert "job refused" in out and f"{open_base}, above the job's node-local directory, is writable " \
                                         "by others without the sticky bit" in out, out[-3000:]
        actions = [(e.action, e.outcome) for e in m.sink.events]
        assert ("key_release", "allowed") not in actions, actions
        assert everything_under(open_base) == []
    finally:
        m.close()
