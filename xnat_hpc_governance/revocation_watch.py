"""Revocation: the effects for one user and project, bounded in time, and the periodic
re-check that finds revocations done in XNAT's own UI.

:func:`revoke_effects` gathers what :func:`hub_ext.revocation.apply_revocation` needs (the
user's servers and their scopes as the hub's REST API shows them, the job ledger, the staging
area) and runs it. :meth:`RevocationWatch.revoke` runs it within
``c.OwnerAccess.revoke_timeout`` seconds (:func:`hub_ext.revocation.within_bound`): what is not
done by then goes on in the background and the report lists it as pending. The access page
(:class:`xnat_hpc_governance.owner_pages.OwnerAccessPage`) calls it on the service's one runner
after XNAT removed a user.

**The re-check runs in the governance service's process**, not the hub's
(:mod:`xnat_hpc_governance`, a JupyterHub-managed service; issue 19): every
``c.OwnerAccess.recheck_interval`` seconds it asks XNAT which projects each user with an active
server may read, and applies the effects to every active server whose scope (the hub's
:class:`~xnat_bridge.spawn_record.SpawnRecord`, read from the server's ``state`` through the
REST API, never ``user_options``) holds a project that is gone. It asks with the user's own
alias token (their ``auth_state``, read through the REST API); where that is missing or XNAT
refuses it, with the hub's XNAT service account (``c.XnatScopedSpawner.xnat_service_user`` and
``xnat_service_password_file``) when one is configured — XNAT answers another user's groups
(``/xapi/users/{u}/groups``) to site administrators only, so that account needs XNAT's
``Administrator`` role for this; else the user is skipped and logged: nothing is stopped on a
guess. Each user is checked on their own (one user's error or time-out does not end the
round). A server handled once is not handled again while it runs; once it stopped or was
restarted (a new spawn record), a later loss is acted on again.

Everything about the hub's users and servers goes through the hub's REST API as the hub service
``xnat-hpc-governance`` (:mod:`hub_ext.hub_rest`, ``c.XnatGovernance.token_file`` or, in the
service's process, the ``JUPYTERHUB_API_TOKEN`` the hub gives it): the users with active
servers, each server's state, each user's ``auth_state``, and the stop
(``DELETE /hub/api/users/{u}/servers/{name}``, then asked until the hub no longer lists the
server). Nothing reads JupyterHub's objects, so the same code runs in either process. Without
that service configured, reading and stopping fail, logged and reported with what to add.
``recheck_interval = 0`` turns the loop off.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from importlib.metadata import entry_points

from traitlets.utils.importstring import import_item

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import AuthenticationFailed, XnatHpcError
from xnat_bridge.permissions import fetch_permissions
from xnat_bridge.private import read_private_file
from xnat_bridge.spawn_record import SpawnRecord

from hub_ext import hub_rest
from hub_ext.audit_log import HubAuditLog
from hub_ext.hub_rest import HubUser
from hub_ext.profiles import load_profiles_file
from hub_ext.review_store import ReviewStore
from hub_ext.unix_accounts import unix_account_name
from hub_ext.revocation import OwnerAccess, RevocationReport, ServerView, apply_revocation, ledger_jobs_hit, within_bound
from hub_ext.xnat_api import AliasToken

log = logging.getLogger(__name__)

#: ``permissions(user)`` → the projects *user* may read now, or None (unknown: skip them)
Permissions = Callable[[object], Awaitable["set[str] | None"]]
#: ``stop(user, server_name)`` stops one server outside a request (default: through the hub's
#: REST API, :meth:`hub_ext.hub_rest.HubRestClient.stop_server`)
StopUser = Callable[[object, str], Awaitable[None]]
#: the spawner config section the service account is read from (``c.XnatScopedSpawner``)
SERVICE_SECTION = "XnatScopedSpawner"


def record_in(user: HubUser, name: str) -> SpawnRecord | None:
    """The hub's record of *user*'s server *name* (its persisted state), or None (logged when
    the state holds a record that does not read)."""
    server = user.servers.get(name)
    if server is None:
        return None
    try:
        return SpawnRecord.from_state(server.state)
    except XnatHpcError as exc:
        log.warning("server %s/%s: %s", user.name, name, exc.message)
        return None


def server_views(user: HubUser) -> list[ServerView]:
    """The servers of *user* as the hub's REST API shows them, each with the scope the hub
    decided at its start (:class:`~xnat_bridge.spawn_record.SpawnRecord` in the server's
    state, kept in the hub's database across restarts), never the ``user_options`` that asked
    for it."""
    views = []
    for name, server in user.servers.items():
        record = record_in(user, name)
        projects = record.projects if record is not None else frozenset()
        views.append(ServerView(name, frozenset(projects), server.active, server.pending,
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


def staging_root(settings: OwnerAccess, config: Mapping | None, spawner_class: type | None = None) -> str:
    """``c.OwnerAccess.staging_dir``, else the staging area of the profiles file the hub's
    spawners read (``profiles_file`` of *spawner_class*'s config, else its default)."""
    if settings.staging_dir:
        return settings.staging_dir
    path = spawner_setting(config, spawner_class, "profiles_file")
    if not path:
        trait = spawner_class.class_traits().get("profiles_file") if hasattr(spawner_class, "class_traits") else None
        path = str(trait.default()) if trait is not None else ""
    if not path:
        log.warning("revocation: no staging area known (no profiles file); set c.OwnerAccess.staging_dir")
        return ""
    try:
        return str(load_profiles_file(os.path.abspath(path)).offload.staging_dir)
    except Exception as exc:  # noqa: BLE001 - no profiles: no bundles to find; said in the log
        log.warning("revocation: no staging area known (%s); set c.OwnerAccess.staging_dir", exc)
        return ""


def spawner_class_of(config: Mapping | None):
    """The class ``c.JupyterHub.spawner_class`` names (a class, its dotted import path or its
    ``jupyterhub.spawners`` entry-point name), or None (unset, not importable: logged)."""
    section = config.get("JupyterHub") if isinstance(config, Mapping) else None
    value = section.get("spawner_class") if isinstance(section, Mapping) else None
    if isinstance(value, type):
        return value
    if not isinstance(value, str) or not value:
        return None
    try:
        if "." in value:
            return import_item(value)
        found = [ep for ep in entry_points(group="jupyterhub.spawners") if ep.name == value]
        return found[0].load() if found else None
    except Exception as exc:  # noqa: BLE001 - said; the generic section is read instead
        log.warning("c.JupyterHub.spawner_class %r does not import here: %s", value, exc)
        return None


def spawner_setting(config: Mapping | None, spawner_class: type | None, key: str) -> str:
    """*key* as the hub's *config* sets it for its spawners (pure): the most specific section of
    *spawner_class*'s bases that sets it, else ``XnatScopedSpawner``'s; "" when unset. Reads
    the config without adding sections to it."""
    names = [c.__name__ for c in getattr(spawner_class, "__mro__", ())] + [SERVICE_SECTION]
    for name in names:
        section = config.get(name) if isinstance(config, Mapping) else None
        if isinstance(section, Mapping) and section.get(key):
            return str(section[key])
    return ""


def service_account_config(config: Mapping | None, spawner_class: type | None = None) -> tuple[str, str]:
    """``(xnat_service_user, xnat_service_password_file)`` as the hub's *config* sets them for
    its spawners (pure, :func:`spawner_setting`); ``("", "")`` when unset."""
    return (spawner_setting(config, spawner_class, "xnat_service_user"),
            spawner_setting(config, spawner_class, "xnat_service_password_file"))


def read_service_password(path: str) -> str:
    """The service account's password from *path*: a private file of the hub's account
    (:func:`xnat_bridge.private.read_private_file`), one line; blocking."""
    what = f"c.{SERVICE_SECTION}.xnat_service_password_file"
    password = read_private_file(path, what=what, max_bytes=4096).decode("utf-8", "replace").strip()
    if not password:
        raise AuthenticationFailed(f"{what} {path} is empty; write the account's password into it")
    return password


async def revoke_effects(tornado_settings: Mapping, user: HubUser | None, target: str, project: str,
                         reason: str, stop: Callable[[str], Awaitable[None]], *, audit_log=None, ledger=None,
                         servers: list[ServerView] | None = None,
                         report: RevocationReport | None = None) -> RevocationReport:
    """Stop, cancel and wipe what *target* (*user* as the hub's REST API shows them, or None
    when the hub has no such user) still runs on *project*
    (:func:`hub_ext.revocation.apply_revocation`), with no time bound
    (:meth:`RevocationWatch.revoke` adds it). *servers*: the views of *user*'s servers
    (default: from *user*); *report*: filled as the effects happen."""
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
    spawner_class = tornado_settings.get("spawner_class") or spawner_class_of(config)
    return await apply_revocation(
        user=target, project=project, reason=reason, servers=servers, jobs=ledger_jobs_hit(rows, target, project),
        settings=settings, staging_root=staging_root(settings, config, spawner_class), stop=stop,
        audit=audit_log.record, notices=ledger, report=report, unix_user=unix_account_name(target, config))


class HubSource:
    """The hub's users as governance reads them: through the hub's REST API as the service
    ``xnat-hpc-governance`` (:mod:`hub_ext.hub_rest`). *client*: a
    :class:`~hub_ext.hub_rest.HubRestClient` (the service's process makes one from the token
    the hub gave it); default: the one ``c.XnatGovernance`` configures."""

    def __init__(self, tornado_settings: Mapping, client: hub_rest.HubRestClient | None = None):
        self.settings = tornado_settings
        self._client = client

    async def client(self) -> hub_rest.HubRestClient:
        if self._client is None:
            return await hub_rest.governance_client(self.settings)
        return self._client

    async def active_users(self) -> list[HubUser]:
        return await (await self.client()).active_users()

    async def user(self, name: str) -> HubUser | None:
        return await (await self.client()).user(name)

    async def stop(self, user: str, name: str) -> None:
        await (await self.client()).stop_server(user, name)

    async def shares(self, owner: str, name: str) -> list[hub_rest.Share]:
        return await (await self.client()).shares(owner, name)

    async def unshare(self, owner: str, name: str, guest: str) -> None:
        await (await self.client()).unshare(owner, name, guest)


class RevocationWatch:
    """The periodic re-check and the bounded runner of revocations (module docstring).
    *hub* reads users and stops servers (default: :class:`HubSource`); *permissions*,
    *stop* and *audit_log* replace XNAT, the hub's stop and ``HubAuditLog``, e.g. in tests."""

    #: seconds one user's XNAT question may take in a round (the client's own timeouts are
    #: 15 s per request, one retry)
    question_timeout = 45.0

    def __init__(self, tornado_settings: Mapping, *, permissions: Permissions | None = None,
                 stop: StopUser | None = None, audit_log=None, ledger=None, hub=None):
        self.settings = tornado_settings
        self.hub = hub if hub is not None else HubSource(tornado_settings)
        self.permissions = permissions or self._readable
        self.stop_user = stop or (lambda user, name: self.hub.stop(user.name, name))
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
        #: rounds done, and the last one's losses acted on (for the service's log and tests)
        self.rounds = 0

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
        is gone). Only the governance service's process runs it (:mod:`xnat_hpc_governance`)."""
        loop = asyncio.get_running_loop()
        if self.interval <= 0:
            log.info("revocation re-check off (c.OwnerAccess.recheck_interval = 0)")
            return
        if self.task is not None and not self.task.done() and self.task.get_loop() is loop:
            return
        self.task = loop.create_task(self._loop())
        log.info("revocation re-check every %.0f s", self.interval)

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception as exc:  # noqa: BLE001 - the watch must outlive one bad round; logged
                if isinstance(exc, XnatHpcError):
                    log.error("revocation re-check round failed: %s", exc.message)
                else:
                    log.exception("revocation re-check failed")

    # -- one revocation, bounded --------------------------------------------------------------
    async def revoke(self, user: HubUser | None, target: str, project: str, reason: str,
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

        async def stop_and_unshare(name: str) -> None:
            """A stopped server is shared with nobody: JupyterHub keeps a named server's shares
            across its restarts, and the next start may have another scope."""
            await stop(name)
            for share in await self.hub.shares(target, name):
                await self.hub.unshare(target, name, share.guest)
                await self.audit_log.record(
                    target, "unshare", "allowed", items=[project],
                    detail=f"server {name or '(default)'}: {share.guest}'s share ended with the server: {reason}",
                    extra={"server": name, "guest": share.guest, "by": "revocation"})

        async def work() -> RevocationReport:
            try:
                await revoke_effects(self.settings, user, target, project, reason, stop_and_unshare,
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
        """One round over every user with an active server (the hub's REST API); ``(user,
        project, report)`` per loss acted on. Each user on their own: an error or time-out is
        logged and the round goes on. The list itself failing (the hub not answering, the
        service's role lacking a scope) fails the round, naming why."""
        users = await self.hub.active_users()
        views = {}
        for user in users:
            try:
                views[user.name] = server_views(user)
            except Exception:  # noqa: BLE001 - one user's broken record must not end the round
                log.exception("re-check: cannot read %s's servers", user.name)
        live = {(name, s.name, s.started) for name, servers in views.items() for s in servers if s.active}
        self.handled = still_running(self.handled, live)
        done = []
        for user in users:
            if user.name not in views:
                continue
            try:
                done.extend(await self._check_user(user, views[user.name]))
                await self.check_shares(user, views[user.name])
            except asyncio.TimeoutError:
                log.warning("re-check of %s skipped this round: XNAT did not answer within %.0f s",
                            user.name, self.question_timeout)
            except XnatHpcError as exc:
                log.warning("re-check of %s skipped this round: %s", user.name, exc.message)
            except Exception:  # noqa: BLE001 - isolated per user; logged with its traceback
                log.exception("re-check of %s failed; the other users are checked", user.name)
        self.rounds += 1
        log.info("re-check round %d: %d users with running servers, %d losses acted on", self.rounds,
                 len(users), len(done))
        return done

    async def check_shares(self, user: HubUser, views: list[ServerView]) -> list[tuple[str, str, list[str]]]:
        """End the shares of *user*'s running servers whose guest no longer reads, in XNAT,
        every project of the server's scope (:mod:`hub_ext.sharing`), or is no hub user any
        more; each audited (``unshare``). ``(server, guest, projects missing)`` per share
        ended. A guest XNAT could not answer for keeps the share until the next round."""
        ended = []
        for server in views:
            if not server.active:
                continue
            for share in await self.hub.shares(user.name, server.name):
                guest = await self.hub.user(share.guest)
                if guest is None:
                    missing, why = ["(none)"], f"{share.guest} is no hub user any more"
                else:
                    readable = await asyncio.wait_for(self.permissions(guest), self.question_timeout)
                    if readable is None:
                        continue
                    missing = sorted(server.projects - readable) if server.projects else ["(no scope)"]
                    why = f"{share.guest} may no longer read {', '.join(missing)} in XNAT"
                if not missing:
                    continue
                await self.hub.unshare(user.name, server.name, share.guest)
                shown = server.name or "(default)"
                await self.audit_log.record(
                    user.name, "unshare", "allowed", items=sorted(server.projects),
                    detail=f"server {shown}: {share.guest}'s share ended by the hub's re-check: {why}",
                    extra={"server": server.name, "guest": share.guest, "by": "re-check"})
                log.info("re-check: ended %s's share of %s/%s: %s", share.guest, user.name, shown, why)
                ended.append((server.name, share.guest, missing))
        return ended

    async def _check_user(self, user: HubUser, views: list[ServerView]) -> list[tuple[str, str, RevocationReport]]:
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
        url = getattr(authenticator, "xnat_url", "")
        if not url and isinstance(self.config, Mapping):
            section = self.config.get("XnatAuthenticator")
            url = section.get("xnat_url", "") if isinstance(section, Mapping) else ""
        return str(url or os.environ.get("XNAT_HOST", ""))

    async def _readable(self, user: HubUser) -> set[str] | None:
        """The projects *user* may read, asked of XNAT with their own token (their
        ``auth_state``, read now through the hub's REST API: the list of users does not carry
        it), else with the hub's service account; None when neither can tell (logged)."""
        state = user.auth_state
        if state is None:
            fresh = await self.hub.user(user.name)
            state = (fresh.auth_state if fresh is not None else None) or {}
        token = AliasToken.from_state(state.get("xnat_token"))
        login = str(state.get("xnat_user") or _recorded_login(user) or user.name)
        url = self._xnat_url()
        if not url:
            log.warning("re-check of %s skipped: XNAT's address is unknown (c.XnatAuthenticator.xnat_url, "
                        "or XNAT_HOST in the service's environment)", user.name)
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
        spawner_class = self.settings.get("spawner_class") or spawner_class_of(self.config)
        account, password_file = service_account_config(self.config, spawner_class)
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


def _recorded_login(user: HubUser) -> str:
    """The XNAT login a server of *user* was started for (its :class:`SpawnRecord`): a user XNAT's
    plugin started, who never logged in to the hub, under a derived name (:mod:`hub_ext.names`)."""
    for name in user.servers:
        record = record_in(user, name)
        if record is not None and record.login:
            return record.login
    return ""
