"""Results review ("safe outputs") end to end: a real JupyterHub (+ CHP) with the review
routes and the XNAT authenticator on devxnat, bob's offload manager on real Slurm, the owners
deciding through the hub's real forms (XSRF), the server asking the hub with bob's token.

* a held result cannot be opened by bob before approval: not through ``results()``, not by
  his Unix account reading the staging area, not with everything his server holds (its
  share), not by asking the hub for the hub's share with his token;
* an owner of another project cannot approve; the owner of the project can, and then the
  results open as before;
* a rejection deletes the sealed results and bob reads the reason;
* a job spanning two marked projects needs both owners.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.fixtures.devxnat import PASSWORDS
from tests.fixtures.hub import start_hub
from xnat_bridge.offload import JobState
from xnat_bridge.offload import review as rv

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat]

CONFIG = '''
from hub_ext.handlers import xnat_hpc_handlers
c.JupyterHub.authenticator_class = "xnat"
c.XnatAuthenticator.xnat_url = "{url}"
c.JupyterHub.extra_handlers = xnat_hpc_handlers()
'''

SCRIPT = """
import json, os
from pathlib import Path
files = [p for p in Path(os.environ["DATASET_DIR"]).rglob("*") if p.is_file()]
out = Path(os.environ["OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"files": len(files), "marker": "RESULT-MARKER-7f3a"}))
(out / "summary.csv").write_text("name,bytes\\n" + "".join(f"{p.name},{p.stat().st_size}\\n" for p in files[:5]))
(out / "weights.bin").write_bytes(b"W" * 4096)
print("done", len(files))
"""


def form_xsrf(session: requests.Session, hub) -> str:
    page = session.get(f"{hub.url}/hub/xnat-hpc/review", timeout=30)
    assert page.status_code == 200, page.text[:500]
    return re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)


def post_form(session, hub, path: str, **data) -> requests.Response:
    data["_xsrf"] = form_xsrf(session, hub)
    return session.post(f"{hub.url}/hub/xnat-hpc/review/{path}", data=data, allow_redirects=False,
                        timeout=60)


@pytest.fixture
def review_hub(devxnat, tmp_path):
    hub = start_hub(tmp_path / "hub", CONFIG.format(url=devxnat.url))
    sessions = {}
    for user in ("alice", "dave", "bob"):
        s, r = hub.login(user, PASSWORDS[user])
        assert r.status_code == 302, hub.log()[-2000:]
        sessions[user] = s
    tokens = {}
    for user in ("alice", "bob"):
        r = hub.api("POST", f"/users/{user}/tokens", json={"note": "server-like",
                                                              "scopes": ["users:activity!user"]})
        assert r.status_code in (200, 201), r.text
        tokens[user] = r.json()["token"]
    yield hub, sessions, tokens, tmp_path / "hub"  # the review store lives in this hub's directory
    hub.stop()


@pytest.fixture
def bob_env(devxnat, tmp_path, monkeypatch):
    import xnat_bridge
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.scope import Scope

    staging = tmp_path / "staging"
    staging.mkdir(mode=0o755)
    node = tmp_path / "node"
    node.mkdir(mode=0o700)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(node))
    monkeypatch.setenv("XNAT_HPC_DEATH_TIMEOUT", "20")
    conn = xnat_bridge.connect(devxnat.url, "bob", PASSWORDS["bob"], workspace=tmp_path / "ws",
                               sink=MemorySink(), ttl=60, scope=Scope.unrestricted())
    conn.create_dataset("ecg", [{"project": "CARDIO_ECG"}])
    conn.create_dataset("both", [{"project": "CARDIO_ECG"}, {"project": "NEURO_MRI"}])
    (tmp_path / "ws" / "review_train.py").write_text(SCRIPT)
    yield conn, staging, tmp_path / "ws"
    conn.close()


def manager_for(conn, staging, workspace, hub, token):
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.offload import OffloadManager, OffloadPolicy

    m = OffloadManager(conn, workspace=workspace, sink=MemorySink(),
                       policy=OffloadPolicy(staging_dir=str(staging), exclusive=False,
                                            default_memory=512 * 2**20, default_walltime=600))
    m.review_client = rv.ReviewClient(f"{hub.url}/hub/api", token)
    return m


def hub_job(hub, token: str, job_id: str, share: bool = False) -> requests.Response:
    return requests.get(f"{hub.url}/hub/api/xnat-hpc/review/jobs/{job_id}" + ("?share=1" if share else ""),
                        headers={"Authorization": f"token {token}"}, timeout=30)


def test_held_results_need_every_owner_and_rejection_deletes(slurm, review_hub, bob_env):
    hub, sessions, tokens, hub_dir = review_hub
    conn, staging, ws = bob_env
    # the policy API: nothing marked yet, the hub's recipient is public
    pol = rv.ReviewClient(f"{hub.url}/hub/api", tokens["bob"]).policy(["CARDIO_ECG"])
    assert pol["review"] == [] and pol["recipient"].startswith("age1")
    # alice does not own CARDIO_ECG: she cannot mark it; dave can; alice marks her NEURO_MRI
    r = post_form(sessions["alice"], hub, "projects", project="CARDIO_ECG", review="on")
    assert r.status_code == 403
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="on").status_code == 302
    assert post_form(sessions["alice"], hub, "projects", project="NEURO_MRI", review="on").status_code == 302
    # a form post without the XSRF token is refused by the hub
    r = sessions["dave"].post(f"{hub.url}/hub/xnat-hpc/review/projects",
                              data={"project": "CARDIO_ECG", "review": "off"}, allow_redirects=False, timeout=30)
    assert r.status_code == 403
    assert rv.ReviewClient(f"{hub.url}/hub/api", tokens["bob"]).policy(
        ["CARDIO_ECG", "NEURO_MRI"])["review"] == ["CARDIO_ECG", "NEURO_MRI"]

    m = manager_for(conn, staging, ws, hub, tokens["bob"])
    try:
        approve = m.submit("ecg", "review_train.py", cpus=1, mem="512M", walltime="0:10:00")
        reject = m.submit("ecg", "review_train.py", cpus=1, mem="512M", walltime="0:10:00")
        both = m.submit("both", "review_train.py", cpus=1, mem="512M", walltime="0:10:00")
        recs = {j.id: m.wait(j.id, timeout=240) for j in (approve, reject, both)}
        for rec in recs.values():
            assert rec.state == JobState.DONE, rec.message
            assert "held for review" in rec.message
        assert m.review(approve.id)["state"] == "held"
        assert m.review(approve.id)["pending"] == ["CARDIO_ECG"]
        assert set(m.review(both.id)["pending"]) == {"CARDIO_ECG", "NEURO_MRI"}

        # 1. bob cannot open it before approval
        with pytest.raises(rv.ResultsHeld, match="held for review by the owners of CARDIO_ECG since"):
            m.results(approve.id)
        assert not (ws / "jobs" / approve.id / "results").exists()
        held = rv.HeldResults(ws / "jobs" / approve.id)
        archive = Path(held.load()["archive"])
        assert archive.is_file() and str(archive).startswith(str(staging))
        data = archive.read_bytes()
        assert b"RESULT-MARKER-7f3a" not in data and b"AGE-SECRET-KEY-1" not in data
        denied = subprocess.run(["runuser", "-u", "bob", "--", "cat", str(archive)], capture_output=True)
        assert denied.returncode != 0
        # everything bob's server holds (its share) does not open the archive
        share = held.share()
        for guess in (share, bytes(len(share))):
            with pytest.raises(Exception):
                rv.identity_from_shares(share, guess)
        assert b"AGE-SECRET-KEY-1" not in share
        # the hub answers no share before approval, and nothing to another user
        r = hub_job(hub, tokens["bob"], approve.id, share=True)
        assert r.status_code == 200 and r.json()["state"] == "held" and "share" not in r.json()
        assert hub_job(hub, tokens["alice"], approve.id).status_code == 404
        assert requests.get(f"{hub.url}/hub/api/xnat-hpc/review/jobs/{approve.id}", timeout=30).status_code == 403

        # 2. the review page: dave sees provenance, sizes and previews (escaped); alice cannot approve
        page = sessions["dave"].get(f"{hub.url}/hub/xnat-hpc/review", timeout=30).text
        assert approve.id in page and recs[approve.id].manifest_sha256 in page
        assert recs[approve.id].script_sha256 in page and recs[approve.id].slurm_job_id in page
        assert "RESULT-MARKER-7f3a" in page and "summary.csv" in page and "weights.bin" in page
        r = post_form(sessions["alice"], hub, f"jobs/bob/{approve.id}", decision="approve")
        assert r.status_code == 404 and "CARDIO_ECG" not in r.text  # as for a job that does not exist
        assert m.review(approve.id)["state"] == "held"
        r = post_form(sessions["dave"], hub, f"jobs/bob/{approve.id}", decision="approve")
        assert r.status_code == 302
        assert m.review(approve.id)["state"] == "approved"  # on the hub; opened at results()
        assert archive.exists()
        res = m.results(approve.id)
        assert {f["name"] for f in res["files"]} == {"metrics.json", "summary.csv", "weights.bin"}
        assert "RESULT-MARKER-7f3a" in (ws / "jobs" / approve.id / "results" / "metrics.json").read_text()
        assert res["provenance"]["manifest_sha256"] == recs[approve.id].manifest_sha256
        assert not archive.exists() and not (ws / "jobs" / approve.id / rv.SHARE_FILE).exists()
        assert m.review(approve.id)["state"] == "approved"
        assert m.results(approve.id)["files"] == res["files"]  # opened once, then as before

        # 3. rejection: deleted, the reason shown
        rej_archive = Path(rv.HeldResults(ws / "jobs" / reject.id).load()["archive"])
        r = post_form(sessions["dave"], hub, f"jobs/bob/{reject.id}", decision="reject", reason="")
        assert r.status_code == 400  # a reason is required
        r = post_form(sessions["dave"], hub, f"jobs/bob/{reject.id}", decision="reject",
                      reason="summary.csv lists <file names> of single patients")
        assert r.status_code == 302
        with pytest.raises(rv.ResultsRejected, match="rejected by an owner.*single patients"):
            m.results(reject.id)
        assert m.review(reject.id) == {"state": "rejected", "reason": "summary.csv lists <file names> of "
                                       "single patients", "since": m.review(reject.id)["since"],
                                       "projects": ["CARDIO_ECG"], "pending": []}
        assert not rej_archive.exists() and not (ws / "jobs" / reject.id / rv.SHARE_FILE).exists()
        assert "share" not in hub_job(hub, tokens["bob"], reject.id, share=True).json()

        # 4. two marked projects: dave's approval is not enough
        assert post_form(sessions["dave"], hub, f"jobs/bob/{both.id}", decision="approve").status_code == 302
        with pytest.raises(rv.ResultsHeld, match="NEURO_MRI"):
            m.results(both.id)
        assert post_form(sessions["alice"], hub, f"jobs/bob/{both.id}", decision="approve").status_code == 302
        assert {f["name"] for f in m.results(both.id)["files"]} >= {"metrics.json"}

        actions = [(e.action, e.outcome) for e in m.sink.events]
        assert ("review_hold", "allowed") in actions and ("review_delete", "allowed") in actions
        assert ("result_retrieve", "allowed") in actions
    finally:
        m.close()
    # the hub's trail: decisions, refusals and the share release, with who did them
    from hub_ext.audit_log import HubAuditLog

    trail = HubAuditLog(path=str(hub_dir / "xnat-hpc-audit" / "audit.db")).query(limit=1000)
    seen = {(e["user"], e["action"], e["outcome"]) for e in trail}
    for want in (("dave", "review_policy", "allowed"), ("alice", "review_policy", "denied"),
                 ("bob", "review_hold", "allowed"), ("alice", "review_approve", "denied"),
                 ("dave", "review_approve", "allowed"), ("dave", "review_reject", "allowed"),
                 ("bob", "key_release", "allowed")):
        assert want in seen, (want, sorted(seen))


REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "results-review"


def test_review_page_in_a_browser_rejects_without_javascript(review_hub):
    """A held job registered as a server would (previews sealed to the hub's key, one of them
    hostile HTML); dave rejects it through the page with JavaScript off; bob's token then reads
    the rejection and its reason, and a registration sealed to another key is refused."""
    import json
    import os

    from xnat_bridge.staging import AgeIdentity

    hub, sessions, tokens, _ = review_hub
    client = rv.ReviewClient(f"{hub.url}/hub/api", tokens["bob"])
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="on").status_code == 302
    recipient = client.policy(["CARDIO_ECG"])["recipient"]
    job_id = "j" + os.urandom(6).hex()
    body = {"projects": ["CARDIO_ECG"], "dataset": "ecg", "dataset_version": 2, "manifest_sha256": "m" * 64,
            "script_sha256": "s" * 64, "slurm_job_id": "4242",
            "results": [{"name": "notes.txt", "size": 40, "sha256": "a" * 64},
                        {"name": "summary.csv", "size": 30, "sha256": "b" * 64}],
            "share": rv.wrap(os.urandom(74), recipient),
            "previews": {"notes.txt": rv.wrap(b"<script>alert(1)</script><b>bold</b>", recipient),
                         "summary.csv": rv.wrap(b"patient,age\nP<i>1</i>,54\n", recipient)}}
    with pytest.raises(rv.PermissionDenied):  # sealed to another key: the hub refuses it
        client.register("j" + os.urandom(6).hex(), {**body, "share": rv.wrap(b"x", AgeIdentity.generate().recipient)})
    assert client.register(job_id, body)["state"] == "held"

    env = {**os.environ, "NODE_PATH": str(REPO / "labextension" / "node_modules")}
    proc = subprocess.run(["node", str(REPO / "tests" / "e2e" / "review_page.js"), hub.url, "dave",
                           PASSWORDS["dave"], job_id, str(ARTIFACTS)], capture_output=True, text=True,
                          timeout=300, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    facts = json.loads(lines[-1])
    assert proc.returncode == 0, facts
    assert facts["h1"] == "Results review" and "Your projects" in facts["captions"]
    assert job_id in facts["jobHeading"] and "held for review" in facts["jobHeading"]
    assert any("<script>alert(1)</script><b>bold</b>" in t for t in facts["previewText"])  # shown as text
    assert "P<i>1</i>" in facts["previewCells"] and facts["injected"] == 0 and not facts["alerted"]
    assert facts["reasonLabel"].startswith("Reason")
    assert facts["afterUrl"].endswith("/hub/xnat-hpc/review?notice=reject")
    assert facts["afterState"] == "rejected: summary.csv names single patients"
    status = client.status(job_id, share=True)
    assert status["state"] == "rejected" and status["reason"] == "summary.csv names single patients"
    assert "share" not in status
