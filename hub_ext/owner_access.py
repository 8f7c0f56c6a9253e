"""Owners grant and revoke access to their XNAT projects from the hub.

``GET /hub/xnat-hpc/owner/access`` (``?project=P`` for one) shows, for each project the
visitor owns **in XNAT right now** (asked with the visitor's own alias token), who has
access with which role, a form to grant a user a role (Owners, Members, Collaborators)
and a revoke button per user. ``POST`` to the same address changes the membership
through XNAT's own project-users API **as the visitor** (``PUT`` / ``DELETE
/data/projects/{P}/users/{group}/{user}``, XNAT's ``ProjectMemberResource``), so XNAT
decides whether the visitor may: a member, or an owner of another project, gets XNAT's
refusal as a clear message. The page is server-rendered and works without JavaScript;
the forms carry JupyterHub's ``_xsrf`` token, which the hub's ``BaseHandler.prepare``
checks for every POST (a POST without it is refused with 403 before this module runs).

Every grant and revoke is audited (``grant`` / ``revoke``, the owner as ``user``, the
project as item). A revocation then takes effect (:mod:`hub_ext.revocation`): the
user's running servers on the project are stopped (or left to the server's permission
TTL, ``c.OwnerAccess.on_revoke = "narrow"``), their offload jobs on the project's data
cancelled and the jobs' bundles wiped, each effect audited. The owner waits for that at
most ``c.OwnerAccess.revoke_timeout`` seconds; the page lists what is still pending then.

The owners' audit page links here (:data:`ROUTE`, :func:`access_url`) or embeds one
project's section (:func:`access_section_html`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Mapping
from urllib.parse import quote

from jupyterhub.handlers import BaseHandler
from tornado import web

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from xnat_bridge.permissions import fetch_permissions
from xnat_bridge.scope import check_id

from . import hub_rest
from .audit_log import HubAuditLog
from .errors import map_errors, status_for
from .pages import XnatHpcPages, ensure_pages, render
from .revocation import RevocationReport
from .revocation_watch import revoke_bounded
from .visitor import visitor_client, visitor_login, visitor_token
from .xnat_api import AliasToken

ROUTE = r"/xnat-hpc/owner/access"
#: XNAT's project groups, as its project-users API names them (display names)
GROUPS = ("Owners", "Members", "Collaborators")
ACTIONS = ("grant", "revoke")
#: an XNAT login (what XNAT accepts as a user name in the project-users API)
LOGIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")


def access_url(base_url: str, project: str | None = None) -> str:
    """The access page under the hub's *base_url* (e.g. ``/hub/``), for one *project* or all."""
    url = base_url.rstrip("/") + ROUTE
    return url + (f"?project={quote(project, safe='')}" if project else "")


@dataclasses.dataclass(frozen=True)
class AccessChange:
    """One validated form post."""

    action: str
    project: str
    user: str
    group: str = ""


def parse_change(form: Mapping[str, str]) -> AccessChange:
    """The form's fields → :class:`AccessChange`, or :class:`InvalidRequest` naming the field (pure)."""
    action = (form.get("action") or "").strip()
    if action not in ACTIONS:
        raise InvalidRequest(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    project = check_id((form.get("project") or "").strip(), "project")
    user = (form.get("user") or "").strip()
    if not LOGIN_RE.match(user):
        raise InvalidRequest(f"{user!r} is not an XNAT user name; give the user's XNAT login, e.g. bob")
    group = (form.get("group") or "").strip()
    if action == "grant" and group not in GROUPS:
        raise InvalidRequest(f"choose a role: {', '.join(GROUPS)} (got {group!r})")
    if action == "revoke" and group and group not in GROUPS:
        raise InvalidRequest(f"unknown role {group!r}; one of {', '.join(GROUPS)}")
    return AccessChange(action, project, user, group)


# -- rendering (pure; the templates of hub_ext.pages) -----------------------------------------

def access_section_html(project: str, members: list[dict], *, xsrf: str, action_url: str,
                        pages: XnatHpcPages | None = None) -> str:
    """One project's section (``xnat-hpc-access-section.html``): its members (``login``,
    ``displayname`` rows as XNAT lists them) with a revoke button each, and the grant form
    (pure; no JavaScript). *pages*: the hub's (:func:`~hub_ext.pages.ensure_pages`), else the
    packaged templates."""
    rows = [{"login": str(m.get("login", "")), "group": str(m.get("displayname", "")),
             "name": " ".join(str(m.get(k) or "") for k in ("firstname", "lastname")).strip()}
            for m in sorted(members, key=lambda m: (str(m.get("displayname", "")), str(m.get("login", ""))))]
    return render("xnat-hpc-access-section.html", pages, project=project, members=rows,
                  groups=[(g, g == "Members") for g in GROUPS], xsrf=xsrf, action_url=action_url)


def render_page(visitor: str, owned: list[str], sections: list[str], *, message: str = "",
                error: bool = False, back_url: str = "", pages: XnatHpcPages | None = None) -> str:
    """The whole page (``xnat-hpc-access.html``; pure): a result line (``role="status"`` or
    ``role="alert"``), then *sections* (HTML from :func:`access_section_html`)."""
    return render("xnat-hpc-access.html", pages, visitor=visitor, owned=list(owned), sections=list(sections),
                  message=message, error=error, back_url=back_url)


# -- XNAT's project-users API, as the owner (blocking: call in a thread) -----------------------

def _path(project: str, group: str = "", user: str = "") -> str:
    path = f"/data/projects/{quote(project, safe='')}/users"
    return path + (f"/{quote(group, safe='')}/{quote(user, safe='')}" if group else "")


def _refused(client: XnatClient, resp, change_what: str, project: str, target: str = "") -> XnatHpcError:
    code = resp.status_code
    resp.close()
    if code in (401, 403):
        return PermissionDenied(f"XNAT refused to let {client.username} {change_what}: only an owner of "
                                f"{project} (or a site administrator) may change who has access to it. "
                                f"Ask an owner of {project}.", item=project)
    if code == 404:
        what = f"user {target!r} or " if target else ""
        return NotFound(f"XNAT knows no {what}project {project!r} (or {target or 'the user'} is not in that "
                        "group): check the spelling of the XNAT login", item=project)
    return InvalidRequest(f"XNAT refused to {change_what} (HTTP {code})", item=project)


def project_members(client: XnatClient, project: str) -> list[dict]:
    """``GET /data/projects/{P}/users``: XNAT answers its owners (and admins) only."""
    resp = client.request("GET", _path(project), params={"format": "json"}, what=f"the users of {project}",
                          accept=(401, 403, 404))
    if resp.status_code >= 400:
        raise _refused(client, resp, f"see who has access to {project}", project)
    try:
        return list(resp.json()["ResultSet"]["Result"])
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest(f"XNAT's list of the users of {project} is not a ResultSet") from None


def change_member(client: XnatClient, change: AccessChange) -> str:
    """Apply *change* in XNAT; the group the user was granted or removed from."""
    if change.action == "grant":
        what = f"grant {change.user} {change.group} of {change.project}"
        resp = client.request("PUT", _path(change.project, change.group, change.user), what=what,
                              accept=(400, 401, 403, 404, 409))
        if resp.status_code >= 400:
            raise _refused(client, resp, what, change.project, change.user)
        return change.group
    current = [str(m.get("displayname", "")) for m in project_members(client, change.project)
               if str(m.get("login", "")) == change.user]
    if not current:
        raise NotFound(f"{change.user} has no access to {change.project} in XNAT: nothing to revoke",
                       item=change.project)
    group = current[0]
    what = f"revoke the access of {change.user} to {change.project}"
    resp = client.request("DELETE", _path(change.project, group, change.user), what=what,
                          accept=(400, 401, 403, 404, 409))
    if resp.status_code >= 400:
        raise _refused(client, resp, what, change.project, change.user)
    return group


# -- the handler -------------------------------------------------------------------------------

class OwnerAccessHandler(BaseHandler):
    """Grant and revoke, as the owner, through XNAT."""

    async def _token(self) -> AliasToken:
        return await visitor_token(self, "manage access to your projects")

    def _client(self, token: AliasToken) -> XnatClient:
        return visitor_client(self, token)

    def _audit_log(self) -> HubAuditLog:
        return HubAuditLog(config=self.settings.get("config"), log=self.log)

    async def _page(self, token: AliasToken, *, message: str = "", error: bool = False) -> str:
        visitor = await visitor_login(self)
        only = self.get_query_argument("project", "") or self.get_body_argument("project", "")

        def ask() -> tuple[list[str], dict[str, list[dict]]]:
            with self._client(token) as client:
                perms = fetch_permissions(client, visitor)
                owned = sorted(perms.roles) if perms.site_admin else sorted(
                    p for p, r in perms.roles.items() if r == "Owner")
                shown = [p for p in owned if not only or p == only]
                return owned, {p: project_members(client, p) for p in shown}

        owned, members = await asyncio.to_thread(ask)
        url = access_url(self.hub.base_url)
        xsrf = self.xsrf_token.decode("ascii")
        pages = ensure_pages(self.settings, self.log)
        sections = [access_section_html(p, rows, xsrf=xsrf, action_url=url, pages=pages)
                    for p, rows in members.items()]
        back = self.hub.base_url.rstrip("/") + "/xnat-hpc/owner"
        return render_page(visitor, owned, sections, message=message, error=error, back_url=back, pages=pages)

    @web.authenticated
    @map_errors
    async def get(self):
        try:
            token = await self._token()
            self.finish(await self._page(token))
        except XnatHpcError as exc:
            self.set_status(status_for(exc))
            self.finish(render_page(self.current_user.name, [], [], message=exc.message, error=True,
                                    pages=ensure_pages(self.settings, self.log)))

    @web.authenticated
    @map_errors
    async def post(self):
        visitor = self.current_user.name
        form = {k: self.get_body_argument(k, "") for k in ("action", "project", "user", "group")}
        audit_log = self._audit_log()
        try:
            change = parse_change(form)
        except XnatHpcError as exc:
            self.set_status(status_for(exc))
            self.finish(render_page(visitor, [], [], message=exc.message, error=True,
                                    pages=ensure_pages(self.settings, self.log)))
            return
        try:
            token = await self._token()
            group = await asyncio.to_thread(self._change_in_xnat, token, change)
        except XnatHpcError as exc:
            outcome = "denied" if exc.status in (401, 403) else "failed"
            await audit_log.record(visitor, change.action, outcome, items=[change.project],
                                   detail=f"{change.action} {change.user} on {change.project}: {exc.message}"[:500],
                                   extra={"target": change.user, "group": change.group})
            self.log.warning("%s of %s on %s by %s refused: %s", change.action, change.user, change.project,
                             visitor, exc.message)
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
        self.log.info("%s of %s on %s by %s: %s", change.action, change.user, change.project, visitor, message)
        await self._finish_page(message=message)

    def _change_in_xnat(self, token: AliasToken, change: AccessChange) -> str:
        with self._client(token) as client:
            return change_member(client, change)

    async def _finish_page(self, *, message: str, error: bool = False) -> None:
        try:
            page = await self._page(await self._token(), message=message, error=error)
        except XnatHpcError:
            page = render_page(self.current_user.name, [], [], message=message, error=error,
                               pages=ensure_pages(self.settings, self.log))
        self.finish(page)

    # -- what a revocation does --------------------------------------------------------------
    async def revoke_effects(self, target: str, project: str, reason: str) -> RevocationReport:
        """Stop, cancel and wipe what the XNAT account *target* still runs on *project*
        (:mod:`hub_ext.revocation`): on the hub it is the name the authenticator gives that
        login (``c.XnatAuthenticator.username_map``, else the login itself). Waits at most
        ``c.OwnerAccess.revoke_timeout`` seconds: what is not done by then goes on in the
        background and the report (the page) lists it as pending. Servers are stopped through
        the hub's REST API as the service ``xnat-hpc-governance`` (:mod:`hub_ext.hub_rest`)."""
        hub_name = self.authenticator.normalize_username(target)
        try:  # their servers and records as the hub's REST API shows them, as the re-check reads them
            user = await hub_rest.hub_user(self.settings, hub_name)
        except XnatHpcError as exc:
            self.log.warning("revocation of %s: cannot read their servers: %s", hub_name, exc.message)
            user, unread = None, exc.message
        else:
            unread = ""

        async def stop(name: str) -> None:  # as the re-check does: the hub's REST API, as governance
            await hub_rest.stop_server(self.settings, hub_name, name)

        report = await revoke_bounded(self.settings, user, hub_name, project, reason, stop)
        if unread:
            report.problems.insert(0, f"{hub_name}'s running servers could not be read, so none were stopped: {unread}")
        return report
