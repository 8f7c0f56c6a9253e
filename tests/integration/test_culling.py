"""Culling on a real hub: XNAT's plugin culling (devxnat.culling, the plugin's
``cullInactiveServers``) and the hub's own ``jupyterhub-idle-culler``, side by side.

Two servers of one user: one started as XNAT's plugin starts it (named, the plugin's flat body),
one started from the hub's REST API as the form does (the default server). XNAT's pass, with a
clock moved past ``inactivityTimeout``, stops the XNAT-started server through the hub's API
(``DELETE`` with ``{"remove": true}``) — and fails on the default server, which JupyterHub does
not let anyone remove. ``jupyterhub-idle-culler``, with the shipped configuration's role and a
one-second timeout, then stops that one. Every wait is for a state, never a fixed time.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from devstack.hubconfig import IDLE_CULLER_SCOPES
from devxnat import plugin_configs as pc
from devxnat.culling import PluginCuller
from devxnat.plugin_state import PluginState
from tests.fixtures.devxnat import PASSWORDS
from tests.fixtures.plugin import PLUGIN_API, make_plugin_hub
from tests.fixtures.spawn import start_server, wait_for, wait_gone
from tests.integration.test_xnat_plugin_hub import PluginClient, seed_start, start_as_the_plugin

pytestmark = [pytest.mark.devxnat]

SERVICE_ACCOUNT = "hubsvc-cull"   # an XNAT account with the plugin's JupyterHub role
USER, PROJECT = "alice", "NEURO_MRI"
XNAT_SERVER = "xnatcull"

PROFILES = """
profiles:
  - slug: local-cull
    display_name: This machine
    backend: local
    default: true
    resources: {{cpus: 2, memory: 8G}}
offload:
  partition: secure
  staging_dir: {staging}
"""

CULLER = """
c.JupyterHub.services.append({{"name": "idle-culler", "api_token": "{token}"}})
c.JupyterHub.load_roles.append({{"name": "idle-culler", "services": ["idle-culler"], "scopes": {scopes}}})
"""


@pytest.fixture(scope="module")
def culling_hub(shared_devxnat, unix_users, staging, tmp_path_factory):
    """A hub XNAT's plugin drives (service ``xnat``), with the service ``idle-culler`` as the
    shipped configurations define it, except that the test runs the culler itself."""
    culler_token = secrets.token_hex(32)
    hub = make_plugin_hub(tmp_path_factory.mktemp("culling-hub"), shared_devxnat, SERVICE_ACCOUNT,
                          staging=staging, profiles_text=PROFILES,
                          extra=CULLER.format(token=culler_token, scopes=json.dumps(list(IDLE_CULLER_SCOPES))))
    hub.culler_token = culler_token
    yield hub
    hub.stop()


def plugin_cull(devxnat, hub, now: datetime):
    """XNAT's culling pass, in this process, over the shared devxnat's store (its hub settings
    set for the pass and put back after), at *now*; its stops run to their end."""
    st = devxnat.store()
    names = ("jupyterHubApiUrl", "jupyterHubToken", "stopPollingInterval")
    saved = st.db.execute(f"SELECT name, value FROM jh_prefs WHERE name IN ({','.join('?' * len(names))})",
                          names).fetchall()
    state = PluginState(st)
    try:
        for name, value in zip(names, (f"{hub.url}{PLUGIN_API}", hub.xnat_token, "0.2")):
            state.set_pref(name, value)
        settings = {"store": st, "plugin_state": state}

        async def run():
            culls = await PluginCuller(settings).cull_once(now)
            await asyncio.gather(*list(settings.get("plugin_tasks", ())))
            return culls

        culls = asyncio.run(run())
        uid = st.user(USER)["xdat_user_id"]
        tracking = {c.key: state.tracking(c.key, uid) for c in culls}
        return culls, tracking, int(state.pref("inactivityTimeout"))
    finally:
        with st.tx() as db:
            db.execute(f"DELETE FROM jh_prefs WHERE name IN ({','.join('?' * len(names))})", names)
            db.executemany("INSERT INTO jh_prefs(name, value) VALUES (?,?)", [tuple(r) for r in saved])
        st.close()


def test_xnat_culls_its_idle_server_and_the_idle_culler_the_forms(culling_hub, shared_devxnat, tmp_path):
    hub, client = culling_hub, PluginClient(culling_hub)
    body = seed_start(shared_devxnat, USER, XNAT_SERVER, xsi_type=pc.PROJECT, item=PROJECT, project=PROJECT)
    start_as_the_plugin(hub, client, USER, XNAT_SERVER, body)
    start_server(hub, USER, PASSWORDS[USER], [PROJECT], server="", profile="local-cull")
    culler = None
    try:
        servers = hub.api("GET", f"/users/{USER}").json()["servers"]
        assert {XNAT_SERVER, ""} <= set(servers), servers
        # XNAT's pass with its clock past inactivityTimeout (minutes): every server of the user is
        # due; the XNAT-started one is stopped and removed, the default one cannot be removed
        st = shared_devxnat.store()
        try:
            timeout = int(PluginState(st).pref("inactivityTimeout"))
        finally:
            st.close()
        culls, tracking, _ = plugin_cull(shared_devxnat, hub, datetime.now(timezone.utc)
                                         + timedelta(minutes=timeout + 2))
        assert sorted((c.user, c.server, c.preference) for c in culls) == [
            (USER, "", "inactivityTimeout"), (USER, XNAT_SERVER, "inactivityTimeout")]
        assert all(c.key.endswith("Z[UTC]_cullIdleServers") for c in culls)
        messages = [e["message"] for t in tracking.values() for e in json.loads(t["payload"])["entryList"]]
        assert "Jupyter Server Stopped." in messages and "Failed to stop Jupyter Server." in messages
        servers = hub.api("GET", f"/users/{USER}").json()["servers"]
        assert XNAT_SERVER not in servers and servers[""]["ready"], servers
        assert 'Cannot delete the default server' in hub.log()
        # the hub's idle culler with the shipped role's scopes, a one-second timeout: the form's
        # server, idle since its start, is stopped
        env = {**os.environ, "JUPYTERHUB_API_TOKEN": hub.culler_token}
        log_path = tmp_path / "idle-culler.log"
        with open(log_path, "wb") as log_f:
            culler = subprocess.Popen(
                [sys.executable, "-m", "jupyterhub_idle_culler", f"--url={hub.url}/hub/api",
                 "--timeout=1", "--cull-every=1"],
                stdout=log_f, stderr=subprocess.STDOUT, env=env)
        wait_gone(hub, USER, "", timeout=30)
        text = wait_for(lambda: (t := log_path.read_text(errors="replace")) and f"Culling server {USER}" in t
                        and t, 10, "the culler's log line")
        assert "403" not in text and "Traceback" not in text, text
    finally:
        if culler is not None:
            culler.terminate()
            culler.wait(10)
        for name in (XNAT_SERVER, ""):
            if name in hub.api("GET", f"/users/{USER}").json()["servers"]:
                hub.api("DELETE", f"/users/{USER}/server" if not name else f"/users/{USER}/servers/{name}")
                wait_gone(hub, USER, name)
