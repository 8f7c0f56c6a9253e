"""XNAT's stored searches (``xdat:stored_search``) on the development server, and what XNAT's
JupyterHub plugin does with a start from one.

Routes (xnat-web's restlet application: ``/search/saved`` → ``SavedSearchListResource``,
``/search/saved/{SEARCH_ID}`` and ``…/results`` → ``SavedSearchResource``; ``/data`` and ``/REST``)::

    GET /data/search/saved[?format=json|csv|xml][&includeTag=true|P][&all=true][&user=U]
        the searches listed for the caller: ``{"ResultSet": {"Result": [...], "title":
        "Stored Searches"}}``, a row per search with the columns of XNAT's
        ``xdat_stored_search`` table and ``users`` (the allowed logins, ``{alice,bob}``), as
        strings. Listed: searches not ``secure``, or with the caller among their allowed users,
        or in one of their allowed groups; those without a project tag unless ``includeTag``
        (``true``: those with one; a project id: that project's, 400 for an unknown one).
        Site admins: ``all=true`` lists all, ``user=U`` lists U's.
    GET /data/search/saved/{id}[?format=xml]
        the definition, ``<xdat:bundle …>`` (``text/xml``); the route has no JSON (404 for
        ``format=json``, as for an unknown id). 403 unless the caller is an allowed user or may
        query the search's data type (``Permissions.canQuery``: reads some project). ``@type``
        (a data bundle: every item of the type) is built on the fly.
    GET /data/search/saved/{id}/results?format=json|csv|xml
        the search run as the caller: only rows of projects they may read. JSON is
        ``{"ResultSet": {"Columns": [{"key", "element_name", "header", "id", "type", "xPATH"
        [, "visible": "false"]}], "Result": [...], "totalRecords": "N"}}``; a column's key is the
        field id in lower case for the root data type, ``{element sql name}_{field id}`` for
        another (``SearchResource.setColumnProperties``), and the fields a field's link inserts
        (``LABEL`` of a session: ``SESSION_ID``, ``INSERT_DATE``, ``INSERT_USER``) come as hidden
        columns. No ``format``: XML (the resource's only variant); CSV carries
        ``Content-Disposition: attachment; filename="results.csv"``.

What devxnat knows of XNAT's display fields is the subset below (:data:`FIELDS`); a search that
names another field, or a data type devxnat has no rows of, answers 500 as XNAT does when a
search cannot run. Criteria: ``=``, ``!=``/``<>``, ``LIKE`` (``%``, ``_``), ``<``, ``<=``, ``>``,
``>=``, nested ``child_set``\\ s with ``AND``/``OR``.

The plugin (:func:`plugin_can_read`, :func:`plugin_data_paths`): a start from a stored search is
the user's when XNAT lists them among its allowed users (``XDATUser.getStoredSearch`` through
``DefaultPermissionsHelper.canReadStoredSearch``; a bundle ``@…``: any user, or the project's
readers when a project is given), and its data mounts are the start's project folders
(``getStoredSearchPaths`` → ``getProjectPaths``), whatever the search finds.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Iterable, Mapping
from html import escape
from pathlib import Path
from typing import Any

from . import listing_formats
from . import plugin_configs as pc
from .access import Access
from .errors import BadRequest, Forbidden, InternalError, NotFound
from .handler import BaseHandler
from .store import GROUP_SUFFIX, Store

XDAT_NS = "http://nrg.wustl.edu/security"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
#: ``xdat_meta_element`` id of ``xdat:stored_search`` (the list's ``extension`` column)
EXTENSION = "77"
LIST_TITLE = "Stored Searches"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS stored_searches (
        id TEXT PRIMARY KEY,
        brief_description TEXT NOT NULL DEFAULT '',
        description TEXT NOT NULL DEFAULT '',
        root_element_name TEXT NOT NULL,
        tag TEXT,
        secure INTEGER NOT NULL DEFAULT 1,
        allow_diff_columns INTEGER NOT NULL DEFAULT 0,
        fields TEXT NOT NULL DEFAULT '[]',
        search_where TEXT NOT NULL DEFAULT '{}',
        info INTEGER NOT NULL DEFAULT 0)""",
    """CREATE TABLE IF NOT EXISTS stored_search_users (
        search_id TEXT NOT NULL REFERENCES stored_searches(id),
        login TEXT NOT NULL,
        PRIMARY KEY (search_id, login))""",
    """CREATE TABLE IF NOT EXISTS stored_search_groups (
        search_id TEXT NOT NULL REFERENCES stored_searches(id),
        groupid TEXT NOT NULL,
        PRIMARY KEY (search_id, groupid))""",
)


# -- the definition ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Field:
    """One ``xdat:search_field``: a display field of a data type."""

    element: str
    field_id: str
    header: str = ""
    type: str = "string"


@dataclasses.dataclass(frozen=True)
class Where:
    """``xdat:search_where`` / ``xdat:child_set``: criteria ``(schema_field, comparison, value)``."""

    method: str = "AND"
    criteria: tuple[tuple[str, str, str], ...] = ()
    children: tuple["Where", ...] = ()

    def to_doc(self) -> dict:
        return {"method": self.method, "criteria": [list(c) for c in self.criteria],
                "children": [c.to_doc() for c in self.children]}

    @classmethod
    def from_doc(cls, doc: Mapping) -> "Where":
        return cls(str(doc.get("method") or "AND"), tuple(tuple(c) for c in doc.get("criteria") or ()),
                   tuple(cls.from_doc(c) for c in doc.get("children") or ()))


@dataclasses.dataclass(frozen=True)
class SearchDef:
    """One stored search as XNAT keeps it."""

    id: str
    root: str
    brief_description: str = ""
    description: str = ""
    tag: str | None = None            #: the project it belongs to (None: site-wide)
    secure: bool = True
    fields: tuple[Field, ...] = ()
    where: Where = Where()
    users: tuple[str, ...] = ()       #: ``xdat:allowed_user/xdat:login``
    groups: tuple[str, ...] = ()      #: ``xdat:allowed_groups/xdat:groupID`` (``NEURO_MRI_member``)

    @property
    def bundle(self) -> bool:
        return self.id.startswith("@")


def ensure_schema(store: Store) -> None:
    """The stored-search tables (statement by statement: safe inside an open transaction)."""
    db = store.db
    for statement in _SCHEMA:
        db.execute(statement)


def add_search(store: Store, search: SearchDef) -> None:
    """Store *search* (replacing one of the same id)."""
    with store.tx() as db:
        ensure_schema(store)
        info = db.execute("SELECT COALESCE(MAX(info), 0) + 1 FROM stored_searches").fetchone()[0]
        db.execute("DELETE FROM stored_search_users WHERE search_id=?", (search.id,))
        db.execute("DELETE FROM stored_search_groups WHERE search_id=?", (search.id,))
        db.execute("INSERT OR REPLACE INTO stored_searches(id, brief_description, description, "
                   "root_element_name, tag, secure, allow_diff_columns, fields, search_where, info) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?)",
                   (search.id, search.brief_description, search.description, search.root, search.tag,
                    int(search.secure), 0, json.dumps([dataclasses.astuple(f) for f in search.fields]),
                    json.dumps(search.where.to_doc()), info))
        db.executemany("INSERT INTO stored_search_users(search_id, login) VALUES (?,?)",
                       [(search.id, u) for u in dict.fromkeys(search.users)])
        db.executemany("INSERT INTO stored_search_groups(search_id, groupid) VALUES (?,?)",
                       [(search.id, g) for g in dict.fromkeys(search.groups)])


def remove_search(store: Store, search_id: str) -> None:
    with store.tx() as db:
        ensure_schema(store)
        for table in ("stored_search_users", "stored_search_groups"):
            db.execute(f"DELETE FROM {table} WHERE search_id=?", (search_id,))
        db.execute("DELETE FROM stored_searches WHERE id=?", (search_id,))


def _from_row(store: Store, row) -> SearchDef:
    users = tuple(r[0] for r in store.db.execute(
        "SELECT login FROM stored_search_users WHERE search_id=? ORDER BY login", (row["id"],)))
    groups = tuple(r[0] for r in store.db.execute(
        "SELECT groupid FROM stored_search_groups WHERE search_id=? ORDER BY groupid", (row["id"],)))
    return SearchDef(row["id"], row["root_element_name"], row["brief_description"], row["description"],
                     row["tag"], bool(row["secure"]), tuple(Field(*f) for f in json.loads(row["fields"])),
                     Where.from_doc(json.loads(row["search_where"])), users, groups)


def get_search(store: Store, search_id: str) -> SearchDef | None:
    ensure_schema(store)
    row = store.db.execute("SELECT * FROM stored_searches WHERE id=?", (search_id,)).fetchone()
    return _from_row(store, row) if row else None


def all_searches(store: Store) -> list[SearchDef]:
    ensure_schema(store)
    return [_from_row(store, r) for r in store.db.execute("SELECT * FROM stored_searches ORDER BY id")]


def user_groups(store: Store, login: str) -> set[str]:
    """XNAT's group ids of *login* (``NEURO_MRI_member`` …, site groups)."""
    return ({f"{p}_{GROUP_SUFFIX[g]}" for p, g in store.memberships(login).items()}
            | set(store.site_groups(login)))


def listed_for(store: Store, login: str, *, include_tag: str | None = None,
               every: bool = False) -> list[SearchDef]:
    """``SavedSearchListResource``'s selection for *login* (see the module docstring)."""
    searches = all_searches(store)
    if every:
        return searches
    groups = user_groups(store, login)
    out = []
    for s in searches:
        if s.secure and login not in s.users and not groups.intersection(s.groups):
            continue
        if include_tag is None and s.tag is not None:
            continue
        if include_tag == "true" and s.tag is None:
            continue
        if include_tag not in (None, "true") and s.tag != include_tag:
            continue
        out.append(s)
    return out


def list_row(store: Store, search: SearchDef) -> dict[str, str]:
    """One row of the list: the table's columns and ``users`` (``array_agg``: ``{NULL}`` for none)."""
    info = store.db.execute("SELECT info FROM stored_searches WHERE id=?", (search.id,)).fetchone()
    users = "{" + ",".join(search.users or ("NULL",)) + "}"
    return {"id": search.id, "brief_description": search.brief_description,
            "description": search.description, "root_element_name": search.root,
            "sort_by_element_name": "", "sort_by_field_id": "", "allow_diff_columns": "0",
            "secure": "1" if search.secure else "0", "tag": search.tag or "", "layeredsequence": "",
            "extension": EXTENSION, "stored_search_info": str(info[0] if info else ""), "users": users}


def definition_xml(search: SearchDef) -> str:
    """The ``xdat:bundle`` XNAT writes for *search* (``ItemXMLRepresentation``)."""
    attrs = [f'ID="{escape(search.id)}"', 'allow-diff-columns="0"',
             f'secure="{1 if search.secure else 0}"']
    if search.brief_description:
        attrs.append(f'brief-description="{escape(search.brief_description)}"')
    if search.description:
        attrs.append(f'description="{escape(search.description)}"')
    if search.tag:
        attrs.append(f'tag="{escape(search.tag)}"')
    out = ['<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n',
           f'<xdat:bundle {" ".join(attrs)} xmlns:xdat="{XDAT_NS}" xmlns:xsi="{XSI_NS}">',
           f"<xdat:root_element_name>{escape(search.root)}</xdat:root_element_name>"]
    for i, f in enumerate(search.fields):
        out.append(f"<xdat:search_field><xdat:element_name>{escape(f.element)}</xdat:element_name>"
                   f"<xdat:field_ID>{escape(f.field_id)}</xdat:field_ID><xdat:sequence>{i}</xdat:sequence>"
                   f"<xdat:type>{escape(f.type)}</xdat:type><xdat:header>{escape(f.header)}</xdat:header>"
                   "</xdat:search_field>")
    if search.where.criteria or search.where.children:
        out.append(_where_xml(search.where, "search_where"))
    for login in search.users:
        out.append(f"<xdat:allowed_user><xdat:login>{escape(login)}</xdat:login></xdat:allowed_user>")
    for group in search.groups:
        out.append(f"<xdat:allowed_groups><xdat:groupID>{escape(group)}</xdat:groupID></xdat:allowed_groups>")
    out.append("</xdat:bundle>")
    return "".join(out)


def _where_xml(where: Where, tag: str) -> str:
    parts = [f'<xdat:{tag} method="{escape(where.method)}">']
    for field, op, value in where.criteria:
        parts.append(f'<xdat:criteria override_value_formatting="0"><xdat:schema_field>{escape(field)}'
                     f"</xdat:schema_field><xdat:comparison_type>{escape(op)}</xdat:comparison_type>"
                     f"<xdat:value>{escape(value)}</xdat:value></xdat:criteria>")
    parts.extend(_where_xml(c, "child_set") for c in where.children)
    parts.append(f"</xdat:{tag}>")
    return "".join(parts)


# -- running a search ----------------------------------------------------------------------------

def _kind(root: str) -> str | None:
    """Which of devxnat's rows a data type's search runs over."""
    if root == pc.PROJECT:
        return "project"
    if root == pc.SUBJECT:
        return "subject"
    if root in ("xnat:experimentData", "xnat:subjectAssessorData", "xnat:imageSessionData") \
            or (root.startswith("xnat:") and root.endswith("SessionData")):
        return "experiment"
    if root == pc.IMAGE_SCAN or (root.startswith("xnat:") and root.endswith("ScanData")):
        return "scan"
    return None


#: display fields devxnat knows, per kind of row: field id → the row's value
_EXPERIMENT = {"LABEL": "label", "PROJECT": "project", "DATE": "date", "SUBJECT_ID": "subject_id",
               "SUBJECT_LABEL": "subject_label", "INSERT_DATE": "insert_date", "INSERT_USER": "insert_user"}
FIELDS: dict[str, dict[str, str]] = {
    "project": {"ID": "id", "NAME": "name", "DESCRIPTION": "description", "SECONDARY_ID": "secondary_id",
                "PI": "pi_lastname"},
    "subject": {"SUBJECT_ID": "id", "SUBJECTID": "id", "SUBJECT_LABEL": "label", "PROJECT": "project",
                "GENDER": "gender", "GENDER_TEXT": "gender_text", "DOB": "yob",
                "INSERT_DATE": "insert_date", "INSERT_USER": "insert_user"},
    "session": {"SESSION_ID": "id", **_EXPERIMENT},
    "experiment": {"EXPT_ID": "id", **_EXPERIMENT},
    "scan": {"ID": "scan_id", "TYPE": "type", "SERIES_DESCRIPTION": "series_description",
             "QUALITY": "quality", "IMAGE_SESSION_ID": "experiment_id", "PROJECT": "project"},
}
#: the fields a field's HTML link inserts (``InsertValue``), added as hidden columns
_LINKED = {
    ("session", "LABEL"): ("SESSION_ID", "INSERT_DATE", "INSERT_USER"),
    ("experiment", "LABEL"): ("EXPT_ID", "INSERT_DATE", "INSERT_USER"),
    ("subject", "SUBJECT_LABEL"): ("SUBJECTID", "INSERT_DATE", "INSERT_USER"),
}
#: what ``@type`` (a data bundle) shows: the type's ``listing`` display, as far as devxnat has it
_LISTING = {"project": ("ID", "NAME"), "subject": ("SUBJECT_LABEL", "GENDER", "DOB"),
            "session": ("LABEL", "DATE", "PROJECT"), "experiment": ("LABEL", "DATE", "PROJECT"),
            "scan": ("ID", "TYPE", "SERIES_DESCRIPTION")}


def _field_kind(root: str) -> str:
    kind = _kind(root)
    if kind == "experiment":
        return "session" if root.endswith("SessionData") else "experiment"
    return kind or ""


def bundle(search_id: str) -> SearchDef | None:
    """The data bundle ``@type`` (``DisplaySearch.convertToStoredSearch``), or None for an
    unknown type."""
    root = search_id[1:]
    kind = _field_kind(root)
    if not kind:
        return None
    return SearchDef(search_id, root, root, "", None, False,
                     tuple(Field(root, f, f.replace("_", " ").title()) for f in _LISTING[kind]))


def _rows(store: Store, root: str) -> list[dict]:
    """Every row of the search's data type, with the values devxnat's display fields read."""
    kind = _kind(root)
    if kind == "project":
        return [dict(p) for p in store.projects()]
    if kind == "subject":
        return [{**dict(s), "gender_text": {"male": "M", "female": "F"}.get(s["gender"], "U")}
                for p in store.projects() for s in store.subjects(p["id"])]
    if kind == "experiment":
        exps = [dict(e) for e in store.experiments()]
        concrete = root.startswith("xnat:") and root.endswith("SessionData") and root != "xnat:imageSessionData"
        return [e for e in exps if not concrete or e["xsi_type"] == root]
    if kind == "scan":
        out = []
        for e in store.experiments():
            for sc in store.scans(e["id"]):
                if root == pc.IMAGE_SCAN or sc["xsi_type"] == root:
                    out.append({**dict(sc), "project": e["project"], "subject_id": e["subject_id"]})
        return out
    raise InternalError(f"The search's data type {root} is not one devxnat has rows of")


def _value(store: Store, root: str, row: Mapping, element: str, field_id: str) -> Any:
    """The value of *element*'s display field *field_id* for a row of *root*."""
    kind = _field_kind(root)
    if element == root or (kind in ("session", "experiment") and element == "xnat:experimentData"):
        name = FIELDS[kind].get(field_id.upper())
        if name is None:
            raise InternalError(f"Display field {field_id} of {element} is not known to devxnat")
        return row.get(name)
    if element == pc.SUBJECT and kind in ("session", "experiment", "scan"):
        subject = store.subject_by_id(row["subject_id"])
        name = FIELDS["subject"].get(field_id.upper())
        if subject is None or name is None:
            raise InternalError(f"Display field {field_id} of {element} is not known to devxnat")
        return dict(subject).get(name)
    raise InternalError(f"A field of {element} in a search of {root} is not known to devxnat")


def _criterion_value(store: Store, root: str, row: Mapping, schema_field: str) -> Any:
    """The value of a criterion's field of the search's data type: a schema path
    (``xnat:mrSessionData/label``) or a display field (``xnat:subjectData.GENDER_TEXT``)."""
    cut = min((i for i in (schema_field.find("/"), schema_field.find(".")) if i > 0), default=-1)
    element, path = (schema_field[:cut], schema_field[cut + 1:].strip()) if cut > 0 else ("", "")
    kind = _field_kind(root)
    if element == root or (element == "xnat:experimentData" and kind in ("session", "experiment")):
        fields = FIELDS.get(kind, {})
        for fid, name in fields.items():
            if fid.lower() == path.lower():
                return row.get(name)
        plain = {"id": "scan_id" if kind == "scan" else "id", "modality": "modality"}
        name = plain.get(path.lower(), path.lower())
        if name in row:
            return row.get(name)
    raise InternalError(f"Criterion field {schema_field} is not known to devxnat")


def _like(value: str, pattern: str) -> bool:
    """SQL ``LIKE``: ``%`` any run, ``_`` one character."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, flags=re.DOTALL) is not None


_OPS: dict[str, Callable[[str, str], bool]] = {
    "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<>": lambda a, b: a != b,
    "LIKE": _like, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b, ">=": lambda a, b: a >= b,
}


def _matches(store: Store, root: str, row: Mapping, where: Where) -> bool:
    results = []
    for field, op, value in where.criteria:
        test = _OPS.get(op.strip().upper())
        if test is None:
            raise InternalError(f"Comparison {op} is not known to devxnat")
        got = _criterion_value(store, root, row, field)
        results.append(test("" if got is None else str(got), str(value)))
    results.extend(_matches(store, root, row, c) for c in where.children)
    if not results:
        return True
    return any(results) if where.method.upper() == "OR" else all(results)


def _project_of(root: str, row: Mapping) -> str:
    return row["id"] if _kind(root) == "project" else row["project"]


def _columns(search: SearchDef) -> list[tuple[str, Field, bool]]:
    """``(key, field, visible)`` of the result columns, in order, each key once."""
    kind = _field_kind(search.root)
    out: dict[str, tuple[str, Field, bool]] = {}
    for f in search.fields:
        key = _key(search.root, f.element, f.field_id)
        out.setdefault(key, (key, f, True))
        for linked in _LINKED.get((kind, f.field_id.upper()), ()) if f.element == search.root else ():
            lf = Field(f.element, linked, linked.replace("_", " ").title())
            lkey = _key(search.root, f.element, linked)
            out.setdefault(lkey, (lkey, lf, False))
    return list(out.values())


def _key(root: str, element: str, field_id: str) -> str:
    if element == root:
        return field_id.lower()
    return f"{element.replace(':', '_').lower()}_{field_id.lower()}"


def run_search(store: Store, access: Access, search: SearchDef) -> dict:
    """The search run as *access*'s user: ``{"ResultSet": {"Columns", "Result", "totalRecords"}}``."""
    projects = {p["id"]: p for p in store.projects()}
    columns = _columns(search)
    rows = []
    for row in _rows(store, search.root):
        project = projects.get(_project_of(search.root, row))
        if project is None or not access.can_read(project):
            continue
        if not _matches(store, search.root, row, search.where):
            continue
        values = {}
        for key, f, _visible in columns:
            v = _value(store, search.root, row, f.element, f.field_id)
            values[key] = "" if v is None else str(v)
        rows.append(values)
    props = []
    for key, f, visible in columns:
        prop = {"key": key, "element_name": f.element, "header": f.header or " ", "id": f.field_id,
                "type": f.type, "xPATH": f"{f.element}.{f.field_id}"}
        if not visible:
            prop["visible"] = "false"
        props.append(prop)
    return {"ResultSet": {"Columns": props, "Result": rows, "totalRecords": str(len(rows))}}


# -- who may see a search ------------------------------------------------------------------------

def can_query(store: Store, access: Access, root: str) -> bool:
    """``Permissions.canQuery(user, root)``: the type is one devxnat has, and the user reads some
    project (site admins and the site-wide data groups read all; public projects everyone)."""
    if not _kind(root):
        return False
    return access.all_data or any(access.can_read(p) for p in store.projects())


def readable_definition(store: Store, access: Access, search_id: str) -> SearchDef:
    """The search *search_id* if the caller may read it (``SavedSearchResource.represent``):
    an allowed user, or one who may query its data type; 403 / 404 otherwise."""
    search = bundle(search_id) if search_id.startswith("@") else get_search(store, search_id)
    if search is None:
        raise NotFound("The server has not found anything matching the request URI")
    if access.login not in search.users and not can_query(store, access, search.root):
        raise Forbidden(f"User {access.login} may not read stored search {search_id}")
    return search


# -- XNAT's JupyterHub plugin ---------------------------------------------------------------------

def plugin_can_read(store: Store, access: Access, project_id: str | None, search_id: str) -> bool:
    """``DefaultPermissionsHelper.canReadStoredSearch``: a bundle is anyone's (with a project: its
    readers'); a stored search the user's when XNAT lists them among its allowed users
    (``XDATUser.getStoredSearch``: the searches of ``allowed_user.login``, ids compared ignoring case)."""
    if search_id.startswith("@"):
        if project_id is None:
            return True
        row = store.project(project_id)
        return row is not None and access.can_read(row)
    return any(s.id.lower() == search_id.lower() and access.login in s.users for s in all_searches(store))


def plugin_data_paths(store: Store, access: Access, archive: Path, project_id: str | None) -> dict[str, str]:
    """``getStoredSearchPaths``: the folders of the start's project (every project the user reads
    when none is given) that exist, as ``getProjectPaths`` lists them for a stored search."""
    if project_id:
        wanted = [project_id]
    else:
        wanted = [p["id"] for p in store.projects() if access.can_read(p)]
    out: dict[str, str] = {}
    for pid in wanted:
        row = store.project(pid)
        if row is not None and access.can_read(row):
            out.update(pc.data_paths(archive, "project", pid))
    return out


# -- HTTP --------------------------------------------------------------------------------------

class SavedSearchListHandler(BaseHandler):
    """``GET /data/search/saved``."""

    def get(self):
        acc = self.access()
        login = self.login
        who = self.get_argument("user", None)
        if acc.admin and who:
            if self.store.user(who) is None:
                raise InternalError(f"Unknown user {who}")
            login = who
        include_tag = self.get_argument("includeTag", None)
        if include_tag not in (None, "true") and self.store.project(include_tag) is None:
            raise BadRequest(f"Unknown tag: {include_tag}")
        every = acc.admin and (self.get_argument("all", "") or "").lower() == "true"
        rows = [list_row(self.store, s) for s in listed_for(self.store, login, include_tag=include_tag,
                                                            every=every)]
        doc = {"ResultSet": {"Result": rows, "title": LIST_TITLE}}
        fmt = (self.get_argument("format", "json") or "json").lower()
        if fmt in ("csv", "xml"):
            self.set_header("Content-Type", listing_formats.CONTENT_TYPES[fmt])
            self.finish(listing_formats.render(doc, fmt))
            return
        self.write_json(doc)


class SavedSearchHandler(BaseHandler):
    """``GET /data/search/saved/{id}`` (definition) and ``…/{id}/results`` (the search run)."""

    def get(self, search_id: str, results: str | None = None):
        search = readable_definition(self.store, self.access(), search_id)
        fmt = (self.get_argument("format", "") or "").lower()
        if results is None:
            if fmt not in ("", "xml"):  # the resource's only variant is text/xml
                raise NotFound("The server has not found anything matching the request URI")
            self.set_header("Content-Type", "text/xml;charset=UTF-8")
            self.finish(definition_xml(search))
            return
        doc = run_search(self.store, self.access(), search)
        if fmt == "json":
            self.write_json(doc)
        elif fmt == "csv":
            self.set_header("Content-Type", listing_formats.CONTENT_TYPES["csv"])
            self.set_header("Content-Disposition", 'attachment; filename="results.csv"')
            self.finish(listing_formats.render(doc, "csv"))
        elif fmt in ("", "xml"):
            self.set_header("Content-Type", listing_formats.CONTENT_TYPES["xml"])
            self.finish(listing_formats.render(doc, "xml"))
        else:
            raise NotFound("The server has not found anything matching the request URI")


def routes() -> list[tuple[str, type]]:
    """The stored-search routes, under ``/data`` and ``/REST`` (before the archive's catch-all)."""
    base = r"/(?:data|REST)/search/saved"
    return [(rf"{base}/?", SavedSearchListHandler),
            (rf"{base}/([^/]+)/?", SavedSearchHandler),
            (rf"{base}/([^/]+)/(results)/?", SavedSearchHandler)]


# -- the demo's searches --------------------------------------------------------------------------

#: seeded with the demo archive (:func:`devxnat.demo.generate_demo`)
NEURO_FIRST_VISITS = SearchDef(
    "xs1700000000001", "xnat:mrSessionData", "NEURO_MRI first visits",
    "MR sessions of each subject's first visit", "NEURO_MRI", True,
    (Field("xnat:mrSessionData", "LABEL", "Session"), Field("xnat:subjectData", "SUBJECT_LABEL", "Subject"),
     Field("xnat:mrSessionData", "DATE", "Date"), Field("xnat:mrSessionData", "PROJECT", "Project")),
    Where("AND", (("xnat:mrSessionData/label", "LIKE", "%_MR1"),)), ("alice", "bob"))
FIRST_VISITS = SearchDef(
    "xs1700000000002", "xnat:imageSessionData", "First visits, every modality",
    "Every project's first-visit sessions (MR, EEG, ECG)", None, True,
    (Field("xnat:imageSessionData", "LABEL", "Session"), Field("xnat:imageSessionData", "PROJECT", "Project"),
     Field("xnat:imageSessionData", "DATE", "Date")),
    Where("OR", (("xnat:imageSessionData/label", "LIKE", "%_MR1"),
                 ("xnat:imageSessionData/label", "LIKE", "%_EEG1"),
                 ("xnat:imageSessionData/label", "LIKE", "%_ECG1"))), ("alice", "bob"))
DEMO_SEARCHES = (NEURO_FIRST_VISITS, FIRST_VISITS)


def seed_demo(store: Store, searches: Iterable[SearchDef] = DEMO_SEARCHES) -> None:
    """Store the demo's stored searches (inside the demo's transaction)."""
    for search in searches:
        add_search(store, search)
