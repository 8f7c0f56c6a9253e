"""The extension's long-lived objects, created lazily and shared by all handlers.

A notebook server without XNAT settings must still start, so nothing here
touches XNAT before the first request that needs it: :meth:`ServerState.connection`
builds the :class:`~xnat_bridge.connection.Connection` on first use (and again
after a failure, e.g. XNAT was down), :meth:`ServerState.manager` the offload
manager on top of it. Both are blocking and are called from a worker thread by
the handlers (see :meth:`handlers.XnatHpcHandler.blocking`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from ..datasets import DatasetStore
from ..errors import XnatUnavailable
from ..filecache import CachedAccess, FileCache
from ..files import ApiAccess, MountAccess
from ..offload.manager import OffloadManager
from ..server_env import host_from_env, offload_from_env
from ..staging import AgeEngine

log = logging.getLogger(__name__)

NOT_CONFIGURED = "XNAT is not configured for this server: XNAT_HOST is not set"


class ServerState:
    """Lazily created Connection, OffloadManager and policy for one server process.

    *connection_factory* is called as ``factory(workspace=...)`` and returns a
    Connection; *manager_class* (:class:`~xnat_bridge.offload.manager.OffloadManager`
    or a subclass) is called as ``manager_class(connection, workspace=...,
    policy=..., root_dir=..., staging_engine=...)``, *root_dir* being the directory
    client script paths are relative to, *staging_engine* the age engine
    (None: the default). *needs_env* says whether the factory reads
    ``XNAT_HOST`` (the default :func:`xnat_bridge.connect` does): then a missing
    ``XNAT_HOST`` is reported as 503 without trying. *file_cache* (the admin's
    node-local :class:`~xnat_bridge.filecache.FileCache`, or None) is put in front
    of the connection's REST file access and wiped by :meth:`close`;
    *file_retry_window* is set on a REST file access, *mount_check_md5* on a mount.
    """

    def __init__(self, connection_factory: Callable, manager_class: type[OffloadManager],
                 workspace: str | Path, root_dir: str | Path, *, needs_env: bool = True,
                 staging_engine: AgeEngine | None = None, file_cache: FileCache | None = None,
                 file_retry_window: float | None = None, mount_check_md5: bool | None = None):
        self.connection_factory = connection_factory
        self.manager_class = manager_class
        self.workspace = Path(workspace)
        self.root_dir = Path(root_dir)
        self.needs_env = needs_env
        self.staging_engine = staging_engine
        self.file_cache = file_cache
        self.file_retry_window = file_retry_window
        self.mount_check_md5 = mount_check_md5
        self._lock = threading.Lock()
        self._connection = None
        self._manager = None
        self._policy = None

    # -- objects ----------------------------------------------------------------
    def connection(self):
        """The user's Connection (created on first use; XnatUnavailable when not configured)."""
        with self._lock:
            if self._connection is None:
                if self.needs_env and not host_from_env():
                    raise XnatUnavailable(NOT_CONFIGURED)
                conn = self.connection_factory(workspace=self.workspace)
                self._configure_files(conn)
                self._connection = conn
                log.info("xnat-hpc: connected to %s as %s (workspace %s)",
                         self._connection.client.host, self._connection.user, self.workspace)
            return self._connection

    def _configure_files(self, conn) -> None:
        """The admin's file settings on the connection's file access."""
        access = conn.access
        if isinstance(access, MountAccess) and self.mount_check_md5 is not None:
            access.check_md5 = bool(self.mount_check_md5)
        if not isinstance(access, ApiAccess):
            return  # the read-only mount: nothing to resume, nothing to cache
        if self.file_retry_window is not None:
            access.retry_window = float(self.file_retry_window)
        if self.file_cache is not None:
            conn.access = CachedAccess(access, self.file_cache, conn.client.host)

    def manager(self) -> OffloadManager:
        """The offload manager (created on first use, on top of :meth:`connection`)."""
        conn = self.connection()
        with self._lock:
            if self._manager is None:
                self._manager = self.manager_class(conn, workspace=self.workspace,
                                                   policy=self._load_policy(), root_dir=self.root_dir,
                                                   staging_engine=self.staging_engine)
                log.info("xnat-hpc: offload manager ready for %s", conn.user)
            return self._manager

    def has_manager(self) -> bool:
        return self._manager is not None

    def _load_policy(self):
        if self._policy is None:
            self._policy = offload_from_env()
        return self._policy

    def policy(self):
        """The admin's offload limits (``XNAT_HPC_OFFLOAD``); needs no XNAT."""
        with self._lock:
            if self._manager is not None and getattr(self._manager, "policy", None) is not None:
                return self._manager.policy
            return self._load_policy()

    def datasets(self) -> DatasetStore:
        """The dataset store of the workspace (reading and deleting needs no XNAT)."""
        return DatasetStore(self.workspace / "datasets")

    def active(self) -> bool:
        """Whether the manager (if created) has jobs that are not finished."""
        m = self._manager
        return bool(m is not None and m.active())

    def close(self) -> None:
        with self._lock:
            manager, conn = self._manager, self._connection
            self._manager = self._connection = None
        if manager is not None:
            try:
                manager.close()
            except Exception:
                log.exception("xnat-hpc: closing the offload manager failed")
        if conn is not None:
            try:
                conn.close()
            except Exception:
                log.exception("xnat-hpc: closing the XNAT connection failed")
        if self.file_cache is not None:
            self.file_cache.close()  # wipes the server's cache directory
