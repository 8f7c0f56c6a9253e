"""Pure parts of xnat_bridge: role parsing, scope, selections, manifests, paths, audit."""

import json

import pytest

from xnat_bridge import audit
from xnat_bridge.datasets import (
    Manifest,
    ManifestFile,
    check_name,
    check_selection,
    diff_files,
    files_digest,
)
from xnat_bridge.errors import Conflict, InvalidRequest, OutOfScope
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


def mf(name, size=1, md5="m"):
    return ManifestFile(name, f"/data/x/{name}", f"P/arc001/{name}", size, md5, "s")


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
