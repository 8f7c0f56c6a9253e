"""Revocation on the running hub: the effects for one user and project, and the periodic
re-check that finds revocations done in XNAT's own UI.

:func:`revoke_effects` gathers what :func:`hub_ext.revocation.apply_revocation` needs
from the hub (the user's servers and their scopes, the ``submit`` events of the hub's
audit trail, the staging area) and runs it; the access page calls it after XNAT removed
a user, the watch when a running server's scope holds a project XNAT no longer lets its
user read.

:class:`RevocationWatch` (one per hub process) asks XNAT every
``c.OwnerAccess.recheck_interval`` seconds, with each user's own alias token from
``auth_state``, which projects that user may read, and applies the same effects to
every active server whose scope holds a project that is gone. It is started
(:func:`ensure_watch`) by the first of: a server start, an audit event from a running
server (they post on every data access, so also after a hub restart), the owner page or
the access page; 0 turns it off. A user whose token XNAT no longer accepts,
or an XNAT that does not answer, is skipped and logged: nothing is stopped on a guess.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import XnatHpcError
from xnat_bridge.permissions import fetch_permissions

from .audit_log import HubAuditLog
from .revocation import OwnerAccess, RevocationReport, ServerView, apply_revocation, scope_projects
from .xnat_api import AliasToken

log = logging.getLogger(__name__)


def server_views(user) -> list[ServerView]:
    """The hub's servers of *user* (a JupyterHub ``User``): scope from ``user_options`` (kept
    in the hub's database) and, while running, from the start's plan."""
    views = []
    for name in list(getattr(user, "orm_spawners", {}) or {}):
        spawner = user.spawners[name]
        projects = scope_projects(getattr(spawner, "user_options", None))
        plan = getattr(spawner, "xnat_plan", None) or getattr(getattr(spawner, "child", None), "xnat_plan", None)
        projects |= set(getattr(plan, "projects", ()) or ())
        views.append(ServerView(name, frozenset(projects), bool(spawner.active), spawner.pending))
    return views


def lost_projects(servers: Iterable[ServerView], readable: Iterable[str]) -> set[str]:
    """Projects in the scope of an active server that the user may no longer read (pure)."""
    readable = set(readable)
    return {p for s in servers if s.active for p in s.projects if p not in readable}


def staging_root(settings: OwnerAccess, user) -> str:
    """``c.OwnerAccess.staging_dir``, else the staging area of the profiles file *user*'s spawner reads."""
    if settings.staging_dir:
        return settings.staging_dir
    try:
        return str(user.spawner.xnat_profiles().offload.staging_dir) if user is not None else ""
    except Exception as exc:  # noqa: BLE001 - no profiles: no bundles to find; said in the log
        log.warning("revocation: no staging area known (%s); set c.OwnerAccess.staging_dir", exc)
        return ""


async def revoke_effects(tornado_settings: Mapping, user, target: str, project: str, reason: str,
                         stop: Callable[[str], Awaitable[None]]) -> RevocationReport:
    """Stop, cancel and wipe what *target* (``User`` *user*, or None when the hub has never
    seen them) still runs on *project* (:func:`hub_ext.revocation.apply_revocation`)."""
    config = tornado_settings.get("config")
    settings = OwnerAccess(config=config)
    audit_log = HubAuditLog(config=config)
    events = await asyncio.to_thread(audit_log.query, user=target, actions=["submit"], limit=100000)
    events.reverse()  # oldest first
    return await apply_revocation(
        user=target, project=project, reason=reason,
        servers=server_views(user) if user is not None else [], events=events, settings=settings,
        staging_root=staging_root(settings, user), stop=stop, audit=audit_log.record)


async def stop_server(tornado_settings: Mapping, user, name: str) -> None:
    """Stop *user*'s server *name* outside a request, as JupyterHub's own stop does: off the
    proxy, then ``User.stop`` (spawner, database, hub token)."""
    spawner = user.spawners[name]
    if spawner.pending:
        raise RuntimeError(f"server {name or '(default)'} is {spawner.pending}")
    spawner._stop_pending = True
    try:
        await tornado_settings["proxy"].delete_user(user, name)
        await user.stop(name)
    finally:
        spawner._stop_pending = False


class RevocationWatch:
    """The periodic re-check (module docstring). One per hub process: :func:`ensure_watch`."""

    def __init__(self, tornado_settings: Mapping):
        self.settings = tornado_settings
        self.task: asyncio.Task | None = None
        #: (user, server, project) already handled: a server left running ("narrow") is not
        #: handled again every round
        self.handled: set[tuple[str, str, str]] = set()

    @property
    def interval(self) -> float:
        return float(OwnerAccess(config=self.settings.get("config")).recheck_interval)

    def start(self) -> None:
        if self.interval > 0 and self.task is None:
            self.task = asyncio.ensure_future(self._loop())
            log.info("revocation re-check every %.0f s", self.interval)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check_once()
            except Exception:  # noqa: BLE001 - the watch must outlive one bad round; logged
                log.exception("revocation re-check failed")

    async def check_once(self) -> list[tuple[str, str, RevocationReport]]:
        """One round over every user with an active server; ``(user, project, report)`` per loss."""
        done = []
        for user in list(self.settings.get("users", {}).values()):
            servers = [s for s in server_views(user) if s.active and s.projects]
            if not servers:
                continue
            readable = await self._readable(user)
            if readable is None:
                continue
            for project in sorted(lost_projects(servers, readable)):
                keys = {(user.name, s.name, project) for s in servers if project in s.projects}
                if keys <= self.handled:
                    continue
                reason = f"access to {project} no longer granted in XNAT (found by the hub's re-check)"
                audit_log = HubAuditLog(config=self.settings.get("config"))
                await audit_log.record(user.name, "revoke", "allowed", items=[project], detail=reason)

                async def stop(name: str, user=user) -> None:
                    await stop_server(self.settings, user, name)

                report = await revoke_effects(self.settings, user, user.name, project, reason, stop)
                # a server that was starting or stopping is looked at again next round
                self.handled |= {(user.name, name, project) for name in report.stopped + report.left_running}
                log.info("re-check: %s lost %s: %s", user.name, project, report.summary())
                done.append((user.name, project, report))
        return done

    async def _readable(self, user) -> set[str] | None:
        state = await user.get_auth_state() or {}
        token = AliasToken.from_state(state.get("xnat_token"))
        authenticator = self.settings.get("authenticator")
        url = getattr(authenticator, "xnat_url", "") or os.environ.get("XNAT_HOST", "")
        if token is None or not url:
            return None

        def ask() -> set[str]:
            with XnatClient(url, token.alias, token.secret, retries=1, timeout=15) as client:
                return set(fetch_permissions(client, user.name).roles)

        try:
            return await asyncio.to_thread(ask)
        except XnatHpcError as exc:
            log.warning("re-check of %s skipped: %s", user.name, exc.message)
            return None


def ensure_watch(tornado_settings: dict) -> RevocationWatch:
    """The hub's one :class:`RevocationWatch`, started on first use (kept in the settings)."""
    watch = tornado_settings.get("xnat_hpc_revocation_watch")
    if watch is None:
        watch = tornado_settings["xnat_hpc_revocation_watch"] = RevocationWatch(tornado_settings)
        watch.start()
    return watch
