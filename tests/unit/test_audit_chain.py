"""The hash-chained audit log: appends from several processes keep one valid chain;
a changed, removed or inserted line is found and named."""

from __future__ import annotations

import json
import multiprocessing

from xnat_bridge.audit import GENESIS, JsonLinesSink, make_event, verify_chain


def _writer(path: str, who: str, n: int) -> None:
    sink = JsonLinesSink(path)
    for i in range(n):
        sink.emit(make_event(who, "spawn", items=[f"P{i}"], detail=f"{who} {i}"))


def test_concurrent_writers_keep_one_chain(tmp_path):
    path = tmp_path / "audit.jsonl"
    procs = [multiprocessing.Process(target=_writer, args=(str(path), f"u{k}", 40)) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert verify_chain(path) == (160, None)
    events = JsonLinesSink(path).read()
    assert events[0]["prev"] == GENESIS and {e["user"] for e in events} == {"u0", "u1", "u2", "u3"}
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_tampering_is_found_and_named(tmp_path):
    path = tmp_path / "audit.jsonl"
    _writer(str(path), "alice", 5)
    good = path.read_text().splitlines()

    changed = list(good)
    doc = json.loads(changed[2])
    doc["user"] = "mallory"
    changed[2] = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(changed) + "\n")
    assert verify_chain(path) == (3, "line 3 was changed after it was written")

    path.write_text("\n".join(good[:1] + good[2:]) + "\n")
    assert verify_chain(path)[1] == "line 2 does not follow line 1 (a line was removed or inserted)"

    path.write_text("\n".join(good) + "\nnot json\n")
    assert verify_chain(path) == (6, "line 6 is not a chained audit event")


def test_cli_verify_reports_and_exits_non_zero_on_a_broken_chain(tmp_path, capsys):
    from hub_ext.cli import main

    path = tmp_path / "audit.jsonl"
    _writer(str(path), "alice", 3)
    assert main(["audit", "verify", str(path)]) == 0
    assert "OK, hash chain intact (3 events)" in capsys.readouterr().out
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[1:]) + "\n")
    assert main(["audit", "verify", str(path)]) == 1
    assert "line 1 does not follow" in capsys.readouterr().out
    assert main(["audit", "verify", str(tmp_path / "missing.jsonl")]) == 1
