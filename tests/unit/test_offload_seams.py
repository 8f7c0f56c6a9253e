"""The offload core's seams without infrastructure: a JobRun gets its inputs and one
OffloadContext (no manager); the bundle cache hands back a Bundle and takes its
opener explicitly; one client-token rule; a missing script is a 400 and a NotFound."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from types import SimpleNamespace

import pyrage
import pytest

from xnat_bridge.errors import InvalidRequest, NotFound
from xnat_bridge.offload.bundles import Bundle, BundleCache
from xnat_bridge.offload.context import OffloadContext
from xnat_bridge.offload.inputs import ScriptNotFound, check_client_token, resolve_script
from xnat_bridge.offload.policy import OffloadPolicy, ResourceRequest
from xnat_bridge.offload.registry import JobRecord, JobRegistry, JobState, new_job_id, now_iso
from xnat_bridge.offload.runner import JobRun
from xnat_bridge.staging import AgeIdentity, PyrageEngine, engine_by_name
from xnat_bridge.staging.keys import as_identity

DATA = b"voxels " * 300


def _manifest():
    f = SimpleNamespace(name="S1/E1/t1.nii", size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
    return SimpleNamespace(name="t1", version=1, digest="d" * 64, xnat_host="http://xnat", total_size=len(DATA),
                           selection=[{"project": "P", "experiment": "E1"}], files=[f])


def _script(tmp_path: Path):
    (tmp_path / "root").mkdir(exist_ok=True)
    (tmp_path / "root" / "train.py").write_text("print('hi')\n")
    return resolve_script("train.py", [tmp_path / "root"])


def test_client_token_and_missing_script_rules(tmp_path):
    assert check_client_token(None) is None and check_client_token("abc-1:x.y_z") == "abc-1:x.y_z"
    for bad in ("", "a b", "x" * 129, 7, "ü"):
        with pytest.raises(InvalidRequest, match="client_token"):
            check_client_token(bad)
    with pytest.raises(ScriptNotFound) as e:
        resolve_script("missing.py", [tmp_path])
    assert isinstance(e.value, NotFound) and e.value.status == 400 and e.value.reason == "invalid_request"


def test_bundle_cache_returns_reuses_and_drops_bundles(tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    audit = []
    cache = BundleCache(str(staging), "alice", lambda *a, **kw: audit.append(a))
    manifest, script = _manifest(), _script(tmp_path)
    opened = []

    def opener(f):
        opened.append(f.name)
        return io.BytesIO(DATA)

    first = cache.obtain("j1", manifest, script, opener)
    assert isinstance(first, Bundle) and first.users == 1 and Path(first.info.path).exists()
    assert opened == ["S1/E1/t1.nii"]
    reports = []
    again = cache.obtain("j2", manifest, script, opener, report=reports.append)
    assert again is first and first.users == 2 and opened == ["S1/E1/t1.nii"]  # reused, not read again
    assert reports == [f"reusing staged bundle {first.info.bundle_id}"]
    cache.release(again, job_id="j2")
    assert first.users == 1 and Path(first.info.path).exists()
    cache.release(first, drop=True, job_id="j1")  # the node could not use it: gone, never reused
    assert not Path(first.info.path).exists()
    fresh = cache.obtain("j3", manifest, script, opener)
    assert fresh is not first and len(opened) == 2
    cache.close()
    assert list(staging.glob("alice/*.tar.age")) == []
    assert [a[0] for a in audit] == ["stage", "stage"]


class _Bundles:
    """A bundle cache double: one fixed bundle in *staging*; remembers releases."""

    def __init__(self, staging: Path):
        self.staging, self.released = staging, []

    def obtain(self, job_id, manifest, script, opener, report=lambda message: None, progress=None,
               verify_md5=False, threads=None):
        info = SimpleNamespace(path=self.staging / "b1.tar.age", bundle_id="b1", manifest_sha256="a" * 64,
                               contents_sha256="c" * 64, file_sha256={})
        return Bundle(info, AgeIdentity.generate(), "c" * 64, users=1)

    def release(self, bundle, *, drop=False, job_id="-"):
        self.released.append((bundle.info.bundle_id, drop, job_id))


def test_job_run_works_from_its_inputs_and_context_only(tmp_path):
    """sbatch refused (by the context's cluster factory): the run fails with a SlurmError
    message, audits it, releases its bundle and reports back through on_finished."""
    workspace, staging = tmp_path / "ws", tmp_path / "staging"
    staging.mkdir()
    registry = JobRegistry(workspace)
    policy = OffloadPolicy(exclusive=False)
    now = now_iso()
    rec = registry.add(JobRecord(new_job_id(), "alice", "t1", 1, "a" * 64, "train.py", "b" * 64, {},
                                 JobState.STAGING, None, now, now, None, None, None, "staging", None), "h:1:x")
    (workspace / "jobs" / rec.id).mkdir(parents=True)
    events, finished, bundles = [], [], _Bundles(staging)

    def refusing_cluster(**options):
        assert options["queue"] == "secure" and options["job_name"] == f"xnat-hpc-{rec.id}"
        raise RuntimeError("Command exited with non-zero exit code.\nExit code: 1\nstderr:\n"
                           "sbatch: error: invalid partition specified: secure\n")

    ctx = OffloadContext(registry=registry, files=None, policy=policy,
                         audit=lambda *a, **kw: events.append((a, kw)), workspace=workspace,
                         bundles=bundles, cluster_factory=refusing_cluster, on_finished=finished.append)
    run = JobRun(rec, _manifest(), _script(tmp_path), ResourceRequest.parse(policy), ctx)
    assert not hasattr(run, "m")
    run.start()
    run.thread.join(60)  # a bound for a hang, not a timing: the run ends on its own
    assert not run.thread.is_alive(), "the job's thread did not end"
    got = registry.get(rec.id)
    assert got.state == JobState.FAILED and got.slurm_job_id is None
    assert got.message.startswith("Slurm did not accept the job: sbatch: error: invalid partition")
    assert events[-2][0] == ("submit", "failed") and rec.id in events[-2][1]["detail"]
    assert events[-1][0] == ("job_state", "failed") and events[-1][1]["extra"]["state"] == "failed"
    assert bundles.released == [("b1", False, rec.id)] and run.bundle is None
    assert finished == [run]
    assert not [p for p in staging.iterdir() if p.name.startswith(".tls-")]  # TLS directory removed
    registry.close()


def test_the_configured_age_engine_encrypts_the_bundle(tmp_path):
    """The engine is a plug point: the cache stages with the engine it was given, no global."""
    base, calls = PyrageEngine(), []

    class CountingEngine:
        name = "counting"

        def encrypt(self, fd, chunks, recipient, on_tick=None):
            calls.append("encrypt")
            return base.encrypt(fd, chunks, recipient, on_tick)

        def decryptor(self, path, identity):
            calls.append("decrypt")
            return base.decryptor(path, identity)

    staging = tmp_path / "staging"
    staging.mkdir()
    cache = BundleCache(str(staging), "alice", lambda *a, **kw: None, engine=CountingEngine())
    bundle = cache.obtain("j1", _manifest(), _script(tmp_path), lambda f: io.BytesIO(DATA))
    assert calls == ["encrypt"]
    plain = pyrage.decrypt(Path(bundle.info.path).read_bytes(), [as_identity(bundle.identity)])
    assert DATA in plain


def test_the_extension_hands_its_staging_engine_to_the_manager(tmp_path):
    from traitlets import TraitError

    from xnat_bridge.serverext.app import XnatHpcExtension
    from xnat_bridge.serverext.state import ServerState

    assert XnatHpcExtension().staging_engine == "auto"
    assert XnatHpcExtension(staging_engine="pyrage").staging_engine == "pyrage"
    with pytest.raises(TraitError):
        XnatHpcExtension(staging_engine="openssl")

    class RecordingManager:
        def __init__(self, connection, **kwargs):
            self.kwargs = kwargs

    conn = SimpleNamespace(client=SimpleNamespace(host="http://xnat"), user="alice", access=None)
    state = ServerState(lambda workspace: conn, RecordingManager, tmp_path / "ws", tmp_path,
                        needs_env=False, staging_engine=engine_by_name("pyrage"))
    assert state.manager().kwargs["staging_engine"] == PyrageEngine()
