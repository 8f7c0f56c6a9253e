"""The project owners' pages, served by the governance service under its prefix
(``/services/xnat-hpc-governance/`` by default), where owners log in through the hub's OAuth
(:class:`~jupyterhub.services.auth.HubOAuth`)::

    GET  owner                        the audit of my projects (``?format=csv|json``; filters)
    GET  owner/access                 who has access; POST: grant or revoke, through XNAT
    GET  review                       results held for review
    POST review/projects              mark / unmark a project for review
    POST review/jobs/{user}/{job}     approve or reject a held job
    GET  oauth_callback               the end of the hub's OAuth flow

The hub's old addresses (``/hub/xnat-hpc/owner``, ``…/owner/access``, ``/hub/xnat-hpc/review``)
redirect here with their query (:mod:`hub_ext.handlers`).

**Who is visiting** is the hub's answer for the session's OAuth token, or, for a GET, an
``Authorization: token …`` header (scripts: ``?format=json``), asked at every request
(:class:`FreshHubOAuth`): a logout on the hub ends the session here at once. The token must
hold ``access:services!service=xnat-hpc-governance`` (every hub user's role does:
``register_governance``). A change (a POST) takes the browser's session only, with the form's
``_xsrf`` (JupyterHub's scheme for services: without it the POST is refused with 403 before a
handler runs); a POST with a token is refused.

**What they may do** is XNAT's answer, asked with the visitor's own alias token, which the
service reads from the visitor's ``auth_state`` through the hub's REST API
(``admin:auth_state``), each request: the pages act only on projects the visitor owns in XNAT
now. The data is shaped by the pure functions of :mod:`.owner`, :mod:`.owner_render`,
:mod:`.owner_access` and :mod:`.review_page`, laid out by the templates of :mod:`.pages`
(autoescaped; a site overrides them).

Every grant, revocation, review setting and decision is recorded on the trail by the service,
the one owner of the audit and review stores.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import re
from urllib.parse import quote

from tornado import web

from hub_ext.auth import XnatAuthenticator
from hub_ext.errors import UNEXPECTED, status_for
from hub_ext.review_store import decidable
from hub_ext.revocation import RevocationReport
from hub_ext.xnat_api import AliasToken
from xnat_bridge.client import XnatClient
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from xnat_bridge.extras import needs_extra
from xnat_bridge.permissions import Permissions, fetch_permissions
from xnat_bridge.spawn_record import SpawnRecord

from . import owner_render as R
from .owner import MAX_EXPORT, collect
from .owner_access import AccessChange, access_section_html, change_member, parse_change, project_members
from .owner_access import render_page as access_page
from .owner_render import owned_projects, visible_part
from .pages import ensure_pages
from .review_page import render_page as review_page

with needs_extra("hub", "the owners' pages (xnat_hpc_governance.owner_pages)"):
    from jupyterhub.services.auth import HubOAuth, HubOAuthCallbackHandler, HubOAuthenticated, UserNotAllowed

log = logging.getLogger(__name__)

#: the pages, relative to the service's prefix
OWNER = "owner"
OWNER_SHARES = "owner/shares"
ACCESS = "owner/access"
REVIEW = "review"
REVIEW_PROJECTS = "review/projects"
REVIEW_DECIDE = r"review/jobs/([^/]{1,200})/(j[0-9a-f]{12})"
OAUTH_CALLBACK = "oauth_callback"
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")

NOTICES = {"marked": "The project's results now need review.",
           "unmarked": "The project's results no longer need review.",
           "approve": "Approved.", "reject": "Rejected: the results were deleted."}


class FreshHubOAuth(HubOAuth):
    """JupyterHub's :class:`~jupyterhub.services.auth.HubOAuth` asking the hub about a token at
    every request, never from its cache (whose ``cache_max_age = 0`` means "for ever"): a
    logout on the hub, which deletes the session's tokens, ends the session here at once."""

    def user_for_token(self, token, use_cache=True, session_id="", *, sync=True):
        return super().user_for_token(token, use_cache=False, session_id=session_id, sync=sync)


class OwnerPage(HubOAuthenticated, web.RequestHandler):
    """What every owners' page shares: the visitor as the hub identifies them (asked
    asynchronously in :meth:`prepare`, never from a cache), their XNAT token and login, a client
    of XNAT as them, the service's stores, and errors as a page (or JSON for ``format=json``)."""

    @property
    def hub_auth(self):
        return self.settings["hub_oauth"]

    @hub_auth.setter
    def hub_auth(self, _value):  # the mixin's setter: the service's one HubOAuth is used
        pass

    def _refuse_a_token_change(self) -> None:
        if self.request.method not in ("GET", "HEAD") and "Authorization" in self.request.headers:
            # a change is an owner's act in a browser (session cookie + the form's _xsrf); a token,
            # which a script or another page could carry, reads (the exports) and changes nothing
            raise web.HTTPError(403, "the owners' forms take the session of a browser logged in to the hub "
                                     "(with the form's _xsrf), not an API token")

    def check_xsrf_cookie(self):  # tornado's first check of a POST, before prepare
        self._refuse_a_token_change()
        return super().check_xsrf_cookie()

    async def prepare(self) -> None:
        self._refuse_a_token_change()
        try:
            model = await self.hub_auth.get_user(self, sync=False)
            self._hub_auth_user_cache = self.check_hub_user(model) if model else None
        except UserNotAllowed as exc:
            raise web.HTTPError(403, f"{exc.model.get('kind', 'user')} {exc.model.get('name', '')} may not use "
                                     "the owners' pages: the token lacks access to the governance service")

    def get_current_user(self):
        return getattr(self, "_hub_auth_user_cache", None)

    # -- the visitor ----------------------------------------------------------------------------
    @property
    def visitor(self) -> str:
        return str(self.current_user["name"])

    @property
    def prefix(self) -> str:
        return self.settings["service_prefix"]

    @property
    def hub(self):
        """The hub's REST API as the service (:class:`hub_ext.hub_rest.HubRestClient`)."""
        return self.settings["hub"]

    async def _auth_state(self) -> dict:
        user = await self.hub.user(self.visitor, auth_state=True)
        return dict(user.auth_state or {}) if user is not None else {}

    async def xnat_token(self, why: str) -> AliasToken:
        """The visitor's alias token from their ``auth_state``, or :class:`PermissionDenied`
        "log in with your XNAT account to *why*" (e.g. a user XNAT started a server for who
        never logged in)."""
        token = AliasToken.from_state((await self._auth_state()).get("xnat_token"))
        if token is None:
            raise PermissionDenied(f"log in with your XNAT account to {why}")
        return token

    async def xnat_login(self) -> str:
        """The visitor's XNAT login (``auth_state``: their hub name may be mapped from it,
        :mod:`hub_ext.names`), else their hub name."""
        return str((await self._auth_state()).get("xnat_user") or self.visitor)

    def xnat_client(self, token: AliasToken) -> XnatClient:
        """A client of the hub's XNAT as the visitor (short timeouts: a page waits on it)."""
        return XnatClient(self.settings["xnat_url"], token.alias, token.secret, retries=1, timeout=15)

    async def permissions(self, why: str) -> Permissions:
        """What XNAT says the visitor may do now (asked in a thread, with their own token)."""
        token = await self.xnat_token(why)
        login = await self.xnat_login()

        def ask() -> Permissions:
            with self.xnat_client(token) as client:
                return fetch_permissions(client, login)

        return await asyncio.to_thread(ask)

    @property
    def pages(self):
        return ensure_pages(self.settings, log)

    @property
    def xsrf(self) -> str:
        token = self.xsrf_token
        return token.decode("ascii") if isinstance(token, bytes) else str(token)

    # -- errors: one mapping ----------------------------------------------------------------------
    def fail(self, exc: BaseException) -> web.HTTPError:
        """What a page answers for *exc* (:func:`hub_ext.errors.status_for`): a client error
        keeps its status and message, XNAT or the hub not answering is 503, anything else 500
        with a generic message (logged)."""
        if isinstance(exc, web.HTTPError):
            return exc
        if isinstance(exc, XnatHpcError):
            return web.HTTPError(status_for(exc), exc.message)
        log.error("unexpected error on an owners' page: %r", exc, exc_info=exc)
        return web.HTTPError(500, UNEXPECTED)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, web.HTTPError):
            if value.status_code >= 500:
                log.warning("%s %s: %s %s", self.request.method, self.request.path, value.status_code,
                            value.log_message)
            return
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        # an HTTPError's message is meant for the visitor (fail() made it); anything else is a bug
        message = (exc.log_message or self._reason) if isinstance(exc, web.HTTPError) else UNEXPECTED
        if self.get_argument("format", "") in ("json", "csv") or "json" in self.request.headers.get("Accept", ""):
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": status_code, "message": message}))
            return
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.pages.render("xnat-hpc-error.html", status=status_code, message=message,
                                      home_url=self.prefix + OWNER))


def mapped(method):
    """Every exception of a page's handler method leaves it through :meth:`OwnerPage.fail`."""
    import functools

    @functools.wraps(method)
    async def wrapper(self: OwnerPage, *args):
        try:
            return await method(self, *args)
        except web.HTTPError:
            raise
        except Exception as exc:  # noqa: BLE001 - see OwnerPage.fail
            raise self.fail(exc) from None

    return wrapper


# -- the audit page ---------------------------------------------------------------------------------

class OwnerAuditPage(OwnerPage):
    """``GET owner``: what the trail and the job ledger say about the visitor's projects
    (those they own in XNAT now; a site administrator sees every project)."""

    @web.authenticated
    @mapped
    async def get(self):
        token = await self.xnat_token("see your projects' audit")
        audit_log = self.settings["audit_log"]
        fmt = self.get_argument("format", "")
        args = {k: self.get_argument(k, "") for k in ("project", "user", "action", "since", "until",
                                                       "page", "per_page")}
        login = await self.xnat_login()

        def ask_perms():
            with self.xnat_client(token) as c:
                return fetch_permissions(c, login)

        perms = await asyncio.to_thread(ask_perms)
        owned = owned_projects(perms.roles, perms.site_admin)
        try:
            f = R.parse_filters(args, owned)
        except ValueError as e:
            raise InvalidRequest(f"{e}; fix the filter in the address") from None
        scope = {f.project} if f.project else owned
        query = dict(projects=scope, user=f.user or None, actions={f.action} if f.action else None,
                     since=f.since or None, until=f.until or None)
        if fmt in ("csv", "json"):
            await self.export(fmt, audit_log, query, owned, f)
            return

        def members(project: str) -> tuple[list[dict] | None, str]:
            try:
                with self.xnat_client(token) as c:
                    return project_members(c, project), ""
            except XnatHpcError as e:
                return None, e.message

        store = self.settings["review_store"]
        try:
            active = [(s.user, s.name, s.started) for s in await self.hub.running_servers()]
            problem = ""
        except XnatHpcError as exc:
            log.error("owner page: running servers not listed: %s", exc.message)
            active, problem = [], f"Running servers are not shown: {exc.message}"

        def ledger(project: str) -> list[dict]:
            return store.ledger_jobs(projects={project}, limit=200)

        def published(project: str) -> list[dict]:
            return store.publications_for({project}, limit=100)

        try:
            shared = await self.shares_of(scope)
        except XnatHpcError as exc:
            log.error("owner page: shares not listed: %s", exc.message)
            shared, problem = {}, (problem + " " if problem else "") + f"Shared servers are not shown: {exc.message}"
        events, total, views = await asyncio.to_thread(collect, audit_log, owned, scope, f, query, active,
                                                       members, ledger, published)
        for v in views:
            v.shares = shared.get(v.project, [])
            v.share_form = {"url": self.prefix + OWNER_SHARES, "xsrf": self.xsrf} if v.project in owned else None
            v.actions_html = self.pages.render(
                "xnat-hpc-owner-actions.html", project=v.project,
                access_url=f"{self.prefix}{ACCESS}?project={quote(v.project, safe='')}",
                review_url=self.prefix + REVIEW)
        ok, sentence, checked = audit_log.status()
        users = sorted({e.get("user", "") for e in events} - {""})
        page = R.PageView(self.visitor, sorted(owned), ok, sentence, checked, f, events, total, views, users,
                          self.prefix + OWNER, error=problem)
        self.finish(R.render_page(page, pages=self.pages))

    async def shares_of(self, projects: set[str]) -> dict[str, list[dict]]:
        """The shares of running servers whose scope (the hub's record) holds one of *projects*:
        project → ``[{"owner", "server", "guest", "since"}]``."""
        out: dict[str, list[dict]] = {}
        for user in await self.hub.active_users():
            for name, server in user.servers.items():
                record = SpawnRecord.from_state(server.state)
                hit = sorted(set(record.projects) & projects) if record is not None else []
                if not hit:
                    continue
                for share in await self.hub.shares(user.name, name):
                    for project in hit:
                        out.setdefault(project, []).append({"owner": user.name, "server": name or "(default)",
                                                            "name": name, "guest": share.guest,
                                                            "since": share.created})
        return out

    async def export(self, fmt: str, audit_log, query: dict, owned: set[str], f: R.Filters) -> None:
        """The filtered events as CSV or JSON (up to :data:`xnat_hpc_governance.owner.MAX_EXPORT`); the JSON
        states whether the chain verifies now."""
        events = await asyncio.to_thread(audit_log.query, **query, limit=MAX_EXPORT)
        events = [visible_part(e, owned) for e in events]
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.set_header("Cache-Control", "no-store")
        if fmt == "csv":
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.set_header("Content-Disposition", f'attachment; filename="xnat-hpc-audit-{stamp}.csv"')
            self.finish(R.to_csv(events))
            return
        ok, sentence = await asyncio.to_thread(audit_log.verify)
        checked = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Disposition", f'inline; filename="xnat-hpc-audit-{stamp}.json"')
        self.finish(json.dumps({"owned": sorted(owned), "chain": sentence, "chain_ok": ok,
                                "chain_checked": checked, "filters": f.query_args(), "events": events}))


class OwnerShareForm(OwnerPage):
    """``POST owner/shares``: an owner of a project ends a share of a server whose scope holds it
    (``owner``, ``server``, ``guest``, ``project``)."""

    @web.authenticated
    @mapped
    async def post(self):
        form = {k: self.get_body_argument(k, "") for k in ("owner", "server", "guest", "project")}
        project = form["project"]
        if not _PROJECT_RE.match(project) or not form["owner"] or not form["guest"]:
            raise InvalidRequest("expected owner, server, guest and project (an XNAT project id)")
        if project not in (await self.permissions("end shares of your projects' servers")).owned():
            raise PermissionDenied(f"only an owner of {project} (in XNAT) ends shares of servers on it")
        user = await self.hub.user(form["owner"], auth_state=False)
        server = user.servers.get(form["server"]) if user is not None else None
        record = SpawnRecord.from_state(server.state) if server is not None else None
        if record is None or project not in record.projects:
            raise NotFound(f"no running server {form['owner']}/{form['server'] or '(default)'} on {project}")
        await self.hub.unshare(form["owner"], form["server"], form["guest"])
        await self.settings["audit_log"].record(
            form["owner"], "unshare", "allowed", items=sorted(record.projects),
            detail=f"server {form['server'] or '(default)'}: {form['guest']}'s share ended by {self.visitor}, an owner "
                   f"of {project}", extra={"server": form["server"], "guest": form["guest"], "by": self.visitor})
        self.redirect(f"{self.prefix}{OWNER}?project={quote(project, safe='')}")


# -- the access page --------------------------------------------------------------------------------

class OwnerAccessPage(OwnerPage):
    """``owner/access``: grant and revoke, as the owner, through XNAT's project-users API
    (:mod:`xnat_hpc_governance.owner_access`); a revocation then takes effect through the service's
    :class:`~xnat_hpc_governance.revocation_watch.RevocationWatch` (bounded by ``c.OwnerAccess.revoke_timeout``)."""

    async def _page(self, token: AliasToken, *, message: str = "", error: bool = False) -> str:
        login = await self.xnat_login()
        only = self.get_query_argument("project", "") or self.get_body_argument("project", "")

        def ask() -> tuple[list[str], dict[str, list[dict]]]:
            with self.xnat_client(token) as client:
                perms = fetch_permissions(client, login)
                owned = sorted(perms.roles) if perms.site_admin else sorted(
                    p for p, r in perms.roles.items() if r == "Owner")
                shown = [p for p in owned if not only or p == only]
                return owned, {p: project_members(client, p) for p in shown}

        owned, members = await asyncio.to_thread(ask)
        url = self.prefix + ACCESS
        sections = [access_section_html(p, rows, xsrf=self.xsrf, action_url=url, pages=self.pages)
                    for p, rows in members.items()]
        return access_page(login, owned, sections, message=message, error=error, back_url=self.prefix + OWNER,
                           pages=self.pages)

    def _bare(self, message: str, status: int) -> None:
        self.set_status(status)
        self.finish(access_page(self.visitor, [], [], message=message, error=True, pages=self.pages))

    @web.authenticated
    @mapped
    async def get(self):
        try:
            self.finish(await self._page(await self.xnat_token("manage access to your projects")))
        except XnatHpcError as exc:
            self._bare(exc.message, status_for(exc))

    @web.authenticated
    @mapped
    async def post(self):
        visitor = self.visitor
        form = {k: self.get_body_argument(k, "") for k in ("action", "project", "user", "group")}
        audit_log = self.settings["audit_log"]
        try:
            change = parse_change(form)
        except XnatHpcError as exc:
            self._bare(exc.message, status_for(exc))
            return
        try:
            token = await self.xnat_token("manage access to your projects")
            group = await asyncio.to_thread(self._change_in_xnat, token, change)
        except XnatHpcError as exc:
            outcome = "denied" if exc.status in (401, 403) else "failed"
            await audit_log.record(visitor, change.action, outcome, items=[change.project],
                                   detail=f"{change.action} {change.user} on {change.project}: {exc.message}"[:500],
                                   extra={"target": change.user, "group": change.group})
            log.warning("%s of %s on %s by %s refused: %s", change.action, change.user, change.project, visitor,
                        exc.message)
            self.set_status(status_for(exc))
            await self._finish_page(message=exc.message, error=True)
            return
        await audit_log.record(visitor, change.action, "allowed", items=[change.project],
                               detail=f"{change.user} {'added to' if change.action == 'grant' else 'removed from'} "
                                      f"{change.project} {group}",
                               extra={"target": change.user, "group": group})
        if change.action == "grant":
            message = f"{change.user} now has access to {change.project} as one of its {group}."
        else:
            report = await self.revoke_effects(change.user, change.project,
                                               f"access to {change.project} revoked by {visitor}")
            effects = report.summary()
            message = (f"{change.user} no longer has access to {change.project} ({group}). "
                       f"{effects[:1].upper()}{effects[1:]}.")
        log.info("%s of %s on %s by %s: %s", change.action, change.user, change.project, visitor, message)
        await self._finish_page(message=message)

    def _change_in_xnat(self, token: AliasToken, change: AccessChange) -> str:
        with self.xnat_client(token) as client:
            return change_member(client, change)

    async def _finish_page(self, *, message: str, error: bool = False) -> None:
        try:
            page = await self._page(await self.xnat_token("manage access to your projects"), message=message,
                                    error=error)
        except XnatHpcError:
            page = access_page(self.visitor, [], [], message=message, error=error, pages=self.pages)
        self.finish(page)

    async def revoke_effects(self, target: str, project: str, reason: str) -> RevocationReport:
        """Stop, cancel and wipe what the XNAT account *target* still runs on *project*
        (:mod:`hub_ext.revocation`), through the service's one re-check runner. On the hub it
        is the name the hub's authenticator gives that login (``c.XnatAuthenticator.username_map``,
        else the login itself, else a derived name: :func:`hub_ext.names.hub_name`)."""
        hub_name = self.settings["hub_name"](target)
        try:
            user = await self.hub.user(hub_name)
        except XnatHpcError as exc:
            log.warning("revocation of %s: cannot read their servers: %s", hub_name, exc.message)
            user, unread = None, exc.message
        else:
            unread = ""

        async def stop(name: str) -> None:
            await self.hub.stop_server(hub_name, name)

        report = await self.settings["watch"].revoke(user, hub_name, project, reason, stop)
        if unread:
            report.problems.insert(0, f"{hub_name}'s running servers could not be read, so none were stopped: "
                                      f"{unread}")
        return report


# -- results review ---------------------------------------------------------------------------------

class _ReviewPage(OwnerPage):
    async def owned_now(self) -> set[str]:
        """The projects the visitor owns in XNAT now (their own alias token): their Owners
        groups only, so a site admin reviews no project they do not own themselves."""
        return (await self.permissions("review your projects' results")).owned()

    def page_url(self, notice: str = "") -> str:
        return self.prefix + REVIEW + (f"?notice={notice}" if notice else "")

    async def audit(self, action: str, outcome: str, **kw) -> None:
        await self.settings["audit_log"].record(self.visitor, action, outcome, **kw)


class ReviewPage(_ReviewPage):
    """``GET review``: the visitor's projects with their review setting, the held jobs of
    their projects with provenance and previews, and the decided ones."""

    @web.authenticated
    @mapped
    async def get(self):
        owned = await self.owned_now()
        store = self.settings["review_store"]

        def read():
            jobs = store.jobs_for(owned)
            previews = {(j["user"], j["job"]): store.previews(j["user"], j["job"])
                        for j in jobs if j["state"] == "held" and decidable(j["projects"], owned)}
            return store.marked(owned), jobs, previews

        marked, jobs, previews = await asyncio.to_thread(read)
        notice = NOTICES.get(self.get_argument("notice", ""), "")
        self.set_header("Cache-Control", "no-store")  # previews of held results: never cached
        self.finish(review_page(self.visitor, sorted(owned), marked, jobs, previews, self.xsrf, notice,
                                pages=self.pages))


class ReviewProjectForm(_ReviewPage):
    """``POST review/projects``: an owner marks or unmarks their project for review."""

    @web.authenticated
    @mapped
    async def post(self):
        project, review = self.get_body_argument("project", ""), self.get_body_argument("review", "")
        if not _PROJECT_RE.match(project) or review not in ("on", "off"):
            raise InvalidRequest("expected project=<XNAT project id> and review=on|off")
        owned = await self.owned_now()
        if project not in owned:
            await self.audit("review_policy", "denied", items=[project],
                             detail=f"not an owner of {project}: review setting unchanged")
            raise PermissionDenied(f"only an owner of {project} (in XNAT) changes its results review")
        changed = await asyncio.to_thread(self.settings["review_store"].mark, project, self.visitor, review == "on")
        if changed:
            await self.audit("review_policy", "allowed", items=[project],
                             detail=f"results review {'required' if review == 'on' else 'no longer required'}",
                             extra={"review": review})
        self.redirect(self.page_url("marked" if review == "on" else "unmarked"))


class ReviewDecisionForm(_ReviewPage):
    """``POST review/jobs/{user}/{job}``: approve or reject a held job, for the visitor's
    projects of its scope."""

    @web.authenticated
    @mapped
    async def post(self, job_user: str, job_id: str):
        decision = self.get_body_argument("decision", "")
        reason = self.get_body_argument("reason", "")
        if decision not in ("approve", "reject"):
            raise InvalidRequest("decision must be approve or reject")
        action = f"review_{decision}"
        owned = await self.owned_now()
        store = self.settings["review_store"]
        job = await asyncio.to_thread(store.job, job_user, job_id)
        mine = decidable(job["projects"], owned)
        if not mine:
            await self.audit(action, "denied", items=job["projects"],
                             detail=f"job {job_id} of {job_user}: not an owner of its projects",
                             extra={"job": job_id, "job_user": job_user})
            # the same answer as for a job that does not exist: a visitor who owns none of its
            # projects learns neither that it exists nor which projects it is about
            raise NotFound(f"no held results of job {job_id} of {job_user}", item=job_id)
        job = await asyncio.to_thread(store.record_decision, job_user, job_id, mine, self.visitor, decision, reason)
        await self.audit(action, "allowed", items=mine,
                         detail=(f"job {job_id} of {job_user}: {decision}d for {', '.join(mine)}"
                                 + (f": {reason.strip()[:300]}" if decision == "reject" else "")
                                 + f"; job now {job['state']}"),
                         extra={"job": job_id, "job_user": job_user, "state": job["state"],
                                "manifest_sha256": job["manifest_sha256"], "script_sha256": job["script_sha256"]})
        self.redirect(self.page_url(decision))


class ServiceRoot(web.RequestHandler):
    """The service's own address (``/services/xnat-hpc-governance/``, where the hub's service list
    and its readiness check look): the audit page."""

    def get(self):
        self.redirect(self.settings["service_prefix"] + OWNER)


class OAuthCallback(HubOAuthCallbackHandler):
    """The end of the hub's OAuth flow (JupyterHub's handler with the service's HubOAuth)."""

    @property
    def hub_auth(self):
        return self.settings["hub_oauth"]

    @hub_auth.setter
    def hub_auth(self, _value):
        pass


def page_handlers(prefix: str) -> list[tuple[str, type]]:
    """The owners' pages under the service's *prefix* (``/services/xnat-hpc-governance/``)."""
    return [(prefix + OWNER, OwnerAuditPage), (prefix + ACCESS, OwnerAccessPage), (prefix + REVIEW, ReviewPage),
            (prefix + OWNER_SHARES, OwnerShareForm),
            (prefix + REVIEW_PROJECTS, ReviewProjectForm), (prefix + REVIEW_DECIDE, ReviewDecisionForm),
            (prefix + OAUTH_CALLBACK, OAuthCallback), (prefix.rstrip("/") + "/?", ServiceRoot)]


def hub_name_of(config):
    """The hub's name for an XNAT login, as the hub's authenticator gives it
    (:meth:`hub_ext.auth.XnatAuthenticator.normalize_username`: ``username_map``, the login
    itself when valid, else a derived name), from the hub's configuration."""
    return XnatAuthenticator(config=config).normalize_username
