"""The project owners' page: who started servers on my projects, and was anyone refused.

``GET /hub/xnat-hpc/owner`` (logged-in users; ``?format=json`` for scripts)
lists the hub's audit events (every spawn, allowed or denied, with its scope;
:class:`~hub_ext.audit_log.HubAuditLog`, ``c.HubAuditLog.path``) about the projects
the visitor **owns in XNAT right now** — asked of XNAT with the visitor's own alias
token, never taken from the hub. Site administrators see every project. The page
also says whether the log's hash chain is intact. Installed with the hub's other
routes by ``c.JupyterHub.extra_handlers`` (:mod:`hub_ext.handlers`).

An event about several projects (a start whose scope spans projects of different
owners) is shown to each owner as their part only (:func:`visible_part`): the
projects they own, and neither the detail nor the file hashes, which name the others.
"""

from __future__ import annotations

import asyncio
import html
import json
import os

from jupyterhub.handlers import BaseHandler
from tornado import web

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import PermissionDenied
from xnat_bridge.permissions import fetch_permissions

from .audit_log import HubAuditLog
from .errors import map_errors
from .xnat_api import AliasToken

ROUTE = r"/xnat-hpc/owner"
MAX_EVENTS = 500


def hub_audit_log(settings: dict, log=None) -> HubAuditLog:
    """The hub's audit log as the hub's configuration (Tornado ``settings["config"]``) sets it:
    the file the spawners write (``c.HubAuditLog.path``)."""
    audit_log = HubAuditLog(config=settings.get("config"))
    if log is not None:
        audit_log.log = log
    return audit_log


def owned_projects(roles: dict[str, str], site_admin: bool) -> set[str]:
    return set(roles) if site_admin else {p for p, r in roles.items() if r == "Owner"}


#: what replaces the detail of an event that also concerns projects the visitor does not own
WITHHELD = "details withheld: this event also concerns projects you do not own"


def visible_part(event: dict, projects: set[str]) -> dict:
    """*event* as a visitor owning *projects* may see it (pure): unchanged when all its
    items are theirs; otherwise only their items, and the detail and file hashes (free text
    and paths naming the other projects) withheld."""
    items = list(event.get("items") or ())
    if set(items) <= projects:
        return event
    return {**event, "items": [i for i in items if i in projects], "detail": WITHHELD, "hashes": {}}


def events_for(events: list[dict], projects: set[str], limit: int = MAX_EVENTS) -> list[dict]:
    """Events touching one of *projects*, newest first, each cut to its :func:`visible_part` (pure)."""
    hits = [visible_part(e, projects) for e in events if projects.intersection(e.get("items") or ())]
    return list(reversed(hits))[:limit]


def render(user: str, projects: set[str], events: list[dict], chain: str) -> str:
    rows = "\n".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
            e.get("time", ""), e.get("user", ""), e.get("action", ""), e.get("outcome", ""),
            ", ".join(e.get("items") or ()), e.get("detail", ""))) + "</tr>" for e in events)
    owned = ", ".join(sorted(projects)) or "none"
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>XNAT projects: audit</title></head><body>
<h1>Audit of your XNAT projects</h1>
<p>{html.escape(user)}, you own: <strong id="owned">{html.escape(owned)}</strong> (as XNAT says now).</p>
<p id="chain">Audit log: {html.escape(chain)}</p>
<table id="events"><caption>Server starts on your projects, newest first</caption>
<thead><tr><th scope="col">time (UTC)</th><th scope="col">user</th><th scope="col">action</th>
<th scope="col">outcome</th><th scope="col">projects</th><th scope="col">detail</th></tr></thead>
<tbody>
{rows}
</tbody></table></body></html>"""


class OwnerAuditHandler(BaseHandler):
    """Only XNAT decides which projects a visitor owns."""

    @web.authenticated
    @map_errors
    async def get(self):
        user = self.current_user
        state = await user.get_auth_state() or {}
        token = AliasToken.from_state(state.get("xnat_token"))
        if token is None:
            raise PermissionDenied("log in with your XNAT account to see your projects' audit")
        xnat_url = getattr(self.authenticator, "xnat_url", "") or os.environ.get("XNAT_HOST", "")
        audit_log = hub_audit_log(self.settings, self.log)

        def ask() -> tuple[set[str], list[dict], str]:
            with XnatClient(xnat_url, token.alias, token.secret, retries=1, timeout=15) as client:
                perms = fetch_permissions(client, user.name)
            projects = owned_projects(perms.roles, perms.site_admin)
            events, chain = audit_log.snapshot()
            return projects, events_for(events, projects), chain

        projects, events, chain = await asyncio.to_thread(ask)
        if self.get_argument("format", "") == "json":
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"owned": sorted(projects), "chain": chain, "events": events}))
            return
        self.finish(render(user.name, projects, events, chain))
