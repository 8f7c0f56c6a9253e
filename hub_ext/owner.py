"""The project owners' page: everything the hub's trail says about my projects.

``GET /hub/xnat-hpc/owner`` (logged-in users) shows, for each project the visitor **owns
in XNAT right now** (asked of XNAT with the visitor's own alias token, never taken from
the hub; site administrators see every project):

* who has access and with which role (XNAT's ``GET /data/projects/{P}/users``, as the
  visitor), with links to grant and revoke (:mod:`hub_ext.owner_access`) and to the
  results review (:mod:`hub_ext.review`) where the hub installs them;
* the servers running now whose scope includes the project (the trail's latest allowed
  ``spawn`` of each running server, joined with the servers the hub's REST API lists as
  active, asked as the governance service: :mod:`hub_ext.hub_rest`; when that service is not
  configured the page says what to add);
* offload jobs of servers whose scope held the project, from the hub's **job ledger** (who,
  which server, when, dataset, manifest and script sha256, Slurm job id, state), with what
  the server reported on the trail (files, bytes, results retrieved), and downloads;
* the trail's events, filtered by the query string (``project``, ``user``, ``action``,
  ``since``, ``until``: UTC dates or date-times; ``page``, ``per_page``), exported with
  ``format=csv`` or ``format=json`` (the same filters, up to :data:`MAX_EXPORT` events);
* whether the trail verifies (:meth:`HubAuditLog.status`, refreshed in the background).

An event about several projects shows each owner only their part
(:func:`hub_ext.owner_render.visible_part`). Rendering is pure
(:mod:`hub_ext.owner_render`, through the templates of :mod:`hub_ext.pages`); this module
gathers the data.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
from collections.abc import Callable

from tornado import web

from xnat_bridge.errors import InvalidRequest, XnatHpcError
from xnat_bridge.extras import needs_extra
from xnat_bridge.permissions import fetch_permissions

from . import hub_rest
from . import owner_render as R
from .audit_log import HubAuditLog
from .errors import map_errors
from .pages import ensure_pages
from .review_store import ReviewStore
from .routes import installed
from .owner_render import WITHHELD, owned_projects, visible_part  # noqa: F401
from .visitor import visitor_client, visitor_login, visitor_token

with needs_extra("hub", "the owner page (hub_ext.owner)"):
    from jupyterhub.handlers import BaseHandler

ROUTE = r"/xnat-hpc/owner"
MAX_EXPORT = 100_000
JOB_ACTIONS = ("key_release", "result_retrieve", "cancel", "job_state")

#: hooks that add owner actions to a project's section: ``hook(handler, project) -> html``
#: (grant/revoke, results review); each returns trusted HTML or "".
project_action_hooks: list[Callable[[BaseHandler, str], str]] = []


def hub_audit_log(settings: dict, log=None) -> HubAuditLog:
    """The hub's audit trail as the hub's configuration (Tornado ``settings["config"]``) sets it."""
    audit_log = HubAuditLog(config=settings.get("config"))
    if log is not None:
        audit_log.log = log
    return audit_log


def project_actions_html(handler: BaseHandler, project: str) -> str:
    """The owner actions of *project*'s section: links to the hub's grant/revoke and review
    pages when the configuration installs them (``xnat-hpc-owner-actions.html``), then every
    :data:`project_action_hooks` entry."""
    from urllib.parse import quote

    base = handler.hub.base_url.rstrip("/")
    cfg = handler.settings.get("config")
    access = (f"{base}/xnat-hpc/owner/access?project={quote(project)}"
              if installed(cfg, "/xnat-hpc/owner/access") else "")
    review = f"{base}/xnat-hpc/review" if installed(cfg, "/xnat-hpc/review") else ""
    links = ensure_pages(handler.settings, handler.log).render(
        "xnat-hpc-owner-actions.html", project=project, access_url=access, review_url=review)
    parts = [links] if links.strip() else []
    for hook in project_action_hooks:
        try:
            parts.append(hook(handler, project) or "")
        except Exception:  # noqa: BLE001 - a hook's failure must not take the page down
            handler.log.exception("owner page hook %r failed for %s", hook, project)
    return "\n".join(parts)


async def active_servers(settings: dict, log=None) -> tuple[list[tuple[str, str, str]], str]:
    """``([(user, server name, started)], problem)``: every active server as the hub's REST API
    lists it (:func:`hub_ext.hub_rest.running_servers`, as the governance service); on failure
    no server and a sentence for the page saying why and what to fix (logged)."""
    try:
        servers = await hub_rest.running_servers(settings)
    except XnatHpcError as exc:
        (log or logging.getLogger(__name__)).error("owner page: running servers not listed: %s", exc.message)
        return [], f"Running servers are not shown: {exc.message}"
    return [(s.user, s.name, s.started) for s in servers], ""


def jobs_from_ledger(ledger: list[dict], reported: list[dict], project: str) -> list[dict]:
    """The jobs table of *project* (pure): one row per **ledger** job whose server's scope held
    *project* (who, which server, digests, Slurm id, state: what the hub recorded), with what
    the job's server reported on the trail (files, bytes, resources, results retrieved) added
    from *reported* (:func:`hub_ext.owner_render.jobs_from_events` rows of the same user and
    job). Only *project* is named of the job's projects: the page shows an owner their part."""
    by_job = {(r["user"], r["job"]): r for r in reported}
    rows = []
    for job in ledger:
        ev = by_job.get((job["user"], job["job"]), {})
        state = job["state"]
        if state in ("submitted", "running") and ev.get("state") in ("done", "failed", "cancelled"):
            state = ev["state"]  # the server told the trail before it told the ledger
        rows.append({"job": job["job"], "user": job["user"], "time": job["created"], "dataset": job["dataset"],
                     "items": [project], "files": ev.get("files", 0), "bytes": ev.get("bytes", 0),
                     "manifest": job["manifest_sha256"] or ev.get("manifest", ""), "script": job["script_sha256"],
                     "slurm_job_id": job["slurm_job_id"] or ev.get("slurm_job_id", ""),
                     "resources": ev.get("resources", {}), "state": state, "results": ev.get("results", ""),
                     "server": job["server"] or "(default)", "review": project in job["review"]})
    return rows


def collect(audit_log: HubAuditLog, owned: set[str], scope: set[str], f: R.Filters, query: dict,
            active: list[tuple[str, str, str]],
            members: Callable[[str], tuple[list[dict] | None, str]],
            ledger: Callable[[str], list[dict]] = lambda p: []) -> tuple[list[dict], int, list[R.ProjectView]]:
    """What the page shows (blocking: the store and XNAT; run it in a thread): the filtered
    events of this page, their count, and a :class:`~hub_ext.owner_render.ProjectView` per
    project of *scope* (*members(project)* asks XNAT who has access, *ledger(project)* gives
    the ledger's jobs of servers whose scope held it)."""
    events = audit_log.query(**query, limit=f.per_page, offset=(f.page - 1) * f.per_page)
    total = audit_log.count(**query)
    views = []
    for p in sorted(scope):
        people, problem = members(p)
        jobs = ledger(p)
        submitters = {j["user"] for j in jobs}
        first = min((j["created"] for j in jobs), default="") or None
        reported = []
        if submitters:
            submits = audit_log.query(user=submitters, actions={"submit"}, since=first, limit=1000)
            follow = audit_log.query(user=submitters, actions=set(JOB_ACTIONS), since=first, limit=1000)
            reported = R.jobs_from_events(submits, follow)
        running = {u for u, _, _ in active}
        spawns = audit_log.query(projects={p}, user=running, actions={"spawn"}, limit=1000) if running else []
        downloads = [visible_part(e, owned) for e in audit_log.query(projects={p}, actions={"download"}, limit=50)]
        views.append(R.ProjectView(p, people, problem, R.active_servers(spawns, active, p),
                                   jobs_from_ledger(jobs, reported, p), downloads))
    return [visible_part(e, owned) for e in events], total, views


class OwnerAuditHandler(BaseHandler):
    """Only XNAT decides which projects a visitor owns."""

    @web.authenticated
    @map_errors
    async def get(self):
        user = self.current_user
        token = await visitor_token(self, "see your projects' audit")
        audit_log = hub_audit_log(self.settings, self.log)
        fmt = self.get_argument("format", "")
        args = {k: self.get_argument(k, "") for k in ("project", "user", "action", "since", "until",
                                                       "page", "per_page")}

        def client():
            return visitor_client(self, token)

        with client() as c:
            perms = await asyncio.to_thread(fetch_permissions, c, await visitor_login(self))
        owned = owned_projects(perms.roles, perms.site_admin)
        try:
            f = R.parse_filters(args, owned)
        except ValueError as e:
            raise InvalidRequest(f"{e}; fix the filter in the address") from None
        scope = {f.project} if f.project else owned
        query = dict(projects=scope, user=f.user or None, actions={f.action} if f.action else None,
                     since=f.since or None, until=f.until or None)

        if fmt in ("csv", "json"):
            events = await asyncio.to_thread(audit_log.query, **query, limit=MAX_EXPORT)
            events = [visible_part(e, owned) for e in events]
            stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
            if fmt == "csv":
                self.set_header("Content-Type", "text/csv; charset=utf-8")
                self.set_header("Content-Disposition", f'attachment; filename="xnat-hpc-audit-{stamp}.csv"')
                self.finish(R.to_csv(events))
            else:
                ok, sentence = await asyncio.to_thread(audit_log.verify)  # an export states the chain now
                checked = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
                self.set_header("Content-Type", "application/json")
                self.set_header("Content-Disposition", f'inline; filename="xnat-hpc-audit-{stamp}.json"')
                self.finish(json.dumps({"owned": sorted(owned), "chain": sentence, "chain_ok": ok,
                                        "chain_checked": checked, "filters": f.query_args(),
                                        "events": events}))
            return

        def members(project: str) -> tuple[list[dict] | None, str]:
            from .owner_access import project_members

            try:
                with client() as c:
                    return project_members(c, project), ""
            except XnatHpcError as e:
                return None, e.message

        store = ReviewStore(config=self.settings.get("config"), log=self.log)
        active, problem = await active_servers(self.settings, self.log)

        def ledger(project: str) -> list[dict]:
            return store.ledger_jobs(projects={project}, limit=200)

        events, total, views = await asyncio.to_thread(collect, audit_log, owned, scope, f, query, active,
                                                       members, ledger)
        for v in views:
            v.actions_html = project_actions_html(self, v.project)
        ok, sentence, checked = audit_log.status()
        users = sorted({e.get("user", "") for e in events} - {""})
        page = R.PageView(user.name, sorted(owned), ok, sentence, checked, f, events, total, views, users,
                          self.hub.base_url.rstrip("/") + "/xnat-hpc/owner", error=problem)
        self.finish(R.render_page(page, pages=ensure_pages(self.settings, self.log)))
