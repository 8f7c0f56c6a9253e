"""What a user asked for: parse spawn requests from the form, the REST API and XNAT.

Three shapes reach a spawner's ``user_options``; each is parsed by a pure
function into one :class:`SpawnRequest`, and nothing else of ``user_options``
is used anywhere:

* the spawn **form** (``options_from_form``)::

      profile=slurm-cpu  project=NEURO_MRI  project=SLEEP_EEG

* the **REST API** (``POST /hub/api/users/{u}/servers/{name}`` with JSON)::

      {"profile": "slurm-cpu", "projects": ["NEURO_MRI"]}            (or "NEURO_MRI,SLEEP_EEG")
      {"profile": "local-small", "projects": {"SLEEP_EEG": {"subjects": ["SLEEP_EEG_S001"]}}}
      {"profile": "local-small", "scope": "{\\"projects\\": {...}}"}      (the stored, flat form)

* XNAT's own **"Start Jupyter"** button: the XNAT JupyterHub plugin POSTs its
  ``XnatUserOptions`` exactly (``models/XnatUserOptions.java``; every key, nulls included)::

      {"userId": 12, "servername": null, "xsiType": "xnat:mrSessionData", "itemId": "XNAT_E00001",
       "itemLabel": "MR_S001_01", "projectId": "NEURO_MRI", "eventTrackingId": "...",
       "dashboardConfigId": null, "task_template": null}

  The scope becomes that item (project, subject or experiment: ``xnat:experimentData`` or any
  concrete experiment type). The hardware, image and XNAT-issued token are fetched back from
  XNAT at start (:mod:`spawner.xnat_launch`). A stored search (``xdat:stored_search``, ``itemId``
  the search, ``projectId`` where it was started) is scoped at start to the search's items the user
  may read in that project (:mod:`spawner.stored_search`). Dashboards are refused with a message
  XNAT shows.

**Stored flat.** XNAT reads ``user_options`` of every server (``GET /hub/api/users[/{u}]``)
as ``Map<String,String>``; :func:`flat_options` is what the hub stores for every kind of start
(string or null values only) and :func:`parse_request` reads it back unchanged.

Validation here is about shape only (ids, known keys, sizes); whether the user
may read what they asked for is decided by XNAT at start (:mod:`spawner.mixin`).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope, check_id

#: most projects one server may be scoped to (keeps mounts and forms sane)
MAX_PROJECTS = 50
#: the keys of the plugin's ``XnatUserOptions`` body, exactly; xsiType/itemId/projectId required
XNAT_LAUNCH_KEYS = frozenset({"userId", "servername", "xsiType", "itemId", "itemLabel", "projectId",
                              "eventTrackingId", "dashboardConfigId", "task_template"})
#: what the hub's plugin API (:mod:`hub_ext.plugin_gateway`) adds to a start's body: the XNAT
#: login it was made for (the spawner checks that it maps to the user it starts)
GATEWAY_KEYS = frozenset({"xnatLogin"})
REST_KEYS = frozenset({"profile", "projects", "scope"})
PROJECT_TYPE = "xnat:projectData"
SUBJECT_TYPE = "xnat:subjectData"
EXPERIMENT_TYPE = "xnat:experimentData"
STORED_SEARCH_TYPE = "xdat:stored_search"
#: :attr:`XnatItem.kind` of a start from a stored search; its scope is decided at start
#: (:mod:`spawner.stored_search`), from :data:`UNRESOLVED` (nothing) to the search's items
STORED_SEARCH_KIND = "stored search"


@dataclasses.dataclass(frozen=True)
class XnatItem:
    """The XNAT item a launch from XNAT's UI is about."""

    xsi_type: str
    item_id: str
    project: str
    label: str = ""
    event_tracking_id: str = ""
    user_id: str = ""       #: XNAT's numeric user id (``userId``), as text
    servername: str = ""    #: the server name the plugin sent ("" = the default server)
    login: str = ""         #: the XNAT login the plugin started it for (the gateway's ``xnatLogin``)

    @property
    def kind(self) -> str:
        """``project``, ``subject``, ``experiment`` or ``stored search`` (:data:`STORED_SEARCH_KIND`)."""
        if self.xsi_type == PROJECT_TYPE:
            return "project"
        if self.xsi_type == SUBJECT_TYPE:
            return "subject"
        if self.xsi_type == STORED_SEARCH_TYPE:
            return STORED_SEARCH_KIND
        return "experiment"


@dataclasses.dataclass(frozen=True)
class SpawnRequest:
    """A parsed request: a profile slug (``None`` = the default) and the scope asked for."""

    profile: str | None
    scope: Scope
    source: str  # "form" | "rest" | "xnat"
    xnat_item: XnatItem | None = None
    hardware: str | None = None  #: the plugin hardware's name (from XNAT's user options), mapped by xnat_hardware

    @property
    def projects(self) -> list[str]:
        return sorted(self.scope.projects or {})


def _text(value: Any, what: str, limit: int = 200) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidRequest(f"{what} must be text, got {type(value).__name__}")
    value = str(value).strip()
    if len(value) > limit:
        raise InvalidRequest(f"{what} is too long (at most {limit} characters)")
    return value


def _profile(value: Any) -> str | None:
    if value in (None, ""):
        return None
    slug = _text(value, "profile", 40)
    return slug or None


def _scope(projects: Any) -> Scope:
    if projects in (None, "", [], {}):
        raise InvalidRequest("select at least one XNAT project to work on")
    if isinstance(projects, str):
        projects = projects.split(",")
    if isinstance(projects, (list, tuple)):
        if not all(isinstance(p, str) for p in projects):
            raise InvalidRequest("projects must be XNAT project ids (text)")
        projects = [p for p in dict.fromkeys(p.strip() for p in projects) if p]
        if not projects:
            raise InvalidRequest("select at least one XNAT project to work on")
    if len(projects) > MAX_PROJECTS:
        raise InvalidRequest(f"at most {MAX_PROJECTS} projects per server, got {len(projects)}")
    return Scope.of(projects)


def _stored_scope(text: Any) -> Scope:
    """The flat form's ``scope`` (a JSON string, :meth:`Scope.to_json`)."""
    if not isinstance(text, str):
        raise InvalidRequest('scope must be a JSON string like {"projects": {"P": {"subjects": ["S"]}}}')
    scope = Scope.from_json(text)
    if not scope.restricted or not scope.projects:
        raise InvalidRequest("select at least one XNAT project to work on")
    if len(scope.projects) > MAX_PROJECTS:
        raise InvalidRequest(f"at most {MAX_PROJECTS} projects per server, got {len(scope.projects)}")
    return scope


def parse_form(form: Mapping[str, list]) -> dict:
    """``options_from_form``: the form's lists of strings → flat ``user_options``
    (``{"profile": slug, "projects": "A,B"}``, the same as :func:`flat_options` stores)."""
    unknown = set(form) - {"profile", "project", "_xsrf"}
    if unknown:
        raise InvalidRequest(f"unexpected form fields: {', '.join(sorted(unknown))}")
    projects = [_text(p, "project", 100) for p in form.get("project", [])]
    for p in projects:
        check_id(p, "project")
    options: dict = {"projects": ",".join(dict.fromkeys(projects))}
    profile = _profile(form.get("profile"))
    if profile:
        options["profile"] = profile
    return options


def _optional_text(options: Mapping[str, Any], key: str, limit: int = 100) -> str:
    value = options.get(key)
    return "" if value is None else _text(value, key, limit)


# -- stored searches -----------------------------------------------------------------------------
#: the scope of a start from a stored search until the hub has asked XNAT for the search's items
#: (:func:`spawner.stored_search.resolve_stored_search`): nothing. A plan is never made from it
#: (:func:`spawner.decide.build_plan` refuses), so a start that skipped that step fails closed.
UNRESOLVED = Scope({})
#: a stored search's id (``xs1700000000001``, or what a client PUT it as) or a data bundle's
#: (``@xnat:mrSessionData``: every item of that type), as the plugin's UI posts it
_SEARCH_ID_RE = re.compile(r"^(?:@[A-Za-z][A-Za-z0-9_]*:[A-Za-z][A-Za-z0-9_]*|[A-Za-z0-9][A-Za-z0-9_.\-]{0,99})$")


def _stored_search_ref(options: Mapping[str, Any]) -> tuple[str, str]:
    """``itemId`` and ``itemLabel`` of a start from a stored search: the search's id and its
    description as XNAT shows it (free text: ``brief-description``)."""
    search_id = _text(options["itemId"], "itemId", 100)
    if not _SEARCH_ID_RE.match(search_id):
        raise InvalidRequest(f"itemId {search_id!r} is not an XNAT stored search id (like xs1700000000001, "
                             "or @xnat:mrSessionData for a data bundle)", item=search_id[:100])
    label = _optional_text(options, "itemLabel", 255)
    if any(ord(c) < 32 or ord(c) == 127 for c in label):
        raise InvalidRequest("itemLabel of a stored search must be one line of text (no control characters)")
    return search_id, label


def parse_xnat_launch(options: Mapping[str, Any]) -> SpawnRequest:
    """XNAT's "Start Jupyter" body (``XnatUserOptions``) → a request scoped to that one item
    (a stored search: :data:`UNRESOLVED` until the hub resolves it at start)."""
    missing = [k for k in ("xsiType", "itemId", "projectId") if not options.get(k)]
    if missing:
        raise InvalidRequest(f"XNAT launch request lacks {', '.join(missing)}")
    if options.get("dashboardConfigId") not in (None, ""):
        raise InvalidRequest("dashboards are not supported on this hub: start Jupyter without a "
                             "dashboard (XNAT's \"Start Jupyter\" with a compute environment) or ask "
                             "the hub admin")
    if options.get("task_template") not in (None, ""):
        raise InvalidRequest("XNAT launch request carries a task_template; the hub fetches it from "
                             "XNAT itself (the plugin sends task_template: null)")
    xsi_type = _text(options["xsiType"], "xsiType", 100)
    if ":" not in xsi_type or not all(part.replace("_", "").isalnum() for part in xsi_type.split(":", 1)):
        raise InvalidRequest(f"xsiType {xsi_type!r} is not an XNAT data type like xnat:mrSessionData")
    stored = xsi_type == STORED_SEARCH_TYPE  # itemId: the search; projectId: where it was started
    if not stored and (xsi_type.startswith("xdat:") or xsi_type == "xnat:imageScanData"
                       or xsi_type.endswith("ScanData")):
        raise InvalidRequest(f"starting a server for a {xsi_type} is not supported; start it from a "
                             "project, subject or experiment")
    project = check_id(_text(options["projectId"], "projectId", 100), "project")
    if stored:
        item_id, label = _stored_search_ref(options)
    else:
        item_id = check_id(_text(options["itemId"], "itemId", 100), "itemId")
        label = _optional_text(options, "itemLabel")
        if label:
            check_id(label, "itemLabel")
    user_id = _optional_text(options, "userId", 20)
    if user_id and not user_id.isdigit():
        raise InvalidRequest(f"userId {user_id!r} must be XNAT's numeric user id")
    item = XnatItem(xsi_type, item_id, project, label, _optional_text(options, "eventTrackingId"),
                    user_id, _optional_text(options, "servername", 255),
                    _optional_text(options, "xnatLogin", 255))
    if item.kind == "project":
        if item_id != project:
            raise InvalidRequest(f"itemId {item_id!r} of a project launch must equal projectId {project!r}")
        scope = Scope.of([project])
    elif item.kind == "subject":
        scope = Scope.of({project: {"subjects": [item_id]}})
    elif item.kind == STORED_SEARCH_KIND:
        scope = UNRESOLVED
    else:
        scope = Scope.of({project: {"experiments": [item_id]}})
    return SpawnRequest(None, scope, "xnat", item)


def parse_request(options: Mapping[str, Any] | None) -> SpawnRequest:
    """``user_options`` (from the form, REST or XNAT) → :class:`SpawnRequest`; InvalidRequest otherwise."""
    options = dict(options or {})
    if not options:
        raise InvalidRequest("no options given: choose a profile and at least one XNAT project "
                             '(REST: {"profile": "<slug>", "projects": ["<project id>"]})')
    if "xsiType" in options or "itemId" in options:
        unknown = set(options) - XNAT_LAUNCH_KEYS - GATEWAY_KEYS
        if unknown:
            raise InvalidRequest(f"unknown options in XNAT launch request: {', '.join(sorted(unknown))}; "
                                 f"allowed: {', '.join(sorted(XNAT_LAUNCH_KEYS))}")
        return parse_xnat_launch(options)
    unknown = set(options) - REST_KEYS
    if unknown:
        raise InvalidRequest(f"unknown options: {', '.join(sorted(unknown))}; "
                             "allowed: profile, projects (or XNAT's xsiType/itemId/projectId)")
    if "scope" in options:
        if options.get("projects") not in (None, ""):
            raise InvalidRequest("give either projects or scope, not both")
        return SpawnRequest(_profile(options.get("profile")), _stored_scope(options["scope"]), "rest")
    return SpawnRequest(_profile(options.get("profile")), _scope(options.get("projects")), "rest")


def flat_options(request: SpawnRequest) -> dict[str, str | None]:
    """What the hub stores as ``user_options`` for *request*: string or null values only
    (XNAT reads them as ``Map<String,String>``), and :func:`parse_request` reads them back.

    * form / REST with whole projects: ``{"profile": slug|None, "projects": "A,B"}``
    * REST with a narrowed scope: ``{"profile": slug|None, "scope": "<Scope JSON>"}``
    * XNAT: the plugin's own keys, ``userId`` as text, ``dashboardConfigId``/``task_template`` null
    """
    item = request.xnat_item
    if item is not None:
        return {"userId": item.user_id or None, "servername": item.servername or None,
                "xsiType": item.xsi_type, "itemId": item.item_id, "itemLabel": item.label or None,
                "projectId": item.project, "eventTrackingId": item.event_tracking_id or None,
                "dashboardConfigId": None, "task_template": None,
                **({"xnatLogin": item.login} if item.login else {})}
    projects = request.scope.projects or {}
    if all(ps.whole for ps in projects.values()):
        return {"profile": request.profile, "projects": ",".join(sorted(projects))}
    return {"profile": request.profile, "scope": request.scope.to_json()}


def selected_projects(options: Mapping[str, Any] | None) -> list[str]:
    """The projects of stored ``user_options`` (to pre-select them in the form); [] if unreadable."""
    try:
        return parse_request(options).projects
    except (InvalidRequest, TypeError, AttributeError, ValueError):
        return []
