"""The hub and the governance service's process write the same two stores (issue 19): the
audit trail (hub_ext.audit_store) and the review store with the job ledger
(hub_ext.review_store). Two real processes append and enter at once; the chain must stay whole
and the ledger's per-user limit must hold across them. Before the stores read their state inside
the write transaction, the second writer's first append failed (``UNIQUE constraint failed:
events.seq``, seen on a real hub) or linked to a record it had not seen."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

from hub_ext.audit_store import load_key, verify_store

ROOT = Path(__file__).resolve().parents[2]


def _run_together(code: str, n: int = 2) -> list[dict]:
    """*n* processes running *code* at once (each gets its index as argv[1]); their JSON outputs."""
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(i)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err[-3000:]
        outs.append(json.loads(out))
    return outs


def test_two_processes_append_to_one_trail_and_the_chain_stays_whole(tmp_path):
    store = tmp_path / "audit" / "audit.db"
    from hub_ext.audit_store import AuditStore

    AuditStore(store, store.with_name("audit.key")).close()  # made once, as the hub does at its start
    outs = _run_together(f"""
        import json, sys
        from hub_ext.audit_store import AuditStore
        me = sys.argv[1]
        s = AuditStore({str(store)!r}, {str(store.with_name("audit.key"))!r})
        seqs = []
        for i in range(150):
            seqs += s.append([{{"user": "u" + me, "action": "download", "outcome": "allowed", "items": [],
                               "stream": "u" + me + "/s/b", "stream_seq": i + 1}}])
        s.close()
        print(json.dumps({{"seqs": seqs}}))
    """)
    every = sorted(q for o in outs for q in o["seqs"])
    assert every == list(range(1, 301))  # no number twice, none skipped
    verdict = verify_store(store, load_key(store.with_name("audit.key"), create=False))
    assert verdict.ok and verdict.count == 300, verdict.sentence


def test_the_ledgers_limit_holds_across_two_processes(tmp_path):
    path = tmp_path / "review" / "review.db"
    outs = _run_together(f"""
        import json, sys
        from hub_ext.review_store import ReviewStore
        from xnat_bridge.errors import Conflict
        me = int(sys.argv[1])
        store = ReviewStore(path={str(path)!r}, max_active_jobs_per_user=5)
        entered = refused = 0
        for i in range(8):
            try:
                store.enter_job("bob", "s", "j%012x" % (me * 100 + i), ["CARDIO_ECG"],
                                {{"dataset": "d", "dataset_version": 1, "script_sha256": "c" * 64}})
                entered += 1
            except Conflict:
                refused += 1
        print(json.dumps({{"entered": entered, "refused": refused}}))
    """)
    assert sum(o["entered"] for o in outs) == 5 and sum(o["refused"] for o in outs) == 11


def test_a_store_the_other_process_created_a_moment_ago_is_opened(tmp_path, monkeypatch):
    """The hub and the service open a new store at once: the one that finds it missing and then
    loses the race to create it opens the other's file (it failed with FileExistsError once in
    the suite above)."""
    import os

    from hub_ext import review_store
    from hub_ext.review_store import ReviewStore
    from xnat_bridge.private import check_private_dir, create_private_file

    path = tmp_path / "review" / "review.db"
    check_private_dir(str(path.parent), create=True)
    create_private_file(str(path), b"")  # the other process's
    monkeypatch.setattr(review_store.os.path, "lexists", lambda p: False if os.fspath(p) == str(path) else True)
    store = ReviewStore(path=str(path))
    assert store.marked() == {}
