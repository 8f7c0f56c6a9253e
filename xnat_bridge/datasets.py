"""Datasets (named selections of XNAT items) and their manifests.

A **selection** is a list of items, each one of::

    {"project": "P"}                                        every experiment of P
    {"project": "P", "subject": "S"}                         every experiment of S
    {"project": "P", "experiment": "E"}                      all scans of E
    {"project": "P", "experiment": "E", "scan": "1"}         one scan (all resources)
    {"project": "P", "experiment": "E", "scan": "1", "resource": "NIFTI"}
    {"project": "P", "experiment": "E", "resource": "NOTES"} a session resource

A **manifest** resolves a selection to every file from XNAT's file listings
alone, with no file read: XNAT URI, archive-relative path, dataset-relative
name, size and XNAT's digest (md5, "" where XNAT has none). A file's
``sha256`` is "" until the first staging (or download) computed it while
streaming the file; :meth:`DatasetStore.record_sha256` then writes it into the
same version, and later bundles and jobs verify against it.

Manifests are saved as versioned JSON in the user's workspace
(``~/xnat-hpc/datasets/{name}/v{N}.json``, 0600). Format 2 carries a
``digest`` of the files' **identity** (name, uri, archive_path, size, md5), so
recording sha256s does not change what the dataset is, and a hand-edited
identity is detected on load. Format 1 manifests (digest over every field,
sha256 included) load and verify with their own rule.
:meth:`xnat_bridge.connection.Connection.changes` re-lists the selection and
reports files whose size or XNAT digest changed, so a stale manifest is
reported, never silently used.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path

from .browse import Browser
from .errors import Conflict, InvalidRequest, NotFound
from .files import FileRef, safe_relpath
from .scope import check_id

FORMAT = "xnat-hpc-manifest"
FORMAT_VERSION = 2
#: the format versions :meth:`Manifest.from_json` reads
READABLE_VERSIONS = (1, 2)
IDENTITY_FIELDS = ("name", "uri", "archive_path", "size", "md5")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,63}$")
_SELECTION_ORDER = ("project", "subject", "experiment", "scan", "resource")
_SELECTION_KEYS = set(_SELECTION_ORDER)


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
        # keys in XNAT's hierarchy order, whatever order the caller used: audit items read
        # PROJECT/SUBJECT/EXPERIMENT/... (the hub indexes events by their first part)
        norm = {k: check_id(str(item[k]), k) for k in _SELECTION_ORDER if item.get(k) not in (None, "")}
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
    sha256: str = ""

    def ref(self) -> FileRef:
        return FileRef(self.uri, self.archive_path, self.size, self.md5, self.sha256)


def files_digest(files: list[ManifestFile]) -> str:
    """The identity digest (format 2): sha256 of the canonical JSON of every file's
    name, uri, archive_path, size and md5 — not its sha256 (pure)."""
    canon = json.dumps([{k: getattr(f, k) for k in IDENTITY_FIELDS} for f in files],
                       sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def files_digest_v1(files: list[ManifestFile]) -> str:
    """The digest of format 1: over every field, sha256 included (pure)."""
    canon = json.dumps([dataclasses.asdict(f) for f in files], sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def check_sha256(value, name: str) -> str:
    """A lower-case sha256 hex digest; InvalidRequest naming the file otherwise."""
    if not isinstance(value, str) or not _SHA256_RE.match(value.lower()):
        raise InvalidRequest(f"the sha256 of {name} must be 64 hex digits, got {str(value)[:80]!r}",
                             item=name)
    return value.lower()


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
    format_version: int = FORMAT_VERSION

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def identity(self) -> str:
        """The identity digest of the files (format 2's ``digest``, whatever the format)."""
        return files_digest(self.files)

    @property
    def hashed(self) -> bool:
        """Whether every file's sha256 is known."""
        return all(f.sha256 for f in self.files)

    def with_sha256(self, sha256_by_name: Mapping[str, str]) -> "Manifest":
        """This manifest with the sha256s of *sha256_by_name* filled in (pure).

        InvalidRequest for a name not in the manifest or a malformed digest;
        Conflict, naming the file, for a digest that differs from one already known.
        """
        if not isinstance(sha256_by_name, Mapping):
            raise InvalidRequest("sha256_by_name must map file names to sha256 hex digests")
        by_name = {f.name: f for f in self.files}
        unknown = sorted(n for n in sha256_by_name if n not in by_name)
        if unknown:
            raise InvalidRequest(f"dataset {self.name!r} v{self.version} has no file {unknown[0]!r}"
                                 + (f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""),
                                 item=str(unknown[0])[:200])
        new = {n: check_sha256(v, n) for n, v in sha256_by_name.items()}
        for n, sha in sorted(new.items()):
            known = by_name[n].sha256
            if known and known.lower() != sha:
                raise Conflict(f"{n} has sha256 {sha[:12]}…, but dataset {self.name!r} v{self.version} "
                               f"recorded {known[:12]}…: the file changed in XNAT; create the dataset "
                               "again", item=n)
        files = [dataclasses.replace(f, sha256=new[f.name]) if f.name in new and not f.sha256 else f
                 for f in self.files]
        return dataclasses.replace(self, files=files)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT, "format_version": self.format_version, "name": self.name,
            "version": self.version, "created": self.created, "user": self.user,
            "xnat_host": self.xnat_host, "selection": self.selection,
            "file_count": len(self.files), "total_size": self.total_size,
            "digest": self.digest, "files": [dataclasses.asdict(f) for f in self.files],
        }, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "manifest") -> "Manifest":
        try:
            doc = json.loads(text)
            version = doc.get("format_version") if isinstance(doc, dict) else None
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or version not in READABLE_VERSIONS:
                raise InvalidRequest(f"{source} is not an {FORMAT} file of format "
                                     f"{' or '.join(map(str, READABLE_VERSIONS))}")
            files = [ManifestFile(**{k: f[k] for k in ("name", "uri", "archive_path", "size",
                                                         "md5", "sha256")}) for f in doc["files"]]
            m = cls(check_name(doc["name"]), int(doc["version"]), str(doc["created"]),
                    str(doc["user"]), str(doc["xnat_host"]), check_selection(doc["selection"]),
                    files, str(doc["digest"]), int(version))
        except (ValueError, KeyError, TypeError) as e:
            raise InvalidRequest(f"{source} is not a valid manifest: {e}") from None
        for f in m.files:
            safe_relpath(f.name)
            safe_relpath(f.archive_path)
            if f.sha256:
                check_sha256(f.sha256, f.name)
        expected = files_digest(m.files) if m.format_version >= 2 else files_digest_v1(m.files)
        if expected != m.digest:
            raise Conflict(f"{source} was modified after it was created (its digest does not match "
                           "its files); create the dataset again instead of editing it", item=source)
        return m


def _archive_path(project: str, session_label: str, uri: str, resource_label: str, path: str) -> str:
    m = re.search(r"/scans/([^/]+)/_?resources/", uri)
    if m:
        return f"{project}/arc001/{session_label}/SCANS/{m.group(1)}/{resource_label}/{path}"
    return f"{project}/arc001/{session_label}/RESOURCES/{resource_label}/{path}"


def _name(project: str, subject_label: str, session_label: str, archive_path: str) -> str:
    rest = archive_path.split("/", 3)[3]  # after {P}/arc001/{session}/
    return f"{project}/{subject_label or '_'}/{session_label}/{rest}"


def list_files(browser: Browser, selection: list[dict]) -> list[ManifestFile]:
    """Resolve a selection to its files from XNAT's listings (no file is read; sha256
    stays ""), deduplicated, sorted by name.

    Whole projects and subjects are listed with one request for their experiments
    and one file listing per batch of experiments (:meth:`Browser.scan_files`).
    """
    seen: dict[str, ManifestFile] = {}
    for item in check_selection(selection):
        project = item["project"]
        if "experiment" in item:
            e = browser.experiment(project, item["experiment"])
            groups = [(e, browser.experiment_files(e, item.get("scan"), item.get("resource")))]
        else:
            exps = browser.all_experiments(project, item.get("subject"))
            by_id = browser.scan_files(exps)
            groups = [(e, by_id[e.id]) for e in exps]
        for e, files in groups:
            subject_label = e.subject_label or item.get("subject", "") or e.subject_id
            for f in files:
                ap = _archive_path(project, e.label, f.uri, f.resource, f.path)
                seen[f.uri] = ManifestFile(_name(project, subject_label, e.label, ap), f.uri, ap,
                                           f.size, f.md5, "")
    if not seen:
        raise NotFound("the selection contains no files")
    return sorted(seen.values(), key=lambda f: f.name)


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
        with self._locked(d):
            if path.exists():
                raise Conflict(f"dataset {m.name!r} version {m.version} already exists", item=m.name)
            _write_atomic(path, m.to_json())
        return path

    def record_sha256(self, name: str, version: int, sha256_by_name: Mapping[str, str]) -> Manifest:
        """Record the sha256 of files of dataset *name* version *version*; the updated manifest.

        Called after a staging (or a download) computed them. The version's file is
        rewritten atomically (temporary file, fsync, rename, 0600) under a lock;
        its digest (the files' identity) does not change. InvalidRequest for a
        name that is not in the manifest; Conflict naming the file for a sha256
        that differs from one already recorded; nothing is written then.
        """
        d = self._dir(name)
        with self._locked(d):
            m = self.load(name, version)
            updated = m.with_sha256(sha256_by_name)
            if updated.files != m.files:
                if m.format_version < FORMAT_VERSION:  # format 1's digest covered the sha256s
                    updated = dataclasses.replace(updated, digest=files_digest(updated.files),
                                                  format_version=FORMAT_VERSION)
                _write_atomic(d / f"v{m.version}.json", updated.to_json())
            return updated

    @staticmethod
    def _locked(d: Path):
        return _DirLock(d)

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


def _write_atomic(path: Path, text: str) -> None:
    """Write *text* to *path* through a temporary file (0600, fsync, rename, directory fsync)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _DirLock:
    """An exclusive ``flock`` on a dataset's directory (writers of the same dataset, any process)."""

    def __init__(self, d: Path):
        self.d = d
        self.fd = -1

    def __enter__(self):
        try:
            self.fd = os.open(self.d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"no dataset named {self.d.name!r}", item=self.d.name) from None
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        os.close(self.fd)
