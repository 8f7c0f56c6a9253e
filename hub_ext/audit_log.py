"""The hub's audit trail: one keyed, hash-chained store, configured once (``c.HubAuditLog``).

Public API (stable; other hub modules call exactly this)::

    log = HubAuditLog(config=...)           # every instance with the same path shares one store
    await log.record(user, action, outcome, *, items=(), detail="", files=0, bytes=0,
                     hashes=None, source="hub", server="", extra=None) -> int   # its record number
    await log.ingest(records) -> list[int]  # the ingestion API's batches (0 = a redelivery, skipped)
    log.query(projects=None|set, user=None, actions=None, since=None, until=None,
              limit=100, offset=0) -> list[dict]          # blocking (run it in a thread); newest first
    log.count(projects=..., user=..., actions=..., since=..., until=...) -> int  # blocking
    log.verify() -> (ok: bool, sentence: str)             # blocking: walks the whole trail
    log.status() -> (ok | None, sentence, checked_at)     # the last verification, refreshed in the background

A record is a dict: ``seq`` (1, 2, …), ``time`` (the hub's clock when it appended),
``user``, ``action`` (:data:`xnat_bridge.audit.ACTIONS`), ``outcome``, ``items``
(XNAT items, ``PROJECT/...``), ``files``, ``bytes``, ``hashes``, ``detail``,
``source`` (``hub`` | ``server``), ``server`` (the server's name), ``extra`` (a dict
of structured fields, e.g. ``slurm_job_id``, ``job``, ``resources``), and for events a
server sent: ``event_time`` (its clock), ``stream`` and ``stream_seq`` (its boot id
and sequence number), and where it named XNAT items outside the scope the hub gave it,
``extra.claimed_items`` and ``extra.out_of_scope`` (those items are its claim, filed under
no project: :func:`xnat_hpc_governance.audit_api.apply_scope`). The store (:mod:`hub_ext.audit_store`) is SQLite, 0600 in a
directory only the hub's account can write, each record MAC'd with
``c.HubAuditLog.key_file`` over the previous record's MAC; ``xnat-hpc-hub audit
verify`` checks it.

Async contract: :meth:`record` and :meth:`ingest` are awaited on the hub's event loop;
appends waiting at the same moment are written together in one transaction (group
commit) in a thread. :meth:`query`, :meth:`count`, :meth:`verify` block: call them
from a thread.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
import time
from pathlib import Path

from traitlets import Float, Integer, Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge import audit

from . import audit_store
from .audit_store import AuditStore, open_readonly

_STORES: dict[str, AuditStore] = {}
_STORES_LOCK = threading.Lock()
_STATUS: dict[str, tuple] = {}


def _close_all() -> None:
    with _STORES_LOCK:
        for store in _STORES.values():
            try:
                store.close()
            except Exception:  # noqa: BLE001 - at exit: best effort, the checkpoint is rewritten next start
                pass
        _STORES.clear()


atexit.register(_close_all)


class HubAuditLog(LoggingConfigurable):
    """The hub's audit trail (see the module docstring)."""

    path = Unicode(
        "xnat-hpc-audit/audit.db",
        help="""The hub's audit store: one SQLite file (format xnat-hpc-hub-audit/1) holding every
        audit event of the site (logins, spawns with scope, and every event the researchers'
        servers send: datasets, downloads, staging, submissions, key releases, results,
        denials), each record MAC'd with c.HubAuditLog.key_file and chained to the one before.
        Created 0600 in a directory only the hub's account can write (created 0700 if missing);
        the hub refuses to start on a store, directory or side file (-wal, -shm, .checkpoint)
        open to others or behind a symlink. A relative path is relative to the hub's working
        directory. Example: "/var/lib/xnat-hpc-hub/audit/audit.db". Before version 2 this was a
        JSON-lines file: point it at a new file (the old one still verifies with
        `xnat-hpc-hub audit verify FILE`).""",
    ).tag(config=True)

    key_file = Unicode(
        "",
        help="""File with the trail's HMAC key (64 hex digits), created 0600 at the first start;
        the hub refuses a key file others can read. Default: "audit.key" next to
        c.HubAuditLog.path. Whoever holds it can re-chain a rewritten trail: keep it apart
        from backups of the store and never share it. Example:
        "/etc/xnat-hpc-hub/audit.key".""",
    ).tag(config=True)

    checkpoint_every = Integer(
        100,
        help="""Rewrite the checkpoint (count and last MAC, so that truncation is detected)
        after this many appends; also every c.HubAuditLog.checkpoint_seconds and at shutdown.
        Events appended after the last checkpoint could be cut off unnoticed: keep it small.""",
    ).tag(config=True)

    checkpoint_seconds = Float(
        5.0,
        help="Rewrite the checkpoint at the first append at least this many seconds after the last one.",
    ).tag(config=True)

    verify_interval = Float(
        300.0,
        help="""Seconds between the background verifications of the whole trail that the owner
        page reports (a child process `xnat-hpc-hub audit verify`; a walk over 100,000 records
        takes a few seconds of one core).""",
    ).tag(config=True)

    @property
    def abspath(self) -> str:
        return os.path.abspath(self.path)

    @property
    def key_path(self) -> str:
        return os.path.abspath(self.key_file) if self.key_file else str(Path(self.abspath).with_name("audit.key"))

    # -- the shared store -------------------------------------------------------------
    def store(self) -> AuditStore:
        """This process's writer for :attr:`path` (opened, checked and keyed at first use)."""
        with _STORES_LOCK:
            store = _STORES.get(self.abspath)
            if store is None:
                store = AuditStore(self.abspath, self.key_path, checkpoint_every=self.checkpoint_every,
                                   checkpoint_seconds=self.checkpoint_seconds)
                _STORES[self.abspath] = store
            return store

    def close(self) -> None:
        with _STORES_LOCK:
            store = _STORES.pop(self.abspath, None)
        if store is not None:
            store.close()

    # -- appending (event loop) ---------------------------------------------------------
    async def record(self, user: str, action: str, outcome: str, *, items=(), detail: str = "",
                     files: int = 0, bytes: int = 0, hashes: dict | None = None, source: str = "hub",
                     server: str = "", extra: dict | None = None) -> int:
        """Append one event stamped by the hub; its record number."""
        event = audit.make_event(user, action, outcome, items=items, files=files, bytes=bytes,
                                 hashes=hashes, detail=detail, server=server, extra=extra)
        rec = event.to_dict()
        rec.pop("time")
        rec["source"] = source
        return (await self.ingest([rec]))[0]

    async def ingest(self, records: list[dict]) -> list[int]:
        """Append *records* (validated, identity already stamped) in order; their record numbers."""
        store = await asyncio.to_thread(self.store)
        return await _batcher(store).submit(records)

    # -- reading (blocking) -----------------------------------------------------------------
    def _reader(self):
        self.store()  # checks the files (and creates an empty store) before anyone reads
        return open_readonly(self.abspath)

    def query(self, projects=None, user=None, actions=None, since=None, until=None,
              limit: int = 100, offset: int = 0) -> list[dict]:
        db = self._reader()
        try:
            return audit_store.query(db, projects=projects, user=user, actions=actions, since=since,
                                     until=until, limit=limit, offset=offset)
        finally:
            db.close()

    def count(self, projects=None, user=None, actions=None, since=None, until=None) -> int:
        db = self._reader()
        try:
            return audit_store.count(db, projects=projects, user=user, actions=actions, since=since,
                                     until=until)
        finally:
            db.close()

    def verify(self) -> tuple[bool, str]:
        store = self.store()
        store.checkpoint()  # what was appended so far counts; verification checks up to here
        verdict = audit_store.verify_store(self.abspath, store.key)
        _STATUS[self.abspath] = (verdict.ok, verdict.sentence, audit_store.now_iso(), time.monotonic())
        return verdict.ok, verdict.sentence

    def status(self) -> tuple[bool | None, str, str]:
        """The last verification (``None``: none yet); starts a new one in the background when
        it is older than :attr:`verify_interval`."""
        last = _STATUS.get(self.abspath)
        if last is None or time.monotonic() - last[3] > self.verify_interval:
            _STATUS.setdefault(self.abspath, (None, "verification running", "", time.monotonic()))
            _STATUS[self.abspath] = (*_STATUS[self.abspath][:3], time.monotonic())
            threading.Thread(target=self._verify_quietly, daemon=True).start()
        ok, sentence, when, _ = _STATUS[self.abspath]
        return ok, sentence, when

    def _verify_quietly(self) -> None:
        """A full verification in a child process (``xnat-hpc-hub audit verify``): the walk over
        the trail then takes neither the hub's event loop nor its GIL."""
        import sys

        from xnat_bridge import procs

        try:
            self.store().checkpoint()
            out = procs.run([sys.executable, "-m", "hub_ext.cli", "audit", "verify", "--store", self.abspath,
                             "--key", self.key_path], check=False, timeout=3600)
            sentence = out.stdout.strip().split(": ", 1)[-1]
            ok = out.returncode == 0
            sentence = sentence[len("OK, "):] if ok and sentence.startswith("OK, ") else sentence
            if not ok:
                self.log.error("the hub's audit trail does not verify: %s", sentence)
        except Exception as exc:  # noqa: BLE001 - reported on the page, logged here
            self.log.error("audit trail verification failed: %s", exc)
            ok, sentence = False, f"could not verify: {exc}"
        _STATUS[self.abspath] = (ok, sentence, audit_store.now_iso(), time.monotonic())


def open_at_start(config) -> HubAuditLog:
    """Open (and so check) the trail while the hub loads its configuration: put
    ``from hub_ext.audit_log import open_at_start; open_at_start(c)`` at the end of
    ``jupyterhub_config.py`` and the hub refuses to start on an unsafe store or key (the
    error names the fix), instead of failing the first login, start or event."""
    log = HubAuditLog(config=config)
    log.store()
    return log


class _Batcher:
    """Group commit: appends that wait at the same moment go into one transaction, in order."""

    def __init__(self, store: AuditStore):
        self.store = store
        self.pending: list[tuple[list[dict], asyncio.Future]] = []
        self.task: asyncio.Task | None = None
        self.checkpoint_timer: asyncio.TimerHandle | None = None
        self.checkpoint_task: asyncio.Task | None = None

    async def submit(self, records: list[dict]) -> list[int]:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((list(records), fut))
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._drain())
        return await fut

    async def _drain(self) -> None:
        while self.pending:
            batch, self.pending = self.pending, []
            try:
                results = await asyncio.to_thread(self.store.append_groups, [recs for recs, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter gets the error
                results = [exc] * len(batch)
            for (_, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, Exception):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
        # the checkpoint follows the last appends within checkpoint_seconds, appends or not
        if self.checkpoint_timer is None:
            loop = asyncio.get_running_loop()

            def due():
                self.checkpoint_timer = None
                self.checkpoint_task = loop.create_task(asyncio.to_thread(self.store.checkpoint_if_due))

            self.checkpoint_timer = loop.call_later(self.store.checkpoint_seconds, due)


_BATCHERS: dict[tuple[int, int], _Batcher] = {}


def _batcher(store: AuditStore) -> _Batcher:
    loop_id = id(asyncio.get_running_loop())
    key = (id(store), loop_id)
    if key not in _BATCHERS:
        _BATCHERS[key] = _Batcher(store)
    return _BATCHERS[key]
