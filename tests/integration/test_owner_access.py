"""Owners grant and revoke access from the hub, and revocation takes effect (issue 14,
item 3), on real components: JupyterHub with configurable-http-proxy, devxnat, local
servers in their sandboxes, a real offload job on the local Slurm.

Who is who (devxnat's demo): dave owns CARDIO_ECG (and SLEEP_EEG); bob is a Member of
CARDIO_ECG (each test that changes it puts it back); alice owns NEURO_MRI only; carol
is in no project.

What is checked: a POST without the hub's XSRF token is refused and changes nothing;
XNAT decides who may change access (a member, or an owner of another project, gets
XNAT's refusal as a clear message, audited as denied); dave grants bob, bob starts a
server on CARDIO_ECG and an offload job on its data; dave revokes bob → bob's server is
stopped, his Slurm job ends CANCELLED, its encrypted bundle is gone from bob's staging
directory, and the hub's audit trail holds ``grant``, ``revoke``, ``cancel`` and
``server_stopped``; with ``c.OwnerAccess.on_revoke = "narrow"`` the server keeps
running and refuses new operations on the project once its permission cache (60 s)
has expired.
"""

from __future__ import annotations

import html
import os
import re
import time
from pathlib import Path

import pytest
import requests

from devstack.accounts import install_file
from tests.fixtures.accounts import unix_name
from tests.fixtures.spawn import audit_events, make_hub, stop_server, wait_gone, wait_ready

pytestmark = [pytest.mark.devxnat, pytest.mark.slurm]

#: the access page, on the governance service (its old address /hub/xnat-hpc/owner/access redirects)
PAGE = "/services/xnat-hpc-governance/owner/access"
REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "owner-access"
#: a server trusts XNAT's answers this long (xnat_bridge.permissions.DEFAULT_TTL_S)
PERMISSION_TTL = 3  #: c.OwnerAccess.permission_ttl of the narrowing hub
SLEEPER = 'import time\nprint("holding the dataset", flush=True)\ntime.sleep(600)\n'


@pytest.fixture(scope="module")
def sleeper(tmp_path_factory):
    """A training script that holds its job for ten minutes, in bob's home."""
    src = tmp_path_factory.mktemp("sleeper") / "sleeper.py"
    src.write_text(SLEEPER)
    os.chmod(src.parent, 0o755)
    relative = f"xnat-hpc-tests/sleeper-{os.getpid()}-{time.time_ns()}.py"
    install_file(unix_name("bob"), src, relative)
    return relative


# -- helpers ---------------------------------------------------------------------------------

def login(hub, user: str) -> requests.Session:
    s, r = hub.login(user, f"{user}-demo")
    assert r.status_code == 302, f"login of {user}: {r.status_code} {r.text[:300]}"
    return s


def page(session: requests.Session, hub, project: str = "") -> requests.Response:
    return session.get(f"{hub.url}{PAGE}" + (f"?project={project}" if project else ""), timeout=60)


def xsrf_of(session: requests.Session, hub) -> str:
    r = page(session, hub)
    found = re.search(r'name="_xsrf" value="([^"]+)"', r.text)
    # no form (a visitor who owns nothing): the service's _xsrf cookie, as a browser's script would send it
    return html.unescape(found.group(1)) if found else session.cookies.get("_xsrf", path="/services/xnat-hpc-governance/")


def post(session: requests.Session, hub, xsrf: str | None = "", **fields) -> requests.Response:
    data = dict(fields)
    if xsrf is not None:
        data["_xsrf"] = xsrf or xsrf_of(session, hub)
    return session.post(f"{hub.url}{PAGE}", data=data, timeout=120, allow_redirects=False)


def result_of(r: requests.Response) -> str:
    found = re.search(r'<p id="result"[^>]*>(.*?)</p>', r.text, re.S)
    return html.unescape(found.group(1)) if found else ""


def members(devxnat, project: str) -> dict[str, str]:
    r = devxnat.get(f"/data/projects/{project}/users?format=json", "admin")
    assert r.status_code == 200, r.text
    return {row["login"]: row["displayname"] for row in r.json()["ResultSet"]["Result"]}


def audit(hub, *, user: str | None = None, actions=None, projects=None) -> list[dict]:
    """The hub's audit trail (tests.fixtures.spawn.audit_events), newest first, filtered."""
    return [e for e in reversed(audit_events(hub))
            if (user is None or e["user"] == user) and (actions is None or e["action"] in actions)
            and (projects is None or projects & {str(i).split("/")[0] for i in e.get("items") or ()})]


def spawn(hub, user: str, server: str, projects: list[str]) -> None:
    r = hub.api("POST", f"/users/{user}/servers/{server}", json={"profile": "local-small", "projects": projects})
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, user, server, timeout=120)


def server_api(hub, token: str, user: str, server: str, method: str, path: str, **kw) -> requests.Response:
    return requests.request(method, f"{hub.url}/user/{user}/{server}/xnat-hpc/api/{path}",
                            headers={"Authorization": f"token {token}"}, timeout=120, **kw)


def user_token(hub, user: str) -> str:
    login(hub, user)  # the hub knows a user once they logged in
    r = hub.api("POST", f"/users/{user}/tokens", json={"note": "owner access test", "expires_in": 3600})
    assert r.status_code in (200, 201), r.text
    return r.json()["token"]


def first_experiment(devxnat, project: str) -> str:
    rows = devxnat.get(f"/data/projects/{project}/experiments?format=json&columns=ID", "admin").json()
    return sorted(r["ID"] for r in rows["ResultSet"]["Result"])[0]


def slurm_state(job_id: str) -> str:
    out = subprocess_out(["scontrol", "show", "job", job_id, "-o"])
    found = re.search(r"JobState=(\S+)", out)
    return found.group(1) if found else ""


def subprocess_out(cmd: list[str]) -> str:
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout


def bundles(staging: Path, user: str) -> list[str]:
    udir = staging / user
    return sorted(p.name for p in udir.iterdir() if p.name.endswith(".tar.age")) if udir.is_dir() else []


# -- refusals -------------------------------------------------------------------------------

def test_the_page_lists_only_what_the_visitor_owns(hub):
    dave = login(hub, "dave")
    r = page(dave, hub)
    assert r.status_code == 200, r.text[:500]
    assert re.search(r'id="owned">CARDIO_ECG, SLEEP_EEG<', r.text)
    assert 'id="members-CARDIO_ECG"' in r.text and 'id="members-NEURO_MRI"' not in r.text
    assert 'id="grant-CARDIO_ECG"' in r.text and "<script" not in r.text
    bob = login(hub, "bob")
    r = page(bob, hub)
    assert r.status_code == 200 and re.search(r'id="owned">none<', r.text)
    assert "<form" not in r.text


def test_a_post_without_xsrf_is_refused_and_changes_nothing(hub, shared_devxnat):
    dave = login(hub, "dave")
    before = members(shared_devxnat, "CARDIO_ECG")
    r = post(dave, hub, xsrf=None, action="revoke", project="CARDIO_ECG", user="bob")
    assert r.status_code == 403, r.text[:500]
    assert "_xsrf" in r.text
    r = post(dave, hub, xsrf="forged", action="grant", project="CARDIO_ECG", user="carol", group="Members")
    assert r.status_code == 403, r.text[:500]
    assert members(shared_devxnat, "CARDIO_ECG") == before


@pytest.mark.parametrize("who, fields", [
    ("bob", {"action": "grant", "project": "CARDIO_ECG", "user": "carol", "group": "Members"}),
    ("bob", {"action": "revoke", "project": "CARDIO_ECG", "user": "dave"}),
    ("alice", {"action": "grant", "project": "CARDIO_ECG", "user": "carol", "group": "Owners"}),
    ("alice", {"action": "revoke", "project": "CARDIO_ECG", "user": "bob"}),
])
def test_xnat_refuses_who_does_not_own_the_project(hub, shared_devxnat, who, fields):
    session = login(hub, who)
    before = members(shared_devxnat, "CARDIO_ECG")
    r = post(session, hub, **fields)
    assert r.status_code == 403, r.text[:500]
    message = result_of(r)
    assert "only an owner of CARDIO_ECG" in message and "Ask an owner of CARDIO_ECG" in message, message
    assert 'role="alert"' in r.text
    assert members(shared_devxnat, "CARDIO_ECG") == before
    denied = audit(hub, user=who, actions=[fields["action"]])
    assert denied and denied[0]["outcome"] == "denied" and denied[0]["items"] == ["CARDIO_ECG"]


def test_a_bad_form_is_refused_by_name(hub):
    dave = login(hub, "dave")
    r = post(dave, hub, action="grant", project="CARDIO_ECG", user="carol", group="Admins")
    assert r.status_code == 400 and "choose a role" in result_of(r)
    r = post(dave, hub, action="revoke", project="CARDIO_ECG", user="carol")
    assert r.status_code == 404 and "carol has no access to CARDIO_ECG" in result_of(r)


# -- in a real browser ----------------------------------------------------------------------------

@pytest.mark.e2e
def test_an_owner_grants_and_revokes_in_a_real_browser_without_javascript(hub, shared_devxnat):
    """dave grants carol CARDIO_ECG with the page's form and revokes her with the row's button,
    in chromium with JavaScript off (the page needs none)."""
    import json
    import subprocess

    xnat = shared_devxnat
    with xnat.membership("CARDIO_ECG", "carol", None):
        env = {**os.environ, "NODE_PATH": str(REPO / "labextension" / "node_modules")}
        proc = subprocess.run(["node", str(REPO / "tests" / "e2e" / "access_flow.js"), hub.url, "dave", "dave-demo",
                               "CARDIO_ECG", "carol", str(ARTIFACTS)], capture_output=True, text=True,
                              timeout=300, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no result from the browser script:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        facts = json.loads(lines[-1])
        assert proc.returncode == 0, facts.get("error") or facts
        assert facts["owned"] == "CARDIO_ECG, SLEEP_EEG"
        assert not any(row[0] == "carol" for row in facts["before"])
        assert facts["grantStatus"] == "status" and "carol now has access to CARDIO_ECG" in facts["grantResult"]
        assert ["carol", "Carol Clark", "Members"] in facts["afterGrant"]
        assert facts["revokeStatus"] == "status", facts
        assert "carol no longer has access to CARDIO_ECG (Members)" in facts["revokeResult"]
        assert not any(row[0] == "carol" for row in facts["afterRevoke"])
        assert "carol" not in members(xnat, "CARDIO_ECG")


# -- grant, then revoke with effect ------------------------------------------------------------

def test_grant_then_revoke_stops_the_server_and_cancels_the_job(hub, shared_devxnat, staging, sleeper, slurm):
    xnat = shared_devxnat
    with xnat.membership("CARDIO_ECG", "bob", None):
        dave = login(hub, "dave")
        assert "bob" not in members(xnat, "CARDIO_ECG")
        r = post(dave, hub, action="grant", project="CARDIO_ECG", user="bob", group="Members")
        assert r.status_code == 200, r.text[:1000]
        assert "bob now has access to CARDIO_ECG as one of its Members" in result_of(r)
        assert members(xnat, "CARDIO_ECG")["bob"] == "Members"
        assert re.search(r"<td>bob</td><td>[^<]*</td><td>Members</td>", r.text)
        granted = audit(hub, user="dave", actions=["grant"])
        assert granted[0]["outcome"] == "allowed" and granted[0]["items"] == ["CARDIO_ECG"]

        server = "ecg"
        token = user_token(hub, "bob")
        try:
            spawn(hub, "bob", server, ["CARDIO_ECG"])
            name = f"revoked-{time.time_ns()}"
            r = server_api(hub, token, "bob", server, "POST", "datasets", json={
                "name": name, "selection": [{"project": "CARDIO_ECG",
                                             "experiment": first_experiment(xnat, "CARDIO_ECG")}]})
            assert r.status_code in (200, 201), r.text
            r = server_api(hub, token, "bob", server, "POST", "jobs", json={
                "dataset": name, "script": sleeper, "cpus": 1, "memory": "512M", "walltime": "0:15:00",
                "client_token": name})
            assert r.status_code == 202, r.text
            job = r.json()["id"]
            # queued on Slurm, its submission on the hub's trail
            deadline, slurm_id = time.monotonic() + 180, ""
            while time.monotonic() < deadline:
                record = server_api(hub, token, "bob", server, "GET", f"jobs/{job}").json()
                slurm_id = record.get("slurm_job_id") or ""
                if slurm_id and any(slurm_id in (e.get("detail") or "") + str(e.get("extra") or "")
                                    for e in audit(hub, user="bob", actions=["submit"])):
                    break
                assert record.get("state") not in ("failed", "cancelled", "done"), record
                time.sleep(1)
            assert slurm_id, f"the job did not reach Slurm, or its submit event not the hub: {record}"
            assert slurm_state(slurm_id) in ("PENDING", "RUNNING", "CONFIGURING")
            assert bundles(staging, "bob"), "the job's bundle is not on the staging area"

            # dave revokes bob from the page
            r = post(dave, hub, action="revoke", project="CARDIO_ECG", user="bob")
            assert r.status_code == 200, r.text[:1000]
            message = result_of(r)
            assert "bob no longer has access to CARDIO_ECG (Members)" in message, message
            # the job is cancelled within the bound; the server shuts down gracefully (it cancels
            # what it follows, closes its scheduler: a few seconds under a running job), so its
            # stop may still be under way at the 5 s bound: the page then says so
            assert f"{slurm_id} cancelled" in message, message
            assert "servers stopped: ecg" in message.lower() or "still pending" in message and \
                "stopping server ecg" in message, message
            assert "bob" not in members(xnat, "CARDIO_ECG")

            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and slurm_state(slurm_id) not in ("CANCELLED", "COMPLETED", "FAILED"):
                time.sleep(0.5)
            assert slurm_state(slurm_id) == "CANCELLED"
            wait_gone(hub, "bob", server, timeout=60)
            assert bundles(staging, "bob") == []
            # bob is told on his hub home page what happened and why
            home = html.unescape(login(hub, "bob").get(f"{hub.url}/hub/home", timeout=60).text)
            assert "your server ecg was stopped: access to CARDIO_ECG revoked by dave" in home, home[-3000:]
            assert f"Slurm job {slurm_id}) was cancelled" in home

            events = audit(hub, projects={"CARDIO_ECG"})
            revoke = [e for e in events if e["action"] == "revoke" and e["user"] == "dave"]
            assert revoke and revoke[0]["outcome"] == "allowed"
            reason = "access to CARDIO_ECG revoked by dave"
            assert any(e["action"] == "cancel" and e["user"] == "bob" and slurm_id in e["detail"]
                       and reason in e["detail"] for e in events)
            assert any(e["action"] == "cancel" and "staged bundles removed" in e["detail"] for e in events)
            assert any(e["action"] == "server_stopped" and e["user"] == "bob" and reason in e["detail"]
                       and e["outcome"] == "allowed" for e in events)
        finally:
            stop_server(hub, "bob", server)


# -- narrow: the server stays, new operations are refused within the TTL ----------------------

@pytest.fixture(scope="module")
def narrow_hub(shared_devxnat, unix_users, staging, slurm, tmp_path_factory):
    h = make_hub(tmp_path_factory.mktemp("access-narrow-hub"), shared_devxnat, "xnat", staging=staging,
                 extra=f'c.OwnerAccess.on_revoke = "narrow"\nc.OwnerAccess.permission_ttl = {PERMISSION_TTL}\n')
    yield h
    h.stop()


def test_narrow_leaves_the_server_running_and_it_refuses_new_operations_within_the_ttl(
        narrow_hub, shared_devxnat):
    hub, xnat, server = narrow_hub, shared_devxnat, "narrow"
    token = user_token(hub, "bob")
    try:
        with xnat.membership("CARDIO_ECG", "bob", "Members"):
            spawn(hub, "bob", server, ["CARDIO_ECG"])
            experiment = first_experiment(xnat, "CARDIO_ECG")
            r = server_api(hub, token, "bob", server, "GET", "projects/CARDIO_ECG/subjects")
            assert r.status_code == 200, r.text[:500]
            dave = login(hub, "dave")
            r = post(dave, hub, action="revoke", project="CARDIO_ECG", user="bob")
            revoked_at = time.monotonic()
            assert r.status_code == 200, r.text[:1000]
            assert "left running" in result_of(r), result_of(r)
            assert hub.api("GET", "/users/bob").json()["servers"][server]["ready"]
            assert any(e["action"] == "revoke" and e["user"] == "bob" and "left running" in e["detail"]
                       for e in audit(hub, projects={"CARDIO_ECG"}))
            time.sleep(max(0.0, revoked_at + PERMISSION_TTL + 1 - time.monotonic()))
            r = server_api(hub, token, "bob", server, "GET", "projects/CARDIO_ECG/subjects")
            assert r.status_code == 403, r.text[:500]
            r = server_api(hub, token, "bob", server, "POST", "datasets", json={
                "name": f"narrow-{time.time_ns()}", "selection": [{"project": "CARDIO_ECG", "experiment": experiment}]})
            assert r.status_code == 403, r.text[:500]
            assert "CARDIO_ECG" in r.json()["message"]
            assert hub.api("GET", "/users/bob").json()["servers"][server]["ready"]
    finally:
        stop_server(hub, "bob", server)


# -- revoked in XNAT's own UI: the hub's re-check finds it ------------------------------------

@pytest.fixture(scope="module")
def watching_hub(shared_devxnat, unix_users, staging, slurm, tmp_path_factory):
    h = make_hub(tmp_path_factory.mktemp("access-watch-hub"), shared_devxnat, "xnat", staging=staging,
                 extra="c.OwnerAccess.recheck_interval = 2\n")
    yield h
    h.stop()


def test_a_revocation_in_xnat_is_found_by_the_recheck_and_the_server_stopped(watching_hub, shared_devxnat):
    hub, xnat, server = watching_hub, shared_devxnat, "watched"
    try:
        with xnat.membership("CARDIO_ECG", "bob", "Members"):
            login(hub, "bob")
            spawn(hub, "bob", server, ["CARDIO_ECG"])
            # the re-check runs in the governance service's process, which the hub started
            assert "Starting service 'xnat-hpc-governance'" in hub.log()
            seen = rounds(hub)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and rounds(hub) < seen + 2:  # two rounds with bob's server
                time.sleep(0.2)
            assert rounds(hub) >= seen + 2, hub.log()[-3000:]
            assert hub.api("GET", "/users/bob").json()["servers"][server]["ready"]  # nothing lost, nothing stopped
            # dave removes bob in XNAT itself, not on the hub
            r = xnat.request("DELETE", "/data/projects/CARDIO_ECG/users/Members/bob", "dave")
            assert r.status_code == 200, r.text
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and server in hub.api("GET", "/users/bob").json()["servers"]:
                time.sleep(0.5)
            assert server not in hub.api("GET", "/users/bob").json()["servers"], hub.log()[-3000:]
            # the stop is seen by the hub's API as it ends; the service's audit of it follows
            # (same process, next write): wait for the event, not a time
            deadline = time.monotonic() + 30
            while True:
                events = audit(hub, user="bob", projects={"CARDIO_ECG"})
                stopped = [e for e in events if e["action"] == "server_stopped" and "re-check" in e["detail"]]
                if stopped or time.monotonic() > deadline:
                    break
                time.sleep(0.3)
            assert stopped, events
            assert any(e["action"] == "revoke" and "re-check" in e["detail"] for e in events)
            assert "xnat-hpc-governance xnat_hpc_governance.revocation_watch] re-check: bob lost CARDIO_ECG" in hub.log()
    finally:
        stop_server(hub, "bob", server)


def rounds(hub) -> int:
    """How many re-check rounds the governance service's process has logged in the hub's log."""
    return len(re.findall(r"xnat-hpc-governance xnat_hpc_governance\.revocation_watch\] re-check round \d+", hub.log()))
