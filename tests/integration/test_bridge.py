"""xnat_bridge against devxnat over real HTTP: sessions, permissions, scope,
browsing, datasets and manifests, both file-access modes, audit events.
(Streams, faults and the file cache: test_file_streams.py.)"""

import hashlib
import json
import os

import pytest

import xnat_bridge
from xnat_bridge import audit
from xnat_bridge.errors import (
    AuthenticationFailed,
    Conflict,
    InvalidRequest,
    NotFound,
    OutOfScope,
    PermissionDenied,
    TokenExpired,
    XnatUnavailable,
)
from xnat_bridge.files import MountAccess
from xnat_bridge.scope import Scope

pytestmark = pytest.mark.devxnat


@pytest.fixture
def conn_for(devxnat, tmp_path):
    made = []

    def make(user="alice", password=None, url=None, **kw):
        kw.setdefault("workspace", tmp_path / f"ws-{user}")
        kw.setdefault("sink", audit.MemorySink())
        kw.setdefault("ttl", 60)
        kw.setdefault("scope", Scope.unrestricted())
        c = xnat_bridge.connect(url or devxnat.url, user, password or f"{user}-demo", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# -- sessions --------------------------------------------------------------

def test_connect_from_environment_with_alias_token(devxnat, monkeypatch, tmp_path):
    alias, secret = devxnat.token("bob")
    monkeypatch.setenv("XNAT_HOST", devxnat.url)
    monkeypatch.setenv("XNAT_USER", alias)
    monkeypatch.setenv("XNAT_PASS", secret)
    monkeypatch.setenv("XNAT_HPC_SCOPE", json.dumps({"projects": {"CARDIO_ECG": {}}}))
    monkeypatch.setenv("XNAT_HPC_WORKSPACE", str(tmp_path / "ws"))
    with xnat_bridge.connect() as c:
        assert c.user == "bob"
        assert c.permissions() == {"CARDIO_ECG": "Member"}  # NEURO_MRI is outside the scope
        assert [p.id for p in c.projects()] == ["CARDIO_ECG"]


def test_errors_on_connect(devxnat):
    with pytest.raises(AuthenticationFailed):
        xnat_bridge.connect(devxnat.url, "alice", "wrong")
    alias, secret = devxnat.token("alice")
    devxnat.get(f"/data/services/tokens/invalidate/{alias}/{secret}", alias, secret)
    with pytest.raises(TokenExpired):
        xnat_bridge.connect(devxnat.url, alias, secret)
    with pytest.raises(XnatUnavailable):
        xnat_bridge.connect("http://127.0.0.1:9", "alice", "x")
    with pytest.raises(InvalidRequest):
        xnat_bridge.connect("ftp://example.org", "alice", "x")


def test_expired_session_logs_in_again(conn_for, devxnat):
    c = conn_for("alice")
    sid = c.client._http.cookies.get("JSESSIONID")
    st = devxnat.store()
    st.end_session(sid)  # XNAT forgot the session (timeout, restart)
    st.close()
    assert [p.id for p in c.projects()] == ["NEURO_MRI", "SLEEP_EEG"]
    assert c.client._http.cookies.get("JSESSIONID") != sid


# -- permissions -------------------------------------------------------------

@pytest.mark.parametrize("user, expected, admin", [
    ("alice", {"NEURO_MRI": "Owner", "SLEEP_EEG": "Member"}, False),
    ("bob", {"NEURO_MRI": "Collaborator", "CARDIO_ECG": "Member"}, False),
    ("carol", {}, False),
    ("admin", {"NEURO_MRI": "Owner", "SLEEP_EEG": "Owner", "CARDIO_ECG": "Owner"}, True),
])
def test_permissions_per_role(conn_for, user, expected, admin):
    c = conn_for(user)
    assert c.permissions() == expected
    assert c.permission_info().site_admin is admin


def test_revocation_within_ttl_and_on_invalidate(conn_for, devxnat):
    c = conn_for("bob", ttl=60)
    assert "NEURO_MRI" in c.permissions()
    with devxnat.membership("NEURO_MRI", "bob", None):
        assert "NEURO_MRI" in c.permissions()  # cached: the TTL has not passed
        c.invalidate_permissions()
        assert "NEURO_MRI" not in c.permissions()
        with pytest.raises(PermissionDenied):
            c.subjects("NEURO_MRI")
        fresh = conn_for("bob", ttl=0)  # TTL 0: every question goes to XNAT
        assert "NEURO_MRI" not in fresh.permissions()


# -- browsing ------------------------------------------------------------------

def test_browse_down_to_files_with_metadata(conn_for):
    c = conn_for("alice")
    page = c.subjects("NEURO_MRI", limit=2)
    assert len(page.items) == 2 and page.total >= 3 and page.has_more
    rest = c.subjects("NEURO_MRI", offset=2, limit=100)
    assert {s.id for s in page.items}.isdisjoint({s.id for s in rest.items})
    exps = c.experiments("NEURO_MRI", page.items[0].label).items
    assert exps and all(e.xsi_type == "xnat:mrSessionData" and e.date for e in exps)
    scans = c.scans("NEURO_MRI", exps[0].label)
    assert scans and all(s.file_count > 0 and s.size > 0 and s.type for s in scans)
    files = c.files("NEURO_MRI", exps[0].id, scans[0].id)
    assert sum(f.size for f in files) == scans[0].size


def test_bad_ids_and_unknown_items(conn_for):
    c = conn_for("alice")
    for bad in ("../SLEEP_EEG", "NEURO_MRI/x", "", "a b"):
        with pytest.raises(InvalidRequest):
            c.subjects(bad)
    with pytest.raises(NotFound):
        c.scans("NEURO_MRI", "NO_SUCH_SESSION")
    with pytest.raises(PermissionDenied):
        c.subjects("CARDIO_ECG")


# -- scope -----------------------------------------------------------------------

def test_scope_refuses_what_xnat_would_allow(conn_for):
    c = conn_for("alice", scope=Scope.of(["NEURO_MRI"]))
    with pytest.raises(OutOfScope):
        c.subjects("SLEEP_EEG")
    assert c.sink.events[-1].action == "permission_denied"
    assert c.sink.events[-1].items == ("SLEEP_EEG",)


def test_scope_narrowed_to_one_experiment(conn_for):
    everything = conn_for("alice").experiments("NEURO_MRI").items
    chosen, other = everything[0], everything[-1]
    c = conn_for("alice", scope=Scope.of({"NEURO_MRI": {"experiments": [chosen.label]}}))
    assert [e.id for e in c.experiments("NEURO_MRI").items] == [chosen.id]
    assert c.scans("NEURO_MRI", chosen.id)
    with pytest.raises(OutOfScope):
        c.scans("NEURO_MRI", other.id)


# -- datasets and manifests ------------------------------------------------------

def test_dataset_manifest_versioned_and_verified(conn_for, devxnat):
    c = conn_for("alice")
    exp = c.experiments("NEURO_MRI").items[0]
    sel = [{"project": "NEURO_MRI", "experiment": exp.label}]
    m = c.create_dataset("first set", sel)
    assert m.version == 1 and m.files and m.digest.startswith("sha256:")
    for f in m.files:  # metadata from XNAT's listing; the sha256 is not known before a staging
        assert f.archive_path.startswith(f"NEURO_MRI/arc001/{exp.label}/")
        raw = (devxnat.archive / f.archive_path).read_bytes()
        assert len(raw) == f.size and hashlib.md5(raw).hexdigest() == f.md5 and f.sha256 == ""
    # a staging records each file's sha256 into the same version; the dataset stays the same
    with_sha = c.record_sha256(m, {f.name: hashlib.sha256((devxnat.archive / f.archive_path)
                                                           .read_bytes()).hexdigest() for f in m.files})
    assert with_sha.digest == m.digest and c.load_dataset("first set", 1) == with_sha
    for f in c.load_dataset("first set", 1).files:
        raw = (devxnat.archive / f.archive_path).read_bytes()
        assert hashlib.sha256(raw).hexdigest() == f.sha256 and len(raw) == f.size
    assert c.create_dataset("first set", sel).version == 1  # unchanged: same version
    bigger = c.create_dataset("first set", sel + [{"project": "NEURO_MRI"}])
    assert bigger.version == 2 and len(bigger.files) > len(m.files)
    assert c.load_dataset("first set", 1).digest == m.digest
    assert c.datasets.names() == ["first set"]
    assert [e.action for e in c.sink.events].count("dataset_create") == 2


def test_hand_edited_manifest_is_detected(conn_for):
    c = conn_for("alice")
    m = c.create_dataset("edited", [{"project": "SLEEP_EEG"}])
    path = c.datasets.root / "edited" / "v1.json"
    doc = json.loads(path.read_text())
    doc["files"][0]["uri"] = "/data/experiments/XNAT_E00001/scans/1/resources/1/files/other"
    path.write_text(json.dumps(doc))
    with pytest.raises(Conflict, match="modified"):
        c.load_dataset("edited")
    del m


def test_file_changed_in_xnat_is_reported(conn_for, devxnat, tmp_path):
    c = conn_for("alice")
    exp = c.experiments("SLEEP_EEG").items[0]
    m = c.create_dataset("will change", [{"project": "SLEEP_EEG", "experiment": exp.id}])
    f = m.files[0]
    disk = devxnat.archive / f.archive_path
    original = disk.read_bytes()
    st = devxnat.store()
    rid = int(f.uri.split("/resources/")[1].split("/")[0])
    path = f.uri.split("/files/", 1)[1]
    try:
        disk.write_bytes(original + b"changed")
        st.db.execute("UPDATE files SET size=?, md5=? WHERE resource_id=? AND path=?",
                      (len(original) + 7, hashlib.md5(original + b"changed").hexdigest(), rid, path))
        assert c.changes(m)["changed"] == [f.name]
        with pytest.raises(Conflict, match="no longer matches"):
            c.download(m, tmp_path / "dl", progress=False)
        with pytest.raises(Conflict, match="changed in XNAT") as e:  # a stream refuses it too
            c.open(f)
        assert e.value.item == f.archive_path
    finally:
        disk.write_bytes(original)
        st.db.execute("UPDATE files SET size=?, md5=? WHERE resource_id=? AND path=?",
                      (len(original), hashlib.md5(original).hexdigest(), rid, path))
        st.close()


def test_bad_selection_and_names(conn_for):
    c = conn_for("alice")
    for name in ("../x", "a/b", "", " lead", "x" * 65):
        with pytest.raises(InvalidRequest):
            c.create_dataset(name, [{"project": "NEURO_MRI"}])
    for sel in ([], [{"subject": "x"}], [{"project": "NEURO_MRI", "scan": "1"}],
                [{"project": "NEURO_MRI", "evil": "1"}], [{"project": "../etc"}]):
        with pytest.raises(InvalidRequest):
            c.create_dataset("ok", sel)
    assert not (c.datasets.root / "ok").exists()


# -- file access -----------------------------------------------------------------

@pytest.fixture
def proxy(devxnat):
    from ..fixtures.faultproxy import FaultProxy

    p = FaultProxy(devxnat.url)
    yield p
    p.close()


def test_api_download_resumes_and_verifies(conn_for, devxnat, proxy, tmp_path):
    c = conn_for("bob", url=proxy.url)
    m = c.create_dataset("ecg", [{"project": "CARDIO_ECG"}])
    f = max(m.files, key=lambda x: x.size)
    name = f.uri.rsplit("/", 1)[-1]
    proxy.cut(name + "$", after=f.size // 2)  # the connection drops in the middle of the file
    paths = c.download(m, tmp_path / "out", progress=False)
    assert proxy.ranges(name)[-1].startswith("bytes=")  # resumed with a range request
    assert len(paths) == len(m.files)
    by_name = {p.relative_to(tmp_path / "out").as_posix(): p for p in paths}
    for mf in c.load_dataset("ecg").files:  # the download recorded the sha256s it computed
        raw = (devxnat.archive / mf.archive_path).read_bytes()
        assert hashlib.sha256(by_name[mf.name].read_bytes()).hexdigest() == mf.sha256
        assert hashlib.sha256(raw).hexdigest() == mf.sha256
    assert not list((tmp_path / "out").rglob("*.part"))
    # bytes that do not match XNAT's digest are discarded, never left as complete
    disk = devxnat.archive / f.archive_path
    good = disk.read_bytes()
    target = tmp_path / "again" / f.name
    try:
        disk.write_bytes(b"X" * len(good))
        with pytest.raises(Conflict):
            c.download(m, tmp_path / "again", progress=False, check=False)
    finally:
        disk.write_bytes(good)
    assert not target.exists() and not target.with_name(target.name + ".part").exists()
    assert c.download(m, tmp_path / "again", progress=False)  # and a retry succeeds


def test_mount_mode_gives_the_same_bytes_and_refuses_symlinks_out(conn_for, devxnat, tmp_path):
    api = conn_for("alice")
    m = api.create_dataset("mounted", [{"project": "NEURO_MRI"}])
    mount = conn_for("alice", access=MountAccess(devxnat.archive))
    assert mount.access.mode == "mount"
    for f in m.files[:3]:
        assert mount.open(f).read() == api.open(f).read()
    outside = tmp_path / "secret.txt"
    outside.write_text("outside")
    link = devxnat.archive / "NEURO_MRI" / "arc001" / "evil.nii"
    os.symlink(outside, link)
    try:
        from xnat_bridge.files import FileRef

        with pytest.raises(InvalidRequest):
            mount.open(FileRef("/x", "NEURO_MRI/arc001/evil.nii", 7))
        with pytest.raises(InvalidRequest):
            mount.open(FileRef("/x", "NEURO_MRI/../../secret.txt", 7))
    finally:
        link.unlink()


def test_out_of_scope_download_is_refused_and_audited(conn_for, tmp_path):
    m = conn_for("alice").create_dataset("neuro", [{"project": "NEURO_MRI"}])
    scoped = conn_for("alice", scope=Scope.of(["SLEEP_EEG"]))
    with pytest.raises(OutOfScope):
        scoped.download(m, tmp_path / "dl", progress=False)
    assert not (tmp_path / "dl").exists()
    ev = scoped.sink.events[-1]
    assert ev.action == "permission_denied" and ev.outcome == "denied" and "download" in ev.detail
