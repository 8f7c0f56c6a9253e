"""The hub's signature of published results (issue 22), in-process: JupyterHub's ``MockHub``
with the site's routes and the governance service's real handlers (:mod:`tests.fixtures.mockhub`),
a fresh ledger, trail and signing key for each test.

Attacks from the researcher's own server token: publishing a job that is not finished or not
theirs, into a project outside the job's scope or outside the server's, held results before
approval, approved results with one byte changed, one file added or left out; a replay
answers the same signature and never a second one for other files."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
import pytest_asyncio

from hub_ext.audit_log import HubAuditLog
from hub_ext.results_signer import ResultsSigner
from hub_ext.review_store import ReviewStore
from tests.fixtures.mockhub import mock_hub
from xnat_bridge.offload import review as rv
from xnat_bridge.results_crate import listed_files
from xnat_bridge.sshsig import BadSignature, parse_public_key_line, verify

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCOPE = ["CARDIO_ECG", "NEURO_MRI"]
FACTS = {"dataset": "ecg", "dataset_version": 2, "manifest_sha256": "a" * 64, "script_sha256": "b" * 64}
JOB, JOB2 = "j00000000b001", "j00000000b002"
FILES = [{"name": "metrics.json", "size": 12, "sha256": "c" * 64},
         {"name": "model/weights.bin", "size": 4096, "sha256": "d" * 64}]
RUN = {"script": "train.py", "node": "node1", "partition": "secure", "started": "2026-12-07T10:00:00Z",
       "ended": "2026-12-07T10:05:00Z", "resources": {"cpus": "2", "mem": "4G"}, "used": {"walltime_seconds": "300"},
       "software": {"python": "3.11"}}


def body(project="CARDIO_ECG", files=FILES, **target) -> dict:
    return {"target": {"project": project, **target}, "files": files, "run": RUN}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    async with mock_hub() as h:
        yield h


class Gov:
    def __init__(self, hub, store, trail, signer):
        self.hub, self.store, self.trail, self.signer = hub, store, trail, signer

    async def call(self, method, path, token=None, body=None):
        code, doc, _ = await self.hub.request(method, f"api/xnat-hpc/{path}", token=token, body=body)
        return code, doc

    async def events(self, **filters):
        return await asyncio.to_thread(self.trail.query, limit=1000, **filters)

    async def finished_job(self, token, job=JOB, facts=FACTS):
        code, row = await self.call("POST", f"jobs/{job}", token, facts)
        assert code == 201, row
        code, row = await self.call("PATCH", f"jobs/{job}", token, {"slurm_job_id": "4242", "state": "running"})
        assert code == 200, row
        code, row = await self.call("PATCH", f"jobs/{job}", token, {"state": "done"})
        assert code == 200, row
        return row


@pytest_asyncio.fixture(loop_scope="module")
async def gov(hub, tmp_path):
    store_path, trail_path = str(tmp_path / "review" / "review.db"), str(tmp_path / "audit" / "audit.db")
    hub.config.ReviewStore.path = store_path
    hub.config.HubAuditLog.path = trail_path
    hub.config.HubAuditLog.checkpoint_seconds = 3600.0
    signer = ResultsSigner(key_path=str(tmp_path / "review" / "results-signing-key"))
    g = Gov(hub, ReviewStore(path=store_path), HubAuditLog(path=trail_path), signer)
    hub.service_app.settings.update(review_store=g.store, audit_log=g.trail, results_signer=signer,
                                    xnat_url="http://xnat.example:8080")
    try:
        yield g
    finally:
        await hub.stop_servers()
        g.trail.close()
        with ReviewStore._lock:
            db = ReviewStore._dbs.pop(os.path.abspath(store_path), None)
        if db is not None:
            db.close()


def check_signed(gov, doc) -> dict:
    key = parse_public_key_line(doc["allowed_signers"])
    assert key == gov.signer.public_raw()
    verify(doc["crate"].encode(), doc["signature"], key)
    return json.loads(doc["crate"])


async def test_a_finished_job_is_signed_with_the_hubs_facts_and_audited(hub, gov, tmp_path):
    token = await hub.start_server("bob", SCOPE)
    await gov.finished_job(token)
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(experiment="ECG_001"))
    assert code == 201, doc
    assert doc["resource"] == f"/data/projects/CARDIO_ECG/experiments/ECG_001/resources/xnat-hpc-results-{JOB}"
    assert doc["url"] == "http://xnat.example:8080" + doc["resource"]
    crate = check_signed(gov, doc)
    assert {p: (f.size, f.sha256) for p, f in listed_files(crate).items()} == {
        f["name"]: (f["size"], f["sha256"]) for f in FILES}
    nodes = {n["@id"]: n for n in crate["@graph"]}
    action = nodes[f"#run-{JOB}"]
    # the hub's records, not the server's claims: digests, Slurm id, the XNAT item
    assert nodes[action["instrument"]["@id"]]["sha256"] == "b" * 64
    assert nodes[action["object"][0]["@id"]]["sha256"] == "a" * 64
    assert nodes["#slurm-4242"]["value"] == "4242"
    assert nodes["./"]["isPartOf"]["@id"] == "http://xnat.example:8080/data/projects/CARDIO_ECG/experiments/ECG_001"
    assert "Reported by the researcher's server" in action["description"]
    assert nodes["#used-walltime_seconds"]["value"] == "300" and nodes["#asked-mem"]["value"] == "4G"
    # the key: made by the hub, 0600, in a 0700 directory
    key_file = tmp_path / "review" / "results-signing-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    # audited, and the crate names the trail's records of the job (its entry and the publication)
    events = await gov.events(user="bob", actions={"publish", "ledger_enter"})
    publish = [e for e in events if e["action"] == "publish"]
    assert [(e["outcome"], e["items"], e["extra"]["state"]) for e in publish] == [("allowed", ["CARDIO_ECG"], "signed")]
    assert {f"#audit-{e['seq']}" for e in events} <= set(nodes)

    # the server reports the upload: audited with the resource's address, for the owner page
    code, done = await gov.call("PATCH", f"jobs/{JOB}/publish", token, {"state": "published"})
    assert code == 200 and done["state"] == "published"
    last = (await gov.events(user="bob", actions={"publish"}))[0]
    assert (last["outcome"], last["extra"]["url"]) == ("allowed", doc["url"])
    assert gov.store.publications_for({"CARDIO_ECG"})[0]["url"] == doc["url"]
    assert gov.store.publications_for({"SLEEP_EEG"}) == []


async def test_a_retry_answers_the_same_signature_and_other_files_are_refused(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    await gov.finished_job(token)
    _, first = await gov.call("POST", f"jobs/{JOB}/publish", token, body())
    code, again = await gov.call("POST", f"jobs/{JOB}/publish", token, body())
    assert code == 200 and (again["crate"], again["signature"]) == (first["crate"], first["signature"])
    changed = [dict(FILES[0], sha256="e" * 64), FILES[1]]
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(files=changed))
    assert code == 409 and "published once" in doc["message"]
    # after a failed upload the hub signs again (the files may have been fixed)
    assert (await gov.call("PATCH", f"jobs/{JOB}/publish", token, {"state": "failed", "message": "disk"}))[0] == 200
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(files=changed))
    assert code == 201 and listed_files(json.loads(doc["crate"]))["metrics.json"].sha256 == "e" * 64


async def test_the_hub_signs_nothing_the_ledger_does_not_back(hub, gov):
    gov.store.mark("NEURO_MRI", "erin", True)  # NEURO_MRI's results need review: not in this test
    token = await hub.start_server("bob", ["CARDIO_ECG"])
    other = await hub.start_server("bob", ["SLEEP_EEG"], server="eeg")
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body())
    assert code == 404 and "not in the hub's ledger" in doc["message"]
    code, _ = await gov.call("POST", f"jobs/{JOB}", token, FACTS)
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body())
    assert code == 409 and "only a finished job" in doc["message"]
    await gov.call("PATCH", f"jobs/{JOB}", token, {"state": "done"})
    # a project the job never read, claimed from a server whose scope has it
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", other, body(project="SLEEP_EEG"))
    assert code == 403 and "ran on data of CARDIO_ECG" in doc["message"]
    # and from the job's own server, a project outside its scope
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(project="SLEEP_EEG"))
    assert code == 403 and "cannot publish to project SLEEP_EEG" in doc["message"]
    # a personal token, even with every scope of bob's
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", hub.personal_token("bob"), body())
    assert code == 403 and "only a running server's own hub token" in doc["message"]
    # alice's server naming bob's job: her ledger has none
    alice = await hub.start_server("alice", ["CARDIO_ECG"])
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", alice, body())
    assert code == 404
    # bad input is named
    for bad, said in [({"target": {"project": "../x"}, "files": FILES}, "not an XNAT ID"),
                      (body(files=[]), "nothing to publish"),
                      (body(files=[{"name": "../etc/passwd", "size": 1, "sha256": "c" * 64}]), "relative path"),
                      (body(files=[{"name": "ro-crate-metadata.json.sig", "size": 1, "sha256": "c" * 64}]),
                       "the crate's own file"),
                      (body(files=[FILES[0], FILES[0]]), "listed twice"),
                      ({**body(), "signature": "x"}, "unknown field")]:
        code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, bad)
        assert code == 400 and said in doc["message"], (bad, doc)
    denied = await gov.events(user="bob", actions={"publish"})
    assert denied and all(e["outcome"] == "denied" for e in denied)
    assert gov.store.publication("bob", JOB) is None and not os.path.exists(gov.signer.key_path)


def held_registration(recipient: str, files) -> dict:
    return {"results": [*files, {"name": rv.LOG_MEMBER, "size": 5, "sha256": "f" * 64}],
            "share": rv.wrap(b"the-hub-share", recipient), "previews": {}}


async def test_held_results_are_signed_only_as_approved(hub, gov):
    gov.store.mark("NEURO_MRI", "erin", True)
    token = await hub.start_server("bob", SCOPE)
    row = await gov.finished_job(token)
    code, held = await gov.call("POST", f"review/jobs/{JOB}", token, held_registration(row["recipient"], FILES))
    assert code == 201, held
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(project="NEURO_MRI"))
    assert code == 409 and "waiting for the owners of NEURO_MRI" in doc["message"]
    gov.store.record_decision("bob", JOB, ["NEURO_MRI"], "erin", "approve")
    # one byte changed (its digest), one file added, one left out: each refused by name
    for files, said in [([dict(FILES[0], sha256="0" * 64), FILES[1]], "metrics.json is not what the owners approved"),
                        ([*FILES, {"name": "extra.csv", "size": 1, "sha256": "1" * 64}],
                         "extra.csv is not among the results the owners approved"),
                        ([FILES[0]], "model/weights.bin was approved but is not published")]:
        code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(project="NEURO_MRI", files=files))
        assert code == 409 and said in doc["message"], doc
    code, doc = await gov.call("POST", f"jobs/{JOB}/publish", token, body(project="NEURO_MRI", subject="S01"))
    assert code == 201, doc
    crate = check_signed(gov, doc)
    approvals = [n for n in crate["@graph"] if n.get("@type") == "AssessAction"]
    assert [(a["agent"]["@id"], a["name"]) for a in approvals] == [("#user-erin", "results review: approve (NEURO_MRI)")]
    assert "exactly those the owners approved" in next(n for n in crate["@graph"] if n["@id"] == f"#run-{JOB}")["description"]
    # a signature of another crate does not verify for this one
    with pytest.raises(BadSignature):
        verify(doc["crate"].replace("erin", "mallory").encode(), doc["signature"], gov.signer.public_raw())
