"""Revocation on the running hub: the effects for one user and project, bounded in time, and
the periodic re-check that finds revocations done in XNAT's own UI.

:func:`revoke_effects` gathers what :func:`hub_ext.revocation.apply_revocation` needs
from the hub (the user's servers and their scopes, the ``submit`` events of the hub's
audit trail, the staging area) and runs it. :meth:`RevocationWatch.revoke` runs it within
``c.OwnerAccess.revoke_timeout`` seconds (:func:`hub_ext.revocation.within_bound`): what
is not done by then goes on in the background and the report lists it as pending. The
access page calls it (:func:`revoke_bounded`) after XNAT removed a user, the watch when a
running server's scope holds a project XNAT no longer lets its user read.

:class:`RevocationWatch`, **one per hub process** (:func:`ensure_watch`, keyed on the
hub's ``config`` object, which the hub's handlers and its users' settings share, whichever
settings dict the caller holds), asks XNAT every ``c.OwnerAccess.recheck_interval``
seconds which projects each user with an active server may read, and applies the
effects to every active server whose scope (the hub's
:class:`~xnat_bridge.spawn_record.SpawnRecord`, never ``user_options``) holds a project
that is gone. It asks with the user's own alias token from ``auth_state``; where that is
missing or XNAT refuses it, with the hub's XNAT service account
(``c.XnatScopedSpawner.xnat_service_user`` and ``xnat_service_password_file``) when one is
configured — XNAT answers another user's groups (``/xapi/users/{u}/groups``) to site
administrators only, so that account needs XNAT's ``Administrator`` role for this; else the
user is skipped and logged: nothing is stopped on a guess. Each user is checked on their
own (one user's error or time-out does not end the round). A server handled once is not
handled again while it runs; once it stopped or was restarted (a new spawn record), a
later loss is acted on again.

Servers are stopped through the hub's REST API as the hub service ``xnat-hpc-governance``
(:mod:`hub_ext.hub_rest`, ``c.XnatGovernance.token_file``), never through JupyterHub's objects:
``DELETE /hub/api/users/{u}/servers/{name}``, then the hub is asked until it no longer lists the
server. Without that service configured a stop fails, logged and reported with what to add.

It is started (:func:`ensure_watch`) by the first of: a server start, an audit event
from a running server (they post on every data access, so also after a hub restart), the
owner page or the access page; ``recheck_interval = 0`` turns the loop off.
"""

from __future__ import annotations

import asyncio
import logging
import os
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import AuthenticationFailed, XnatHpcError
from xnat_bridge.permissions import fetch_permissions
from xnat_bridge.private import read_private_file
from xnat_bridge.spawn_record import record_of

from . import hub_rest
from .audit_log import HubAuditLog
from .review_store import ReviewStore
from .revocation import OwnerAccess, RevocationReport, ServerView, apply_revocation, ledger_jobs_hit, within_bound
from .xnat_api import AliasToken

log = logging.getLogger(__name__)

#: ``permissions(user)`` → the projects *user* may read now, or None (unknown: skip them)
Permissions = Callable[[object], Awaitable["set[str] | None"]]
#: ``stop(user, server_name)`` stops one server outside a request (default: through the hub's
#: REST API, :func:`hub_ext.hub_rest.stop_server`)
StopUser = Callable[[object, str], Awaitable[None]]
#: the spawner config section the service account is read from (``c.XnatScopedSpawner``)
SERVICE_SECTION = "XnatScopedSpawner"


def server_views(user) -> list[ServerView]:
    """The hub's servers of *user* (a JupyterHub ``User``), each with the scope the hub decided
    at its start (:class:`~xnat_bridge.spawn_record.SpawnRecord` in the spawner's state, kept
    in the hub's database across restarts), never the ``user_options`` that asked for it."""
    views = []
    for name in list(getattr(user, "orm_spawners", {}) or {}):
        spawner = user.spawners[name]
        try:
            record = record_of(spawner)
        except XnatHpcError as exc:
            log.warning("server %s/%s: %s", user.name, name, exc.message)
            record = None
        projects = record.projects if record is not None else frozenset()
        views.append(ServerView(name, frozenset(projects), bool(spawner.active), spawner.pending,
                                record.started if record is not None else ""))
    return views


def lost_projects(servers: Iterable[ServerView], readable: Iterable[str]) -> set[str]:
    """Projects in the scope of an active server that the user may no longer read (pure)."""
    readable = set(readable)
    return {p for s in servers if s.active for p in s.projects if p not in readable}


def handled_keys(user: str, servers: Iterable[ServerView], names: Iterable[str], project: str) -> set[tuple]:
    """``(user, server, started, project)`` of the servers named *names* (pure): a server
    restarted since (another ``started``) is another key."""
    started = {s.name: s.started for s in servers}
    return {(user, n, started.get(n, ""), project) for n in names}


def still_running(handled: set[tuple], live: set[tuple]) -> set[tuple]:
    """The *handled* keys whose server ``(user, server, started)`` is in *live*, the active
    servers now (pure): a stopped or restarted server is forgotten, so a later loss of it is
    acted on again."""
    return {k for k in handled if k[:3] in live}


def staging_root(settings: OwnerAccess, user) -> str:
    """``c.OwnerAccess.staging_dir``, else the staging area of the profiles file *user*'s spawner reads."""
    if settings.staging_dir:
        return settings.staging_dir
    try:
        return str(user.spawner.xnat_profiles().offload.staging_dir) if user is not None else ""
    except Exception as exc:  # noqa: BLE001 - no profiles: no bundles to find; said in the log
        log.warning("revocation: no staging area known (%s); set c.OwnerAccess.staging_dir", exc)
        return ""


def service_account_config(config: Mapping | None, spawner_class: type | None = None) -> tuple[str, str]:
    """``(xnat_service_user, xnat_service_password_file)`` as the hub's *config* sets them for
    its spawners (pure): the most specific section of *spawner_class*'s bases that sets each,
    else ``XnatScopedSpawner``'s; ``("", "")`` when unset. Reads the config without adding
    sections to it."""
    names = [c.__name__ for c in getattr(spawner_class, "__mro__", ())] + [SERVICE_SECTION]
    found = {}
    for key in ("xnat_service_user", "xnat_service_password_file"):
        for name in names:
            section = config.get(name) if isinstance(config, Mapping) else None
            if isinstance(section, Mapping) and section.get(key):
                found[key] = str(section[key])
                break
    return found.get("xnat_service_user", ""), found.get("xnat_service_password_file", "")


def read_service_password(path: str) -> str:
    """The service account's password from *path*: a private file of the hub's account
    (:func:`xnat_bridge.private.read_private_file`), one line; blocking."""
    what = f"c.{SERVICE_SECTION}.xnat_service_password_file"
    password = read_private_file(path, what=what, max_bytes=4096).decode("utf-8", "replace").strip()
    if not password:
        raise AuthenticationFailed(f"{what} {path} is empty; write the account's password into it")
    return password


async def revoke_effects(tornado_settings: Mapping, user, target: str, project: str, reason: str,
                         stop: Callable[[str], Awaitable[None]], *, audit_log=None, ledger=None,
                         servers: list[ServerView] | None = None,
                         report: RevocationReport | None = None) -> RevocationReport:
    """Stop, cancel and wipe what *target* (``User`` *user*, or None when the hub has never
    seen them) still runs on *project* (:func:`hub_ext.revocation.apply_revocation`), with
    no time bound (:meth:`RevocationWatch.revoke` adds it). *servers*: the views of *user*'s
    servers (default: read now); *report*: filled as the effects happen."""
    config = tornado_settings.get("config")
    settings = OwnerAccess(config=config)
    audit_log = audit_log if audit_log is not None else HubAuditLog(config=config)
    report = RevocationReport() if report is None else report
    ledger = ledger if ledger is not None else ReviewStore(config=config)
    report.pending.append("reading the job ledger")
    try:
        rows = await asyncio.to_thread(ledger.ledger_jobs, user=target, projects={project}, limit=100000)
    finally:
        report.pending.remove("reading the job ledger")
    if servers is None:
        servers = server_views(user) if user is not None else []
    return await apply_revocation(
        user=target, project=project, reason=reason, servers=servers, jobs=ledger_jobs_hit(rows, target, project),
        settings=settings,
        staging_root=staging_root(settings, user), stop=stop, audit=audit_log.record, report=report)


class RevocationWatch:
    """The periodic re-check and the bounded runner of revocations (module docstring). One
    per hub process: :func:`ensure_watch`. *permissions*, *stop* and *audit_log* replace
    the hub's (XNAT, a stop through the hub's REST API as the governance service
    (:func:`hub_ext.hub_rest.stop_server`), ``HubAuditLog``), e.g. in tests."""

    #: seconds one user's XNAT question may take in a round (the client's own timeouts are
    #: 15 s per request, one retry)
    question_timeout = 45.0

    def __init__(self, tornado_settings: Mapping, *, permissions: Permissions | None = None,
                 stop: StopUser | None = None, audit_log=None, ledger=None):
        self.settings = tornado_settings
        self.permissions = permissions or self._readable
        self.stop_user = stop or (lambda user, name: hub_rest.stop_server(self.settings, user.name, name))
        self._audit_log = audit_log
        #: the hub's job ledger (:class:`~hub_ext.review_store.ReviewStore`): the jobs to cancel
        self.ledger = ledger if ledger is not None else ReviewStore(config=self.config)
        self.task: asyncio.Task | None = None
        #: (user, server, started, project) handled while that server runs: a server left
        #: running ("narrow") is not handled again every round
        self.handled: set[tuple[str, str, str, str]] = set()
        #: (user, project) whose effects are still running (in the background)
        self.in_flight: set[tuple[str, str]] = set()
        #: revocations that outlived their bound, kept until they end
        self.background: set[asyncio.Task] = set()

    @property
    def config(self):
        return self.settings.get("config")

    @property
    def owner_access(self) -> OwnerAccess:
        return OwnerAccess(config=self.config)

    @property
    def audit_log(self):
        if self._audit_log is None:
            self._audit_log = HubAuditLog(config=self.config)
        return self._audit_log

    @property
    def interval(self) -> float:
        return float(self.owner_access.recheck_interval)

    def start(self) -> None:
        """Start the loop on the running event loop (once; again only if the loop it ran on
        is gone)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # nothing runs yet: the next caller on the hub's loop starts it
        if self.interval <= 0:
            return
        if self.task is not None and not self.task.done() and self.task.get_loop() is loop:
            return
        self.task = loop.create_task(self._loop())
        log.info("revocation re-check every %.0f s", self.interval)
        if not hub_rest.configured(self.settings):
            log.error("the revocation re-check cannot stop servers: governance acts on the hub through its "
                      "REST API and is not configured. Add %s", hub_rest.HOW_TO_CONFIGURE)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad round; logged
                log.exception("revocation re-check failed")

    # -- one revocation, bounded --------------------------------------------------------------
    async def revoke(self, user, target: str, project: str, reason: str,
                     stop: Callable[[str], Awaitable[None]], *,
                     servers: list[ServerView] | None = None) -> RevocationReport:
        """:func:`revoke_effects` within ``c.OwnerAccess.revoke_timeout`` seconds; what is not
        done then goes on in the background (kept in :attr:`background`) and is listed in
        the report's ``pending``."""
        if servers is None:
            servers = server_views(user) if user is not None else []
        report = RevocationReport()
        key = (target, project)
        self.in_flight.add(key)

        async def work() -> RevocationReport:
            try:
                await revoke_effects(self.settings, user, target, project, reason, stop,
                                     audit_log=self.audit_log, ledger=self.ledger, servers=servers,
                                     report=report)
                self.handled |= handled_keys(target, servers, report.stopped + report.left_running, project)
                return report
            finally:
                self.in_flight.discard(key)

        return await within_bound(work(), report, self.owner_access.revoke_timeout, keep=self.background,
                                  what=f"revocation of {target}'s access to {project}")

    # -- the re-check ---------------------------------------------------------------------------
    async def check_once(self) -> list[tuple[str, str, RevocationReport]]:
        """One round over every user with an active server; ``(user, project, report)`` per
        loss acted on. Each user on their own: an error or time-out is logged and the round
        goes on."""
        users = list(self.settings.get("users", {}).values())
        views = {}
        for user in users:
            try:
                views[user.name] = server_views(user)
            except Exception:  # noqa: BLE001 - one user's broken spawner must not end the round
                log.exception("re-check: cannot read %s's servers", getattr(user, "name", user))
        live = {(name, s.name, s.started) for name, servers in views.items() for s in servers if s.active}
        self.handled = still_running(self.handled, live)
        done = []
        for user in users:
            if user.name not in views:
                continue
            try:
                done.extend(await self._check_user(user, views[user.name]))
            except asyncio.TimeoutError:
                log.warning("re-check of %s skipped this round: XNAT did not answer within %.0f s",
                            user.name, self.question_timeout)
            except Exception:  # noqa: BLE001 - isolated per user; logged with its traceback
                log.exception("re-check of %s failed; the other users are checked", user.name)
        return done

    async def _check_user(self, user, views: list[ServerView]) -> list[tuple[str, str, RevocationReport]]:
        servers = [s for s in views if s.active and s.projects]
        if not servers:
            return []
        readable = await asyncio.wait_for(self.permissions(user), self.question_timeout)
        if readable is None:
            return []
        done = []
        for project in sorted(lost_projects(servers, readable)):
            keys = handled_keys(user.name, servers, [s.name for s in servers if project in s.projects], project)
            if keys <= self.handled or (user.name, project) in self.in_flight:
                continue
            reason = f"access to {project} no longer granted in XNAT (found by the hub's re-check)"
            await self.audit_log.record(user.name, "revoke", "allowed", items=[project], detail=reason)

            async def stop(name: str, user=user) -> None:
                await self.stop_user(user, name)

            report = await self.revoke(user, user.name, project, reason, stop, servers=views)
            log.info("re-check: %s lost %s: %s", user.name, project, report.summary())
            done.append((user.name, project, report))
        return done

    # -- asking XNAT ------------------------------------------------------------------------------
    def _xnat_url(self) -> str:
        authenticator = self.settings.get("authenticator")
        return getattr(authenticator, "xnat_url", "") or os.environ.get("XNAT_HOST", "")

    async def _readable(self, user) -> set[str] | None:
        """The projects *user* may read, asked of XNAT with their own token, else with the
        hub's service account; None when neither can tell (logged)."""
        state = await user.get_auth_state() or {}
        token = AliasToken.from_state(state.get("xnat_token"))
        login = str(state.get("xnat_user") or _recorded_login(user) or user.name)
        url = self._xnat_url()
        if not url:
            return None

        def ask(account: str, secret: str) -> set[str]:
            with XnatClient(url, account, secret, retries=1, timeout=15) as client:
                return set(fetch_permissions(client, login).roles)

        if token is not None:
            try:
                return await asyncio.to_thread(ask, token.alias, token.secret)
            except AuthenticationFailed as exc:  # TokenExpired included: their token is dead
                log.info("re-check of %s: their own XNAT token is refused (%s); asking as the "
                         "hub's service account", user.name, exc.message)
            except XnatHpcError as exc:
                log.warning("re-check of %s skipped: %s", user.name, exc.message)
                return None
        account, password_file = service_account_config(self.config, self.settings.get("spawner_class"))
        if not account or not password_file:
            log.warning("re-check of %s skipped: no live XNAT token of theirs, and no service account "
                        "to ask with (set c.%s.xnat_service_user and xnat_service_password_file; the "
                        "account needs XNAT's Administrator role to read other users' groups)",
                        user.name, SERVICE_SECTION)
            return None

        def ask_as_service() -> set[str]:
            return ask(account, read_service_password(password_file))

        try:
            return await asyncio.to_thread(ask_as_service)
        except XnatHpcError as exc:
            hint = (f"; XNAT answers another user's groups to site administrators only: give {account} "
                    "the Administrator role, or the re-check skips users whose own token is dead"
                    if exc.status == 403 else "")
            log.warning("re-check of %s as the service account %s skipped: %s%s", user.name, account,
                        exc.message, hint)
            return None


def _recorded_login(user) -> str:
    """The XNAT login a server of *user* was started for (its :class:`SpawnRecord`): a user XNAT's
    plugin started, who never logged in to the hub, under a derived name (:mod:`hub_ext.names`)."""
    for spawner in list(getattr(user, "spawners", {}).values()):
        try:
            record = record_of(spawner)
        except XnatHpcError:
            continue
        if record is not None and record.login:
            return record.login
    return ""


#: this process's watches by ``id`` of the hub's ``config`` object, with a weak reference to
#: it to tell a reused ``id`` apart (a hub process has one config for its whole life)
_WATCHES: dict[int, tuple[weakref.ref, RevocationWatch]] = {}


def ensure_watch(tornado_settings: dict) -> RevocationWatch:
    """The hub process's one :class:`RevocationWatch`, started on first use.

    The callers hold different settings dicts of the same hub (a handler's is tornado's
    copy of the app's ``tornado_settings``, a ``User``'s is the app's own), so the watch is
    found by what they share: the hub's ``config`` object. Without one (a bare dict in a
    test), the dict itself keeps it."""
    config = tornado_settings.get("config")
    if config is None:
        watch = tornado_settings.get("xnat_hpc_revocation_watch")
        if watch is None:
            watch = tornado_settings["xnat_hpc_revocation_watch"] = RevocationWatch(tornado_settings)
        watch.start()
        return watch
    entry = _WATCHES.get(id(config))
    if entry is None or entry[0]() is not config:
        entry = _WATCHES[id(config)] = (weakref.ref(config), RevocationWatch(tornado_settings))
    entry[1].start()
    return entry[1]


async def revoke_bounded(tornado_settings: dict, user, target: str, project: str, reason: str,
                         stop: Callable[[str], Awaitable[None]]) -> RevocationReport:
    """What the access page runs after XNAT removed *target* from *project*:
    :meth:`RevocationWatch.revoke` of the hub's watch (bounded by ``c.OwnerAccess.revoke_timeout``)."""
    return await ensure_watch(tornado_settings).revoke(user, target, project, reason, stop)
