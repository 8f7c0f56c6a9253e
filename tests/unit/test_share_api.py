"""Sharing a server with members of its projects (issue 22, part 2), in-process: JupyterHub's
own ``MockHub`` (its real shares API) with the governance service's real handlers; XNAT's
answer (which projects a user reads) is the test's table.

A share is made by governance only for a guest who reads every project of the server's scope,
through the hub's own ``POST /hub/api/shares/{owner}/{server}``; the researcher cannot share
with their server's token directly (users hold no ``shares`` scope), nor name another server;
the open check refuses and ends a share whose guest lost a project; every step audited."""

from __future__ import annotations

import asyncio
import os

import pytest
import pytest_asyncio

from hub_ext.audit_log import HubAuditLog
from hub_ext.review_store import ReviewStore
from tests.fixtures.mockhub import mock_hub

pytestmark = pytest.mark.asyncio(loop_scope="module")

SCOPE = ["CARDIO_ECG", "NEURO_MRI"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    async with mock_hub() as h:
        yield h


class Gov:
    def __init__(self, hub, trail, readable):
        self.hub, self.trail, self.readable = hub, trail, readable

    async def call(self, method, path, token=None, body=None):
        code, doc, _ = await self.hub.request(method, f"api/xnat-hpc/{path}", token=token, body=body)
        return code, doc

    async def hub_shares(self, owner, server=""):
        code, doc, _ = await self.hub.request("GET", f"api/shares/{owner}/{server}",
                                              token=self.hub.personal_token(owner))
        assert code == 200, doc
        return sorted(s["user"]["name"] for s in doc["items"])

    async def events(self, **filters):
        return await asyncio.to_thread(self.trail.query, limit=1000, **filters)


@pytest_asyncio.fixture(loop_scope="module")
async def gov(hub, tmp_path):
    store_path, trail_path = str(tmp_path / "review" / "review.db"), str(tmp_path / "audit" / "audit.db")
    hub.config.ReviewStore.path = store_path
    hub.config.HubAuditLog.path = trail_path
    hub.config.HubAuditLog.checkpoint_seconds = 3600.0
    trail = HubAuditLog(path=trail_path)
    readable = {"dave": {"CARDIO_ECG", "NEURO_MRI", "SLEEP_EEG"}, "alice": {"NEURO_MRI"}, "erin": {"CARDIO_ECG", "NEURO_MRI"}}

    async def permissions(user):
        return readable.get(user.name, set())

    watch = hub.service_app.settings["watch"]
    kept = watch.permissions
    watch.permissions = permissions
    hub.service_app.settings.update(audit_log=trail, review_store=ReviewStore(path=store_path))
    for name in ("dave", "alice", "erin"):
        hub.user(name)
    try:
        yield Gov(hub, trail, readable)
    finally:
        watch.permissions = kept
        for user in list(hub.app.users.values()):  # JupyterHub keeps a server's shares across its stops
            for name in list(user.spawners):
                await hub.request("DELETE", f"api/shares/{user.name}/{name}", token=hub.governance_token)
        await hub.stop_servers()
        trail.close()
        with ReviewStore._lock:
            db = ReviewStore._dbs.pop(os.path.abspath(store_path), None)
        if db is not None:
            db.close()


async def test_a_server_is_shared_only_with_who_reads_every_project_of_its_scope(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    code, doc = await gov.call("POST", "shares", token, {"user": "dave"})
    assert code == 201, doc
    assert (doc["user"], doc["server"], doc["projects"]) == ("dave", "", SCOPE)
    # JupyterHub's own share, made through its API
    assert await gov.hub_shares("bob") == ["dave"]
    # alice reads NEURO_MRI only: refused, naming the project she lacks; nothing shared
    code, doc = await gov.call("POST", "shares", token, {"user": "alice"})
    assert code == 403 and "alice may not read CARDIO_ECG in XNAT" in doc["message"], doc
    assert await gov.hub_shares("bob") == ["dave"]
    # a user the hub does not know, the owner, a name with a slash, extra fields
    for body, code_, said in [({"user": "nobody"}, 404, "no user nobody"), ({"user": "bob"}, 400, "its own user"),
                              ({"user": "a/b"}, 400, "not a hub user's name"),
                              ({"user": "dave", "server": "other"}, 400, "the body must be")]:
        code, doc = await gov.call("POST", "shares", token, body)
        assert code == code_ and said in doc["message"], (body, doc)
    code, doc = await gov.call("GET", "shares", token)
    assert code == 200 and [s["user"] for s in doc["shares"]] == ["dave"]
    events = await gov.events(user="bob", actions={"share"})
    assert [(e["outcome"], e["extra"]["guest"]) for e in reversed(events)][:2] == [("allowed", "dave"), ("denied", "alice")]
    assert all(e["items"] == SCOPE for e in events)


async def test_the_researcher_cannot_share_around_governance(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    other = await hub.start_server("bob", ["SLEEP_EEG"], server="eeg")
    # the server's own token and a personal token of bob's: no `shares` scope, the hub refuses
    for t in (token, hub.personal_token("bob")):
        code, doc, _ = await hub.request("POST", "api/shares/bob/", token=t, body={"user": "alice"})
        assert code == 403, doc
    # the eeg server's token shares the eeg server, never the default one
    code, doc = await gov.call("POST", "shares", other, {"user": "dave"})
    assert code == 201 and doc["server"] == "eeg"
    assert await gov.hub_shares("bob", "") == [] and await gov.hub_shares("bob", "eeg") == ["dave"]
    # a personal token cannot use governance's sharing either
    code, doc = await gov.call("POST", "shares", hub.personal_token("bob"), {"user": "dave"})
    assert code == 403 and "only a running server's own hub token" in doc["message"]


async def test_the_open_check_refuses_and_ends_a_share_whose_guest_lost_a_project(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    assert (await gov.call("POST", "shares", token, {"user": "erin"}))[0] == 201
    code, doc = await gov.call("GET", "shares/erin", token)
    assert code == 200 and doc["allowed"] and not doc["owner"]
    assert (await gov.call("GET", "shares/bob", token))[1]["owner"]
    code, doc = await gov.call("GET", "shares/alice", token)  # never shared with alice
    assert code == 403 and "bob's server (default) is not shared with alice" in doc["message"]
    gov.readable["erin"] = {"CARDIO_ECG"}  # an owner removed erin from NEURO_MRI in XNAT
    code, doc = await gov.call("GET", "shares/erin", token)
    assert code == 403 and "erin may no longer read NEURO_MRI" in doc["message"]
    assert await gov.hub_shares("bob") == []
    [ended] = await gov.events(user="bob", actions={"unshare"})
    assert ended["extra"] == {"server": "", "guest": "erin", "by": "open check"}


async def test_the_owner_of_the_server_ends_a_share(hub, gov):
    token = await hub.start_server("bob", SCOPE)
    assert (await gov.call("POST", "shares", token, {"user": "dave"}))[0] == 201
    code, _ = await gov.call("DELETE", "shares/dave", token)
    assert code == 204
    assert await gov.hub_shares("bob") == []
    [ended] = await gov.events(user="bob", actions={"unshare"})
    assert ended["extra"]["by"] == "bob"
