"""One audit trail the hub keeps (issue 14, items 1 and 2), with a real hub + CHP, devxnat,
the local Slurm and a real browser: bob's offload job on CARDIO_ECG reaches dave's owner
page (manifest hash, Slurm job id) and not alice's; bob's local log is his copy only;
edits of the hub's store are found and named; events queued while the hub is unreachable
arrive once, in order; identity is the token's, never the body's."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest
import requests

from hub_ext.audit_store import canonical, mac_of
from hub_ext.cli import main as cli
from tests.fixtures.accounts import unix_entry, unix_name
from tests.fixtures.faultproxy import FaultProxy
from tests.fixtures.spawn import audit_events, process_environ, server_process, stop_server, wait_for, wait_ready
from xnat_bridge.audit import make_event
from xnat_bridge.audit_outbox import Outbox, Sender

# the secure partition has one exclusive node, shared with every other test run on the machine
pytestmark = [pytest.mark.devxnat, pytest.mark.slurm, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "hub-audit"


def _start(hub, user: str, password: str, projects: list[str], server: str = "") -> dict:
    hub.login(user, password)
    r = hub.api("POST", f"/users/{user}/servers/{server}", json={"profile": "local-small", "projects": projects})
    assert r.status_code in (201, 202), r.text
    pid = server_process(user, wait_ready(hub, user, server, timeout=120))
    return process_environ(pid)


@pytest.fixture(scope="module")
def bob(hub):
    env = _start(hub, "bob", "bob-demo", ["CARDIO_ECG"])
    yield env
    stop_server(hub, "bob")


def _server_api(hub, user: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}/user/{user}/xnat-hpc/api{path}", timeout=120,
                            headers={"Authorization": f"token {hub.api_token}"}, **kw)


def _store(hub) -> Path:
    return Path(hub.log_path).parent / "audit" / "audit.db"


def _post(hub, token: str, body: dict) -> requests.Response:
    return requests.post(f"{hub.url}/hub/api/xnat-hpc/audit", json=body, timeout=30,
                         headers={"Authorization": f"token {token}"} if token else {})


# -- the job on dave's page, not on alice's -----------------------------------------------------
@pytest.fixture(scope="module")
def bob_job(hub, bob):
    home = Path(unix_entry("bob").pw_dir)
    script = home / "audit_train.py"
    shutil.copy(REPO / "examples" / "train_example.py", script)
    shutil.chown(script, unix_name("bob"), unix_entry("bob").pw_gid)
    exps = _server_api(hub, "bob", "GET", "/projects/CARDIO_ECG/experiments")
    assert exps.status_code == 200, exps.text
    exp = exps.json()["items"][0]
    exp_id = exp.get("id") or exp.get("label")
    name = f"ecg-audit-{os.urandom(3).hex()}"  # a new dataset: bob's workspace outlives test runs
    ds = _server_api(hub, "bob", "POST", "/datasets",
                     json={"name": name, "selection": [{"project": "CARDIO_ECG", "experiment": exp_id}]})
    assert ds.status_code == 201, ds.text
    job = _server_api(hub, "bob", "POST", "/jobs", json={"dataset": name, "script": "audit_train.py",
                                                          "cpus": 1, "walltime": "0:10:00"})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]
    final = wait_for(lambda: (lambda j: j if j["state"] in ("done", "failed", "cancelled") else None)(
        _server_api(hub, "bob", "GET", f"/jobs/{job_id}").json()), 900, f"job {job_id} to end")
    assert final["state"] == "done", json.dumps(final)[:2000]
    retrieved = wait_for(lambda: [e for e in audit_events(hub) if e["action"] == "result_retrieve"
                                   and (e.get("extra") or {}).get("job") == job_id], 30,
                          "the result_retrieve event on the hub")
    return final, retrieved[0]


def test_bobs_job_is_on_daves_owner_page_with_manifest_and_slurm_id_not_on_alices(hub, bob_job):
    job, _ = bob_job
    trail = audit_events(hub)
    submit = next(e for e in trail if e["action"] == "submit" and (e.get("extra") or {}).get("job") == job["id"])
    assert submit["user"] == "bob" and submit["source"] == "server" and submit["stream"].startswith("bob//")
    assert all(i.startswith("CARDIO_ECG/") for i in submit["items"])
    slurm_id, manifest = submit["extra"]["slurm_job_id"], submit["hashes"]["manifest"]
    assert slurm_id.isdigit() and len(manifest) >= 64 and submit["hashes"]["script"]
    # the stages in between reached the hub too, in the order the server emitted them
    actions = [e["action"] for e in trail if e["user"] == "bob" and e["source"] == "server"]
    assert actions.index("dataset_create") < actions.index("stage") < actions.index("submit") \
        < actions.index("key_release") < actions.index("result_retrieve")

    dave, _ = hub.login("dave", "dave-demo")
    page = dave.get(f"{hub.url}/hub/xnat-hpc/owner?format=json&project=CARDIO_ECG&action=submit", timeout=60).json()
    assert sorted(page["owned"]) == ["CARDIO_ECG", "SLEEP_EEG"] and page["chain_ok"] is True
    mine = [e for e in page["events"] if (e.get("extra") or {}).get("job") == job["id"]]
    assert mine and mine[0]["extra"]["slurm_job_id"] == slurm_id and mine[0]["hashes"]["manifest"] == manifest
    html = dave.get(f"{hub.url}/hub/xnat-hpc/owner", timeout=60).text
    jobs_table = html.split('id="jobs-CARDIO_ECG"', 1)[1].split("</table>", 1)[0]
    assert job["id"] in jobs_table and manifest in jobs_table and f"<td>{slurm_id}</td>" in jobs_table
    assert "<td>done</td>" in jobs_table
    assert "bob" in html.split('id="servers-CARDIO_ECG"', 1)[1].split("</table>", 1)[0]  # bob's server runs

    alice, _ = hub.login("alice", "alice-demo")
    apage = alice.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=60).json()
    assert apage["owned"] == ["NEURO_MRI"]
    assert not [e for e in apage["events"] if any(i.startswith("CARDIO_ECG") for i in e["items"])]
    assert manifest not in alice.get(f"{hub.url}/hub/xnat-hpc/owner", timeout=60).text
    r = alice.get(f"{hub.url}/hub/xnat-hpc/owner?format=json&project=CARDIO_ECG", timeout=60)
    assert r.status_code == 400 and "do not own" in r.text


def test_bob_rewriting_his_local_log_changes_nothing_on_the_hub(hub, bob_job):
    before = [e for e in audit_events(hub) if e["user"] == "bob"]
    local = Path(unix_entry("bob").pw_dir) / "xnat-hpc" / "audit.jsonl"
    assert local.exists()
    lines = local.read_text().splitlines()
    subprocess.run(["runuser", "-u", unix_name("bob"), "--", "sh", "-c", f": > {local}"], check=True)  # truncate as bob
    subprocess.run(["runuser", "-u", unix_name("bob"), "--", "sh", "-c", f"echo '{lines[0]}' > {local}"], check=True)
    after = [e for e in audit_events(hub) if e["user"] == "bob"]
    assert after[:len(before)] == before
    assert cli(["audit", "verify", "--store", str(_store(hub))]) == 0
    # bob cannot read or write the hub's trail at all
    r = subprocess.run(["runuser", "-u", unix_name("bob"), "--", "cat", str(_store(hub))], capture_output=True)
    assert r.returncode != 0


def _copy_store(hub, dest: Path) -> tuple[Path, Path]:
    """A consistent copy of the live store (SQLite's backup API), its checkpoint and key."""
    dest.mkdir(mode=0o700)
    src = _store(hub)
    with sqlite3.connect(f"file:{src}?mode=ro", uri=True) as s, sqlite3.connect(dest / "audit.db") as d:
        s.backup(d)
    os.chmod(dest / "audit.db", 0o600)
    for name in ("audit.db.checkpoint", "audit.key"):
        shutil.copy(src.with_name(name), dest / name)
        os.chmod(dest / name, 0o600)
    return dest / "audit.db", dest / "audit.key"


@pytest.mark.parametrize("tamper, words", [
    ("change", "was changed after it was written"),
    ("remove", "is missing (removed"),
    ("truncate", "truncated"),
    ("rechain", "was changed after it was written"),
])
def test_edits_of_the_hubs_store_are_found_and_named(hub, bob_job, tmp_path, capsys, tamper, words):
    store, key = _copy_store(hub, tmp_path / "copy")
    assert cli(["audit", "verify", "--store", str(store), "--key", str(key)]) == 0
    capsys.readouterr()
    db = sqlite3.connect(store, isolation_level=None)
    count = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    target = next(seq for seq, body in db.execute("SELECT seq, body FROM events ORDER BY seq")
                  if json.loads(body)["action"] == "submit")
    if tamper == "change":  # bob's job never happened on CARDIO_ECG
        doc = json.loads(db.execute("SELECT body FROM events WHERE seq=?", (target,)).fetchone()[0])
        doc["items"] = ["NEURO_MRI/x"]
        db.execute("UPDATE events SET body=? WHERE seq=?", (canonical(doc), target))
    elif tamper == "remove":
        db.execute("DELETE FROM events WHERE seq=?", (target,))
    elif tamper == "truncate":
        db.execute("DELETE FROM events WHERE seq>=?", (target,))
    else:  # rewrite from the submit on and re-chain with a key of one's own
        prev = db.execute("SELECT prev FROM events WHERE seq=?", (target,)).fetchone()[0]
        for seq, body in db.execute("SELECT seq, body FROM events WHERE seq>=? ORDER BY seq", (target,)).fetchall():
            doc = json.loads(body)
            doc["user"] = "nobody"
            body = canonical(doc)
            mac = mac_of(b"not the hub's key" * 2, prev, body)
            db.execute("UPDATE events SET body=?, prev=?, mac=? WHERE seq=?", (body, prev, mac, seq))
            prev = mac
    db.close()
    assert cli(["audit", "verify", "--store", str(store), "--key", str(key)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN" in out and words in out, out
    assert f"record {target}" in out or (tamper == "truncate" and f"counts {count}" in out) or \
        (tamper == "truncate" and "record" in out), out


# -- identity --------------------------------------------------------------------------------
def test_identity_comes_from_the_servers_token_never_from_the_body(hub, bob):
    token = bob["JUPYTERHUB_API_TOKEN"]
    r = _post(hub, token, {"boot": "forgery1", "events": [
        {"seq": 1, "user": "alice", "server": "other", "source": "hub", "action": "download",
         "outcome": "allowed", "items": ["CARDIO_ECG/x"], "detail": "claims to be alice"}]})
    assert r.status_code == 200 and r.json()["appended"] == 1, r.text
    rec = [e for e in audit_events(hub) if e.get("stream") == "bob//forgery1"]
    assert len(rec) == 1 and rec[0]["user"] == "bob" and rec[0]["server"] == "" and rec[0]["source"] == "server"
    assert rec[0]["extra"]["claimed_user"] == "alice"
    # another user's server posts claiming to be bob: recorded as that user
    alice = _start(hub, "alice", "alice-demo", ["NEURO_MRI"], server="audit")
    try:
        r = _post(hub, alice["JUPYTERHUB_API_TOKEN"], {"boot": "forgery2", "events": [
            {"seq": 1, "user": "bob", "action": "download", "outcome": "allowed", "items": ["CARDIO_ECG/x"]}]})
        assert r.status_code == 200, r.text
        rec = [e for e in audit_events(hub) if e.get("stream", "").endswith("/forgery2")]
        assert [(e["user"], e["server"]) for e in rec] == [("alice", "audit")]
    finally:
        stop_server(hub, "alice", "audit")
    # a personal API token of bob, no token, or a stopped server's token: refused
    personal = hub.api("POST", "/users/bob/tokens", json={"note": "not a server"}).json()["token"]
    assert _post(hub, personal, {"boot": "x", "events": [{"seq": 1, "action": "download"}]}).status_code == 403
    assert _post(hub, "", {"boot": "x", "events": [{"seq": 1, "action": "download"}]}).status_code == 403
    assert _post(hub, alice["JUPYTERHUB_API_TOKEN"], {"boot": "x", "events": [{"seq": 1, "action": "download"}]}
                 ).status_code == 403
    # bad batches: clear 4xx
    r = _post(hub, token, {"boot": "bad", "events": [{"seq": 1, "action": "rm -rf"}]})
    assert r.status_code == 400 and "unknown audit action" in r.json()["message"]
    r = _post(hub, token, {"boot": "forgery1", "events": [{"seq": 5, "action": "download"}]})
    assert r.status_code == 409 and "expected sequence number 2" in r.json()["message"]


# -- the hub unreachable --------------------------------------------------------------------------
def test_events_queued_while_the_hub_is_unreachable_arrive_once_in_order(hub, bob, tmp_path):
    proxy = FaultProxy(hub.url)  # the hub as the server reaches it; down() = hub unreachable
    try:
        box = Outbox(tmp_path / "ws")
        sender = Sender(box, f"{proxy.url}/hub/api", bob["JUPYTERHUB_API_TOKEN"], timeout=5)
        sender.max_backoff = 2.0
        proxy.down()
        sender.start()
        for i in range(7):
            box.append(make_event("bob", "download", items=[f"CARDIO_ECG/q{i}"], detail=f"queued {i}").to_dict())
            sender.wake.set()
        wait_for(lambda: sender.backoff >= 1.0, 30, "the sender to back off from the hub that is down")
        assert len(box.pending()[1]) == 7  # kept, retrying with backoff
        boot = box.pending()[0]
        assert not [e for e in audit_events(hub) if e.get("stream") == f"bob//{boot}"]
        proxy.up()
        wait_for(lambda: not box.pending()[1], 30, "the outbox to drain after the hub came back")
        sender.stop()
        got = [e for e in audit_events(hub) if e.get("stream") == f"bob//{boot}"]
        assert [e["detail"] for e in got] == [f"queued {i}" for i in range(7)]
        assert [e["stream_seq"] for e in got] == list(range(1, 8))
        # the hub's answer was lost: the server sends everything again; nothing is appended twice
        box.ack_path.write_text(json.dumps({"acked": 0}))
        r = _post(hub, bob["JUPYTERHUB_API_TOKEN"], {"boot": boot, "events": [
            {**make_event("bob", "download", detail=f"queued {i}").to_dict(), "seq": i + 1} for i in range(7)]})
        assert r.json() == {"acked": 7, "appended": 0, "duplicates": 7}
        assert len([e for e in audit_events(hub) if e.get("stream") == f"bob//{boot}"]) == 7
    finally:
        proxy.close()


# -- the page in a browser -------------------------------------------------------------------------
def test_owner_page_in_a_browser_filters_without_javascript_and_exports_csv(hub, bob_job):
    env = {**os.environ, "NODE_PATH": str(REPO / "labextension" / "node_modules")}
    proc = subprocess.run(["node", str(REPO / "tests" / "e2e" / "owner_page.js"), hub.url, "dave", "dave-demo",
                           str(ARTIFACTS)], capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, f"no result from the browser script:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    facts = json.loads(lines[-1])
    assert proc.returncode == 0, facts
    assert facts["h1"] == "Audit of your XNAT projects" and facts["skipLink"]
    assert facts["captions"] and all(facts["thScoped"] for _ in [0])
    assert facts["filteredActions"] and set(facts["filteredActions"]) == {"submit"}
    assert "action=submit" in facts["filteredUrl"]
    assert facts["csvHeader"].startswith("seq,time,user,server,source,action")
    assert facts["csvRows"] >= 1 and facts["csvName"].endswith(".csv")


# -- logins ------------------------------------------------------------------------------------
def test_logins_are_audited_with_the_name_tried_never_the_password(hub):
    _, r = hub.login("carol", "not-carols-password-x9")
    assert r.status_code != 302 or "/hub/login" in r.headers.get("Location", "")
    hub.login("carol", "carol-demo")
    logins = [e for e in audit_events(hub) if e["action"] == "login" and e["user"] == "carol"]
    assert [e["outcome"] for e in logins[-2:]] == ["denied", "allowed"], logins
    assert all(e["source"] == "hub" for e in logins)
    store_bytes = _store(hub).read_bytes() + _store(hub).with_name("audit.db-wal").read_bytes() \
        if _store(hub).with_name("audit.db-wal").exists() else _store(hub).read_bytes()
    assert b"not-carols-password-x9" not in store_bytes
