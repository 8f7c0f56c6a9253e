"""A start from an XNAT stored search: the scope is the search's items the user may read.

XNAT's JupyterHub plugin (NrgXnat/xnat-jupyterhub-plugin) starts a server for a stored search
with ``xsiType = xdat:stored_search``, ``itemId`` = the search's id (``xs…``, or ``@xnat:…Data``
for a data bundle) and ``projectId`` = the project it was started from (``StartJupyterServer.vm``,
``startServerForStoredSearch``; ``validateServerStartRequest`` refuses a blank project). Its
``DefaultPermissionsHelper.canRead`` lets a user start one only when XNAT lists them among the
search's allowed users (``SearchHelperServiceI.getSearchForUser``; a bundle: when they may read
the project), and ``DefaultUserOptionsService.getStoredSearchPaths`` then mounts the whole
project (its ``experiments``, ``resources`` and ``subjects`` folders), whatever the search finds.

This hub is narrower, and decides it from XNAT's answers at start, as the user:

* the search must be the user's by XNAT's rule (allowed user; a bundle needs none), else refused;
* its results (``GET /data/search/saved/{id}/results?format=json``) name the items: subjects
  (``xnat:subjectData``), experiments (any experiment type, mixed concrete types included) or the
  project itself (``xnat:projectData``); scans and XNAT's own types have no place in a scope and
  are refused;
* of those, the items of the start's project that the user may read (XNAT's listing of that
  project, as the user) are the scope: ``{P: {"experiments": [...]}}``, ``{P: {"subjects":
  [...]}}`` or the whole project. Items of other projects stay out, as the plugin mounts only the
  start's project; nothing readable, or more than :data:`MAX_SEARCH_ITEMS`, refuses the start
  naming the search.

:func:`resolve_scope` decides (pure); :func:`resolve_stored_search` is the spawner's one step
that asks XNAT (:func:`xnat_bridge.permissions.fetch_stored_search` and the project's listing),
in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied, XnatUnavailable
from xnat_bridge.permissions import fetch_stored_search
from xnat_bridge.scope import ID_RE, Scope

from .request import PROJECT_TYPE, STORED_SEARCH_KIND, SUBJECT_TYPE, SpawnRequest
from .xnat_launch import EXPERIMENT_TYPES, IMAGE_SCAN_TYPE, SCAN_TYPES

#: most items (subjects or experiments) a stored search may scope one server to: each is a
#: mount and an entry of ``XNAT_HPC_SCOPE``. Narrow the search in XNAT, or start from the project.
MAX_SEARCH_ITEMS = 500
#: the largest search definition read (XNAT's XML of one ``xdat:stored_search``)
MAX_SEARCH_XML = 1 << 20
XDAT_NS = "http://nrg.wustl.edu/security"
_NS = {"xdat": XDAT_NS}
#: XNAT's own schemas that hold no data a server can be scoped to (users, workflows, catalogs …)
_NON_DATA_PREFIXES = ("xdat:", "wrk:", "arc:", "cat:", "pipe:", "prov:", "val:", "scr:")
_TYPE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*:[A-Za-z][A-Za-z0-9_]*$")


@dataclasses.dataclass(frozen=True)
class StoredSearch:
    """What the hub reads of XNAT's ``xdat:stored_search`` (the ``xdat:bundle`` XML)."""

    id: str
    root: str                                #: ``xdat:root_element_name``: the type of its rows
    description: str = ""                    #: ``brief-description`` (what XNAT's UI shows)
    tag: str = ""                            #: the project it was saved in ("" = site-wide)
    allowed_users: frozenset[str] = frozenset()

    @property
    def bundle(self) -> bool:
        """A data bundle (``@xnat:mrSessionData``): every item of its type the user may read."""
        return self.id.startswith("@")

    @property
    def name(self) -> str:
        return f"stored search {self.id}" + (f" ({self.description})" if self.description else "")


def parse_search_xml(text: str, search_id: str) -> StoredSearch:
    """XNAT's definition of stored search *search_id* (``GET /data/search/saved/{id}``) →
    :class:`StoredSearch` (pure). A document that is not one search of that id is refused."""
    what = f"XNAT's definition of stored search {search_id}"
    if len(text) > MAX_SEARCH_XML:
        raise XnatUnavailable(f"{what} is larger than {MAX_SEARCH_XML} bytes")
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise XnatUnavailable(f"{what} declares a document type; XNAT's never does")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise XnatUnavailable(f"{what} is not XML ({e})") from None
    if root.tag not in (f"{{{XDAT_NS}}}bundle", f"{{{XDAT_NS}}}stored_search"):
        raise XnatUnavailable(f"{what} is a {root.tag}, not an xdat:bundle")
    if root.get("ID") != search_id:
        raise XnatUnavailable(f"{what} is the definition of {root.get('ID')!r}")
    element = (root.findtext("xdat:root_element_name", "", _NS) or "").strip()
    if not _TYPE_RE.match(element):
        raise XnatUnavailable(f"{what} names no data type (xdat:root_element_name {element!r})")
    users = frozenset((e.text or "").strip() for e in root.findall("xdat:allowed_user/xdat:login", _NS))
    return StoredSearch(search_id, element, (root.get("brief-description") or "").strip(),
                        (root.get("tag") or "").strip(), users - {""})


def root_kind(search: StoredSearch) -> str:
    """``project``, ``subject`` or ``experiment``: what the rows of *search* are (pure). Scans and
    XNAT's own types are refused: a server's scope holds projects, subjects and experiments."""
    root = search.root
    if root == PROJECT_TYPE:
        return "project"
    if root == SUBJECT_TYPE:
        return "subject"
    if root == IMAGE_SCAN_TYPE or root in SCAN_TYPES or root.endswith("ScanData"):
        raise InvalidRequest(f"{search.name} lists scans ({root}); a server is scoped to projects, "
                             "subjects or experiments: save the search on their sessions in XNAT, or start "
                             "Jupyter from the project", item=search.id)
    if (root.startswith(_NON_DATA_PREFIXES)
            or (root.startswith("xnat:") and root not in EXPERIMENT_TYPES and root != "xnat:experimentData")):
        raise InvalidRequest(f"{search.name} lists {root} items, which have no data a server can be "
                             "scoped to; start Jupyter from a search of subjects or experiments, or from "
                             "the project", item=search.id)
    return "experiment"  # an experiment type of XNAT's, or of a data-type plugin of the site's


def check_search_readable(search: StoredSearch, login: str) -> None:
    """The plugin's rule (``DefaultPermissionsHelper.canReadStoredSearch``): a stored search is the
    user's when XNAT lists them among its allowed users; a data bundle is anyone's (its items are
    what the user may read anyway)."""
    if search.bundle or login in search.allowed_users:
        return
    raise PermissionDenied(f"{search.name} is not shared with you in XNAT (you are not among its "
                           "users); ask its owner to share it with you, or start Jupyter from the project",
                           item=search.id)


def _id_columns(search: StoredSearch, kind: str) -> tuple[str, ...]:
    """The result columns that hold a row's own XNAT id, by XNAT's display fields: a root field's
    column is its field id in lower case (``SearchResource.setColumnProperties``); ``key`` is the
    root's key column of XNAT's materialized view of the search."""
    if kind == "project":
        return ("id", "key")
    if kind == "subject":
        return ("subject_id", "subjectid", "key")   # subjectData_display.xml: both are xnat:subjectData.ID
    if search.root.endswith("SessionData"):
        return ("session_id", "key")                 # e.g. mrSessionData_display.xml: SESSION_ID
    return ("expt_id", "key")                        # assessors etc.: EXPT_ID (SESSION_ID is the assessed one)


def result_ids(doc: Any, search: StoredSearch, kind: str) -> list[str]:
    """The ids of the rows of *search*'s results (``ResultSet`` JSON), in order, once each (pure).
    Results that name no ids refuse the start, saying which field to add."""
    try:
        result_set = doc["ResultSet"]
        rows = result_set["Result"]
    except (KeyError, TypeError):
        raise XnatUnavailable(f"XNAT's results of {search.name} have no ResultSet") from None
    if not isinstance(rows, list):
        raise XnatUnavailable(f"XNAT's results of {search.name} are not a list of rows")
    columns = {str(c.get("key")) for c in result_set.get("Columns") or [] if isinstance(c, Mapping)}
    for row in rows:
        if isinstance(row, Mapping):
            columns.update(str(k) for k in row)
    wanted = _id_columns(search, kind)
    column = next((c for c in wanted if c in columns), None)
    if column is None:
        if not rows:
            return []
        field = {"project": "ID", "subject": "SUBJECT_ID"}.get(kind, wanted[0].upper())
        raise InvalidRequest(f"the results of {search.name} do not name their items (no {wanted[0]} "
                             f"column): add the field {field} of {search.root} to the search in XNAT",
                             item=search.id)
    out: dict[str, None] = {}
    for row in rows:
        value = row.get(column) if isinstance(row, Mapping) else None
        if isinstance(value, str) and value.strip():
            out.setdefault(value.strip(), None)
    return list(out)


def resolve_scope(search: StoredSearch, ids: Iterable[str], project: str, readable: Iterable[str],
                  kind: str, *, limit: int = MAX_SEARCH_ITEMS) -> Scope:
    """The scope of a start from *search* in *project* (pure): the search's result *ids* that are
    items of *project* the user may read (*readable*: the ids of the project's subjects or
    experiments as XNAT lists them to the user; for a search of projects, the project itself).
    Refused when nothing remains or more than *limit* items do, naming the search."""
    ids = list(ids)
    if kind == "project":
        if project in ids:
            return Scope.of([project])
        raise NotFound(f"{search.name} does not find project {project}, where Jupyter was started from "
                       "it; start it from a project the search finds", item=search.id)
    readable = set(readable)
    chosen = sorted({i for i in ids if i in readable and ID_RE.match(i)})
    what = "subjects" if kind == "subject" else "experiments"
    if not chosen:
        elsewhere = f" (it finds {len(ids)} items elsewhere)" if ids else ""
        raise NotFound(f"{search.name} finds no {what} in project {project} that you can read{elsewhere}; "
                       "start Jupyter from the project the search is about, or change the search in XNAT",
                       item=search.id)
    if len(chosen) > limit:
        raise InvalidRequest(f"{search.name} finds {len(chosen)} {what} in project {project}; a server is "
                             f"scoped to at most {limit}: narrow the search in XNAT, or start Jupyter from "
                             "the project", item=search.id)
    return Scope.of({project: {"subjects" if kind == "subject" else "experiments": chosen}})


# -- the one step that asks XNAT ---------------------------------------------------------------

def _project_ids(client: XnatClient, project: str, kind: str) -> list[str]:
    """The ids of *project*'s subjects or experiments as XNAT lists them to the client's user."""
    if kind == "project":
        return []
    what = "subjects" if kind == "subject" else "experiments"
    rows = client.result(f"/data/projects/{project}/{what}", params={"columns": "ID"},
                         what=f"the {what} of project {project}")
    return [str(r.get("ID")) for r in rows if isinstance(r, Mapping) and r.get("ID")]


def resolve_with(client: XnatClient, request: SpawnRequest, login: str) -> SpawnRequest:
    """*request* (a start from a stored search) with its scope, asked of XNAT through *client*
    (the user's credential; blocking)."""
    item = request.xnat_item
    xml_text, results = fetch_stored_search(client, item.item_id)
    search = parse_search_xml(xml_text, item.item_id)
    check_search_readable(search, login)
    kind = root_kind(search)
    ids = result_ids(results, search, kind)
    readable = _project_ids(client, item.project, kind)
    return dataclasses.replace(request, scope=resolve_scope(search, ids, item.project, readable, kind))


async def resolve_stored_search(request: SpawnRequest, client: Callable[[], XnatClient],
                                login: str) -> SpawnRequest:
    """*request* unchanged, unless it is a start from a stored search: then with its scope, asked
    of XNAT in a thread through ``client()`` (a new :class:`XnatClient` with the user's credential,
    closed after) as the XNAT account *login*. The spawner calls it once per start, before it asks
    XNAT about the scope's projects."""
    item = request.xnat_item
    if item is None or item.kind != STORED_SEARCH_KIND:
        return request

    def work() -> SpawnRequest:
        with client() as c:
            return resolve_with(c, request, login)

    return await asyncio.to_thread(work)
