"""The job ledger and review bound to it (issue 19, finding 1), on the store alone.

The attack this guards against, as reproduced on the demo: alice's job on SLEEP_EEG (marked
for review by dave) is held; she re-posts the job's own registration — the hub's share
included — under an invented job id with ``projects: ["NEURO_MRI"]``, approves that fake job
as NEURO_MRI's owner, fetches the hub's share and opens the held results. With the ledger a
registration is accepted only for a job the hub entered at its submission, with the projects
of the submitting server's scope (as the hub decided it), and a share that opens with *that
job's* own review key; the share is released only for that job.
"""

from __future__ import annotations

import os

import pytest

from hub_ext.review_store import ReviewStore, check_entry, check_registration, check_update
from xnat_bridge.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.offload import review as rv
from xnat_bridge.staging import AgeIdentity

SHA = "a" * 64
FACTS = {"dataset": "eeg", "dataset_version": 1, "manifest_sha256": SHA, "script_sha256": "b" * 64}


@pytest.fixture
def store(tmp_path):
    s = ReviewStore(path=str(tmp_path / "gov" / "review.db"))
    s.mark("SLEEP_EEG", "dave", True)
    return s


def _registration(recipient: str, share: bytes = b"hub-share", **extra) -> dict:
    return {"results": [{"name": "metrics.json", "size": 3, "sha256": "x"}],
            "share": rv.wrap(share, recipient), "previews": {"metrics.json": rv.wrap(b"{}", recipient)}, **extra}


def test_the_store_is_private(store, tmp_path):
    store.ledger_jobs()
    assert os.stat(tmp_path / "gov" / "review.db").st_mode & 0o777 == 0o600
    assert os.stat(tmp_path / "gov").st_mode & 0o777 == 0o700


def test_a_job_is_entered_with_the_servers_scope_and_its_own_review_key(store):
    job = store.enter_job("alice", "", "j0000000000a1", frozenset({"SLEEP_EEG", "NEURO_MRI"}),
                          {**FACTS, "projects": ["OTHER"]})  # a claim about projects is ignored
    assert job["projects"] == ["NEURO_MRI", "SLEEP_EEG"] and job["review"] == ["SLEEP_EEG"]
    assert job["recipient"].startswith("age1") and job["state"] == "submitted" and job["server"] == ""
    other = store.enter_job("alice", "", "j0000000000a2", frozenset({"SLEEP_EEG"}), FACTS)
    assert other["recipient"] != job["recipient"]  # one key per job
    # a job whose scope needs no review gets no key
    plain = store.enter_job("alice", "b", "j0000000000a3", frozenset({"NEURO_MRI"}), FACTS)
    assert plain["review"] == [] and plain["recipient"] is None
    # a retried entry answers the same row; other facts under the same id are refused
    assert store.enter_job("alice", "", "j0000000000a1", frozenset({"SLEEP_EEG"}), FACTS)["recipient"] == \
        job["recipient"]
    with pytest.raises(Conflict):
        store.enter_job("alice", "other", "j0000000000a1", frozenset({"SLEEP_EEG"}), FACTS)
    # a server without a scope the hub decided enters nothing
    with pytest.raises(PermissionDenied, match="restart it"):
        store.enter_job("alice", "", "j0000000000a4", frozenset(), FACTS)
    assert {j["job"] for j in store.ledger_jobs(user="alice", projects={"SLEEP_EEG"})} == \
        {"j0000000000a1", "j0000000000a2"}
    assert store.ledger_jobs(user="bob") == []


def test_replaying_a_registration_under_another_job_releases_nothing(store):
    """Finding 1, at the store: every step of the replay is refused and the real job stays held."""
    real = store.enter_job("alice", "", "j0000000beef1", frozenset({"SLEEP_EEG"}), FACTS)
    registration = _registration(real["recipient"], b"the-real-hub-share")
    assert store.register("alice", "j0000000beef1", registration)["state"] == "held"
    # 1. under an invented job id: the ledger does not know it
    with pytest.raises(NotFound, match="not in the hub's ledger"):
        store.register("alice", "j00000000beef", {**registration, "projects": ["NEURO_MRI"]})
    # 2. under a real job of hers on a project that needs no review: it has no review key
    store.enter_job("alice", "n", "j0000000beef2", frozenset({"NEURO_MRI"}), FACTS)
    with pytest.raises(PermissionDenied, match="did not need review"):
        store.register("alice", "j0000000beef2", registration)
    # 3. under a real job that needs review (another project she could get marked): the share
    #    was sealed to the first job's key, not this one's
    store.mark("NEURO_MRI", "alice", True)
    fake = store.enter_job("alice", "n", "j0000000beef3", frozenset({"NEURO_MRI"}), FACTS)
    with pytest.raises(PermissionDenied, match="not sealed to this key"):
        store.register("alice", "j0000000beef3", registration)
    # her own registration for that job holds a share of that job only
    store.register("alice", "j0000000beef3", _registration(fake["recipient"], b"another-share"))
    store.record_decision("alice", "j0000000beef3", ["NEURO_MRI"], "alice", "approve")
    assert store.release_share("alice", "j0000000beef3") == b"another-share"
    # the real job is untouched: held, its share not released
    assert store.job("alice", "j0000000beef1")["state"] == "held"
    with pytest.raises(PermissionDenied):
        store.release_share("alice", "j0000000beef1")
    # projects in a registration body are ignored: the held job's projects are the ledger's
    assert store.job("alice", "j0000000beef1")["projects"] == ["SLEEP_EEG"]


def test_a_share_is_released_after_every_reviewing_owner_approved(store):
    store.mark("CARDIO_ECG", "carol", True)
    job = store.enter_job("bob", "", "j0000000000b1", frozenset({"SLEEP_EEG", "CARDIO_ECG", "NEURO_MRI"}), FACTS)
    assert job["review"] == ["CARDIO_ECG", "SLEEP_EEG"]
    store.register("bob", "j0000000000b1", _registration(job["recipient"]))
    assert store.previews("bob", "j0000000000b1") == {"metrics.json": b"{}"}
    with pytest.raises(PermissionDenied):  # NEURO_MRI needed no review: its owner decides nothing
        store.record_decision("bob", "j0000000000b1", ["NEURO_MRI"], "erin", "approve")
    store.record_decision("bob", "j0000000000b1", ["SLEEP_EEG"], "dave", "approve")
    with pytest.raises(PermissionDenied):
        store.release_share("bob", "j0000000000b1")
    assert store.record_decision("bob", "j0000000000b1", ["CARDIO_ECG"], "carol", "approve")["state"] == "approved"
    assert store.release_share("bob", "j0000000000b1") == b"hub-share"
    with pytest.raises(Exception):  # another user names another row
        store.release_share("alice", "j0000000000b1")


def test_a_rejection_forgets_the_share_the_previews_and_the_jobs_review_key(store):
    job = store.enter_job("bob", "", "j0000000000c1", frozenset({"SLEEP_EEG"}), FACTS)
    store.register("bob", "j0000000000c1", _registration(job["recipient"]))
    with pytest.raises(InvalidRequest):
        store.record_decision("bob", "j0000000000c1", ["SLEEP_EEG"], "dave", "reject", "  ")
    job = store.record_decision("bob", "j0000000000c1", ["SLEEP_EEG"], "dave", "reject", "re-identification risk")
    assert job["state"] == "rejected" and job["reason"] == "re-identification risk"
    assert store.previews("bob", "j0000000000c1") == {}
    assert store.ledger_job("bob", "j0000000000c1")["recipient"] is None
    with pytest.raises(PermissionDenied):
        store.release_share("bob", "j0000000000c1")


def test_caps_per_user(tmp_path):
    store = ReviewStore(path=str(tmp_path / "review.db"), max_active_jobs_per_user=2, max_held_per_user=1)
    store.mark("P", "o", True)
    a = store.enter_job("bob", "", "j0000000000d1", frozenset({"P"}), FACTS)
    b = store.enter_job("bob", "", "j0000000000d2", frozenset({"P"}), FACTS)
    with pytest.raises(Conflict, match="max_active_jobs_per_user"):
        store.enter_job("bob", "", "j0000000000d3", frozenset({"P"}), FACTS)
    store.enter_job("carol", "", "j0000000000d3", frozenset({"P"}), FACTS)  # per user
    store.register("bob", "j0000000000d1", _registration(a["recipient"]))
    with pytest.raises(Conflict, match="max_held_per_user"):
        store.register("bob", "j0000000000d2", _registration(b["recipient"]))
    store.update_job("bob", "j0000000000d1", {"state": "done"})
    store.enter_job("bob", "", "j0000000000d4", frozenset({"P"}), FACTS)  # one ended: room again


def test_reports_on_a_ledger_job(store):
    store.enter_job("bob", "", "j0000000000e1", frozenset({"NEURO_MRI"}), {**FACTS, "manifest_sha256": ""})
    job = store.update_job("bob", "j0000000000e1", {"slurm_job_id": "41", "manifest_sha256": SHA})
    assert job["slurm_job_id"] == "41" and job["manifest_sha256"] == SHA
    with pytest.raises(Conflict):  # a Slurm id is not replaced
        store.update_job("bob", "j0000000000e1", {"slurm_job_id": "42"})
    store.update_job("bob", "j0000000000e1", {"state": "running"})
    store.update_job("bob", "j0000000000e1", {"state": "done"})
    with pytest.raises(Conflict):  # an ended job stays ended
        store.update_job("bob", "j0000000000e1", {"state": "running"})
    with pytest.raises(NotFound):  # another user's job is not found under their name
        store.update_job("alice", "j0000000000e1", {"state": "failed"})
    assert [j["job"] for j in store.ledger_jobs(states=("submitted", "running"))] == []


@pytest.mark.parametrize("body", [
    {}, {"script_sha256": "nothex"}, {**FACTS, "manifest_sha256": "x"}, {**FACTS, "dataset": 3},
    {**FACTS, "dataset_version": -1}, [],
])
def test_check_entry_refuses(body):
    with pytest.raises(InvalidRequest):
        check_entry(body)


@pytest.mark.parametrize("body", [
    {}, {"slurm_job_id": "12; rm"}, {"state": "submitted"}, {"state": "held"}, {"user": "alice"},
    {"manifest_sha256": "zz"},
])
def test_check_update_refuses(body):
    with pytest.raises(InvalidRequest):
        check_update(body)


def test_check_registration_refuses_bad_bodies():
    recipient = AgeIdentity.generate().recipient
    for bad in ({}, {"results": "x"}, {"results": [], "share": ""},
                {"results": [], "share": rv.wrap(b"s", recipient), "previews": {"a": 1}}):
        with pytest.raises(InvalidRequest):
            check_registration(bad)
