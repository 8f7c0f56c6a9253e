"""Audit ingestion against the researcher (issue 19, finding 5): what a server posts about
projects outside the scope the hub gave it is kept as its claim, never filed under those
projects; each server has a budget of events and bytes a minute (429 + Retry-After, nothing
appended) and a batch size limit (413 naming it); the server's sender waits and resends in
order. The limits run on an injected clock: no test sleeps.

The last test drives the real handler in-process: JupyterHub's own ``MockHub`` (initialised,
not started: no proxy, no spawner process), our route, a user whose server the test marks
running with a token and a scope record."""

from __future__ import annotations

import asyncio
import json
import logging
import types

import pytest
from tornado import web
from traitlets import Any
from traitlets.config import Config

from hub_ext import audit_store
from xnat_hpc_governance.audit_api import (
    MAX_BATCH_BYTES,
    SETTINGS_KEY,
    AuditIngest,
    BatchTooLarge,
    apply_scope,
    ensure_ingest,
    parse_batch,
)
from hub_ext.audit_store import AuditStore
from hub_ext.errors import RateLimited, http_error
from xnat_bridge.audit import make_event
from xnat_bridge.audit_outbox import HubBusy, Outbox, Sender, retry_after_seconds
from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope
from xnat_bridge.spawn_record import STATE_KEY, SpawnRecord

CARDIO = frozenset({"CARDIO_ECG"})


class Clock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ingest(clock: Clock | None = None, **limits) -> AuditIngest:
    c = Config()
    for name, value in limits.items():
        setattr(c.AuditIngest, name, value)
    ingest = AuditIngest(config=c, log=logging.getLogger("test.ingest"))
    ingest.clock = clock or Clock()
    return ingest


def _ev(seq, action="download", items=("CARDIO_ECG/S1/E1",), **kw):
    return {"seq": seq, "action": action, "outcome": "allowed", "items": list(items), **kw}


def _body(events, boot="b1") -> bytes:
    return json.dumps({"boot": boot, "events": events}).encode()


def _batch(first: int, n: int, **kw) -> bytes:
    return _body([_ev(first + i, **kw) for i in range(n)])


# -- rate: a token bucket per server, on the injected clock -------------------------------------
def test_a_burst_of_2000_events_is_cut_at_the_minutes_budget_with_retry_after():
    clock = Clock()
    ingest = _ingest(clock)  # defaults: 1200 events a minute
    taken, refused = 0, []
    for first in range(1, 2001, 500):
        try:
            taken += len(ingest.check(_batch(first, 500), "bob", "", CARDIO)[0])
        except RateLimited as e:
            refused.append(e)
    assert taken == 1000 and len(refused) == 2  # 1200 in the bucket: the third batch of 500 does not fit
    e = refused[0]
    assert e.status == 429 and e.retry_after == 15  # 300 events short, 20 a second
    assert e.headers == {"Retry-After": "15"} and "1200 events" in e.message and "nothing" in e.message
    clock.now += 14
    with pytest.raises(RateLimited) as again:
        ingest.check(_batch(1001, 500), "bob", "", CARDIO)
    assert again.value.retry_after == 1  # a refusal took nothing: one more second is enough
    clock.now += 1
    assert len(ingest.check(_batch(1001, 500), "bob", "", CARDIO)[0]) == 500


def test_buckets_are_per_server_and_refill_evenly():
    clock = Clock()
    ingest = _ingest(clock, max_events_per_minute=60)
    ingest.check(_batch(1, 60), "bob", "", CARDIO)
    with pytest.raises(RateLimited) as e:
        ingest.check(_batch(61, 1), "bob", "", CARDIO)
    assert e.value.retry_after == 1
    assert ingest.check(_batch(1, 60), "bob", "gpu", CARDIO)[0]  # bob's other server: its own budget
    assert ingest.check(_batch(1, 60), "carol", "", CARDIO)[0]
    clock.now += 10
    assert len(ingest.check(_batch(61, 10), "bob", "", CARDIO)[0]) == 10


def test_bytes_have_a_budget_too():
    clock = Clock()
    ingest = _ingest(clock, max_bytes_per_minute=100_000, max_batch_bytes=50_000)
    big = _ev(1, detail="x" * 400, items=[f"CARDIO_ECG/S{i}/E{i}" for i in range(900)])
    body = _body([big])
    assert 20_000 < len(body) < 50_000
    sent = 0
    with pytest.raises(RateLimited) as e:
        for seq in range(1, 10):
            ingest.check(_body([{**big, "seq": seq}]), "bob", "", CARDIO)
            sent += len(body)
    assert sent <= 100_000 and "bytes a minute" in e.value.message and e.value.retry_after >= 1


def test_a_1mb_batch_is_refused_with_the_limit_named():
    body = _body([_ev(1, detail="d", items=[f"CARDIO_ECG/S{i}/" + "x" * 400 for i in range(1000)]),
                  _ev(2, items=[f"CARDIO_ECG/S{i}/" + "y" * 400 for i in range(1000)])])
    assert len(body) > 800_000
    ingest = _ingest()
    with pytest.raises(BatchTooLarge) as e:
        ingest.check(body, "bob", "", CARDIO)
    assert e.value.status == 413 and str(MAX_BATCH_BYTES) in e.value.message
    assert "c.AuditIngest.max_batch_bytes" in e.value.message
    # nothing was taken from the budget for it
    assert ingest.check(_batch(1, 500), "bob", "", CARDIO)[0]
    # and a batch with more events than a minute allows: 413 too, saying how many to send
    with pytest.raises(BatchTooLarge, match="at most 100 at a time"):
        _ingest(max_events_per_minute=100).check(_batch(1, 101), "bob", "", CARDIO)


def test_limits_are_configurable_traits_with_help_and_checked():
    for name in ("max_events_per_minute", "max_bytes_per_minute", "max_batch_bytes"):
        trait = AuditIngest.class_traits()[name]
        assert trait.metadata.get("config") and "Example" in trait.help
    from traitlets import TraitError

    with pytest.raises(TraitError, match="at least 1"):
        _ingest(max_events_per_minute=0)


def test_the_rate_error_maps_to_429_with_retry_after():
    err = http_error(RateLimited("slow down", retry_after=7.2))
    assert isinstance(err, web.HTTPError) and err.status_code == 429
    assert err.headers == {"Retry-After": "7"} and err.log_message == "slow down"
    assert http_error(BatchTooLarge("too big")).status_code == 413


# -- scope: what is outside it is the server's claim ---------------------------------------------
def test_out_of_scope_items_become_claims_and_in_scope_events_are_unchanged():
    body = _body([_ev(1), _ev(2, items=["SLEEP_EEG/S9/E9", "CARDIO_ECG/S1"], extra={"slurm_job_id": "4242"}),
                  _ev(3, action="permission_denied", outcome="denied", items=["SLEEP_EEG/S9"]),
                  _ev(4, action="spawn", items=["CARDIO_ECG"])])
    records, warnings = _ingest().check(body, "bob", "", CARDIO)
    plain = parse_batch(body, "bob", "")[1]
    assert records[0] == plain[0]  # in scope: exactly what parse_batch made
    assert records[1]["items"] == ["CARDIO_ECG/S1"] and records[1]["source"] == "server"
    assert records[1]["extra"] == {"slurm_job_id": "4242", "claimed_items": ["SLEEP_EEG/S9/E9"],
                                   "out_of_scope": True}
    # a denial outside the scope is still recorded, as the server's claim
    assert records[2]["items"] == [] and records[2]["outcome"] == "denied"
    assert records[2]["extra"]["claimed_items"] == ["SLEEP_EEG/S9"]
    # an action only the hub records: every item is a claim
    assert records[3]["items"] == [] and records[3]["extra"]["claimed_items"] == ["CARDIO_ECG"]
    assert any("3 event(s)" in w and "CARDIO_ECG" in w for w in warnings)


def test_a_server_cannot_write_the_hubs_claim_fields():
    body = _body([_ev(1, extra={"out_of_scope": False, "claimed_items": [], "job": "j1"})])
    boot, records, warnings = parse_batch(body, "bob", "")
    assert records[0]["extra"] == {"job": "j1"} and "only the hub" in warnings[0]


def test_apply_scope_keeps_order_and_is_pure():
    recs = [{"action": "download", "items": ["B/1", "A/1", "B/2"], "extra": {}}]
    out, changed = apply_scope(recs, frozenset({"A"}))
    assert changed == 1 and out[0]["items"] == ["A/1"] and out[0]["extra"]["claimed_items"] == ["B/1", "B/2"]
    assert recs[0]["items"] == ["B/1", "A/1", "B/2"]  # the input is not changed


def test_claims_never_reach_another_projects_queries(tmp_path):
    body = _body([_ev(1, items=["SLEEP_EEG/S1/E1"], extra={"slurm_job_id": "999"}), _ev(2, action="submit")])
    records, _ = _ingest().check(body, "bob", "", CARDIO)
    store = AuditStore(tmp_path / "a" / "audit.db", tmp_path / "a" / "audit.key")
    assert store.append(records) == [1, 2]
    db = audit_store.open_readonly(store.path)
    try:
        assert audit_store.query(db, projects={"SLEEP_EEG"}) == []
        assert audit_store.count(db, projects={"SLEEP_EEG"}) == 0
        assert [e["seq"] for e in audit_store.query(db, projects={"CARDIO_ECG"})] == [2]
        kept = audit_store.query(db, user="bob", actions={"download"})  # still in bob's trail
        assert kept[0]["extra"]["claimed_items"] == ["SLEEP_EEG/S1/E1"] and kept[0]["extra"]["out_of_scope"]
    finally:
        db.close()
    store.checkpoint()
    assert audit_store.verify_store(store.path, store.key).ok
    store.close()


class _Spawner:
    def __init__(self, state):
        self.state = state

    def get_state(self):
        return self.state


def test_the_scope_comes_from_the_spawn_record_and_a_missing_one_is_warned_once(caplog):
    ingest = _ingest()
    record = SpawnRecord(scope=Scope.of(["CARDIO_ECG", "NEURO_MRI"]), profile="local-small")
    def reader(state):
        return lambda: SpawnRecord.from_state(state)

    assert ingest.scope_of("bob", "", reader({STATE_KEY: record.to_state()})) == {"CARDIO_ECG", "NEURO_MRI"}
    with caplog.at_level(logging.WARNING, logger="test.ingest"):
        assert ingest.scope_of("bob", "old", reader({"pid": 7})) == frozenset()
        assert ingest.scope_of("bob", "old", reader({"pid": 7})) == frozenset()
        assert ingest.scope_of("bob", "bad", reader({STATE_KEY: {"v": 99}})) == frozenset()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "bob/old" in m]) == 1 and "started before" in said[0]
    assert any("bob/bad" in m and "version" in m for m in said)


def test_the_ingest_state_lives_in_the_hubs_settings():
    c = Config()
    c.AuditIngest.max_events_per_minute = 77
    settings = {"config": c}
    ingest = ensure_ingest(settings)
    assert settings[SETTINGS_KEY] is ingest and ensure_ingest(settings) is ingest
    assert ingest.max_events_per_minute == 77 and ensure_ingest({"config": c}) is not ingest


def test_parse_batch_alone_still_refuses_bad_batches():
    with pytest.raises(InvalidRequest, match="1 to 500"):
        parse_batch(_body([]), "bob", "")


# -- the server's sender: 429 means wait and resend, in order -------------------------------------
class _Hub:
    """Answers the sender's POSTs from a script of (status, headers); records what was sent."""

    def __init__(self, script):
        self.script, self.batches = list(script), []

    def post(self, url, json=None, **kw):
        self.batches.append([e["seq"] for e in json["events"]])
        status, headers = self.script.pop(0) if self.script else (200, {})
        acked = json["events"][-1]["seq"]
        text = f'{{"acked": {acked}}}' if status == 200 else f"HTTP {status}"
        return types.SimpleNamespace(status_code=status, headers=headers, text=text,
                                     json=lambda: {"acked": acked})


def _sender(tmp_path, monkeypatch, script, n=5) -> tuple[Sender, Outbox, _Hub]:
    import requests

    box = Outbox(tmp_path / "ws")
    for i in range(n):
        box.append(make_event("bob", "download", items=[f"CARDIO_ECG/q{i}"], detail=f"e{i}").to_dict())
    hub = _Hub(script)
    monkeypatch.setattr(requests, "post", hub.post)
    return Sender(box, "http://hub/hub/api", "tok"), box, hub


def test_a_429_keeps_every_event_and_the_sender_waits_the_hubs_time(tmp_path, monkeypatch):
    sender, box, hub = _sender(tmp_path, monkeypatch, [(429, {"Retry-After": "17"})])
    with pytest.raises(HubBusy) as e:
        sender.send_once()
    assert e.value.retry_after == 17 and sender.wait_after(e.value) == 17
    assert [ev["seq"] for ev in box.pending()[1]] == [1, 2, 3, 4, 5] and box.acked() == 0
    assert sender.send_once() == 5 and hub.batches == [[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]
    assert box.pending()[1] == []
    sender.max_retry_after = 60
    assert sender.wait_after(HubBusy("x", 3600)) == 60 and sender.wait_after(HubBusy("x", None)) == 1.0
    assert retry_after_seconds("Thu, 01 Jan 1970 00:01:40 GMT", now=40.0) == 60.0
    assert retry_after_seconds("soon") is None and retry_after_seconds("0") == 0.0


def test_a_413_halves_the_batches_in_order(tmp_path, monkeypatch):
    sender, box, hub = _sender(tmp_path, monkeypatch, [(413, {})], n=6)
    assert sender.send_once() == 6
    assert hub.batches == [[1, 2, 3, 4, 5, 6], [1, 2, 3], [4, 5, 6]] and sender.batch == 3


def test_the_sender_keeps_batches_under_its_byte_budget(tmp_path, monkeypatch):
    sender, box, hub = _sender(tmp_path, monkeypatch, [], n=6)
    size = len(json.dumps(box.pending()[1][0]))
    sender.max_batch_bytes = 2 * size + 120
    assert sender.send_once() == 6
    assert hub.batches == [[1, 2], [3, 4], [5, 6]]


# -- the handler itself, in-process (JupyterHub's MockHub and the governance service's app) ------
async def test_the_service_files_claims_limits_and_answers_429_through_the_hubs_address(tmp_path):
    """A server posts to the hub's address; the hub passes the call on to the governance
    service's application (tests.fixtures.mockhub), which identifies the server with the hub
    and files, limits and answers."""
    from hub_ext.audit_log import HubAuditLog
    from tests.fixtures.mockhub import mock_hub

    c = Config()
    c.HubAuditLog.path = str(tmp_path / "audit" / "audit.db")
    c.AuditIngest.max_events_per_minute = 3
    async with mock_hub(c) as hub:
        trail = HubAuditLog(config=hub.config)
        hub.service_app.settings["audit_log"] = trail
        clock = Clock()
        ensure_ingest(hub.service_app.settings).clock = clock
        bob = await hub.start_server("bob", ["CARDIO_ECG"])
        carol = await hub.start_server("carol", None)  # no scope record: no token digest either

        async def post(token, body):
            code, doc, r = await hub.request("POST", "api/xnat-hpc/audit", token=token, body=body)
            return code, doc, r

        code, doc, _ = await post(bob, _body([_ev(1, items=["SLEEP_EEG/S1/E1"], extra={"slurm_job_id": "31337"}),
                                              _ev(2, action="submit")]))
        assert code == 200 and doc == {"acked": 2, "appended": 2, "duplicates": 0}
        code, doc, r = await post(bob, _body([_ev(3), _ev(4)]))  # 2 + 2 > 3 a minute
        assert code == 429 and r.headers["Retry-After"] == "20" and "max_events_per_minute" in doc["message"]
        code, doc, _ = await post(carol, _body([_ev(1, items=["CARDIO_ECG/S1"])]))
        assert code == 403 and "own hub token" in doc["message"]  # nothing binds the token to a server
        code, doc, _ = await post(bob, b"x" * (MAX_BATCH_BYTES + 1))
        assert code == 413 and "max_batch_bytes" in doc["message"]
        clock.now += 20
        code, doc, _ = await post(bob, _body([_ev(3), _ev(4)]))
        assert code == 200 and doc["appended"] == 2

        events = await asyncio.to_thread(trail.query, limit=100)
        assert [(e["user"], e["stream_seq"]) for e in reversed(events)] == [
            ("bob", 1), ("bob", 2), ("bob", 3), ("bob", 4)]
        assert await asyncio.to_thread(trail.query, projects={"SLEEP_EEG"}) == []  # a claim only
        cardio = await asyncio.to_thread(trail.query, projects={"CARDIO_ECG"})
        assert {(e["user"], e["stream_seq"]) for e in cardio} == {("bob", 2), ("bob", 3), ("bob", 4)}
        claim = next(e for e in events if e["stream_seq"] == 1)
        assert claim["items"] == [] and claim["extra"]["claimed_items"] == ["SLEEP_EEG/S1/E1"]
        assert trail.verify()[0]
        trail.close()


async def test_a_call_while_the_service_is_away_is_a_503_with_retry_after():
    """The hub passes calls on; when nothing answers on c.XnatGovernance.service_socket (the hub
    is restarting the service), the server's outbox is told to try again later."""
    import os

    from tests.fixtures.mockhub import mock_hub

    async with mock_hub() as hub:
        bob = await hub.start_server("bob", ["CARDIO_ECG"])
        hub.config.XnatGovernance.service_socket = os.path.dirname(hub.config.XnatGovernance.token_file) + "/gone.sock"
        code, doc, r = await hub.request("POST", "api/xnat-hpc/audit", token=bob, body=_body([_ev(1)]))
        assert code == 503 and r.headers["Retry-After"] == "5" and "not answering" in doc["message"]
        assert retry_after_seconds(r.headers["Retry-After"]) == 5.0
        hub.config.XnatGovernance.token_file = ""  # a hub without the service: the answer says so
        code, doc, r = await hub.request("POST", "api/xnat-hpc/audit", token=bob, body=_body([_ev(1)]))
        assert code == 503 and "not configured on this hub" in doc["message"]


# -- the owner page: a server's facts are labelled as its report ------------------------------
def test_the_owner_page_labels_what_the_server_reported():
    from xnat_hpc_governance import owner_render as R

    submit = {"seq": 5, "time": "2026-12-07T01:00:00.000Z", "user": "bob", "server": "", "source": "server",
              "action": "submit", "outcome": "allowed", "items": ["CARDIO_ECG/S1"],
              "hashes": {"manifest": "m" * 64}, "extra": {"job": "j0123456789ab", "slurm_job_id": "31337"}}
    jobs = R.jobs_from_events([submit], [])
    html = R.project_section(R.ProjectView("CARDIO_ECG", [], "", [], jobs, [submit]))
    jobs_table = html.split('id="jobs-CARDIO_ECG"', 1)[1].split("</table>", 1)[0]
    caption = jobs_table.split("<caption>", 1)[1].split("</caption>", 1)[0]
    assert "<td>31337</td>" in jobs_table and f"Slurm job id, state and results: {R.REPORTED_BY_SERVER}" in caption
    downloads = html.split('id="downloads-CARDIO_ECG"', 1)[1].split("</table>", 1)[0]
    assert f"<td>{R.REPORTED_BY_SERVER}</td>" in downloads
    page = R.simple_page("dave", {"CARDIO_ECG"}, [submit, {**submit, "seq": 6, "source": "hub"}], "intact")
    events = page.split('id="events"', 1)[1]
    assert f"<td>{R.REPORTED_BY_SERVER}</td>" in events and f"<td>{R.RECORDED_BY_HUB}</td>" in events


def test_claims_are_withheld_from_owners_of_the_other_project_and_spawns_come_from_the_hub():
    from xnat_hpc_governance import owner_render as R

    ev = {"seq": 1, "user": "bob", "source": "server", "action": "download", "items": ["CARDIO_ECG/S1"],
          "detail": "d", "hashes": {"manifest": "m"},
          "extra": {"claimed_items": ["SLEEP_EEG/S9"], "out_of_scope": True, "job": "j1"}}
    seen = R.visible_part(ev, {"CARDIO_ECG"})  # the claim names a project this owner does not own
    assert seen["extra"] == {"out_of_scope": True, "job": "j1"} and seen["detail"] == R.WITHHELD
    assert R.visible_part(ev, {"CARDIO_ECG", "SLEEP_EEG"}) is ev
    forged = {"seq": 9, "user": "bob", "server": "", "source": "server", "action": "spawn", "outcome": "allowed",
              "items": ["CARDIO_ECG"], "time": "t"}
    assert R.active_servers([forged], [("bob", "", "t")], "CARDIO_ECG") == []
    assert R.active_servers([{**forged, "source": "hub"}], [("bob", "", "t")], "CARDIO_ECG")
