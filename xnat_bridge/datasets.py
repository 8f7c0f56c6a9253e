"""Datasets (named selections of XNAT items) and their manifests.

A **selection** is a list of items, each one of::

    {"project": "P"}                                        every experiment of P
    {"project": "P", "subject": "S"}                         every experiment of S
    {"project": "P", "experiment": "E"}                      all scans of E
    {"project": "P", "experiment": "E", "scan": "1"}         one scan (all resources)
    {"project": "P", "experiment": "E", "scan": "1", "resource": "NIFTI"}
    {"project": "P", "experiment": "E", "resource": "NOTES"} a session resource

A **manifest** resolves a selection to every file: XNAT URI, archive-relative
path, dataset-relative name, size, XNAT md5 and sha256 (computed streaming,
once, cached by XNAT digest + size). It is saved as versioned JSON in the
user's workspace (``~/xnat-hpc/datasets/{name}/v{N}.json``) and carries a
digest of its file list, so a hand-edited manifest is detected on load;
:meth:`Manifest.changes` re-resolves the selection and reports files that
changed in XNAT, so a stale manifest is reported, never silently used.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import re
import sqlite3
import threading
from pathlib import Path
from typing import Callable

from .browse import Browser
from .errors import Conflict, InvalidRequest, NotFound
from .files import FileAccess, FileRef, safe_relpath
from .scope import check_id

FORMAT = "xnat-hpc-manifest"
FORMAT_VERSION = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
_SELECTION_KEYS = {"project", "subject", "experiment", "scan", "resource"}


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name.strip() != name:
        raise InvalidRequest(
            f"dataset name {name!r} is not allowed: use 1-64 letters, digits, spaces, '_', '-' "
            "or '.', starting with a letter or digit", item=str(name)[:80])
    return name


def check_selection(items: list[dict]) -> list[dict]:
    """Validate a selection (pure); returns normalised copies."""
    if not isinstance(items, list) or not items:
        raise InvalidRequest("a dataset needs at least one selected item")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "project" not in item:
            raise InvalidRequest(f"selection item {i} must be a mapping with a 'project'")
        unknown = set(item) - _SELECTION_KEYS
        if unknown:
            raise InvalidRequest(f"selection item {i} has unknown keys {sorted(unknown)}")
        norm = {k: check_id(str(v), k) for k, v in item.items() if v not in (None, "")}
        if ("scan" in norm or "resource" in norm) and "experiment" not in norm:
            raise InvalidRequest(f"selection item {i}: a scan or resource needs its experiment")
        if "subject" in norm and "experiment" in norm:
            norm.pop("subject")  # the experiment alone says it
        out.append(norm)
    return out


@dataclasses.dataclass(frozen=True)
class ManifestFile:
    name: str
    uri: str
    archive_path: str
    size: int
    md5: str
    sha256: str

    def ref(self) -> FileRef:
        return FileRef(self.uri, self.archive_path, self.size, self.md5, self.sha256)


def files_digest(files: list[ManifestFile]) -> str:
    """sha256 of the canonical JSON of the file list (pure)."""
    canon = json.dumps([dataclasses.asdict(f) for f in files], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    created: str
    user: str
    xnat_host: str
    selection: list[dict]
    files: list[ManifestFile]
    digest: str

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "format_version": FORMAT_VERSION, "name": self.name,
            "version": self.version, "created": self.created, "user": self.user,
            "xnat_host": self.xnat_host, "selection": self.selection,
            "file_count": len(self.files), "total_size": self.total_size,
            "digest": self.digest, "files": [dataclasses.asdict(f) for f in self.files],
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "Manifest":
        try:
            doc = json.loads(text)
            if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
                raise InvalidRequest(f"{source} is not an {FORMAT} v{FORMAT_VERSION} file")
            files = [ManifestFile(**{k: f[k] for k in ("name", "uri", "archive_path", "size",
                                                         "md5", "sha256")}) for f in doc["files"]]
            m = cls(check_name(doc["name"]), int(doc["version"]), str(doc["created"]),
                    str(doc["user"]), str(doc["xnat_host"]), check_selection(doc["selection"]),
                    files, str(doc["digest"]))
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidRequest(f"{source} is not a valid manifest: {e}") from None
        for f in m.files:
            safe_relpath(f.name)
            safe_relpath(f.archive_path)
        if files_digest(m.files) != m.digest:
            raise Conflict(f"{source} was modified after it was created (its digest does not match "
                           "its files); create the dataset again instead of editing it", item=source)
        return m


class HashCache:
    """sha256 of XNAT files, keyed by host + URI + XNAT md5 + size (SQLite, per user)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._local = threading.local()
        self._db().execute("CREATE TABLE IF NOT EXISTS h (k TEXT PRIMARY KEY, sha256 TEXT NOT NULL)")

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = self._local.db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            db.execute("PRAGMA journal_mode=WAL")
        return db

    @staticmethod
    def key(host: str, ref: FileRef) -> str:
        return f"{host}\n{ref.uri}\n{ref.md5}\n{ref.size}"

    def get(self, key: str) -> str | None:
        row = self._db().execute("SELECT sha256 FROM h WHERE k=?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, sha: str) -> None:
        self._db().execute("INSERT OR REPLACE INTO h VALUES (?,?)", (key, sha))


def _archive_path(project: str, session_label: str, uri: str, resource_label: str, path: str) -> str:
    m = re.search(r"/scans/([^/]+)/resources/", uri)
    if m:
        return f"{project}/arc001/{session_label}/SCANS/{m.group(1)}/{resource_label}/{path}"
    return f"{project}/arc001/{session_label}/RESOURCES/{resource_label}/{path}"


def _name(project: str, subject_label: str, session_label: str, archive_path: str) -> str:
    rest = archive_path.split("/", 3)[3]  # after {P}/arc001/{session}/
    return f"{project}/{subject_label or '_'}/{session_label}/{rest}"


def list_files(browser: Browser, selection: list[dict]) -> list[ManifestFile]:
    """Resolve a selection to its files (without sha256 yet), deduplicated, sorted."""
    seen: dict[str, ManifestFile] = {}
    for item in check_selection(selection):
        project = item["project"]
        if "experiment" in item:
            exps = [browser.experiment(project, item["experiment"])]
        else:
            exps = browser.all_experiments(project, item.get("subject"))
        for e in exps:
            subject_label = e.subject_label
            if not subject_label:
                subject_label = item.get("subject", "") or e.subject_id
            for f in browser.files(project, e.id, item.get("scan"), item.get("resource")):
                ap = _archive_path(project, e.label, f.uri, f.resource, f.path)
                seen[f.uri] = ManifestFile(_name(project, subject_label, e.label, ap), f.uri, ap,
                                           f.size, f.md5, "")
    if not seen:
        raise NotFound("the selection contains no files")
    return sorted(seen.values(), key=lambda f: f.name)


def hash_files(files: list[ManifestFile], access: FileAccess, cache: HashCache, host: str,
               *, workers: int = 4, progress: Callable[[int], None] | None = None) -> list[ManifestFile]:
    """Fill in sha256 for every file: from the cache, else streaming through *access*."""
    import concurrent.futures as cf

    def one(f: ManifestFile) -> ManifestFile:
        key = HashCache.key(host, f.ref())
        sha = cache.get(key)
        if sha is None:
            h = hashlib.sha256()
            size = 0
            with access.open(f.ref()) as stream:
                while chunk := stream.read(1 << 20):
                    h.update(chunk)
                    size += len(chunk)
            if size != f.size:
                raise Conflict(f"{f.archive_path} has {size} bytes, XNAT says {f.size}", item=f.name)
            sha = h.hexdigest()
            cache.put(key, sha)
        if progress:
            progress(f.size)
        return dataclasses.replace(f, sha256=sha)

    with cf.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(one, files))


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class DatasetStore:
    """Versioned manifests in ``root/{name}/v{N}.json`` (written atomically, 0600)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _dir(self, name: str) -> Path:
        return self.root / check_name(name)

    def versions(self, name: str) -> list[int]:
        d = self._dir(name)
        if not d.is_dir():
            return []
        return sorted(int(p.stem[1:]) for p in d.glob("v*.json") if p.stem[1:].isdigit())

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and NAME_RE.match(p.name)
                      and self.versions(p.name))

    def load(self, name: str, version: int | None = None) -> Manifest:
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"no dataset named {name!r}", item=name)
        v = versions[-1] if version is None else int(version)
        if v not in versions:
            raise NotFound(f"dataset {name!r} has no version {v}", item=name)
        path = self._dir(name) / f"v{v}.json"
        return Manifest.from_json(path.read_text(), source=str(path))

    def next_version(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1] + 1 if versions else 1

    def save(self, m: Manifest) -> Path:
        d = self._dir(m.name)
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = d / f"v{m.version}.json"
        tmp = d / f".v{m.version}.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(m.to_json())
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            tmp.unlink()
            raise Conflict(f"dataset {m.name!r} version {m.version} already exists", item=m.name)
        os.replace(tmp, path)
        return path

    def delete(self, name: str) -> int:
        versions = self.versions(name)
        if not versions:
            raise NotFound(f"no dataset named {name!r}", item=name)
        d = self._dir(name)
        for v in versions:
            (d / f"v{v}.json").unlink()
        try:
            d.rmdir()
        except OSError:
            pass
        return len(versions)


def diff_files(old: list[ManifestFile], new: list[ManifestFile]) -> dict[str, list[str]]:
    """What changed between two file lists (by URI): added, removed, changed (pure)."""
    a = {f.uri: f for f in old}
    b = {f.uri: f for f in new}
    return {
        "added": sorted(b[u].name for u in b.keys() - a.keys()),
        "removed": sorted(a[u].name for u in a.keys() - b.keys()),
        "changed": sorted(b[u].name for u in a.keys() & b.keys()
                          if (a[u].size, a[u].md5) != (b[u].size, b[u].md5)),
    }
