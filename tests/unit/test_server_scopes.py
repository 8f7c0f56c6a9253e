"""Servers' calls to governance carry custom scopes, not ``users:activity`` (issue 19).

:mod:`hub_ext.server_scopes` defines ``custom:xnat-hpc:audit`` and ``custom:xnat-hpc:jobs``
and makes every server's hub token carry them filtered to the server itself; audit ingestion
and the job ledger take a server's token only with the call's scope for the server the token
is bound to (the digest in its spawn record). Servers already running when a site upgrades
(their record has no ``server_scopes`` marker) are held to what their token was issued,
``users:activity!user``, so their events still arrive.

First the pure parts (the configuration helper, the rule, the record's marker), then the real
handlers in-process: JupyterHub's own ``MockHub`` configured as a site is
(:mod:`tests.fixtures.mockhub`), servers started through JupyterHub's ``User.spawn`` so each
token carries exactly what the hub issued."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest
import pytest_asyncio
from traitlets.config import Config

from hub_ext.audit_log import HubAuditLog
from hub_ext.review_store import ReviewStore
from hub_ext.server_scopes import (
    AUDIT,
    JOBS,
    SERVER_SCOPES,
    ServerScopesConflict,
    check_server_token,
    register_server_scopes,
    required_scope,
    server_token_scopes,
    user_role_scopes,
)
from tests.fixtures.mockhub import mock_hub
from xnat_bridge.errors import InvalidRequest, PermissionDenied
from xnat_bridge.offload import review as rv
from xnat_bridge.scope import Scope
from xnat_bridge.spawn_record import STATE_KEY, SpawnRecord

SERVER_ROLE = ["users:activity!user", "access:servers!server"]  # JupyterHub 5.0 and 6.x
OURS_SERVER = [f"{AUDIT}!server", f"{JOBS}!server"]
OURS_USER = [f"{AUDIT}!user", f"{JOBS}!user"]


# -- the configuration helper --------------------------------------------------------------------
def test_the_scopes_are_named_and_described_as_jupyterhub_takes_them():
    from jupyterhub.scopes import _custom_scope_pattern

    assert list(SERVER_SCOPES) == ["custom:xnat-hpc:audit", "custom:xnat-hpc:jobs"]
    for name, definition in SERVER_SCOPES.items():
        assert _custom_scope_pattern.match(name) and definition["description"].strip()
    assert server_token_scopes(["a", "a", OURS_SERVER[0]]) == ["a", *OURS_SERVER]
    assert user_role_scopes(["self"]) == ["self", *OURS_USER]


def test_register_on_an_empty_config_keeps_what_servers_tokens_carried():
    c = Config()
    register_server_scopes(c)
    assert c.JupyterHub.custom_scopes == SERVER_SCOPES
    assert c.JupyterHub.load_roles == [{"name": "user", "description": c.JupyterHub.load_roles[0]["description"],
                                        "scopes": ["self", *OURS_USER]}]
    assert c.Spawner.server_token_scopes == [*SERVER_ROLE, *OURS_SERVER]
    before = (dict(c.JupyterHub.custom_scopes), list(c.JupyterHub.load_roles), list(c.Spawner.server_token_scopes))
    register_server_scopes(c)  # twice: nothing more
    assert (c.JupyterHub.custom_scopes, c.JupyterHub.load_roles, c.Spawner.server_token_scopes) == before


def test_register_merges_with_the_sites_roles_scopes_and_spawner_sections():
    c = Config()
    c.JupyterHub.custom_scopes = {"custom:site:thing": {"description": "the site's own"}}
    c.JupyterHub.load_roles.append({"name": "xnat", "services": ["xnat"], "scopes": ["admin:users"]})
    c.JupyterHub.load_roles.append({"name": "user", "scopes": ["self", "access:services"]})
    c.XnatSlurmSpawner.server_token_scopes = ["users:activity!user", "access:servers!server",
                                              "read:users:name!user"]
    register_server_scopes(c)
    assert set(c.JupyterHub.custom_scopes) == {"custom:site:thing", AUDIT, JOBS}
    roles = {r["name"]: r for r in c.JupyterHub.load_roles}
    assert roles["xnat"]["scopes"] == ["admin:users"]
    assert roles["user"]["scopes"] == ["self", "access:services", *OURS_USER]
    assert c.XnatSlurmSpawner.server_token_scopes == [*SERVER_ROLE, "read:users:name!user", *OURS_SERVER]
    assert c.Spawner.server_token_scopes == [*SERVER_ROLE, *OURS_SERVER]


def test_the_sites_extra_user_scopes_stay_in_the_user_role():
    c = Config()
    c.JupyterHub.extra_user_scopes = {"access:services", "read:groups"}
    register_server_scopes(c)
    [role] = c.JupyterHub.load_roles
    assert role["scopes"] == ["self", "access:services", "read:groups", *OURS_USER]


def test_a_sites_server_role_and_callable_keep_their_scopes():
    c = Config()
    c.JupyterHub.load_roles = [{"name": "server", "scopes": [*SERVER_ROLE, "read:users:name!user"]}]
    asked = {}

    def site_scopes(spawner):
        return asked.get(spawner)

    c.Spawner.server_token_scopes = site_scopes
    register_server_scopes(c)
    register_server_scopes(c)  # not wrapped twice
    wrapped = c.Spawner.server_token_scopes
    assert asyncio.run(wrapped("gpu")) == [*SERVER_ROLE, "read:users:name!user", *OURS_SERVER]  # empty: the role
    asked["gpu"] = ["users:activity!user", "read:hub"]
    assert asyncio.run(wrapped("gpu")) == ["users:activity!user", "read:hub", *OURS_SERVER]


def test_register_refuses_another_definition_of_its_scopes():
    c = Config()
    c.JupyterHub.custom_scopes = {AUDIT: {"description": "something else"}}
    with pytest.raises(ServerScopesConflict, match="remove the other definition"):
        register_server_scopes(c)


def test_jupyterhub_takes_the_configuration():
    from jupyterhub.app import JupyterHub

    c = Config()
    register_server_scopes(c)
    hub = JupyterHub(config=c)
    assert set(hub.custom_scopes) == {AUDIT, JOBS}
    assert hub.load_roles[0]["scopes"] == ["self", *OURS_USER]


# -- the spawn record's marker and the rule ------------------------------------------------------
def test_the_record_keeps_the_marker_and_reads_older_records_without_it():
    record = SpawnRecord(scope=Scope.of(["CARDIO_ECG"]), token_sha256="a" * 64, server_scopes=(AUDIT, JOBS))
    state = {STATE_KEY: record.to_state()}
    assert SpawnRecord.from_state(json.loads(json.dumps(state))) == record
    older = {STATE_KEY: {k: v for k, v in record.to_state().items() if k != "server_scopes"}}
    assert SpawnRecord.from_state(older).server_scopes == ()
    with pytest.raises(InvalidRequest, match="server_scopes"):
        SpawnRecord.from_state({STATE_KEY: {**record.to_state(), "server_scopes": "custom:xnat-hpc:audit"}})


def test_the_marker_is_what_the_hubs_config_defines():
    assert SpawnRecord.configured_scopes(Config()) == ()
    assert SpawnRecord.configured_scopes(None) == ()
    c = Config()
    c.JupyterHub.custom_scopes = {"custom:site:thing": {"description": "x"}}
    assert SpawnRecord.configured_scopes(c) == ()
    register_server_scopes(c)
    assert SpawnRecord.configured_scopes(c) == (AUDIT, JOBS)
    lazy = Config()
    lazy.JupyterHub.custom_scopes.update(SERVER_SCOPES)
    assert SpawnRecord.configured_scopes(lazy) == (AUDIT, JOBS)


def test_the_rule_by_the_servers_record():
    marked = SpawnRecord(scope=Scope.of(["CARDIO_ECG"]), server_scopes=(AUDIT, JOBS))
    older = SpawnRecord(scope=Scope.of(["CARDIO_ECG"]))
    assert required_scope(AUDIT, "bob", "", marked) == "custom:xnat-hpc:audit!server=bob/"
    assert required_scope(JOBS, "bob", "gpu", marked) == "custom:xnat-hpc:jobs!server=bob/gpu"
    assert required_scope(AUDIT, "bob", "gpu", older) == "users:activity!user=bob"
    assert required_scope(AUDIT, "bob", "gpu", None) == "users:activity!user=bob"
    # a record the hub cannot read says nothing about its age: the scope is required
    assert required_scope(AUDIT, "bob", "gpu", None, unreadable=True) == "custom:xnat-hpc:audit!server=bob/gpu"


def test_a_refusal_names_the_missing_scope_and_the_fix():
    marked = SpawnRecord(scope=Scope.of(["A"]), server_scopes=(AUDIT, JOBS))
    held = {"custom:xnat-hpc:audit!server=bob/gpu", "users:activity!user=bob"}
    assert check_server_token(held.__contains__, AUDIT, "bob", "gpu", lambda: marked, "post") == f"{AUDIT}!server=bob/gpu"
    with pytest.raises(PermissionDenied) as e:
        check_server_token(held.__contains__, JOBS, "bob", "gpu", lambda: marked, "enter jobs")
    assert "custom:xnat-hpc:jobs!server=bob/gpu" in e.value.message and "register_server_scopes" in e.value.message
    with pytest.raises(PermissionDenied, match="users:activity!user=bob"):
        check_server_token(set().__contains__, AUDIT, "bob", "", lambda: None, "post")


# -- in-process: the hub issues the scopes, the handlers require them ----------------------------
in_process = pytest.mark.asyncio(loop_scope="module")
SCOPE = ["CARDIO_ECG"]
FACTS = {"dataset": "ecg", "dataset_version": 1, "manifest_sha256": "a" * 64, "script_sha256": "b" * 64}
SHARE = b"the-hub-share"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    c = Config()
    c.OwnerAccess.recheck_interval = 0  # no XNAT here: no revocation re-check loop
    async with mock_hub(c) as h:
        yield h


class Gov:
    """A fresh audit trail and ledger of one test (the handlers read their paths from the hub's
    config at each request)."""

    def __init__(self, hub, store: ReviewStore, trail: HubAuditLog):
        self.hub, self.store, self.trail = hub, store, trail

    async def events(self, **filters) -> list[dict]:
        return await asyncio.to_thread(self.trail.query, limit=100, **filters)

    async def approved_job(self, server_token: str, job: str) -> None:
        """*job* entered and held by the server of *server_token* (its project marked), then
        approved: its key share is there to fetch."""
        self.store.mark("CARDIO_ECG", "dave", True)
        code, row, _ = await self.hub.request("POST", f"api/xnat-hpc/jobs/{job}", token=server_token, body=FACTS)
        assert code == 201, row
        held = {"results": [{"name": "metrics.json", "size": 12, "sha256": "c" * 64}],
                "share": rv.wrap(SHARE, row["recipient"]), "previews": {}}
        code, doc, _ = await self.hub.request("POST", f"api/xnat-hpc/review/jobs/{job}", token=server_token,
                                              body=held)
        assert code == 201, doc
        self.store.record_decision(row["user"], job, ["CARDIO_ECG"], "dave", "approve")


@pytest_asyncio.fixture(loop_scope="module")
async def gov(hub, tmp_path):
    store_path, trail_path = str(tmp_path / "review" / "review.db"), str(tmp_path / "audit" / "audit.db")
    hub.config.ReviewStore.path = store_path
    hub.config.HubAuditLog.path = trail_path
    hub.config.HubAuditLog.checkpoint_seconds = 3600.0  # no checkpoint timer fires during a test
    g = Gov(hub, ReviewStore(path=store_path), HubAuditLog(path=trail_path))
    # the governance service's process keeps one store and one trail: this test's
    hub.service_app.settings.update(review_store=g.store, audit_log=g.trail)
    try:
        yield g
    finally:
        await hub.stop_servers()
        g.trail.close()
        with ReviewStore._lock:  # the store keeps one connection per file for the process
            db = ReviewStore._dbs.pop(os.path.abspath(store_path), None)
        if db is not None:
            db.close()


def _batch(boot: str) -> dict:
    return {"boot": boot, "events": [{"seq": 1, "action": "download", "items": ["CARDIO_ECG/S1/E1"]}]}


async def _calls(hub, token: str, job: str, approved: str) -> dict[str, tuple[int, str]]:
    """Status and message of each call a server makes to governance with *token*: an audit
    batch, a new *job* entered, reported and held, the key share of the *approved* job."""
    out = {}
    for what, method, path, body in (
            ("audit", "POST", "api/xnat-hpc/audit", _batch(f"b{job[-4:]}")),
            ("enter", "POST", f"api/xnat-hpc/jobs/{job}", FACTS),
            ("report", "PATCH", f"api/xnat-hpc/jobs/{job}", {"state": "running"}),
            ("hold", "POST", f"api/xnat-hpc/review/jobs/{job}", {"results": []}),
            ("share", "GET", f"api/xnat-hpc/review/jobs/{approved}?share=1", None)):
        code, doc, _ = await hub.request(method, path, token=token, body=body)
        out[what] = (code, doc.get("message", "") if code >= 400 else doc)
    return out


async def _scopes(hub, token: str) -> set[str]:
    code, model, _ = await hub.request("GET", "api/user", token=token)
    assert code == 200, model
    return set(model["scopes"])


@in_process
async def test_each_servers_token_carries_the_scopes_for_itself_and_what_it_had(hub, gov):
    default = await hub.start_server("bob", SCOPE)
    gpu = await hub.start_server("bob", SCOPE, server="gpu")
    assert {"custom:xnat-hpc:audit!server=bob/", "custom:xnat-hpc:jobs!server=bob/",
            "access:servers!server=bob/", "users:activity!user=bob"} <= await _scopes(hub, default)
    scopes = await _scopes(hub, gpu)
    assert {"custom:xnat-hpc:audit!server=bob/gpu", "custom:xnat-hpc:jobs!server=bob/gpu"} <= scopes
    assert not {s for s in scopes if s.startswith("custom:") and not s.endswith("!server=bob/gpu")}
    assert hub.user("bob").spawners["gpu"].xnat_record.server_scopes == (AUDIT, JOBS)  # the marker


@in_process
async def test_a_servers_own_token_with_the_scopes_makes_every_call(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    await gov.approved_job(token, "j00000000c000")
    calls = await _calls(hub, token, "j00000000c001", "j00000000c000")
    assert (calls["audit"][0], calls["enter"][0], calls["report"][0]) == (200, 201, 200), calls
    # past the token check: this registration lacks its share
    assert calls["hold"][0] == 400 and "share" in calls["hold"][1]
    assert calls["share"][0] == 200 and base64.b64decode(calls["share"][1]["share"]) == SHARE
    assert [(e["server"], e["source"]) for e in await gov.events(user="bob", actions={"download"})] == [
        ("", "server")]


@in_process
async def test_a_token_without_the_custom_scope_bound_to_a_scoped_server_is_refused(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    await gov.approved_job(token, "j00000000c000")
    # bob's own token with what servers' tokens held before (users:activity), bound to the server
    bare = hub.user("bob").new_api_token(note="bare", scopes=["users:activity!user", "access:servers!server=bob/"])
    hub.bind_token("bob", "", bare)
    calls = await _calls(hub, bare, "j00000000c002", "j00000000c000")
    assert calls["audit"][0] == 403 and "custom:xnat-hpc:audit!server=bob/" in calls["audit"][1]
    for what in ("enter", "report", "hold", "share"):
        assert calls[what][0] == 403 and "custom:xnat-hpc:jobs!server=bob/" in calls[what][1], (what, calls[what])
    assert await gov.events(user="bob", actions={"download"}) == []
    assert await gov.events(actions={"key_release"}) == []
    assert gov.store.ledger_jobs() == [gov.store.ledger_job("bob", "j00000000c000")]


@in_process
async def test_another_servers_scopes_do_not_serve_this_server(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    await hub.start_server("bob", SCOPE, server="gpu")
    await gov.approved_job(token, "j00000000c000")
    other = hub.user("bob").new_api_token(note="gpu's scopes", scopes=[
        "users:activity!user", f"{AUDIT}!server=bob/gpu", f"{JOBS}!server=bob/gpu"])
    hub.bind_token("bob", "", other)
    calls = await _calls(hub, other, "j00000000c003", "j00000000c000")
    assert calls["audit"][0] == 403 and "custom:xnat-hpc:audit!server=bob/" in calls["audit"][1]
    for what in ("enter", "report", "hold", "share"):
        assert calls[what][0] == 403 and "custom:xnat-hpc:jobs!server=bob/" in calls[what][1], (what, calls[what])


@in_process
async def test_a_server_running_before_the_upgrade_still_posts(hub, gov):
    token = await hub.start_server("bob", SCOPE, before_scopes=True)
    scopes = await _scopes(hub, token)
    assert "users:activity!user=bob" in scopes and not {s for s in scopes if s.startswith("custom:")}
    assert hub.user("bob").spawners[""].xnat_record.server_scopes == ()  # no marker
    await gov.approved_job(token, "j00000000c000")
    calls = await _calls(hub, token, "j00000000c004", "j00000000c000")
    assert (calls["audit"][0], calls["enter"][0], calls["report"][0], calls["share"][0]) == (200, 201, 200, 200)
    assert len(await gov.events(user="bob", actions={"download"})) == 1


@in_process
async def test_personal_tokens_cookies_and_other_users_stay_refused(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    await gov.approved_job(token, "j00000000c000")
    # bob's personal token holds what bob holds: the custom scopes too, for all his servers (!user)
    personal = hub.personal_token("bob")
    assert {f"{AUDIT}!user=bob", f"{JOBS}!user=bob"} <= await _scopes(hub, personal)
    calls = await _calls(hub, personal, "j00000000c005", "j00000000c000")
    assert all(code == 403 and "only a running server's own hub token" in msg for code, msg in calls.values()), calls
    assert await gov.events(actions={"key_release"}) == []
    # alice's server token is bound to alice's server: what it posts is alice's, never bob's
    alice = await hub.start_server("alice", SCOPE)
    code, _, _ = await hub.request("POST", "api/xnat-hpc/audit", token=alice, body=_batch("alice1"))
    assert code == 200 and await gov.events(user="bob", actions={"download"}) == []
    assert [e["user"] for e in await gov.events(actions={"download"})] == ["alice"]
    # a browser's login cookie is no token
    cookie = {"Cookie": await hub.login_cookie("bob"), "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site": "same-origin"}
    code, _, _ = await hub.request("POST", "api/xnat-hpc/audit", body=_batch("cookie1"), headers=cookie)
    assert code == 403
