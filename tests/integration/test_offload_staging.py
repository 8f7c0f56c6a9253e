"""Staging as one streaming pass (issue 11), end to end: devxnat (alice) → verify → hash →
tar → age → the staging area → real Slurm. The sha256s are computed once, during the first
staging, carried in the bundle and recorded in the dataset version; a file that changed in
XNAT, an XNAT that dies in the middle of a transfer, a full staging area and a dataset too
large for the nodes' scratch all fail clearly, before anything runs, and leave nothing
behind; the worker refuses a bundle that is not the one the server staged."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import signal
import subprocess
import tarfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pyrage
import pytest

from tests.fixtures.devxnat import DEMO_SIZE, DevXnat
from tests.fixtures.offload import GatedAccess, OffloadEnv
from tests.fixtures.slurm import queued_ids
from xnat_bridge import staging
from xnat_bridge.errors import InvalidRequest
from xnat_bridge.offload import JobState
from xnat_bridge.staging.keys import as_identity

pytestmark = [pytest.mark.devxnat]

OK_SCRIPT = "import os\nopen(os.path.join(os.environ['OUTPUT_DIR'], 'n'), 'w').write(str(len(os.listdir(os.environ['DATASET_DIR']))))\n"


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def staging_leftovers(env: OffloadEnv) -> list[str]:
    """What the staging area holds for alice besides nothing (bundles, sidecars, partials)."""
    udir = env.staging / env.conn.user
    return sorted(p.name for p in udir.iterdir()) if udir.exists() else []


def sha256_of(conn, f) -> str:
    with conn.open(f) as src:
        return hashlib.sha256(src.read()).hexdigest()


def entries(manifest) -> list[dict]:
    return [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in manifest.files]


def node_empty(env, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(env.node_tmp.iterdir()):
        time.sleep(0.2)
    return list(env.node_tmp.iterdir())


# --------------------------------------------------------------------------- hashes, once


@pytest.mark.slurm
def test_first_job_records_the_sha256s_and_the_bundle_carries_them(slurm, offload_env):
    env = offload_env
    name = f"hashes-{os.urandom(3).hex()}"
    ds = env.conn.create_dataset(name, [{"project": "NEURO_MRI"}])
    assert ds.files and all(f.sha256 == "" for f in ds.files), "dataset creation reads no file"
    truth = {f.name: sha256_of(env.conn, f) for f in ds.files}
    m = env.manager()
    try:
        script = env.script("count.py", OK_SCRIPT)
        rec = m.wait(m.submit(name, script).id, timeout=180)
        assert rec.state == JobState.DONE, rec.message
        after = env.conn.load_dataset(name, ds.version)
        assert {f.name: f.sha256 for f in after.files} == truth  # recorded in the same version
        assert after.digest == ds.digest  # recording does not change what the dataset is
        want = staging.manifest_sha256(entries(after))
        assert rec.manifest_sha256 == want
        assert m.results(rec.id)["provenance"]["manifest_sha256"] == want

        # the bundle (kept for reuse): MANIFEST.json first without data sha256s, HASHES.json last with
        (bundle,) = m.bundles.staged()
        plain = pyrage.decrypt(Path(bundle.info.path).read_bytes(), [as_identity(bundle.identity)])
        with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
            names = tar.getnames()
            head = json.loads(tar.extractfile("MANIFEST.json").read())
            trailer = json.loads(tar.extractfile("HASHES.json").read())
        assert names[0] == "MANIFEST.json" and names[-1] == "HASHES.json"
        assert all("sha256" not in f for f in head["files"])
        assert {f["name"]: f["md5"] for f in head["files"]} == {f.name: f.md5 for f in ds.files}
        assert {f["name"]: f["sha256"] for f in trailer["files"]} == truth
        assert trailer["manifest_sha256"] == want == bundle.info.manifest_sha256

        # a second job on the same version: the sha256s are known at submit, the bundle is reused
        again = m.submit(name, script)
        assert again.manifest_sha256 == want
        again = m.wait(again.id, timeout=180)
        assert again.state == JobState.DONE, again.message
        assert [e.action for e in m.sink.events].count("stage") == 1
    finally:
        m.close()
    assert staging_leftovers(env) == []


# --------------------------------------------------------------------------- a file that changed


def test_a_file_changed_in_xnat_after_the_manifest_is_refused_with_its_name(offload_env, devxnat):
    """Same size, other bytes: XNAT's md5 (checked by the reader) refuses it; a file XNAT has no
    md5 for is refused by the sha256 an earlier staging recorded. Nothing runs, nothing stays."""
    env = offload_env
    name = f"changed-{os.urandom(3).hex()}"
    ds = env.conn.create_dataset(name, [{"project": "NEURO_MRI"}])
    victim = max(ds.files, key=lambda f: f.size)
    path = devxnat.archive / victim.archive_path
    original = path.read_bytes()
    changed = bytearray(original)
    changed[len(changed) // 2] ^= 0xFF
    store = devxnat.store()
    m = env.manager()
    before_queue = queued_ids(env.workspace)
    try:
        script = env.script("count.py", OK_SCRIPT)
        path.write_bytes(bytes(changed))
        rec = m.wait(m.submit(name, script).id, timeout=120)
        assert rec.state == JobState.FAILED and rec.slurm_job_id is None, rec.message
        assert victim.archive_path in rec.message or victim.name in rec.message, rec.message
        assert staging_leftovers(env) == []
        assert ("stage", "failed") in [(e.action, e.outcome) for e in m.sink.events]
        assert env.conn.load_dataset(name, ds.version).files == ds.files  # nothing recorded

        # XNAT lists no md5 for the file: only the recorded sha256 can tell
        with store.tx() as db:
            db.execute("UPDATE files SET md5='' WHERE md5=? AND size=?", (victim.md5, victim.size))
        bare = env.conn.create_dataset(f"{name}-bare", [{"project": "NEURO_MRI"}])
        bare_victim = next(f for f in bare.files if f.name == victim.name)
        assert bare_victim.md5 == ""
        env.conn.datasets.record_sha256(bare.name, bare.version,
                                        {victim.name: hashlib.sha256(original).hexdigest()})
        rec = m.wait(m.submit(bare.name, script).id, timeout=120)
        assert rec.state == JobState.FAILED and rec.slurm_job_id is None, rec.message
        assert victim.name in rec.message and "recorded" in rec.message, rec.message
        assert staging_leftovers(env) == []
        assert queued_ids(env.workspace) - before_queue == set()
    finally:
        path.write_bytes(original)
        with store.tx() as db:
            db.execute("UPDATE files SET md5=? WHERE md5='' AND size=?", (victim.md5, victim.size))
        store.close()
        m.close()


# --------------------------------------------------------------------------- XNAT dies mid-transfer


@pytest.fixture
def own_xnat(devxnat_factory, tmp_path, monkeypatch):
    """A private devxnat whose largest NEURO_MRI file is replaced by 24 MiB of random bytes
    (catalogue updated, as XNAT does), alice connected with a short retry window, and an
    offload environment on it. Returns (server, env, victim)."""
    import xnat_bridge
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.scope import Scope

    server = devxnat_factory(tmp_path / "xnat")
    conn = xnat_bridge.connect(server.url, "alice", "alice-demo", workspace=tmp_path / "ws",
                               sink=MemorySink(), ttl=60, scope=Scope.unrestricted(), retry_window=3)
    first = conn.create_dataset("probe", [{"project": "NEURO_MRI"}])
    old = max(first.files, key=lambda f: f.size)
    big = os.urandom(24 << 20)  # more than loopback's socket buffers hold
    (server.archive / old.archive_path).write_bytes(big)
    store = server.store()
    with store.tx() as db:
        db.execute("UPDATE files SET size=?, md5=? WHERE md5=? AND size=?",
                   (len(big), hashlib.md5(big).hexdigest(), old.md5, old.size))
    store.close()
    ds = conn.create_dataset("big", [{"project": "NEURO_MRI"}])
    victim = next(f for f in ds.files if f.archive_path == old.archive_path)
    assert victim.size == len(big)
    staging_dir, node_tmp = tmp_path / "staging", tmp_path / "node"
    staging_dir.mkdir(mode=0o755)
    node_tmp.mkdir(mode=0o700)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(node_tmp))
    monkeypatch.setenv("XNAT_HPC_DEATH_TIMEOUT", "20")
    env = OffloadEnv(conn, tmp_path / "ws", staging_dir, node_tmp, ds, tmp_path)
    yield server, env, victim, hashlib.sha256(big).hexdigest()
    conn.close()


def restart(server: DevXnat) -> DevXnat:
    """Start the stopped devxnat again on its data directory and port."""
    from devstack.demo import start_devxnat

    port = urlparse(server.url).port
    proc, url = start_devxnat(server.data_dir, port, DEMO_SIZE, server.log_path, timeout=120)
    assert url.rstrip("/") == server.url.rstrip("/"), (url, server.url)
    return DevXnat(url, server.data_dir, proc, server.log_path)


@pytest.mark.slurm
def test_xnat_killed_mid_staging_fails_naming_the_file_and_resubmitting_works(slurm, own_xnat):
    server, env, victim, victim_sha = own_xnat
    gate = GatedAccess(env.conn.access, gate=victim.archive_path, after=4 << 20)
    env.conn.access = gate
    m = env.manager()
    back = None
    try:
        script = env.script("count.py", OK_SCRIPT)
        rec = m.submit("big", script)
        assert gate.reached.wait(60), m.get(rec.id).message
        server.stop(signal.SIGKILL)  # XNAT dies with the transfer of the victim half done
        gate.release.set()
        rec = m.wait(rec.id, timeout=120)
        assert rec.state == JobState.FAILED and rec.slurm_job_id is None, rec.message
        assert victim.archive_path in rec.message or victim.name in rec.message, rec.message
        assert staging_leftovers(env) == []  # no partial bundle, no sidecar
        assert env.conn.load_dataset("big").files == env.dataset.files  # nothing recorded
        back = restart(server)
        gate.gate = None
        again = m.wait(m.resubmit(rec.id).id, timeout=180)
        assert again.state == JobState.DONE, again.message
        recorded = {f.name: f.sha256 for f in env.conn.load_dataset("big").files}
        assert recorded[victim.name] == victim_sha
        assert node_empty(env) == []
    finally:
        gate.release.set()
        m.close()
        if back is not None:
            back.stop()


@pytest.mark.slurm
def test_xnat_back_within_the_retry_window_resumes_the_same_stream(slurm, own_xnat):
    server, env, victim, victim_sha = own_xnat
    env.conn.access.retry_window = 60
    gate = GatedAccess(env.conn.access, gate=victim.archive_path, after=4 << 20)
    env.conn.access = gate
    m = env.manager()
    back = None
    try:
        rec = m.submit("big", env.script("count.py", OK_SCRIPT))
        assert gate.reached.wait(60), m.get(rec.id).message
        server.stop(signal.SIGKILL)
        back = restart(server)  # within the window: the stream resumes with a Range request
        gate.release.set()
        rec = m.wait(rec.id, timeout=180)
        assert rec.state == JobState.DONE, rec.message
        assert [(e.action, e.outcome) for e in m.sink.events].count(("stage", "allowed")) == 1
        recorded = {f.name: f.sha256 for f in env.conn.load_dataset("big").files}
        assert recorded[victim.name] == victim_sha  # the resumed bytes are the file's bytes
        base = victim.archive_path.rsplit("/", 1)[1]
        assert any(" 206 GET " in line and line.split(" (")[0].endswith("/" + base)
                   for line in back.log().splitlines()), "no Range request reached XNAT"
    finally:
        gate.release.set()
        m.close()
        if back is not None:
            back.stop()


def test_cancel_during_staging_stops_every_reader_and_leaves_nothing(own_xnat):
    """Cancelled while the victim streams: the readers stop at their next read, every stream is
    closed, the partial bundle is removed, nothing is recorded or submitted."""
    server, env, victim, _ = own_xnat
    gate = GatedAccess(env.conn.access, gate=victim.archive_path, after=2 << 20)
    env.conn.access = gate
    m = env.manager()
    try:
        rec = m.submit("big", env.script("count.py", OK_SCRIPT))
        assert gate.reached.wait(60), m.get(rec.id).message
        # the encrypter (its own process for the age CLI) creates the partial bundle when it
        # writes the age header: on a busy machine that can come after the readers reached the
        # gate, so wait for the file itself (a state, not a time)
        udir = env.staging / env.conn.user
        deadline = time.monotonic() + 60
        while not any(p.name.endswith(".partial") for p in udir.iterdir()):
            assert time.monotonic() < deadline, f"no partial bundle in {udir}: {m.get(rec.id).message}"
            time.sleep(0.05)
        m.cancel(rec.id)
        gate.release.set()
        rec = m.wait(rec.id, timeout=60)
        assert rec.state == JobState.CANCELLED and rec.slurm_job_id is None, rec.message
        assert staging_leftovers(env) == []
        assert not [t.name for t in threading.enumerate() if t.name.startswith("bundle-fetch")]
        assert env.conn.load_dataset("big").files == env.dataset.files  # nothing recorded
    finally:
        gate.release.set()
        m.close()


# --------------------------------------------------------------------------- staging area full


def test_staging_area_full_in_the_middle_fails_cleanly(offload_env, tmp_path):
    """The staging file system fills up while the bundle streams (another user's data): the job
    fails saying so, the partial bundle is removed and nothing in the workspace changes."""
    env = offload_env
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    room = int(env.dataset.total_size * 1.01) + (3 << 20)  # passes the check before staging
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room // 1024 + 1}k,mode=0755", "tmpfs", str(tiny)],
                   check=True)
    real = env.conn.access
    once = threading.Lock()  # the fetcher opens files from several threads at once

    def fill(ref):
        with once:
            if not (tiny / "someone-else").exists():
                st = os.statvfs(tiny)
                subprocess.run(["fallocate", "-l", str(st.f_bavail * st.f_frsize - (64 << 10)),
                                str(tiny / "someone-else")], check=True)

    datasets = env.workspace / "datasets"
    before = {p: p.read_bytes() for p in datasets.rglob("*") if p.is_file()}
    m = env.manager(staging_dir=str(tiny))
    try:
        env.conn.access = GatedAccess(real, on_open=fill)
        rec = m.wait(m.submit("mri", env.script("count.py", OK_SCRIPT)).id, timeout=120)
        assert rec.state == JobState.FAILED and rec.slurm_job_id is None, rec.message
        assert "is full" in rec.message and "partial bundle was removed" in rec.message, rec.message
        assert sorted(p.name for p in (tiny / env.conn.user).iterdir()) == []
        assert {p: p.read_bytes() for p in datasets.rglob("*") if p.is_file()} == before
        failed = [e for e in m.sink.events if e.action == "stage" and e.outcome == "failed"]
        assert failed and "full" in failed[0].detail
    finally:
        env.conn.access = real
        m.close()
        subprocess.run(["umount", str(tiny)], check=True)


# --------------------------------------------------------------------------- node-local scratch


@pytest.mark.slurm
def test_dataset_too_large_for_the_node_scratch_is_refused_before_submission(slurm, offload_env):
    from xnat_bridge.datasets import Manifest, files_digest
    from xnat_bridge.offload.slurm import partition_tmp_disk

    env = offload_env
    tmp_disk = partition_tmp_disk("secure")
    node = subprocess.run(["scontrol", "show", "node", "-o"], capture_output=True, text=True,
                          check=True).stdout
    declared = int(next(f for f in node.split() if f.startswith("TmpDisk=")).split("=")[1])
    assert declared > 0 and tmp_disk == declared * 2**20  # the development cluster declares it

    m = env.manager()
    before_jobs, before_queue = len(m.list()), squeue_ids()
    script = env.script("count.py", OK_SCRIPT)
    try:
        # Slurm's TmpDisk: a dataset version whose files add up to more than the nodes hold
        ds = env.dataset
        files = [dataclasses.replace(ds.files[0], name="huge/volume.nii", size=tmp_disk)]
        huge = Manifest("huge", 1, ds.created, ds.user, ds.xnat_host, ds.selection, files,
                        files_digest(files))
        if not env.conn.datasets.versions("huge"):
            env.conn.datasets.save(huge)
        with pytest.raises(InvalidRequest) as e:
            m.submit("huge", script)
        for part in ("'huge' v1", "node-local scratch", "partition 'secure'", "Slurm's TmpDisk",
                     staging_size(tmp_disk), "for results"):
            assert part in e.value.message, e.value.message
        # the site's own figure wins over Slurm's
        small = env.manager(node_scratch="1M")
        with pytest.raises(InvalidRequest, match=r"1.0 MiB \(the site's offload.node_scratch\)"):
            small.submit("mri", script)
        small.close()
        assert len(m.list()) == before_jobs and squeue_ids() - before_queue == set()
        assert staging_leftovers(env) == []
    finally:
        m.close()


def staging_size(n: int) -> str:
    from xnat_bridge.offload.policy import size_text

    return size_text(n)


# --------------------------------------------------------------------------- the worker checks


@pytest.mark.slurm
def test_worker_refuses_a_bundle_that_is_not_the_one_staged(slurm, offload_env):
    """Someone with the user's account swaps the staged bundle for another valid one, encrypted to
    the same dataset key: the node refuses it (contents digest), runs nothing, wipes."""
    env = offload_env
    m = env.manager()
    try:
        script = env.script("count.py", OK_SCRIPT)
        first = m.wait(m.submit("mri", script).id, timeout=180)
        assert first.state == JobState.DONE, first.message
        (bundle,) = m.bundles.staged()
        elsewhere = env.tmp / "elsewhere"
        elsewhere.mkdir()
        other = staging.stage_files([staging.StagedFile("x/evil.bin", 5, "", lambda: io.BytesIO(b"evil!"))],
                                    staging_dir=elsewhere, user=env.conn.user,
                                    recipient=bundle.identity.recipient,
                                    extra_members={"script/count.py": OK_SCRIPT.encode()})
        target = Path(bundle.info.path)
        os.replace(other.path, target)
        sidecar = target.with_name(bundle.info.bundle_id + ".json")
        doc = json.loads(sidecar.read_text())
        doc["size"] = other.size
        sidecar.write_text(json.dumps(doc))
        second = m.wait(m.submit("mri", script).id, timeout=180)
        assert second.state == JobState.FAILED and second.exit_code is None, second.message
        assert "on the node" in second.message and "expected" in second.message, second.message
        assert not target.exists()  # never reused
        assert node_empty(env) == []
    finally:
        m.close()
