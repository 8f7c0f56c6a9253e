"""Pure parts of xnat_bridge: role parsing, scope, selections, manifests, paths, audit."""

import json

import pytest

from xnat_bridge import audit
from xnat_bridge.datasets import (
    DatasetStore,
    Manifest,
    ManifestFile,
    check_name,
    check_selection,
    diff_files,
    files_digest,
    files_digest_v1,
)
from xnat_bridge.errors import Conflict, InvalidRequest, NotFound, OutOfScope
from xnat_bridge.files import safe_relpath
from xnat_bridge.permissions import parse_groups
from xnat_bridge.offload.policy import OffloadPolicy
from xnat_bridge.scope import Scope
from xnat_bridge.server_env import LaunchItem, ServerEnv


def test_parse_groups_strongest_role_and_underscored_ids():
    assert parse_groups(["NEURO_MRI_owner", "SLEEP_EEG_member", "A_B_C_collaborator",
                         "NEURO_MRI_member", "junk", "X_admin"]) == {
        "NEURO_MRI": "Owner", "SLEEP_EEG": "Member", "A_B_C": "Collaborator"}


def test_scope_round_trip_and_checks():
    s = Scope.from_json(json.dumps({"projects": {"P": {}, "Q": {"subjects": ["S1"]},
                                                 "R": {"experiments": ["E1"]}}}))
    assert Scope.from_json(s.to_json()) == s
    s.check_project("P")
    with pytest.raises(OutOfScope):
        s.check_project("Z")
    s.check_subject("Q", "XNAT_S1", "S1")
    with pytest.raises(OutOfScope):
        s.check_subject("Q", "XNAT_S2", "S2")
    s.check_experiment("R", ("XNAT_E1", "E1"), ("XNAT_S9", "S9"))
    with pytest.raises(OutOfScope):
        s.check_experiment("R", ("XNAT_E2", "E2"), ("XNAT_S9", "S9"))
    s.check_experiment("Q", ("XNAT_E5", "E5"), ("XNAT_S1", "S1"))  # subject in scope covers it
    assert not Scope.from_json("").restricted
    assert Scope.from_json('{"projects": {}}').project_ids(["P"]) == []


@pytest.mark.parametrize("text", ["{", "[]", '{"projects": {"../x": {}}}',
                                  '{"projects": {"P": {"scans": ["1"]}}}',
                                  '{"projects": {"P": {"subjects": ["a/b"]}}}'])
def test_bad_scopes(text):
    with pytest.raises(InvalidRequest):
        Scope.from_json(text)


def test_selection_validation():
    assert check_selection([{"project": "P", "subject": "S", "experiment": "E"}]) == [
        {"project": "P", "experiment": "E"}]
    for bad in ([], [{}], [{"project": "P", "resource": "R"}], [{"project": "P x"}],
                [{"project": "P", "path": "x"}], ["P"]):
        with pytest.raises(InvalidRequest):
            check_selection(bad)


@pytest.mark.parametrize("name, ok", [("t1 set", True), ("a.b-c_d", True), ("", False),
                                      ("../x", False), ("a/b", False), (" a", False),
                                      ("x" * 65, False), ("é", False)])
def test_dataset_names(name, ok):
    if ok:
        assert check_name(name) == name
    else:
        with pytest.raises(InvalidRequest):
            check_name(name)


def mf(name, size=1, md5="m", sha256=""):
    return ManifestFile(name, f"/data/x/{name}", f"P/arc001/{name}", size, md5, sha256)


def test_manifest_json_round_trip_and_tamper_detection():
    files = [mf("a"), mf("b")]
    m = Manifest("ds", 1, "2026-01-01T00:00:00Z", "alice", "http://x", [{"project": "P"}],
                 files, files_digest(files))
    assert Manifest.from_json(m.to_json()) == m
    doc = json.loads(m.to_json())
    doc["files"][0]["size"] = 2
    with pytest.raises(Conflict):
        Manifest.from_json(json.dumps(doc))
    doc = json.loads(m.to_json())
    doc["files"][0]["name"] = "../../etc/passwd"
    doc["digest"] = files_digest([ManifestFile(**f) for f in doc["files"]])
    with pytest.raises(InvalidRequest):
        Manifest.from_json(json.dumps(doc))
    with pytest.raises(InvalidRequest):
        Manifest.from_json("not json")


SHA_A, SHA_B = "a" * 64, "b" * 64


def _manifest(files, **kw):
    return Manifest("ds", 1, "2026-01-01T00:00:00Z", "alice", "http://x", [{"project": "P"}],
                    files, files_digest(files), **kw)


def test_manifest_v2_digest_is_the_identity_only():
    m = _manifest([mf("a"), mf("b")])
    assert json.loads(m.to_json())["format_version"] == 2
    assert not m.hashed and all(f.sha256 == "" for f in m.files)
    hashed = m.with_sha256({"a": SHA_A.upper(), "b": SHA_B})
    assert [f.sha256 for f in hashed.files] == [SHA_A, SHA_B] and hashed.hashed
    # recording sha256s does not change what the dataset is
    assert hashed.digest == m.digest == files_digest(hashed.files) and hashed.identity == m.identity
    assert Manifest.from_json(hashed.to_json()) == hashed
    # ... while its identity fields stay covered
    doc = json.loads(hashed.to_json())
    doc["files"][1]["md5"] = "other"
    with pytest.raises(Conflict, match="modified"):
        Manifest.from_json(json.dumps(doc))
    doc = json.loads(hashed.to_json())
    doc["files"][1]["sha256"] = "not hex"
    with pytest.raises(InvalidRequest, match="64 hex"):
        Manifest.from_json(json.dumps(doc))


def test_with_sha256_refuses_unknown_names_and_differing_digests():
    m = _manifest([mf("a"), mf("b")]).with_sha256({"a": SHA_A})
    with pytest.raises(InvalidRequest, match="no file 'zz'"):
        m.with_sha256({"zz": SHA_A})
    with pytest.raises(Conflict, match="'?a'? has sha256|a has sha256") as e:
        m.with_sha256({"a": SHA_B})
    assert e.value.item == "a"
    with pytest.raises(InvalidRequest, match="64 hex"):
        m.with_sha256({"b": "123"})
    assert m.with_sha256({"a": SHA_A}) == m  # the same digest again: nothing changes


def test_format_1_manifest_still_loads_with_its_own_digest():
    files = [mf("a", sha256=SHA_A), mf("b", sha256=SHA_B)]
    v1 = _manifest(files, format_version=1)
    doc = json.loads(v1.to_json())
    doc["digest"] = files_digest_v1(files)  # format 1: the digest covers every field, sha256 too
    text = json.dumps(doc)
    loaded = Manifest.from_json(text)
    assert loaded.format_version == 1 and loaded.files == files and loaded.hashed
    doc["files"][0]["sha256"] = SHA_B  # in format 1 an edited sha256 is an edit
    with pytest.raises(Conflict, match="modified"):
        Manifest.from_json(json.dumps(doc))
    doc = json.loads(text)
    doc["format_version"] = 3
    with pytest.raises(InvalidRequest, match="format 1 or 2"):
        Manifest.from_json(json.dumps(doc))


def test_record_sha256_rewrites_the_version_atomically(tmp_path):
    store = DatasetStore(tmp_path / "datasets")
    m = _manifest([mf("a"), mf("b")])
    path = store.save(m)
    assert path.stat().st_mode & 0o777 == 0o600
    out = store.record_sha256("ds", 1, {"b": SHA_B})
    assert [f.sha256 for f in out.files] == ["", SHA_B] and out.digest == m.digest
    assert store.load("ds", 1) == out and path.stat().st_mode & 0o777 == 0o600
    before = path.read_bytes()
    with pytest.raises(Conflict) as e:
        store.record_sha256("ds", 1, {"a": SHA_A, "b": SHA_A})
    assert e.value.item == "b" and "b" in e.value.message
    with pytest.raises(InvalidRequest, match="no file 'c'"):
        store.record_sha256("ds", 1, {"c": SHA_A})
    assert path.read_bytes() == before  # a refusal writes nothing
    with pytest.raises(NotFound):
        store.record_sha256("ds", 2, {"a": SHA_A})
    with pytest.raises(NotFound):
        store.record_sha256("other", 1, {"a": SHA_A})
    assert sorted(p.name for p in path.parent.iterdir()) == ["v1.json"]  # no temporary left
    # a format 1 version (all sha256 known) accepts its own digests and is not rewritten
    files = [mf("x", sha256=SHA_A)]
    doc = json.loads(Manifest("old", 1, "t", "alice", "http://x", [{"project": "P"}], files,
                              files_digest_v1(files), 1).to_json())
    (store.root / "old").mkdir()
    (store.root / "old" / "v1.json").write_text(json.dumps(doc))
    assert store.record_sha256("old", 1, {"x": SHA_A}).format_version == 1
    with pytest.raises(Conflict):
        store.record_sha256("old", 1, {"x": SHA_B})


def test_cache_root_refuses_the_home_directory(tmp_path, monkeypatch):
    from xnat_bridge.filecache import check_cache_root

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home" / "cache").mkdir(parents=True)
    for bad in (tmp_path / "home", tmp_path / "home" / "cache", "relative/dir"):
        with pytest.raises(InvalidRequest, match="home directory|absolute"):
            check_cache_root(bad)
    (tmp_path / "local").mkdir()
    (tmp_path / "home" / "link").symlink_to(tmp_path / "local")
    assert check_cache_root(tmp_path / "home" / "link") == tmp_path / "local"  # the real place counts
    (tmp_path / "local" / "into-home").symlink_to(tmp_path / "home" / "cache")
    with pytest.raises(InvalidRequest, match="home directory"):
        check_cache_root(tmp_path / "local" / "into-home")
    with pytest.raises(NotFound):
        check_cache_root(tmp_path / "missing")


def test_diff_files():
    old = [mf("a"), mf("b"), mf("c")]
    new = [mf("a"), mf("b", size=2), mf("d")]
    assert diff_files(old, new) == {"added": ["d"], "removed": ["c"], "changed": ["b"]}


@pytest.mark.parametrize("p", ["/etc/passwd", "a/../b", "a//b", "./a", "a\\b", "a\x00b", ""])
def test_unsafe_paths(p):
    with pytest.raises(InvalidRequest):
        safe_relpath(p)


def test_audit_events_and_sink(tmp_path):
    ev = audit.make_event("alice", "download", items=["P/E"], files=2, bytes=10,
                          hashes={"manifest": "sha256:x"})
    sink = audit.JsonLinesSink(tmp_path / "a" / "audit.jsonl")
    sink.emit(ev)
    sink.emit(audit.make_event("alice", "permission_denied", "denied", items=["Q"]))
    rows = sink.read()
    assert [r["action"] for r in rows] == ["download", "permission_denied"]
    assert rows[0]["items"] == ["P/E"] and rows[0]["user"] == "alice"
    assert (tmp_path / "a" / "audit.jsonl").stat().st_mode & 0o777 == 0o600
    with pytest.raises(ValueError):
        audit.make_event("alice", "download", hashes={"token": "x"})
    with pytest.raises(ValueError):
        audit.make_event("alice", "teleport")


def test_server_env_round_trip_in_the_xnat_plugin_convention():
    full = ServerEnv("https://xnat.example.org", "uuid-alias",
                     Scope.of({"P": {}, "Q": {"subjects": ["S1"]}}), "slurm-cpu",
                     OffloadPolicy(max_cpus=8, max_memory="32G", max_walltime="1-00:00:00", account="med"),
                     "/xnat/data", LaunchItem("xnat:mrSessionData", "XNAT_E00001"))
    env = full.to_env()
    assert ServerEnv.from_env(env) == full
    assert set(env) == {"XNAT_HOST", "XNAT_USER", "XNAT_HPC_SCOPE", "XNAT_HPC_PROFILE", "XNAT_HPC_OFFLOAD",
                        "XNAT_DATA", "XNAT_XSI_TYPE", "XNAT_ITEM_ID"}  # never XNAT_PASS
    assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": {"P": {}, "Q": {"subjects": ["S1"]}}}
    assert (env["XNAT_DATA"], env["XNAT_ITEM_ID"], env["XNAT_HPC_PROFILE"]) == (
        "/xnat/data", "XNAT_E00001", "slurm-cpu")
    # the limits as the hub has always written them: the profiles file's keys, bytes and seconds,
    # sorted; the other fields only when they are not the defaults
    assert env["XNAT_HPC_OFFLOAD"] == json.dumps(
        {"account": "med", "exclusive": True, "max_cpus": 8, "max_gpus": None, "max_memory": 32 * 2**30,
         "max_walltime": 86400, "partition": "secure", "staging_dir": "/var/lib/xnat-hpc-hub/staging"},
        sort_keys=True)
    # REST only, no launch item, outside the hub: the variables are absent and read back as such
    plain = ServerEnv("https://xnat.example.org", "alice", Scope.of(["P"]))
    assert "XNAT_DATA" not in plain.to_env() and "XNAT_ITEM_ID" not in plain.to_env()
    assert ServerEnv.from_env(plain.to_env()) == plain
    assert ServerEnv.from_env({}) == ServerEnv("", "")
    assert not ServerEnv.from_env({}).scope.restricted and "XNAT_HPC_SCOPE" not in ServerEnv("", "").to_env()
    with pytest.raises(InvalidRequest, match="XNAT_HPC_SCOPE"):
        ServerEnv.from_env({"XNAT_HPC_SCOPE": "{"})


# -- XNAT_HPC_PERMISSION_TTL: the hub's bound on a revocation's delay, read by the server ------
@pytest.mark.parametrize("raw, ttl", [(None, 60.0), ("", 60.0), ("3", 3.0), ("0.5", 0.5), ("86400", 86400.0)])
def test_the_permission_ttl_comes_from_the_hub_or_is_sixty_seconds(raw, ttl):
    from xnat_bridge.server_env import permission_ttl_from_env

    assert permission_ttl_from_env({} if raw is None else {"XNAT_HPC_PERMISSION_TTL": raw}) == ttl


@pytest.mark.parametrize("raw", ["0", "-1", "soon", "nan", "86401", "inf"])
def test_a_permission_ttl_that_is_no_bound_is_refused_naming_it(raw):
    from xnat_bridge.server_env import permission_ttl_from_env

    with pytest.raises(InvalidRequest, match="XNAT_HPC_PERMISSION_TTL must be a number of seconds"):
        permission_ttl_from_env({"XNAT_HPC_PERMISSION_TTL": raw})


@pytest.mark.parametrize("value", [0, -5, 100000])
def test_the_hubs_permission_ttl_setting_is_checked(value):
    from traitlets import TraitError

    from hub_ext.revocation import OwnerAccess

    with pytest.raises(TraitError, match="permission_ttl must be above 0"):
        OwnerAccess(permission_ttl=value)
