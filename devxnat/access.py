"""Who may see what, the way XNAT decides it.

* Site administrators read everything and manage every project.
* A project's ``Owners``, ``Members`` and ``Collaborators`` may read all of its
  data; only Owners (and site admins) manage its users.
* ``public`` projects are readable by every logged-in user; ``protected``
  projects are *listed* for everyone but their data stays closed; ``private``
  projects are invisible to outsiders.
* XNAT's site-wide data groups: ``ALL_DATA_ACCESS`` reads every project,
  ``ALL_DATA_ADMIN`` reads, edits and deletes in every project, and so (as XNAT's
  ``canDelete(project)``) manages its users too.
* A project's user list is readable by its Owners and site admins only (XNAT's
  ``ProjectUserListResource``); Members and Collaborators get 403.
* Owners and Members edit a project's data; the project item itself (its project-level
  resources) only Owners; only Owners delete.
* Items that exist but may not be read answer 403; items that do not exist 404.
"""

from __future__ import annotations

from .errors import Forbidden, NotFound
from .store import Store

#: XNAT group display name → the role name XNAT shows (``Owner`` ...)
ROLE_OF_GROUP = {"Owners": "Owner", "Members": "Member", "Collaborators": "Collaborator"}


class Access:
    """Permission questions for one logged-in user."""

    def __init__(self, store: Store, login: str):
        self.store = store
        self.login = login
        row = store.user(login)
        self.admin = bool(row and row["admin"])
        self._groups = store.memberships(login)
        self.site_groups = set(store.site_groups(login)) if row else set()
        #: reads every project (site admin, ALL_DATA_ACCESS, ALL_DATA_ADMIN)
        self.all_data = self.admin or bool(self.site_groups)

    def group(self, project: str) -> str | None:
        return self._groups.get(project)

    def can_read(self, project_row) -> bool:
        return (self.all_data or project_row["id"] in self._groups
                or project_row["accessibility"] == "public")

    def can_list(self, project_row) -> bool:
        return self.can_read(project_row) or project_row["accessibility"] == "protected"

    def can_manage(self, project_row) -> bool:
        """XNAT's ``canDelete(project)``: site admins, ALL_DATA_ADMIN, the project's Owners."""
        return (self.admin or "ALL_DATA_ADMIN" in self.site_groups
                or self._groups.get(project_row["id"]) == "Owners")

    def readable_project(self, pid: str):
        """The project row if it exists and may be read; else NotFound/Forbidden."""
        row = self.store.project(pid)
        if row is None:
            raise NotFound(f"Unable to find project {pid}")
        if not self.can_read(row):
            raise Forbidden(f"User {self.login} has no access to project {pid}")
        return row

    def can_edit(self, project_row) -> bool:
        """Edit the project's data (subjects, experiments, scans and their resources): admins,
        ALL_DATA_ADMIN, the project's Owners and Members."""
        return (self.admin or "ALL_DATA_ADMIN" in self.site_groups
                or self._groups.get(project_row["id"]) in ("Owners", "Members"))

    def can_edit_project(self, project_row) -> bool:
        """Edit the project item itself, which a project-level resource needs: XNAT's
        ``canEdit(user, project)`` is checked against ``xnat:projectData/ID``, on which its
        default groups give Owners edit and Members and Collaborators read only
        (docs/xnat-resource-api.md §2, "Who may do it"): admins, ALL_DATA_ADMIN, the Owners."""
        return (self.admin or "ALL_DATA_ADMIN" in self.site_groups
                or self._groups.get(project_row["id"]) == "Owners")

    def managed_project(self, pid: str):
        row = self.readable_project(pid)
        if not self.can_manage(row):
            raise Forbidden(f"Only owners of {pid} may change its users")
        return row

    def listed_projects(self, *, accessible=False, owner=False, member=False,
                        collaborator=False) -> list:
        """Projects for ``/data/projects`` with XNAT's filter parameters."""
        rows = self.store.projects()
        wanted_groups = set()
        if owner:
            wanted_groups.add("Owners")
        if member:
            wanted_groups.add("Members")
        if collaborator:
            wanted_groups.add("Collaborators")
        out = []
        for row in rows:
            if wanted_groups and self._groups.get(row["id"]) not in wanted_groups:
                continue
            if accessible and not self.can_read(row):
                continue
            if not self.can_list(row):
                continue
            out.append(row)
        return out
