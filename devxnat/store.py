"""SQLite state of the development XNAT: users, sessions, alias tokens,
projects and membership, and the catalog of subjects, experiments, scans,
resources and files.

One database file, ``DATA/devxnat.sqlite3``, in WAL mode; every write is one
transaction, so a server killed mid-write loses nothing that was committed.
The file (and SQLite's -wal/-shm files) is 0600 (:func:`make_private`, at server start).
Passwords are stored as scrypt hashes with a per-user salt; alias-token
secrets and session ids only as SHA-256 digests (they are high-entropy random
strings, returned once at issue time).

A resource belongs to a project, a subject, an experiment or a scan, as in XNAT
(:class:`ResourceOwner`). A database made by an older devxnat, whose resources were
experiments' and scans' only, is migrated when it is opened (:meth:`Store._migrate_resources`).

The API is plain methods returning dicts / tuples; no HTTP here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
import uuid
from pathlib import Path

#: XNAT's project groups, as used in ``/data/projects/{P}/users/{group}/{user}``
GROUPS = ("Owners", "Members", "Collaborators")
#: group → XNAT group-id suffix (``{P}_owner`` ...)
GROUP_SUFFIX = {"Owners": "owner", "Members": "member", "Collaborators": "collaborator"}
ACCESSIBILITY = ("private", "protected", "public")
#: XNAT's site-wide data access groups: read every project / read and edit every project
SITE_GROUPS = ("ALL_DATA_ACCESS", "ALL_DATA_ADMIN")

#: XNAT's default alias-token lifetime (``aliasTokenTimeout``: 2 days)
DEFAULT_TOKEN_TTL_S = 48 * 3600
#: XNAT's default session timeout is 15 minutes of inactivity; the dev server
#: is generous (8 h) because tests and notebooks keep sessions for long.
DEFAULT_SESSION_TTL_S = 8 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    xdat_user_id INTEGER PRIMARY KEY AUTOINCREMENT,
    login TEXT UNIQUE NOT NULL,
    salt BLOB NOT NULL,
    pw_hash BLOB NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    admin INTEGER NOT NULL DEFAULT 0,
    firstname TEXT NOT NULL DEFAULT '',
    lastname TEXT NOT NULL DEFAULT '',
    email TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS roles (
    login TEXT NOT NULL REFERENCES users(login),
    role TEXT NOT NULL,
    PRIMARY KEY (login, role)
);
CREATE TABLE IF NOT EXISTS site_groups (
    login TEXT NOT NULL REFERENCES users(login),
    grp TEXT NOT NULL,
    PRIMARY KEY (login, grp)
);
CREATE TABLE IF NOT EXISTS sessions (
    sid_hash TEXT PRIMARY KEY,
    login TEXT NOT NULL REFERENCES users(login),
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alias TEXT UNIQUE NOT NULL,
    secret_hash TEXT NOT NULL,
    login TEXT NOT NULL REFERENCES users(login),
    created REAL NOT NULL,
    expires REAL NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    secondary_id TEXT NOT NULL DEFAULT '',
    pi_firstname TEXT NOT NULL DEFAULT '',
    pi_lastname TEXT NOT NULL DEFAULT '',
    accessibility TEXT NOT NULL DEFAULT 'private',
    insert_date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    project TEXT NOT NULL REFERENCES projects(id),
    login TEXT NOT NULL REFERENCES users(login),
    grp TEXT NOT NULL,
    PRIMARY KEY (project, login)
);
CREATE INDEX IF NOT EXISTS members_login ON members(login);
CREATE TABLE IF NOT EXISTS subjects (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL REFERENCES projects(id),
    label TEXT NOT NULL,
    gender TEXT NOT NULL DEFAULT '',
    yob TEXT NOT NULL DEFAULT '',
    insert_date TEXT NOT NULL,
    insert_user TEXT NOT NULL DEFAULT 'admin',
    UNIQUE (project, label)
);
CREATE TABLE IF NOT EXISTS experiments (
    id TEXT PRIMARY KEY,
    project TEXT NOT NULL REFERENCES projects(id),
    subject_id TEXT NOT NULL REFERENCES subjects(id),
    label TEXT NOT NULL,
    xsi_type TEXT NOT NULL,
    date TEXT NOT NULL DEFAULT '',
    modality TEXT NOT NULL DEFAULT '',
    insert_date TEXT NOT NULL,
    insert_user TEXT NOT NULL DEFAULT 'admin',
    UNIQUE (project, label)
);
CREATE INDEX IF NOT EXISTS experiments_subject ON experiments(subject_id);
CREATE TABLE IF NOT EXISTS scans (
    experiment_id TEXT NOT NULL REFERENCES experiments(id),
    scan_id TEXT NOT NULL,
    xsi_type TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT '',
    series_description TEXT NOT NULL DEFAULT '',
    quality TEXT NOT NULL DEFAULT 'usable',
    note TEXT NOT NULL DEFAULT '',
    frames TEXT NOT NULL DEFAULT '',
    pk INTEGER PRIMARY KEY AUTOINCREMENT,
    UNIQUE (experiment_id, scan_id)
);
CREATE TABLE IF NOT EXISTS files (
    resource_id INTEGER NOT NULL REFERENCES resources(id),
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    md5 TEXT NOT NULL,
    format TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (resource_id, path)
);
"""

#: A resource belongs to exactly one item, as in XNAT (docs/xnat-resource-api.md §1, §2): a
#: project (``project``), a subject (``subject_id``), or an experiment (``experiment_id``, with
#: ``scan_id`` for a scan's resource); the other owner columns are NULL, so that each keeps its
#: foreign key. ``{name}`` is the table's name (the migration builds it under another first).
_RESOURCES = """
CREATE TABLE IF NOT EXISTS {name} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project TEXT REFERENCES projects(id),
    subject_id TEXT REFERENCES subjects(id),
    experiment_id TEXT REFERENCES experiments(id),
    scan_id TEXT NOT NULL DEFAULT '',
    label TEXT NOT NULL,
    format TEXT NOT NULL DEFAULT '',
    content TEXT NOT NULL DEFAULT '',
    CHECK ((project IS NOT NULL) + (subject_id IS NOT NULL) + (experiment_id IS NOT NULL) = 1),
    CHECK (scan_id = '' OR experiment_id IS NOT NULL)
)"""
#: one label per owner; the owner columns as :meth:`Store.resources_of` looks them up
_RESOURCES_INDEX = """
CREATE UNIQUE INDEX IF NOT EXISTS resources_owner_label ON resources(
    COALESCE(project, ''), COALESCE(subject_id, ''), COALESCE(experiment_id, ''), scan_id, label)"""
#: the columns the ``resources`` table had before it kept project and subject resources
_OLD_RESOURCE_COLUMNS = "id, experiment_id, scan_id, label, format, content"


@dataclasses.dataclass(frozen=True)
class ResourceOwner:
    """The item a resource belongs to, by its store key: exactly one of *project*,
    *subject_id* and *experiment_id*; *scan_id* names a scan of the experiment."""

    project: str | None = None
    subject_id: str | None = None
    experiment_id: str | None = None
    scan_id: str = ""

    def __post_init__(self):
        named = [f for f in ("project", "subject_id", "experiment_id") if getattr(self, f) is not None]
        if len(named) != 1:
            raise ValueError(f"a resource belongs to exactly one of a project, a subject or an "
                             f"experiment; {self!r} names {len(named)}")
        if self.scan_id and self.experiment_id is None:
            raise ValueError(f"a scan's resource needs the scan's experiment: {self!r}")

    def columns(self) -> tuple[str, str, str, str]:
        """The values of ``resources_owner_label``'s owner columns."""
        return self.project or "", self.subject_id or "", self.experiment_id or "", self.scan_id


def hash_password(password: str, salt: bytes) -> bytes:
    """scrypt (n=2**14, r=8, p=1), 32 bytes."""
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1, dklen=32)


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def now_iso(ts: float | None = None) -> str:
    """XNAT's date-time format in listings (``2024-01-31 12:00:00.0``)."""
    return time.strftime("%Y-%m-%d %H:%M:%S.0", time.localtime(ts or time.time()))


class Store:
    """Thread-safe access (one connection per thread) to ``devxnat.sqlite3``."""

    def __init__(self, path: Path | str):
        self.path = str(path)
        self._local = threading.local()
        # executescript commits by itself; every statement is IF NOT EXISTS
        self.db.executescript(_SCHEMA + _RESOURCES.format(name="resources") + ";")
        self._migrate_resources()
        self.db.execute(_RESOURCES_INDEX)

    def _migrate_resources(self) -> None:
        """Rebuild a ``resources`` table made by an older devxnat, which kept experiments' and
        scans' resources only (``experiment_id NOT NULL``, ``UNIQUE (experiment_id, scan_id,
        label)``), as :data:`_RESOURCES`: SQLite's table rebuild (create the new table, copy the
        rows with their ids, drop the old one, rename), in one transaction, with foreign keys off
        meanwhile (``files`` refers to the table) and checked before the commit. The
        AUTOINCREMENT counter is carried over, so no resource id is handed out twice."""
        if "project" in self._columns("resources"):
            return
        db = self.db
        db.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction: set before it
        try:
            with self.tx():
                if "project" in self._columns("resources"):
                    return  # another process migrated it while this one waited
                seq = db.execute("SELECT seq FROM sqlite_sequence WHERE name='resources'").fetchone()
                db.execute(_RESOURCES.format(name="resources_new"))
                db.execute(f"INSERT INTO resources_new({_OLD_RESOURCE_COLUMNS})"
                           f" SELECT {_OLD_RESOURCE_COLUMNS} FROM resources")
                db.execute("DROP TABLE resources")
                db.execute("ALTER TABLE resources_new RENAME TO resources")
                if seq is not None:
                    db.execute("UPDATE sqlite_sequence SET seq=MAX(seq, ?) WHERE name='resources'", (seq[0],))
                broken = [tuple(r) for table in ("resources", "files")
                          for r in db.execute(f"PRAGMA foreign_key_check({table})")]
                if broken:
                    raise sqlite3.IntegrityError(
                        f"{self.path}: cannot migrate the resources table, rows refer to items that do "
                        f"not exist (table, rowid, parent, constraint): {broken[:10]}; nothing was changed")
        finally:
            db.execute("PRAGMA foreign_keys=ON")

    def _columns(self, table: str) -> set[str]:
        return {r["name"] for r in self.db.execute(f"PRAGMA table_info({table})")}

    # -- plumbing ---------------------------------------------------------
    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA busy_timeout=5000")
            self._local.conn = conn
        return conn

    def tx(self):
        """``with store.tx() as db:`` — one IMMEDIATE transaction."""
        return _Tx(self.db)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # -- users ------------------------------------------------------------
    def add_user(self, login: str, password: str, *, admin: bool = False, enabled: bool = True,
                 firstname: str = "", lastname: str = "", email: str = "") -> None:
        salt = secrets.token_bytes(16)
        with self.tx() as db:
            db.execute(
                "INSERT INTO users(login, salt, pw_hash, enabled, admin, firstname, lastname, email)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (login, salt, hash_password(password, salt), int(enabled), int(admin),
                 firstname, lastname, email or f"{login}@example.org"),
            )

    def set_enabled(self, login: str, enabled: bool) -> None:
        with self.tx() as db:
            db.execute("UPDATE users SET enabled=? WHERE login=?", (int(enabled), login))

    def user(self, login: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM users WHERE login=?", (login,)).fetchone()

    def users(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM users ORDER BY login").fetchall()

    def check_password(self, login: str, password: str) -> sqlite3.Row | None:
        """The user row if the password matches (enabled or not), else None."""
        row = self.user(login)
        if row is None:
            # spend the same time as a real check, so logins cannot be probed by timing
            hash_password(password, b"0" * 16)
            return None
        if hmac.compare_digest(hash_password(password, row["salt"]), row["pw_hash"]):
            return row
        return None

    # -- site roles (``Administrator``, ``Jupyter``, ...) ------------------
    def add_role(self, login: str, role: str) -> None:
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO roles(login, role) VALUES (?,?)", (login, role))

    def remove_role(self, login: str, role: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM roles WHERE login=? AND role=?", (login, role)).rowcount > 0

    def roles(self, login: str) -> list[str]:
        """Site roles; site admins always have ``Administrator`` (as in XNAT)."""
        row = self.user(login)
        if row is None:
            return []
        names = {r[0] for r in self.db.execute("SELECT role FROM roles WHERE login=?", (login,))}
        if row["admin"]:
            names.add("Administrator")
        return sorted(names)

    def set_password(self, login: str, password: str) -> None:
        salt = secrets.token_bytes(16)
        with self.tx() as db:
            db.execute("UPDATE users SET salt=?, pw_hash=? WHERE login=?",
                       (salt, hash_password(password, salt), login))

    # -- site-wide data groups (``ALL_DATA_ACCESS``, ``ALL_DATA_ADMIN``) ---
    def add_site_group(self, login: str, group: str) -> None:
        if group not in SITE_GROUPS:
            raise ValueError(f"site group must be one of {SITE_GROUPS}, not {group!r}")
        with self.tx() as db:
            db.execute("INSERT OR IGNORE INTO site_groups(login, grp) VALUES (?,?)", (login, group))

    def remove_site_group(self, login: str, group: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM site_groups WHERE login=? AND grp=?", (login, group)).rowcount > 0

    def site_groups(self, login: str) -> list[str]:
        return sorted(r[0] for r in self.db.execute("SELECT grp FROM site_groups WHERE login=?", (login,)))

    # -- sessions (JSESSIONID) --------------------------------------------
    def new_session(self, login: str, ttl_s: float = DEFAULT_SESSION_TTL_S) -> str:
        sid = secrets.token_hex(16).upper()  # 32 hex chars, like Tomcat's ids
        with self.tx() as db:
            db.execute("DELETE FROM sessions WHERE expires < ?", (time.time(),))
            db.execute("INSERT INTO sessions VALUES (?,?,?)", (_digest(sid), login, time.time() + ttl_s))
        return sid

    def session_user(self, sid: str) -> str | None:
        row = self.db.execute(
            "SELECT login FROM sessions WHERE sid_hash=? AND expires>=?", (_digest(sid), time.time())
        ).fetchone()
        return row[0] if row else None

    def end_session(self, sid: str) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM sessions WHERE sid_hash=?", (_digest(sid),))

    # -- alias tokens -----------------------------------------------------
    def issue_token(self, login: str, ttl_s: float = DEFAULT_TOKEN_TTL_S) -> dict:
        alias = str(uuid.uuid4())
        secret = secrets.token_urlsafe(48)
        created = time.time()
        with self.tx() as db:
            cur = db.execute(
                "INSERT INTO tokens(alias, secret_hash, login, created, expires) VALUES (?,?,?,?,?)",
                (alias, _digest(secret), login, created, created + ttl_s),
            )
        return {"id": cur.lastrowid, "alias": alias, "secret": secret, "login": login,
                "created": created, "expires": created + ttl_s}

    def token(self, alias: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM tokens WHERE alias=?", (alias,)).fetchone()

    def validate_token(self, alias: str, secret: str) -> str | None:
        """The token's login if alias+secret match, it is enabled and not expired."""
        row = self.token(alias)
        if row is None or not row["enabled"] or row["expires"] < time.time():
            return None
        if not hmac.compare_digest(_digest(secret), row["secret_hash"]):
            return None
        return row["login"]

    def invalidate_token(self, alias: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE tokens SET enabled=0 WHERE alias=?", (alias,))

    # -- projects and membership -------------------------------------------
    def add_project(self, pid: str, name: str, *, description: str = "", accessibility: str = "private",
                    pi: tuple[str, str] = ("", "")) -> None:
        if accessibility not in ACCESSIBILITY:
            raise ValueError(f"accessibility must be one of {ACCESSIBILITY}, not {accessibility!r}")
        with self.tx() as db:
            db.execute(
                "INSERT INTO projects(id, name, description, accessibility, pi_firstname, pi_lastname, insert_date)"
                " VALUES (?,?,?,?,?,?,?)",
                (pid, name, description, accessibility, pi[0], pi[1], now_iso()),
            )

    def project(self, pid: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM projects WHERE id=?", (pid,)).fetchone()

    def projects(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM projects ORDER BY id").fetchall()

    def set_member(self, pid: str, login: str, group: str) -> None:
        if group not in GROUPS:
            raise ValueError(f"group must be one of {GROUPS}, not {group!r}")
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO members(project, login, grp) VALUES (?,?,?)", (pid, login, group))

    def remove_member(self, pid: str, login: str) -> bool:
        with self.tx() as db:
            return db.execute("DELETE FROM members WHERE project=? AND login=?", (pid, login)).rowcount > 0

    def group_of(self, pid: str, login: str) -> str | None:
        row = self.db.execute("SELECT grp FROM members WHERE project=? AND login=?", (pid, login)).fetchone()
        return row[0] if row else None

    def memberships(self, login: str) -> dict[str, str]:
        rows = self.db.execute("SELECT project, grp FROM members WHERE login=?", (login,)).fetchall()
        return {r[0]: r[1] for r in rows}

    def project_members(self, pid: str) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT m.grp, u.* FROM members m JOIN users u ON u.login=m.login WHERE m.project=? ORDER BY u.login",
            (pid,),
        ).fetchall()

    # -- catalog ----------------------------------------------------------
    def _next_id(self, db: sqlite3.Connection, kind: str) -> str:
        key = f"counter_{kind}"
        row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        n = int(row[0]) + 1 if row else 1
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?,?)", (key, str(n)))
        return f"XNAT_{kind}{n:05d}"

    def add_subject(self, project: str, label: str, *, gender: str = "", yob: str = "") -> str:
        with self.tx() as db:
            sid = self._next_id(db, "S")
            db.execute(
                "INSERT INTO subjects(id, project, label, gender, yob, insert_date) VALUES (?,?,?,?,?,?)",
                (sid, project, label, gender, yob, now_iso()),
            )
        return sid

    def add_experiment(self, project: str, subject_id: str, label: str, xsi_type: str, *,
                       date: str = "", modality: str = "") -> str:
        with self.tx() as db:
            eid = self._next_id(db, "E")
            db.execute(
                "INSERT INTO experiments(id, project, subject_id, label, xsi_type, date, modality, insert_date)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (eid, project, subject_id, label, xsi_type, date, modality, now_iso()),
            )
        return eid

    def add_scan(self, experiment_id: str, scan_id: str, xsi_type: str, *, type: str = "",
                 series_description: str = "", quality: str = "usable", note: str = "", frames: str = "") -> None:
        with self.tx() as db:
            db.execute(
                "INSERT INTO scans(experiment_id, scan_id, xsi_type, type, series_description, quality, note, frames)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (experiment_id, scan_id, xsi_type, type, series_description, quality, note, frames),
            )

    def add_resource(self, experiment_id: str, scan_id: str, label: str, *, format: str = "",
                     content: str = "", files: list[tuple[str, int, str]] = ()) -> int:
        """Add a resource of an experiment (*scan_id* '') or of one of its scans, with its
        files: ``(path, size, md5)`` triples."""
        return self.add_resource_to(ResourceOwner(experiment_id=experiment_id, scan_id=scan_id), label,
                                    format=format, content=content, files=files)

    def add_resource_to(self, owner: ResourceOwner, label: str, *, format: str = "", content: str = "",
                        files: list[tuple[str, int, str]] = ()) -> int:
        """Add a resource of *owner* (a project, a subject, an experiment or a scan) with its
        files: ``(path, size, md5)`` triples; its id."""
        with self.tx() as db:
            rid = db.execute(
                "INSERT INTO resources(project, subject_id, experiment_id, scan_id, label, format, content)"
                " VALUES (?,?,?,?,?,?,?)",
                (owner.project, owner.subject_id, owner.experiment_id, owner.scan_id, label, format, content),
            ).lastrowid
            db.executemany(
                "INSERT INTO files(resource_id, path, size, md5, format, content) VALUES (?,?,?,?,?,?)",
                [(rid, p, s, m, format, content) for p, s, m in files],
            )
        return rid

    def update_resource(self, resource_id: int, *, format: str, content: str) -> None:
        with self.tx() as db:
            db.execute("UPDATE resources SET format=?, content=? WHERE id=?", (format, content, resource_id))

    def put_file(self, resource_id: int, path: str, size: int, md5: str, *, format: str = "",
                 content: str = "") -> None:
        """Add or replace the file *path* of a resource (an upload; an overwrite replaces it)."""
        with self.tx() as db:
            db.execute("INSERT OR REPLACE INTO files(resource_id, path, size, md5, format, content)"
                       " VALUES (?,?,?,?,?,?)", (resource_id, path, size, md5, format, content))

    def delete_files(self, resource_id: int, paths: list[str]) -> None:
        with self.tx() as db:
            db.executemany("DELETE FROM files WHERE resource_id=? AND path=?", [(resource_id, p) for p in paths])

    def delete_resource(self, resource_id: int) -> None:
        with self.tx() as db:
            db.execute("DELETE FROM files WHERE resource_id=?", (resource_id,))
            db.execute("DELETE FROM resources WHERE id=?", (resource_id,))

    def subjects(self, project: str) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM subjects WHERE project=? ORDER BY label", (project,)).fetchall()

    def subject(self, project: str, id_or_label: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM subjects WHERE project=? AND (id=? OR label=?)", (project, id_or_label, id_or_label)
        ).fetchone()

    def subject_by_id(self, sid: str) -> sqlite3.Row | None:
        return self.db.execute("SELECT * FROM subjects WHERE id=?", (sid,)).fetchone()

    _EXPT_COLS = "e.*, s.label AS subject_label"

    def experiments(self, *, project: str | None = None, subject_id: str | None = None,
                    projects: list[str] | None = None) -> list[sqlite3.Row]:
        sql = f"SELECT {self._EXPT_COLS} FROM experiments e JOIN subjects s ON s.id=e.subject_id"
        where, args = [], []
        if project is not None:
            where.append("e.project=?")
            args.append(project)
        if subject_id is not None:
            where.append("e.subject_id=?")
            args.append(subject_id)
        if projects is not None:
            where.append(f"e.project IN ({','.join('?' * len(projects))})")
            args.extend(projects)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.db.execute(sql + " ORDER BY e.id", args).fetchall()

    def experiment(self, id_or_label: str, project: str | None = None) -> sqlite3.Row | None:
        base = f"SELECT {self._EXPT_COLS} FROM experiments e JOIN subjects s ON s.id=e.subject_id"
        if project is None:
            return self.db.execute(base + " WHERE e.id=?", (id_or_label,)).fetchone()
        return self.db.execute(
            base + " WHERE e.project=? AND (e.id=? OR e.label=?)", (project, id_or_label, id_or_label)
        ).fetchone()

    def scans(self, experiment_id: str) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM scans WHERE experiment_id=? ORDER BY pk", (experiment_id,)
        ).fetchall()

    def scan(self, experiment_id: str, scan_id: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM scans WHERE experiment_id=? AND scan_id=?", (experiment_id, scan_id)
        ).fetchone()

    _RES_COLS = ("r.*, COUNT(f.path) AS file_count, COALESCE(SUM(f.size), 0) AS file_size")

    def resources(self, experiment_id: str, scan_id: str = "") -> list[sqlite3.Row]:
        """The resources of an experiment (*scan_id* '') or of one of its scans."""
        return self.resources_of(ResourceOwner(experiment_id=experiment_id, scan_id=scan_id))

    def resource(self, experiment_id: str, scan_id: str, id_or_label: str) -> sqlite3.Row | None:
        return self.resource_of(ResourceOwner(experiment_id=experiment_id, scan_id=scan_id), id_or_label)

    def resources_of(self, owner: ResourceOwner) -> list[sqlite3.Row]:
        """The resources of *owner*, in the order they were made, with ``file_count`` and ``file_size``."""
        return self.db.execute(
            f"SELECT {self._RES_COLS} FROM resources r LEFT JOIN files f ON f.resource_id=r.id"
            " WHERE COALESCE(r.project, '')=? AND COALESCE(r.subject_id, '')=?"
            " AND COALESCE(r.experiment_id, '')=? AND r.scan_id=? GROUP BY r.id ORDER BY r.id",
            owner.columns(),
        ).fetchall()

    def resource_of(self, owner: ResourceOwner, id_or_label: str) -> sqlite3.Row | None:
        """The resource of *owner* with that id (``xnat_abstractresource_id``), else that label."""
        rows = self.resources_of(owner)
        for r in rows:
            if str(r["id"]) == id_or_label:
                return r
        for r in rows:
            if r["label"] == id_or_label:
                return r
        return None

    def files(self, resource_id: int) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT * FROM files WHERE resource_id=? ORDER BY path", (resource_id,)
        ).fetchall()

    def file(self, resource_id: int, path: str) -> sqlite3.Row | None:
        return self.db.execute(
            "SELECT * FROM files WHERE resource_id=? AND path=?", (resource_id, path)
        ).fetchone()


def make_private(path: Path | str) -> None:
    """Create the database file *path* 0600 if missing, and make it and SQLite's companion
    files (-wal, -shm, -journal) 0600: it holds password hashes and token digests. SQLite
    gives the files it creates the database file's mode, so they stay 0600.

    Call it before this process opens the database (the server does, at start): opening
    and closing a descriptor of a file on which SQLite holds POSIX locks would drop them."""
    path = str(path)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for suffix in ("-wal", "-shm", "-journal"):
        companion = Path(path + suffix)
        if companion.exists() and not companion.is_symlink():
            companion.chmod(0o600)


class _Tx:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        # nested use (inside an outer ``tx()``) joins the outer transaction
        self.outer = not self.db.in_transaction
        if self.outer:
            self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.outer:
            return
        if exc_type is None:
            self.db.execute("COMMIT")
        else:
            self.db.execute("ROLLBACK")
