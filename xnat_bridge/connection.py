"""The notebook-facing API: :func:`connect` returns a :class:`Connection`.

    import xnat_bridge
    conn = xnat_bridge.connect()             # XNAT_HOST / XNAT_USER / XNAT_PASS / XNAT_HPC_SCOPE
    conn.permissions()                        # {"NEURO_MRI": "Owner", "SLEEP_EEG": "Member"}
    conn.projects(); conn.subjects("NEURO_MRI").items; conn.scans("NEURO_MRI", "XNAT_E00001")
    ds = conn.create_dataset("t1-all", [{"project": "NEURO_MRI"}])   # metadata only, no download
    with conn.open(ds.files[0]) as f: f.read()                        # a verified stream
    paths = conn.download(ds, "data/t1")      # explicit: plaintext into the directory you name

Every call checks the server's scope first, then XNAT's permissions (cached
for ``ttl`` seconds), and records an audit event for every data-access
decision, denials included. Nothing here keeps a copy of a file: creating a
dataset reads XNAT's listings only, :meth:`Connection.open` streams, and
:meth:`Connection.download` writes only where the researcher asks.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from pathlib import Path
from typing import Callable

from . import audit, audit_outbox
from .browse import Browser
from .client import XnatClient
from .datasets import (
    DatasetStore,
    Manifest,
    ManifestFile,
    diff_files,
    files_digest,
    list_files,
    now_iso,
)
from .download import download_files
from .errors import Conflict, InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from .files import DEFAULT_RETRY_WINDOW, FileAccess, FileRef, choose_access
from .permissions import PermissionCache
from .scope import Scope
from .server_env import data_from_env, host_from_env, permission_ttl_from_env, scope_from_env, user_from_env

log = logging.getLogger(__name__)

#: shared by all connections of this process, so the TTL bounds revocation delay; made at the
#: first connection, with the hub's ``XNAT_HPC_PERMISSION_TTL`` (default 60 s)
_PERMISSIONS: PermissionCache | None = None
_PERMISSIONS_LOCK = threading.Lock()


def shared_permissions() -> PermissionCache:
    """This process's permission cache (``XNAT_HPC_PERMISSION_TTL``, default
    :data:`~xnat_bridge.permissions.DEFAULT_TTL_S`)."""
    global _PERMISSIONS
    with _PERMISSIONS_LOCK:
        if _PERMISSIONS is None:
            _PERMISSIONS = PermissionCache(permission_ttl_from_env())
        return _PERMISSIONS


def _denials_audited(action: str):
    """Record a ``permission_denied`` event when the wrapped call is refused."""

    def deco(fn):
        @functools.wraps(fn)
        def wrapper(self: "Connection", *args, **kwargs):
            try:
                return fn(self, *args, **kwargs)
            except PermissionDenied as e:
                self._audit("permission_denied", "denied", items=[e.item or ""],
                            detail=f"{action}: {e.message}")
                raise

        return wrapper

    return deco


class Connection:
    """One researcher's scoped, audited access to XNAT."""

    def __init__(self, client: XnatClient, *, scope: Scope | None = None,
                 sink: audit.AuditSink | None = None, workspace: str | Path | None = None,
                 data_root: str | None = None, ttl: float | None = None,
                 access: FileAccess | None = None, retry_window: float = DEFAULT_RETRY_WINDOW):
        """*retry_window*: seconds a REST file stream keeps resuming after a drop. Nothing
        is cached (an admin may give servers a node-local cache:
        ``c.XnatHpcExtension.file_cache_dir``)."""
        self.client = client
        self.scope = scope if scope is not None else scope_from_env()
        self.workspace = Path(workspace or os.environ.get("XNAT_HPC_WORKSPACE")
                              or Path.home() / "xnat-hpc")
        self.sink = sink or audit_outbox.default_sink(self.workspace)
        self._cache = shared_permissions() if ttl is None else PermissionCache(ttl)
        self.access = access or choose_access(
            client, data_root if data_root is not None else data_from_env(), retry_window=retry_window)
        self.datasets = DatasetStore(self.workspace / "datasets")
        self.browser = Browser(client, self.scope, self.permission_info)

    def __repr__(self) -> str:
        return f"<xnat_bridge.Connection {self.user}@{self.client.host} mode={self.access.mode}>"

    @property
    def user(self) -> str:
        return self.client.username

    def _audit(self, action: str, outcome: str = "allowed", **kw) -> None:
        self.sink.emit(audit.make_event(self.user, action, outcome, **kw))

    # -- permissions ----------------------------------------------------------
    def permission_info(self):
        return self._cache.get(self.client)

    def permissions(self) -> dict[str, str]:
        """``{project_id: "Owner" | "Member" | "Collaborator"}`` within this server's scope."""
        perms = self.permission_info()
        if not self.scope.restricted:
            return dict(perms.roles)
        return {p: r for p, r in perms.roles.items() if p in self.scope.projects}

    def invalidate_permissions(self) -> None:
        self._cache.invalidate(self.user)

    # -- browsing -----------------------------------------------------------
    def projects(self):
        return self.browser.projects()

    @_denials_audited("browse")
    def subjects(self, project: str, offset: int = 0, limit: int = 100):
        return self.browser.subjects(project, offset, limit)

    @_denials_audited("browse")
    def experiments(self, project: str, subject: str | None = None, offset: int = 0, limit: int = 100):
        return self.browser.experiments(project, subject, offset, limit)

    @_denials_audited("browse")
    def scans(self, project: str, experiment: str):
        return self.browser.scans(project, experiment)

    @_denials_audited("browse")
    def resources(self, project: str, experiment: str, scan: str | None = None):
        return self.browser.resources(project, experiment, scan)

    @_denials_audited("browse")
    def files(self, project: str, experiment: str, scan: str | None = None,
              resource: str | None = None):
        return self.browser.files(project, experiment, scan, resource)

    # -- datasets -----------------------------------------------------------
    @_denials_audited("dataset_create")
    def resolve(self, name: str, selection: list[dict], *, progress: bool = False) -> Manifest:
        """Resolve *selection* to a manifest (not saved) from XNAT's file listings: no
        file is read, ``sha256`` is "" until the first staging records it.
        (*progress* is accepted for old callers; listing needs no progress bar.)"""
        from .datasets import check_name, check_selection

        check_name(name)
        selection = check_selection(selection)
        files = list_files(self.browser, selection)
        return Manifest(name, self.datasets.next_version(name), now_iso(), self.user,
                        self.client.host, selection, files, files_digest(files))

    def create_dataset(self, name: str, selection: list[dict], *, progress: bool = False) -> Manifest:
        """Resolve and save a new version of dataset *name* (unchanged → the latest version)."""
        m = self.resolve(name, selection, progress=progress)
        if m.version > 1:
            latest = self.datasets.load(name)
            if latest.identity == m.identity and latest.selection == m.selection:
                return latest
        self.datasets.save(m)
        self._audit("dataset_create", items=_items(selection), files=len(m.files),
                    bytes=m.total_size, hashes={"manifest": m.digest},
                    detail=f"{m.name} v{m.version}")
        return m

    def record_sha256(self, manifest: Manifest, sha256_by_name: dict[str, str]) -> Manifest:
        """Record computed sha256s into *manifest*'s saved version (see
        :meth:`DatasetStore.record_sha256`); the updated manifest."""
        return self.datasets.record_sha256(manifest.name, manifest.version, sha256_by_name)

    def load_dataset(self, name: str, version: int | None = None) -> Manifest:
        return self.datasets.load(name, version)

    def changes(self, manifest: Manifest) -> dict[str, list[str]]:
        """Files added, removed or changed in XNAT since *manifest* was made."""
        return diff_files(manifest.files, list_files(self.browser, manifest.selection))

    def check_current(self, manifest: Manifest) -> None:
        """Raise Conflict naming the files when XNAT no longer matches *manifest*."""
        d = self.changes(manifest)
        if any(d.values()):
            parts = [f"{k}: {', '.join(v[:5])}{' …' if len(v) > 5 else ''}" for k, v in d.items() if v]
            raise Conflict(f"dataset {manifest.name} v{manifest.version} no longer matches XNAT ("
                           + "; ".join(parts) + "); create it again", item=manifest.name)

    # -- file access ----------------------------------------------------------
    def _check_file(self, ref: FileRef) -> None:
        """Scope first, then XNAT's permissions, for the file's project."""
        project = ref.archive_path.split("/", 1)[0]
        self.scope.check_project(project)
        self.permission_info().require_read(project)

    @_denials_audited("open")
    def open(self, f: ManifestFile | FileRef):
        """A verified stream of one file (size and XNAT's md5 checked at its end); nothing is
        written to disk."""
        ref = f.ref() if isinstance(f, ManifestFile) else f
        self._check_file(ref)
        self._audit("open", items=[ref.archive_path], files=1, bytes=ref.size)
        return self.access.open(ref)

    @_denials_audited("download")
    def download(self, manifest: Manifest, dest: str | Path, *, workers: int = 4,
                 progress: bool = True, check: bool = True) -> list[Path]:
        """Write every file of *manifest* in plaintext to ``dest/<file name>``; the paths.

        An explicit, audited action: *dest* is the directory you name (created 0700
        when missing; choose private storage). Each file streams into
        ``name.part`` (0600), is verified (size, XNAT's md5, the recorded sha256 if
        any) and renamed; *workers* files at a time. A failure removes its ``.part``
        and names the file. *check* first asks XNAT whether the manifest still
        matches (Conflict if not). Computed sha256s are recorded into the saved
        dataset version.
        """
        if dest is None or str(dest).strip() == "":
            raise InvalidRequest("download needs a directory: conn.download(ds, 'data/t1'); the files "
                                 "are written there in plaintext, so choose private storage")
        dest = Path(dest).expanduser()
        for f in manifest.files:
            self._check_file(f.ref())
        if check:
            self.check_current(manifest)
        detail = f"{manifest.name} v{manifest.version} via {self.access.mode} into {dest}"
        try:
            with _progress_bar(progress, manifest.total_size, f"downloading {manifest.name}") as tick:
                done = download_files(self.access, [(f.ref(), f.name) for f in manifest.files], dest,
                                      workers=workers, progress=tick)
        except XnatHpcError as e:
            self._audit("download", "failed", items=_items(manifest.selection),
                        files=len(manifest.files), bytes=manifest.total_size,
                        hashes={"manifest": manifest.digest}, detail=f"{detail}: {e.message}")
            raise
        self._audit("download", items=_items(manifest.selection), files=len(done),
                    bytes=manifest.total_size, hashes={"manifest": manifest.digest}, detail=detail)
        self._record_downloaded(manifest, {f.name: sha for f, (_, sha) in zip(manifest.files, done)})
        return [path for path, _ in done]

    def _record_downloaded(self, manifest: Manifest, sha256_by_name: dict[str, str]) -> None:
        """Record sha256s a download computed, when *manifest* is a saved version."""
        try:
            saved = self.datasets.load(manifest.name, manifest.version)
        except (NotFound, InvalidRequest, Conflict):
            return
        if saved.identity == manifest.identity and not saved.hashed:
            try:
                self.datasets.record_sha256(manifest.name, manifest.version, sha256_by_name)
            except XnatHpcError as e:  # the files are verified and written; only the record failed
                log.warning("could not record the sha256s of %s v%d: %s", manifest.name,
                            manifest.version, e.message)

    def close(self) -> None:
        self.access.close()
        self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _items(selection: list[dict]) -> list[str]:
    return ["/".join(str(v) for v in item.values()) for item in selection]


class _progress_bar:
    """tqdm bar (bytes) when *enabled*, else a no-op; yields a tick(n) callable."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.enabled, self.total, self.desc = enabled, total, desc
        self.bar = None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.enabled:
            return None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=self.total, unit="B", unit_scale=True, desc=self.desc)
        return self.bar.update

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def connect(host: str | None = None, user: str | None = None, password: str | None = None,
            **kwargs) -> Connection:
    """Connect as in XNAT's Jupyter integration: arguments default to ``XNAT_HOST``,
    ``XNAT_USER``, ``XNAT_PASS``; the scope to ``XNAT_HPC_SCOPE``, the file mount to
    ``XNAT_DATA`` (:mod:`xnat_bridge.server_env`). See :class:`Connection`."""
    client_kw = {k: kwargs.pop(k) for k in ("verify", "timeout", "retries") if k in kwargs}
    client = XnatClient(host or host_from_env(), user or user_from_env(), password, **client_kw)
    return Connection(client, **kwargs)
