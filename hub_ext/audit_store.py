"""The hub's audit store: one SQLite file, append-only, hash-chained **and keyed**.

Every record is a row ``(seq, time, user, action, body, prev, mac)``:

* ``seq`` counts from 1 with no gap; ``body`` is the record's canonical JSON
  (sorted keys, no blanks) and names its own ``seq``, so a row moved or renumbered
  no longer matches;
* ``mac = HMAC-SHA256(key, prev ‖ body)`` where ``prev`` is the MAC of record
  ``seq - 1`` (:data:`GENESIS` for the first) and *key* is a secret only the hub
  holds (:func:`load_key`). Anyone who can write the file can change a row, but
  cannot compute a MAC that :func:`verify_store` accepts, so re-chaining a changed
  tail needs the key.
* the **checkpoint** (a separate small JSON file, rewritten atomically, MAC'd with
  the same key) records the count and last MAC every few appends and at shutdown,
  so that removing the tail (truncation) is found too: the store must reach the
  checkpoint's count with the checkpoint's MAC at that record.

Side tables make the owner page fast on large trails: ``event_projects``
(project → seq, the first path element of every item) and indexes on time, user,
action and the sender's stream (``stream``/``stream_seq``: a server's boot id and
sequence number; unique, so a redelivered event is never appended twice).

Those columns (``time``, ``user``, ``action``, ``stream``, ``stream_seq`` of ``events``,
and every row of ``event_projects``) are copies of fields of the MAC'd body that the
queries and the owner page filter on; :func:`verify_store` checks each of them against
the body (:func:`index_columns`, :func:`project_links`), so an edit of a column alone —
hiding an event from an owner, or filing it under another project — is found and named
like an edit of the body.

Everything here is blocking: :class:`hub_ext.audit_log.HubAuditLog` calls it from
a thread. One :class:`AuditStore` per file per process, one writer at a time
(its lock); readers open their own connections (WAL lets them read while it writes).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import hmac
import json
import os
import secrets
import sqlite3
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from xnat_bridge import private
from xnat_bridge.errors import NotFound, XnatHpcError

GENESIS = "0" * 64
FORMAT = "xnat-hpc-hub-audit/1"
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, user TEXT NOT NULL, action TEXT NOT NULL,
    stream TEXT, stream_seq INTEGER, body TEXT NOT NULL, prev TEXT NOT NULL, mac TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events(time);
CREATE INDEX IF NOT EXISTS events_user ON events(user, seq);
CREATE INDEX IF NOT EXISTS events_action ON events(action, seq);
CREATE UNIQUE INDEX IF NOT EXISTS events_stream ON events(stream, stream_seq) WHERE stream IS NOT NULL;
CREATE TABLE IF NOT EXISTS event_projects (project TEXT NOT NULL, seq INTEGER NOT NULL,
    action TEXT NOT NULL, user TEXT NOT NULL, time TEXT NOT NULL, PRIMARY KEY (project, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_projects_action ON event_projects(project, action, seq);
CREATE INDEX IF NOT EXISTS event_projects_user ON event_projects(project, user, seq);
"""


class AuditStoreError(XnatHpcError):
    """The hub's audit store or its key cannot be used safely (the message says how to fix it)."""

    status = 500


class OutOfOrder(XnatHpcError):
    """A sender's events skip sequence numbers: they are appended in order or not at all."""

    status = 409
    reason = "out_of_order"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def canonical(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def mac_of(key: bytes, prev: str, body: str) -> str:
    return hmac.new(key, (prev + body).encode(), hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A public fingerprint of *key* (stored with the trail so a wrong key is named as such)."""
    return hmac.new(key, b"xnat-hpc-hub audit key id", hashlib.sha256).hexdigest()[:16]


def project_of(item: str) -> str:
    """The XNAT project an audit item names (``CARDIO_ECG/S1/E1/scans/1`` → ``CARDIO_ECG``)."""
    return str(item).strip("/").split("/", 1)[0]


#: the columns of ``events`` that copy a field of the MAC'd body (what queries filter on)
INDEX_COLUMNS = ("time", "user", "action", "stream", "stream_seq")


def index_columns(doc: dict) -> tuple:
    """The values of :data:`INDEX_COLUMNS` for the record *doc* (its MAC'd body)."""
    stream = doc.get("stream") or None
    return (doc.get("time"), doc.get("user", ""), doc.get("action", ""), stream,
            int(doc["stream_seq"]) if stream else None)


def project_links(doc: dict) -> dict[str, tuple]:
    """The ``event_projects`` rows of the record *doc*: project → (action, user, time)."""
    return {p: (doc.get("action", ""), doc.get("user", ""), doc.get("time"))
            for p in sorted({project_of(i) for i in doc.get("items") or ()} - {""})}


# -- files only the hub may touch ------------------------------------------------------------------
def check_private_dir(directory: Path, *, create: bool = True) -> None:
    """*directory* exists (created 0700), is no symlink, belongs to this account and nobody
    else can write it; else :class:`AuditStoreError` naming the fix."""
    if create and not os.path.lexists(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    st = os.lstat(directory)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise AuditStoreError(f"the audit directory {directory} is a symlink or not a directory; "
                              "point c.HubAuditLog.path at a file in a real directory of the hub's account")
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise AuditStoreError(f"the audit directory {directory} can be written by other accounts "
                              f"(owner uid {st.st_uid}, mode {oct(st.st_mode & 0o777)}); "
                              f"chown it to the hub's account and chmod 700 {directory}")


@contextlib.contextmanager
def _unsafe_is_a_store_error():
    """:mod:`xnat_bridge.private`'s refusals (a link, a FIFO, another account's file, mode open
    to others; a file gone) as :class:`AuditStoreError`, their message naming the fix."""
    try:
        yield
    except (private.UnsafePath, NotFound) as exc:
        raise AuditStoreError(exc.message) from None


def check_private_file(path: Path, *, what: str) -> bool:
    """True when *path* exists as a regular file of this account that only it can read and
    write (:func:`xnat_bridge.private.check_private_file`); False when absent;
    :class:`AuditStoreError` otherwise."""
    try:
        private.check_private_file(path, what=f"the {what}")
    except NotFound:
        return False
    except private.UnsafePath as exc:
        raise AuditStoreError(exc.message) from None
    return True


def read_private(path: Path, *, what: str, max_bytes: int = 1 << 16) -> bytes:
    """The bytes of a private file of the trail, opened without following a link or blocking
    and checked on the descriptor (:func:`xnat_bridge.private.read_private_file`)."""
    with _unsafe_is_a_store_error():
        return private.read_private_file(path, what=f"the {what}", max_bytes=max_bytes)


def load_key(path: Path, *, create: bool = True) -> bytes:
    """The trail's HMAC key (64 hex digits in *path*, created 0600 at first start)."""
    check_private_dir(path.parent, create=create)
    if not check_private_file(path, what="audit key file"):
        if not create:
            raise AuditStoreError(f"the audit key file {path} does not exist; the trail cannot be "
                                  "verified without the key that wrote it (c.HubAuditLog.key_file)")
        with contextlib.suppress(FileExistsError):  # another process was first: its key is read below
            private.create_private_file(path, (secrets.token_hex(32) + "\n").encode())
    text = read_private(path, what="audit key file", max_bytes=4096).decode("ascii", "replace").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 32:
        raise AuditStoreError(f"the audit key file {path} does not hold a key (64 hex digits); "
                              "restore it from the backup")
    return key


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def checkpoint_doc(key: bytes, count: int, last_mac: str) -> dict:
    doc = {"format": FORMAT, "count": count, "mac": last_mac, "time": now_iso(), "key_id": key_id(key)}
    doc["checkpoint_mac"] = hmac.new(key, ("checkpoint" + canonical(doc)).encode(), hashlib.sha256).hexdigest()
    return doc


def read_checkpoint(path: Path, key: bytes) -> tuple[dict | None, str | None]:
    """(checkpoint, None), (None, None) when there is none, or (None, what is wrong)."""
    if not check_private_file(path, what="audit checkpoint"):
        return None, None
    try:
        doc = json.loads(read_private(path, what="audit checkpoint"))
        stated = doc.pop("checkpoint_mac")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"the checkpoint {path} is not a checkpoint"
    if doc.get("key_id") != key_id(key):
        return None, f"the checkpoint {path} was written with another key (key mismatch)"
    want = hmac.new(key, ("checkpoint" + canonical(doc)).encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, str(stated)):
        return None, f"the checkpoint {path} was changed (its MAC does not match)"
    return doc, None


# -- the store ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Verdict:
    ok: bool
    count: int
    sentence: str
    record: int | None = None       # where it breaks
    time: str | None = None
    column: str | None = None       # the column stored outside the MAC'd body that was changed


class AuditStore:
    """One hub audit file; appends under a lock (see the module docstring)."""

    def __init__(self, path: str | Path, key_file: str | Path, *, checkpoint_every: int = 100,
                 checkpoint_seconds: float = 10.0, synchronous: str = "FULL"):
        self.path = Path(path).absolute()
        self.key_path = Path(key_file).absolute()
        self.checkpoint_path = self.path.with_name(self.path.name + ".checkpoint")
        self.checkpoint_every, self.checkpoint_seconds = checkpoint_every, checkpoint_seconds
        check_private_dir(self.path.parent)
        self.key = load_key(self.key_path)
        if check_private_file(self.path, what="audit store"):
            with _unsafe_is_a_store_error(), private.open_regular(self.path, private=True,
                                                                  what="the audit store") as f:
                head = f.read(16)
            if head and head != SQLITE_MAGIC:
                raise AuditStoreError(
                    f"{self.path} is not the hub's audit store (an old JSON-lines hub log?); move it "
                    "aside (`xnat-hpc-hub audit verify FILE` still checks it) or set c.HubAuditLog.path "
                    "to a new file")
        for side in ("-wal", "-shm"):
            check_private_file(self.path.with_name(self.path.name + side), what="audit store")
        check_private_file(self.checkpoint_path, what="audit checkpoint")
        old = os.umask(0o077)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.executescript(_SCHEMA)
        self.lock = threading.Lock()
        kid = key_id(self.key)
        row = self.db.execute("SELECT v FROM meta WHERE k='key_id'").fetchone()
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('format', ?), ('key_id', ?)", (FORMAT, kid))
        elif row[0] != kid:
            raise AuditStoreError(f"the audit key {self.key_path} is not the key that wrote {self.path} "
                                  "(key mismatch); restore the hub's key file from the backup")
        last = self.db.execute("SELECT seq, mac FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        self.count, self.last_mac = (last[0], last[1]) if last else (0, GENESIS)
        self._since_checkpoint, self._checkpoint_time = 0, time.monotonic()

    # -- appending --------------------------------------------------------------------
    def stream_last(self, stream: str) -> int:
        """The last sequence number appended from *stream* (0: none), as the store holds it now."""
        row = self.db.execute("SELECT MAX(stream_seq) FROM events WHERE stream=?", (stream,)).fetchone()
        return int(row[0] or 0)

    def append(self, records: Iterable[dict]) -> list[int]:
        """Append *records* (dicts without ``seq``) in one transaction; their ``seq`` numbers.

        A record with ``stream``/``stream_seq`` at or below what that stream already
        delivered is a redelivery: skipped, answered with ``0``. A stream's record more
        than one above its last one raises :class:`OutOfOrder` (nothing is appended)."""
        result = self.append_groups([list(records)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def append_groups(self, groups: list[list[dict]]) -> list[list[int] | Exception]:
        """Append several submissions in one transaction (group commit); per group its
        ``seq`` numbers, or the :class:`OutOfOrder` that refused that group alone.

        Two processes append to one store (the hub and the governance service): the chain's
        head (last ``seq`` and MAC) and each stream's last number are read **inside** the
        write transaction (``BEGIN IMMEDIATE`` holds SQLite's write lock until the commit),
        never from what this process appended last, so every record links to the one
        committed before it, whoever wrote that."""
        results: list[list[int] | Exception] = []
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                head = self.db.execute("SELECT seq, mac FROM events ORDER BY seq DESC LIMIT 1").fetchone()
                count, last = (head[0], head[1]) if head else (0, GENESIS)
                rows, links, streams = [], [], {}
                for group in groups:
                    first = next((r for r in group if r.get("stream")), None)
                    if first is not None:
                        done = streams.get(first["stream"])
                        done = self.stream_last(first["stream"]) if done is None else done
                        if done and int(first["stream_seq"]) > done + 1:
                            results.append(OutOfOrder(
                                f"events of {first['stream']} must arrive in order: expected sequence number "
                                f"{done + 1}, got {first['stream_seq']}; send the outbox from {done + 1}"))
                            continue
                    out: list[int] = []
                    results.append(out)
                    for rec in group:
                        stream, sseq = rec.get("stream"), rec.get("stream_seq")
                        if stream:
                            done = streams.get(stream)
                            done = self.stream_last(stream) if done is None else done
                            if int(sseq) <= done:
                                out.append(0)
                                continue
                            streams[stream] = int(sseq)
                        count += 1
                        doc = {**rec, "seq": count}
                        doc.setdefault("time", now_iso())
                        body = canonical(doc)
                        mac = mac_of(self.key, last, body)
                        rows.append((count, *index_columns(doc), body, last, mac))
                        links.extend((p, count, *link) for p, link in project_links(doc).items())
                        last = mac
                        out.append(count)
                if rows:
                    self.db.executemany("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?)", rows)
                    self.db.executemany("INSERT OR IGNORE INTO event_projects VALUES (?,?,?,?,?)", links)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            if rows:
                self.count, self.last_mac = count, last
                self._since_checkpoint += len(rows)
                if (self._since_checkpoint >= self.checkpoint_every
                        or time.monotonic() - self._checkpoint_time >= self.checkpoint_seconds):
                    self._checkpoint()
        return results

    def checkpoint(self) -> None:
        with self.lock:
            self._checkpoint()

    def checkpoint_if_due(self) -> None:
        """Rewrite the checkpoint when appends are not covered by it yet."""
        with self.lock:
            if self._since_checkpoint and self.db is not None:
                self._checkpoint()

    def _checkpoint(self) -> None:
        write_atomically(self.checkpoint_path, canonical(checkpoint_doc(self.key, self.count, self.last_mac)))
        self._since_checkpoint, self._checkpoint_time = 0, time.monotonic()

    def close(self) -> None:
        with self.lock:
            if self.db is not None:
                self._checkpoint()
                self.db.close()
                self.db = None


# -- reading ------------------------------------------------------------------------------------------
def open_readonly(path: str | Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"file:{Path(path).absolute()}?mode=ro", uri=True, check_same_thread=False)
    db.execute("PRAGMA query_only=1")
    return db


def _in(column: str, values) -> tuple[str, list]:
    values = sorted(values)
    return f"{column} IN ({','.join('?' * len(values))})", values


def _where(projects, user, actions, since, until) -> tuple[str, list]:
    """The WHERE clause over ``event_projects`` (when *projects* is given) or ``events``:
    both have ``action``, ``user``, ``time`` and ``seq``. *user* is a name or a set of names."""
    clauses, args = [], []
    for column, values in (("project", projects), ("action", actions),
                           ("user", {user} if isinstance(user, str) else user)):
        if values is None or (column != "project" and not values):
            continue
        if not values:
            return "0", []
        clause, vals = _in(column, values)
        clauses.append(clause)
        args += vals
    if since:
        clauses.append("time >= ?")
        args.append(since)
    if until:
        clauses.append("time <= ?")
        args.append(until)
    return (" AND ".join(clauses) or "1"), args


def query(db: sqlite3.Connection, *, projects=None, user=None, actions=None, since=None, until=None,
          limit: int = 100, offset: int = 0) -> list[dict]:
    """Records matching every filter given, newest first (``projects``: any of them; ``user``:
    a name or a set of names). With *projects* the project table's indexes
    (project, action | user, seq) pick the records; the bodies are read by ``seq``."""
    where, args = _where(projects, user, actions, since, until)
    if projects is not None:
        sql = (f"SELECT body FROM events WHERE seq IN (SELECT DISTINCT seq FROM event_projects WHERE {where} "
               "ORDER BY seq DESC LIMIT ? OFFSET ?) ORDER BY seq DESC")
    else:
        sql = f"SELECT body FROM events WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?"
    rows = db.execute(sql, (*args, int(limit), int(offset))).fetchall()
    return [json.loads(r[0]) for r in rows]


def count(db: sqlite3.Connection, *, projects=None, user=None, actions=None, since=None, until=None) -> int:
    where, args = _where(projects, user, actions, since, until)
    table, what = ("event_projects", "COUNT(DISTINCT seq)") if projects is not None else ("events", "COUNT(*)")
    return int(db.execute(f"SELECT {what} FROM {table} WHERE {where}", args).fetchone()[0])


# -- verifying ------------------------------------------------------------------------------------------
class _Links:
    """The rows of ``event_projects`` in ``seq`` order, handed out record by record."""

    def __init__(self, cursor):
        self.cursor = cursor
        self.head = next(cursor, None)
        self.orphan = None

    def take(self, seq: int) -> dict[str, tuple]:
        """The rows of record *seq* (project → (action, user, time)); rows of a lower ``seq``
        left over belong to no record: kept as :attr:`orphan`."""
        rows = {}
        while self.head is not None and self.head[0] <= seq:
            if self.head[0] < seq:
                self.orphan = self.orphan or self.head
            else:
                rows[self.head[1]] = tuple(self.head[2:])
            self.head = next(self.cursor, None)
        return rows

    def rest(self):
        """A row naming no record of the trail, or None."""
        return self.orphan or self.head


def _links_by_seq(db: sqlite3.Connection) -> _Links:
    return _Links(db.execute("SELECT seq, project, action, user, time FROM event_projects ORDER BY seq, project"))


def _column_problem(doc: dict, stored: tuple, links: dict[str, tuple]) -> tuple[str, str] | None:
    """(column, what is wrong) where the columns *stored* for a record, or its project index
    rows *links*, differ from its MAC'd body *doc*; None when they agree."""
    for column, have, want in zip(INDEX_COLUMNS, stored, index_columns(doc)):
        if have != want:
            return f"events.{column}", f"its {column} column was changed (it says {have!r})"
    want_links = project_links(doc)
    lost, added = sorted(set(want_links) - set(links)), sorted(set(links) - set(want_links))
    if lost:
        return "event_projects.project", f"its project index lost project {lost[0]!r}"
    if added:
        return "event_projects.project", f"its project index names project {added[0]!r}, which the record does not"
    for project, have in sorted(links.items()):
        for column, h, w in zip(("action", "user", "time"), have, want_links[project]):
            if h != w:
                return (f"event_projects.{column}",
                        f"its project index row for {project!r} has a changed {column} (it says {h!r})")
    return None


def verify_store(path: str | Path, key: bytes) -> Verdict:
    """Walk the whole trail; say where it first breaks (record number, its time, what)."""
    path = Path(path)
    if not path.exists():
        return Verdict(False, 0, f"{path} does not exist")
    db = open_readonly(path)
    try:
        row = db.execute("SELECT v FROM meta WHERE k='key_id'").fetchone()
        if row is not None and row[0] != key_id(key):
            return Verdict(False, 0, "key mismatch: the trail was written with another key than the one given")
        prev, expect, when = GENESIS, 1, None
        links = _links_by_seq(db)
        for seq, when, user, action, stream, stream_seq, stored_prev, body, mac in db.execute(
                f"SELECT seq, {', '.join(INDEX_COLUMNS)}, prev, body, mac FROM events ORDER BY seq"):
            if seq != expect:
                return Verdict(False, expect - 1,
                               f"record {expect} is missing (removed; the next is record {seq} at {when})",
                               expect, when)
            try:
                doc = json.loads(body)
                stated_seq = doc.get("seq")
            except (ValueError, AttributeError):
                doc, stated_seq = {}, None
            if stored_prev != prev:
                return Verdict(False, seq - 1, f"record {seq} at {when} does not follow record {seq - 1} "
                               "(a record was removed, inserted or re-chained)", seq, when)
            if not hmac.compare_digest(mac_of(key, prev, body), mac) or stated_seq != seq:
                return Verdict(False, seq - 1, f"record {seq} at {when} was changed after it was written "
                               "(its MAC does not match)", seq, when)
            broken = _column_problem(doc, (when, user, action, stream, stream_seq), links.take(seq))
            when = doc.get("time")  # from here on, the MAC'd time
            if broken:
                column, what = broken
                return Verdict(False, seq - 1, f"record {seq} at {when}: {what} (a query or the owner page "
                               "would read it; the MAC'd record says otherwise)", seq, when, column)
            prev, expect = mac, expect + 1
        total = expect - 1
        orphan = links.rest()
        macs = {}
    finally:
        db.close()
    cp, problem = read_checkpoint(path.with_name(path.name + ".checkpoint"), key)
    if problem:
        return Verdict(False, total, problem)
    if cp is not None and total < cp["count"]:
        return Verdict(False, total, f"truncated: the checkpoint of {cp['time']} counts {cp['count']} records, "
                       f"the store ends at record {total}", total + 1, cp["time"])
    if orphan is not None:  # after the truncation check: a cut tail leaves its index rows behind
        return Verdict(False, total, f"the project index (event_projects) names record {orphan[0]} for "
                       f"project {orphan[1]!r}, but the trail has no such record (it ends at record {total})",
                       orphan[0], None, "event_projects.seq")
    if cp is None:
        if total:
            return Verdict(False, total, f"the checkpoint of {path} is missing: truncation cannot be ruled out")
        return Verdict(True, 0, "no events yet")
    if cp["count"]:
        db = open_readonly(path)
        try:
            macs = dict(db.execute("SELECT seq, mac FROM events WHERE seq=?", (cp["count"],)).fetchall())
        finally:
            db.close()
        if macs.get(cp["count"]) != cp["mac"]:
            return Verdict(False, total, f"record {cp['count']} differs from the checkpoint of {cp['time']} "
                           "(the trail was rewritten)", cp["count"], cp["time"])
    if total == 0:
        return Verdict(True, 0, "no events yet")
    return Verdict(True, total, f"hash chain and MACs intact ({total} records, checkpoint at record "
                   f"{cp['count']}, {cp['time']})")
