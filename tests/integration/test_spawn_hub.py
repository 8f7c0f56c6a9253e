"""The XNAT-scoped spawners in a real JupyterHub (configurable-http-proxy) against
devxnat, with the real local Slurm: form, REST and XNAT-launch validation, the
bubblewrap scope, the Slurm server without secrets in Slurm, progress, audit."""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.fixtures.spawn import audit_events, make_hub, wait_for, wait_gone, wait_ready
from xnat_bridge.spawn_record import SpawnRecord
from tests.fixtures.spawn import process_environ as _environ
from tests.fixtures.spawn import server_process as _server_process

pytestmark = [pytest.mark.devxnat]

FAST = """
c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 0}
"""


def stop(hub, user: str, server: str = "") -> None:
    r = hub.api("DELETE", f"/users/{user}/servers/{server}")
    assert r.status_code in (202, 204), r.text
    wait_gone(hub, user, server, timeout=30)


def form_choices(html: str) -> tuple[list[str], dict[str, str]]:
    profiles = re.findall(r'name="profile" id="[^"]+" value="([^"]+)"', html)
    projects = dict(re.findall(r'name="project" id="[^"]+" value="([^"]+)".*?data-role="([^"]+)"', html))
    return profiles, projects


@pytest.mark.parametrize("user, profiles, projects", [
    ("alice", ["local-small", "local-owners", "slurm-cpu"], {"NEURO_MRI": "Owner", "SLEEP_EEG": "Member"}),
    ("bob", ["local-small", "slurm-cpu"], {"NEURO_MRI": "Collaborator", "CARDIO_ECG": "Member"}),
    ("carol", ["local-small", "slurm-cpu"], {}),
])
def test_form_shows_exactly_the_users_projects_and_profiles(hub, user, profiles, projects):
    s, r = hub.login(user, f"{user}-demo")
    assert r.status_code == 302
    page = s.get(f"{hub.url}/hub/spawn/{user}", timeout=30)
    assert page.status_code == 200
    got_profiles, got_projects = form_choices(page.text)
    assert got_profiles == profiles
    assert got_projects == projects
    # accessible: every input has a label
    for input_id in re.findall(r'<input type="(?:radio|checkbox)" name="\w+" id="([^"]+)"', page.text):
        assert f'<label for="{input_id}">' in page.text
    if not projects:
        assert "cannot read any XNAT project" in page.text


def test_rest_request_for_unreadable_project_is_refused_and_audited(hub):
    hub.login("alice", "alice-demo")
    r = hub.api("POST", "/users/alice/servers/", json={"profile": "local-small", "projects": ["CARDIO_ECG"]})
    assert r.status_code == 403, r.text
    assert "CARDIO_ECG" in r.json()["message"] and "ask its owner" in r.json()["message"]
    denied = [e for e in audit_events(hub) if e["action"] == "spawn" and e["outcome"] == "denied"]
    assert any("CARDIO_ECG" in e["detail"] and e["user"] == "alice" for e in denied)
    assert "" not in hub.api("GET", "/users/alice").json()["servers"]


@pytest.mark.parametrize("options, status, words", [
    ({"profile": "local-small"}, 400, "select at least one XNAT project"),
    ({"profile": "local-small", "projects": ["../etc"]}, 400, "not a valid XNAT identifier"),
    ({"profile": "local-small", "projects": ["NEURO_MRI"], "cmd": "rm -rf /"}, 400, "unknown options: cmd"),
    ({"profile": "no-such", "projects": ["NEURO_MRI"]}, 404, "no profile 'no-such'"),
    ({"profile": "local-owners", "projects": ["NEURO_MRI"]}, 403, "not available to you"),
    ({"userId": 4, "servername": None, "xsiType": "xnat:mrSessionData", "itemId": "E1", "itemLabel": "L",
      "projectId": "NEURO_MRI", "eventTrackingId": "1", "dashboardConfigId": 7, "task_template": None}, 400,
     "dashboards are not supported on this hub"),
])
def test_bad_rest_requests_get_clear_errors(hub, options, status, words):
    hub.login("bob", "bob-demo")
    r = hub.api("POST", "/users/bob/servers/", json=options)
    assert r.status_code == status, r.text
    assert words in r.json()["message"]


def test_forged_form_is_refused_with_a_message(hub):
    s, _ = hub.login("alice", "alice-demo")
    xsrf = s.cookies.get("_xsrf", path="/hub/")
    r = s.post(f"{hub.url}/hub/spawn/alice", data={"profile": "local-small", "project": "CARDIO_ECG",
                                                   "_xsrf": xsrf}, timeout=60)
    assert "CARDIO_ECG" in r.text and "ask its owner" in r.text, r.text[-2000:]
    assert "" not in hub.api("GET", "/users/alice").json()["servers"]


def test_user_removed_from_project_between_form_and_start_is_refused(hub, shared_devxnat):
    s, _ = hub.login("bob", "bob-demo")
    assert "CARDIO_ECG" in form_choices(s.get(f"{hub.url}/hub/spawn/bob", timeout=30).text)[1]
    with shared_devxnat.membership("CARDIO_ECG", "bob", None):
        r = s.post(f"{hub.url}/hub/spawn/bob", data={"profile": "local-small", "project": "CARDIO_ECG",
                                                     "_xsrf": s.cookies.get("_xsrf", path="/hub/")}, timeout=60)
    assert "may not read XNAT project 'CARDIO_ECG'" in html.unescape(r.text)
    assert "" not in hub.api("GET", "/users/bob").json()["servers"]


def test_local_server_sees_only_its_scope_read_only(hub, shared_devxnat):
    hub.login("alice", "alice-demo")
    r = hub.api("POST", "/users/alice/servers/sleep", json={"profile": "local-small", "projects": ["SLEEP_EEG"]})
    assert r.status_code in (201, 202), r.text
    try:
        pid = _server_process("alice", wait_ready(hub, "alice", "sleep"))
        root = Path(f"/proc/{pid}/root")
        assert sorted(os.listdir(root / "xnat/data")) == ["SLEEP_EEG"]
        sessions = os.listdir(root / "xnat/data/SLEEP_EEG/arc001")
        assert sessions == os.listdir(shared_devxnat.archive / "SLEEP_EEG/arc001")
        # the archive itself and other projects are not there at all
        assert not (root / str(shared_devxnat.archive).lstrip("/")).exists()
        assert not (root / "xnat/data/NEURO_MRI").exists()
        env = _environ(pid)
        assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": {"SLEEP_EEG": {}}}
        assert env["XNAT_DATA"] == "/xnat/data" and env["XNAT_HOST"] == shared_devxnat.url
        assert json.loads(env["XNAT_HPC_OFFLOAD"])["partition"] == "secure"
        # read-only bind mounts, whatever the Unix permissions of the archive
        mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
        scope_mounts = [m for m in mounts if m[4].startswith("/xnat/data/")]
        assert [m[4] for m in scope_mounts] == ["/xnat/data/SLEEP_EEG"]
        assert all("ro" in m[5].split(",") for m in scope_mounts)
        # the alias token works for this user and is the one XNAT knows
        who = requests.get(f"{shared_devxnat.url}/data/services/tokens/validate/{env['XNAT_USER']}/"
                           f"{env['XNAT_PASS']}", auth=(env["XNAT_USER"], env["XNAT_PASS"]), timeout=10)
        assert who.json() == {"valid": "alice"}
        allowed = [e for e in audit_events(hub) if e["action"] == "spawn" and e["outcome"] == "allowed"]
        assert allowed[-1]["items"] == ["SLEEP_EEG"] and "local-small" in allowed[-1]["detail"]
    finally:
        stop(hub, "alice", "sleep")
    assert not Path(f"/proc/{pid}").exists()


def test_a_local_server_is_stopped_by_a_signal_it_handles_not_killed_with_bubblewrap(hub):
    """Issue 25: a stop reached the server only as bwrap's death (--die-with-parent: SIGKILL),
    so its shutdown never ran. JupyterHub's stop signals now reach the server in the sandbox:
    it shuts down itself (its extension closes the offload manager: jobs cancelled, bundles and
    TLS files removed), and its sandbox is gone after."""
    hub.login("alice", "alice-demo")
    r = hub.api("POST", "/users/alice/servers/grace", json={"profile": "local-small", "projects": ["SLEEP_EEG"]})
    assert r.status_code in (201, 202), r.text
    pid = _server_process("alice", wait_ready(hub, "alice", "grace"))
    before = hub.log_path.read_text(errors="replace").count("xnat-hpc: stopped")
    stop(hub, "alice", "grace")
    assert not Path(f"/proc/{pid}").exists()
    log = hub.log_path.read_text(errors="replace")
    # the signal reached the server, and its shutdown — our extension's included — ran (a
    # SIGKILL through bwrap's death leaves no such lines)
    assert f"sent signal 15 to alice:grace's server (pids [{pid}]) in its sandbox" in log
    assert "received signal 15, stopping" in log
    assert log.count("xnat-hpc: stopped") > before, log[-3000:]


def test_a_form_start_with_two_projects_keeps_both_in_the_hubs_record(hub):
    """Issue 19, finding 3: a form start stores ``user_options`` flat (``projects: "A,B"``) for
    XNAT's readers; the hub's own record of the scope (the spawner's state, what revocation,
    the ledger and audit ingestion read) holds both projects, also as the hub's database has
    it, and is gone once the server stops."""
    s, _ = hub.login("alice", "alice-demo")
    r = s.post(f"{hub.url}/hub/spawn/alice/two", data={"profile": "local-small", "project": ["NEURO_MRI", "SLEEP_EEG"],
                                                       "_xsrf": s.cookies.get("_xsrf", path="/hub/")}, timeout=120)
    assert r.status_code == 200, r.text[-2000:]
    try:
        wait_ready(hub, "alice", "two")
        server = hub.api("GET", "/users/alice").json()["servers"]["two"]
        assert server["user_options"]["projects"] == "NEURO_MRI,SLEEP_EEG"  # flat, for XNAT's readers
        record = SpawnRecord.from_state(server["state"])  # what the hub decided, from its database
        assert record.projects == {"NEURO_MRI", "SLEEP_EEG"} and record.profile == "local-small"
        assert record.backend == "local" and record.started
    finally:
        stop(hub, "alice", "two")
    assert "two" not in hub.api("GET", "/users/alice").json()["servers"]


def _read_all(directory: Path) -> bytes:
    blob = b""
    for path in directory.rglob("*"):
        if path.is_file():
            try:
                blob += path.read_bytes()
            except OSError:
                pass
    return blob


def test_slurm_server_starts_without_secrets_in_slurm_and_stops(hub, slurm):
    hub.login("bob", "bob-demo")
    state = hub.api("GET", "/users/bob").json()["auth_state"]
    secret = state["xnat_token"]["secret"]
    r = hub.api("POST", "/users/bob/servers/gpu", json={"profile": "slurm-cpu", "projects": ["CARDIO_ECG"]})
    assert r.status_code in (201, 202), r.text
    try:
        srv = wait_ready(hub, "bob", "gpu")
        job_id = srv["state"]["child"]["job_id"]
        assert hub.api("GET", "/users/bob/servers/gpu/progress").status_code == 200
        script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True,
                                text=True, check=True).stdout
        assert "#SBATCH --partition=interactive" in script and "#SBATCH --mem=1G" in script
        assert "xnat_bridge.launch" in script
        stored = _read_all(slurm.run_dir / "state") + script.encode()
        assert secret.encode() not in stored
        api_token = _environ(_server_process("bob", srv))["JUPYTERHUB_API_TOKEN"]
        assert api_token and api_token.encode() not in stored
        assert b"XNAT_HPC_BOOTSTRAP" in stored  # the one-time code is there, and already spent
        r = requests.get(f"{hub.url}/user/bob/gpu/api/status", headers={"Authorization": f"token {hub.api_token}"},
                         timeout=30)
        assert r.status_code in (200, 403)  # reachable through the proxy
    finally:
        stop(hub, "bob", "gpu")
    squeue = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], check=False, capture_output=True,
                            text=True).stdout
    assert squeue.strip() in ("", "COMPLETING", "CANCELLED")


def test_progress_tells_what_happens(shared_devxnat, unix_users, staging, slurm, tmp_path):
    hub = make_hub(tmp_path / "hub", shared_devxnat, "xnat", staging=staging, extra=FAST)
    hub.login("alice", "alice-demo")
    r = hub.api("POST", "/users/alice/servers/prog", json={"profile": "slurm-cpu", "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text
    messages = []
    try:
        with hub.api("GET", "/users/alice/servers/prog/progress", stream=True, timeout=90) as resp:
            for line in resp.iter_lines():
                if line.startswith(b"data:"):
                    event = json.loads(line[5:])
                    messages.append(event.get("message", ""))
                    if event.get("ready") or event.get("failed"):
                        break
        wait_ready(hub, "alice", "prog")
    finally:
        stop(hub, "alice", "prog")
        hub.stop()
    text = "\n".join(messages)
    assert "Checking your XNAT permissions" in text
    assert "Permissions checked: NEURO_MRI (Owner)" in text
    assert "Submitted Slurm job" in text
    # where the start's time went, for the researcher (its last event) and the admin (the log)
    started = next(m for m in messages if m.startswith("Started: "))
    for phase in ("checks", "prepare", "sbatch", "server start", "listening", "total"):
        assert phase in started, started
    assert "alice/prog started: checks" in hub.log_path.read_text(errors="replace") or \
        "started: checks" in hub.log_path.read_text(errors="replace")


def test_xnat_down_at_spawn_gives_a_clear_message(devxnat_factory, public_dir, unix_users, staging, tmp_path):
    private = devxnat_factory(public_dir / "private-devxnat")
    h = make_hub(tmp_path / "hub", private, "xnat", staging=staging)
    try:
        h.login("alice", "alice-demo")
        private.stop()
        r = h.api("POST", "/users/alice/servers/", json={"profile": "local-small", "projects": ["NEURO_MRI"]})
        assert r.status_code == 503, r.text
        assert "XNAT" in r.json()["message"] and "not reachable" in r.json()["message"].lower() \
            or "did not answer" in r.json()["message"]
    finally:
        h.stop()


def test_profiles_file_is_reloaded_and_a_broken_version_keeps_the_last_good(hub):
    profiles = Path(hub.log_path).parent / "profiles.yaml"
    good = profiles.read_text()
    s, _ = hub.login("carol", "carol-demo")
    try:
        profiles.write_text(good.replace("  - slug: slurm-cpu", "  - slug: local-extra\n    backend: local\n"
                                                                 "  - slug: slurm-cpu"))
        deadline = time.monotonic() + 10
        while "local-extra" not in form_choices(s.get(f"{hub.url}/hub/spawn/carol", timeout=30).text)[0]:
            assert time.monotonic() < deadline, "the hub did not pick up the changed profiles file"
            time.sleep(0.5)
        warned = hub.log().count("keeping the last good configuration")
        profiles.write_text(good + "\n  - slug: Bad Slug\n    backend: nowhere\n")
        # the hub's watcher read the broken version (its warning), and still offers the good one

        def offered_once_read():  # the form, once the hub has read the broken file (asking reads it)
            choices = form_choices(s.get(f"{hub.url}/hub/spawn/carol", timeout=30).text)[0]
            return choices if hub.log().count("keeping the last good configuration") > warned else None

        offered = wait_for(offered_once_read, 30, "the hub to read the broken profiles file")
        assert offered == ["local-small", "local-extra", "slurm-cpu"]
    finally:
        profiles.write_text(good)  # the next test's hub offers what it offered before
        wait_for(lambda: "local-extra" not in form_choices(s.get(f"{hub.url}/hub/spawn/carol", timeout=30).text)[0],
                 30, "the hub to read the restored profiles file")


def test_owners_see_their_projects_audit_trail(hub):
    hub.login("bob", "bob-demo")  # bob asks for the owners-only profile on NEURO_MRI: refused, audited
    assert hub.api("POST", "/users/bob/servers/",
                   json={"profile": "local-owners", "projects": ["NEURO_MRI"]}).status_code == 403
    s, _ = hub.login("alice", "alice-demo")
    page = s.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=30).json()
    assert page["owned"] == ["NEURO_MRI"] and page["chain_ok"] is True and "intact" in page["chain"]
    assert page["events"], "no events about NEURO_MRI"
    assert all("NEURO_MRI" in e["items"] for e in page["events"])
    # bob's refused request for NEURO_MRI (profile for owners only) is on alice's page
    assert any(e["user"] == "bob" and e["outcome"] == "denied" for e in page["events"])
    html_page = s.get(f"{hub.url}/hub/xnat-hpc/owner", timeout=30).text
    assert '<strong id="owned">NEURO_MRI</strong>' in html_page
    s, _ = hub.login("carol", "carol-demo")
    carol = s.get(f"{hub.url}/hub/xnat-hpc/owner?format=json", timeout=30).json()
    assert carol["owned"] == [] and carol["events"] == []
    # the old address leads to the governance service's page, which sends a stranger to the hub's OAuth,
    # which sends them to the login page
    anonymous = requests.Session()
    r = anonymous.get(f"{hub.url}/hub/xnat-hpc/owner", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and r.headers["Location"] == "/services/xnat-hpc-governance/owner"
    r = anonymous.get(f"{hub.url}{r.headers['Location']}", allow_redirects=False, timeout=30)
    assert r.status_code == 302 and "/hub/api/oauth2/authorize?" in r.headers["Location"]
    r = anonymous.get(f"{hub.url}/services/xnat-hpc-governance/owner", timeout=30)
    assert r.url.startswith(f"{hub.url}/hub/login") and "NEURO_MRI" not in r.text


def test_bootstrap_api_answers_mapped_errors_at_its_url(hub):
    url = f"{hub.url}/hub/api/xnat-hpc/bootstrap"
    r = requests.post(url, data=b"not json", timeout=30)
    assert r.status_code == 400 and r.json()["message"] == "expected JSON {code, job_id, port}"
    r = requests.post(url, json={"code": "forged", "job_id": "1", "port": 40000}, timeout=30)
    assert r.status_code == 403 and r.json()["message"] == "bootstrap refused"


def test_slurm_start_without_the_hub_routes_says_what_to_add(shared_devxnat, unix_users, staging, tmp_path):
    h = make_hub(tmp_path / "hub", shared_devxnat, "xnat", staging=staging,
                 extra="c.JupyterHub.extra_handlers = []\n")
    try:
        h.login("alice", "alice-demo")
        r = h.api("POST", "/users/alice/servers/", json={"profile": "slurm-cpu", "projects": ["NEURO_MRI"]})
        assert r.status_code == 503, r.text
        assert "c.JupyterHub.extra_handlers = xnat_hpc_handlers()" in r.json()["message"]
        assert "" not in h.api("GET", "/users/alice").json()["servers"]
    finally:
        h.stop()
