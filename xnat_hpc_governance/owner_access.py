"""Owners grant and revoke access to their XNAT projects: the pure parts and XNAT's calls.

The page is the governance service's (:class:`xnat_hpc_governance.owner_pages.OwnerAccessPage`,
``/services/xnat-hpc-governance/owner/access``, ``?project=P`` for one; the hub's old address
``/hub/xnat-hpc/owner/access`` redirects there). It shows, for each project the visitor owns
**in XNAT right now** (asked with the visitor's own alias token), who has access with which
role, a form to grant a user a role (Owners, Members, Collaborators) and a revoke button per
user. A ``POST`` changes the membership through XNAT's own project-users API **as the visitor**
(``PUT`` / ``DELETE /data/projects/{P}/users/{group}/{user}``, XNAT's
``ProjectMemberResource``: :func:`change_member`), so XNAT decides whether the visitor may: a
member, or an owner of another project, gets XNAT's refusal as a clear message. The page is
server-rendered and works without JavaScript; its forms carry the service's ``_xsrf``.

Every grant and revoke is audited (``grant`` / ``revoke``, the owner as ``user``, the
project as item). A revocation then takes effect (:mod:`hub_ext.revocation`): the
user's running servers on the project are stopped (or left to the server's permission
TTL, ``c.OwnerAccess.on_revoke = "narrow"``), their offload jobs on the project's data
cancelled and the jobs' bundles wiped, each effect audited. The owner waits for that at
most ``c.OwnerAccess.revoke_timeout`` seconds; the page lists what is still pending then.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from urllib.parse import quote

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from xnat_bridge.scope import check_id

from .pages import XnatHpcPages, render

#: the hub's old address of the page (relative to the hub's prefix): a redirect to the service's
ROUTE = r"/xnat-hpc/owner/access"
#: XNAT's project groups, as its project-users API names them (display names)
GROUPS = ("Owners", "Members", "Collaborators")
ACTIONS = ("grant", "revoke")
#: an XNAT login (what XNAT accepts as a user name in the project-users API)
LOGIN_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")


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


# -- rendering (pure; the templates of xnat_hpc_governance.pages) -----------------------------------------

def access_section_html(project: str, members: list[dict], *, xsrf: str, action_url: str,
                        pages: XnatHpcPages | None = None) -> str:
    """One project's section (``xnat-hpc-access-section.html``): its members (``login``,
    ``displayname`` rows as XNAT lists them) with a revoke button each, and the grant form
    (pure; no JavaScript). *pages*: the hub's (:func:`~xnat_hpc_governance.pages.ensure_pages`), else the
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
