"""Pure parts of devxnat's JupyterHub plugin and listing formats (no server)."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from devxnat import culling
from devxnat import jupyterhub_service as jhs
from devxnat import listing_formats as lf
from devxnat import compute_services as cs
from devxnat import plugin_configs as pc
from devxnat.hub_client import HubError
from devxnat.plugin_state import PluginState
from devxnat.store import Store


def test_validation_messages_are_the_plugins():
    assert pc.validate_start_request("alice", {}) == [
        "Usernames do not match", "Username cannot be blank", "XSI type cannot be blank",
        "Item ID cannot be blank", "Item label cannot be blank", "Project ID cannot be blank",
        "Event tracking ID cannot be blank", "Compute environment config ID cannot be null",
        "hardware config id cannot be null"]
    ok = {"username": "alice", "xsiType": "xnat:projectData", "itemId": "P", "itemLabel": "P",
          "projectId": "P", "eventTrackingId": "k", "computeEnvironmentConfigId": 1, "hardwareConfigId": 2}
    assert pc.validate_start_request("alice", ok) == []
    assert pc.validate_start_request("bob", ok) == ["Usernames do not match"]


@pytest.mark.parametrize("xsi,general", [
    ("xnat:mrSessionData", "xnat:experimentData"), ("xnat:experimentData", "xnat:experimentData"),
    ("xnat:mrScanData", "xnat:imageScanData"), ("xnat:projectData", "xnat:projectData"),
    ("xnat:subjectData", "xnat:subjectData"), ("xdat:stored_search", "xdat:stored_search")])
def test_general_xsi_type(xsi, general):
    assert pc.general_xsi_type(xsi) == general


def test_default_hardware_and_availability():
    assert [(h["id"], h["hardware"]["name"], h["hardware"]["cpuReservation"], h["hardware"]["memoryLimit"])
            for h in cs.HARDWARE_CONFIGS] == [(1, "Small", 2.0, "2G"), (2, "Medium", 2.0, "4G"),
                                              (3, "Large", 2.0, "8G"), (4, "XLarge", 4.0, "16G")]
    assert cs.is_available(1, 4) and not cs.is_available(1, 5) and not cs.is_available(2, 1)


def test_task_template_and_user_options():
    hw = json.loads(json.dumps(cs.HARDWARE_CONFIGS[3]))
    hw["hardware"]["genericResources"] = [{"name": "gpu", "value": "1"}]
    hw["hardware"]["constraints"] = [{"key": "node.labels.gpu", "operator": "IN", "values": ["a", "b"]}]
    hw["hardware"]["environmentVariables"] = [{"key": "HW", "value": "x"}]
    t = pc.task_template(cs.COMPUTE_ENVIRONMENT_CONFIGS[0], hw)
    assert t["resources"] == {"cpu_limit": 4.0, "cpu_reservation": 4.0, "mem_limit": "16G",
                              "mem_reservation": "16G", "generic_resources": {"gpu": "1"}}
    assert t["placement"] == {"constraints": ["node.labels.gpu==a", "node.labels.gpu==b"]}
    assert t["container_spec"]["env"] == {"HW": "x"} and t["container_spec"]["command"] is None
    env = pc.default_env("alice", "xnat:projectData", "P", "http://x", "ALIAS", "SECRET")
    doc = pc.user_options(user_id=3, login="alice", servername="s", xsi_type="xnat:projectData", item_id="P",
                          project_id="P", event_tracking_id="k", template=t, env=env,
                          workspace_source="/ws/users/alice", data={"/data/projects/P/experiments": "/srv/xnat/P/arc001"},
                          archive_prefix="/srv/xnat", archive_docker_prefix="/mnt/arc")
    assert list(doc) == ["userId", "servername", "xsiType", "itemId", "projectId", "eventTrackingId",
                         "task_template"]
    spec = doc["task_template"]["container_spec"]
    assert spec["mounts"] == [
        {"target": "/workspace/alice", "source": "/ws/users/alice", "type": "bind", "read_only": False},
        {"target": "/data/projects/P/experiments", "type": "bind", "read_only": True,
         "source": "/mnt/arc/P/arc001"}]
    assert spec["env"]["XNAT_USER"] == "ALIAS" and spec["env"]["HW"] == "x"
    assert t["container_spec"]["mounts"] == []  # the template itself is not changed


def test_hub_start_body_keeps_the_builders_nulls():
    body = pc.hub_start_body(user_id=7, xsi_type="xnat:experimentData", item_id="E1", item_label="S1",
                             project_id="P", event_tracking_id="k")
    assert json.dumps(body, separators=(",", ":")) == (
        '{"userId":7,"servername":null,"xsiType":"xnat:experimentData","itemId":"E1","itemLabel":"S1",'
        '"projectId":"P","eventTrackingId":"k","dashboardConfigId":null,"task_template":null}')


def test_data_paths_follow_the_plugin_layout(tmp_path: Path):
    arc = tmp_path
    (arc / "P" / "arc001" / "E1").mkdir(parents=True)
    (arc / "P" / "subjects" / "S1").mkdir(parents=True)
    assert pc.data_paths(arc, "project", "P") == {
        "/data/projects/P/experiments": str(arc / "P" / "arc001"),
        "/data/projects/P/subjects": str(arc / "P" / "subjects")}
    assert pc.data_paths(arc, "subject", "P", subject_label="S1", experiment_labels=["E1", "E2"]) == {
        "/data/projects/P/subject-resources/S1": str(arc / "P" / "subjects" / "S1"),
        "/data/projects/P/experiments/E1": str(arc / "P" / "arc001" / "E1")}
    assert pc.translate("/a/b", "", "/x") == "/a/b" and pc.translate("/a/b", "/a", "/x") == "/x/b"
    # Java's String.replace: every occurrence
    assert pc.translate("/arc/P/arc001", "/arc", "/m") == "/m/P/m001"


def test_csv_and_xml_as_xfttable_writes_them():
    doc = {"ResultSet": {"Result": [{"ID": "P1", "name": 'a, "b"', "note": "x\ny"},
                                    {"ID": "P2", "name": "<c>", "note": ""}],
                         "totalRecords": "2", "title": "Projects"}}
    assert lf.to_csv(doc) == 'ID,name,note\nP1,"a, ""b""",x y\nP2,<c>,\n'
    xml = lf.to_xml(doc)
    assert xml.startswith('<ResultSet title="Projects" totalRecords="2"><results><columns><column>ID</column>')
    assert "<row><cell>P2</cell><cell>&lt;c&gt;</cell><cell></cell></row>\n" in xml
    assert xml.endswith("</rows></results></ResultSet>")


# -- the plugin's culling tasks (devxnat.culling) -----------------------------------------------

NOW = datetime(2026, 12, 7, 1, 0, 5, 123456, tzinfo=timezone.utc)


def _iso(t: datetime) -> str:
    """A time as JupyterHub writes it (``isoformat`` + Z: six fraction digits, or none)."""
    return t.astimezone(timezone.utc).replace(tzinfo=None).isoformat() + "Z"


def _server(name: str, *, idle: timedelta, age: timedelta = timedelta(minutes=90), **extra) -> dict:
    return {"name": name, "ready": True, "pending": None, "url": f"/user/x/{name}",
            "started": _iso(NOW - age), "last_activity": _iso(NOW - idle),
            "user_options": {"xsiType": "xnat:projectData", "projectId": "P"}, **extra}


class FakeHub:
    """``HubClient`` against a hub that lists *users*; records the calls, and as JupyterHub
    refuses ``{"remove": true}`` for a default server (400)."""

    def __init__(self, users: list[dict]):
        self.users_doc = users
        self.calls: list[tuple] = []
        self.listed = asyncio.Event()

    def __call__(self, api_url, token):  # the HubClient(...) the service makes
        return self

    async def users(self):
        self.calls.append(("GET", "/users"))
        if sum(c == ("GET", "/users") for c in self.calls) >= 4:
            self.listed.set()
        return json.loads(json.dumps(self.users_doc))

    async def get_user(self, name):
        self.calls.append(("GET", f"/users/{name}"))
        return next((u for u in self.users_doc if u["name"] == name), None)

    async def get_server(self, name, servername=""):
        user = await self.get_user(name)
        return None if user is None else (user.get("servers") or {}).get(servername)

    async def stop_server(self, name, servername=""):
        self.calls.append(("DELETE", name, servername))
        if not servername:
            raise HubError("stop: the hub answered 400", 400)
        user = next(u for u in self.users_doc if u["name"] == name)
        user["servers"].pop(servername, None)

    def deletes(self) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == "DELETE"]


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """devxnat's plugin state over a fresh store (XNAT users alice and bob), and a fake hub."""
    store = Store(tmp_path / "db.sqlite3")
    for login in ("alice", "bob"):
        store.add_user(login, "pw")
    state = PluginState(store, defaults={"stopPollingInterval": "0.01", "stopTimeout": "2"})
    settings = {"store": store, "plugin_state": state}

    def use(users):
        hub = FakeHub(users)
        monkeypatch.setattr(jhs, "HubClient", hub)
        return hub

    yield settings, use
    store.close()


async def _settled(settings):
    await asyncio.gather(*list(settings.get("plugin_tasks", ())))


def test_java_time_arithmetic_is_the_plugins():
    t0 = datetime(2026, 12, 7, 0, 0, tzinfo=timezone.utc)
    minute, hour = timedelta(minutes=1), timedelta(hours=1)
    # ChronoUnit.between: whole units, truncated toward zero
    assert culling.java_between(t0, t0 + timedelta(minutes=60, seconds=59, microseconds=999999), minute) == 60
    assert culling.java_between(t0, t0 + timedelta(minutes=61), minute) == 61
    assert culling.java_between(t0 + timedelta(seconds=90), t0, minute) == -1
    assert culling.java_between(t0, t0 + timedelta(hours=47, minutes=59), hour) == 47
    with pytest.raises(TypeError):
        culling.java_between(None, t0, minute)  # the plugin's NullPointerException
    # ZonedDateTime.now(ZoneId.of("UTC")).toString() on Java 8 (milliseconds)
    assert culling.java_zoned_utc(NOW) == "2026-12-07T01:00:05.123Z[UTC]"
    assert culling.java_zoned_utc(t0) == "2026-12-07T00:00Z[UTC]"
    assert culling.java_zoned_utc(t0 + timedelta(seconds=5)) == "2026-12-07T00:00:05Z[UTC]"
    # the client's @JsonFormat "yyyy-MM-dd'T'HH:mm:ss[.SSSSSS]X"
    assert culling.parse_java_time("2026-12-07T01:00:05.123456Z") == NOW
    assert culling.parse_java_time("2026-12-07T01:00:05Z") == NOW.replace(microsecond=0)
    assert culling.parse_java_time("2026-12-07T02:00:05+01") == NOW.replace(microsecond=0)
    for bad in ("2026-12-07T01:00:05.123Z", "2026-12-07 01:00:05Z", 17):
        with pytest.raises(culling.ModelError):
            culling.parse_java_time(bad)


def test_the_hubs_user_list_is_read_as_the_plugins_model():
    users = culling.read_users([{"name": "alice", "admin": False, "servers": {
        "s": {"name": "s", "started": "2026-12-07T01:00:05.123456Z", "last_activity": None,
              "user_options": {"n": 1, "flag": True, "none": None, "x": "y"}, "extra": [1]}}}])
    assert users == [{"name": "alice", "servers": {"s": {
        "name": "s", "started": NOW, "last_activity": None,
        "user_options": {"n": "1", "flag": "true", "none": None, "x": "y"}}}}]
    assert culling.read_users([{"name": "bob"}]) == [{"name": "bob", "servers": None}]
    # Map<String,String>: a list or an object in user_options fails the whole list (Jackson)
    with pytest.raises(culling.ModelError, match="user_options"):
        culling.read_users([{"name": "a", "servers": {"s": {"user_options": {"projects": ["P"]}}}}])


async def test_cull_once_stops_what_the_plugin_stops(plugin, caplog):
    settings, use = plugin
    hub = use([
        {"name": "alice", "servers": {
            "xnat1": _server("xnat1", idle=timedelta(minutes=61)),
            "edge": _server("edge", idle=timedelta(minutes=60, seconds=59, microseconds=999999)),
            "": _server("", idle=timedelta(hours=2))}},                    # the form's default server
        {"name": "bob", "servers": {
            "form": _server("form", idle=timedelta(minutes=1), age=timedelta(hours=48))}},
        {"name": "ghost", "servers": {"g": _server("g", idle=timedelta(hours=5))}},  # no XNAT user
        {"name": "carol", "servers": {}},
    ])
    state, store = settings["plugin_state"], settings["store"]
    alice = store.user("alice")["xdat_user_id"]
    state.store_options(alice, "xnat1", {"eventTrackingId": "k"})
    caplog.set_level(logging.INFO, logger="devxnat.culling")
    culls = await culling.PluginCuller(settings, clock=lambda: NOW).cull_once()
    idle_key = "2026-12-07T01:00:05.123Z[UTC]_cullIdleServers"
    old_key = "2026-12-07T01:00:05.123Z[UTC]_cullLongRunningServers"
    assert culls == [culling.Cull("alice", "xnat1", "inactivityTimeout", idle_key),
                     culling.Cull("alice", "", "inactivityTimeout", idle_key),
                     culling.Cull("bob", "form", "maxServerLifetime", old_key)]
    await _settled(settings)
    # one GET /users per pass; every due server of a known XNAT user, form-started ones included
    assert hub.calls.count(("GET", "/users")) == 2
    assert sorted(hub.deletes()) == [("alice", ""), ("alice", "xnat1"), ("bob", "form")]
    assert "Unable to delete long running Jupyter server for user ghost" in caplog.text
    assert "Removing Jupyter server xnat1 for user alice due to inactivity." in caplog.text
    assert "Removing Jupyter server form for user bob due to long running time." in caplog.text
    # the plugin's stop: options removed, its events under the pass's key; JupyterHub refuses to
    # remove a default server, so that stop fails
    assert state.options(alice, "xnat1") is None
    messages = [e["message"] for e in json.loads(state.tracking(idle_key, alice)["payload"])["entryList"]]
    assert "Jupyter Server Stopped." in messages and "Failed to stop Jupyter Server." in messages
    bob = store.user("bob")["xdat_user_id"]
    assert state.tracking(old_key, bob)["finalMessage"] == "Jupyter Server Stopped."


async def test_a_pass_ends_at_the_first_error_as_the_plugins(plugin, caplog):
    settings, use = plugin
    culler = culling.PluginCuller(settings)
    # a server without last_activity: NullPointerException, the servers after it are not looked at
    hub = use([{"name": "alice", "servers": {
        "new": _server("new", idle=timedelta(0), last_activity=None),
        "idle": _server("idle", idle=timedelta(hours=3))}}])
    assert await culler.cull_inactive_servers(NOW) == []
    assert "Failed to cull idle Jupyter notebook servers" in caplog.text
    # a user list the client cannot read (no servers at all: the hub gave no read:servers)
    hub = use([{"name": "alice", "servers": {"idle": _server("idle", idle=timedelta(hours=3),
                                                             user_options={"projects": ["P"]})}}])
    assert await culler.cull_inactive_servers(NOW) == [] and hub.deletes() == []
    hub = use([{"name": "alice"}])
    assert await culler.cull_long_running_servers(NOW) == []
    assert "Failed to cull long running Jupyter notebook servers" in caplog.text
    # a preference of 0: no pass, not even a call to the hub
    settings["plugin_state"].set_pref("inactivityTimeout", "0")
    settings["plugin_state"].set_pref("maxServerLifetime", "0")
    hub = use([{"name": "alice", "servers": {"idle": _server("idle", idle=timedelta(days=9), age=timedelta(days=9))}}])
    assert await culler.cull_once(NOW) == [] and hub.calls == []
    # other limits, in the preferences' units (minutes, hours)
    settings["plugin_state"].set_pref("inactivityTimeout", "5")
    settings["plugin_state"].set_pref("maxServerLifetime", "1")
    young = timedelta(minutes=59, seconds=59)
    hub = use([{"name": "alice", "servers": {"a": _server("a", idle=timedelta(minutes=6), age=young),
                                             "b": _server("b", idle=timedelta(minutes=5, seconds=30), age=young),
                                             "c": _server("c", idle=timedelta(0), age=timedelta(hours=1))}}])
    assert [(c.server, c.preference) for c in await culler.cull_once(NOW)] == [
        ("a", "inactivityTimeout"), ("c", "maxServerLifetime")]
    await _settled(settings)


async def test_the_schedule_runs_both_passes_on_the_clock_given(plugin):
    settings, use = plugin
    hub = use([{"name": "alice", "servers": {"x": _server("x", idle=timedelta(minutes=2))}}])
    seen = []
    culler = culling.PluginCuller(settings, clock=lambda: seen.append(1) or NOW + timedelta(hours=1))
    with pytest.raises(ValueError):
        culler.start(0)
    culler.start(0.01)
    try:
        await asyncio.wait_for(hub.listed.wait(), 10)  # 4 passes (2 of each task) have listed users
    finally:
        culler.stop()
    await _settled(settings)
    # the clock moved past inactivityTimeout: the idle server was stopped by the periodic pass
    assert ("alice", "x") in hub.deletes() and seen
