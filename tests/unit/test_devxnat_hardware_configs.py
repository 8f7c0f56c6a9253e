"""devxnat's compute services (hardware and compute-environment configs) as XNAT's
``org.nrg.xnat.compute`` has them (NrgXnat/xnat-jupyterhub-plugin 1.x: ``HardwareConfigsApi``,
``ComputeEnvironmentConfigsApi``, ``DefaultHardwareConfigService``,
``DefaultComputeEnvironmentConfigService``, ``JobTemplateService``): the pure binding,
validation and shapes, the store, and the handlers in process (no devxnat subprocess)."""

from __future__ import annotations

import json

import pytest
from tornado.httpclient import AsyncHTTPClient
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from devxnat import jupyterhub_service as jhs
from devxnat import compute_services as cs
from devxnat.access import Access
from devxnat.app import make_app
from devxnat.plugin_state import ComputeConfigs, PluginState
from devxnat.store import Store

SCOPES = {s: {"scope": s, "enabled": True, "ids": []} for s in ("Site", "Project", "User")}


def hardware_body(name="Tiny (Slurm)", **hw) -> dict:
    return {"hardware": {"name": name, "cpuLimit": 1, "cpuReservation": 1.0, "memoryLimit": "1G",
                         "memoryReservation": "1G",
                         "environmentVariables": [{"key": "XNAT_HPC_HARDWARE", "value": "tiny-slurm"}], **hw},
            "scopes": json.loads(json.dumps(SCOPES))}


def env_body(name="Other image", *, allow_all=True, hardware=()) -> dict:
    return {"configTypes": ["JUPYTERHUB"],
            "computeEnvironment": {"name": name, "image": "quay.io/x/y:1", "environmentVariables": [],
                                   "mounts": []},
            "scopes": json.loads(json.dumps(SCOPES)),
            "hardwareOptions": {"allowAllHardware": allow_all, "hardwareConfigs": [{"id": h} for h in hardware]}}


@pytest.fixture
def store(tmp_path):
    st = Store(tmp_path / "db.sqlite3")
    yield st
    st.close()


@pytest.fixture
def compute(store) -> ComputeConfigs:
    return PluginState(store).compute


# -- binding and validation (pure) ------------------------------------------------------------

def test_validation_messages_are_the_services():
    assert cs.hardware_config_errors(cs.read_hardware_config({})) == [
        "Hardware cannot be null", "Hardware scopes cannot be null or empty"]
    cfg = cs.read_hardware_config({"hardware": {"name": "  "}, "scopes": {"Site": SCOPES["Site"]}})
    assert cs.hardware_config_errors(cfg) == [
        "Hardware name cannot be blank", "Hardware scopes must contain a user scope",
        "Hardware scopes must contain a project scope"]
    assert cs.hardware_config_errors(cs.read_hardware_config(hardware_body())) == []
    assert cs.compute_environment_config_errors(cs.read_compute_environment_config({})) == [
        "ComputeEnvironmentConfig must have at least one config type", "ComputeEnvironment cannot be null",
        "ComputeEnvironmentConfig must have at least one scope", "ComputeEnvironmentHardwareOptions cannot be null"]
    bad = env_body()
    bad["computeEnvironment"]["image"] = ""
    bad["hardwareOptions"]["hardwareConfigs"] = None
    del bad["scopes"]["User"]
    assert cs.compute_environment_config_errors(cs.read_compute_environment_config(bad)) == [
        "ComputeEnvironment image cannot be blank", "ComputeEnvironmentConfig must have a user scope",
        "ComputeEnvironmentHardwareOptions hardware configs cannot be null"]


@pytest.mark.parametrize("body, names", [
    (None, "Required request body is missing"),
    ([], "the hardware config must be a JSON object, not an array"),
    ({"hardware": {"name": "x", "cpuLimit": "lots"}}, "hardware.cpuLimit must be a number (e.g. 2.0), not 'lots'"),
    ({"hardware": {"name": "x", "cpuLimit": True}}, "hardware.cpuLimit must be a number"),
    ({"hardware": {"name": {"a": 1}}}, "hardware.name must be a string, not an object"),
    ({"hardware": {"constraints": [{"key": "k", "operator": "MAYBE"}]}},
     "hardware.constraints[0].operator: 'MAYBE' is not one of IN, NOT_IN"),
    ({"hardware": {"environmentVariables": {"A": "b"}}}, "hardware.environmentVariables must be a JSON array"),
    ({"scopes": {"Galaxy": {}}}, "scopes: 'Galaxy' is not a scope (one of Site, Project, User, DataType)"),
    ({"scopes": {"Site": {"enabled": "yes"}}}, "scopes.Site.enabled must be true or false, not 'yes'"),
    ({"id": "seven"}, "id must be an integer id, not 'seven'"),
])
def test_unreadable_bodies_name_the_field(body, names):
    with pytest.raises(cs.UnreadableConfig) as e:
        cs.read_hardware_config(body)
    assert names in str(e.value)


def test_jackson_coercions_and_the_stored_shape():
    body = hardware_body(cpuLimit="2", memoryLimit=4, constraints=[
        {"key": "node.role", "values": ["b", "a", "b"], "operator": "IN"}], genericResources=None)
    body["id"] = "91"  # ignored on create: the store gives the id
    body["scopes"]["Project"] = {"scope": "Project", "enabled": False, "ids": ["P2", "P1", "P2"]}
    body["extra"] = "unknown properties are ignored"
    cfg = cs.read_hardware_config(body)
    assert cfg["id"] == 91
    model = cs.hardware_config_model(cfg, 5)
    assert model == {"id": 5, "hardware": {
        "name": "Tiny (Slurm)", "cpuLimit": 2.0, "cpuReservation": 1.0, "memoryLimit": "4",
        "memoryReservation": "1G", "constraints": [{"key": "node.role", "values": ["a", "b"], "operator": "IN"}],
        "environmentVariables": [{"key": "XNAT_HPC_HARDWARE", "value": "tiny-slurm"}], "genericResources": []},
        "scopes": {"Site": SCOPES["Site"], "Project": {"scope": "Project", "enabled": False, "ids": ["P1", "P2"]},
                   "User": SCOPES["User"]}}
    # Hardware's field order (Lombok @Data, Jackson): as XNAT writes it
    assert list(model["hardware"]) == ["name", "cpuLimit", "cpuReservation", "memoryLimit", "memoryReservation",
                                       "constraints", "environmentVariables", "genericResources"]
    # nulls the entities dereference: XNAT fails (500); the message says what to send
    with pytest.raises(cs.InvalidConfig, match="needs an operator: one of IN, NOT_IN"):
        cs.hardware_config_model(cs.read_hardware_config(hardware_body(constraints=[{"key": "k"}])), 1)
    no_scope = hardware_body()
    no_scope["scopes"]["Site"] = {"enabled": True}
    with pytest.raises(cs.InvalidConfig, match='Hardware scope Site needs "scope"'):
        cs.hardware_config_model(cs.read_hardware_config(no_scope), 1)


def test_access_scopes_and_availability_are_xnats():
    hw = cs.hardware_config_model(cs.read_hardware_config(hardware_body()), 5)
    hw["scopes"]["Project"] = {"scope": "Project", "enabled": False, "ids": ["CARDIO_ECG"]}
    env = cs.compute_environment_view(cs.compute_environment_config_model(
        cs.read_compute_environment_config(env_body(allow_all=False)), 2), [hw])
    ecg, mri = {"Site": "XNAT", "Project": "CARDIO_ECG", "User": "bob"}, {"Project": "NEURO_MRI"}
    assert cs.enabled_for(hw["scopes"], ecg) and not cs.enabled_for(hw["scopes"], mri)
    assert not cs.enabled_for(hw["scopes"], {})  # no project in the execution scope: not listed
    assert cs.is_available(2, 5, [env], [hw], ecg) and not cs.is_available(2, 5, [env], [hw], mri)
    other = cs.hardware_config_model(cs.read_hardware_config(hardware_body("Other")), 6)
    assert not cs.is_available(2, 6, [env], [hw, other], ecg)  # not allowed by the environment
    env["hardwareOptions"]["allowAllHardware"] = True
    assert cs.is_available(2, 6, [env], [hw, other], ecg)  # isAvailable: allowAllHardware is enough
    assert [h["id"] for h in cs.available_compute_environments(
        [env], config_type="JUPYTERHUB", execution_scope=mri)[0]["hardwareOptions"]["hardwareConfigs"]] == []
    assert cs.available_compute_environments([env], config_type="GENERAL") == []
    assert cs.execution_scope({"site": "XNAT", "prj": "P", "user": "u", "datatype": "xnat:mrSessionData",
                               "project": "ignored"}) == {
        "Site": "XNAT", "Project": "P", "User": "u", "DataType": "xnat:mrSessionData"}
    with pytest.raises(cs.InvalidConfig, match="ConfigType.FOO .one of JUPYTERHUB"):
        cs.config_type("FOO")
    assert cs.config_type("", blank_is_none=True) is None


# -- the store ----------------------------------------------------------------------------------

def test_the_initializers_defaults_are_seeded_once(compute, store):
    assert [(h["id"], h["hardware"]["name"], h["hardware"]["cpuLimit"], h["hardware"]["memoryLimit"])
            for h in compute.hardware_list()] == [(1, "Small", 2.0, "2G"), (2, "Medium", 2.0, "4G"),
                                                  (3, "Large", 2.0, "8G"), (4, "XLarge", 4.0, "16G")]
    assert compute.hardware(1) == cs.HARDWARE_CONFIGS[0]
    env = compute.environment(1)
    assert env["computeEnvironment"] == cs.COMPUTE_ENVIRONMENT_CONFIGS[0]["computeEnvironment"]
    # each default hardware joined the environment that allows all hardware (XNAT's create)
    assert env["hardwareOptions"] == {"allowAllHardware": True, "hardwareConfigs": cs.HARDWARE_CONFIGS}
    PluginState(store)
    assert len(compute.hardware_list()) == 4 and len(compute.environments()) == 1


def test_create_update_delete_hardware(compute):
    hw = compute.create_hardware(cs.read_hardware_config(hardware_body()))
    assert hw["id"] == 5 and hw["hardware"]["environmentVariables"] == [
        {"key": "XNAT_HPC_HARDWARE", "value": "tiny-slurm"}]
    assert [h["id"] for h in compute.environment(1)["hardwareOptions"]["hardwareConfigs"]] == [1, 2, 3, 4, 5]
    with pytest.raises(cs.InvalidConfig, match="A hardware config named 'Tiny \\(Slurm\\)' already exists"):
        compute.create_hardware(cs.read_hardware_config(hardware_body()))
    with pytest.raises(cs.InvalidConfig, match="^Hardware config is invalid: Hardware name cannot be blank$"):
        compute.create_hardware(cs.read_hardware_config(hardware_body(name="")))

    body = hardware_body(name="Tiny", cpuLimit=0.5)
    body["id"] = 5
    body["scopes"]["DataType"] = {"scope": "DataType", "enabled": True, "ids": []}
    body["scopes"]["User"]["enabled"] = False
    updated = compute.update_hardware(cs.read_hardware_config(body))
    assert updated["hardware"]["name"] == "Tiny" and updated["hardware"]["cpuLimit"] == 0.5
    # update() updates the scopes the config has and adds none
    assert sorted(updated["scopes"]) == ["Project", "Site", "User"] and not updated["scopes"]["User"]["enabled"]
    with pytest.raises(cs.InvalidConfig, match="named 'Small' already exists"):
        compute.update_hardware(cs.read_hardware_config(dict(hardware_body(name="Small"), id=5)))
    with pytest.raises(cs.ConfigNotFound, match="No hardware config found for ID 77"):
        compute.update_hardware(cs.read_hardware_config(dict(hardware_body(), id=77)))
    with pytest.raises(cs.InvalidConfig, match="Hardware config id cannot be null"):
        compute.update_hardware(cs.read_hardware_config(hardware_body()))

    compute.delete_hardware(5)
    assert compute.hardware(5) is None
    assert [h["id"] for h in compute.environment(1)["hardwareOptions"]["hardwareConfigs"]] == [1, 2, 3, 4]
    with pytest.raises(cs.ConfigNotFound, match="No hardware config found with id 5"):
        compute.delete_hardware(5)
    assert compute.create_hardware(cs.read_hardware_config(hardware_body()))["id"] == 6  # ids not reused


def test_environments_allow_all_or_the_listed_hardware(compute):
    env = compute.create_environment(cs.read_compute_environment_config(env_body(allow_all=False, hardware=[2, 99])))
    assert env["id"] == 2 and [h["id"] for h in env["hardwareOptions"]["hardwareConfigs"]] == [2]
    hw = compute.create_hardware(cs.read_hardware_config(hardware_body()))
    assert [h["id"] for h in compute.environment(2)["hardwareOptions"]["hardwareConfigs"]] == [2]
    scope = {"Site": "XNAT", "Project": "P", "User": "u"}
    assert not compute.is_available(2, hw["id"], scope) and compute.is_available(2, 2, scope)
    with pytest.raises(cs.InvalidConfig, match="JobTemplate resolution failed for computeEnvironmentConfigId 2"):
        compute.job_template(2, hw["id"], scope)
    updated = compute.update_environment(cs.read_compute_environment_config(dict(env_body(), id=2)))
    assert [h["id"] for h in updated["hardwareOptions"]["hardwareConfigs"]] == [1, 2, 3, 4, hw["id"]]
    assert compute.job_template(2, hw["id"], scope)[1] == hw
    with pytest.raises(cs.InvalidConfig, match=r"^ComputeEnvironmentConfig is invalid: \[ComputeEnvironment name"):
        compute.create_environment(cs.read_compute_environment_config(env_body(name="")))
    assert [e["id"] for e in compute.environments("JUPYTERHUB")] == [1, 2] and compute.environments("GENERAL") == []
    compute.delete_environment(2)
    with pytest.raises(cs.ConfigNotFound):
        compute.delete_environment(2)


def test_the_defaults_come_back_when_nothing_is_left(compute, store):
    for h in compute.hardware_list():
        compute.delete_hardware(h["id"])
    assert compute.hardware_list() == []
    PluginState(store)  # a JUPYTERHUB environment is left: the initializer skips
    assert compute.hardware_list() == []
    compute.delete_environment(1)
    PluginState(store)
    assert [h["id"] for h in compute.hardware_list()] == [5, 6, 7, 8]


# -- the plugin's start reads them ----------------------------------------------------------------

@pytest.fixture
def plugin(tmp_path, store):
    store.add_user("alice", "pw")
    store.add_project("P", "P")
    store.set_member("P", "alice", "Members")
    state = PluginState(store, defaults={"workspacePath": str(tmp_path / "ws")})
    (tmp_path / "archive").mkdir()
    return {"store": store, "plugin_state": state, "archive": tmp_path / "archive"}


def _req(hardware_id: int, key: str = "k1") -> dict:
    return {"username": "alice", "servername": "s", "xsiType": "xnat:projectData", "itemId": "P",
            "itemLabel": "P", "projectId": "P", "eventTrackingId": key, "computeEnvironmentConfigId": 1,
            "hardwareConfigId": hardware_id}


async def test_store_user_options_builds_the_template_from_the_stored_hardware(plugin):
    state, store = plugin["plugin_state"], plugin["store"]
    hw = state.compute.create_hardware(cs.read_hardware_config(hardware_body(constraints=[
        {"key": "node.role", "values": ["worker"], "operator": "IN"}])))
    uid = store.user("alice")["xdat_user_id"]
    await jhs.JupyterHubService(plugin).store_user_options("alice", uid, Access(store, "alice"), _req(hw["id"]),
                                                           "http://xnat")
    t = state.options(uid, "s")["task_template"]
    assert t["resources"] == {"cpu_limit": 1.0, "cpu_reservation": 1.0, "mem_limit": "1G",
                              "mem_reservation": "1G", "generic_resources": {}}
    assert t["container_spec"]["env"]["XNAT_HPC_HARDWARE"] == "tiny-slurm"
    assert t["placement"] == {"constraints": ["node.role==worker"]}


def test_a_hardware_of_another_project_is_not_available_to_the_start(plugin):
    state = plugin["plugin_state"]
    body = hardware_body()
    body["scopes"]["Project"] = {"scope": "Project", "enabled": False, "ids": ["OTHER"]}
    hw = state.compute.create_hardware(cs.read_hardware_config(body))
    store = plugin["store"]
    jhs.JupyterHubService(plugin).start("alice", Access(store, "alice"), _req(hw["id"]), "http://xnat")
    data = state.tracking("k1", store.user("alice")["xdat_user_id"])
    assert data["succeeded"] is False and data["finalMessage"] == (
        "Failed to launch Jupyter notebook server. The compute environment or hardware configuration is not "
        "available to the user.")
    assert not plugin.get("plugin_tasks")


# -- the API in process -------------------------------------------------------------------------

@pytest.fixture
async def api(tmp_path, store):
    store.add_user("admin", "admin-pw", admin=True)
    store.add_user("alice", "alice-pw")
    app = make_app(store, tmp_path / "archive")
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    base = f"http://127.0.0.1:{port}"

    async def call(method: str, path: str, user: str = "admin", body=None, raw: bytes | None = None):
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        if data is None and method in ("POST", "PUT"):
            data = b""
        r = await AsyncHTTPClient().fetch(base + path, method=method, body=data, raise_error=False,
                                          auth_username=user, auth_password=f"{user}-pw",
                                          headers={"Content-Type": "application/json"},
                                          allow_nonstandard_methods=True)
        return r.code, (json.loads(r.body) if r.body and r.headers.get("Content-Type", "").startswith(
            "application/json") else r.body.decode())

    yield call
    server.stop()


async def test_admins_create_read_update_and_delete_hardware(api):
    code, created = await api("POST", "/xapi/hardware-configs", body=dict(hardware_body(), id=91))
    assert code == 201 and created["id"] == 5 and created["hardware"]["name"] == "Tiny (Slurm)", created
    assert await api("GET", "/xapi/hardware-configs/5") == (200, created)
    code, listed = await api("GET", "/xapi/hardware-configs")
    assert code == 200 and [h["id"] for h in listed] == [1, 2, 3, 4, 5]
    code, env = await api("GET", "/xapi/compute-environment-configs/1")
    assert code == 200 and created in env["hardwareOptions"]["hardwareConfigs"]
    # the UI's listing, for any logged-in user
    code, avail = await api("GET", "/xapi/compute-environment-configs/available?type=JUPYTERHUB&site=XNAT"
                                   "&user=alice&prj=P", "alice")
    assert code == 200 and [h["id"] for h in avail[0]["hardwareOptions"]["hardwareConfigs"]] == [1, 2, 3, 4, 5]

    code, updated = await api("PUT", "/xapi/hardware-configs/5", body=dict(created, hardware=dict(
        created["hardware"], memoryLimit="2G")))
    assert code == 200 and updated["hardware"]["memoryLimit"] == "2G"
    assert await api("DELETE", "/xapi/hardware-configs/5") == (204, "")
    code, text = await api("GET", "/xapi/hardware-configs/5")
    assert code == 404 and "No hardware config found for ID 5" in text


async def test_only_site_admins_manage_or_read_configs(api):
    for method, path, body in (("GET", "/xapi/hardware-configs", None), ("GET", "/xapi/hardware-configs/1", None),
                               ("POST", "/xapi/hardware-configs", hardware_body()),
                               ("PUT", "/xapi/hardware-configs/1", dict(hardware_body(), id=1)),
                               ("DELETE", "/xapi/hardware-configs/1", None),
                               ("GET", "/xapi/compute-environment-configs", None),
                               ("POST", "/xapi/compute-environment-configs", env_body()),
                               ("DELETE", "/xapi/compute-environment-configs/1", None)):
        code, _ = await api(method, path, "alice", body)
        assert code == 403, (method, path)
    code, listed = await api("GET", "/xapi/hardware-configs")
    assert [h["id"] for h in listed] == [1, 2, 3, 4] and listed[0] == cs.HARDWARE_CONFIGS[0]


@pytest.mark.parametrize("method, path, body, status, text", [
    ("POST", "/xapi/hardware-configs", {"hardware": {"name": ""}, "scopes": SCOPES}, 500,
     "There was an error in the request : Hardware config is invalid: Hardware name cannot be blank"),
    ("POST", "/xapi/hardware-configs", hardware_body("Small"), 500, "named &#x27;Small&#x27; already exists"),
    ("POST", "/xapi/hardware-configs", {"hardware": {"cpuLimit": "x"}}, 400, "hardware.cpuLimit must be a number"),
    ("POST", "/xapi/hardware-configs", b"{not json", 400, "not valid JSON"),
    ("PUT", "/xapi/hardware-configs/2", dict(hardware_body(), id=3), 500,
     "The hardware config ID in the path must match the ID in the body."),
    ("PUT", "/xapi/hardware-configs/77", dict(hardware_body(), id=77), 404, "No hardware config found for ID 77"),
    ("DELETE", "/xapi/hardware-configs/77", None, 404, "No hardware config found with id 77"),
    ("GET", "/xapi/hardware-configs/small", None, 500, "required type &#x27;java.lang.Long&#x27;"),
    ("POST", "/xapi/hardware-configs/1", hardware_body(), 405, "Request method &#x27;POST&#x27; not supported"),
    ("DELETE", "/xapi/hardware-configs", None, 405, "not supported"),
    ("GET", "/xapi/compute-environment-configs/9", None, 404, "Compute environment config not found."),
    ("PUT", "/xapi/compute-environment-configs/1", dict(env_body(), id=2), 500,
     "The ID in the path must match the ID in the body."),
    ("GET", "/xapi/compute-environment-configs/available?type=NOTEBOOK", None, 500, "ConfigType.NOTEBOOK"),
])
async def test_bad_requests_answer_as_xnat(api, method, path, body, status, text):
    raw = body if isinstance(body, bytes) else None
    code, answer = await api(method, path, body=None if raw else body, raw=raw)
    assert code == status and text in answer, (code, answer)


async def test_compute_environments_through_the_api(api):
    code, env = await api("POST", "/xapi/compute-environment-configs", body=env_body(allow_all=False, hardware=[3]))
    assert code == 201 and env["id"] == 2 and [h["id"] for h in env["hardwareOptions"]["hardwareConfigs"]] == [3]
    env["hardwareOptions"]["hardwareConfigs"].append({"id": 4})
    code, updated = await api("PUT", "/xapi/compute-environment-configs/2", body=env)
    assert code == 200 and [h["id"] for h in updated["hardwareOptions"]["hardwareConfigs"]] == [3, 4]
    code, typed = await api("GET", "/xapi/compute-environment-configs?type=JUPYTERHUB")
    assert code == 200 and [e["id"] for e in typed] == [1, 2]
    # the UI's listing keeps to the execution scope: an environment of project P only
    env["scopes"]["Project"] = {"scope": "Project", "enabled": False, "ids": ["P"]}
    assert (await api("PUT", "/xapi/compute-environment-configs/2", body=env))[0] == 200
    for prj, ids in (("P", [1, 2]), ("Q", [1])):
        code, avail = await api("GET", f"/xapi/compute-environment-configs/available?type=JUPYTERHUB&prj={prj}",
                                "alice")
        assert code == 200 and [e["id"] for e in avail] == ids
    assert await api("DELETE", "/xapi/compute-environment-configs/2") == (204, "")

