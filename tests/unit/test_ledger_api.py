"""The job ledger and review API of the hub (issue 19/23), in-process: JupyterHub's own
``MockHub`` with the site's routes, servers started through JupyterHub (``User.spawn``, so each
server's token is the one the hub issued, with its real scopes) by a spawner that keeps the
hub's scope record as the XNAT spawners do (:mod:`tests.fixtures.mockhub`). No hub, proxy,
server process or XNAT: one hub for the module, a fresh review store and audit trail for each
test.

What is checked against the real handlers of :mod:`xnat_hpc_governance.server_api`: a job is entered only from
a running server's own token, under that token's user, with the server's scope as the hub
decided it (never the body's claim), and gets its own review recipient only when one of those
projects is marked; reports may not replace a Slurm id; results are held only for a ledger job
and with a share sealed to that job's key (refusals on the hub's trail); the share is answered
only after approval; the old policy route is gone."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
import pytest_asyncio

from hub_ext.audit_log import HubAuditLog
from hub_ext.review_store import ReviewStore
from tests.fixtures.mockhub import mock_hub
from xnat_bridge.offload import review as rv

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCOPE = ["CARDIO_ECG", "NEURO_MRI"]
SHA = "a" * 64
FACTS = {"dataset": "ecg", "dataset_version": 1, "manifest_sha256": SHA, "script_sha256": "b" * 64}
JOB, JOB2 = "j00000000a001", "j00000000a002"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    async with mock_hub() as h:
        yield h


class Gov:
    """The hub of one test: its API (:meth:`call`), its review store and its audit trail."""

    def __init__(self, hub, store: ReviewStore, trail: HubAuditLog):
        self.hub, self.store, self.trail = hub, store, trail

    async def call(self, method: str, path: str, token: str | None = None, body=None):
        code, doc, _ = await self.hub.request(method, f"api/xnat-hpc/{path}", token=token, body=body)
        return code, doc

    async def events(self, **filters) -> list[dict]:
        return await asyncio.to_thread(self.trail.query, limit=1000, **filters)


@pytest_asyncio.fixture(loop_scope="module")
async def gov(hub, tmp_path):
    """A fresh ledger and trail for this test (the handlers read their paths from the hub's
    config at each request); the servers the test started are stopped afterwards."""
    store_path, trail_path = str(tmp_path / "review" / "review.db"), str(tmp_path / "audit" / "audit.db")
    hub.config.ReviewStore.path = store_path
    hub.config.HubAuditLog.path = trail_path
    hub.config.HubAuditLog.checkpoint_seconds = 3600.0  # no checkpoint timer fires during a test
    g = Gov(hub, ReviewStore(path=store_path), HubAuditLog(path=trail_path))
    # the governance service's process keeps one store and one trail: this test's
    hub.service_app.settings.update(review_store=g.store, audit_log=g.trail)
    try:
        yield g
    finally:
        await hub.stop_servers()
        g.trail.close()
        with ReviewStore._lock:  # the store keeps one connection per file for the process
            db = ReviewStore._dbs.pop(os.path.abspath(store_path), None)
        if db is not None:
            db.close()


def _registration(recipient: str, share: bytes = b"the-hub-share") -> dict:
    return {"results": [{"name": "metrics.json", "size": 12, "sha256": "c" * 64}],
            "share": rv.wrap(share, recipient), "previews": {"metrics.json": rv.wrap(b'{"acc": 0.9}', recipient)}}


# -- entering a job -------------------------------------------------------------------------------
async def test_a_server_enters_its_job_with_its_scope_and_a_recipient_only_when_marked(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    code, job = await gov.call("POST", f"jobs/{JOB}", token, {**FACTS, "projects": ["SLEEP_EEG"]})
    assert code == 201, job
    assert (job["user"], job["server"], job["job"], job["state"]) == ("bob", "", JOB, "submitted")
    assert job["projects"] == SCOPE  # the record's scope; the body's claim is ignored
    assert job["review"] == [] and job["recipient"] is None  # nothing marked: no review key
    assert job["script_sha256"] == FACTS["script_sha256"] and job["manifest_sha256"] == SHA

    gov.store.mark("NEURO_MRI", "erin", True)
    code, marked = await gov.call("POST", f"jobs/{JOB2}", token, FACTS)
    assert code == 201 and marked["review"] == ["NEURO_MRI"] and marked["recipient"].startswith("age1")
    # a retried entry answers the same row; the first job keeps what it was entered with
    code, again = await gov.call("POST", f"jobs/{JOB2}", token, FACTS)
    assert code == 201 and again["recipient"] == marked["recipient"]
    assert gov.store.ledger_job("bob", JOB)["recipient"] is None

    entered = await gov.events(user="bob", actions={"ledger_enter"})
    assert {(e["outcome"], e["extra"]["job"]) for e in entered} == {("allowed", JOB), ("allowed", JOB2)}
    assert entered[-1]["items"] == SCOPE and entered[-1]["source"] == "hub"
    assert await gov.events(projects={"SLEEP_EEG"}) == []


async def test_a_named_server_enters_jobs_with_its_own_scope(hub, gov):
    await hub.start_server("bob", SCOPE)
    gpu = await hub.start_server("bob", ["CARDIO_ECG"], server="gpu")
    code, job = await gov.call("POST", f"jobs/{JOB}", gpu, FACTS)
    assert code == 201 and (job["server"], job["projects"]) == ("gpu", ["CARDIO_ECG"])


async def test_only_a_running_servers_own_token_enters_a_job(hub, gov):
    await hub.start_server("bob", SCOPE)
    refusals = {
        "personal token with users:activity": hub.personal_token("bob", ["users:activity!user"]),
        "personal token with all of bob's scopes": hub.personal_token("bob"),
        "no token": None,
    }
    for what, token in refusals.items():
        code, doc = await gov.call("POST", f"jobs/{JOB}", token, FACTS)
        assert code == 403, what
        # a personal token passes the scope check (users:activity) and is refused as not a server's
        said = "send the server's own hub token" if token is None else "only a running server's own hub token"
        assert doc["message"].startswith(said), (what, doc["message"])
    # a server started without a scope record (before this hub version) enters nothing either
    carol = await hub.start_server("carol", None)
    code, doc = await gov.call("POST", f"jobs/{JOB}", carol, FACTS)
    assert code == 403 and "restart it" in doc["message"]  # its token is bound to no server
    assert gov.store.ledger_jobs() == []
    assert await gov.events(actions={"ledger_enter"}) == []  # no server, no project: nothing to file


async def test_another_users_server_token_enters_the_job_under_that_user(hub, gov):
    bob = await hub.start_server("bob", SCOPE)
    alice = await hub.start_server("alice", ["CARDIO_ECG"])
    code, mine = await gov.call("POST", f"jobs/{JOB}", bob, FACTS)
    assert code == 201
    # alice's server names bob's job id: she enters a job of her own, rows are per user
    code, hers = await gov.call("POST", f"jobs/{JOB}", alice, {**FACTS, "script_sha256": "d" * 64, "user": "bob"})
    assert code == 201 and (hers["user"], hers["projects"]) == ("alice", ["CARDIO_ECG"])
    assert gov.store.ledger_job("bob", JOB) == mine
    # and her reports change her row, never bob's
    code, _ = await gov.call("PATCH", f"jobs/{JOB}", alice, {"slurm_job_id": "777", "state": "running"})
    assert code == 200
    assert gov.store.ledger_job("bob", JOB) == mine
    code, seen = await gov.call("GET", f"jobs/{JOB}", bob)
    assert code == 200 and seen == mine


# -- reports ----------------------------------------------------------------------------------------
async def test_reports_set_the_slurm_id_once(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    assert (await gov.call("POST", f"jobs/{JOB}", token, FACTS))[0] == 201
    code, job = await gov.call("PATCH", f"jobs/{JOB}", token, {"slurm_job_id": "31337", "state": "running"})
    assert code == 200 and (job["slurm_job_id"], job["state"]) == ("31337", "running")
    code, doc = await gov.call("PATCH", f"jobs/{JOB}", token, {"slurm_job_id": "31338"})
    assert code == 409 and "31337" in doc["message"]
    code, doc = await gov.call("PATCH", f"jobs/{JOB2}", token, {"state": "running"})
    assert code == 404
    code, _ = await gov.call("PATCH", f"jobs/{JOB}", hub.personal_token("bob", ["users:activity!user"]),
                             {"state": "done"})
    assert code == 403
    # reading the row needs only a token of bob's that may report his activity
    code, row = await gov.call("GET", f"jobs/{JOB}", hub.personal_token("bob", ["users:activity!user"]))
    assert code == 200 and (row["slurm_job_id"], row["state"]) == ("31337", "running")
    assert (await gov.call("GET", f"jobs/{JOB}", hub.personal_token("bob", ["read:users:name!user"])))[0] == 403


# -- held results -----------------------------------------------------------------------------------
async def test_results_are_held_only_for_a_ledger_job_with_a_share_sealed_to_its_key(hub, gov):
    gov.store.mark("CARDIO_ECG", "carol", True)
    token = await hub.start_server("bob", SCOPE)
    _, first = await gov.call("POST", f"jobs/{JOB}", token, FACTS)
    _, second = await gov.call("POST", f"jobs/{JOB2}", token, FACTS)
    assert first["recipient"] and second["recipient"] and first["recipient"] != second["recipient"]

    # an id the ledger never entered
    code, doc = await gov.call("POST", "review/jobs/j0000000dead1", token, _registration(first["recipient"]))
    assert code == 404 and "not in the hub's ledger" in doc["message"]
    # the first job's share, posted for the second job
    code, doc = await gov.call("POST", f"review/jobs/{JOB2}", token, _registration(first["recipient"]))
    assert code == 403 and "not sealed to this key" in doc["message"]
    denied = await gov.events(user="bob", actions={"review_hold"})
    assert [(e["outcome"], e["extra"]["job"]) for e in reversed(denied)] == [
        ("denied", "j0000000dead1"), ("denied", JOB2)]
    assert all(e["items"] == SCOPE for e in denied)

    code, held = await gov.call("POST", f"review/jobs/{JOB2}", token,
                                {**_registration(second["recipient"]), "projects": ["NEURO_MRI"]})
    assert code == 201, held
    assert (held["job"], held["state"], held["projects"], held["pending"]) == (
        JOB2, "held", ["CARDIO_ECG"], ["CARDIO_ECG"])
    assert (await gov.events(user="bob", actions={"review_hold"}))[0]["outcome"] == "allowed"

    # before approval the share is not answered, whatever is asked
    code, state = await gov.call("GET", f"review/jobs/{JOB2}?share=1", token)
    assert code == 200 and state["state"] == "held" and "share" not in state
    assert await gov.events(actions={"key_release"}) == []
    # after carol's approval it is, to the job's own user
    gov.store.record_decision("bob", JOB2, ["CARDIO_ECG"], "carol", "approve")
    code, state = await gov.call("GET", f"review/jobs/{JOB2}?share=1", token)
    assert code == 200 and state["state"] == "approved"
    assert base64.b64decode(state["share"]) == b"the-hub-share"
    released = await gov.events(user="bob", actions={"key_release"})
    assert len(released) == 1 and released[0]["extra"]["job"] == JOB2
    # another user's server names bob's job: it is not hers
    alice = await hub.start_server("alice", ["CARDIO_ECG"])
    code, _ = await gov.call("GET", f"review/jobs/{JOB2}?share=1", alice)
    assert code == 404


# -- the old policy route ---------------------------------------------------------------------------
async def test_the_review_policy_route_is_gone(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    code, doc = await gov.call("GET", "review/policy?projects=CARDIO_ECG", token)
    assert code == 410 and "POST /hub/api/xnat-hpc/jobs/{job}" in doc["message"]
    assert (await gov.call("GET", "review/policy"))[0] == 403



# -- a browser's cookie is not a server's token ------------------------------------------------------
#: what a browser sends with ``fetch()`` from a page of the hub's origin (e.g. a page another
#: user's server serves under /user/mallory/, without subdomains)
BROWSER_FETCH = {"Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}


async def test_a_login_cookie_with_a_made_up_token_gets_no_share(hub, gov):
    gov.store.mark("CARDIO_ECG", "carol", True)
    token = await hub.start_server("bob", SCOPE)
    _, job = await gov.call("POST", f"jobs/{JOB}", token, FACTS)
    assert (await gov.call("POST", f"review/jobs/{JOB}", token, _registration(job["recipient"])))[0] == 201
    gov.store.record_decision("bob", JOB, ["CARDIO_ECG"], "carol", "approve")
    browser = {**BROWSER_FETCH, "Cookie": await hub.login_cookie("bob")}
    # JupyterHub's own API refuses the cookie of such a request without its XSRF token
    assert (await hub.request("GET", "api/users/bob", headers=browser))[0] == 403
    # the cookie alone is refused by ours
    code, _, _ = await hub.request("GET", f"api/xnat-hpc/review/jobs/{JOB}?share=1", headers=browser)
    assert code == 403
    # and with any string as the token: still the cookie, still refused, nothing released
    code, doc, _ = await hub.request("GET", f"api/xnat-hpc/review/jobs/{JOB}?share=1", token="made-up",
                                     headers=browser)
    assert (code, "share" in doc) == (403, False)
    assert await gov.events(actions={"key_release"}) == []
    code, _, _ = await hub.request("GET", f"api/xnat-hpc/jobs/{JOB}", token="made-up", headers=browser)
    assert code == 403
