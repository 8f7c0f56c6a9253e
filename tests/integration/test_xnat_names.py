"""XNAT's "Start Jupyter" with the names XNAT really makes (issue 20, items 1 and 4), whole path on
the real hub + CHP + devxnat (+ Slurm): devxnat's plugin endpoints are driven as the plugin's UI
drives them (``jupyterhub-servers.js``: the server named after ``generateEventTrackingId()``,
POST ``/xapi/jupyterhub/users/{login}/server/{name}``, event tracking polled, DELETE to stop), with
XNAT's "JupyterHub API URL" set to this hub's ``/hub/xnat-plugin/api``, for XNAT accounts whose
logins are not Unix names (``Jane.Doe``, ``CaRoL``) and for a plain one, on the local and the
Slurm profile; and the hub's own login with such an account.

The XNAT accounts and their Unix accounts (named as :func:`hub_ext.names.hub_name` maps them, as a
site's directory would hold them) are made for this module and removed after it."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from hub_ext.names import hub_name, hub_server_name
from tests.fixtures.accounts import unix_entry, unix_name
from tests.fixtures.devxnat import PASSWORDS
from tests.fixtures.plugin import generate_event_tracking_id, start_outcome, stop_from_xnat, xnat_points_at
from tests.fixtures.spawn import process_environ, server_process
from tests.integration.test_xnat_plugin_hub import TINY_SLURM, experiment_of, plugin_hub  # noqa: F401 - fixture

pytestmark = [pytest.mark.devxnat]

LOGINS = ("Jane.Doe", "CaRoL")


@pytest.fixture(scope="module")
def odd_logins(shared_devxnat):
    """XNAT accounts ``Jane.Doe`` and ``CaRoL`` (members of CARDIO_ECG); their passwords.
    ``Jane.Doe``'s Unix account is made here, as a site's directory holds it; ``CaRoL`` has none:
    the hub makes it at her first start (``c.UnixAccounts.create_missing``, on in this hub).
    Both accounts are removed after the module."""
    passwords = {login: secrets.token_urlsafe(12) for login in LOGINS}
    PASSWORDS.update(passwords)  # the devxnat fixture's table of who signs in with what
    st = shared_devxnat.store()
    existed = set()
    try:
        for login, password in passwords.items():
            if st.user(login) is None:
                st.add_user(login, password, firstname=login, lastname="Test")
            else:
                st.set_password(login, password)
            st.set_member("CARDIO_ECG", login, "Members")
            try:
                unix_entry(hub_name(login))
                existed.add(hub_name(login))
            except KeyError:
                pass
        if hub_name("Jane.Doe") not in existed:
            subprocess.run(["useradd", "--create-home", "--user-group", "--shell", "/bin/bash",
                            unix_name(hub_name("Jane.Doe"))], check=True, capture_output=True)
        subprocess.run(["userdel", "--remove", unix_name(hub_name("CaRoL"))], capture_output=True)  # none before
        existed.discard(hub_name("CaRoL"))
        yield passwords
    finally:
        for login in LOGINS:
            st.remove_member("CARDIO_ECG", login)
            PASSWORDS.pop(login, None)
        st.close()
        for name in {hub_name(login) for login in LOGINS} - existed:
            subprocess.run(["pkill", "-KILL", "-u", unix_name(name)], capture_output=True)
            subprocess.run(["userdel", "--remove", unix_name(name)], capture_output=True)


def _ui_start(devxnat, hub, login: str, *, hardware_id: int = 1) -> str:
    """What the plugin's UI does on "Start Jupyter" for an experiment of CARDIO_ECG; the name."""
    exp = experiment_of(devxnat, "bob", "CARDIO_ECG")
    etid = generate_event_tracking_id()
    req = {"username": login, "servername": etid, "xsiType": "xnat:ecgSessionData", "itemId": exp["ID"],
           "itemLabel": exp["label"], "projectId": "CARDIO_ECG", "eventTrackingId": etid,
           "computeEnvironmentConfigId": 1, "hardwareConfigId": hardware_id}
    r = devxnat.request("POST", f"/xapi/jupyterhub/users/{login}/server/{etid}", login, json=req)
    assert r.status_code == 200, r.text
    data = start_outcome(devxnat, login, etid)
    assert data.get("succeeded") in (True, "true"), (data, hub.log()[-4000:])
    return etid


@pytest.fixture
def plugin_prefs(shared_devxnat, plugin_hub):  # noqa: F811
    with xnat_points_at(shared_devxnat, plugin_hub) as state:
        yield state


@pytest.mark.parametrize("login", ["bob", "Jane.Doe"])
def test_start_jupyter_as_xnats_ui_names_it_starts_polls_opens_and_stops(
        plugin_hub, shared_devxnat, odd_logins, plugin_prefs, login):  # noqa: F811
    user = hub_name(login)
    etid = _ui_start(shared_devxnat, plugin_hub, login)
    name = hub_server_name(etid)
    try:
        srv = plugin_hub.api("GET", f"/users/{user}").json()["servers"][name]
        assert srv["ready"] and srv["user_options"]["servername"] == etid
        assert srv["user_options"]["xnatLogin"] == login
        _check_server(plugin_hub, shared_devxnat, login, name, "local-plugin")
        # what XNAT's own polling sees through the plugin API: its own names
        model = shared_devxnat.request("GET", f"/xapi/jupyterhub/users/{login}/server/{etid}", login)
        assert model.status_code == 200 and model.json()["name"] == etid, model.text
        assert model.json()["url"] == srv["url"]  # "open" goes to the hub's own URL
    finally:
        stop_from_xnat(shared_devxnat, plugin_hub, login, etid, user, name)


@pytest.fixture
def tiny_slurm_hardware(shared_devxnat):
    """``TINY_SLURM`` added to XNAT's compute services by the site admin (``POST
    /xapi/hardware-configs``, enabled at every scope, so the default compute environment, which
    allows all hardware, offers it); its id. Deleted again at the end."""
    body = {"hardware": TINY_SLURM["hardware"],
            "scopes": {s: {"scope": s, "enabled": True, "ids": []} for s in ("Site", "Project", "User")}}
    r = shared_devxnat.request("POST", "/xapi/hardware-configs", "admin", json=body)
    assert r.status_code == 201, r.text
    hid = r.json()["id"]
    yield hid
    r = shared_devxnat.request("DELETE", f"/xapi/hardware-configs/{hid}", "admin")
    assert r.status_code == 204, r.text


def test_the_plugins_calls_with_its_names_start_a_slurm_server(
        plugin_hub, shared_devxnat, odd_logins, plugin_prefs, tiny_slurm_hardware):  # noqa: F811
    """XNAT's UI flow for ``CaRoL`` with the hardware the site added for its Slurm profile
    (``XNAT_HPC_HARDWARE=tiny-slurm``): offered by the UI's listing, started, run on Slurm,
    stopped through XNAT."""
    login, user = "CaRoL", hub_name("CaRoL")
    with pytest.raises(KeyError):  # she has no Unix account: the hub makes it at this start
        unix_entry(user)
    offered = shared_devxnat.get("/xapi/compute-environment-configs/available?type=JUPYTERHUB&site=XNAT"
                                 f"&user={login}&prj=CARDIO_ECG", login)
    assert offered.status_code == 200, offered.text
    assert tiny_slurm_hardware in [h["id"] for h in offered.json()[0]["hardwareOptions"]["hardwareConfigs"]]
    etid = _ui_start(shared_devxnat, plugin_hub, login, hardware_id=tiny_slurm_hardware)
    name = hub_server_name(etid)
    try:
        srv = plugin_hub.api("GET", f"/users/{user}").json()["servers"][name]
        assert srv["ready"] and srv["user_options"]["xnatLogin"] == login
        _check_server(plugin_hub, shared_devxnat, login, name, "slurm-plugin")
        assert f"created the Unix account {unix_name(user)!r}" in plugin_hub.log()
    finally:
        stop_from_xnat(shared_devxnat, plugin_hub, login, etid, user, name)


def _check_server(hub, devxnat, login: str, name: str, profile: str) -> None:
    """The server runs as the login's Unix account, scoped to the experiment, with the token
    XNAT issued to the login."""
    user = hub_name(login)
    full = hub.api("GET", f"/users/{user}").json()["servers"][name]  # with state
    pid = server_process(user, full)
    with open(f"/proc/{pid}/status") as f:
        uid = next(int(line.split()[1]) for line in f if line.startswith("Uid:"))
    assert uid == unix_entry(user).pw_uid
    env = process_environ(pid)
    assert env["XNAT_HPC_PROFILE"] == profile
    scope = json.loads(env["XNAT_HPC_SCOPE"])["projects"]
    experiment = experiment_of(devxnat, "bob", "CARDIO_ECG")["ID"]  # what _ui_start started for
    assert scope == {"CARDIO_ECG": {"experiments": [experiment]}}
    if profile == "local-plugin":  # the plugin's data layout, where the backend mounts the scope
        assert env["XNAT_DATA"] == "/data"
        assert env["JUPYTERHUB_ROOT_DIR"] == f"/workspace/{user}"
    who = devxnat.get("/xapi/users/username", env["XNAT_USER"], env["XNAT_PASS"])
    assert who.text.strip() == login


def test_the_hubs_own_login_maps_the_same_way(plugin_hub, odd_logins):  # noqa: F811
    for login, password in odd_logins.items():
        session, r = plugin_hub.login(login, password)
        assert r.status_code == 302, (r.status_code, r.text[:500])
        me = session.get(f"{plugin_hub.url}/hub/api/user", timeout=30,
                         headers={"Referer": f"{plugin_hub.url}/hub/home"})
        assert me.status_code == 200 and me.json()["name"] == hub_name(login), me.text
        model = plugin_hub.api("GET", f"/users/{hub_name(login)}").json()
        assert model["auth_state"]["xnat_user"] == login
    assert hub_name("CaRoL") != "carol" and hub_name("Jane.Doe").startswith("jane.doe--")
