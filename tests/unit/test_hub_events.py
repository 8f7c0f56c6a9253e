"""The hub's own events (logins, spawns) reach the trail through the governance service
(:mod:`hub_ext.hub_events`: a durable outbox beside the store, sent over the service's Unix
socket with the service's token; :class:`xnat_hpc_governance.server_api.HubEventsHandler`), in
this process against JupyterHub's ``MockHub`` and the service's application on its socket."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio
from traitlets.config import Config

from hub_ext.hub_events import ROUTE, HubEventLog, SocketSender, outbox_of, sender_of
from tests.fixtures.mockhub import mock_hub
from xnat_hpc_governance.server_api import hub_records
from xnat_bridge.errors import InvalidRequest

in_process = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub():
    async with mock_hub(Config()) as h:
        yield h


def trail(hub, user: str) -> list[dict]:
    return hub.service_app.settings["audit_log"].query(user={user}, limit=100)


def route(hub) -> str:
    return ROUTE


@in_process
async def test_a_hub_event_is_kept_then_appended_by_the_service_once(hub):
    log = HubEventLog(config=hub.config)
    seq = await log.record("evt-carol", "login", "denied", detail="wrong password")
    box = outbox_of(hub.config)
    assert seq >= 1 and box.path.parent.name == "hub-outbox"
    assert (box.path.stat().st_mode & 0o077) == 0  # the hub's account only
    sender = sender_of(hub.config)
    await asyncio.to_thread(sender.send_once)  # what the sender's thread does when woken
    [event] = await asyncio.to_thread(trail, hub, "evt-carol")
    assert (event["action"], event["outcome"], event["detail"], event["source"]) == (
        "login", "denied", "wrong password", "hub")
    assert event["event_time"] and event["stream"].startswith("hub:")
    assert box.acked() >= seq and box.pending()[1] == []
    # the same batch again (a reply lost on the way): appended once
    boot = event["stream"][len("hub:"):]
    again = {**{k: event[k] for k in ("user", "action", "outcome", "items", "detail", "server")},
             "seq": event["stream_seq"], "time": event["event_time"]}
    status, _, text = await asyncio.to_thread(sender.post, {"boot": boot, "events": [again]})
    assert status == 200 and json.loads(text)["acked"] == event["stream_seq"]
    assert len(await asyncio.to_thread(trail, hub, "evt-carol")) == 1


@in_process
async def test_while_the_service_is_away_the_events_wait_and_then_arrive_in_order(hub, tmp_path):
    box = outbox_of(hub.config)
    gone = SocketSender(box, str(tmp_path / "no-service.sock"), route(hub), hub.governance_token)
    log = HubEventLog(config=hub.config)
    for i in range(3):
        await log.record("evt-dave", "spawn", "allowed", items=["CARDIO_ECG"], detail=f"start {i}")
    with pytest.raises(RuntimeError, match="not answering"):
        await asyncio.to_thread(gone.send_once)
    sender = sender_of(hub.config)
    await asyncio.to_thread(sender.send_once)
    events = sorted(await asyncio.to_thread(trail, hub, "evt-dave"), key=lambda e: e["seq"])
    assert [e["detail"] for e in events] == ["start 0", "start 1", "start 2"]
    assert all(e["items"] == ["CARDIO_ECG"] for e in events)


@in_process
async def test_only_the_hub_posts_its_events(hub):
    """A researcher's server (its own token, over the hub's relay or the socket) cannot write
    events as the hub: the relay does not pass the route on, the service takes only its token."""
    token = await hub.start_server("evt-mallory", ["CARDIO_ECG"])
    body = {"boot": "forged", "events": [{"user": "evt-alice", "action": "login", "outcome": "allowed",
                                          "seq": 1, "time": "2026-12-07T00:00:00.000Z"}]}
    for relayed in ("api/xnat-hpc/hub-events", "api/xnat-hpc/../../xnat-hpc-hub-events"):
        code, _, _ = await hub.request("POST", relayed, token=token, body=body)
        assert code == 404
    box = outbox_of(hub.config)
    for stranger in (token, "", hub.governance_token + "x"):
        forged = SocketSender(box, hub.config.XnatGovernance.service_socket, route(hub), stranger)
        status, _, text = await asyncio.to_thread(forged.post, body)
        assert status == 403 and "only the hub" in text
    assert await asyncio.to_thread(trail, hub, "evt-alice") == []
    await hub.stop_servers()


def test_a_batch_that_is_not_the_hubs_events_is_refused_naming_it():
    good = {"user": "u", "action": "login", "outcome": "allowed", "seq": 1, "time": "2026-12-07T00:00:00Z"}
    assert hub_records("b", [good])[0]["stream"] == "hub:b"
    for bad, says in (({**good, "action": "steal"}, "event 0"), ({**good, "seq": 0}, "event 0"),
                      ({k: v for k, v in good.items() if k != "user"}, "event 0")):
        with pytest.raises(InvalidRequest, match=says):
            hub_records("b", [bad])
    with pytest.raises(InvalidRequest, match="at most"):
        hub_records("b", [good] * 1001)
    with pytest.raises(InvalidRequest, match="boot"):
        hub_records("", [good])
