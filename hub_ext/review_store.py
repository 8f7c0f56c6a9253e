"""The hub's store of results review: marked projects, held jobs, owners' decisions, the review key.

Configured once (``c.ReviewStore``): one SQLite file and one age identity (the hub's
**review key**), both 0600 in a directory only the hub's account can write (created
0700). The review key never leaves the hub: jobs seal the hub's share of their
results key and the previews to its recipient (:mod:`xnat_bridge.offload.review`);
the hub unwraps a share only to hand it to the job's own user after approval, and
forgets the wrapped share and the previews on rejection.

The approval rule is :func:`decide` (pure): every project of the job's dataset needs
an approval by one of its owners; one rejection by an owner of any of them rejects.

Blocking: every method of :class:`ReviewStore` does file or database work; the
handlers call them through ``asyncio.to_thread``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import sqlite3
import stat
import threading
from pathlib import Path

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge.errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.offload.review import STATES, unwrap
from xnat_bridge.staging import AgeIdentity

_SCHEMA = """
CREATE TABLE IF NOT EXISTS marks (project TEXT PRIMARY KEY, by TEXT NOT NULL, time TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    user TEXT NOT NULL, id TEXT NOT NULL, dataset TEXT, dataset_version INTEGER, projects TEXT,
    manifest_sha256 TEXT, script_sha256 TEXT, slurm_job_id TEXT, results TEXT, share TEXT,
    previews TEXT, state TEXT NOT NULL, reason TEXT DEFAULT '', by TEXT DEFAULT '',
    created TEXT, decided TEXT DEFAULT '', PRIMARY KEY (user, id));
CREATE TABLE IF NOT EXISTS decisions (
    user TEXT NOT NULL, id TEXT NOT NULL, project TEXT NOT NULL, owner TEXT NOT NULL,
    decision TEXT NOT NULL, reason TEXT DEFAULT '', time TEXT NOT NULL,
    PRIMARY KEY (user, id, project));
"""
MAX_REASON = 1000
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
    """Validate a server's registration (pure); InvalidRequest naming the bad field."""
    if not isinstance(body, dict):
        raise InvalidRequest("expected a JSON object")
    projects = body.get("projects")
    if (not isinstance(projects, list) or not projects
            or not all(isinstance(p, str) and p and len(p) < 200 for p in projects)):
        raise InvalidRequest("projects must be a non-empty list of XNAT project ids")
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
    return {"dataset": str(body.get("dataset", ""))[:200], "dataset_version": int(body.get("dataset_version") or 0),
            "projects": sorted(set(projects)), "manifest_sha256": str(body.get("manifest_sha256", ""))[:100],
            "script_sha256": str(body.get("script_sha256", ""))[:100],
            "slurm_job_id": str(body.get("slurm_job_id", ""))[:40],
            "results": [{"name": f["name"][:1000], "size": int(f["size"]), "sha256": str(f.get("sha256", ""))[:100]}
                        for f in results],
            "share": body["share"], "previews": previews}


def _private_file(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise PermissionDenied(f"{path} must be a file of the hub's account, mode 0600, not a link; "
                               f"fix it (chmod 600 {path}) or remove it")


class ReviewStore(LoggingConfigurable):
    """Marked projects, held jobs and decisions (see the module docstring)."""

    path = Unicode(
        "xnat-hpc-review/review.db",
        help="""SQLite file of results review: which projects need review (set by their owners on
        /hub/xnat-hpc/review), the jobs whose results are held (public facts, the hub's wrapped key
        share, previews sealed to the review key) and every owner's decision. Created 0600 in a
        directory created 0700. A relative path is relative to the hub's working directory.
        Example: "/var/lib/xnat-hpc-hub/review/review.db".""",
    ).tag(config=True)

    identity_file = Unicode(
        "xnat-hpc-review/review-key.txt",
        help="""The hub's review key (an age X25519 identity), created 0600 on first use. Jobs on
        projects that need review seal the hub's share of their results key and the previews of
        small text results to its public recipient; whoever holds this file and a job's sealed
        previews can read those previews — keep it where only the hub's account can read, and
        back it up with the review database (held results cannot be opened without it). To pin
        the recipient on the compute nodes, write it to /etc/xnat-hpc-hub/review-recipient there
        (``xnat-hpc-hub`` prints it at ``GET /hub/api/xnat-hpc/review/policy``).""",
    ).tag(config=True)

    _lock = threading.RLock()  # one per process: every instance shares the databases below
    _dbs: dict[str, sqlite3.Connection] = {}

    # -- plumbing ------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        path = os.path.abspath(self.path)
        with self._lock:
            db = self._dbs.get(path)
            if db is None:
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                if not os.path.exists(path):
                    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
                _private_file(Path(path))
                db = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
                db.row_factory = sqlite3.Row
                db.executescript(_SCHEMA)
                self._dbs[path] = db
            return db

    def _identity(self) -> AgeIdentity:
        path = Path(os.path.abspath(self.identity_file))
        with self._lock:
            if not path.exists():
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                key = AgeIdentity.generate()
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(f"# xnat-hpc-hub review key, created {now_iso()}\n"
                            f"# public key: {key.recipient}\n{key.secret()}\n")
                return key
            _private_file(path)
            return AgeIdentity(path.read_text())

    def recipient(self) -> str:
        return self._identity().recipient

    # -- projects ------------------------------------------------------------------
    def marked(self, projects: list[str] | set[str] | None = None) -> dict[str, dict]:
        """``{project: {"by", "time"}}`` of the marked projects (of *projects*, if given)."""
        with self._lock:
            rows = self._db().execute("SELECT * FROM marks").fetchall()
        out = {r["project"]: {"by": r["by"], "time": r["time"]} for r in rows}
        return out if projects is None else {p: v for p, v in out.items() if p in set(projects)}

    def mark(self, project: str, owner: str, on: bool) -> bool:
        """Mark or unmark *project*; True when that changed something."""
        db = self._db()
        with self._lock:
            if on:
                cur = db.execute("INSERT OR IGNORE INTO marks VALUES (?,?,?)", (project, owner, now_iso()))
            else:
                cur = db.execute("DELETE FROM marks WHERE project=?", (project,))
            return cur.rowcount > 0

    # -- jobs ----------------------------------------------------------------------
    def register(self, user: str, job_id: str, body: dict) -> dict:
        """Hold a job's results (a server's registration): the wrapped share and every preview
        must open with the review key (else they were sealed to another recipient)."""
        reg = check_registration(body)
        ident = self._identity()
        unwrap(reg["share"], ident)  # proves the share is ours; the plaintext is dropped
        for name, blob in reg["previews"].items():
            unwrap(blob, ident)
        db = self._db()
        with self._lock:
            row = db.execute("SELECT * FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            if row is not None:
                if row["share"] != reg["share"] and row["state"] == "held":
                    raise Conflict(f"job {job_id} of {user} is already held with another key share",
                                   item=job_id)
            else:
                db.execute(f"INSERT INTO jobs (user, id, {', '.join(_JOB_FIELDS)}, state, created) VALUES "
                           f"(?, ?, {', '.join('?' * len(_JOB_FIELDS))}, 'held', ?)",
                           [user, job_id, reg["dataset"], reg["dataset_version"], json.dumps(reg["projects"]),
                            reg["manifest_sha256"], reg["script_sha256"], reg["slurm_job_id"],
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
        """Jobs touching one of *projects*, newest first."""
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
        """The previews of a held job, decrypted with the review key (for the reviewer's page)."""
        with self._lock:
            row = self._db().execute("SELECT previews FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
        if row is None:
            return {}
        ident = self._identity()
        return {name: unwrap(blob, ident) for name, blob in json.loads(row["previews"] or "{}").items()}

    def record_decision(self, user: str, job_id: str, projects: list[str], owner: str, decision: str,
                        reason: str = "") -> dict:
        """*owner*'s decision for their *projects* of a held job; returns the job with its new
        state. A rejection destroys the hub's wrapped share and the previews at once."""
        if decision not in ("approve", "reject"):
            raise InvalidRequest("decision must be approve or reject")
        reason = reason.strip()[:MAX_REASON]
        if decision == "reject" and not reason:
            raise InvalidRequest("say why the results are rejected: the researcher reads the reason")
        db = self._db()
        with self._lock:
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
            elif rule["state"] == "approved":
                db.execute("UPDATE jobs SET state='approved', decided=? WHERE user=? AND id=?", (t, user, job_id))
            row = db.execute("SELECT * FROM jobs WHERE user=? AND id=?", (user, job_id)).fetchone()
            return self._job(row)

    def release_share(self, user: str, job_id: str) -> bytes:
        """The hub's share of an approved job, unwrapped (for the job's own user only)."""
        with self._lock:
            row = self._db().execute("SELECT state, share FROM jobs WHERE user=? AND id=?",
                                     (user, job_id)).fetchone()
        if row is None or row["state"] != "approved" or not row["share"]:
            raise PermissionDenied(f"the results of job {job_id} are not approved", item=job_id)
        return unwrap(row["share"], self._identity())
