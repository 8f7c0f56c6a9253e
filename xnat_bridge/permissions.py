"""Which XNAT projects a user may read, and in which role — asked of XNAT.

Two requests answer it for any number of projects:

* ``GET /xapi/users/{user}/groups`` → ``["NEURO_MRI_owner", "SLEEP_EEG_member", ...]``
* ``GET /xapi/users/{user}/roles``  → site roles (``Administrator`` marks a site admin)

plus, for site admins only, ``GET /data/projects?accessible=true`` (they read
every project without being in its groups). Nothing is read from local files.

:func:`fetch_stored_search` reads one XNAT stored search (definition and results) as the user:
what XNAT lets them see of it (the hub scopes a start from a stored search with it).

Answers are cached per user for ``ttl`` seconds (default 60, the revocation
delay the architecture promises) and can be invalidated explicitly.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from urllib.parse import quote

from .client import XnatClient
from .errors import PermissionDenied

#: XNAT group-id suffix → role name
ROLE_OF_SUFFIX = {"owner": "Owner", "member": "Member", "collaborator": "Collaborator"}
ROLES = ("Owner", "Member", "Collaborator")
SITE_ADMIN = "Administrator"
DEFAULT_TTL_S = 60.0


@dataclasses.dataclass(frozen=True)
class Permissions:
    """A user's XNAT rights at one moment."""

    user: str
    #: project id → "Owner" | "Member" | "Collaborator" (site admins: "Owner" everywhere)
    roles: dict[str, str]
    site_admin: bool = False
    site_roles: tuple[str, ...] = ()
    fetched_at: float = 0.0
    #: the roles XNAT's project groups give (``roles`` less what being a site admin adds)
    member_roles: dict[str, str] = dataclasses.field(default_factory=dict)

    def owned(self) -> set[str]:
        """The projects whose Owners group the user is in: a site admin owns only those
        (answering for a project's data is an owner's, not the site's)."""
        return {p for p, r in self.member_roles.items() if r == "Owner"}

    def role(self, project: str) -> str | None:
        return self.roles.get(project)

    def can_read(self, project: str) -> bool:
        return project in self.roles

    def require_read(self, project: str) -> str:
        role = self.roles.get(project)
        if role is None:
            raise PermissionDenied(f"{self.user} may not read XNAT project {project}", item=project)
        return role


def parse_groups(groups: list[str]) -> dict[str, str]:
    """``["P_owner", "Q_member"]`` → ``{"P": "Owner", "Q": "Member"}`` (pure).

    Project ids may themselves contain underscores: the suffix after the last
    one is the group. A user in several groups of one project gets the
    strongest role.
    """
    rank = {r: i for i, r in enumerate(ROLES)}
    out: dict[str, str] = {}
    for gid in groups:
        project, _, suffix = str(gid).rpartition("_")
        role = ROLE_OF_SUFFIX.get(suffix.lower())
        if not project or role is None:
            continue
        if project not in out or rank[role] < rank[out[project]]:
            out[project] = role
    return out


def fetch_permissions(client: XnatClient, user: str | None = None) -> Permissions:
    """Ask XNAT now (no cache)."""
    user = user or client.username
    q = quote(user, safe="")
    groups = client.get_json(f"/xapi/users/{q}/groups", what=f"the groups of {user}")
    site_roles = tuple(client.get_json(f"/xapi/users/{q}/roles", what=f"the roles of {user}"))
    member_roles = parse_groups(groups if isinstance(groups, list) else [])
    roles = dict(member_roles)
    admin = SITE_ADMIN in site_roles
    if admin:
        for row in client.result("/data/projects", params={"accessible": "true", "columns": "ID"},
                                 what="projects"):
            roles.setdefault(row["ID"], "Owner")
    return Permissions(user, roles, admin, site_roles, time.time(), member_roles)


def fetch_stored_search(client: XnatClient, search_id: str) -> tuple[str, dict]:
    """Stored search *search_id* as XNAT gives it to the client's user: its definition (``GET
    /data/search/saved/{id}``: the ``xdat:bundle`` XML; the route has no JSON) and its results
    (``GET /data/search/saved/{id}/results?format=json``: a ``ResultSet`` with ``Columns``, rows
    already limited by XNAT to what the user may read). XNAT answers 403 to a user who is not
    among the search's users and may not query its data type (PermissionDenied), 404 to an
    unknown id (NotFound)."""
    path = f"/data/search/saved/{quote(search_id, safe='@:')}"
    what = f"stored search {search_id}"
    definition = client.request("GET", path, params={"format": "xml"}, what=what).text
    results = client.get_json(f"{path}/results", what=f"the results of {what}")
    return definition, results if isinstance(results, dict) else {}


class PermissionCache:
    """Per-user cache of :func:`fetch_permissions` with a TTL."""

    def __init__(self, ttl: float = DEFAULT_TTL_S):
        self.ttl = float(ttl)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], Permissions] = {}

    def get(self, client: XnatClient, user: str | None = None) -> Permissions:
        user = user or client.username
        key = (client.host, user)
        now = time.time()
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None and now - hit.fetched_at < self.ttl:
                return hit
        perms = fetch_permissions(client, user)
        with self._lock:
            self._entries[key] = perms
        return perms

    def invalidate(self, user: str | None = None) -> None:
        """Forget one user (or everyone): the next question goes to XNAT."""
        with self._lock:
            if user is None:
                self._entries.clear()
            else:
                for key in [k for k in self._entries if k[1] == user]:
                    del self._entries[key]
