"""XNAT's plugin API ``/hub/xnat-plugin/api`` (issue 20, items 1 and 4), in-process: JupyterHub's
own ``MockHub`` with the site's routes (:mod:`tests.fixtures.mockhub`), called exactly as the
plugin's ``DefaultJupyterHubClient`` calls it (``Authorization: token`` of the ``xnat`` service,
``Content-Type: application/json``, the flat ``XnatUserOptions`` body, ``{"remove": true}`` on
stop) with the names XNAT makes: the login as XNAT spells it and the server named after the UI's
event-tracking id. The same calls on ``/hub/api`` show why the gateway exists (JupyterHub ≥ 6
refuses the name)."""

from __future__ import annotations

import asyncio
import json
import secrets

import jupyterhub
import pytest
import pytest_asyncio
from traitlets.config import Config

from devstack.hubconfig import XNAT_SERVICE_SCOPES
from hub_ext.names import hub_name
from tests.fixtures.mockhub import mock_hub
from tests.unit.test_plugin_names import ETID

pytestmark = pytest.mark.asyncio(loop_scope="module")

XNAT_TOKEN, OTHER_TOKEN = secrets.token_hex(16), secrets.token_hex(16)
JSON = {"Content-Type": "application/json"}


def plugin_body(project: str = "CARDIO_ECG", etid: str = ETID) -> dict:
    """``hub_start_body`` of the plugin (devxnat.plugin_configs): nulls kept."""
    return {"userId": 12, "servername": None, "xsiType": "xnat:projectData", "itemId": project,
            "itemLabel": project, "projectId": project, "eventTrackingId": etid, "dashboardConfigId": None,
            "task_template": None}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    c = Config()
    c.JupyterHub.services = [{"name": "xnat", "api_token": XNAT_TOKEN},
                             {"name": "other", "api_token": OTHER_TOKEN}]
    c.JupyterHub.load_roles = [{"name": "xnat", "services": ["xnat"], "scopes": list(XNAT_SERVICE_SCOPES)},
                               {"name": "other", "services": ["other"], "scopes": list(XNAT_SERVICE_SCOPES)}]
    async with mock_hub(c) as h:
        h.config.XnatPluginGateway.hub_api_url = h.base + "api"
        yield h


async def plugin(hub, method: str, path: str, body=None, token: str | None = XNAT_TOKEN):
    return await hub.request(method, "xnat-plugin/api" + path, token=token, body=body,
                             headers=JSON if body is not None else None)


async def test_xnats_start_poll_token_and_stop_with_the_names_xnat_makes(hub):
    code, doc, _ = await plugin(hub, "GET", "/", token=None)  # the version check: no token
    assert code == 200 and doc["version"] == jupyterhub.__version__
    code, _, _ = await plugin(hub, "GET", "/info")
    assert code == 200
    code, _, _ = await plugin(hub, "GET", "/users/Jane.Doe")
    assert code == 404
    code, doc, _ = await plugin(hub, "POST", "/users/Jane.Doe")
    assert code == 201 and doc["name"] == "Jane.Doe"
    jane = hub_name("Jane.Doe")
    assert jane in hub.app.users and "Jane.Doe" not in hub.app.users

    code, _, r = await plugin(hub, "POST", f"/users/Jane.Doe/servers/{ETID}", body=plugin_body())
    assert code in (201, 202), r.body
    spawner = hub.app.users[jane].spawners["xnat-20261207t004607123z"]
    # the spawner reads the start back from XNAT under XNAT's names: they are in the body
    assert spawner.user_options["servername"] == ETID and spawner.user_options["xnatLogin"] == "Jane.Doe"

    for _ in range(100):
        code, doc, _ = await plugin(hub, "GET", "/users/Jane.Doe")
        if doc["servers"].get(ETID, {}).get("ready"):
            break
        await asyncio.sleep(0.05)
    server = doc["servers"][ETID]  # XNAT finds its server by the exact name it made
    assert doc["name"] == "Jane.Doe" and server["name"] == ETID and server["ready"]
    # "open": the hub's own URL of the server
    assert server["url"] == f"{hub.app.base_url}user/{jane}/xnat-20261207t004607123z/"

    code, doc, _ = await plugin(hub, "GET", "/users")
    assert "Jane.Doe" in [u["name"] for u in doc]  # the culler's list, in XNAT's names

    token = {"token": None, "id": None, "user": None, "kind": None, "service": None,
             "scopes": [f"access:servers!user={jane}"], "note": "xnat", "oauth_client": None,
             "session_id": None, "expires_at": None, "expires_in": 3600, "created": None, "last_activity": None}
    code, doc, r = await plugin(hub, "POST", "/users/Jane.Doe/tokens", body=token)
    assert code == 201 and doc["token"], r.body

    code, _, r = await plugin(hub, "DELETE", f"/users/Jane.Doe/servers/{ETID}", body={"remove": True})
    assert code in (202, 204), r.body
    for _ in range(100):
        code, doc, _ = await plugin(hub, "GET", "/users/Jane.Doe")
        if ETID not in doc["servers"]:
            break
        await asyncio.sleep(0.05)
    assert ETID not in doc["servers"] and "xnat-20261207t004607123z" not in hub.app.users[jane].spawners


async def test_the_hubs_own_api_on_this_jupyterhub_version(hub):
    """Why the plugin API exists: JupyterHub 6 refuses the name XNAT's UI makes; JupyterHub 5
    takes it (and the plugin API still names the server the same way on both)."""
    hub.user("bob")
    code, doc, _ = await hub.request("POST", f"api/users/bob/servers/{ETID}", token=XNAT_TOKEN,
                                     body=plugin_body(), headers=JSON)
    if int(jupyterhub.__version__.split(".")[0]) >= 6:
        assert code == 400 and "Invalid server_name" in doc["message"]
        assert ETID not in hub.app.users["bob"].spawners
    else:
        assert code in (201, 202)
        await hub.stop_servers()


@pytest.mark.parametrize("name, says", [
    ("a" * 31, "neither an XNAT event-tracking id"),
    ("serveur-%C3%A9t%C3%A9", "neither"),
    ("xnat-20261207t004607123z", "reserved"),
])
async def test_a_name_that_cannot_be_mapped_is_refused_before_anything_is_made(hub, name, says):
    hub.user("carol")
    code, doc, _ = await plugin(hub, "POST", f"/users/carol/servers/{name}", body=plugin_body())
    assert code == 400 and says in doc["message"]
    assert [n for n in hub.app.users["carol"].spawners if n] == []  # nothing half-made


async def test_thirty_characters_are_kept_and_two_starts_of_one_name_make_one_server(hub):
    name = "a" * 30
    code, _, _ = await plugin(hub, "POST", "/users/CaRoL")
    assert code == 201
    first, second = await asyncio.gather(
        plugin(hub, "POST", f"/users/CaRoL/servers/{name}", body=plugin_body(etid="x")),
        plugin(hub, "POST", f"/users/CaRoL/servers/{name}", body=plugin_body(etid="x")))
    codes = sorted([first[0], second[0]])
    # the first start makes it; the second finds it starting (202) or already up (400)
    assert codes[0] in (201, 202) and codes[1] in (201, 202, 400), (first[2].body, second[2].body)
    carol2 = hub_name("CaRoL")
    assert carol2 != "carol" and list(hub.app.users[carol2].spawners) == [name]
    code, doc, _ = await plugin(hub, "GET", "/users/CaRoL")
    assert doc["name"] == "CaRoL" and name in doc["servers"]


async def test_only_xnats_service_may_call_it_and_the_body_may_not_contradict_the_address(hub):
    user_token = hub.personal_token("bob")
    code, doc, _ = await plugin(hub, "GET", "/users/bob", token=user_token)
    assert code == 403 and "xnat" in doc["message"]
    code, doc, _ = await plugin(hub, "GET", "/users/bob", token=OTHER_TOKEN)
    assert code == 403
    code, _, _ = await plugin(hub, "GET", "/users/bob", token=None)
    assert code == 403
    code, doc, _ = await plugin(hub, "POST", f"/users/bob/servers/{ETID}",
                                body={**plugin_body(), "servername": "20261207T000000000Z"})
    assert code == 400 and "names the server" in doc["message"]
    assert not [n for n in hub.app.users["bob"].spawners if n]


async def test_the_login_key_cannot_be_smuggled_past_the_gateway_as_another_login(hub):
    """A body naming another login is overwritten with the address's: the spawner then checks
    that the login maps to the user it starts (spawner.mixin._plugin_names)."""
    hub.user("dave")
    code, _, r = await plugin(hub, "POST", "/users/dave/servers/dave1",
                              body={**plugin_body(), "xnatLogin": "Jane.Doe"})
    assert code in (201, 202), r.body
    assert hub.app.users["dave"].spawners["dave1"].user_options["xnatLogin"] == "dave"
    await hub.stop_servers()
    assert json.dumps(hub.app.users["dave"].spawners["dave1"].user_options)  # kept for XNAT's readers
