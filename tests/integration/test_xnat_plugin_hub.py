"""XNAT's own "Start Jupyter" on this hub: the hub side of NrgXnat/xnat-jupyterhub-plugin.

Each test replays, call by call, what the plugin's Java client (``DefaultJupyterHubClient``,
driven by ``DefaultJupyterHubService.startServer``) sends to a real hub + CHP: ``GET {api}/``
(no token), ``GET {api}/info``, ``GET {api}/users/{u}`` (404 → ``POST {api}/users/{u}``), the
flat ``XnatUserOptions`` ``POST {api}/users/{u}/servers/{name}``, readiness polling of
``GET {api}/users/{u}`` (8 s in XNAT, shortened here), ``POST {api}/users/{u}/tokens`` with the
plugin's ``Token``, and ``DELETE …`` with ``{"remove": true}`` — always with
``Authorization: token …`` of the ``xnat`` service and ``Content-Type: application/json``.

What XNAT stores for the start (``storeUserOptions``: the hardware's task template, the
item's mounts, an alias token issued for the user) is put into devxnat's plugin state with
devxnat's own builders, and the hub reads it back through devxnat's
``/xapi/jupyterhub/users/{u}/server[/{name}]/user-options`` as an account with the
``JupyterHub`` role. No user here ever logs in to the hub.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import requests

from devxnat import compute_services as cs
from devxnat import plugin_configs as pc
from devxnat.plugin_state import PluginState
from tests.fixtures.plugin import PLUGIN_API, make_plugin_hub
from tests.fixtures.spawn import audit_events, process_environ, server_process, wait_ready

pytestmark = [pytest.mark.devxnat]

SERVICE_ACCOUNT = "hubsvc-test"   # an XNAT account with the plugin's JupyterHub role
POLL = 0.5                        # the plugin polls every startPollingInterval (8 s)

PROFILES = """
profiles:
  - slug: local-plugin
    display_name: This machine
    backend: local
    default: true
    resources: {{cpus: 2, memory: 8G}}
  - slug: slurm-plugin
    display_name: Slurm, 1 CPU
    backend: slurm
    resources: {{cpus: 1, memory: 1G, partition: interactive, walltime: "0:30:00"}}
offload:
  partition: secure
  staging_dir: {staging}
xnat_hardware:
  tiny-slurm: slurm-plugin
"""

TINY_SLURM = {"id": 91, "hardware": {
    "name": "Tiny (Slurm)", "cpuReservation": 1.0, "cpuLimit": 1.0, "memoryReservation": "1G",
    "memoryLimit": "1G", "constraints": [{"key": "node.role", "operator": "IN", "values": ["worker"]}],
    "environmentVariables": [{"key": "XNAT_HPC_HARDWARE", "value": "tiny-slurm"}], "genericResources": []}}


@pytest.fixture(scope="module")
def plugin_hub(shared_devxnat, unix_users, staging, tmp_path_factory, slurm):
    hub = make_plugin_hub(tmp_path_factory.mktemp("plugin-hub"), shared_devxnat, SERVICE_ACCOUNT,
                          staging=staging, profiles_text=PROFILES,
                          extra="c.UnixAccounts.create_missing = True\n")  # one machine: the hub's accounts
    yield hub
    hub.stop()


class PluginClient:
    """The requests ``DefaultJupyterHubClient`` makes, with its headers and bodies."""

    def __init__(self, hub):
        self.api = f"{hub.url}{PLUGIN_API}"  # XNAT's "JupyterHub API URL" (docs/admin.md)
        self.auth = {"Authorization": f"token {hub.xnat_token}"}
        self.json = {**self.auth, "Content-Type": "application/json"}

    def _server(self, user: str, name: str) -> str:
        return f"{self.api}/users/{user}/server" if not name else f"{self.api}/users/{user}/servers/{name}"

    def version(self):
        return requests.get(f"{self.api}/", timeout=30)

    def info(self):
        return requests.get(f"{self.api}/info", headers=self.auth, timeout=30)

    def get_user(self, user: str):
        return requests.get(f"{self.api}/users/{user}", headers=self.auth, timeout=30)

    def users(self):
        return requests.get(f"{self.api}/users", headers=self.auth, timeout=30)

    def create_user(self, user: str):
        return requests.post(f"{self.api}/users/{user}", headers=self.auth, timeout=30)

    def start(self, user: str, name: str, body: dict):
        return requests.post(self._server(user, name), data=json.dumps(body), headers=self.json, timeout=90)

    def stop(self, user: str, name: str):
        return requests.delete(self._server(user, name), data=json.dumps({"remove": True}),
                               headers=self.json, timeout=60)

    def create_token(self, user: str):
        token = {"token": None, "id": None, "user": None, "kind": None, "service": None,
                 "scopes": [f"access:servers!user={user}"], "note": "xnat", "oauth_client": None,
                 "session_id": None, "expires_at": None, "expires_in": 3600, "created": None,
                 "last_activity": None}
        return requests.post(f"{self.api}/users/{user}/tokens", data=json.dumps(token), headers=self.json,
                             timeout=30)


def seed_start(devxnat, user: str, server: str, *, xsi_type: str, item: str, project: str,
               hardware: dict | None = None, token_of: str | None = None) -> dict:
    """What XNAT's ``storeUserOptions`` stores before it POSTs to the hub; the hub's start body."""
    st = devxnat.store()
    try:
        uid = st.user(user)["xdat_user_id"]
        if xsi_type == pc.PROJECT:
            data, label = pc.data_paths(devxnat.archive, "project", item), item
        elif xsi_type == pc.SUBJECT:
            sub = st.subject(project, item)
            labels = [e["label"] for e in st.experiments(subject_id=sub["id"])]
            data = pc.data_paths(devxnat.archive, "subject", project, subject_label=sub["label"],
                                 experiment_labels=labels)
            label = sub["label"]
        else:
            exp = st.experiment(item, project)
            data = pc.data_paths(devxnat.archive, "experiment", project, experiment_labels=[exp["label"]])
            label = exp["label"]
        alias, secret = devxnat.token(token_of or user)
        general = pc.general_xsi_type(xsi_type)
        template = pc.task_template(cs.COMPUTE_ENVIRONMENT_CONFIGS[0], hardware or cs.HARDWARE_CONFIGS[0])
        key = f"{time.time_ns()}"
        doc = pc.user_options(user_id=uid, login=user, servername=server, xsi_type=general, item_id=item,
                              project_id=project, event_tracking_id=key, template=template,
                              env=pc.default_env(user, general, item, devxnat.url, alias, secret),
                              workspace_source=f"/data/xnat/workspaces/users/{user}", data=data)
        PluginState(st).store_options(uid, server, doc)
    finally:
        st.close()
    return pc.hub_start_body(user_id=uid, xsi_type=xsi_type, item_id=item, item_label=label,
                             project_id=project, event_tracking_id=key)


def experiment_of(devxnat, user: str, project: str) -> dict:
    rows = devxnat.get(f"/data/projects/{project}/experiments?format=json&columns=ID,label,subject_ID",
                       user).json()["ResultSet"]["Result"]
    return rows[0]


def assert_flat(users: list[dict]) -> None:
    for model in users:
        for server in model.get("servers", {}).values():
            for key, value in (server.get("user_options") or {}).items():
                assert value is None or isinstance(value, str), (model["name"], key, value)


def start_as_the_plugin(hub, client: PluginClient, user: str, server: str, body: dict) -> dict:
    """``startServer``: hub up, user there (created when not), POST, poll until ready."""
    assert client.version().status_code == 200 and "version" in client.version().json()
    assert client.info().status_code == 200, client.info().text
    r = client.get_user(user)
    if r.status_code == 404:
        r = client.create_user(user)
        assert r.status_code == 201, r.text
    assert r.status_code in (200, 201), r.text
    r = client.start(user, server, body)
    assert r.status_code in (201, 202), r.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the plugin's polling, by the exact name it made
        srv = client.get_user(user).json()["servers"].get(server)
        assert srv is not None, f"server {user}/{server} went away:\n{hub.log()[-3000:]}"
        if srv.get("ready"):
            return srv
        time.sleep(POLL)
    raise AssertionError(f"server {user}/{server} not ready:\n{hub.log()[-3000:]}")


def stop_as_the_plugin(client: PluginClient, user: str, server: str) -> None:
    r = client.stop(user, server)
    if not server:
        # JupyterHub itself refuses to *remove* a default server (any hub, not only this one): the
        # plugin's stop of a default server fails; stopping without "remove" works
        assert r.status_code == 400 and "Cannot delete the default server" in r.text, r.text
        r = requests.delete(client._server(user, server), headers=client.auth, timeout=60)
    assert r.status_code in (202, 204), r.text
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server not in client.get_user(user).json()["servers"]:
            return
        time.sleep(POLL)
    raise AssertionError(f"{user}/{server} did not stop")


@pytest.mark.parametrize("kind", ["project", "subject", "experiment"])
def test_start_jupyter_replayed_gives_a_server_scoped_to_the_item(plugin_hub, shared_devxnat, kind):
    """A user who never logged in to the hub; the XNAT-issued token becomes their credential."""
    user, server = "bob", ("" if kind == "project" else f"xnat-{kind}")  # "" = POST …/users/bob/server
    exp = experiment_of(shared_devxnat, user, "CARDIO_ECG")
    item, xsi_type, scope = {
        "project": ("CARDIO_ECG", pc.PROJECT, {"CARDIO_ECG": {}}),
        "subject": (exp["subject_ID"], pc.SUBJECT, {"CARDIO_ECG": {"subjects": [exp["subject_ID"]]}}),
        "experiment": (exp["ID"], "xnat:ecgSessionData", {"CARDIO_ECG": {"experiments": [exp["ID"]]}}),
    }[kind]
    st = shared_devxnat.store()
    try:
        sub = st.subject_by_id(exp["subject_ID"])
        labels = sorted(e["label"] for e in (st.experiments(project="CARDIO_ECG") if kind == "project" else
                                             st.experiments(subject_id=exp["subject_ID"])
                                             if kind == "subject" else [st.experiment(exp["ID"])]))
    finally:
        st.close()
    body = seed_start(shared_devxnat, user, server, xsi_type=xsi_type, item=item, project="CARDIO_ECG")
    assert plugin_hub.api("GET", "/users/bob").status_code in (200, 404)
    client = PluginClient(plugin_hub)
    srv = start_as_the_plugin(plugin_hub, client, user, server, body)
    try:
        # the plugin's keys, flat, with XNAT's names of the start (the plugin API adds them)
        assert srv["user_options"] == {**{k: (None if v is None else str(v)) for k, v in body.items()},
                                       "servername": server or None, "xnatLogin": user}
        pid = server_process(user, srv)
        env = process_environ(pid)
        assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": scope}
        # the plugin's data layout: notebooks written for the plugin find their paths, read-only
        root = Path(f"/proc/{pid}/root")
        assert env["XNAT_DATA"] == "/data" and os.listdir(root / "data/projects") == ["CARDIO_ECG"]
        experiments = root / "data/projects/CARDIO_ECG/experiments"
        assert sorted(os.listdir(experiments)) == labels
        assert os.access(experiments / labels[0], os.R_OK) and (root / f"workspace/{user}").is_dir()
        data_mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                       if line.split()[4].startswith("/data/projects/")]
        assert data_mounts and all("ro" in fields[5].split(",") for fields in data_mounts)
        # the general type, as the plugin stores it (DefaultUserOptionsService), not the concrete one
        assert env["XNAT_ITEM_ID"] == item and env["XNAT_XSI_TYPE"] == pc.general_xsi_type(xsi_type)
        assert env["XNAT_HPC_PROFILE"] == "local-plugin"
        # the plugin's workspace: the notebook's root and config, read-write
        assert env["JUPYTERHUB_ROOT_DIR"] == env["XDG_CONFIG_HOME"] == f"/workspace/{user}"
        assert env["XNAT_HPC_WORKSPACE"] == f"/workspace/{user}/xnat-hpc"
        workspace = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
                     if line.split()[4] == f"/workspace/{user}"]
        assert workspace and "rw" in workspace[0][5].split(",")
        # the server's XNAT credential is the alias token XNAT issued for this start, and it works
        stored = PluginState(shared_devxnat.store()).options(
            shared_devxnat.store().user(user)["xdat_user_id"], server)
        assert env["XNAT_USER"] == stored["task_template"]["container_spec"]["env"]["XNAT_USER"]
        who = requests.get(f"{shared_devxnat.url}/xapi/users/username",
                           auth=(env["XNAT_USER"], env["XNAT_PASS"]), timeout=30)
        assert who.text.strip() == user
        assert plugin_hub.api("GET", "/users/bob").json()["auth_state"] is None  # nothing stored
        r = client.create_token(user)
        assert r.status_code in (200, 201), r.text
        assert f"access:servers!user={user}" in r.json()["scopes"] and r.json()["token"]
        assert_flat(client.users().json())
        allowed = [e for e in audit_events(plugin_hub) if e["user"] == user and e["outcome"] == "allowed"]
        assert allowed and "CARDIO_ECG" in allowed[-1]["detail"]
    finally:
        stop_as_the_plugin(client, user, server)


def test_hardware_mapped_to_a_slurm_profile_starts_there(plugin_hub, shared_devxnat):
    user, server = "alice", "xnat-slurm"
    exp = experiment_of(shared_devxnat, user, "NEURO_MRI")
    body = seed_start(shared_devxnat, user, server, xsi_type="xnat:experimentData", item=exp["ID"],
                      project="NEURO_MRI", hardware=TINY_SLURM)
    client = PluginClient(plugin_hub)
    srv = start_as_the_plugin(plugin_hub, client, user, server, body)
    try:
        assert srv["ready"]
        full = plugin_hub.api("GET", f"/users/{user}").json()["servers"][server]  # with state
        env = process_environ(server_process(user, full))
        assert env["XNAT_HPC_PROFILE"] == "slurm-plugin" and env["SLURM_JOB_ID"] == str(full["state"]["child"]["job_id"])
        assert json.loads(env["XNAT_HPC_SCOPE"]) == {"projects": {"NEURO_MRI": {"experiments": [exp["ID"]]}}}
        # no archive on the nodes, no /workspace there: the server reads through REST, in its home
        assert env["XNAT_XSI_TYPE"] == "xnat:experimentData"
        assert not {"JUPYTERHUB_ROOT_DIR", "XDG_CONFIG_HOME", "XNAT_DATA"} & set(env)
        log = plugin_hub.log()
        assert "placement constraints node.role==worker ignored" in log
    finally:
        stop_as_the_plugin(client, user, server)


def _failed_start(plugin_hub, client, user, server, body) -> requests.Response:
    if client.get_user(user).status_code == 404:
        client.create_user(user)
    r = client.start(user, server, body)
    assert r.status_code >= 400, r.text
    # the plugin's polling finds no server (it reports the start as failed)
    assert server not in client.get_user(user).json()["servers"]
    return r


def test_hardware_beyond_the_profile_is_refused_with_a_message_xnat_shows(plugin_hub, shared_devxnat):
    user, server = "bob", "xnat-xlarge"
    exp = experiment_of(shared_devxnat, user, "CARDIO_ECG")
    xlarge = next(h for h in cs.HARDWARE_CONFIGS if h["hardware"]["name"] == "XLarge")
    body = seed_start(shared_devxnat, user, server, xsi_type=pc.EXPERIMENT, item=exp["ID"],
                      project="CARDIO_ECG", hardware=xlarge)
    r = _failed_start(plugin_hub, PluginClient(plugin_hub), user, server, body)
    assert r.status_code == 403
    message = r.json()["message"]
    assert "asks for 4 CPUs" in message and "allows at most 2" in message
    assert "choose a smaller hardware configuration in XNAT" in message
    denied = [e for e in audit_events(plugin_hub) if e["user"] == user and e["outcome"] == "denied"]
    assert any("asks for 4 CPUs" in e["detail"] for e in denied)


def test_user_who_lost_access_after_xnats_start_is_refused_and_audited(plugin_hub, shared_devxnat):
    user, server = "bob", "xnat-revoked"
    exp = experiment_of(shared_devxnat, user, "CARDIO_ECG")
    body = seed_start(shared_devxnat, user, server, xsi_type=pc.EXPERIMENT, item=exp["ID"], project="CARDIO_ECG")
    with shared_devxnat.membership("CARDIO_ECG", user, None):
        r = _failed_start(plugin_hub, PluginClient(plugin_hub), user, server, body)
    assert r.status_code in (403, 404), r.text
    assert "start it again from XNAT" in r.json()["message"] or "may not read" in r.json()["message"]
    denied = [e for e in audit_events(plugin_hub) if e["user"] == user and e["outcome"] == "denied"]
    assert any("CARDIO_ECG" in json.dumps(e) for e in denied)


def test_a_start_xnat_did_not_store_is_refused(plugin_hub, shared_devxnat):
    body = {"userId": 1, "servername": None, "xsiType": pc.PROJECT, "itemId": "CARDIO_ECG", "itemLabel": "x",
            "projectId": "CARDIO_ECG", "eventTrackingId": "1", "dashboardConfigId": None, "task_template": None}
    r = _failed_start(plugin_hub, PluginClient(plugin_hub), "carol", "never-stored", body)
    assert r.status_code == 404 and "start it again from XNAT" in r.json()["message"]


def test_service_without_the_plugin_body_cannot_spawn_for_a_user_without_login(plugin_hub):
    client = PluginClient(plugin_hub)
    if client.get_user("dave").status_code == 404:
        client.create_user("dave")
    r = client.start("dave", "rest", {"projects": ["NEURO_MRI"]})
    assert r.status_code in (401, 403), r.text
    assert "rest" not in client.get_user("dave").json()["servers"]


def test_user_options_are_flat_after_form_rest_and_xnat_starts(plugin_hub, shared_devxnat):
    s, _ = plugin_hub.login("alice", "alice-demo")
    r = s.post(f"{plugin_hub.url}/hub/spawn/alice/form", data={"profile": "local-plugin", "project": ["NEURO_MRI",
               "SLEEP_EEG"], "_xsrf": s.cookies.get("_xsrf", path="/hub/")}, timeout=90)
    assert r.status_code == 200, r.text[-2000:]
    r = plugin_hub.api("POST", "/users/alice/servers/rest",
                       json={"profile": "local-plugin", "projects": {"SLEEP_EEG": {"experiments": ["nope"]}}})
    r2 = plugin_hub.api("POST", "/users/alice/servers/rest2", json={"projects": ["SLEEP_EEG"]})
    assert r2.status_code in (201, 202), r2.text
    try:
        wait_ready(plugin_hub, "alice", "form")
        wait_ready(plugin_hub, "alice", "rest2")
        model = plugin_hub.api("GET", "/users/alice").json()
        assert model["servers"]["form"]["user_options"] == {"profile": "local-plugin",
                                                            "projects": "NEURO_MRI,SLEEP_EEG"}
        assert model["servers"]["rest2"]["user_options"] == {"profile": None, "projects": "SLEEP_EEG"}
        assert_flat(plugin_hub.api("GET", "/users").json())
    finally:
        for name in ("form", "rest2"):
            plugin_hub.api("DELETE", f"/users/alice/servers/{name}")
    assert r.status_code == 404  # narrowed to nothing: refused
    # what the hub's database keeps (and offers as the next start's defaults) is the flat form too
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        stopped = plugin_hub.api("GET", "/users/alice?include_stopped_servers=1").json()["servers"]
        if not stopped["rest2"]["ready"] and not stopped["rest2"]["pending"]:
            break
        time.sleep(0.5)
    assert stopped["rest2"]["user_options"] == {"profile": None, "projects": "SLEEP_EEG"}
    assert stopped["form"]["user_options"] == {"profile": "local-plugin", "projects": "NEURO_MRI,SLEEP_EEG"}


def test_password_file_others_can_read_is_refused(plugin_hub, shared_devxnat):
    path = Path(plugin_hub.log_path).parent / "xnat-service-password"
    os.chmod(path, 0o644)
    try:
        exp = experiment_of(shared_devxnat, "bob", "CARDIO_ECG")
        body = seed_start(shared_devxnat, "bob", "xnat-perm", xsi_type=pc.EXPERIMENT, item=exp["ID"],
                          project="CARDIO_ECG")
        r = _failed_start(plugin_hub, PluginClient(plugin_hub), "bob", "xnat-perm", body)
        assert r.status_code == 403 and "chmod 600" in r.json()["message"]
    finally:
        os.chmod(path, 0o600)


def test_a_start_carrying_another_users_token_is_refused(plugin_hub, shared_devxnat):
    """XNAT's stored options say bob, but the token in them is alice's: never alice's rights for bob."""
    exp = experiment_of(shared_devxnat, "bob", "CARDIO_ECG")
    body = seed_start(shared_devxnat, "bob", "xnat-alien", xsi_type=pc.EXPERIMENT, item=exp["ID"],
                      project="CARDIO_ECG", token_of="alice")
    r = _failed_start(plugin_hub, PluginClient(plugin_hub), "bob", "xnat-alien", body)
    assert r.status_code == 403 and "belongs to another XNAT account" in r.json()["message"]
    denied = [e for e in audit_events(plugin_hub) if e["user"] == "bob" and e["outcome"] == "denied"]
    assert any("belongs to another XNAT account" in e["detail"] for e in denied)
