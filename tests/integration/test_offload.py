"""Secure offload end to end: devxnat (alice) → encrypted bundle → real Slurm
(secure partition, dask-jobqueue, TLS) → results back, with scans of the
staging area, Slurm's state directory and node-local storage for plaintext
and keys while the job runs and after."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from tests.fixtures.offload import SECRET_MARK, scan_tree
from tests.fixtures.slurm import RUN_DIR, queued_ids
from xnat_bridge.errors import SlurmUnavailable
from xnat_bridge.offload import JobState

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat]


def slurm_state_dir() -> str:
    for line in (RUN_DIR / "etc" / "slurm.conf").read_text().splitlines():
        if line.startswith("StateSaveLocation="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no StateSaveLocation in slurm.conf")


def wait_state(manager, job_id, states, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = manager.get(job_id)
        if rec.state in states:
            return rec
        if rec.terminal:
            raise AssertionError(f"job ended {rec.state.value}: {rec.message}")
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {manager.get(job_id).state.value}")


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


SLEEPER = """
import os, sys, time
print("started", flush=True)
for i in range(600):
    print("tick", i, flush=True)
    time.sleep(0.5)
"""


def test_train_example_end_to_end(slurm, offload_env):
    env = offload_env
    needles = env.samples() + [SECRET_MARK]
    assert len(needles) > 4
    m = env.manager()
    try:
        script = env.script("train_example.py")
        rec = m.submit("mri", script, cpus=1, mem="1G", walltime="0:10:00")
        assert rec.state == JobState.STAGING and rec.id.startswith("j") and len(rec.id) == 13
        assert m.active()
        rec = wait_state(m, rec.id, {JobState.RUNNING, JobState.COLLECTING, JobState.DONE}, 90)
        # while it runs (or just after): nothing readable on shared storage or in Slurm's state
        assert scan_tree(env.staging, needles) == []
        assert scan_tree(slurm_state_dir(), needles) == []
        rec = m.wait(rec.id, timeout=120)
        assert rec.state == JobState.DONE, rec.message
        assert rec.exit_code == 0 and rec.slurm_job_id and rec.started and rec.ended
        res = m.results(rec.id)
        names = {f["name"] for f in res["files"]}
        assert {"metrics.json", "model.pkl"} <= names
        metrics = json.loads((env.workspace / "jobs" / rec.id / "results" / "metrics.json").read_text())
        assert metrics["files"] >= 2 and metrics["train_accuracy"] > 0.5
        prov = res["provenance"]
        assert prov["manifest_sha256"] == rec.manifest_sha256
        assert prov["script_sha256"] == rec.script_sha256
        assert prov["slurm_job_id"] == rec.slurm_job_id and prov["exit_code"] == 0
        text, offset = m.logs(rec.id)
        assert "trained on" in text and offset > 0
        assert m.logs(rec.id, offset) == ("", offset)
        # where its start went: every phase, the node's included, in the record and the log
        from xnat_bridge.offload.phases import PHASES
        assert list(rec.phases) == list(PHASES), rec.phases
        assert all(v >= 0 for v in rec.phases.values())
        assert f"[xnat-hpc] running as Slurm job {rec.slurm_job_id}; its start: checks" in text
        # after: no plaintext, no key anywhere shared; node-local storage wiped; TLS files gone
        assert scan_tree(env.staging, needles) == []
        assert scan_tree(slurm_state_dir(), needles) == []
        assert scan_tree(env.workspace / "jobs" / rec.id, [SECRET_MARK]) == []
        assert list(env.node_tmp.iterdir()) == []
        leftovers = [p.name for p in (env.staging / env.conn.user).iterdir()]
        assert all(n.endswith((".tar.age", ".json")) for n in leftovers), leftovers
        actions = [(e.action, e.outcome) for e in m.sink.events]
        for a in ("stage", "submit", "key_release", "result_retrieve"):
            assert (a, "allowed") in actions, actions
        assert not m.active()
    finally:
        m.close()
    assert list((env.staging / env.conn.user).glob("*.tar.age")) == []  # bundles removed on close


def node_empty(env, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(env.node_tmp.iterdir()):
        time.sleep(0.2)
    return list(env.node_tmp.iterdir())


def test_cancel_while_running_wipes_everything_and_other_users_cannot_read(slurm, offload_env):
    env = offload_env
    m = env.manager()
    try:
        rec = m.submit("mri", env.script("sleeper.py", SLEEPER))
        rec = wait_state(m, rec.id, {JobState.RUNNING}, 90)
        deadline = time.monotonic() + 20
        while "tick" not in m.logs(rec.id)[0] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "started" in m.logs(rec.id)[0]  # streamed while running
        assert rec.slurm_job_id in squeue_ids()
        udir = env.staging / env.conn.user
        assert udir.stat().st_mode & 0o777 == 0o700
        bundles = list(udir.glob("*.tar.age"))
        assert bundles and all(b.stat().st_mode & 0o777 == 0o600 for b in bundles)
        tls = [p for p in udir.iterdir() if p.name.startswith(".tls-")]
        assert len(tls) == 1 and tls[0].stat().st_mode & 0o777 == 0o700
        assert any(p.name.startswith(".dask-jobqueue.worker.key") for p in tls[0].iterdir())
        # another Unix user cannot read the bundle (real uid, not just the mode bits)
        subprocess.run(["useradd", "--system", "--no-create-home", "xnathpc-other"], capture_output=True,
                       check=False)  # idempotent: exists already on a second run
        denied = subprocess.run(["runuser", "-u", "xnathpc-other", "--", "cat", str(bundles[0])],
                                capture_output=True, text=True, check=False)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
        assert scan_tree(slurm_state_dir(), [SECRET_MARK]) == []
        rec = m.cancel(rec.id)
        assert rec.state == JobState.CANCELLED and rec.message == "cancelled by user"
        assert m.cancel(rec.id).state == JobState.CANCELLED  # terminal: a no-op
        rec = m.wait(rec.id, timeout=60)
        assert rec.state == JobState.CANCELLED
        assert rec.slurm_job_id not in squeue_ids()
        assert node_empty(env) == []
        assert not tls[0].exists()
        assert ("cancel", "allowed") in [(e.action, e.outcome) for e in m.sink.events]
        with pytest.raises(Exception, match="not done"):
            m.results(rec.id)
    finally:
        m.close()


def test_failing_script_fails_with_exit_code_and_no_plaintext_left(slurm, offload_env, capsys):
    env = offload_env
    m = env.manager()
    try:
        script = env.script("fail.py", "import os, sys\nprint('files:', len(os.listdir(os.environ['DATASET_DIR'])))\n"
                                       "print('boom: bad hyperparameter', file=sys.stderr)\nsys.exit(3)\n")
        rec = m.wait(m.submit("mri", script).id, timeout=120)
        assert rec.state == JobState.FAILED and rec.exit_code == 3
        assert "exited with code 3" in rec.message and "boom: bad hyperparameter" in rec.message
        assert node_empty(env) == []
        assert scan_tree(env.staging, env.samples() + [SECRET_MARK]) == []
        # the terminal: xnat-hpc-hub jobs list / show
        from hub_ext.cli import main

        assert main(["jobs", "list", "--workspace", str(env.workspace)]) == 0
        assert main(["jobs", "show", rec.id, "--workspace", str(env.workspace)]) == 0
        out = capsys.readouterr().out
        assert rec.id in out and '"exit_code": 3' in out and "failed" in out
    finally:
        m.close()


def test_second_key_claim_is_refused_and_fails_the_job(slurm, offload_env):
    import asyncio

    from distributed.core import rpc

    env = offload_env
    m = env.manager()
    try:
        rec = wait_state(m, m.submit("mri", env.script("sleeper.py", SLEEPER)).id, {JobState.RUNNING}, 90)
        cluster = m._runs[rec.id].cluster
        addr, args = cluster.scheduler_address, cluster.security.get_connection_args("client")

        async def claim(job, slurm_id):
            async with rpc(addr, connection_args=args) as r:
                return await r.xnat_hpc_claim_key(job=job, slurm_job_id=slurm_id)

        reply = asyncio.run(claim(rec.id, rec.slurm_job_id))  # the right ids, but a second time
        assert "identity" not in reply and "second claim" in reply["error"]
        rec = m.wait(rec.id, timeout=60)
        assert rec.state == JobState.FAILED and "second claim" in rec.message
        assert rec.slurm_job_id not in squeue_ids()
        denied = [e for e in m.sink.events if e.action == "key_release" and e.outcome == "denied"]
        assert denied and "second claim" in denied[0].detail
        assert node_empty(env) == []
    finally:
        m.close()


def test_tampered_bundle_is_rejected_on_the_node(slurm, offload_env):
    env = offload_env
    m = env.manager()
    try:
        script = env.script("ok.py", "import os\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'x'), 'w').write('1')\n")
        first = m.wait(m.submit("mri", script).id, timeout=120)
        assert first.state == JobState.DONE, first.message
        bundles = list((env.staging / env.conn.user).glob("*.tar.age"))
        assert len(bundles) == 1  # kept for reuse within this server's lifetime
        data = bytearray(bundles[0].read_bytes())
        data[len(data) // 2] ^= 0x40
        bundles[0].write_bytes(bytes(data))
        second = m.wait(m.submit("mri", script).id, timeout=120)
        assert second.state == JobState.FAILED
        assert "on the node" in second.message and second.exit_code is None
        assert not bundles[0].exists()  # a bundle the node could not use is removed, never reused
        assert node_empty(env) == []
    finally:
        m.close()


def test_refused_before_submission(slurm, offload_env, devxnat):
    from xnat_bridge.datasets import Manifest
    from xnat_bridge.errors import Conflict, InvalidRequest, NotFound, OutOfScope
    from xnat_bridge.scope import Scope

    env = offload_env
    m = env.manager(max_cpus=2, max_memory="2G", max_walltime="1:00:00", max_gpus=0)
    before_jobs, before_queue = len(m.list()), queued_ids(env.workspace)
    try:
        script = env.script("train_example.py")
        with pytest.raises(InvalidRequest) as e:
            m.submit("mri", script, partition="interactive", cpus=8, mem="64G", walltime="2:00:00", gpus=1)
        for part in ("partition 'interactive'", "maximum 2", "maximum 2G", "maximum 01:00:00", "gpus 1"):
            assert part in e.value.message, e.value.message
        with pytest.raises(NotFound, match="does not exist"):
            m.submit("mri", "missing.py")
        with pytest.raises(InvalidRequest, match="plain relative path"):
            m.submit("mri", "../x.py")
        outside = env.tmp / "elsewhere.py"
        outside.write_text("print(1)\n")
        with pytest.raises(InvalidRequest, match="outside your workspace"):
            m.submit("mri", str(outside))
        (env.workspace / "link.py").unlink(missing_ok=True)
        (env.workspace / "link.py").symlink_to(outside)
        with pytest.raises(InvalidRequest, match="symbolic link"):
            m.submit("mri", "link.py")
        with pytest.raises(NotFound):
            m.submit("no-such-dataset", script)
        ds = env.dataset
        empty = Manifest("empty", 1, ds.created, ds.user, ds.xnat_host, ds.selection, [],
                         __import__("xnat_bridge.datasets", fromlist=["x"]).files_digest([]))
        if not env.conn.datasets.versions("empty"):
            env.conn.datasets.save(empty)
        with pytest.raises(InvalidRequest, match="no files"):
            m.submit("empty", script)
        scoped = env.manager()
        real_scope = env.conn.scope
        try:
            env.conn.scope = Scope.of(["SLEEP_EEG"])
            with pytest.raises(OutOfScope):
                scoped.submit("mri", script)
        finally:
            env.conn.scope = real_scope
            scoped.close()
        tiny = env.tmp / "tiny"
        tiny.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)], check=True)
        try:
            full = env.manager(staging_dir=str(tiny))
            with pytest.raises(Conflict, match="MiB free"):
                full.submit("mri", script)
            full.close()
            assert list(tiny.rglob("*.partial")) == []
        finally:
            subprocess.run(["umount", str(tiny)], check=True)
        nowhere = env.manager(staging_dir=str(env.tmp / "no-staging"))
        with pytest.raises(NotFound, match="administrator must create it"):
            nowhere.submit("mri", script)
        nowhere.close()
        assert len(m.list()) == before_jobs  # nothing recorded, nothing submitted
        assert queued_ids(env.workspace) - before_queue == set()
    finally:
        m.close()


def test_controller_down_fails_clearly_and_can_be_resubmitted(slurm, offload_env, monkeypatch):
    env = offload_env
    conf = (RUN_DIR / "etc" / "slurm.conf").read_text()
    bogus = env.tmp / "slurm.conf"
    bogus.write_text(conf.replace("SlurmctldPort=6817", "SlurmctldPort=6999"))
    m = env.manager()
    try:
        script = env.script("ok2.py", "import os\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'y'), 'w').write('2')\n")
        monkeypatch.setenv("SLURM_CONF", str(bogus))
        # refused at once (scontrol ping answers DOWN without retrying, unlike sinfo and sbatch):
        # 503, nothing recorded, nothing staged — no 202 for a job that cannot start
        jobs, staged = {r.id for r in m.list()}, set(env.staging.rglob("*.tar.age*"))
        with pytest.raises(SlurmUnavailable, match="Slurm is not answering") as refused:
            m.submit("mri", script)
        assert refused.value.status == 503 and "submit the job again" in refused.value.message
        # nothing recorded, nothing staged (the module's other jobs share this workspace)
        assert {r.id for r in m.list()} == jobs and set(env.staging.rglob("*.tar.age*")) == staged
        # the controller going away after the check: the job fails, naming Slurm, and can be resubmitted
        m.slurm_check = lambda: True
        rec = m.wait(m.submit("mri", script).id, timeout=120)
        assert rec.state == JobState.FAILED and rec.slurm_job_id is None
        assert "Slurm did not accept the job" in rec.message and "submit it again" in rec.message
        monkeypatch.delenv("SLURM_CONF")
        again = m.wait(m.resubmit(rec.id).id, timeout=120)
        assert again.state == JobState.DONE, again.message
        assert m.get(rec.id).state == JobState.FAILED  # the failed one stays in the registry
    finally:
        m.close()


SERVER = """
import sys, time
import xnat_bridge
from xnat_bridge.audit import MemorySink
from xnat_bridge.offload import OffloadManager, OffloadPolicy
from xnat_bridge.scope import Scope
url, ws, staging, script = sys.argv[1:5]
conn = xnat_bridge.connect(url, "alice", "alice-demo", workspace=ws, sink=MemorySink(),
                           scope=Scope.unrestricted())
m = OffloadManager(conn, workspace=ws, policy=OffloadPolicy(staging_dir=staging, exclusive=False,
                   default_memory=512 * 2**20), sink=MemorySink())
rec = m.submit("mri", script)
while m.get(rec.id).state.value != "running":
    time.sleep(0.1)
print(rec.id, flush=True)
time.sleep(600)
"""


def test_server_killed_mid_job_is_marked_lost_and_leaves_nothing(slurm, offload_env, devxnat):
    import os
    import signal
    import sys

    env = offload_env
    env.script("sleeper.py", SLEEPER)
    proc = subprocess.Popen([sys.executable, "-c", SERVER, devxnat.url, str(env.workspace),
                             str(env.staging), "sleeper.py"],
                            stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        job_id = proc.stdout.readline().strip()
        assert job_id.startswith("j"), job_id
        while not any(env.node_tmp.rglob("data")):
            time.sleep(0.1)  # plaintext on the node while it runs
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # what the killed server left on the staging area: a bundle nobody can open, and the
    # worker's TLS directory with its private key
    udir = env.staging / "alice"
    assert list(udir.glob(f".tls-{job_id}-*")) and list(udir.glob("*.tar.age"))
    m = env.manager()  # the next start of the user's server
    try:
        left = sorted(p.name for p in udir.iterdir())
        assert not [n for n in left if n.startswith(".tls-") or n.endswith((".tar.age", ".json"))], left
        [cleanup] = [e for e in m.sink.events if e.action == "staging_cleanup"]  # audited
        assert "1 worker TLS directories" in cleanup.detail and f".tls-{job_id}-" in str(cleanup.extra)
        rec = m.get(job_id)
        assert rec.state == JobState.LOST
        assert "server restarted" in rec.message and f"Slurm job {rec.slurm_job_id} was cancelled" in rec.message
        deadline = time.monotonic() + 20
        while rec.slurm_job_id in squeue_ids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rec.slurm_job_id not in squeue_ids()
        assert node_empty(env) == []  # the job script's trap wiped node-local storage
    finally:
        m.close()
