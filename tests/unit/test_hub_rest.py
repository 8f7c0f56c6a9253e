"""Governance acts on the hub through its REST API only, as the hub service
``xnat-hpc-governance`` with the least scopes (issue 19; :mod:`hub_ext.hub_rest`), in-process:
JupyterHub's own ``MockHub`` (:mod:`tests.fixtures.mockhub`, which registers the service as a site
does) with its in-memory proxy, servers started through the hub's REST API.

What is checked: the client lists every active server with when it started, page by page; it
stops a server through ``DELETE /users/{u}/servers/{name}`` and returns once the hub no longer
lists it — the proxy route is gone and the server's own token no longer opens the hub's API; the
revocation re-check stops a server that way (no private attribute of JupyterHub's, no ``orm``);
a token whose role lacks a scope gets an error naming that scope; a token file that is unset,
missing, open to others or empty is refused naming the setting and the file."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import re
import secrets

import pytest
import pytest_asyncio
from traitlets.config import Config

from hub_ext import hub_rest
from hub_ext.hub_rest import (GOVERNANCE_SCOPES, SERVICE_NAME, GovernanceNotConfigured, HubRestClient,
                              RunningServer, governance_client, read_token, register_governance)
from xnat_hpc_governance.revocation_watch import RevocationWatch
from tests.fixtures.mockhub import mock_hub
from xnat_bridge.errors import PermissionDenied

pytestmark = pytest.mark.asyncio(loop_scope="module")

#: services whose roles each lack one of the governance scopes
LIST_ONLY, NO_DELETE, NO_AUTH_STATE, NOTHING = (secrets.token_hex(16) for _ in range(4))
#: seconds a server of the in-process spawner may take to start or stop on a loaded machine
DEADLINE = 30.0


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    c = Config()
    c.JupyterHub.services = [{"name": "gov-list-only", "api_token": LIST_ONLY},
                             {"name": "gov-no-delete", "api_token": NO_DELETE},
                             {"name": "gov-no-auth-state", "api_token": NO_AUTH_STATE},
                             {"name": "gov-nothing", "api_token": NOTHING}]
    c.JupyterHub.load_roles = [
        {"name": "gov-list-only", "services": ["gov-list-only"], "scopes": ["list:users"]},
        {"name": "gov-no-delete", "services": ["gov-no-delete"], "scopes": ["list:users", "read:servers"]},
        {"name": "gov-no-auth-state", "services": ["gov-no-auth-state"],
         "scopes": ["list:users", "read:servers", "admin:server_state"]}]
    async with mock_hub(c) as h:
        yield h


def client(hub, token: str | None = None, **kw) -> HubRestClient:
    return HubRestClient(hub.base + "api", token or hub.governance_token, **kw)


async def start(hub, user: str, server: str, projects: list[str]) -> str:
    """Start *user*'s *server* through the hub's REST API with the user's own token (so the hub
    adds its proxy route), wait until it is ready; its own hub token."""
    token = hub.personal_token(user)
    path = f"api/users/{user}/servers/{server}" if server else f"api/users/{user}/server"
    code, _, r = await hub.request("POST", path, token=token, body={"projects": projects})
    assert code in (201, 202), r.body
    deadline = asyncio.get_running_loop().time() + DEADLINE
    while asyncio.get_running_loop().time() < deadline:
        spawner = hub.app.users[user].spawners[server]
        if spawner.ready:
            return spawner.api_token
        await asyncio.sleep(0.05)
    raise AssertionError(f"{user}/{server} not ready in {DEADLINE} s")


def route_of(hub, user: str, server: str) -> str:
    return hub.app.users[user].spawners[server].proxy_spec


class Audit:
    """The trail as the re-check writes it: what was recorded."""

    def __init__(self):
        self.records = []

    async def record(self, user, action, outcome, **kw):
        self.records.append((user, action, outcome))


class Ledger:
    """A job ledger without jobs."""

    def add_notice(self, user, text, now=None, *, key=''):  # the user's hub pages: not shown here
        pass

    def ledger_jobs(self, **kw):
        return []


# -- listing ---------------------------------------------------------------------------------

async def test_the_service_is_registered_with_exactly_the_least_scopes(hub):
    from jupyterhub import orm
    from jupyterhub.scopes import get_scopes_for

    service = orm.Service.find(hub.app.db, SERVICE_NAME)
    assert [r.name for r in service.roles] == [SERVICE_NAME]
    assert sorted(service.roles[0].scopes) == sorted(GOVERNANCE_SCOPES)
    granted = get_scopes_for(service)
    # reads records and XNAT tokens, stops servers; never makes users, servers or tokens
    assert {"admin:server_state", "admin:auth_state", "delete:servers"} <= granted
    assert not {"admin:users", "admin:servers", "servers", "tokens", "users", "admin:groups"} & granted


async def test_the_client_lists_every_active_server_page_by_page(hub):
    await start(hub, "lister1", "", ["A"])
    await start(hub, "lister2", "one", ["A"])
    await start(hub, "lister2", "two", ["B"])
    hub.user("idle-lister")  # no server: not listed
    servers = await client(hub, page_size=1).running_servers()  # one user per page
    mine = [s for s in servers if s.user.startswith(("lister", "idle-lister"))]
    assert [(s.user, s.name, s.ready) for s in mine] == [
        ("lister1", "", True), ("lister2", "one", True), ("lister2", "two", True)]
    started = hub.app.users["lister1"].spawners[""].orm_spawner.started
    assert mine[0].started == started.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert await client(hub).running_servers() == servers  # one page: the same
    await hub.stop_servers()


# -- stopping --------------------------------------------------------------------------------

async def test_a_server_stopped_through_the_api_loses_its_route_and_its_token(hub):
    token = await start(hub, "stopper", "s1", ["A"])
    spec = route_of(hub, "stopper", "s1")
    assert spec in hub.app.proxy.routes
    code, doc, _ = await hub.request("GET", "api/user", token=token)
    assert code == 200 and doc["name"] == "stopper"

    await client(hub).stop_server("stopper", "s1")

    assert spec not in hub.app.proxy.routes
    code, _, _ = await hub.request("GET", "api/user", token=token)
    assert code == 403  # the hub deleted the server's token
    assert not hub.app.users["stopper"].spawners["s1"].active
    assert await client(hub).server("stopper", "s1") is None
    # stopping what is not running is no error: the server, the user
    await client(hub).stop_server("stopper", "s1")
    await client(hub).stop_server("nobody-at-all", "")


async def test_the_default_server_is_stopped_at_its_own_address(hub):
    await start(hub, "stopper2", "", ["A"])
    await (await hub_rest.governance_client(hub.app.tornado_settings)).stop_server("stopper2", "")  # from the settings
    assert not hub.app.users["stopper2"].spawners[""].active
    assert route_of(hub, "stopper2", "") not in hub.app.proxy.routes


async def test_the_re_check_stops_through_the_rest_api(hub, caplog):
    """No stop callable handed in: the watch's own stop is the governance client's (the hub logs
    the ``DELETE`` as the service's)."""
    token = await start(hub, "rechecked", "w", ["LOST"])
    spec = route_of(hub, "rechecked", "w")

    async def readable(user):
        return set() if user.name == "rechecked" else None  # every other user: unknown, skipped

    audit = Audit()
    watch = RevocationWatch(hub.app.tornado_settings, permissions=readable, audit_log=audit, ledger=Ledger())
    with caplog.at_level(logging.INFO):
        [(who, project, report)] = await watch.check_once()
    assert (who, project, report.stopped, report.problems) == ("rechecked", "LOST", ["w"], [])
    assert any(r.getMessage().startswith(("202 DELETE", "204 DELETE")) and "/api/users/rechecked/servers/w " in
               r.getMessage() and f"({SERVICE_NAME}@" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records if "DELETE" in r.getMessage()]
    assert ("rechecked", "server_stopped", "allowed") in audit.records
    assert spec not in hub.app.proxy.routes
    assert (await hub.request("GET", "api/user", token=token))[0] == 403


@pytest.fixture
def auth_state(hub):
    """The hub keeps encrypted auth state, as a site's XnatAuthenticator does (JupyterHub's own
    tests' ``auth_state_enabled`` way); undone after the test."""
    from jupyterhub.crypto import CryptKeeper

    keeper = CryptKeeper.instance()
    keys, enabled = keeper.keys, hub.app.authenticator.enable_auth_state
    keeper.keys = [os.urandom(32)]
    hub.app.authenticator.enable_auth_state = True
    yield
    keeper.keys, hub.app.authenticator.enable_auth_state = keys, enabled


async def test_the_re_check_reads_records_and_xnat_tokens_through_the_api_and_asks_xnat_as_the_user(
        hub, auth_state, monkeypatch):
    """What the governance service's process reads: each active server's record (the scope the
    hub decided, from its state) in the list, the user's XNAT alias token from ``GET /users/{u}``
    (the list never carries auth_state); the re-check asks XNAT with that token and stops the
    server whose project is gone."""
    from xnat_hpc_governance import revocation_watch
    from xnat_bridge.spawn_record import SpawnRecord

    await start(hub, "readback", "two", ["A", "B"])
    await hub.app.users["readback"].save_auth_state(
        {"xnat_user": "ReadBack", "xnat_token": {"alias": "alias-rb", "secret": "secret-rb"}})
    [listed] = [u for u in await client(hub).active_users() if u.name == "readback"]
    assert listed.auth_state is None and list(listed.servers) == ["two"]
    assert SpawnRecord.from_state(listed.servers["two"].state).projects == frozenset({"A", "B"})
    full = await client(hub).user("readback")
    assert full.auth_state["xnat_token"] == {"alias": "alias-rb", "secret": "secret-rb"}
    assert await client(hub).user("nobody-by-this-name") is None

    asked = []

    class XnatAsUser:
        def __init__(self, url, account, secret, **kw):
            asked.append((url, account, secret))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    class Permissions:
        roles = {"A": "Member"}  # B is gone

    monkeypatch.setattr(revocation_watch, "XnatClient", XnatAsUser)
    monkeypatch.setattr(revocation_watch, "fetch_permissions",
                        lambda client, login: Permissions() if login == "ReadBack" else None)

    config = copy.deepcopy(hub.config)
    config.XnatAuthenticator.xnat_url = "http://xnat.invalid"
    settings = {"config": config}  # what the service's process has: the configuration, no hub objects
    watch = RevocationWatch(settings, audit_log=Audit(), ledger=Ledger(),
                            hub=revocation_watch.HubSource(settings, client(hub)))

    async def only_readback(user):  # other modules' users of this hub: not asked
        return await watch._readable(user) if user.name == "readback" else None

    watch.permissions = only_readback
    [(who, project, report)] = await watch.check_once()
    assert (who, project, report.stopped) == ("readback", "B", ["two"])
    assert asked == [("http://xnat.invalid", "alias-rb", "secret-rb")]
    assert "two" not in hub.app.users["readback"].spawners or not hub.app.users["readback"].spawners["two"].active


async def test_without_a_scope_for_records_or_xnat_tokens_the_re_check_names_it(hub):
    await start(hub, "unrecorded", "r", ["A"])
    with pytest.raises(PermissionDenied, match="admin:server_state"):
        await client(hub, NO_DELETE).active_users()
    assert [u.name for u in await client(hub, NO_AUTH_STATE).active_users() if u.name == "unrecorded"]
    with pytest.raises(PermissionDenied, match="admin:auth_state"):
        await client(hub, NO_AUTH_STATE).user("unrecorded")
    await hub.stop_servers()


async def test_without_the_service_configured_nothing_is_stopped_and_the_report_says_what_to_add(hub):
    await start(hub, "unconfigured", "u", ["LOST"])
    config = copy.deepcopy(hub.config)
    del config["XnatGovernance"]
    settings = {**hub.app.tornado_settings, "config": config}

    async def readable(user):
        return set() if user.name == "unconfigured" else None

    watch = RevocationWatch(settings, permissions=readable, audit_log=Audit(), ledger=Ledger())
    with pytest.raises(GovernanceNotConfigured, match="c.XnatGovernance.token_file is not set"):
        await watch.check_once()  # nothing read from JupyterHub's objects instead
    assert hub.app.users["unconfigured"].spawners["u"].active  # never stopped behind the API's back
    await hub.stop_servers()


# -- least scopes: each missing scope named ------------------------------------------------------

async def test_a_token_without_a_scope_gets_an_error_naming_it(hub):
    await start(hub, "scoped", "x", ["A"])
    with pytest.raises(PermissionDenied, match="list:users"):
        await client(hub, NOTHING).running_servers()
    with pytest.raises(PermissionDenied, match="read:servers"):
        await client(hub, LIST_ONLY).running_servers()
    assert [s for s in await client(hub, NO_DELETE).running_servers() if s.user == "scoped"] == [
        RunningServer("scoped", "x", (await client(hub).server("scoped", "x")).started, True, None)]
    with pytest.raises(PermissionDenied, match="delete:servers") as refused:
        await client(hub, NO_DELETE).stop_server("scoped", "x")
    assert SERVICE_NAME in refused.value.message and NO_DELETE not in refused.value.message
    assert hub.app.users["scoped"].spawners["x"].active  # refused: still running
    with pytest.raises(PermissionDenied, match="list:users"):
        await client(hub, "not-a-token-the-hub-knows").running_servers()
    await hub.stop_servers()


async def test_an_unreachable_hub_names_the_setting(hub):
    from jupyterhub.utils import random_port

    with pytest.raises(hub_rest.HubApiError, match="c.XnatGovernance.hub_api_url"):
        await HubRestClient(f"http://127.0.0.1:{random_port()}/hub/api", "t", timeout=5).running_servers()


# -- the token file ------------------------------------------------------------------------------

def _settings(hub, **governance) -> dict:
    config = Config()
    for key, value in governance.items():
        setattr(config.XnatGovernance, key, value)
    return {**hub.app.tornado_settings, "config": config}


async def test_the_token_file_is_read_only_when_private(hub, tmp_path):
    with pytest.raises(GovernanceNotConfigured, match="c.XnatGovernance.token_file is not set"):
        await governance_client(_settings(hub))
    missing = tmp_path / "absent"
    says = re.escape(f"c.XnatGovernance.token_file {missing} does not exist")
    with pytest.raises(GovernanceNotConfigured, match=says):
        await governance_client(_settings(hub, token_file=str(missing)))
    readable = tmp_path / "world-readable"
    readable.write_text(hub.governance_token + "\n")
    os.chmod(readable, 0o644)
    with pytest.raises(GovernanceNotConfigured, match=re.escape(f"{readable} is open to group or others")) as refused:
        await governance_client(_settings(hub, token_file=str(readable)))
    assert f"chmod 600 {readable}" in refused.value.message
    assert hub.governance_token not in refused.value.message
    link = tmp_path / "link"
    good = tmp_path / "good"
    good.write_text(hub.governance_token + "\n")
    os.chmod(good, 0o600)
    link.symlink_to(good)
    with pytest.raises(GovernanceNotConfigured, match="symbolic link"):
        await governance_client(_settings(hub, token_file=str(link)))
    empty = tmp_path / "empty"
    empty.write_text("\n")
    os.chmod(empty, 0o600)
    with pytest.raises(GovernanceNotConfigured, match="on one line"):
        read_token(str(empty))
    # the right file, and the hub's own api_url by default (here: the served port, set by mock_hub)
    gov = await governance_client(_settings(hub, token_file=str(good), hub_api_url=hub.base + "api"))
    assert gov.api_url == hub.base.rstrip("/") + "/api" and hub.governance_token not in repr(gov)
    default = await governance_client(_settings(hub, token_file=str(good)))
    assert default.api_url == hub.app.hub.api_url.rstrip("/")


async def test_register_governance_names_the_file_once_and_adds_service_and_role(tmp_path):
    path = tmp_path / "token"
    path.write_text("abc123\n")
    os.chmod(path, 0o600)
    c = Config()
    c.JupyterHub.services = [{"name": "xnat", "api_token": "x" * 32}]
    theirs = c.JupyterHub.services
    c.XnatGovernance.token_file = str(path)
    register_governance(c)
    assert [s["name"] for s in c.JupyterHub.services] == ["xnat", SERVICE_NAME]
    assert c.JupyterHub.services[1]["api_token"] == "abc123" and len(theirs) == 1
    from jupyterhub.app import JupyterHub

    app = JupyterHub(config=c)
    user_role, role = app.load_roles  # every user may open the owners' pages; the service's own role
    assert user_role["name"] == "user" and user_role["scopes"] == ["self", f"access:services!service={SERVICE_NAME}"]
    assert (role["name"], role["services"], role["scopes"]) == (SERVICE_NAME, [SERVICE_NAME], list(GOVERNANCE_SCOPES))
    assert c.JupyterHub.services[1]["url"] == "http://127.0.0.1:981"  # the owners' pages (a privileged port)
    with pytest.raises(GovernanceNotConfigured, match="already holds"):
        register_governance(c)
    with pytest.raises(GovernanceNotConfigured, match="does not exist"):
        register_governance(Config(), str(tmp_path / "absent"))


@pytest.mark.parametrize("value, says", [("hub:8081/hub/api", "must be an http(s) URL"), ])
async def test_a_bad_api_url_is_refused_naming_the_setting(value, says):
    from traitlets import TraitError

    with pytest.raises(TraitError, match=re.escape(f"c.XnatGovernance.hub_api_url {says}")):
        hub_rest.XnatGovernance(hub_api_url=value)
    with pytest.raises(TraitError, match="c.XnatGovernance.stop_timeout must be more than 0"):
        hub_rest.XnatGovernance(stop_timeout=0)


async def test_times_are_utc_to_the_second():
    assert hub_rest.utc_seconds("2026-01-02T03:04:05.678901Z") == "2026-01-02T03:04:05Z"
    assert hub_rest.utc_seconds("2026-01-02T04:04:05+01:00") == "2026-01-02T03:04:05Z"
    assert hub_rest.utc_seconds(None) == "" and hub_rest.utc_seconds("soon") == "soon"
