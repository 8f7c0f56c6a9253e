"""devxnat speaks the XNAT side of NrgXnat/xnat-jupyterhub-plugin (issue 13).

Driven over HTTP as XNAT's UI drives it (``jupyterhub-servers.js``: POST a ServerStartRequest
to ``/xapi/jupyterhub/users/{u}/server/{name}``, follow ``/xapi/event_tracking/{key}``, DELETE
with ``eventTrackingId``), against a recording stand-in of JupyterHub 5's REST API on
127.0.0.1 that answers with JupyterHub's statuses and JSON. The recorded calls are the
contract of the plugin's Java client (``DefaultJupyterHubClient``): order, URLs, headers and
the exact body bytes. The hub itself (accepting that body, fetching the user options) is the
hub side's tests (test_xnat_plugin_hub.py).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.fixtures.devxnat import PASSWORDS, start_devxnat_with

TOKEN = "hub-api-token-" + uuid.uuid4().hex
SERVICE_PW = "svc-" + uuid.uuid4().hex
READY_AFTER = 2  # the fake hub reports a new server ready on the 2nd look


class FakeHub:
    """JupyterHub 5's ``/hub/api`` for users and servers, recording every request."""

    def __init__(self):
        self.calls: list[dict] = []
        self.users: dict[str, dict] = {}
        self.looks: dict[tuple, int] = {}
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _do(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                with hub.lock:
                    hub.calls.append({"method": self.command, "path": self.path,
                                      "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "body": body})
                    status, doc = hub.answer(self.command, self.path, self.headers, body)
                raw = b"" if doc is None else json.dumps(doc).encode()
                self.send_response(status)
                if doc is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            do_GET = do_POST = do_DELETE = _do

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.api = f"http://127.0.0.1:{self.server.server_address[1]}/hub/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def user_model(self, name):
        u = self.users[name]
        return {"kind": "user", "name": name, "admin": False, "roles": ["user"], "groups": [],
                "server": None, "pending": None, "created": "2026-11-26T00:00:00.000000Z",
                "last_activity": None, "servers": {k: dict(v) for k, v in u["servers"].items()
                                                   if v is not None}}

    def answer(self, method, path, headers, body):
        if not path.startswith("/hub/api/"):
            return 404, {"status": 404, "message": "Not Found"}
        rest = path[len("/hub/api/"):]
        if method == "GET" and rest == "":
            return 200, {"version": "5.2.1"}
        if headers.get("Authorization") != f"token {TOKEN}":
            return 403, {"status": 403, "message": "Forbidden"}
        if method == "GET" and rest == "info":
            return 200, {"version": "5.2.1", "python": "3.12", "sys_executable": "/usr/bin/python3",
                         "spawner": {"class": "x.Spawner", "version": "1"},
                         "authenticator": {"class": "x.Authenticator", "version": "1"}}
        m = re.fullmatch(r"users/([^/]+)(?:/server|/servers/([^/]+))?", rest)
        if not m:
            return 404, {"status": 404, "message": "Not Found"}
        name, sname = m.group(1), m.group(2) or ""
        is_server = rest != f"users/{name}"
        if not is_server:
            if method == "GET":
                if name not in self.users:
                    return 404, {"status": 404, "message": "Not Found"}
                for sn, s in self.users[name]["servers"].items():  # spawning → ready after a few looks
                    if s is None:
                        continue
                    self.looks[(name, sn)] = self.looks.get((name, sn), 0) + 1
                    if s["pending"] == "spawn" and self.looks[(name, sn)] >= READY_AFTER:
                        s.update(pending=None, ready=True)
                    if s["pending"] == "stop":
                        self.users[name]["servers"][sn] = None
                return 200, self.user_model(name)
            if method == "POST":
                if name in self.users:
                    return 409, {"status": 409, "message": f"User {name} already exists"}
                self.users[name] = {"servers": {}}
                return 201, self.user_model(name)
        if name not in self.users:
            return 404, {"status": 404, "message": "Not Found"}
        servers = self.users[name]["servers"]
        if method == "POST":
            if servers.get(sname):
                return 400, {"status": 400, "message": f"{name} is already running"}
            opts = json.loads(body or b"{}")
            prefix = f"/user/{name}/{sname}/" if sname else f"/user/{name}/"
            servers[sname] = {"name": sname, "full_name": f"{name}/{sname}", "ready": False,
                              "pending": "spawn", "stopped": False, "url": prefix,
                              "progress_url": f"/hub/api/users/{name}/servers/{sname}/progress",
                              "started": "2026-11-26T00:00:00.000000Z",
                              "last_activity": "2026-11-26T00:00:00.000000Z",
                              "user_options": {k: v for k, v in opts.items() if v is not None},
                              "full_url": None, "full_progress_url": None}
            self.looks[(name, sname)] = 0
            return 202, None
        if method == "DELETE":
            if not servers.get(sname):
                return 404, {"status": 404, "message": "Not Found"}
            servers[sname]["pending"] = "stop"
            return 202, None
        return 405, {"status": 405, "message": "Method Not Allowed"}

    def take(self) -> list[dict]:
        with self.lock:
            out, self.calls = self.calls, []
        return out


@pytest.fixture(scope="module")
def hub():
    h = FakeHub()
    yield h
    h.server.shutdown()


def _secret_file(path, value, mode=0o600):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (value + "\n").encode())
    os.close(fd)
    os.chmod(path, mode)
    return path


@pytest.fixture(scope="module")
def xnat(hub, tmp_path_factory):
    base = tmp_path_factory.mktemp("plugin")
    server = start_devxnat_with(base / "data", [
        "--jupyterhub-api-url", hub.api, "--jupyterhub-host-url", "http://hub.example.org",
        "--jupyterhub-token-file", str(_secret_file(base / "token", TOKEN)),
        "--jupyterhub-password-file", str(_secret_file(base / "svc", SERVICE_PW)),
    ])
    PASSWORDS["jupyterhub"] = SERVICE_PW
    for name, value in (("startPollingInterval", 0.05), ("stopPollingInterval", 0.05), ("startTimeout", 5),
                        ("stopTimeout", 5), ("maxNamedServers", 5)):
        r = server.request("POST", "/xapi/jupyterhub/preferences", "admin", json={name: value})
        assert r.status_code == 200, r.text
    yield server
    server.stop()


def start_request(user, xsi, item, label, project, name=None, **kw):
    key = name or f"ev-{uuid.uuid4().hex[:12]}"
    req = {"username": user, "servername": key, "xsiType": xsi, "itemId": item, "itemLabel": label,
           "projectId": project, "eventTrackingId": key, "computeEnvironmentConfigId": 1,
           "hardwareConfigId": 1}
    req.update(kw)
    return req


def wait_final(xnat, user, key, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = xnat.get(f"/xapi/event_tracking/{key}", user)
        if r.status_code == 200 and r.json()["succeeded"] is not None:
            return r.json()
        time.sleep(0.05)
    raise AssertionError(f"no final event for {key}")


def start(xnat, user, req):
    r = xnat.request("POST", f"/xapi/jupyterhub/users/{user}/server/{req['servername']}", user, json=req)
    assert r.status_code == 200 and r.content == b"", r.text
    return wait_final(xnat, user, req["eventTrackingId"])


def stop(xnat, user, name, timeout=60):
    key = f"stop-{uuid.uuid4().hex[:8]}"
    r = xnat.request("DELETE", f"/xapi/jupyterhub/users/{user}/server/{name}?eventTrackingId={key}", user)
    assert r.status_code == 200, r.text
    return wait_final(xnat, user, key, timeout)


def options(xnat, user, name, as_user="jupyterhub"):
    return xnat.get(f"/xapi/jupyterhub/users/{user}/server/{name}/user-options", as_user)


# -- the start sequence, call by call ------------------------------------------------

def test_project_start_replays_the_plugin_client_call_by_call(xnat, hub):
    with hub.lock:  # alice's first start on this hub, whichever of this module's tests ran before
        hub.users.pop("alice", None)
    hub.take()
    req = start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI")
    name = req["servername"]
    final = start(xnat, "alice", req)
    assert final["succeeded"] is True
    assert final["finalMessage"] == f"Jupyter notebook is available at: /user/alice/{name}/"
    entries = json.loads(final["payload"])["entryList"]
    # the hub lists the server (pending) at once, so no "Waiting for JupyterHub…" entry
    assert [e["message"] for e in entries] == [
        "Starting Jupyter notebook for user alice.", "Checking for existing Jupyter servers.",
        "Building container configuration.",
        "Saved container configuration. Sending start request to JupyterHub.",
        "JupyterHub is spawning container.", final["finalMessage"]]
    assert entries[0]["status"] == "InProgress" and entries[-1]["status"] == "Completed"

    calls = hub.take()
    seq = [(c["method"], c["path"]) for c in calls]
    base = "/hub/api"
    assert seq[:6] == [("GET", f"{base}/"), ("GET", f"{base}/info"), ("GET", f"{base}/users/alice"),
                       ("POST", f"{base}/users/alice"), ("GET", f"{base}/users/alice"),
                       ("POST", f"{base}/users/alice/servers/{name}")]
    assert all(s == ("GET", f"{base}/users/alice") for s in seq[6:]) and len(seq) >= 6 + READY_AFTER
    # the version check goes without the token; everything else carries it
    assert "authorization" not in calls[0]["headers"]
    assert all(c["headers"]["authorization"] == f"token {TOKEN}" for c in calls[1:])
    post = calls[5]
    assert post["headers"]["content-type"] == "application/json"
    uid = xnat.store().user("alice")["xdat_user_id"]
    assert post["body"].decode() == (
        '{"userId":%d,"servername":null,"xsiType":"xnat:projectData","itemId":"NEURO_MRI",'
        '"itemLabel":"NEURO_MRI","projectId":"NEURO_MRI","eventTrackingId":"%s",'
        '"dashboardConfigId":null,"task_template":null}' % (uid, name))

    # XNAT's view of the hub's server
    r = xnat.get(f"/xapi/jupyterhub/users/alice/server/{name}", "alice")
    assert r.status_code == 200 and r.json()["ready"] is True and r.json()["url"] == f"/user/alice/{name}/"
    assert xnat.get(f"/xapi/jupyterhub/users/alice/server/{name}", "bob").status_code == 403
    assert xnat.get("/xapi/jupyterhub/users/alice", "alice").json()["servers"][name]["ready"] is True

    # what the hub fetches back as the service account
    r = options(xnat, "alice", name)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert {k: doc[k] for k in ("userId", "servername", "xsiType", "itemId", "projectId", "eventTrackingId")} \
        == {"userId": uid, "servername": name, "xsiType": "xnat:projectData", "itemId": "NEURO_MRI",
            "projectId": "NEURO_MRI", "eventTrackingId": name}
    assert "itemLabel" not in doc and "dashboardConfigId" not in doc
    spec = doc["task_template"]["container_spec"]
    assert spec["image"] == "xnat/datascience-notebook:latest" and spec["command"] is None
    assert doc["task_template"]["resources"] == {"cpu_limit": 2.0, "cpu_reservation": 2.0, "mem_limit": "2G",
                                                 "mem_reservation": "2G", "generic_resources": {}}
    assert doc["task_template"]["placement"] == {"constraints": []}
    env = spec["env"]
    assert env["XNAT_DATA"] == "/data" and env["XNAT_XSI_TYPE"] == "xnat:projectData"
    assert env["XNAT_ITEM_ID"] == "NEURO_MRI" and env["JUPYTERHUB_ROOT_DIR"] == "/workspace/alice"
    assert env["XNAT_HOST"] == xnat.url
    # XNAT_USER/XNAT_PASS: a fresh alias token of alice
    who = requests.get(xnat.url + "/xapi/users/username", auth=(env["XNAT_USER"], env["XNAT_PASS"]), timeout=10)
    assert who.text == "alice"
    mounts = {m["target"]: m for m in spec["mounts"]}
    assert mounts["/workspace/alice"]["read_only"] is False
    assert mounts["/workspace/alice"]["source"] == str(xnat.data_dir.resolve() / "workspaces" / "users" / "alice")
    exp = mounts["/data/projects/NEURO_MRI/experiments"]
    assert exp == {"target": "/data/projects/NEURO_MRI/experiments", "type": "bind", "read_only": True,
                   "source": str(xnat.archive / "NEURO_MRI" / "arc001")}
    assert TOKEN not in xnat.log() and SERVICE_PW not in xnat.log() and env["XNAT_PASS"] not in xnat.log()

    # stop: DELETE with {"remove": true}, poll until gone, options removed
    hub.take()
    final = stop(xnat, "alice", name)
    assert (final["succeeded"], final["finalMessage"]) == (True, "Jupyter Server Stopped.")
    calls = hub.take()
    assert [(c["method"], c["path"]) for c in calls[:2]] == [
        ("GET", f"{base}/users/alice"), ("DELETE", f"{base}/users/alice/servers/{name}")]
    assert calls[1]["body"] == b'{"remove":true}'
    assert calls[1]["headers"]["content-type"] == "application/json"
    assert options(xnat, "alice", name).status_code == 404


def test_subject_and_experiment_starts_mount_only_the_item(xnat, hub):
    st = xnat.store()
    sub = st.subjects("NEURO_MRI")[0]
    exps = st.experiments(subject_id=sub["id"])
    other = [e for e in st.experiments(project="NEURO_MRI") if e["subject_id"] != sub["id"]]
    req = start_request("alice", "xnat:subjectData", sub["id"], sub["label"], "NEURO_MRI")
    assert start(xnat, "alice", req)["succeeded"] is True
    doc = options(xnat, "alice", req["servername"]).json()
    targets = {m["target"] for m in doc["task_template"]["container_spec"]["mounts"]}
    assert targets == {"/workspace/alice"} | {f"/data/projects/NEURO_MRI/experiments/{e['label']}" for e in exps}
    assert stop(xnat, "alice", req["servername"])["succeeded"] is True

    e = other[0] if other else exps[0]
    # the UI sends the literal xnat:experimentData for any experiment
    req = start_request("alice", "xnat:experimentData", e["id"], e["label"], "NEURO_MRI")
    assert start(xnat, "alice", req)["succeeded"] is True
    doc = options(xnat, "alice", req["servername"]).json()
    mounts = [m for m in doc["task_template"]["container_spec"]["mounts"] if m["read_only"]]
    assert mounts == [{"target": f"/data/projects/NEURO_MRI/experiments/{e['label']}", "type": "bind",
                       "read_only": True, "source": str(xnat.archive / "NEURO_MRI" / "arc001" / e["label"])}]
    assert doc["xsiType"] == "xnat:experimentData"
    # a specific session type is stored as the general one, as the plugin does
    assert stop(xnat, "alice", req["servername"])["succeeded"] is True
    req = start_request("alice", e["xsi_type"], e["id"], e["label"], "NEURO_MRI")
    assert start(xnat, "alice", req)["succeeded"] is True
    assert options(xnat, "alice", req["servername"]).json()["xsiType"] == "xnat:experimentData"
    hub.take()
    assert stop(xnat, "alice", req["servername"])["succeeded"] is True


def test_user_options_are_for_the_jupyterhub_role_and_admins_and_follow_access(xnat, hub):
    req = start_request("alice", "xnat:projectData", "SLEEP_EEG", "SLEEP_EEG", "SLEEP_EEG")
    assert start(xnat, "alice", req)["succeeded"] is True
    name = req["servername"]
    assert options(xnat, "alice", name, "jupyterhub").status_code == 200
    assert options(xnat, "alice", name, "admin").status_code == 200
    assert options(xnat, "alice", name, "alice").status_code == 403  # the user herself: no role
    assert options(xnat, "alice", name, "bob").status_code == 403
    assert xnat.get("/xapi/jupyterhub/users/alice/server/user-options", "jupyterhub").status_code == 404
    # alice loses SLEEP_EEG between XNAT's start and the hub's fetch: 404
    with xnat.membership("SLEEP_EEG", "alice", None):
        assert options(xnat, "alice", name, "jupyterhub").status_code == 404
    assert options(xnat, "alice", name, "jupyterhub").status_code == 200
    assert stop(xnat, "alice", name)["succeeded"] is True


def test_refusals_as_the_plugin(xnat, hub):
    hub.take()
    # carol may start Jupyter but cannot read NEURO_MRI: a failed event, no hub call
    st = xnat.store()
    st.add_role("carol", "Jupyter")
    try:
        req = start_request("carol", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI")
        final = start(xnat, "carol", req)
        assert (final["succeeded"], final["finalMessage"]) == (
            False, "Failed to launch Jupyter notebook. Permission denied to read xnat:projectData "
                   "NEURO_MRI in project NEURO_MRI")
        # an unknown hardware config
        req = start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI", hardwareConfigId=99)
        assert start(xnat, "alice", req)["finalMessage"] == (
            "Failed to launch Jupyter notebook server. The compute environment or hardware configuration "
            "is not available to the user.")
        assert hub.take() == []
    finally:
        st.remove_role("carol", "Jupyter")
    # dave has no Jupyter role (allUsersCanStartJupyter is false): 403
    req = start_request("dave", "xnat:projectData", "SLEEP_EEG", "SLEEP_EEG", "SLEEP_EEG")
    assert xnat.request("POST", f"/xapi/jupyterhub/users/dave/server/{req['servername']}", "dave",
                        json=req).status_code == 403
    # bob may not act for alice
    req = start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI")
    assert xnat.request("POST", f"/xapi/jupyterhub/users/alice/server/{req['servername']}", "bob",
                        json=req).status_code == 403
    # validateServerStartRequest's messages
    bad = {"username": "bob", "servername": "x", "eventTrackingId": "", "computeEnvironmentConfigId": 1}
    r = xnat.request("POST", "/xapi/jupyterhub/users/alice/server/x", "alice", json=bad)
    assert r.status_code == 400
    assert ("Usernames do not match, XSI type cannot be blank, Item ID cannot be blank, Item label cannot "
            "be blank, Project ID cannot be blank, Event tracking ID cannot be blank, hardware config id "
            "cannot be null") in r.text
    r = xnat.request("POST", "/xapi/jupyterhub/users/alice/server/other", "alice", json=req)
    assert r.status_code == 400 and "Server name in path does not match" in r.text
    assert xnat.request("DELETE", "/xapi/jupyterhub/users/alice/server/x", "alice").status_code == 400
    assert hub.take() == []
    # no such server: the plugin returns null (200, empty body); no such hub user: 404
    r = xnat.get("/xapi/jupyterhub/users/alice/server/none-here", "alice")
    assert r.status_code == 200 and r.content == b""
    r = xnat.get("/xapi/jupyterhub/users/dave", "dave")
    assert r.status_code == 404 and "No user with name dave" in r.text
    # event tracking data is the caller's own
    req = start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI", hardwareConfigId=99)
    start(xnat, "alice", req)
    assert xnat.get(f"/xapi/event_tracking/{req['eventTrackingId']}", "bob").status_code == 404


def test_wrong_hub_token_is_reported_as_the_plugin_does(xnat, hub):
    r = xnat.request("POST", "/xapi/jupyterhub/preferences", "admin", json={"jupyterHubToken": "wrong"})
    assert r.status_code == 200
    try:
        req = start_request("alice", "xnat:projectData", "NEURO_MRI", "NEURO_MRI", "NEURO_MRI")
        final = start(xnat, "alice", req)
        assert final["succeeded"] is False
        assert final["finalMessage"].startswith("Failed to connect to JupyterHub. Please check the following:")
        assert "(3) Confirm XNATs token" in final["finalMessage"]
    finally:
        xnat.request("POST", "/xapi/jupyterhub/preferences/jupyterHubToken", "admin", data=TOKEN,
                     headers={"Content-Type": "text/plain"})
    assert xnat.get("/xapi/jupyterhub/preferences/jupyterHubToken", "admin").json() == {"jupyterHubToken": TOKEN}


def test_preferences_and_configs(xnat):
    prefs = xnat.get("/xapi/jupyterhub/preferences", "admin").json()
    assert prefs["jupyterHubApiUrl"].endswith("/hub/api") and prefs["jupyterHubHostUrl"] == "http://hub.example.org"
    assert prefs["inactivityTimeout"] == "60" and prefs["maxServerLifetime"] == "48"
    assert xnat.get("/xapi/jupyterhub/preferences", "alice").json() == {"allUsersCanStartJupyter": "false"}
    assert xnat.get("/xapi/jupyterhub/preferences/allUsersCanStartJupyter", "alice").json() == \
        {"allUsersCanStartJupyter": False}
    assert xnat.get("/xapi/jupyterhub/preferences/inactivityTimeout", "alice").json() == {"inactivityTimeout": 60}
    assert xnat.get("/xapi/jupyterhub/preferences/jupyterHubToken", "alice").status_code == 403
    assert xnat.get("/xapi/jupyterhub/preferences/jupyterHubToken", "jupyterhub").json() == {"jupyterHubToken": TOKEN}
    assert xnat.get("/xapi/jupyterhub/preferences/nope", "admin").status_code == 404
    assert xnat.request("POST", "/xapi/jupyterhub/preferences", "alice", json={"maxNamedServers": 9}).status_code == 403
    # XNAT's compute services answer the configs to site admins only (HardwareConfigsApi)
    assert xnat.get("/xapi/hardware-configs", "alice").status_code == 403
    hw = xnat.get("/xapi/hardware-configs", "admin").json()
    assert [(h["hardware"]["name"], h["hardware"]["cpuLimit"], h["hardware"]["memoryLimit"]) for h in hw] == [
        ("Small", 2.0, "2G"), ("Medium", 2.0, "4G"), ("Large", 2.0, "8G"), ("XLarge", 4.0, "16G")]
    ce = xnat.get("/xapi/compute-environment-configs/available?type=JUPYTERHUB&project=NEURO_MRI", "alice").json()
    assert ce[0]["computeEnvironment"]["image"] == "xnat/datascience-notebook:latest"
    assert len(ce[0]["hardwareOptions"]["hardwareConfigs"]) == 4
    # the service account: JupyterHub role, enabled with the password from the file
    assert xnat.get("/xapi/users/jupyterhub/roles", "jupyterhub").json() == ["JupyterHub"]


def test_secret_files_must_be_private(tmp_path):
    token = _secret_file(tmp_path / "token", "t", mode=0o644)
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "devxnat", "--data", str(tmp_path / "d"), "--port", "0",
                        "--jupyterhub-token-file", str(token)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "chmod 600" in r.stderr


# -- the real hub: XNAT's UI calls on devxnat, devxnat's plugin calls on the hub ----------------

from tests.integration.test_xnat_plugin_hub import plugin_hub  # noqa: E402,F401 (fixture)


@pytest.mark.devxnat
def test_ui_start_through_devxnat_on_the_real_hub_is_scoped_to_the_item(plugin_hub, shared_devxnat):  # noqa: F811
    """bob (Jupyter role, never logged in to the hub) clicks "Start Jupyter" on an experiment:
    devxnat's plugin starts it on the real hub + CHP, the hub fetches the options back, the
    server's scope is exactly that experiment, and XNAT's stop removes it."""
    xnat = shared_devxnat
    before = xnat.get("/xapi/jupyterhub/preferences", "admin").json()
    prefs = {"jupyterHubApiUrl": f"{plugin_hub.url}/hub/api", "jupyterHubToken": plugin_hub.xnat_token,
             "startPollingInterval": 0.5, "stopPollingInterval": 0.5, "startTimeout": 120,
             "stopTimeout": 60, "maxNamedServers": 5}
    assert xnat.request("POST", "/xapi/jupyterhub/preferences", "admin", json=prefs).status_code == 200
    try:
        rows = xnat.get("/data/projects/CARDIO_ECG/experiments?columns=ID,label", "bob").json()["ResultSet"]["Result"]
        exp = rows[0]
        req = start_request("bob", "xnat:experimentData", exp["ID"], exp["label"], "CARDIO_ECG",
                            name=f"xnat-ui-{uuid.uuid4().hex[:6]}")
        name = req["servername"]
        r = xnat.request("POST", f"/xapi/jupyterhub/users/bob/server/{name}", "bob", json=req)
        assert r.status_code == 200, r.text
        final = wait_final(xnat, "bob", name, timeout=150)
        assert final["succeeded"] is True, final
        assert final["finalMessage"] == f"Jupyter notebook is available at: /user/bob/{name}/"
        assert xnat.get(f"/xapi/jupyterhub/users/bob/server/{name}", "bob").json()["ready"] is True
        from tests.fixtures.spawn import process_environ, server_process

        srv = plugin_hub.api("GET", "/users/bob").json()["servers"][name]
        assert all(v is None or isinstance(v, str) for v in srv["user_options"].values())
        env = process_environ(server_process("bob", srv))
        assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": {"CARDIO_ECG": {"experiments": [exp["ID"]]}}}
        stored = options(xnat, "bob", name, "admin").json()
        assert env["XNAT_USER"] == stored["task_template"]["container_spec"]["env"]["XNAT_USER"]

        final = stop(xnat, "bob", name)
        assert (final["succeeded"], final["finalMessage"]) == (True, "Jupyter Server Stopped.")
        assert name not in plugin_hub.api("GET", "/users/bob").json()["servers"]
    finally:
        xnat.request("POST", "/xapi/jupyterhub/preferences", "admin",
                     json={k: before[k] for k in prefs})
