"""A start from XNAT's "Start Jupyter": the user options XNAT stored, and what the hub makes of them.

XNAT's JupyterHub plugin POSTs only the item to the hub (:mod:`spawner.request`); the
hardware, the environment and an alias token it issued for the user stay in XNAT, and the
hub fetches them back (``GET /xapi/jupyterhub/users/{u}/server[/{name}]/user-options``, as
an account with XNAT's ``JupyterHub`` role; :meth:`hub_ext.xnat_api.XnatHubClient.plugin_user_options`).

:func:`parse_launch` turns that JSON into a frozen :class:`XnatLaunch`; :func:`apply_hardware`
maps its ``task_template.resources`` onto the admin's profile. Both are pure.

The mapping (docs/admin.md, "XNAT's Start Jupyter"):

======================================  ===============================================================
plugin (``task_template``)              this hub
======================================  ===============================================================
``resources.cpu_limit`` (cores, float)  ``cpus`` = ⌈cpu_limit⌉ (Slurm ``--cpus-per-task``, k8s request);
                                        k8s ``cpu_limit`` = cpu_limit. Over the profile's ``cpus``
                                        (k8s: its ``cpu_limit`` if set) → refused
``resources.cpu_reservation``           used for ``cpus`` when ``cpu_limit`` is 0 / absent
``resources.mem_limit`` ("4G")          ``memory`` (Slurm ``--mem``, k8s request; k8s ``mem_limit``);
                                        over the profile's ``memory`` → refused; a profile without
                                        ``memory`` keeps the backend default (logged)
``resources.mem_reservation``           used for ``memory`` when ``mem_limit`` is empty
``resources.generic_resources.gpu``     ``gpus`` (Slurm ``--gres=gpu:N``, k8s ``nvidia.com/gpu``);
                                        over the profile's ``gpus`` → refused; other generic
                                        resources are ignored (logged)
``placement.constraints``               ignored (logged): the profile's ``constraint`` /
                                        ``node_selector`` decide placement
``container_spec.image``                the profile's image is used; a different image is ignored
                                        (logged)
``container_spec.command``              ignored: the hub runs ``jupyterhub-singleuser`` itself
``container_spec.env`` XNAT_USER/PASS   the user's XNAT credential for this server (validated
                                        with XNAT, must belong to the user)
``container_spec.env`` of the plugin    :data:`PLUGIN_ENV` (XNAT_HOST, XNAT_DATA, XNAT_XSI_TYPE,
                                        XNAT_ITEM_ID, JUPYTERHUB_ROOT_DIR, XDG_CONFIG_HOME), in every
                                        stored start: the hub sets each itself, from its plan
``container_spec.env`` hardware name    ``XNAT_HPC_HARDWARE``: the profile chooser (``xnat_hardware``)
``container_spec.env`` other            the compute environment's and hardware's own variables:
                                        passed to the server (:attr:`XnatLaunch.env`); a reserved
                                        name (:func:`reserved_env`) refuses the start, by name
``container_spec.mounts`` read-only     XNAT's list of the item's folders that exist (the plugin
data mounts (``/data/projects/…``)      mounts only those): what is missing is skipped; the
                                        archive sub-path (``{P}/arc001/…``) is taken from XNAT's
                                        source (:func:`archive_paths`), never the source itself
``container_spec.mounts`` other         never used (the workspace is the backend's, other host paths
                                        are not bound)
``xsiType``                             XNAT stores the general type (:func:`general_xsi_type`);
                                        it must agree with the type posted
======================================  ===============================================================
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

from hub_ext.profiles import Profile
from hub_ext.xnat_api import AliasToken
from xnat_bridge.errors import InvalidRequest, PermissionDenied
from xnat_bridge.units import format_memory, parse_memory

from .plan import PLUGIN_DATA, WORKSPACE_ROOT, is_arc_folder
from .request import (
    EXPERIMENT_TYPE,
    PROJECT_TYPE,
    STORED_SEARCH_KIND,
    STORED_SEARCH_TYPE,
    SUBJECT_TYPE,
    SpawnRequest,
    XnatItem,
)

#: the hardware config's environment variable that names the hub profile (via ``xnat_hardware``)
HARDWARE_ENV = "XNAT_HPC_HARDWARE"
_UNIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt])(?:i?[Bb]?)?\s*$")

# -- xsiType: the plugin's "specific xsi type -> general xsi type" --------------------------

IMAGE_SCAN_TYPE = "xnat:imageScanData"
#: XNAT's own data types that are ``xnat:experimentData`` (every complex type of XNAT's
#: ``xnat.xsd`` that extends it, directly or not). The plugin (``DefaultUserOptionsService.
#: storeUserOptions``) asks XNAT's schema ``instanceOf(xsiType, "xnat:experimentData")`` and
#: stores and sets ``XNAT_XSI_TYPE`` to ``xnat:experimentData`` for each of them.
EXPERIMENT_TYPES = frozenset({
    "xnat:abstractProjectAsset", "xnat:crSessionData", "xnat:ctSessionData", "xnat:derivedData",
    "xnat:dx3DCraniofacialSessionData", "xnat:dxSessionData", "xnat:ecgSessionData",
    "xnat:eegSessionData", "xnat:epsSessionData", "xnat:esSessionData", "xnat:esvSessionData",
    "xnat:genericData", "xnat:gmSessionData", "xnat:gmvSessionData", "xnat:hdSessionData",
    "xnat:imageAssessorData", "xnat:imageSessionData", "xnat:ioSessionData", "xnat:megSessionData",
    "xnat:mgSessionData", "xnat:mrAssessorData", "xnat:mrSessionData", "xnat:nmSessionData",
    "xnat:opSessionData", "xnat:optSessionData", "xnat:otherDicomSessionData", "xnat:pVisitData",
    "xnat:petAssessorData", "xnat:petSessionData", "xnat:petmrSessionData",
    "xnat:qcAssessmentData", "xnat:qcManualAssessorData", "xnat:rfSessionData",
    "xnat:rgSessionData", "xnat:rtSessionData", "xnat:smSessionData", "xnat:srSessionData",
    "xnat:subjectAssessorData", "xnat:subjectVariablesData", "xnat:usSessionData",
    "xnat:xa3DSessionData", "xnat:xaSessionData", "xnat:xcSessionData", "xnat:xcvSessionData",
})
#: ... and those that are ``xnat:imageScanData`` (mapped to it; this hub refuses scan starts)
SCAN_TYPES = frozenset({
    "xnat:crScanData", "xnat:ctScanData", "xnat:dx3DCraniofacialScanData", "xnat:dxScanData",
    "xnat:ecgScanData", "xnat:eegScanData", "xnat:epsScanData", "xnat:esScanData",
    "xnat:esvScanData", "xnat:gmScanData", "xnat:gmvScanData", "xnat:hdScanData",
    "xnat:ioScanData", "xnat:megScanData", "xnat:mgScanData", "xnat:mrScanData",
    "xnat:mrsScanData", "xnat:nmScanData", "xnat:opScanData", "xnat:optScanData",
    "xnat:otherDicomScanData", "xnat:petScanData", "xnat:rfScanData", "xnat:rgScanData",
    "xnat:rtImageScanData", "xnat:scScanData", "xnat:segScanData", "xnat:smScanData",
    "xnat:srScanData", "xnat:usScanData", "xnat:voiceAudioScanData", "xnat:xa3DScanData",
    "xnat:xaScanData", "xnat:xcScanData", "xnat:xcvScanData",
})
_GENERAL = {PROJECT_TYPE, SUBJECT_TYPE, EXPERIMENT_TYPE, IMAGE_SCAN_TYPE, STORED_SEARCH_TYPE}


def general_xsi_type(xsi_type: str) -> str | None:
    """The general type XNAT's plugin stores for *xsi_type* (pure): itself for the general types
    (project, subject, ``xnat:experimentData``, ``xnat:imageScanData``, stored search),
    ``xnat:experimentData`` for :data:`EXPERIMENT_TYPES`, ``xnat:imageScanData`` for
    :data:`SCAN_TYPES`; ``None`` for a type only the site's XNAT knows (a plugin's data type such
    as ``icr:roiCollectionData``): then XNAT's stored start says what it is (:func:`parse_launch`)."""
    if xsi_type in _GENERAL:
        return xsi_type
    if xsi_type in EXPERIMENT_TYPES:
        return EXPERIMENT_TYPE
    if xsi_type in SCAN_TYPES:
        return IMAGE_SCAN_TYPE
    return None


def item_type(item: XnatItem) -> str:
    """``XNAT_XSI_TYPE`` of a server started for *item*: the general type, as the plugin sets it
    (pure). Every item this hub starts a server for is a project, a subject, an experiment or a
    stored search (``xdat:stored_search``, as the plugin keeps it; :func:`spawner.request.
    parse_xnat_launch` refuses scans, and :func:`parse_launch` a type XNAT does not store as
    ``xnat:experimentData``)."""
    return {"project": PROJECT_TYPE, "subject": SUBJECT_TYPE,
            STORED_SEARCH_KIND: STORED_SEARCH_TYPE}.get(item.kind, EXPERIMENT_TYPE)


# -- container_spec.env: passed through, except reserved names ------------------------------

#: the variables the plugin puts into every stored start (``getDefaultEnvironmentVariables``,
#: over the compute environment's): the hub sets each of them itself, from its plan
#: (``XNAT_USER``/``XNAT_PASS`` become the server's credential once XNAT confirms the token)
PLUGIN_ENV = frozenset({"XNAT_HOST", "XNAT_USER", "XNAT_PASS", "XNAT_DATA", "XNAT_XSI_TYPE",
                        "XNAT_ITEM_ID", "JUPYTERHUB_ROOT_DIR", "XDG_CONFIG_HOME"})
#: names a compute environment (or hardware) of XNAT may not set, and why: the start is refused
#: naming the variable. Prefixes end with ``_``. Documented in docs/admin.md ("Start Jupyter").
RESERVED_ENV: dict[str, str] = {
    "JUPYTERHUB_": "JupyterHub's own (the server's hub token, API and OAuth settings)",
    "JPY_": "JupyterHub's own (the server's hub token)",
    "XNAT_HPC_": "this hub's (scope, profile, offload limits, bootstrap code)",
    "SLURM_": "Slurm's (they would change how the server's job is submitted)",
    "SBATCH_": "Slurm's (they would change how the server's job is submitted)",
    "SALLOC_": "Slurm's (they would change how the server's job is submitted)",
    "SRUN_": "Slurm's (they would change how the server's job is submitted)",
    "LD_": "the dynamic loader's (read by the sandbox, which starts as root)",
    "GCONV_PATH": "the C library's (read by the sandbox, which starts as root)",
    "PATH": "the server's own (the hub's interpreter and tools)",
    "HOME": "the user's account's", "USER": "the user's account's", "LOGNAME": "the user's account's",
    "SHELL": "the user's account's",
    "PYTHONPATH": "the server's Python environment's", "PYTHONHOME": "the server's Python environment's",
    "PYTHONSTARTUP": "the server's Python environment's",
    "BASH_ENV": "the shell's (run by every bash the server starts)", "ENV": "the shell's",
}
#: most variables a compute environment may pass, and longest value (characters)
MAX_ENV, MAX_ENV_VALUE = 100, 32768
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def reserved_env(name: str) -> str | None:
    """Why *name* may not come from XNAT's compute environment, or ``None`` (pure).
    ``JUPYTERHUB_ROOT_DIR`` and the plugin's other :data:`PLUGIN_ENV` are the plugin's own,
    not reserved: the hub sets them itself."""
    if name in PLUGIN_ENV or name == HARDWARE_ENV:
        return None
    for key, why in RESERVED_ENV.items():
        if name == key or (key.endswith("_") and name.startswith(key)):
            return f"{key}* names are {why}" if key.endswith("_") else f"{key} is {why}"
    return None


def launch_env(env: Mapping) -> tuple[tuple[str, str], ...]:
    """``container_spec.env`` → the variables passed to the server, sorted (pure): all but
    :data:`PLUGIN_ENV` and ``XNAT_HPC_HARDWARE``. A reserved name (:func:`reserved_env`), a name
    that is not a variable name, or a value that is not text is refused by name."""
    fix = "remove or rename it in the compute environment (or hardware) configuration in XNAT"
    if len(env) > MAX_ENV:
        raise InvalidRequest(f"XNAT's compute environment sets {len(env)} variables; at most {MAX_ENV} "
                             "are passed to a server")
    out = []
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise InvalidRequest(f"XNAT's compute environment sets {name!r}, which is not an environment "
                                 f"variable name (letters, digits, '_'; not first a digit): {fix}")
        if not isinstance(value, str):
            raise InvalidRequest(f"XNAT's compute environment sets {name} to a value of type "
                                 f"{type(value).__name__} (not shown); the value must be text: {fix}")
        if "\x00" in value or len(value) > MAX_ENV_VALUE:
            raise InvalidRequest(f"XNAT's compute environment sets {name} to a value with a NUL byte or "
                                 f"longer than {MAX_ENV_VALUE} characters: {fix}")
        why = reserved_env(name)
        if why is not None:
            raise InvalidRequest(f"XNAT's compute environment sets {name}, a name reserved on this hub "
                                 f"({why}): {fix}")
        if name not in PLUGIN_ENV and name != HARDWARE_ENV:
            out.append((name, value))
    return tuple(sorted(out))


@dataclasses.dataclass(frozen=True)
class LaunchResources:
    """``task_template.resources``: cores as floats, memory in bytes (0 = not given)."""

    cpu_limit: float = 0.0
    cpu_reservation: float = 0.0
    mem_limit: int = 0
    mem_reservation: int = 0
    gpus: int = 0
    other_generic: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class LaunchMount:
    """One entry of ``container_spec.mounts`` (the plugin's ``Mount``): *source* is XNAT's path
    (after the plugin's path translation), never bound by the hub as such."""

    target: str
    source: str = ""
    read_only: bool = False


@dataclasses.dataclass(frozen=True)
class XnatLaunch:
    """What XNAT stored for one start, as far as the hub uses it."""

    xsi_type: str                #: the general type XNAT stored (``xnat:experimentData`` for any experiment)
    item_id: str
    project: str
    token: AliasToken | None = dataclasses.field(default=None, repr=False)
    resources: LaunchResources = LaunchResources()
    constraints: tuple[str, ...] = ()
    image: str = ""
    command: str = ""
    hardware: str | None = None  #: ``XNAT_HPC_HARDWARE`` of the hardware config, if set
    mounts: tuple[LaunchMount, ...] = ()
    #: the compute environment's and hardware's variables passed to the server (:func:`launch_env`)
    env: tuple[tuple[str, str], ...] = dataclasses.field(default=(), repr=False)

    @property
    def mount_targets(self) -> tuple[str, ...]:
        return tuple(m.target for m in self.mounts)


def _memory(value: Any, what: str) -> int:
    if value in (None, "", 0):
        return 0
    match = _UNIT_RE.match(str(value))
    if not match:
        raise InvalidRequest(f"XNAT's hardware config gives {what} {value!r}; write it like 4G or 512M")
    return parse_memory(f"{match.group(1)}{match.group(2).upper()}")


def _cores(value: Any, what: str) -> float:
    if value in (None, ""):
        return 0.0
    try:
        cores = float(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"XNAT's hardware config gives {what} {value!r}; it must be a number of cores") from None
    if cores < 0 or math.isinf(cores) or math.isnan(cores):
        raise InvalidRequest(f"XNAT's hardware config gives {what} {value!r}; it must be a number of cores")
    return cores


def _mapping(value: Any, what: str) -> Mapping:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"XNAT's user options: {what} must be an object")
    return value


def parse_resources(doc: Mapping | None) -> LaunchResources:
    """``task_template.resources`` → :class:`LaunchResources` (pure)."""
    doc = _mapping(doc, "task_template.resources")
    generic = {str(k): v for k, v in _mapping(doc.get("generic_resources"), "generic_resources").items()}
    gpus = 0
    if generic.get("gpu") not in (None, "", "0", 0):
        try:
            gpus = int(str(generic["gpu"]).strip())
        except ValueError:
            raise InvalidRequest(f"XNAT's hardware config asks for gpu {generic['gpu']!r}; it must be a "
                                 "whole number") from None
        if gpus < 0:
            raise InvalidRequest("XNAT's hardware config asks for a negative number of GPUs")
    return LaunchResources(_cores(doc.get("cpu_limit"), "cpu_limit"),
                           _cores(doc.get("cpu_reservation"), "cpu_reservation"),
                           _memory(doc.get("mem_limit"), "mem_limit"),
                           _memory(doc.get("mem_reservation"), "mem_reservation"),
                           gpus, tuple(sorted(k for k in generic if k != "gpu")))


def parse_launch(doc: Mapping[str, Any], request: SpawnRequest) -> XnatLaunch:
    """XNAT's stored user options for the start *request* → :class:`XnatLaunch` (pure).

    The item XNAT stored must be the one the plugin POSTed (XNAT stores any experiment type
    as ``xnat:experimentData``); otherwise the start is refused."""
    item = request.xnat_item
    if item is None:
        raise InvalidRequest("not a start from XNAT")
    xsi_type, item_id, project = (str(doc.get(k) or "") for k in ("xsiType", "itemId", "projectId"))
    if not (_same_type(xsi_type, item) and item_id == item.item_id and project == item.project):
        raise PermissionDenied(f"XNAT's stored start ({xsi_type} {item_id} in {project}) is not the one "
                               f"requested ({item.xsi_type} {item.item_id} in {item.project}); start "
                               "Jupyter again from XNAT", item=item.item_id)
    if item.kind == "experiment" and general_xsi_type(item.xsi_type) is None and xsi_type != EXPERIMENT_TYPE:
        raise InvalidRequest(f"XNAT does not store {item.xsi_type} as an experiment (xnat:experimentData): "
                             "its data type is not one Jupyter can be started for on this hub; start it "
                             "from the project, the subject or an experiment", item=item.item_id)
    template = _mapping(doc.get("task_template"), "task_template")
    spec = _mapping(template.get("container_spec"), "task_template.container_spec")
    env = _mapping(spec.get("env"), "container_spec.env")
    passed = launch_env(env)  # refuses reserved names and values that are not text
    token = None
    if env.get("XNAT_USER") and env.get("XNAT_PASS"):
        token = AliasToken(env["XNAT_USER"], env["XNAT_PASS"])
    placement = _mapping(template.get("placement"), "task_template.placement")
    constraints = placement.get("constraints") or []
    mounts = spec.get("mounts") or []
    if not isinstance(constraints, list) or not isinstance(mounts, list):
        raise InvalidRequest("XNAT's user options: placement.constraints and container_spec.mounts must be lists")
    return XnatLaunch(xsi_type or item.xsi_type, item_id, project, token,
                      parse_resources(template.get("resources")), tuple(str(c) for c in constraints),
                      str(spec.get("image") or ""), str(spec.get("command") or ""),
                      env.get(HARDWARE_ENV) or None, _mounts(mounts), passed)


def _same_type(stored: str, item: XnatItem) -> bool:
    """XNAT stored the general type of the posted one (or, from older stand-ins, the posted one);
    a type unknown to :func:`general_xsi_type` may be stored as ``xnat:experimentData``."""
    if stored == item.xsi_type:
        return True
    general = general_xsi_type(item.xsi_type)
    if general is not None:
        return stored == general
    return stored == EXPERIMENT_TYPE and item.kind == "experiment"


def _mounts(entries: list) -> tuple[LaunchMount, ...]:
    out = []
    for m in entries:
        if not isinstance(m, Mapping) or not m.get("target"):
            continue
        target, source = m.get("target"), m.get("source") or ""
        if not isinstance(target, str) or not isinstance(source, str):
            raise InvalidRequest("XNAT's user options: a mount's target and source must be text")
        out.append(LaunchMount(target, source, m.get("read_only") is True))
    return tuple(out)


# -- container_spec.mounts: which folders exist, and where they are in the archive ----------

_DATA_PROJECTS = f"{PLUGIN_DATA}/projects/"
_PART_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")


_ARC = object()  #: stands for the project's archive folder (``arc001``, ``arc002``, …)


def _data_kind(target: str, project: str) -> list | None:
    """The archive folders (from the project's) that the plugin's data mount *target* shows,
    ``_ARC`` standing for the session folder's parent; ``None``: no place the hub knows."""
    rest = target[len(_DATA_PROJECTS):].split("/")
    if rest[0] != project:
        return None
    rest = rest[1:]
    if rest == ["experiments"]:
        return [project, _ARC]
    if rest in (["resources"], ["subjects"]):
        return [project, rest[0]]
    if len(rest) == 2 and rest[0] == "experiments":
        return [project, _ARC, rest[1]]
    if len(rest) == 2 and rest[0] == "subject-resources":
        return [project, "subjects", rest[1]]
    return None


def _archive_path(pattern: list, source: str) -> str | None:
    """The end of XNAT's *source* that matches *pattern*, as an archive sub-path, or ``None``."""
    parts = [p for p in source.split("/") if p not in ("", ".")]
    if ".." in parts or len(parts) < len(pattern):
        return None
    tail = parts[-len(pattern):]
    for want, got in zip(pattern, tail):
        if not _PART_RE.match(got) or not (is_arc_folder(got) if want is _ARC else got == want):
            return None
    return "/".join(tail)


def archive_paths(launch: XnatLaunch) -> tuple[dict[str, str | None], list[str]]:
    """XNAT's data mounts of *launch*: plugin target → archive sub-path (pure).

    The plugin mounts only the folders that exist (``Files.exists`` in ``getProjectPaths``,
    ``getSubjectPaths``, ``getExperimentPath``), with XNAT's own archive paths
    (``getRootArchivePath() + getCurrentArc()``, ``getCurrentSessionFolder``), so a target
    listed here exists in XNAT's archive. The value is the sub-path the hub mounts from its own
    archive (e.g. ``NEURO_MRI/arc002/MR_1``: XNAT's ``currentArc``, not an assumed ``arc001``),
    or ``None`` when XNAT's source does not end in the project's folders (a project whose
    archive folder is not named after it; the shared-data folder of links): then the hub's
    default sub-path is tried. Returns the mapping and notes for the log."""
    listed: dict[str, str | None] = {}
    notes = []
    for m in launch.mounts:
        target = m.target.rstrip("/")
        if not target.startswith(_DATA_PROJECTS):
            continue
        pattern = _data_kind(target, launch.project)
        if pattern is None or not m.read_only:
            notes.append(f"XNAT's data mount {m.target} is not one of the item's read-only folders in "
                         "the plugin's layout; ignored")
            continue
        path = _archive_path(pattern, m.source)
        if path is None:
            notes.append(f"XNAT's path {m.source!r} for {target} does not end in the project's archive "
                         "folders; the hub's default archive path is tried instead")
        listed[target] = path
    return listed, notes


#: where a stored search's items sit in the project folders the plugin lists for it
#: (``getStoredSearchPaths`` → ``getProjectPaths``): a session in ``experiments``, a subject's
#: resources (``subject-resources/{label}`` in the narrowed layout) in ``subjects``
_SEARCH_PARENTS = {"experiments": "experiments", "subject-resources": "subjects"}


def within_listed(listed: Mapping[str, str | None], target: str) -> tuple[bool, str | None]:
    """For a start from a stored search (pure): whether *target*, one item's folder in the plugin's
    layout (``/data/projects/{P}/experiments/{session}``, ``…/subject-resources/{subject}``), lies
    in a project folder XNAT's start lists (the plugin mounts the start's project for a stored
    search, :func:`archive_paths`), and its archive sub-path below XNAT's path of that folder
    (``None``: XNAT's path named no archive folder of the project; the hub's default is tried)."""
    head, _, name = target.rstrip("/").rpartition("/")
    base, _, folder = head.rpartition("/")
    parent = _SEARCH_PARENTS.get(folder)
    if parent is None or not base.startswith(_DATA_PROJECTS) or not _PART_RE.match(name):
        return False, None
    key = f"{base}/{parent}"
    if key not in listed:
        return False, None
    source = listed[key]
    return True, (f"{source}/{name}" if source is not None else None)


def apply_hardware(profile: Profile, launch: XnatLaunch) -> tuple[Profile, list[str]]:
    """*profile* with the launch's resources, within the profile's limits (pure).

    Returns the profile to run and notes (what was ignored, for the log). Anything beyond the
    profile's ``cpus``/``memory``/``gpus`` (Kubernetes: ``cpu_limit``/``mem_limit`` when set) is
    refused with :class:`PermissionDenied`, whose message XNAT shows as the failed start."""
    res, have = launch.resources, profile.resources
    notes: list[str] = []
    changes: dict[str, Any] = {}
    fix = (f"choose a smaller hardware configuration in XNAT, or ask the hub admin to raise the "
           f"limits of profile {profile.slug!r}")
    cores = res.cpu_limit or res.cpu_reservation
    if cores:
        ceiling = have.cpu_limit if (profile.backend == "kubernetes" and have.cpu_limit) else have.cpus
        if cores > ceiling:
            raise PermissionDenied(f"XNAT's hardware configuration asks for {cores:g} CPUs; profile "
                                   f"{profile.slug!r} allows at most {ceiling:g}: {fix}", item=profile.slug)
        changes["cpus"] = max(1, min(have.cpus, math.ceil(cores)))
        if profile.backend == "kubernetes" and res.cpu_limit:
            changes["cpu_limit"] = res.cpu_limit
    memory = res.mem_limit or res.mem_reservation
    if memory:
        ceiling = have.mem_limit if (profile.backend == "kubernetes" and have.mem_limit) else have.memory
        if ceiling is None:
            notes.append(f"memory {format_memory(memory)} ignored: profile {profile.slug!r} sets no memory "
                         "limit (the backend's default applies)")
        elif memory > ceiling:
            raise PermissionDenied(f"XNAT's hardware configuration asks for {format_memory(memory)} of memory; "
                                   f"profile {profile.slug!r} allows at most {format_memory(ceiling)}: {fix}",
                                   item=profile.slug)
        else:
            changes["memory"] = min(memory, have.memory) if have.memory else memory
            if profile.backend == "kubernetes" and res.mem_limit and have.mem_limit:
                changes["mem_limit"] = res.mem_limit
    if res.gpus > have.gpus:
        raise PermissionDenied(f"XNAT's hardware configuration asks for {res.gpus} GPU(s); profile "
                               f"{profile.slug!r} allows {have.gpus}: {fix}", item=profile.slug)
    if res.gpus:
        changes["gpus"] = res.gpus
    elif have.gpus:
        notes.append(f"profile {profile.slug!r} gives {have.gpus} GPU(s) although XNAT's hardware asks for none")
    if res.other_generic:
        notes.append(f"generic resources {', '.join(res.other_generic)} ignored (only gpu is mapped)")
    if launch.constraints:
        notes.append(f"placement constraints {', '.join(launch.constraints)} ignored: the profile decides placement")
    if launch.image and launch.image != (have.image or ""):
        notes.append(f"image {launch.image} ignored: profile {profile.slug!r} runs "
                     f"{have.image or 'the backend default image'}")
    if launch.command:
        notes.append("container command ignored: the hub starts jupyterhub-singleuser itself")
    notes += archive_paths(launch)[1]
    for m in launch.mounts:
        if not (m.target.startswith(_DATA_PROJECTS) or m.target.startswith(f"{WORKSPACE_ROOT}/")):
            notes.append(f"mount {m.target} of XNAT's compute environment ignored: the hub binds no "
                         "host path XNAT names")
    if not changes:
        return profile, notes
    return dataclasses.replace(profile, resources=dataclasses.replace(have, **changes)), notes
