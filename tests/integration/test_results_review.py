"""Results review ("safe outputs") end to end, bound to the hub's job ledger (issue 19,
finding 1): a real JupyterHub (+ CHP, XNAT authenticator on devxnat, profiles spawner) that
starts bob's real local servers; the test process plays bob's kernel and holds what a kernel
holds, **the server's own** ``JUPYTERHUB_API_TOKEN``; bob's offload manager runs in the test
process with that token on the real Slurm; the owners decide through the hub's real forms
(XSRF). bob runs two servers: the default one scoped to CARDIO_ECG (owner dave) and ``both``
scoped to CARDIO_ECG + NEURO_MRI (owners dave and alice): a job needs the owners of every
marked project of the **server's scope**, whatever its dataset holds.

* a held result cannot be opened by bob before approval: not through ``results()``, not by
  his Unix account reading the staging area, not with everything his server holds (its
  share), not by asking the hub for the hub's share with his server's token;
* an owner of another project cannot approve; the owner of the project can, and then the
  results open as before;
* a rejection deletes the sealed results and bob reads the reason;
* a job of a server scoped to two marked projects needs both owners;
* the replay of finding 1: the held job's registration re-posted under an invented job id,
  under another ledger job of the same server, or with a share bob made himself, releases
  nothing; a personal token enters no job; the old policy route is gone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import requests

from tests.fixtures.accounts import unix_name
from tests.fixtures.devxnat import PASSWORDS
from tests.fixtures.spawn import audit_events, start_server, stop_server, wait_for
from xnat_bridge.errors import PermissionDenied
from xnat_bridge.offload import JobState
from xnat_bridge.offload import review as rv

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "results-review"
BOTH = ["CARDIO_ECG", "NEURO_MRI"]
#: printed by the script: a held job's log must not carry it (the output is held too)
PRINTED = "PRINTED-ROW-9c1d"

SCRIPT = """
import json, os
from pathlib import Path
files = [p for p in Path(os.environ["DATASET_DIR"]).rglob("*") if p.is_file()]
out = Path(os.environ["OUTPUT_DIR"])
(out / "metrics.json").write_text(json.dumps({"files": len(files), "marker": "RESULT-MARKER-7f3a"}))
(out / "summary.csv").write_text("name,bytes\\n" + "".join(f"{p.name},{p.stat().st_size}\\n" for p in files[:5]))
(out / "weights.bin").write_bytes(b"W" * 4096)
print("PRINTED-ROW-9c1d", files[0].name if files else "")
print("done", len(files))
"""


#: the review page, on the governance service (its old address /hub/xnat-hpc/review redirects)
REVIEW = "/services/xnat-hpc-governance/review"


# -- helpers -----------------------------------------------------------------------------
def form_xsrf(session: requests.Session, hub) -> str:
    page = session.get(f"{hub.url}{REVIEW}", timeout=30)
    assert page.status_code == 200, page.text[:500]
    return re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)


def post_form(session, hub, path: str, **data) -> requests.Response:
    data["_xsrf"] = form_xsrf(session, hub)
    return session.post(f"{hub.url}{REVIEW}/{path}", data=data, allow_redirects=False,
                        timeout=60)


def hub_api(hub, token: str | None, method: str, path: str, **kw) -> requests.Response:
    """``{hub}/hub/api/xnat-hpc/{path}`` with *token* (None: no Authorization header)."""
    return requests.request(method, f"{hub.url}/hub/api/xnat-hpc/{path}", timeout=30,
                            headers={"Authorization": f"token {token}"} if token else {}, **kw)


def hub_job(hub, token: str | None, job_id: str, share: bool = False) -> requests.Response:
    return hub_api(hub, token, "GET", f"review/jobs/{job_id}" + ("?share=1" if share else ""))


def client(hub, token: str) -> rv.ReviewClient:
    return rv.ReviewClient(f"{hub.url}/hub/api", token)


def trail(hub, user: str, action: str, outcome: str, job: str | None = None) -> list[dict]:
    """The hub's audit events of *user*'s *action* with *outcome* (about *job*, if given)."""
    return [e for e in audit_events(hub) if (e["user"], e["action"], e["outcome"]) == (user, action, outcome)
            and (job is None or (e.get("extra") or {}).get("job") == job)]


def new_job_id() -> str:
    return "j" + os.urandom(6).hex()


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bob_servers(hub):
    """bob's two real servers; their own hub tokens, as bob's kernels hold them."""
    try:
        ecg = start_server(hub, "bob", PASSWORDS["bob"], ["CARDIO_ECG"])
        both = start_server(hub, "bob", PASSWORDS["bob"], BOTH, server="both")
        yield {"ecg": ecg["JUPYTERHUB_API_TOKEN"], "both": both["JUPYTERHUB_API_TOKEN"]}
    finally:
        stop_server(hub, "bob", "both")
        stop_server(hub, "bob")


@pytest.fixture(scope="module")
def owners(hub):
    """The owners' browser sessions (dave: CARDIO_ECG, SLEEP_EEG; alice: NEURO_MRI) and a
    personal API token of alice (no server of hers runs)."""
    sessions = {}
    for user in ("alice", "dave"):
        s, r = hub.login(user, PASSWORDS[user])
        assert r.status_code == 302, hub.log()[-2000:]
        sessions[user] = s
    r = hub.api("POST", "/users/alice/tokens", json={"note": "personal", "scopes": ["users:activity!user"]})
    assert r.status_code in (200, 201), r.text
    return sessions, r.json()["token"]


@pytest.fixture(scope="module")
def bob_data(shared_devxnat, tmp_path_factory):
    """bob's XNAT connection (in the test process, as his kernel's) and a fresh CARDIO_ECG dataset."""
    import xnat_bridge
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.scope import Scope

    base = tmp_path_factory.mktemp("bob")
    conn = xnat_bridge.connect(shared_devxnat.url, "bob", PASSWORDS["bob"], workspace=base / "ws",
                               sink=MemorySink(), ttl=60, scope=Scope.unrestricted())
    name = f"ecg-review-{os.urandom(3).hex()}"
    conn.create_dataset(name, [{"project": "CARDIO_ECG"}])
    yield conn, name
    conn.close()


@pytest.fixture
def bob_env(public_dir, tmp_path, monkeypatch):
    """A staging area other accounts can traverse (its per-user directory is the only barrier)
    and a node-local directory; the managers' workspaces go under the returned directory."""
    staging = public_dir / f"review-staging-{os.urandom(4).hex()}"
    staging.mkdir(mode=0o755)
    os.chmod(staging, 0o755)
    node = tmp_path / "node"
    node.mkdir(mode=0o700)
    monkeypatch.setenv("XNAT_HPC_NODE_TMPDIR", str(node))
    monkeypatch.setenv("XNAT_HPC_DEATH_TIMEOUT", "20")
    return staging, tmp_path


def manager_for(conn, staging, workspace: Path, hub, token: str):
    """bob's offload manager in *workspace*, talking to the hub with a server's *token*."""
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.offload import OffloadManager, OffloadPolicy

    workspace.mkdir(mode=0o700)
    (workspace / "review_train.py").write_text(SCRIPT)
    m = OffloadManager(conn, workspace=workspace, sink=MemorySink(),
                       policy=OffloadPolicy(staging_dir=str(staging), exclusive=False,
                                            default_memory=512 * 2**20, default_walltime=600))
    m.review_client = client(hub, token)
    return m


def submit(m, dataset: str):
    return m.submit(dataset, "review_train.py", cpus=1, mem="512M", walltime="0:10:00")


def ledger_done(hub, token: str, job_id: str) -> dict:
    """The hub's ledger row of *job_id* once the server reported the job done."""
    return wait_for(lambda: (lambda r: r.json() if r.status_code == 200 and r.json()["state"] == "done"
                             else None)(hub_api(hub, token, "GET", f"jobs/{job_id}")),
                    30, f"the ledger to record job {job_id} done")


# -- the owners decide ---------------------------------------------------------------------
def test_held_results_need_every_owner_and_rejection_deletes(hub, owners, bob_servers, bob_data, bob_env):
    sessions, alice_token = owners
    conn, dataset = bob_data
    staging, tmp = bob_env
    # alice does not own CARDIO_ECG: she cannot mark it; dave can (off, then on: a change, audited,
    # whatever another test of this module left); alice marks her NEURO_MRI
    r = post_form(sessions["alice"], hub, "projects", project="CARDIO_ECG", review="on")
    assert r.status_code == 403
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="off").status_code == 302
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="on").status_code == 302
    assert post_form(sessions["alice"], hub, "projects", project="NEURO_MRI", review="on").status_code == 302
    # a form post without the XSRF token is refused by the service
    r = sessions["dave"].post(f"{hub.url}{REVIEW}/projects",
                              data={"project": "CARDIO_ECG", "review": "off"}, allow_redirects=False, timeout=30)
    assert r.status_code == 403

    m = manager_for(conn, staging, tmp / "ws-ecg", hub, bob_servers["ecg"])
    m2 = manager_for(conn, staging, tmp / "ws-both", hub, bob_servers["both"])
    ws = m.workspace
    try:
        approve, reject = submit(m, dataset), submit(m, dataset)
        both = submit(m2, dataset)  # the same CARDIO_ECG dataset, from the server scoped to both projects
        recs = {approve.id: m.wait(approve.id, timeout=240), reject.id: m.wait(reject.id, timeout=240),
                both.id: m2.wait(both.id, timeout=240)}
        for rec in recs.values():
            assert rec.state == JobState.DONE, rec.message
            assert "held for review" in rec.message

        # 0. the hub's ledger: user and server from the token, projects from the server's scope as
        #    the hub decided it at spawn, the Slurm id and digests the server reported, a key per job
        entries = {j: ledger_done(hub, bob_servers["ecg"], j) for j in (approve.id, reject.id)}
        entries[both.id] = ledger_done(hub, bob_servers["both"], both.id)
        for job_id, entry in entries.items():
            rec = recs[job_id]
            assert entry["user"] == "bob" and entry["job"] == job_id and entry["dataset"] == dataset
            assert entry["slurm_job_id"] == rec.slurm_job_id and entry["script_sha256"] == rec.script_sha256
            assert entry["manifest_sha256"] == rec.manifest_sha256 and entry["recipient"].startswith("age1")
        for job_id in (approve.id, reject.id):
            assert entries[job_id]["server"] == ""
            assert entries[job_id]["projects"] == ["CARDIO_ECG"] == entries[job_id]["review"]
        assert entries[both.id]["server"] == "both"
        assert entries[both.id]["projects"] == BOTH == entries[both.id]["review"]
        assert len({e["recipient"] for e in entries.values()}) == 3  # one review key per job
        assert hub_api(hub, alice_token, "GET", f"jobs/{approve.id}").status_code == 404  # bob's, not hers

        assert m.review(approve.id)["state"] == "held"
        assert m.review(approve.id)["pending"] == ["CARDIO_ECG"]
        assert set(m2.review(both.id)["pending"]) == set(BOTH)  # the server's scope, not the dataset's
        assert client(hub, bob_servers["both"]).status(both.id)["projects"] == BOTH

        # 1. bob cannot open it before approval
        with pytest.raises(rv.ResultsHeld, match="held for review by the owners of CARDIO_ECG since"):
            m.results(approve.id)
        assert not (ws / "jobs" / approve.id / "results").exists()
        held = rv.HeldResults(ws / "jobs" / approve.id)
        archive = Path(held.load()["archive"])
        assert archive.is_file() and str(archive).startswith(str(staging))
        data = archive.read_bytes()
        assert b"RESULT-MARKER-7f3a" not in data and b"AGE-SECRET-KEY-1" not in data
        denied = subprocess.run(["runuser", "-u", unix_name("bob"), "--", "cat", str(archive)], capture_output=True)
        assert denied.returncode != 0 and b"W" * 64 not in denied.stdout
        # everything bob's server holds (its share) does not open the archive
        share = held.share()
        for guess in (share, bytes(len(share))):
            with pytest.raises(Exception):
                rv.identity_from_shares(share, guess)
        assert b"AGE-SECRET-KEY-1" not in share
        # the script's output is held with the results: bob's log says so and shows none of it
        log_text = m.logs(approve.id)[0]
        assert PRINTED not in log_text and "held for review with its results" in log_text, log_text
        # the hub answers no share before approval (to either server of bob), nothing to another
        # user, nothing without a token
        for token in bob_servers.values():
            r = hub_job(hub, token, approve.id, share=True)
            assert r.status_code == 200 and r.json()["state"] == "held" and "share" not in r.json()
        assert hub_job(hub, alice_token, approve.id).status_code == 404
        assert hub_job(hub, None, approve.id).status_code == 403

        # 2. the review page: dave sees provenance, sizes and previews (escaped); alice cannot approve
        page = sessions["dave"].get(f"{hub.url}{REVIEW}", timeout=30).text
        assert approve.id in page and recs[approve.id].manifest_sha256 in page
        assert recs[approve.id].script_sha256 in page and recs[approve.id].slurm_job_id in page
        assert "RESULT-MARKER-7f3a" in page and "summary.csv" in page and "weights.bin" in page
        assert PRINTED in page  # the reviewer sees the held output bob does not
        alice_page = sessions["alice"].get(f"{hub.url}/hub/xnat-hpc/review", timeout=30).text  # the old address: redirected
        assert approve.id not in alice_page and both.id in alice_page  # NEURO_MRI: in both's scope only
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
        assert PRINTED in m.logs(approve.id)[0]  # the output, released with the approved results

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
        assert "share" not in hub_job(hub, bob_servers["ecg"], reject.id, share=True).json()
        log_text = m.logs(reject.id)[0]
        assert PRINTED not in log_text and "rejected" in log_text, log_text

        # 4. a server scoped to two marked projects: dave's approval is not enough
        assert post_form(sessions["dave"], hub, f"jobs/bob/{both.id}", decision="approve").status_code == 302
        with pytest.raises(rv.ResultsHeld, match="NEURO_MRI"):
            m2.results(both.id)
        assert "share" not in hub_job(hub, bob_servers["both"], both.id, share=True).json()
        assert post_form(sessions["alice"], hub, f"jobs/bob/{both.id}", decision="approve").status_code == 302
        assert {f["name"] for f in m2.results(both.id)["files"]} >= {"metrics.json"}

        actions = [(e.action, e.outcome) for e in m.sink.events]
        assert ("review_hold", "allowed") in actions and ("review_delete", "allowed") in actions
        assert ("result_retrieve", "allowed") in actions
    finally:
        m.close()
        m2.close()
    # the hub's trail: entries, decisions, refusals and the share release, with who did them
    assert trail(hub, "dave", "review_policy", "allowed") and trail(hub, "alice", "review_policy", "denied")
    for job_id in (approve.id, reject.id, both.id):
        assert trail(hub, "bob", "ledger_enter", "allowed", job_id), job_id
        assert trail(hub, "bob", "review_hold", "allowed", job_id), job_id
    assert trail(hub, "alice", "review_approve", "denied", approve.id)
    assert trail(hub, "dave", "review_approve", "allowed", approve.id)
    assert trail(hub, "dave", "review_reject", "allowed", reject.id)
    assert trail(hub, "dave", "review_approve", "allowed", both.id)
    assert trail(hub, "alice", "review_approve", "allowed", both.id)
    assert len(trail(hub, "bob", "key_release", "allowed", approve.id)) == 1
    assert trail(hub, "bob", "key_release", "allowed", both.id)
    assert not trail(hub, "bob", "key_release", "allowed", reject.id)


# -- finding 1: the replay ------------------------------------------------------------------
def test_a_replayed_registration_releases_nothing(hub, owners, bob_servers, bob_data, bob_env):
    """bob's kernel holds his server's token and the held job's registration (review.json): he
    re-posts it under an invented job id with a project he might get approved, under another
    ledger job of his own server, with a share of his own making; every step is refused and
    audited, the real job stays held until its owner decides, and then opens as before."""
    from xnat_bridge.staging import AgeIdentity

    sessions, _ = owners
    conn, dataset = bob_data
    staging, tmp = bob_env
    token = bob_servers["ecg"]
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="on").status_code == 302

    m = manager_for(conn, staging, tmp / "ws-replay", hub, token)
    try:
        job = submit(m, dataset)
        rec = m.wait(job.id, timeout=240)
        assert rec.state == JobState.DONE and "held for review" in rec.message, rec.message
        real = ledger_done(hub, token, job.id)
        assert real["review"] == ["CARDIO_ECG"]
        payload = rv.HeldResults(m.job_dir(job.id)).load()["payload"]  # what the kernel can read back
        assert payload["share"] and payload["previews"] and payload["job"] == job.id

        # (a) under a job id the ledger does not know, claiming NEURO_MRI: 404, audited
        fake_id = "j00000000beef"
        r = hub_api(hub, token, "POST", f"review/jobs/{fake_id}",
                    json={**payload, "job": fake_id, "projects": ["NEURO_MRI"]})
        assert r.status_code == 404 and "not in the hub's ledger" in r.json()["message"], r.text
        denied = trail(hub, "bob", "review_hold", "denied", fake_id)
        assert denied and denied[-1]["items"] == ["CARDIO_ECG"]  # the server's scope, not the claim
        assert hub_job(hub, token, fake_id).status_code == 404

        # (b) under a ledger job bob's servers enter for the purpose (each server of his): that job
        #     has its own review key; the replayed share (and one sealed to the real job's key
        #     by bob himself) does not open with it: 403, audited
        facts = {"dataset": dataset, "dataset_version": 1, "manifest_sha256": rec.manifest_sha256,
                 "script_sha256": rec.script_sha256}
        homemade = rv.wrap(os.urandom(74), real["recipient"])
        for server_token in bob_servers.values():
            other = new_job_id()
            entered = client(hub, server_token).enter(other, facts)
            assert entered["review"] and entered["recipient"] not in (None, real["recipient"])
            for body in ({**payload, "job": other, "projects": ["NEURO_MRI"]},
                         {**payload, "job": other, "previews": {}},
                         {**payload, "job": other, "share": homemade, "previews": {}}):
                r = hub_api(hub, server_token, "POST", f"review/jobs/{other}", json=body)
                assert r.status_code == 403 and "not sealed to this key" in r.json()["message"], r.text
            assert trail(hub, "bob", "review_hold", "denied", other)
            assert hub_job(hub, server_token, other).status_code == 404  # nothing held for it
        # nor can he swap the real job's share for one he made
        r = hub_api(hub, token, "POST", f"review/jobs/{job.id}", json={**payload, "share": homemade})
        assert r.status_code == 409, r.text
        # a registration sealed to a key of his own: refused for the real job too
        r = hub_api(hub, token, "POST", f"review/jobs/{job.id}",
                    json={**payload, "share": rv.wrap(b"x", AgeIdentity.generate().recipient)})
        assert r.status_code == 403, r.text

        # (c) the real job is still held, its projects the ledger's; no share, nothing released
        r = hub_job(hub, token, job.id, share=True)
        assert r.status_code == 200 and r.json()["state"] == "held" and "share" not in r.json()
        assert r.json()["projects"] == ["CARDIO_ECG"]
        with pytest.raises(rv.ResultsHeld, match="CARDIO_ECG"):
            m.results(job.id)
        assert not trail(hub, "bob", "key_release", "allowed", job.id)
        assert not trail(hub, "bob", "key_release", "allowed", fake_id)
        page = sessions["dave"].get(f"{hub.url}{REVIEW}", timeout=30).text
        assert job.id in page and fake_id not in page

        # (d) a personal token of bob (even one that may report his activity) enters no job and
        #     registers nothing; no token at all neither
        r = hub.api("POST", "/users/bob/tokens", json={"note": "personal", "scopes": ["users:activity!user"]})
        assert r.status_code in (200, 201), r.text
        personal = r.json()["token"]
        r = hub_api(hub, personal, "POST", f"jobs/{new_job_id()}", json=facts)
        assert r.status_code == 403 and "running server" in r.json()["message"], r.text
        assert hub_api(hub, personal, "POST", f"review/jobs/{job.id}", json=payload).status_code == 403
        assert hub_api(hub, None, "POST", f"jobs/{new_job_id()}", json=facts).status_code == 403
        assert trail(hub, "bob", "ledger_enter", "allowed", job.id)

        # (e) the old policy route is gone
        r = hub_api(hub, token, "GET", "review/policy?projects=CARDIO_ECG")
        assert r.status_code == 410, r.text

        # the owner decides on the real job: it opens as before, released once, for it only
        assert post_form(sessions["dave"], hub, f"jobs/bob/{job.id}", decision="approve").status_code == 302
        assert {f["name"] for f in m.results(job.id)["files"]} == {"metrics.json", "summary.csv", "weights.bin"}
        assert len(trail(hub, "bob", "key_release", "allowed", job.id)) == 1
    finally:
        m.close()


# -- the page in a browser --------------------------------------------------------------------
def test_review_page_in_a_browser_rejects_without_javascript(hub, owners, bob_servers):
    """A held job registered as a server would (entered in the ledger with the server's token,
    previews sealed to that job's review key, one of them hostile HTML); dave rejects it through
    the page with JavaScript off; bob's server then reads the rejection and its reason. A
    registration sealed to another key is refused."""
    from xnat_bridge.staging import AgeIdentity

    sessions, _ = owners
    bob = client(hub, bob_servers["ecg"])
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="on").status_code == 302
    job_id = new_job_id()
    entered = bob.enter(job_id, {"dataset": "ecg", "dataset_version": 2, "manifest_sha256": "a" * 64,
                                 "script_sha256": "b" * 64})
    assert entered["review"] == ["CARDIO_ECG"] and entered["projects"] == ["CARDIO_ECG"]
    recipient = entered["recipient"]
    bob.report(job_id, slurm_job_id="4242", state="done")
    body = {"projects": ["CARDIO_ECG"], "dataset": "ecg", "dataset_version": 2,
            "results": [{"name": "notes.txt", "size": 40, "sha256": "a" * 64},
                        {"name": "summary.csv", "size": 30, "sha256": "b" * 64}],
            "share": rv.wrap(os.urandom(74), recipient),
            "previews": {"notes.txt": rv.wrap(b"<script>alert(1)</script><b>bold</b>", recipient),
                         "summary.csv": rv.wrap(b"patient,age\nP<i>1</i>,54\n", recipient)}}
    with pytest.raises(rv.PermissionDenied):  # sealed to another key: the hub refuses it
        bob.register(job_id, {**body, "share": rv.wrap(b"x", AgeIdentity.generate().recipient)})
    with pytest.raises(rv.PermissionDenied):  # a preview sealed to another key too
        bob.register(job_id, {**body, "previews": {"notes.txt": rv.wrap(b"x", AgeIdentity.generate().recipient)}})
    assert bob.register(job_id, body)["state"] == "held"

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
    assert facts["afterUrl"].endswith(f"{REVIEW}?notice=reject")
    assert facts["afterState"] == "rejected: summary.csv names single patients"
    status = bob.status(job_id, share=True)
    assert status["state"] == "rejected" and status["reason"] == "summary.csv names single patients"
    assert "share" not in status


# -- issue 22: approved results published to XNAT, signed by the hub ----------------------------------
def test_approved_results_are_published_to_xnat_and_verified_by_a_second_client(
        hub, owners, bob_servers, bob_data, bob_env, shared_devxnat, tmp_path):
    """bob's held job, approved by dave, published from his server's manager: the resource is on
    the dataset's one experiment in XNAT; dave's xnatpy (a second client, another account)
    downloads it; ``xnat-hpc-hub verify-results`` and ``ssh-keygen -Y verify`` accept it, and one
    changed byte is named. Before approval the hub signs nothing; a second publish changes
    nothing; the job of bob's other server on NEURO_MRI data, where bob is a Collaborator, is
    refused by XNAT and leaves no resource; the trail and dave's owner page show both."""
    import xnat

    sessions, _ = owners
    conn, _ = bob_data
    staging, tmp = bob_env
    assert post_form(sessions["dave"], hub, "projects", project="CARDIO_ECG", review="on").status_code in (302, 200)
    assert post_form(sessions["alice"], hub, "projects", project="NEURO_MRI", review="off").status_code in (302, 200)
    ecg = conn.experiments("CARDIO_ECG").items[0].label
    mri = conn.experiments("NEURO_MRI").items[0].label
    one, other = f"ecg-one-{os.urandom(3).hex()}", f"mri-one-{os.urandom(3).hex()}"
    conn.create_dataset(one, [{"project": "CARDIO_ECG", "experiment": ecg}])
    conn.create_dataset(other, [{"project": "NEURO_MRI", "experiment": mri}])
    m = manager_for(conn, staging, tmp / "ws-pub", hub, bob_servers["ecg"])
    m2 = manager_for(conn, staging, tmp / "ws-pub2", hub, bob_servers["both"])
    try:
        job, job2 = submit(m, one), submit(m2, other)
        assert m.wait(job.id, timeout=240).state == JobState.DONE
        assert m2.wait(job2.id, timeout=240).state == JobState.DONE
        ledger_done(hub, bob_servers["ecg"], job.id)
        ledger_done(hub, bob_servers["both"], job2.id)

        # 1. held: neither opened nor signed before dave approves
        with pytest.raises(rv.ResultsHeld):
            m.publish(job.id)
        r = hub_api(hub, bob_servers["ecg"], "POST", f"jobs/{job.id}/publish", json={
            "target": {"project": "CARDIO_ECG", "experiment": ecg},
            "files": [{"name": "metrics.json", "size": 1, "sha256": "0" * 64}]})
        assert r.status_code == 409 and "waiting for the owners of CARDIO_ECG" in r.json()["message"], r.text
        for j in (job.id, job2.id):
            assert post_form(sessions["dave"], hub, f"jobs/bob/{j}", decision="approve").status_code == 302

        # 2. published: the resource of the dataset's one experiment, as the hub named it
        done = m.publish(job.id)
        resource = f"/data/projects/CARDIO_ECG/experiments/{ecg}/resources/xnat-hpc-results-{job.id}"
        assert done["resource"] == resource and done["url"] == shared_devxnat.url + resource
        assert (done["files"], done["outcome"]) == (3, "published")
        assert m.publish(job.id) == done  # again: the same publication, nothing uploaded

        # 3. a second client, another account: dave's xnatpy lists and downloads it
        got = tmp_path / "downloaded"
        with xnat.connect(shared_devxnat.url, user="dave", password=PASSWORDS["dave"]) as s:
            res = s.projects["CARDIO_ECG"].experiments[ecg].resources[f"xnat-hpc-results-{job.id}"]
            assert res.format == "RO-Crate"
            for f in res.files.values():
                (got / f.path).parent.mkdir(parents=True, exist_ok=True)
                f.download(str(got / f.path))
        assert {p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()} == {
            "metrics.json", "summary.csv", "weights.bin", "ro-crate-metadata.json", "ro-crate-metadata.json.sig"}
        crate = json.loads((got / "ro-crate-metadata.json").read_text())
        nodes = {n["@id"]: n for n in crate["@graph"]}
        slurm_id = m.get(job.id).slurm_job_id
        assert slurm_id and nodes[f"#slurm-{slurm_id}"]["value"] == slurm_id
        assert [a["agent"]["@id"] for a in crate["@graph"] if a.get("@type") == "AssessAction"] == ["#user-dave"]
        keyfile = tmp_path / "allowed_signers"
        keyfile.write_text(done["allowed_signers"])
        cli = [str(Path(os.environ.get("VIRTUAL_ENV", "/opt/xnat-hpc-hub/venv")) / "bin" / "xnat-hpc-hub")]
        ok = subprocess.run([*cli, "verify-results", str(got), "--key", str(keyfile)], capture_output=True, text=True)
        assert ok.returncode == 0, ok.stderr
        ssh = subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(keyfile), "-I", "xnat-hpc-hub", "-n",
                              "xnat-hpc-results", "-s", str(got / "ro-crate-metadata.json.sig")],
                             input=(got / "ro-crate-metadata.json").read_bytes(), capture_output=True)
        assert ssh.returncode == 0, ssh.stderr
        data = bytearray((got / "weights.bin").read_bytes())
        data[100] ^= 1
        (got / "weights.bin").write_bytes(bytes(data))
        bad = subprocess.run([*cli, "verify-results", str(got), "--key", str(keyfile)], capture_output=True, text=True)
        assert bad.returncode == 1 and "weights.bin: changed after publishing" in bad.stderr, bad.stderr

        # 4. XNAT decides: bob is a Collaborator of NEURO_MRI; nothing is left there
        with pytest.raises(PermissionDenied, match="Collaborator"):
            m2.publish(job2.id)
        with xnat.connect(shared_devxnat.url, user="alice", password=PASSWORDS["alice"]) as s:
            assert f"xnat-hpc-results-{job2.id}" not in s.projects["NEURO_MRI"].experiments[mri].resources
    finally:
        m.close()
        m2.close()
    assert [e["extra"]["state"] for e in trail(hub, "bob", "publish", "allowed", job.id)] == [
        "signed", "published"]
    assert trail(hub, "bob", "publish", "failed", job2.id)
    page = sessions["dave"].get(f"{hub.url}/services/xnat-hpc-governance/owner", timeout=30).text
    assert f'<a href="{shared_devxnat.url}{resource}">{resource}</a>' in page
