"""The job registry: one SQLite database (WAL) per workspace, ``<workspace>/jobs.sqlite``.

States move forward only::

    staging → queued → running → collecting → done
        any non-terminal state → failed | cancelled | lost

A terminal state (done, failed, cancelled, lost) is final: :meth:`JobRegistry.update`
never changes the state of a terminal job, so a cancel from another process
(``xnat-hpc-hub jobs cancel``) cannot be overwritten by the process that runs
the job. Each row remembers its *owner* (host, pid, manager token): a new
manager marks jobs whose owner is gone as LOST (see
:meth:`JobRegistry.orphans`). The database holds no secret.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
import secrets
import sqlite3
import threading
from enum import Enum
from pathlib import Path

from ..errors import InvalidRequest, NotFound

_ID_RE = re.compile(r"^j[0-9a-f]{12}$")


class JobState(str, Enum):
    STAGING = "staging"
    QUEUED = "queued"
    RUNNING = "running"
    COLLECTING = "collecting"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.LOST})


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_job_id() -> str:
    return "j" + secrets.token_hex(6)


def check_job_id(job_id) -> str:
    if not isinstance(job_id, str) or not _ID_RE.match(job_id):
        raise InvalidRequest(f"{str(job_id)[:40]!r} is not a job id (j + 12 hex digits, e.g. "
                             "j3fa94c0d12ab)", item=str(job_id)[:40])
    return job_id


@dataclasses.dataclass
class JobRecord:
    id: str
    user: str
    dataset: str
    dataset_version: int
    manifest_sha256: str
    script: str
    script_sha256: str
    resources: dict
    state: JobState
    slurm_job_id: str | None
    created: str
    updated: str
    started: str | None
    ended: str | None
    exit_code: int | None
    message: str
    client_token: str | None
    #: where the job's start went, in seconds per phase (:mod:`~.phases`); {} until it ran
    phases: dict = dataclasses.field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["state"] = self.state.value
        return d


_FIELDS = [f.name for f in dataclasses.fields(JobRecord)]
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    {', '.join(f + (' TEXT PRIMARY KEY' if f == 'id' else '') for f in _FIELDS)},
    owner TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs (created);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_token ON jobs (client_token) WHERE client_token IS NOT NULL;
"""


def _row_to_record(row: sqlite3.Row) -> JobRecord:
    d = {k: row[k] for k in _FIELDS}
    d["state"] = JobState(d["state"])
    d["resources"] = json.loads(d["resources"] or "{}")
    d["phases"] = json.loads(d["phases"] or "{}")
    d["dataset_version"] = int(d["dataset_version"])
    d["exit_code"] = None if d["exit_code"] is None else int(d["exit_code"])
    return JobRecord(**d)


class JobRegistry:
    """Jobs of one workspace; thread-safe; survives restarts (SQLite, WAL)."""

    def __init__(self, workspace: str | Path):
        self.workspace = Path(workspace)
        self.workspace.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = self.workspace / "jobs.sqlite"
        if not self.path.exists():
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o600))
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, isolation_level=None, timeout=30, check_same_thread=False)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        have = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
        for missing in [f for f in _FIELDS if f not in have]:  # a registry of an older release
            self._db.execute(f"ALTER TABLE jobs ADD COLUMN {missing}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def add(self, rec: JobRecord, owner: str) -> JobRecord:
        """Insert *rec*; with a known client_token return the existing job instead."""
        with self._lock:
            if rec.client_token is not None:
                existing = self.by_token(rec.client_token)
                if existing is not None:
                    return existing
            d = rec.to_json()
            d["resources"] = json.dumps(d["resources"], sort_keys=True)
            d["phases"] = json.dumps(d["phases"])
            cols = _FIELDS + ["owner"]
            self._db.execute(f"INSERT INTO jobs ({','.join(cols)}) VALUES ({','.join('?' * len(cols))})",
                             [d[f] for f in _FIELDS] + [owner])
            return rec

    def by_token(self, token: str) -> JobRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE client_token=?", (token,)).fetchone()
        return _row_to_record(row) if row else None

    def get(self, job_id: str) -> JobRecord:
        check_job_id(job_id)
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id} in {self.path.parent}", item=job_id)
        return _row_to_record(row)

    def list(self) -> list[JobRecord]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created DESC, rowid DESC").fetchall()
        return [_row_to_record(r) for r in rows]

    def update(self, job_id: str, **fields) -> JobRecord:
        """Set *fields* (and ``updated``); a terminal job keeps its state, ended and message."""
        unknown = set(fields) - set(_FIELDS)
        if unknown:
            raise ValueError(f"unknown job fields {sorted(unknown)}")
        with self._lock:
            current = self.get(job_id)
            if current.terminal:
                for k in ("state", "ended", "message", "exit_code"):
                    fields.pop(k, None)
            if "state" in fields:
                fields["state"] = JobState(fields["state"]).value
                if JobState(fields["state"]) in TERMINAL and "ended" not in fields:
                    fields["ended"] = now_iso()
            if "resources" in fields:
                fields["resources"] = json.dumps(fields["resources"], sort_keys=True)
            if "phases" in fields:  # in the order they happened
                fields["phases"] = json.dumps(fields["phases"])
            fields["updated"] = now_iso()
            sets = ", ".join(f"{k}=?" for k in fields)
            self._db.execute(f"UPDATE jobs SET {sets} WHERE id=?", [*fields.values(), job_id])
            return self.get(job_id)

    def owner(self, job_id: str) -> str:
        with self._lock:
            row = self._db.execute("SELECT owner FROM jobs WHERE id=?", (job_id,)).fetchone()
        return row["owner"] if row else ""

    def active(self) -> list[tuple[JobRecord, str]]:
        """Non-terminal jobs with their owner string."""
        states = [s.value for s in JobState if s not in TERMINAL]
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM jobs WHERE state IN ({','.join('?' * len(states))})",
                                    states).fetchall()
        return [(_row_to_record(r), r["owner"]) for r in rows]
