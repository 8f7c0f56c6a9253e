"""The hub's keyed audit store, the ingestion API's parsing and the servers' outbox, without a hub:
every kind of tampering is found and named; redelivery appends nothing; identity in a body is
not believed; the outbox keeps what the hub has not acknowledged."""

from __future__ import annotations

import json
import os
import sqlite3

import pytest

from hub_ext import audit_store
from xnat_hpc_governance.audit_api import parse_batch
from hub_ext.audit_store import AuditStore, AuditStoreError, load_key, verify_store
from hub_ext.cli import main
from xnat_bridge.audit import make_event
from xnat_bridge.audit_outbox import Outbox
from xnat_bridge.errors import InvalidRequest


def _store(tmp_path, n=10, **kw) -> AuditStore:
    d = tmp_path / "audit"
    store = AuditStore(d / "audit.db", d / "audit.key", **kw)
    store.append([{"user": f"u{i % 3}", "action": "download", "outcome": "allowed",
                   "items": [f"P{i % 2}/S/E"], "files": i} for i in range(n)])
    store.checkpoint()
    return store


def _rw(store: AuditStore) -> sqlite3.Connection:
    """The attacker: writes the file directly (as the hub's account could), without the key."""
    return sqlite3.connect(store.path, isolation_level=None)


def test_an_intact_trail_verifies_and_files_are_private(tmp_path):
    store = _store(tmp_path)
    v = verify_store(store.path, store.key)
    assert v.ok and v.count == 10 and "intact (10 records" in v.sentence
    for name in ("audit.db", "audit.key", "audit.db.checkpoint"):
        assert (tmp_path / "audit" / name).stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "audit").stat().st_mode & 0o777 == 0o700


def test_a_changed_record_is_named(tmp_path):
    store = _store(tmp_path)
    db = _rw(store)
    body = json.loads(db.execute("SELECT body FROM events WHERE seq=4").fetchone()[0])
    body["user"] = "mallory"
    db.execute("UPDATE events SET body=? WHERE seq=4", (json.dumps(body),))
    v = verify_store(store.path, store.key)
    assert not v.ok and v.record == 4 and "record 4 at " in v.sentence and "changed" in v.sentence


def test_a_removed_record_is_named(tmp_path):
    store = _store(tmp_path)
    _rw(store).execute("DELETE FROM events WHERE seq=6")
    v = verify_store(store.path, store.key)
    assert not v.ok and v.record == 6 and "record 6 is missing" in v.sentence


def test_a_truncated_tail_is_found_by_the_checkpoint(tmp_path):
    store = _store(tmp_path)
    _rw(store).execute("DELETE FROM events WHERE seq>7")
    v = verify_store(store.path, store.key)
    assert not v.ok and "truncated" in v.sentence and "counts 10 records" in v.sentence and "record 7" in v.sentence


def test_a_rechained_tail_without_the_key_is_found(tmp_path):
    store = _store(tmp_path)
    db = _rw(store)
    forged = os.urandom(32)  # the attacker's best guess: any key but the hub's
    rows = db.execute("SELECT seq, body, prev FROM events WHERE seq>=5 ORDER BY seq").fetchall()
    prev = rows[0][2]
    for seq, body, _ in rows:
        doc = json.loads(body)
        doc["files"] = 0
        body = audit_store.canonical(doc)
        mac = audit_store.mac_of(forged, prev, body)
        db.execute("UPDATE events SET body=?, prev=?, mac=? WHERE seq=?", (body, prev, mac, seq))
        prev = mac
    v = verify_store(store.path, store.key)
    assert not v.ok and v.record == 5 and "changed" in v.sentence


def test_a_plain_hash_chain_rewrite_and_an_inserted_record_are_found(tmp_path):
    store = _store(tmp_path)
    db = _rw(store)
    row = db.execute("SELECT time, body, mac FROM events WHERE seq=2").fetchone()
    db.execute("INSERT INTO events VALUES (11, ?, 'x', 'download', NULL, NULL, ?, ?, ?)",
               (row[0], row[1], row[2], "f" * 64))
    v = verify_store(store.path, store.key)
    assert not v.ok and "record 11" in v.sentence


@pytest.mark.parametrize("sql, column, words", [
    ("UPDATE events SET user='mallory' WHERE seq=4", "events.user", "its user column was changed"),
    ("UPDATE events SET action='login' WHERE seq=4", "events.action", "its action column was changed"),
    ("UPDATE events SET time='2001-01-01T00:00:00.000Z' WHERE seq=4", "events.time", "its time column"),
    ("UPDATE events SET stream='u1//other' WHERE seq=4", "events.stream", "its stream column"),
    ("UPDATE events SET stream_seq=99 WHERE seq=4", "events.stream_seq", "its stream_seq column"),
    ("UPDATE events SET stream=NULL, stream_seq=NULL WHERE seq=4", "events.stream", "its stream column"),
    ("DELETE FROM event_projects WHERE seq=4", "event_projects.project", "lost project 'P1'"),
    ("INSERT INTO event_projects SELECT 'SLEEP_EEG', seq, action, user, time FROM events WHERE seq=4",
     "event_projects.project", "names project 'SLEEP_EEG'"),
    ("UPDATE event_projects SET project='SLEEP_EEG' WHERE seq=4", "event_projects.project", "project index"),
    ("UPDATE event_projects SET action='spawn' WHERE seq=4", "event_projects.action", "changed action"),
    ("UPDATE event_projects SET user='dave' WHERE seq=4", "event_projects.user", "changed user"),
    ("UPDATE event_projects SET time='2001-01-01' WHERE seq=4", "event_projects.time", "changed time"),
])
def test_an_edit_of_a_column_outside_the_macd_body_is_named(tmp_path, sql, column, words):
    """Queries and the owner page filter on copies of body fields (``events`` columns, the
    ``event_projects`` index): editing one alone hides an event or files it elsewhere."""
    store = _store(tmp_path, n=0)
    store.append([{"user": f"u{i % 3}", "action": "download", "outcome": "allowed", "items": [f"P{i % 2}/S/E"],
                   "stream": f"u{i % 3}//b", "stream_seq": i // 3 + 1} for i in range(8)])
    store.checkpoint()
    assert verify_store(store.path, store.key).ok
    _rw(store).execute(sql)
    v = verify_store(store.path, store.key)
    assert not v.ok and v.record == 4 and v.column == column, v
    assert v.sentence.startswith("record 4 at ") and words in v.sentence, v.sentence


def test_a_project_index_row_of_no_record_is_named(tmp_path):
    store = _store(tmp_path)
    _rw(store).execute("INSERT INTO event_projects VALUES ('SLEEP_EEG', 42, 'download', 'u1', 'x')")
    v = verify_store(store.path, store.key)
    assert not v.ok and v.record == 42 and v.column == "event_projects.seq" and "no such record" in v.sentence


def test_a_wrong_key_is_called_a_key_mismatch(tmp_path):
    store = _store(tmp_path)
    v = verify_store(store.path, os.urandom(32))
    assert not v.ok and "key mismatch" in v.sentence
    store.close()
    (tmp_path / "audit" / "audit.key").write_text(os.urandom(32).hex())
    with pytest.raises(AuditStoreError, match="key mismatch"):
        AuditStore(tmp_path / "audit" / "audit.db", tmp_path / "audit" / "audit.key")


def test_a_missing_or_forged_checkpoint_is_reported(tmp_path):
    store = _store(tmp_path)
    cp = tmp_path / "audit" / "audit.db.checkpoint"
    doc = json.loads(cp.read_text())
    doc["count"] = 3
    cp.write_text(json.dumps(doc))
    assert "checkpoint" in verify_store(store.path, store.key).sentence
    cp.unlink()
    v = verify_store(store.path, store.key)
    assert not v.ok and "checkpoint" in v.sentence and "missing" in v.sentence


def test_the_store_refuses_unsafe_files(tmp_path):
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(AuditStoreError, match="chmod 700"):
        AuditStore(open_dir / "audit.db", open_dir / "audit.key")
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "audit.key").write_text(os.urandom(32).hex())
    os.chmod(d / "audit.key", 0o644)
    with pytest.raises(AuditStoreError, match="chmod 600"):
        load_key(d / "audit.key")
    os.chmod(d / "audit.key", 0o600)
    (tmp_path / "elsewhere.db").write_bytes(b"")
    os.symlink(tmp_path / "elsewhere.db", d / "audit.db")
    with pytest.raises(AuditStoreError, match="symbolic link"):
        AuditStore(d / "audit.db", d / "audit.key")
    os.unlink(d / "audit.db")
    old = d / "old.jsonl"
    old.write_text('{"user":"a"}\n')
    os.chmod(old, 0o600)
    with pytest.raises(AuditStoreError, match="JSON-lines"):
        AuditStore(old, d / "audit.key")


@pytest.mark.timeout(20)
def test_a_fifo_for_the_key_or_checkpoint_is_refused_without_hanging(tmp_path):
    """The store's files are opened through :mod:`xnat_bridge.private` (no link followed, never
    blocked by a FIFO with no writer)."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.mkfifo(d / "audit.key", 0o600)
    with pytest.raises(AuditStoreError, match="FIFO"):
        load_key(d / "audit.key")
    store = _store(tmp_path)
    store.close()
    cp = tmp_path / "audit" / "audit.db.checkpoint"
    cp.unlink()
    os.mkfifo(cp, 0o600)
    with pytest.raises(AuditStoreError, match="FIFO"):
        verify_store(store.path, store.key)


def test_redelivered_events_are_appended_once(tmp_path):
    store = _store(tmp_path, n=0)
    batch = [{"user": "bob", "action": "stage", "outcome": "allowed", "stream": "bob//b1", "stream_seq": i}
             for i in (1, 2, 3)]
    assert store.append(batch) == [1, 2, 3]
    assert store.append(batch + [{**batch[0], "stream_seq": 4}]) == [0, 0, 0, 4]
    assert store.append([{**batch[0], "stream": "bob//b2", "stream_seq": 1}]) == [5]
    assert verify_store(store.path, store.key).ok


def test_cli_verifies_the_hub_store_and_exits_1_where_it_breaks(tmp_path, capsys):
    store = _store(tmp_path)
    assert main(["audit", "verify", "--store", str(store.path)]) == 0
    assert "OK, hash chain and MACs intact (10 records" in capsys.readouterr().out
    _rw(store).execute("DELETE FROM events WHERE seq=2")
    assert main(["audit", "verify", str(store.path)]) == 1
    assert "BROKEN: record 2 is missing" in capsys.readouterr().out


# -- the ingestion API's parsing ---------------------------------------------------------------
def _ev(seq, **kw):
    return {"seq": seq, "action": "stage", "outcome": "allowed", "items": ["CARDIO_ECG/S1"], **kw}


def test_identity_in_the_body_is_not_believed():
    body = json.dumps({"boot": "b1", "events": [_ev(1, user="alice", server="x", source="hub")]}).encode()
    boot, recs, warnings = parse_batch(body, "bob", "")
    assert recs[0]["user"] == "bob" and recs[0]["server"] == "" and recs[0]["source"] == "server"
    assert recs[0]["extra"]["claimed_user"] == "alice" and warnings
    assert recs[0]["stream"] == "bob//b1" and recs[0]["stream_seq"] == 1


@pytest.mark.parametrize("body, match", [
    ({"boot": "b", "events": [_ev(1, action="format_disk")]}, "unknown audit action"),
    ({"boot": "b", "events": [_ev(1), _ev(3)]}, "consecutive"),
    ({"boot": "b", "events": []}, "1 to 500"),
    ({"boot": "b/../x", "events": [_ev(1)]}, "boot"),
    ({"boot": "b", "events": [_ev(1, hashes={"api_token": "x"})]}, "secrets"),
    ({"events": [_ev(1)]}, "expected JSON"),
])
def test_bad_batches_are_refused_with_the_reason(body, match):
    with pytest.raises(InvalidRequest, match=match):
        parse_batch(json.dumps(body).encode(), "bob", "")


# -- the server's outbox -----------------------------------------------------------------------
def test_the_outbox_keeps_order_and_removes_only_acknowledged_events(tmp_path):
    box = Outbox(tmp_path / "ws")
    for i in range(5):
        assert box.append(make_event("bob", "stage", detail=str(i)).to_dict()) == i + 1
    boot, events = box.pending()
    assert len(boot) == 32 and [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert (tmp_path / "ws" / "audit-outbox.jsonl").stat().st_mode & 0o777 == 0o600
    box.ack(3)
    box.compact()
    assert [e["seq"] for e in box.pending()[1]] == [4, 5] and box.pending()[0] == boot
    with open(box.path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"seq": 6, "act')
    assert box.append(make_event("bob", "submit").to_dict()) == 6
    assert [e["seq"] for e in box.pending()[1]] == [4, 5, 6]
    box.ack(6)
    box.compact()
    assert box.pending()[1] == [] and box.append(make_event("bob", "stage").to_dict()) == 7


def test_a_gap_refuses_only_its_own_submission_in_a_group_commit(tmp_path):
    store = _store(tmp_path, n=0)
    ok = [{"user": "bob", "action": "stage", "outcome": "allowed", "stream": "bob//b", "stream_seq": 1}]
    gap = [{"user": "eve", "action": "stage", "outcome": "allowed", "stream": "eve//b", "stream_seq": 1}]
    assert store.append_groups([ok, gap]) == [[1], [2]]
    later = [{**ok[0], "stream_seq": 5}]
    fine = [{**gap[0], "stream_seq": 2}]
    res = store.append_groups([later, fine])
    assert isinstance(res[0], audit_store.OutOfOrder) and "expected sequence number 2" in str(res[0])
    assert res[1] == [3] and verify_store(store.path, store.key).ok


def test_cli_finds_the_hub_store_and_key_in_the_hubs_configuration(tmp_path, capsys):
    store = _store(tmp_path)
    cfg = tmp_path / "jupyterhub_config.py"
    cfg.write_text(f'c.HubAuditLog.path = "{store.path}"\nc.HubAuditLog.key_file = "{store.key_path}"\n')
    assert main(["audit", "verify", "--config", str(cfg)]) == 0
    assert "intact (10 records" in capsys.readouterr().out
    assert main(["audit", "verify", "--config", str(tmp_path / "missing.py")]) == 1
    assert "--store" in capsys.readouterr().err
    assert main(["audit", "verify", "--store", str(store.path), "--key", str(tmp_path / "nokey")]) == 1
    assert "does not exist" in capsys.readouterr().out


def test_open_at_start_refuses_an_unsafe_store_while_the_config_loads(tmp_path):
    from traitlets.config import Config

    from hub_ext.audit_log import open_at_start

    c = Config()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o775)
    c.HubAuditLog.path = str(shared / "audit.db")
    with pytest.raises(AuditStoreError, match="chmod 700"):
        open_at_start(c)
    c.HubAuditLog.path = str(tmp_path / "private" / "audit.db")
    log = open_at_start(c)
    assert (tmp_path / "private" / "audit.key").exists()
    log.close()


async def test_failed_logins_are_capped_per_address_and_counted(tmp_path, monkeypatch):
    import types

    from traitlets.config import Config

    from hub_ext import auth
    from hub_ext.audit_log import HubAuditLog

    c = Config()
    c.HubAuditLog.path = str(tmp_path / "a" / "audit.db")
    fake = types.SimpleNamespace(config=c, log=__import__("logging").getLogger("t"))
    clock = [1000.0]
    monkeypatch.setattr("time.monotonic", lambda: clock[0])
    monkeypatch.setattr(auth, "_login_failures", {})
    for i in range(auth.LOGIN_AUDIT_PER_MINUTE + 5):
        await auth._audit_login(fake, "mallory", "denied", f"try {i}", "10.0.0.9")
    await auth._audit_login(fake, "alice", "allowed", "ok", "10.0.0.9")  # successes are never capped
    clock[0] += 61
    await auth._audit_login(fake, "mallory", "denied", "later", "10.0.0.9")
    log = HubAuditLog(config=c)
    logins = list(reversed(log.query(actions={"login"}, limit=100)))
    assert len(logins) == auth.LOGIN_AUDIT_PER_MINUTE + 2
    assert logins[-1]["detail"].startswith("later (+5 failed logins from 10.0.0.9")
    log.close()
