"""The jupyter-server extension ``xnat_hpc``: REST API under ``{base_url}xnat-hpc/api/``.

Enabled for every server by the wheel's
``etc/jupyter/jupyter_server_config.d/xnat_hpc_hub.json``. Its plugin points
are traits (``c.XnatHpcExtension.…`` in ``jupyter_server_config.py``):

* ``connection_factory`` — builds the user's XNAT
  :class:`~xnat_bridge.connection.Connection` (default :func:`xnat_bridge.connect`,
  from ``XNAT_HOST``/``XNAT_USER``/``XNAT_PASS``/``XNAT_HPC_SCOPE``);
* ``manager_class`` — the offload manager, :class:`xnat_bridge.offload.manager.OffloadManager`
  or a subclass (``Type`` trait), shared by the handlers through :class:`.state.ServerState`;
* ``staging_engine`` — the age engine that encrypts bundles and decrypts
  results in this server (``auto``, ``age-cli``, ``pyrage``;
  :mod:`xnat_bridge.staging.engine`);
* ``workspace`` — datasets, jobs, audit log (default ``XNAT_HPC_WORKSPACE`` or
  ``~/xnat-hpc``);
* ``file_cache_dir`` — the admin's opt-in node-local file cache (default "":
  none; :mod:`xnat_bridge.filecache`), created at start-up and wiped at stop;
* ``file_retry_window`` — how long a file stream from XNAT keeps resuming;
* ``mount_check_md5`` — whether reads from the archive mount verify XNAT's md5.

Nothing connects to XNAT at start-up: a server without XNAT settings starts
and its endpoints answer 503. While offload jobs run, the extension marks the
server active every ``activity_interval`` seconds (``last_activity_times``),
so JupyterHub's idle culler does not stop the server that hosts their dask
scheduler.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from traitlets import Any, Bool, CaselessStrEnum, Float, TraitError, Type, Unicode, default, validate

from ..audit_outbox import hub_sender, stop_senders
from ..errors import XnatHpcError
from ..extras import needs_extra
from ..filecache import FileCache, check_cache_root
from ..files import DEFAULT_RETRY_WINDOW
from ..offload.manager import OffloadManager
from ..staging import ENGINE_NAMES, engine_by_name
from .handlers import url_handlers
from .state import ServerState

with needs_extra("server", "the server extension (xnat_bridge.serverext)"):
    from jupyter_server.extension.application import ExtensionApp
    from jupyter_server.utils import import_item

ACTIVITY_KEY = "xnat_hpc_jobs"


def _default_connect(**kwargs):
    from .. import connect

    return connect(**kwargs)


class XnatHpcExtension(ExtensionApp):
    """REST API for browsing XNAT, datasets and offload jobs (see ``openapi.yaml``)."""

    name = "xnat_hpc"
    load_other_extensions = True

    connection_factory = Any(
        help="""Callable (or its dotted import name) that returns the user's
        xnat_bridge Connection; called as factory(workspace=PATH). Default:
        xnat_bridge.connect, which reads XNAT_HOST, XNAT_USER, XNAT_PASS (an alias
        token on the hub) and XNAT_HPC_SCOPE from the environment. Example:
        c.XnatHpcExtension.connection_factory = "mysite.xnat.connect_with_proxy".
        It is called on the first request that needs XNAT, never at start-up.""",
    ).tag(config=True)

    manager_class = Type(
        default_value=OffloadManager,
        klass=OffloadManager,
        help="""Offload manager class (or its dotted import name): OffloadManager or a
        subclass of it. Instantiated once per server, on the first job request, as
        manager_class(connection, workspace=PATH, policy=OffloadPolicy, root_dir=PATH,
        staging_engine=AgeEngine) — root_dir is the server's root directory, which job
        script paths are relative to. Example: c.XnatHpcExtension.manager_class = "mysite.offload.AuditedManager".
        It owns the dask scheduler of the user's jobs, so the server stays alive
        (and reports activity to the hub) while they run.""",
    ).tag(config=True)

    staging_engine = CaselessStrEnum(
        ENGINE_NAMES,
        default_value="auto",
        help="""The age engine that encrypts dataset bundles into the staging area and
        decrypts results in this server: "age-cli" (the age command-line tool in a child
        process, so encryption runs on a second core; needs the Debian package age),
        "pyrage" (in-process, no extra package), or "auto" (age-cli when age is on PATH,
        else pyrage). Both write the same age v1 files. Example:
        c.XnatHpcExtension.staging_engine = "pyrage".""",
    ).tag(config=True)

    workspace = Unicode(
        help="""Directory for the user's datasets (manifests), job registry, job logs
        and results, and audit log. Default: $XNAT_HPC_WORKSPACE, else ~/xnat-hpc.
        Created 0700 on first use; keep it on the user's private storage.""",
    ).tag(config=True)

    file_cache_dir = Unicode(
        "",
        help="""Node-local directory for a per-server cache of XNAT files read through
        REST, or "" (the default): no cache, every read streams from XNAT. Cached files
        are PLAINTEXT: give storage local to the node the server runs on, never shared
        storage; a path in the home directory is refused. Each server uses a
        subdirectory of its own (0700, xnat-hpc-cache-UID-PID-RANDOM), wiped when the
        server stops; directories of this user's servers that died are wiped when the
        next one starts. The directory must exist (e.g. mkdir -m 1777 /local/scratch/xnat-hpc).
        Example: c.XnatHpcExtension.file_cache_dir = "/local/scratch/xnat-hpc".""",
    ).tag(config=True)

    file_retry_window = Float(
        DEFAULT_RETRY_WINDOW,
        help="""Seconds a file stream from XNAT's REST API keeps resuming (HTTP Range
        requests from the byte it reached) after a dropped connection or a read that
        timed out, before the read fails naming the file. 0 = fail at the first
        error. Example: c.XnatHpcExtension.file_retry_window = 300.0.""",
    ).tag(config=True)

    mount_check_md5 = Bool(
        False,
        help="""Whether reads from the read-only archive mount (XNAT_DATA) also verify
        XNAT's md5 of every file (the size is always checked). Off by default: on a
        2-core node md5 cost 10-20 % of staging throughput, a known sha256 is verified
        while staging, and the offload worker verifies XNAT's md5 of every file it
        unpacks. Example: c.XnatHpcExtension.mount_check_md5 = True.""",
    ).tag(config=True)

    audit_to_hub = Bool(
        True,
        help="""Send every audit event of this server (and of its kernels) to the hub's trail
        (POST $JUPYTERHUB_API_URL/xnat-hpc/audit with the server's own hub token), through a
        durable outbox in the workspace (audit-outbox.jsonl, 0600) that keeps them while the hub
        is unreachable. The researcher's own audit.jsonl is kept as their copy either way.
        Only has an effect when the server runs under a hub (JUPYTERHUB_API_URL set).""",
    ).tag(config=True)

    check_guests = Bool(
        True,
        help="""When the server runs under a hub, ask the hub whenever someone other than its owner
        uses it (a guest of a share): :class:`xnat_bridge.serverext.sharing.ShareAuthorizer`
        becomes the server's authorizer, unless the site configured one of its own
        (c.ServerApp.authorizer_class). The hub answers yes only while the share stands and the
        guest reads, in XNAT, every project of the server's scope; a yes is kept
        c.ShareAuthorizer.ttl seconds (60).""",
    ).tag(config=True)

    activity_interval = Float(
        60.0,
        help="""Seconds between activity reports while offload jobs are running
        (ServerApp last_activity_times['xnat_hpc_jobs']), so the hub's idle
        culler keeps the server (and the jobs' dask scheduler) alive. Keep it
        well below the culler's timeout (default 3600 s).""",
    ).tag(config=True)

    @default("connection_factory")
    def _default_connection_factory(self):
        return _default_connect

    @validate("connection_factory")
    def _validate_connection_factory(self, proposal):
        value = proposal["value"]
        if isinstance(value, str):
            value = import_item(value)
        if not callable(value):
            raise TraitError(f"connection_factory must be callable, got {value!r}")
        return value

    @validate("file_cache_dir")
    def _validate_file_cache_dir(self, proposal):
        value = (proposal["value"] or "").strip()
        if value:
            try:
                check_cache_root(value)
            except XnatHpcError as e:
                raise TraitError(f"XnatHpcExtension.file_cache_dir: {e.message}") from None
        return value

    @validate("file_retry_window")
    def _validate_file_retry_window(self, proposal):
        if proposal["value"] < 0:
            raise TraitError("XnatHpcExtension.file_retry_window must be ≥ 0 seconds")
        return proposal["value"]

    @default("workspace")
    def _default_workspace(self):
        return os.environ.get("XNAT_HPC_WORKSPACE") or str(Path.home() / "xnat-hpc")

    # -- set-up -----------------------------------------------------------------
    def initialize_settings(self):
        file_cache = FileCache(self.file_cache_dir) if self.file_cache_dir else None
        self.state = ServerState(self.connection_factory, self.manager_class,
                                 Path(self.workspace).expanduser(), self.serverapp.root_dir,
                                 needs_env=self.connection_factory is _default_connect,
                                 staging_engine=engine_by_name(self.staging_engine),
                                 file_cache=file_cache, file_retry_window=self.file_retry_window,
                                 mount_check_md5=self.mount_check_md5)
        self.submit_lock = asyncio.Lock()
        self._activity_task: asyncio.Task | None = None
        # the audit sender first: connections built later pick it up (audit_outbox.default_sink)
        self.audit_sender = hub_sender(self.state.workspace) if self.audit_to_hub else None
        self.log.info("xnat-hpc: REST API at %sxnat-hpc/api/ (workspace %s)",
                      self.serverapp.base_url, self.state.workspace)
        self._install_guest_check()

    def _install_guest_check(self) -> None:
        """:class:`~.sharing.ShareAuthorizer` as the server's authorizer (see :attr:`check_guests`)."""
        from jupyter_server.auth.authorizer import AllowAllAuthorizer

        from .sharing import ShareAuthorizer, owner

        if not (self.check_guests and owner()):
            return
        if type(self.serverapp.authorizer) is not AllowAllAuthorizer:
            self.log.warning("xnat-hpc: the site's authorizer %s is kept: guests of a share are not asked about "
                             "at the hub", type(self.serverapp.authorizer).__name__)
            return
        authorizer = ShareAuthorizer(parent=self, identity_provider=self.serverapp.identity_provider)
        self.serverapp.authorizer = authorizer
        # the extension's settings are copied onto the web app's after initialize_settings
        self.settings["authorizer"] = self.serverapp.web_app.settings["authorizer"] = authorizer
        self.log.info("xnat-hpc: guests of a share are asked about at the hub (yes kept %.0f s)", authorizer.ttl)

    def initialize_handlers(self):
        self.handlers.extend(url_handlers())

    async def _start_jupyter_server_extension(self, serverapp):
        self.ensure_activity_reporter()

    # -- activity for the hub's culler -----------------------------------------
    def ensure_activity_reporter(self) -> None:
        """Start the activity loop once (must be called on the event loop)."""
        if self._activity_task is None or self._activity_task.done():
            self._activity_task = asyncio.get_running_loop().create_task(self._report_activity())

    async def _report_activity(self):
        while True:
            await self.report_activity_once()
            await asyncio.sleep(self.activity_interval)

    async def report_activity_once(self) -> bool:
        """Mark the server active when offload jobs are not finished; returns whether it did."""
        if not self.state.has_manager():
            return False
        try:
            active = await asyncio.get_running_loop().run_in_executor(None, self.state.active)
        except Exception:
            self.log.exception("xnat-hpc: could not ask the offload manager for active jobs")
            return False
        if active:
            from jupyter_server._tz import utcnow

            self.serverapp.web_app.settings["last_activity_times"][ACTIVITY_KEY] = utcnow()
        return active

    async def stop_extension(self):
        if self._activity_task is not None:
            self._activity_task.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self.state.close)
        if self.audit_sender is not None:  # one last delivery of what is queued
            await asyncio.get_running_loop().run_in_executor(None, stop_senders)
        self.log.info("xnat-hpc: stopped (this server's offload jobs cancelled, their bundles and "
                      "TLS files removed)")
