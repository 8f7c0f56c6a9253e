"""The owner page's jobs table comes from the hub's job ledger (issue 19): a job is listed for
the projects of the submitting server's scope as the hub decided it, whatever the server
claimed on the trail; the server's reports only add files, bytes and results."""

from __future__ import annotations

from xnat_hpc_governance import owner_render as R
from xnat_hpc_governance.owner import jobs_from_ledger
from hub_ext.review_store import ReviewStore

FACTS = {"dataset": "ecg", "dataset_version": 1, "manifest_sha256": "a" * 64, "script_sha256": "b" * 64}


def test_ledger_jobs_make_the_table_and_reports_only_add_to_it(tmp_path):
    store = ReviewStore(path=str(tmp_path / "r.db"))
    store.mark("SLEEP_EEG", "dave", True)
    store.enter_job("bob", "", "j000000000001", frozenset({"CARDIO_ECG"}), FACTS)
    store.enter_job("bob", "two", "j000000000002", frozenset({"CARDIO_ECG", "SLEEP_EEG"}), FACTS)
    store.update_job("bob", "j000000000002", {"slurm_job_id": "77", "state": "running"})
    # bob's server claims on the trail: a job on SLEEP_EEG with an invented Slurm id, and the
    # results of job 2
    submits = [{"seq": 1, "user": "bob", "action": "submit", "outcome": "allowed", "time": "t1",
                "items": ["SLEEP_EEG/S1"], "files": 9, "bytes": 99, "hashes": {"manifest": "c" * 64},
                "extra": {"job": "j00000000beef", "slurm_job_id": "999"}},
               {"seq": 2, "user": "bob", "action": "submit", "outcome": "allowed", "time": "t2",
                "items": ["CARDIO_ECG/E1"], "files": 3, "bytes": 300, "extra": {"job": "j000000000002"}}]
    follow = [{"seq": 3, "user": "bob", "action": "result_retrieve", "outcome": "allowed", "time": "t3",
               "files": 2, "bytes": 20, "extra": {"job": "j000000000002"}}]
    reported = R.jobs_from_events(submits, follow)

    sleep = jobs_from_ledger(store.ledger_jobs(projects={"SLEEP_EEG"}), reported, "SLEEP_EEG")
    assert [j["job"] for j in sleep] == ["j000000000002"]  # the invented job is not a job
    (row,) = sleep
    assert row["slurm_job_id"] == "77" and row["state"] == "done" and row["files"] == 3
    assert row["items"] == ["SLEEP_EEG"] and row["server"] == "two" and row["review"] is True
    assert row["manifest"] == "a" * 64 and row["script"] == "b" * 64 and "2 file(s)" in row["results"]

    cardio = jobs_from_ledger(store.ledger_jobs(projects={"CARDIO_ECG"}), reported, "CARDIO_ECG")
    assert {j["job"] for j in cardio} == {"j000000000001", "j000000000002"}
    assert all(j["items"] == ["CARDIO_ECG"] for j in cardio)  # never the other project's name
    assert next(j for j in cardio if j["job"] == "j000000000001")["state"] == "submitted"
