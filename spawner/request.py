"""What a user asked for: parse spawn requests from the form, the REST API and XNAT.

Three shapes reach a spawner's ``user_options``; each is parsed by a pure
function into one :class:`SpawnRequest`, and nothing else of ``user_options``
is used anywhere:

* the spawn **form** (``options_from_form``)::

      profile=slurm-cpu  project=NEURO_MRI  project=SLEEP_EEG

* the **REST API** (``POST /hub/api/users/{u}/servers/{name}`` with JSON)::

      {"profile": "slurm-cpu", "projects": ["NEURO_MRI"]}
      {"profile": "local-small", "projects": {"SLEEP_EEG": {"subjects": ["SLEEP_EEG_S001"]}}}

* XNAT's own **"Start Jupyter"** button (the XNAT JupyterHub plugin)::

      {"xsiType": "xnat:mrSessionData", "itemId": "XNAT_E00001", "itemLabel": "MR_S001_01",
       "projectId": "NEURO_MRI", "eventTrackingId": "...", "hardwareConfigId": 2}

  The scope becomes that item (project, subject or experiment); the profile is
  the one the admin mapped the hardware config id/name to (``xnat_hardware``
  in the profiles file), else the default profile.

Validation here is about shape only (ids, known keys, sizes); whether the user
may read what they asked for is decided by XNAT at start (:mod:`spawner.mixin`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope, check_id

#: most projects one server may be scoped to (keeps mounts and forms sane)
MAX_PROJECTS = 50
#: keys of XNAT's launch request; xsiType/itemId/projectId are required
XNAT_LAUNCH_KEYS = {"xsiType", "itemId", "itemLabel", "projectId", "eventTrackingId",
                    "hardwareConfigId", "hardwareConfigName", "computeEnvironmentConfigId",
                    "dockerImage", "profile"}
REST_KEYS = {"profile", "projects"}
PROJECT_TYPE = "xnat:projectData"
SUBJECT_TYPE = "xnat:subjectData"


@dataclasses.dataclass(frozen=True)
class XnatItem:
    """The XNAT item a launch from XNAT's UI is about."""

    xsi_type: str
    item_id: str
    project: str
    label: str = ""
    event_tracking_id: str = ""

    @property
    def kind(self) -> str:
        """``project``, ``subject`` or ``experiment``."""
        if self.xsi_type == PROJECT_TYPE:
            return "project"
        if self.xsi_type == SUBJECT_TYPE:
            return "subject"
        return "experiment"


@dataclasses.dataclass(frozen=True)
class SpawnRequest:
    """A parsed request: a profile slug (``None`` = the default) and the scope asked for."""

    profile: str | None
    scope: Scope
    source: str  # "form" | "rest" | "xnat"
    xnat_item: XnatItem | None = None
    hardware: str | None = None

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
        projects = [projects]
    if isinstance(projects, (list, tuple)):
        if not all(isinstance(p, str) for p in projects):
            raise InvalidRequest("projects must be XNAT project ids (text)")
        projects = list(dict.fromkeys(p.strip() for p in projects))
    if len(projects) > MAX_PROJECTS:
        raise InvalidRequest(f"at most {MAX_PROJECTS} projects per server, got {len(projects)}")
    return Scope.of(projects)


def parse_form(form: Mapping[str, list]) -> dict:
    """``options_from_form``: the form's lists of strings → REST-shaped ``user_options``."""
    unknown = set(form) - {"profile", "project", "_xsrf"}
    if unknown:
        raise InvalidRequest(f"unexpected form fields: {', '.join(sorted(unknown))}")
    projects = [_text(p, "project", 100) for p in form.get("project", [])]
    for p in projects:
        check_id(p, "project")
    options: dict = {"projects": projects}
    profile = _profile(form.get("profile"))
    if profile:
        options["profile"] = profile
    return options


def parse_xnat_launch(options: Mapping[str, Any]) -> SpawnRequest:
    """XNAT's "Start Jupyter" request → a request scoped to that one item."""
    missing = [k for k in ("xsiType", "itemId", "projectId") if not options.get(k)]
    if missing:
        raise InvalidRequest(f"XNAT launch request lacks {', '.join(missing)}")
    xsi_type = _text(options["xsiType"], "xsiType", 100)
    if ":" not in xsi_type or not all(part.replace("_", "").isalnum() for part in xsi_type.split(":", 1)):
        raise InvalidRequest(f"xsiType {xsi_type!r} is not an XNAT data type like xnat:mrSessionData")
    if xsi_type.startswith("xdat:") or xsi_type == "xnat:imageScanData" or xsi_type.endswith("ScanData"):
        raise InvalidRequest(f"starting a server for a {xsi_type} is not supported; start it from a "
                             "project, subject or experiment")
    project = check_id(_text(options["projectId"], "projectId", 100), "project")
    item_id = check_id(_text(options["itemId"], "itemId", 100), "itemId")
    label = _text(options.get("itemLabel") or "", "itemLabel", 100)
    if label:
        check_id(label, "itemLabel")
    item = XnatItem(xsi_type, item_id, project, label,
                    _text(options.get("eventTrackingId") or "", "eventTrackingId", 100))
    if item.kind == "project":
        if item_id != project:
            raise InvalidRequest(f"itemId {item_id!r} of a project launch must equal projectId {project!r}")
        scope = Scope.of([project])
    elif item.kind == "subject":
        scope = Scope.of({project: {"subjects": [item_id]}})
    else:
        scope = Scope.of({project: {"experiments": [item_id]}})
    hardware = None
    for key in ("hardwareConfigId", "computeEnvironmentConfigId", "hardwareConfigName"):
        if options.get(key) not in (None, ""):
            hardware = _text(options[key], key, 100)
            break
    return SpawnRequest(_profile(options.get("profile")), scope, "xnat", item, hardware)


def parse_request(options: Mapping[str, Any] | None) -> SpawnRequest:
    """``user_options`` (from the form, REST or XNAT) → :class:`SpawnRequest`; InvalidRequest otherwise."""
    options = dict(options or {})
    if not options:
        raise InvalidRequest("no options given: choose a profile and at least one XNAT project "
                             '(REST: {"profile": "<slug>", "projects": ["<project id>"]})')
    if "xsiType" in options or "itemId" in options:
        unknown = set(options) - XNAT_LAUNCH_KEYS
        if unknown:
            raise InvalidRequest(f"unknown options in XNAT launch request: {', '.join(sorted(unknown))}")
        return parse_xnat_launch(options)
    unknown = set(options) - REST_KEYS
    if unknown:
        raise InvalidRequest(f"unknown options: {', '.join(sorted(unknown))}; "
                             "allowed: profile, projects (or XNAT's xsiType/itemId/projectId)")
    return SpawnRequest(_profile(options.get("profile")), _scope(options.get("projects")), "rest")
