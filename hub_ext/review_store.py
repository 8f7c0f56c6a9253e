"""The hub's store of governance: the job ledger, marked projects, held jobs, owners' decisions.

Configured once (``c.ReviewStore``): one SQLite file, 0600 in a directory only the hub's
account can write (created 0700).

**The job ledger** (:meth:`ReviewStore.enter_job`): every offload job is a row, written
when a server submits it: user and server (from the server's own hub token), the job's
**projects = the submitting server's scope as the hub decided it at spawn**
(:class:`~xnat_bridge.spawn_record.SpawnRecord`), never the server's claim about its
dataset; which of them needed review at that moment; manifest and script digests; the
Slurm job id (reported by the server later: a claim, checked against Slurm before any
``scancel``). Revocation and the owners' pages read the ledger.

**A review key per job**: when one of the job's projects is marked for review, the ledger
makes a fresh age identity for that job alone and answers its recipient; the job seals
the hub's share of its results key and the previews to it. A registration of held
results is accepted only for a job the ledger knows, of the same user, with a share
that opens with *that job's* identity; the share is released only for that job, only
after an owner of every project that needed review approved. So a registration
replayed under another job id, or with other projects, releases nothing.

The approval rule is :func:`decide` (pure): every project of the job that needed review
needs an approval by one of its owners; one rejection by an owner of any of them rejects.

Blocking: every method of :class:`ReviewStore` does file or database work; the
handlers call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator

from traitlets import Integer, Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.offload.review import STATES, unwrap
from xnat_bridge.private import check_private_dir, check_private_file, create_private_file
from xnat_bridge.staging import AgeIdentity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (project TEXT PRIMARY KEY, by TEXT NOT NULL, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    user TEXT NOT NULL, id TEXT NOT NULL, dataset TEXT, dataset_version INTEGER, projects TEXT,
    manifest_sha256 TEXT, script_sha256 TEXT, slurm_job_id TEXT, results TEXT, share TEXT,
    previews TEXT, state TEXT NOT NULL, reason TEXT DEFAULT '', by TEXT DEFAULT '',
    created TEXT, decided TEXT DEFAULT '', PRIMARY KEY (user, id));
CREATE TABLE IF NOT EXISTS ledger (
    user TEXT NOT NULL, id TEXT NOT NULL, server TEXT NOT NULL, projects TEXT NOT NULL,
    review TEXT NOT NULL, review_identity TEXT NOT NULL DEFAULT '', dataset TEXT DEFAULT '',
    dataset_version INTEGER DEFAULT 0, manifest_sha256 TEXT DEFAULT '', script_sha256 TEXT DEFAULT '',
    slurm_job_id TEXT DEFAULT '', state TEXT NOT NULL, message TEXT DEFAULT '', created TEXT NOT NULL,
    updated TEXT NOT NULL, PRIMARY KEY (user, id));
CREATE INDEX IF NOT EXISTS ledger_state ON ledger (state);
CREATE TABLE IF NOT EXISTS notices (
    user TEXT NOT NULL, time REAL NOT NULL, text TEXT NOT NULL, key TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS notices_user ON notices (user, time);
CREATE TABLE IF NOT EXISTS decisions (
    user TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, owner TEXT NOT NULL,
    decision TEXT NOT NULL, reason TEXT DEFAULT '', time TEXT NOT NULL,
    PRIMARY KEY (user, id, project));
CREATE TABLE IF NOT EXISTS publications (
    user TEXT NOT NULL, id TEXT NOT NULL, resource TEXT NOT NULL, url TEXT NOT NULL,
    files TEXT NOT NULL, crate TEXT NOT NULL, signature TEXT NOT NULL, state TEXT NOT NULL,
    message TEXT DEFAULT '', signed TEXT NOT NULL, updated TEXT NOT NULL, PRIMARY KEY (user, id));
"""
MAX_REASON = 1000
#: notices kept per user, and their length
MAX_NOTICES = 5
MAX_NOTICE_CHARS = 2000
#: what a job id looks like (:func:`xnat_bridge.offload.registry.new_job_id`)
JOB_ID_RE = re.compile(r"^j[0-9a-f]{12}$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_SLURM_ID_RE = re.compile(r"^[0-9]{1,20}(_[0-9]{1,10})?$")
#: a ledger job's states: entered at submission, then what the server reports
LEDGER_STATES = ("submitted", "running", "done", "failed", "cancelled", "lost")
LEDGER_ACTIVE = ("submitted", "running")
MAX_RESULTS = 10000
_JOB_FIELDS = ("dataset", "dataset_version", "projects", "manifest_sha256", "script_sha256",
               "slurm_job_id", "results", "share", "previews")


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# -- the rule (pure) ---------------------------------------------------------------------
def decide(projects: list[str], decisions: dict[str, dict]) -> dict:
    """The review state of a job over *projects* given the owners' *decisions*
    (``{project: {"decision": "approve"|"reject", "owner", "reason", "time"}}``):
    ``{"state", "pending", "reason", "by"}``. Rejected as soon as one owner rejects;
    approved when every project has an approval; held otherwise."""
    for p in projects:
        d = decisions.get(p)
        if d and d.get("decision") == "reject":
            return {"state": "rejected", "pending": [], "reason": d.get("reason", ""),
                    "by": f"{d.get('owner', '?')} for {p}"}
    pending = [p for p in projects if (decisions.get(p) or {}).get("decision") != "approve"]
    return {"state": "approved" if not pending else "held", "pending": pending, "reason": "", "by": ""}


def decidable(job_projects: list[str], owned: set[str]) -> list[str]:
    """The projects of a job a visitor who owns *owned* decides for (pure): their own only."""
    return [p for p in job_projects if p in owned]


def check_registration(body: dict) -> dict:
    """Validate a server's registration of held results (pure); InvalidRequest naming the bad
    field. Any ``projects`` in the body is ignored: a job's projects are the ledger's."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    results = body.get("results")
    if not isinstance(results, list) or len(results) > MAX_RESULTS or not all(
            isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("size"), int)
            for f in results):
        raise InvalidRequest("results must be a list of {name, size, sha256}")
    if not isinstance(body.get("share"), str) or not body["share"]:
        raise InvalidRequest("share (the hub's wrapped key share, base64) is missing")
    previews = body.get("previews") or {}
    if not isinstance(previews, dict) or not all(isinstance(v, str) for v in previews.values()):
        raise InvalidRequest("previews must be an object {file name: base64}")
    return {"results": [{"name": f["name"][:1000], "size": int(f["size"]), "sha256": str(f.get("sha256", ""))[:100]}
                        for f in results],
            "share": body["share"], "previews": previews}


def check_entry(body: dict) -> dict:
    """Validate what a server says about a job it submits (pure): the dataset and the
    digests. InvalidRequest naming the bad field. Identity and projects are not taken from
    the body (the hub stamps them)."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    out = {"dataset": body.get("dataset", ""), "dataset_version": body.get("dataset_version", 0),
           "manifest_sha256": body.get("manifest_sha256", "") or "", "script_sha256": body.get("script_sha256", "")}
    if not isinstance(out["dataset"], str) or len(out["dataset"]) > 200:
        raise InvalidRequest("dataset must be the dataset's name (at most 200 characters)")
    if not isinstance(out["dataset_version"], int) or out["dataset_version"] < 0:
        raise InvalidRequest("dataset_version must be a whole number")
    for key in ("manifest_sha256", "script_sha256"):
        if out[key] and not (isinstance(out[key], str) and _SHA_RE.match(out[key])):
            raise InvalidRequest(f"{key} must be 64 lowercase hex digits")
    if not out["script_sha256"]:
        raise InvalidRequest("script_sha256 (the training script's digest) is missing")
    return out


def check_update(body: dict) -> dict:
    """Validate a server's report on a ledger job (pure): ``slurm_job_id``, ``state``,
    ``manifest_sha256`` (known after the first staging), ``message``."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    unknown = set(body) - {"slurm_job_id", "state", "manifest_sha256", "message"}
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(sorted(unknown))}; a job report may hold "
                             "slurm_job_id, state, manifest_sha256 and message")
    out = {}
    if body.get("slurm_job_id") not in (None, ""):
        if not isinstance(body["slurm_job_id"], str) or not _SLURM_ID_RE.match(body["slurm_job_id"]):
            raise InvalidRequest("slurm_job_id must be a Slurm job id (digits)")
        out["slurm_job_id"] = body["slurm_job_id"]
    if body.get("state") not in (None, ""):
        if body["state"] not in LEDGER_STATES[1:]:
            raise InvalidRequest(f"state must be one of {', '.join(LEDGER_STATES[1:])}")
        out["state"] = body["state"]
    if body.get("manifest_sha256"):
        if not isinstance(body["manifest_sha256"], str) or not _SHA_RE.match(body["manifest_sha256"]):
            raise InvalidRequest("manifest_sha256 must be 64 lowercase hex digits")
        out["manifest_sha256"] = body["manifest_sha256"]
    if body.get("message") is not None:
        out["message"] = str(body["message"])[:500]
    if not out:
        raise InvalidRequest("nothing to report: give slurm_job_id, state, manifest_sha256 or message")
    return out


def check_job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
        raise InvalidRequest(f"job id {str(job_id)[:40]!r} is not a job id (j + 12 hex digits)")
    return job_id


class ReviewStore(LoggingConfigurable):
    """The job ledger, marked projects, held jobs and decisions (see the module docstring)."""

    path = Unicode(
        "xnat-hpc-review/review.db",
        help="""SQLite file of the job ledger and results review: every offload job (user, server,
        the server's scope as the hub decided it, digests, Slurm id, its own review key when it
        needs review), which projects need review (set by their owners on /hub/xnat-hpc/review),
        the jobs whose results are held (the hub's wrapped key share, previews sealed to the job's
        review key) and every owner's decision. Created 0600 in a directory created 0700; back it
        up (held results cannot be opened without it). A relative path is relative to the hub's
        working directory. Example: "/var/lib/xnat-hpc-hub/review/review.db".""",
    ).tag(config=True)

    max_active_jobs_per_user = Integer(
        200,
        help="""Most ledger jobs one user may have submitted and not yet ended (states submitted,
        running). A server asking to enter one more is refused (409) with this number in the
        message. Example: 50.""",
    ).tag(config=True)

    max_held_per_user = Integer(
        100,
        help="""Most jobs of one user whose results may wait for review at once (state held).
        A registration beyond it is refused (409) and audited; the job's results stay sealed in
        the staging area and can be registered again once owners have decided on others.
        Example: 20.""",
    ).tag(config=True)

    _lock = threading.RLock()  # one per process: every instance shares the databases below
    _dbs: dict[str, sqlite3.Connection] = {}

    # -- plumbing ------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        path = os.path.abspath(self.path)
        with self._lock:
            db = self._dbs.get(path)
            if db is None:
                check_private_dir(os.path.dirname(path), create=True)
                if not os.path.lexists(path):
                    try:
                        create_private_file(path, b"")
                    except FileExistsError:  # the other process (hub or service) made it first
                        pass
                check_private_file(path, what="c.ReviewStore.path")
                db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
                db.row_factory = sqlite3.Row
                db.executescript(_SCHEMA)
                self._dbs[path] = db
            return db

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction of this process's connection: the hub and the governance
        service both write the store, so what a write checks (a count, a state) and what it
        writes are one ``BEGIN IMMEDIATE`` … ``COMMIT`` (SQLite's write lock held between). A
        nested call joins the outer transaction."""
        db = self._db()
        with self._lock:
            outer = not db.in_transaction
            if outer:
                db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                if outer:
                    db.execute("ROLLBACK")
                raise
            if outer:
                db.execute("COMMIT")

    # -- what users are told on the hub's pages ------------------------------------------
    def add_notice(self, user: str, text: str, now: float | None = None, *, key: str = "") -> None:
        """Keep *text* for *user*'s hub pages (:func:`hub_ext.revocation.user_notice`): written by
        the process that acted (the governance service's revocations, the hub's refused starts),
        read by the hub. A newer notice of the same non-empty *key* replaces the older one
        (``spawn-refused:<server>``); the last :data:`MAX_NOTICES` of a user are kept."""
        with self._tx() as db:
            if key:
                db.execute("DELETE FROM notices WHERE user=? AND key=?", (user, key))
            db.execute("INSERT INTO notices VALUES (?,?,?,?)",
                       (user, time.time() if now is None else now, text[:MAX_NOTICE_CHARS], key))
            db.execute("DELETE FROM notices WHERE user=? AND rowid NOT IN (SELECT rowid FROM notices "
                       "WHERE user=? ORDER BY time DESC, rowid DESC LIMIT ?)", (user, user, MAX_NOTICES))

    def drop_notice(self, user: str, key: str) -> None:
        """Forget *user*'s notice of *key*, if any (a refused server that has started since)."""
        with self._tx() as db:
            db.execute("DELETE FROM notices WHERE user=? AND key=?", (user, key))

    def notices(self, user: str) -> list[tuple[float, str]]:
        """*user*'s notices ``(time, text)``, oldest first."""
        with self._lock:
            rows = self._db().execute("SELECT time, text FROM notices WHERE user=? ORDER BY time, rowid",
                                      (user,)).fetchall()
        return [(r["time"], r["text"]) for r in rows]

    # -- projects ------------------------------------------------------------------
    def marked(self, projects: list[str] | set[str] | None = None) -> dict[str, dict]:
        """``{project: {"by", "time"}}`` of the marked projects (of *projects*, if given)."""
        with self._lock:
            rows = self._db().execute("SELECT * FROM marks").fetchall()
        out = {r["project"]: {"by": r["by"], "time": r["time"]} for r in rows}
        return out if projects is None else {p: v for p, v in out.items() if p in set(projects)}

    def mark(self, project: str, owner: str, on: bool) -> bool:
        """Mark or unmark *project*; True when that changed something."""
        with self._tx() as db:
            if on:
                cur = db.execute("INSERT OR IGNORE INTO marks VALUES (?,?,?)", (project, owner, now_iso()))
            else:
                cur = db.execute("DELETE FROM marks WHERE project=?", (project,))
            return cur.rowcount > 0

    # -- the ledger ----------------------------------------------------------------
    def enter_job(self, user: str, server: str, job_id: str, projects: list[str] | frozenset[str],
                  body: dict) -> dict:
        """Enter job *job_id* that *user*'s server *server* submits; *projects* is that server's
        scope as the hub decided it. Returns the public ledger row with ``recipient`` (the job's
        own review recipient, or None when none of its projects needs review). Entering the
        same job again from the same server with the same digests answers the same row (a
        retried request); anything else under a known id is a Conflict."""
        check_job_id(job_id)
        facts = check_entry(body)
        projects = sorted(set(projects))
        if not projects:
            raise PermissionDenied(f"the server {server or '(default)'} of {user} has no data scope the hub "
                                   "decided (started before this hub version?); restart it to submit jobs")
        with self._tx() as db:
            row = db.execute("SELECT * FROM ledger WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is not None:
                if (row["server"], row["script_sha256"], row["manifest_sha256"] or facts["manifest_sha256"]) != (
                        server, facts["script_sha256"], facts["manifest_sha256"] or row["manifest_sha256"]):
                    raise Conflict(f"job {job_id} of {user} is already in the ledger with other facts", item=job_id)
                return self._ledger_public(row)
            active = db.execute(f"SELECT COUNT(*) FROM ledger WHERE user=? AND state IN "
                                f"({','.join('?' * len(LEDGER_ACTIVE))})", (user, *LEDGER_ACTIVE)).fetchone()[0]
            if active >= self.max_active_jobs_per_user:
                raise Conflict(f"{user} already has {active} jobs submitted and not ended; the hub takes at most "
                               f"{self.max_active_jobs_per_user} (c.ReviewStore.max_active_jobs_per_user)")
            review = sorted(self.marked(projects))
            identity = AgeIdentity.generate().secret() if review else ""
            t = now_iso()
            db.execute("INSERT INTO ledger (user, id, server, projects, review, review_identity, dataset, "
                       "dataset_version, manifest_sha256, script_sha256, state, created, updated) "
                       "VALUES (?,?,?,?,?,?,?,?,?,?,'submitted',?,?)",
                       (user, job_id, server, json.dumps(projects), json.dumps(review), identity,
                        facts["dataset"], facts["dataset_version"], facts["manifest_sha256"],
                        facts["script_sha256"], t, t))
            return self._ledger_public(db.execute("SELECT * FROM ledger WHERE user=? AND id=?",
                                                  (user, job_id)).fetchone())

    def update_job(self, user: str, job_id: str, body: dict) -> dict:
        """A server's report on its own ledger job (:func:`check_update`). A Slurm id, once
        set, is not replaced; an ended job's state is not changed again."""
        check_job_id(job_id)
        report = check_update(body)
        with self._tx() as db:
            row = db.execute("SELECT * FROM ledger WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} of {user} is not in the hub's ledger", item=job_id)
            if row["slurm_job_id"] and report.get("slurm_job_id", row["slurm_job_id"]) != row["slurm_job_id"]:
                raise Conflict(f"job {job_id} already runs as Slurm job {row['slurm_job_id']}", item=job_id)
            if row["state"] not in LEDGER_ACTIVE and report.get("state", row["state"]) != row["state"]:
                raise Conflict(f"job {job_id} already ended ({row['state']})", item=job_id)
            if row["manifest_sha256"] and report.get("manifest_sha256", row["manifest_sha256"]) != row["manifest_sha256"]:
                raise Conflict(f"job {job_id}: the ledger has another manifest digest", item=job_id)
            sets = {**report, "updated": now_iso()}
            db.execute(f"UPDATE ledger SET {', '.join(f'{k}=?' for k in sets)} WHERE user=? AND id=?",
                       (*sets.values(), user, job_id))
            return self._ledger_public(db.execute("SELECT * FROM ledger WHERE user=? AND id=?",
                                                  (user, job_id)).fetchone())

    def ledger_job(self, user: str, job_id: str) -> dict:
        with self._lock:
            row = self._db().execute("SELECT * FROM ledger WHERE user=? AND id=?", (user, job_id)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} of {user} is not in the hub's ledger", item=job_id)
        return self._ledger_public(row)

    def ledger_jobs(self, *, user: str | None = None, projects: set[str] | None = None,
                    states: tuple[str, ...] | None = None, limit: int = 500) -> list[dict]:
        """Ledger jobs, newest first: of *user*, touching one of *projects*, in *states*."""
        where, args = [], []
        if user is not None:
            where.append("user=?")
            args.append(user)
        if states:
            where.append(f"state IN ({','.join('?' * len(states))})")
            args.extend(states)
        sql = "SELECT * FROM ledger" + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY created DESC"
        with self._lock:
            rows = self._db().execute(sql, args).fetchall()
        out = []
        for r in rows:
            if projects is None or set(projects).intersection(json.loads(r["projects"])):
                out.append(self._ledger_public(r))
                if len(out) >= limit:
                    break
        return out

    @staticmethod
    def _ledger_public(row: sqlite3.Row) -> dict:
        identity = row["review_identity"]
        return {"user": row["user"], "job": row["id"], "server": row["server"],
                "projects": json.loads(row["projects"]), "review": json.loads(row["review"]),
                "recipient": AgeIdentity(identity).recipient if identity else None,
                "dataset": row["dataset"], "dataset_version": row["dataset_version"],
                "manifest_sha256": row["manifest_sha256"], "script_sha256": row["script_sha256"],
                "slurm_job_id": row["slurm_job_id"], "state": row["state"], "message": row["message"],
                "created": row["created"], "updated": row["updated"]}

    def _job_identity(self, user: str, job_id: str) -> tuple[sqlite3.Row, AgeIdentity]:
        """The ledger row of a job that needs review, and its own review identity."""
        row = self._db().execute("SELECT * FROM ledger WHERE user=? AND id=?", (user, job_id)).fetchone()
        if row is None:
            raise NotFound(f"job {job_id} of {user} is not in the hub's ledger; results can be held only "
                           "for a job the hub entered at its submission", item=job_id)
        if not row["review_identity"]:
            raise PermissionDenied(f"job {job_id} of {user} did not need review when it was submitted; "
                                   "it has no review key", item=job_id)
        return row, AgeIdentity(row["review_identity"])

    # -- held jobs -----------------------------------------------------------------
    def register(self, user: str, job_id: str, body: dict) -> dict:
        """Hold a job's results (its server's registration). Only for a job of *user* the
        ledger knows and that needed review; the wrapped share and every preview must open
        with that job's own review key (else they were sealed to another recipient, e.g.
        replayed from another job); the projects are the ledger's."""
        check_job_id(job_id)
        reg = check_registration(body)
        with self._lock:
            ledger, ident = self._job_identity(user, job_id)
        unwrap(reg["share"], ident)  # proves the share is this job's; the plaintext is dropped
        for blob in reg["previews"].values():
            unwrap(blob, ident)
        review = json.loads(ledger["review"])
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is not None:
                if row["share"] != reg["share"] and row["state"] == "held":
                    raise Conflict(f"job {job_id} of {user} is already held with another key share",
                                   item=job_id)
            else:
                held = db.execute("SELECT COUNT(*) FROM jobs WHERE user=? AND state='held'", (user,)).fetchone()[0]
                if held >= self.max_held_per_user:
                    raise Conflict(f"{user} already has {held} jobs waiting for review; the hub holds at most "
                                   f"{self.max_held_per_user} (c.ReviewStore.max_held_per_user); ask the "
                                   "project owners to decide on those first", item=job_id)
                db.execute(f"INSERT INTO jobs (user, id, {', '.join(_JOB_FIELDS)}, state, created) VALUES "
                           f"(?, ?, {', '.join('?' * len(_JOB_FIELDS))}, 'held', ?)",
                           [user, job_id, ledger["dataset"], ledger["dataset_version"], json.dumps(review),
                            ledger["manifest_sha256"], ledger["script_sha256"], ledger["slurm_job_id"],
                            json.dumps(reg["results"]), reg["share"], json.dumps(reg["previews"]), now_iso()])
        return self.job(user, job_id)

    def _decisions(self, user: str, job_id: str) -> dict[str, dict]:
        rows = self._db().execute("SELECT * FROM decisions WHERE user=? AND id=?", (user, job_id)).fetchall()
        return {r["project"]: {"decision": r["decision"], "owner": r["owner"], "reason": r["reason"],
                               "time": r["time"]} for r in rows}

    def _job(self, row: sqlite3.Row) -> dict:
        projects = json.loads(row["projects"] or "[]")
        decisions = self._decisions(row["user"], row["id"])
        rule = decide(projects, decisions)
        return {"user": row["user"], "job": row["id"], "dataset": row["dataset"],
                "dataset_version": row["dataset_version"], "projects": projects,
                "manifest_sha256": row["manifest_sha256"], "script_sha256": row["script_sha256"],
                "slurm_job_id": row["slurm_job_id"], "results": json.loads(row["results"] or "[]"),
                "preview_names": sorted(json.loads(row["previews"] or "{}")), "since": row["created"],
                "state": row["state"], "reason": row["reason"], "by": row["by"], "decided": row["decided"],
                "pending": rule["pending"] if row["state"] == "held" else [], "decisions": decisions}

    def job(self, user: str, job_id: str) -> dict:
        with self._lock:
            row = self._db().execute("SELECT * FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is None:
                raise NotFound(f"no held results of job {job_id} of {user}", item=job_id)
            return self._job(row)

    def jobs_for(self, projects: set[str], states: tuple[str, ...] = STATES, limit: int = 200) -> list[dict]:
        """Held, approved or rejected jobs touching one of *projects*, newest first."""
        with self._lock:
            rows = self._db().execute(
                f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))}) "
                "ORDER BY created DESC LIMIT 5000", list(states)).fetchall()
            out = []
            for r in rows:
                if projects.intersection(json.loads(r["projects"] or "[]")):
                    out.append(self._job(r))
                if len(out) >= limit:
                    break
            return out

    def previews(self, user: str, job_id: str) -> dict[str, bytes]:
        """The previews of a held job, decrypted with the job's review key (for the reviewer's page)."""
        with self._lock:
            row = self._db().execute("SELECT previews FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            previews = json.loads(row["previews"] or "{}") if row is not None else {}
            if not previews:
                return {}
            _ledger, ident = self._job_identity(user, job_id)
        return {name: unwrap(blob, ident) for name, blob in previews.items()}

    def record_decision(self, user: str, job_id: str, projects: list[str], owner: str, decision: str,
                        reason: str = "") -> dict:
        """*owner*'s decision for their *projects* of a held job; returns the job with its new
        state. A rejection destroys the hub's wrapped share and the previews at once."""
        if decision not in ("approve", "reject"):
            raise InvalidRequest("decision must be approve or reject")
        reason = reason.strip()[:MAX_REASON]
        if decision == "reject" and not reason:
            raise InvalidRequest("say why the results are rejected: the researcher reads the reason")
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is None:
                raise NotFound(f"no held results of job {job_id} of {user}", item=job_id)
            if row["state"] != "held":
                raise Conflict(f"job {job_id} of {user} was already {row['state']}", item=job_id)
            job_projects = json.loads(row["projects"] or "[]")
            if not projects or not set(projects) <= set(job_projects):
                raise PermissionDenied(f"you own none of the projects of job {job_id}; only their "
                                       "owners decide", item=job_id)
            t = now_iso()
            for p in projects:
                db.execute("INSERT OR REPLACE INTO decisions VALUES (?,?,?,?,?,?,?)",
                           (user, job_id, p, owner, decision, reason, t))
            rule = decide(job_projects, self._decisions(user, job_id))
            if rule["state"] == "rejected":
                db.execute("UPDATE jobs SET state='rejected', reason=?, by=?, decided=?, share='', "
                           "previews='{}' WHERE user=? AND id=?", (rule["reason"], rule["by"], t, user, job_id))
                db.execute("UPDATE ledger SET review_identity='', updated=? WHERE user=? AND id=?", (t, user, job_id))
            elif rule["state"] == "approved":
                db.execute("UPDATE jobs SET state='approved', decided=? WHERE user=? AND id=?", (t, user, job_id))
            row = db.execute("SELECT * FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            return self._job(row)

    # -- publications (hub_ext.publication) -------------------------------------------
    def publication(self, user: str, job_id: str) -> dict | None:
        """The signed publication of a job's results, or None."""
        with self._lock:
            row = self._db().execute("SELECT * FROM publications WHERE user=? AND id=?", (user, job_id)).fetchone()
        return None if row is None else self._publication(row)

    @staticmethod
    def _publication(row: sqlite3.Row) -> dict:
        return {"user": row["user"], "job": row["id"], "resource": row["resource"], "url": row["url"],
                "files": json.loads(row["files"]), "crate": row["crate"], "signature": row["signature"],
                "state": row["state"], "message": row["message"], "signed": row["signed"],
                "updated": row["updated"]}

    def add_publication(self, user: str, job_id: str, *, resource: str, url: str, files: list[list],
                        crate: str, signature: str) -> dict:
        """Keep a signed publication (state ``signed`` until the server reports its upload);
        a job signed before is signed again only when its upload failed."""
        t = now_iso()
        with self._tx() as db:
            row = db.execute("SELECT state FROM publications WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is not None and row["state"] != "failed":
                raise Conflict(f"job {job_id} of {user} was already signed for publishing", item=job_id)
            db.execute("INSERT OR REPLACE INTO publications VALUES (?,?,?,?,?,?,?,'signed','',?,?)",
                       (user, job_id, resource, url, json.dumps(files), crate, signature, t, t))
            return self._publication(db.execute("SELECT * FROM publications WHERE user=? AND id=?",
                                                (user, job_id)).fetchone())

    def set_publication_state(self, user: str, job_id: str, state: str, message: str = "") -> dict:
        """The server's report of its upload: ``published`` or ``failed`` (a published one stays so)."""
        if state not in ("published", "failed"):
            raise InvalidRequest(f"{str(state)[:40]!r} is not a publication state (published, failed)")
        with self._tx() as db:
            row = db.execute("SELECT * FROM publications WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id} of {user} was never signed for publishing", item=job_id)
            if row["state"] == "published" and state != "published":
                raise Conflict(f"job {job_id} of {user} is already published at {row['resource']}", item=job_id)
            db.execute("UPDATE publications SET state=?, message=?, updated=? WHERE user=? AND id=?",
                       (state, str(message)[:MAX_REASON], now_iso(), user, job_id))
            return self._publication(db.execute("SELECT * FROM publications WHERE user=? AND id=?",
                                                (user, job_id)).fetchone())

    def publications_for(self, projects: set[str], limit: int = 200) -> list[dict]:
        """Publications of jobs that touched one of *projects*, newest first (the owner page)."""
        with self._lock:
            rows = self._db().execute(
                "SELECT p.*, l.projects AS projects FROM publications p JOIN ledger l ON l.user=p.user AND "
                "l.id=p.id ORDER BY p.signed DESC").fetchall()
        out = []
        for r in rows:
            if set(projects).intersection(json.loads(r["projects"])):
                out.append({**self._publication(r), "projects": json.loads(r["projects"])})
                if len(out) >= limit:
                    break
        return out

    def release_share(self, user: str, job_id: str) -> bytes:
        """The hub's share of an approved job, unwrapped with that job's own review key (for
        the job's own user only). The approval is checked again against the ledger's review
        projects: every one of them needs an owner's approval."""
        with self._lock:
            row = self._db().execute("SELECT state, share FROM jobs WHERE user=? AND id=?",
                                     (user, job_id)).fetchone()
            if row is None or row["state"] != "approved" or not row["share"]:
                raise PermissionDenied(f"the results of job {job_id} are not approved", item=job_id)
            ledger, ident = self._job_identity(user, job_id)
            if decide(json.loads(ledger["review"]), self._decisions(user, job_id))["state"] != "approved":
                raise PermissionDenied(f"the results of job {job_id} are not approved by an owner of every "
                                       "project that needs review", item=job_id)
        return unwrap(row["share"], ident)
