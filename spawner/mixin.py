"""``XnatScopedSpawner``: everything the XNAT-scoped backends share.

A backend is ``class XnatFooSpawner(XnatScopedSpawner, FooSpawner)`` with a
``backends`` class attribute, a :meth:`~XnatScopedSpawner.data_mount` (how it
mounts the scope, if at all) and an :meth:`~XnatScopedSpawner.apply_plan`
that turns the :class:`~spawner.plan.SpawnPlan` into its own settings through
a pure builder. The mixin provides:

* the **form** (:mod:`spawner.form`): the profiles this user may use and the
  XNAT projects they may read, with their role, asked of XNAT with the user's
  own alias token;
* **validation** of every request — form, REST ``user_options`` or XNAT's
  "Start Jupyter" (:mod:`spawner.request`) — in :meth:`start`, so both paths
  go through the same checks, against XNAT's answers at that moment
  (:mod:`spawner.decide`), never the form's;
* the server's **environment**: the plan's :class:`~xnat_bridge.server_env.ServerEnv`
  (``XNAT_HOST``, ``XNAT_USER``, ``XNAT_HPC_SCOPE``, ``XNAT_HPC_OFFLOAD``, ``XNAT_DATA``
  when mounted, ...) plus ``XNAT_PASS`` = the alias token's secret;
* **progress** events (:class:`~spawner.progress.SpawnProgress`, one per start,
  shared with the dispatcher's backend) and **audit** events (allowed and denied
  spawns, :class:`~hub_ext.hub_events.HubEventLog`); a denied spawn is also a notice on the
  user's hub pages (:func:`refusal_notice`), where users of XNAT's "Start Jupyter" read why.

Async contract: :meth:`start` awaits :meth:`make_plan` (XNAT requests run in a
thread, never on the hub's event loop), awaits the audit log (its file work runs
in a thread), awaits :meth:`prepare_host` (the backend's privileged host-side work,
e.g. the per-user staging directory; blocking calls in a thread), calls the
synchronous :meth:`apply_plan`, then awaits the base
spawner's ``start``. Domain errors become what :func:`hub_ext.errors.spawn_error`
makes of them: the status of the error class and a ``jupyterhub_message`` the
user reads on the spawn page or in the REST reply.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import os
import time
from typing import ClassVar

from traitlets import Any, Bool, Float, Instance, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from hub_ext.hub_events import HubEventLog
from hub_ext.errors import spawn_error
from hub_ext.names import hub_name as default_hub_name
from hub_ext.names import DEFAULT_NAME_PATTERN, hub_server_name, xnat_login
from hub_ext.profiles import ProfileConfig, ProfileWatcher, visible_profiles
from hub_ext.revocation import OwnerAccess, notice_board
from hub_ext.unix_accounts import unix_account
from hub_ext.xnat_api import AliasToken, XnatHubClient
from xnat_bridge.browse import Browser
from xnat_bridge.client import XnatClient
from xnat_bridge.errors import AuthenticationFailed, PermissionDenied, TokenExpired, XnatHpcError
from xnat_bridge.permissions import fetch_permissions
from xnat_bridge.private import read_private_file
from xnat_bridge import server_env
from xnat_bridge.scope import Scope
from xnat_bridge.spawn_record import STATE_KEY, SpawnRecord, now_iso, token_sha256

from .decide import Session, XnatFacts, build_plan, check_readable, choose_profile, data_layout, scope_mounts
from .form import render_form
from .plan import DataMount, SpawnPlan
from .progress import SpawnProgress, follow
from .request import SpawnRequest, flat_options, parse_form, parse_request, selected_projects
from .stored_search import resolve_stored_search
from .xnat_launch import XnatLaunch, apply_hardware, parse_launch

_watchers: dict[str, ProfileWatcher] = {}


def profiles_from(path: str) -> ProfileConfig:
    """The current good profiles of *path*, shared by all spawners (hot reload)."""
    watcher = _watchers.get(path)
    if watcher is None:
        watcher = _watchers[path] = ProfileWatcher(path)
    return watcher.current()


class XnatScopedSpawner(LoggingConfigurable):
    """Mixin for XNAT-scoped spawners; put it first in the bases."""

    #: profile backends this spawner runs (a dispatcher sets all three)
    backends: ClassVar[tuple[str, ...]] = ()

    profiles_file = Unicode(
        "config/profiles.yaml",
        help="""Path of the admin's profiles YAML (see docs/profiles.md). Re-read when it
        changes; an invalid new version is logged and the last good one kept.
        Check it with ``xnat-hpc-hub check-config FILE``.""",
    ).tag(config=True)

    xnat_url = Unicode(
        help="""XNAT base URL the servers talk to (``XNAT_HOST``). Default: the
        XnatAuthenticator's ``xnat_url``, else the hub's ``XNAT_HOST`` environment.""",
    ).tag(config=True)

    @default("xnat_url")
    def _default_xnat_url(self):
        return (getattr(self.authenticator, "xnat_url", "") or os.environ.get("XNAT_HOST", "")).rstrip("/")

    xnat_data_root = Unicode(
        "",
        help="""Host path of the XNAT archive (the directory holding one folder per project,
        XNAT's ``archivePath``). Backends that can mount bind only the scope's folders of it,
        read-only, at /xnat/data. Empty: no mounts; servers read through the REST API.""",
    ).tag(config=True)

    xnat_validate_cert = Bool(True, help="Verify XNAT's TLS certificate.").tag(config=True)

    xnat_timeout = Float(
        15.0, help="Seconds to wait for each XNAT request during form rendering and start.",
    ).tag(config=True)

    xnat_user_options_timeout = Float(
        5.0, min=0.1,
        help="""Seconds the hub waits for XNAT's answer when it reads a "Start Jupyter" start's
        settings back (``GET /xapi/jupyterhub/users/{u}/server/{name}/user-options``, the first
        XNAT request of such a start), connecting and reading together. A hung XNAT refuses the
        start after this time. Keep it well under JupyterHub's ``slow_spawn_timeout`` (10 s):
        then the refusal is the answer to the plugin's ``POST``, and XNAT reports the failed
        start at once; a refusal after ``slow_spawn_timeout`` is answered ``202`` first, and XNAT
        polls for a server that never comes until its own ``startTimeout`` (180 s by default).
        Example: ``c.XnatScopedSpawner.xnat_user_options_timeout = 3``.""",
    ).tag(config=True)

    hub_audit_log = Any(
        help="""Where the spawner records its starts and refusals: the hub's events to the
        governance service (:class:`hub_ext.hub_events.HubEventLog`: a durable outbox, sent to the
        service, which appends them to the trail of ``c.HubAuditLog.path``; without the service,
        the trail itself). Anything with :meth:`hub_ext.audit_log.HubAuditLog.record`'s signature.""",
    )

    @default("hub_audit_log")
    def _default_hub_audit_log(self):
        return HubEventLog(config=self.config, log=self.log)

    ready_check_interval = Float(
        0.1,
        help="""Seconds between checks that a starting server accepts connections; start()
        returns as soon as it does, so the hub's first HTTP check finds it up.""",
    ).tag(config=True)

    hub_auth_cache_max_age = Integer(
        60,
        help="""Seconds a user's server may trust the hub's answer about a token or login
        (``HubOAuth.cache_max_age`` of jupyterhub-singleuser, whose default is 300): a token
        deleted on the hub, or a user removed, stops opening the server within this time.
        The default matches XNAT permissions' cache (60 s); 0 asks the hub on every request.""",
    ).tag(config=True)

    xnat_service_user = Unicode(
        "",
        help="""XNAT account the hub reads the JupyterHub plugin's user options with
        (``GET /xapi/jupyterhub/users/{u}/server/{name}/user-options``) when XNAT's
        "Start Jupyter" starts a server. It must hold XNAT's ``JupyterHub`` site role (the
        plugin creates the account ``jupyterhub`` with it). Its password is read from
        ``xnat_service_password_file``. Empty (the default): starts from XNAT are refused
        with a message naming these two options.""",
    ).tag(config=True)

    xnat_service_password_file = Unicode(
        "",
        help="""File holding the password of ``xnat_service_user`` (one line; surrounding
        whitespace ignored). It must be owned by the hub's user and not readable by group or
        others (``chmod 0600``); otherwise starts from XNAT are refused. Read at every such
        start (so a rotated password applies at once); never logged. Example:
        ``/etc/xnat-hpc-hub/xnat-service-password``.""",
    ).tag(config=True)

    xnat_plan = Any(None, help="The validated plan of the current start (set by start).")

    xnat_account = Unicode(
        "",
        help="""(Not configurable.) The XNAT login this server was last started for (the hub
        user's, or the one XNAT's plugin started it for): kept in :class:`SpawnRecord`.""",
    )

    xnat_record = Any(
        None, allow_none=True,
        help="""What the hub decided at this server's start (a
        :class:`~xnat_bridge.spawn_record.SpawnRecord`: scope, profile, backend), kept in the
        spawner's state so that it outlives a hub restart. Audit ingestion, the job ledger and
        revocation read a server's scope from here, never from ``user_options``.""",
    )

    spawn_progress = Instance(
        SpawnProgress, allow_none=True,
        help="""Progress channel of the current start: made by :meth:`start` of the spawner
        JupyterHub knows, handed by the dispatcher to the backend spawner it starts, read by
        :meth:`progress`.""",
    )

    # ------------------------------------------------------------------ helpers
    def xnat_profiles(self) -> ProfileConfig:
        return profiles_from(os.path.abspath(self.profiles_file))

    async def xnat_audit(self, action: str, outcome: str, *, items=(), detail: str = "") -> None:
        await self.hub_audit_log.record(self.user.name, action, outcome, items=items, detail=detail,
                                        server=self.name or "")

    async def _alias_token(self) -> AliasToken:
        state = await self.user.get_auth_state() or {}
        token = AliasToken.from_state(state.get("xnat_token"))
        if token is None:
            raise AuthenticationFailed("your XNAT login is not known to the hub any more; log out "
                                       "and log in again")
        return token

    def _client(self, token: AliasToken) -> XnatClient:
        return XnatClient(self.xnat_url, token.alias, token.secret, verify=self.xnat_validate_cert,
                          timeout=self.xnat_timeout, retries=1)

    def _hub_name(self, login: str) -> str:
        """The hub user of the XNAT account *login*: the authenticator's mapping
        (:func:`hub_ext.names.hub_name`, with the site's ``username_map``)."""
        auth = self.authenticator
        if auth is not None and hasattr(auth, "username_map"):
            return auth.normalize_username(login)
        return default_hub_name(login)

    async def _login(self) -> str:
        """The XNAT login of this hub user as the hub knows it: the one it logged in with
        (``auth_state``), else the one its name says (``username_map`` or the name itself)."""
        state = await self.user.get_auth_state() or {}
        if state.get("xnat_user"):
            return str(state["xnat_user"])
        auth = self.authenticator
        return xnat_login(self.user.name, getattr(auth, "username_map", None) or {},
                          getattr(auth, "name_pattern", None) or DEFAULT_NAME_PATTERN) or self.user.name

    def _plugin_names(self, request: SpawnRequest) -> tuple[str, str]:
        """``(XNAT login, XNAT's server name)`` of a start from XNAT's plugin: what the plugin
        API (:mod:`hub_ext.plugin_gateway`) recorded in the body, else this user's and server's
        own names; refused unless they map to this user and server."""
        item = request.xnat_item
        login = item.login or self.user.name
        mapped = self._hub_name(login)
        if mapped != self.user.name:
            raise PermissionDenied(
                f"this start from XNAT is for the XNAT account {login!r}, whose hub user is {mapped!r}, not "
                f"{self.user.name!r}; XNAT's JupyterHub API URL must be this hub's /hub/xnat-plugin/api "
                "(docs/admin.md, \"XNAT's Start Jupyter\")")
        server, own = item.servername, self.name or ""
        if not server or server == own:  # the hub's API called directly (JupyterHub 5 keeps raw names)
            return login, own
        try:
            mapped_server = hub_server_name(server)
        except XnatHpcError as exc:
            raise PermissionDenied(exc.message) from None
        if mapped_server != own:
            raise PermissionDenied(f"this start from XNAT names the server {server!r}, which is not "
                                   f"the server {self.name or '(default)'!r} being started")
        return login, server

    def _facts(self, token: AliasToken, scope: Scope | None, login: str) -> XnatFacts:
        """Ask XNAT about the account *login* (blocking; run in a thread)."""
        with self._client(token) as client:
            perms = fetch_permissions(client, login)
            sessions: dict[str, tuple[Session, ...]] = {}
            for project, ps in sorted((scope.projects or {}).items() if scope else ()):
                if ps.whole or project not in perms.roles:
                    continue
                browser = Browser(client, Scope.unrestricted(), lambda: perms)
                sessions[project] = tuple(
                    Session(e.id, e.label, e.subject_id, e.subject_label)
                    for e in browser.all_experiments(project))
        return XnatFacts(perms.user, dict(perms.roles), tuple(perms.site_roles), sessions)

    def _progress(self, progress: int, message: str) -> None:
        if self.spawn_progress is not None:
            self.spawn_progress.emit(progress, message)

    def mark_phase(self, name: str) -> None:
        """End the start's phase *name* (:data:`~spawner.progress.SPAWN_PHASES`) now."""
        if self.spawn_progress is not None:
            self.spawn_progress.phase(name)

    @default("apply_user_options")
    def _default_apply_user_options(self):
        return _checked_in_start

    # ------------------------------------------------------------------ form
    @default("options_form")
    def _default_options_form(self):
        return _options_form

    def options_from_form(self, formdata):
        return parse_form(formdata)

    async def render_options_form(self) -> str:
        try:
            config = self.xnat_profiles()
            token = await self._alias_token()
            facts = await asyncio.to_thread(self._facts, token, None, await self._login())
        except XnatHpcError as exc:
            self.log.warning("spawn form for %s: %s", self.user.name, exc.message)
            return f'<p class="xnat-hpc-empty" role="alert">{html.escape(exc.message)}</p>'
        profiles = [p for p in visible_profiles(config, username=self.user.name,
                                                groups=[g.name for g in self.user.groups],
                                                site_roles=facts.site_roles,
                                                project_roles=facts.project_roles)
                    if not self.backends or p.backend in self.backends]
        previous = self.user_options or {}
        return render_form(profiles, facts.project_roles, selected_profile=previous.get("profile"),
                           selected_projects=selected_projects(previous))

    # ------------------------------------------------------------------ start
    async def _notice(self, text: str, key: str) -> None:
        """Tell the user *text* on their hub pages under *key* (""): forget that notice), on
        the notice board the governance service's revocations write too
        (:func:`hub_ext.revocation.notice_board`); a board that cannot be written is logged."""
        board = notice_board(self.config)
        try:
            if text:
                await asyncio.to_thread(board.add_notice, self.user.name, text, key=key)
            else:
                await asyncio.to_thread(board.drop_notice, self.user.name, key)
        except Exception as exc:  # noqa: BLE001 - the start's answer matters more than its notice
            self.log.warning("notice for %s not kept: %r", self._log_name, exc)

    async def checked_plan(self) -> SpawnPlan:
        """:meth:`make_plan`; a refusal is audited, logged, told to the user on the hub's home and
        spawn pages (:func:`~hub_ext.revocation.add_notice`: XNAT's plugin shows only its generic
        failure text, and its users never see the spawn page) and raised as :func:`spawn_error`."""
        notice_key = f"spawn-refused:{self.name or ''}"
        try:
            plan = await self.make_plan()
        except XnatHpcError as exc:
            await self.xnat_audit("spawn", "denied", items=_items(self.user_options), detail=exc.message)
            self.log.warning("spawn of %s refused: %s", self._log_name, exc.message)
            await self._notice(refusal_notice(self.user_options, self.name or "", exc.message), notice_key)
            raise spawn_error(exc) from None
        await self._notice("", notice_key)
        self.mark_phase("checks")
        self.xnat_record = SpawnRecord(scope=plan.scope, profile=plan.profile.slug, backend=plan.profile.backend,
                                       started=now_iso(), login=self.xnat_account,
                                       token_sha256=token_sha256(self.api_token) if self.api_token else "",
                                       server_scopes=SpawnRecord.configured_scopes(self.config))
        return plan

    def get_state(self):
        """The base spawner's state and the hub's :class:`SpawnRecord` of the server."""
        state = super().get_state()
        if self.xnat_record is not None:
            state[STATE_KEY] = self.xnat_record.to_state()
        return state

    def load_state(self, state):
        super().load_state(state)
        try:
            self.xnat_record = SpawnRecord.from_state(state)
        except XnatHpcError as exc:
            self.log.warning("%s: spawner state holds no usable scope record: %s", self._log_name, exc.message)
            self.xnat_record = None

    def clear_state(self):
        super().clear_state()
        self.xnat_record = None

    async def make_plan(self) -> SpawnPlan:
        """Validate ``user_options`` against XNAT now; the plan or a typed error."""
        self._progress(5, "Checking your XNAT permissions")
        request: SpawnRequest = parse_request(self.user_options)
        self._store_flat(request)
        config = self.xnat_profiles()
        launch = None
        if request.source == "xnat":
            login, server = self._plugin_names(request)
            launch = await self.xnat_launch(request, login, server)
            request = dataclasses.replace(request, hardware=launch.hardware)
        else:
            login = await self._login()
        token = await self._launch_token(launch, login) if launch and launch.token else await self._alias_token()
        self.xnat_account = login
        request = await resolve_stored_search(request, lambda: self._client(token), login)
        facts = await asyncio.to_thread(self._facts, token, request.scope, login)
        roles = check_readable(request.scope, facts.project_roles)
        profile = choose_profile(config, request, facts, groups=[g.name for g in self.user.groups],
                                 backends=self.backends or None)
        if launch is not None:
            profile, notes = apply_hardware(profile, launch)
            for note in notes:
                self.log.info("XNAT start of %s: %s", self._log_name, note)
        layout = data_layout(profile, request)
        mounts = scope_mounts(request.scope, facts.sessions, layout, launch=launch)  # also checks a narrowed scope
        return build_plan(user=self.user.name, server_name=self.name, request=request, profile=profile,
                          roles=roles, mounts=mounts, data_mount=self.data_mount_for(profile),
                          xnat_url=self.xnat_url, alias=token.alias, secret=token.secret,
                          offload=config.offload, layout=layout, launch=launch)

    def _store_flat(self, request: SpawnRequest) -> None:
        """Keep ``user_options`` flat (string or null values) for XNAT's ``Map<String,String>``
        readers, whatever shape the start came in (form, REST or XNAT)."""
        flat = flat_options(request)
        if self.user_options != flat:
            self.user_options = flat
            if getattr(self, "orm_spawner", None) is not None:
                self.orm_spawner.user_options = flat  # committed by JupyterHub with the start

    def _service_account(self) -> tuple[str, str]:
        """``(xnat_service_user, password)``; blocking (run in a thread)."""
        path = self.xnat_service_password_file
        if not self.xnat_service_user or not path:
            raise PermissionDenied("this hub is not set up for XNAT's \"Start Jupyter\": the hub admin must "
                                   "set c.XnatScopedSpawner.xnat_service_user and xnat_service_password_file")
        what = "c.XnatScopedSpawner.xnat_service_password_file"
        try:
            password = read_private_file(path, what=what, max_bytes=4096).decode("utf-8", "replace").strip()
        except XnatHpcError as e:  # missing, a link, a FIFO, another account's, readable by others
            raise PermissionDenied(f"{e.message}; the hub admin must fix it") from None
        if not password:
            raise PermissionDenied(f"{path} ({what}) is empty")
        return self.xnat_service_user, password

    async def xnat_launch(self, request: SpawnRequest, login: str, server: str) -> XnatLaunch:
        """Fetch what XNAT stored for this start of the XNAT account *login*'s server *server*
        (XNAT's names; as the ``JupyterHub``-role account) and parse it."""
        self._progress(8, "Reading the start's settings from XNAT")
        account = await asyncio.to_thread(self._service_account)
        client = XnatHubClient(self.xnat_url, timeout=self.xnat_user_options_timeout,
                               validate_cert=self.xnat_validate_cert)
        doc = await client.plugin_user_options(login, server, account)
        return parse_launch(doc, request)

    async def _launch_token(self, launch: XnatLaunch, login: str) -> AliasToken:
        """The alias token XNAT issued for this start, checked with XNAT to be *login*'s."""
        client = XnatHubClient(self.xnat_url, timeout=self.xnat_timeout, validate_cert=self.xnat_validate_cert)
        try:
            owner = await client.validate_token(launch.token.alias, launch.token.secret)
        except TokenExpired:
            raise AuthenticationFailed("the XNAT token of this start is no longer valid; start Jupyter "
                                       "again from XNAT") from None
        if owner != login or self._hub_name(owner) != self.user.name:
            raise PermissionDenied(f"the XNAT token of this start belongs to another XNAT account, "
                                   f"not {login}; start Jupyter again from XNAT as yourself")
        return launch.token

    def data_mount(self) -> DataMount:
        """Backend hook: how this backend gives a server its scope's files (default: not at all,
        the server reads through XNAT's REST API). Asked once per start, by :meth:`make_plan`."""
        return DataMount.NONE

    def data_mount_for(self, profile) -> DataMount:
        """The :meth:`data_mount` of the spawner that will run *profile*'s server: this one
        (a dispatcher asks its backend of the profile). Called last in :meth:`make_plan`."""
        return self.data_mount()

    async def prepare_host(self, plan: SpawnPlan) -> None:
        """Backend hook: what the hub itself must do on the host before *plan*'s server starts
        (the local and Slurm backends create the user's staging directory as root); raise an
        :class:`~xnat_bridge.errors.XnatHpcError` to refuse the start. Default: nothing."""

    def apply_plan(self, plan: SpawnPlan) -> None:
        """Backend hook: set this spawner's own settings from *plan* (pure builder + assignment)."""
        raise NotImplementedError(f"{type(self).__name__} must implement apply_plan")

    async def start(self):
        if self.xnat_plan is None:  # JupyterHub's call (the dispatcher hands its backend plan + channel)
            self.spawn_progress = SpawnProgress()
            self.xnat_plan = await self.checked_plan()
        plan = self.xnat_plan
        await self.xnat_audit("spawn", "allowed", items=plan.projects,
                              detail=f"profile {plan.profile.slug}; scope {plan.scope.to_json()}")
        self.log.info("starting %s with profile %s, scope %s", self._log_name, plan.profile.slug,
                      plan.scope.to_json())
        self._progress(20, f"Permissions checked: {', '.join(f'{p} ({r})' for p, r in plan.roles.items())}"
                           f"; profile {plan.profile.display_name}")
        try:
            await self.prepare_host(plan)
            self.mark_phase("prepare")
            self.apply_plan(plan)
            address = await super().start()
        except XnatHpcError as exc:
            raise spawn_error(exc) from None
        self.mark_phase("server_start")
        await self._wait_listening(address)
        self.mark_phase("listening")
        if self.spawn_progress is not None:
            text = self.spawn_progress.phases.text()
            self.log.info("%s started: %s", self._log_name, text)
            self._progress(95, f"Started: {text}")
        return address

    async def _wait_listening(self, address) -> None:
        """Return once the server accepts connections (checked every ``ready_check_interval``).

        JupyterHub then finds it up at its first HTTP check instead of after its
        exponential backoff (up to 5 s between checks). Gives up quietly after
        ``http_timeout`` or when the server exits: the hub's own checks decide then.
        """
        if not isinstance(address, tuple) or len(address) != 2:
            return
        host, port = address[0] or "127.0.0.1", int(address[1])
        deadline = time.monotonic() + self.http_timeout
        next_poll = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            try:
                _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
                writer.close()
                self._progress(90, "Server is up; connecting")
                return
            except (OSError, asyncio.TimeoutError):
                pass
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + 1.0
                if await self.poll() is not None:
                    return
            await asyncio.sleep(self.ready_check_interval)

    async def stop(self, now=False):
        try:
            return await super().stop(now=now)
        finally:
            self.xnat_plan = self.spawn_progress = None

    def get_args(self):
        """The base spawner's arguments, and how long the server may cache the hub's answers."""
        return [*super().get_args(), f"--HubOAuth.cache_max_age={int(self.hub_auth_cache_max_age)}"]

    def user_env(self, env):
        """``USER``, ``LOGNAME``, ``HOME`` and ``SHELL`` of the Unix account the server runs as
        (``c.UnixAccounts.name_template``), where JupyterHub's local spawner and batchspawner
        would take the hub user's name for the account's (blocking: ``pwd``, as theirs)."""
        account = unix_account(self.user.name, self.config)
        env["USER"] = env["LOGNAME"] = account.pw_name
        if account.pw_dir:
            env["HOME"] = account.pw_dir
        if account.pw_shell:
            env["SHELL"] = account.pw_shell
        return env

    def get_env(self):
        """The base spawner's environment, then the plan's ``ServerEnv`` and its secret."""
        env = super().get_env()
        plan = self.xnat_plan
        if plan is not None:
            env.update(plan.server_env.to_env())
            env[server_env.PERMISSION_TTL] = f"{OwnerAccess(config=self.config).permission_ttl:g}"
            env.update(plan.secret_env)
        return env

    async def progress(self):
        """The current start's events as they happen (ours and the dispatcher's backend's)."""
        async for event in follow(lambda: self.spawn_progress, lambda: self._spawn_pending):
            yield event


def _items(options) -> list[str]:
    try:
        return parse_request(options).projects
    except (XnatHpcError, TypeError, AttributeError):
        return []


def refusal_notice(options, server_name: str, reason: str) -> str:
    """What the user reads on the hub's pages when a start is refused (pure): which start, and
    *reason* (the refusal's message, which names no secret). A start from XNAT is named by its
    item, as XNAT's UI showed it; any other start by its server."""
    try:
        request = parse_request(options)
    except (XnatHpcError, TypeError, AttributeError):
        request = None
    item = request.xnat_item if request is not None else None
    if item is not None:
        shown = item.label or item.item_id
        where = f" in project {item.project}" if item.kind != "project" else ""
        return f"Your start of Jupyter from XNAT ({item.kind} {shown}{where}) was refused: {reason}"
    server = f"server '{server_name}'" if server_name else "your default server"
    return f"The start of {server} was refused: {reason}"


def _checked_in_start(spawner, user_options) -> None:
    """``user_options`` are parsed and checked against XNAT in :meth:`XnatScopedSpawner.start`;
    here they are only made flat, before JupyterHub commits the start to its database (so the
    stored defaults of the next start are the flat form too). A malformed request is left as it
    is: :meth:`~XnatScopedSpawner.make_plan` refuses it with the same message."""
    try:
        spawner._store_flat(parse_request(user_options))
    except (XnatHpcError, TypeError, AttributeError):
        pass


async def _options_form(spawner) -> str:
    return await spawner.render_options_form()
