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
``container_spec.env`` other            ignored except ``XNAT_HPC_HARDWARE`` (the profile chooser,
                                        looked up in ``xnat_hardware``); the hub sets XNAT_HOST,
                                        XNAT_DATA, XNAT_XSI_TYPE, XNAT_ITEM_ID itself
``container_spec.mounts`` sources       never used: the hub mounts from its own archive, by scope
``container_spec.mounts`` targets       recorded (:attr:`XnatLaunch.mount_targets`); the layout under
                                        ``/data`` is the profile's ``data_layout``
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

from .request import EXPERIMENT_TYPE, SpawnRequest

#: the hardware config's environment variable that names the hub profile (via ``xnat_hardware``)
HARDWARE_ENV = "XNAT_HPC_HARDWARE"
_UNIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTkmgt])(?:i?[Bb]?)?\s*$")


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
class XnatLaunch:
    """What XNAT stored for one start, as far as the hub uses it."""

    xsi_type: str
    item_id: str
    project: str
    token: AliasToken | None = dataclasses.field(default=None, repr=False)
    resources: LaunchResources = LaunchResources()
    constraints: tuple[str, ...] = ()
    image: str = ""
    command: str = ""
    hardware: str | None = None  #: ``XNAT_HPC_HARDWARE`` of the hardware config, if set
    mount_targets: tuple[str, ...] = ()


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
    same_type = xsi_type == item.xsi_type or (xsi_type == EXPERIMENT_TYPE and item.kind == "experiment")
    if not (same_type and item_id == item.item_id and project == item.project):
        raise PermissionDenied(f"XNAT's stored start ({xsi_type} {item_id} in {project}) is not the one "
                               f"requested ({item.xsi_type} {item.item_id} in {item.project}); start "
                               "Jupyter again from XNAT", item=item.item_id)
    template = _mapping(doc.get("task_template"), "task_template")
    spec = _mapping(template.get("container_spec"), "task_template.container_spec")
    env = {str(k): "" if v is None else str(v) for k, v in _mapping(spec.get("env"), "container_spec.env").items()}
    token = None
    if env.get("XNAT_USER") and env.get("XNAT_PASS"):
        token = AliasToken(env["XNAT_USER"], env["XNAT_PASS"])
    placement = _mapping(template.get("placement"), "task_template.placement")
    constraints = placement.get("constraints") or []
    mounts = spec.get("mounts") or []
    if not isinstance(constraints, list) or not isinstance(mounts, list):
        raise InvalidRequest("XNAT's user options: placement.constraints and container_spec.mounts must be lists")
    targets = tuple(str(m.get("target")) for m in mounts if isinstance(m, Mapping) and m.get("target"))
    return XnatLaunch(xsi_type or item.xsi_type, item_id, project, token,
                      parse_resources(template.get("resources")), tuple(str(c) for c in constraints),
                      str(spec.get("image") or ""), str(spec.get("command") or ""),
                      env.get(HARDWARE_ENV) or None, targets)


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
    if not changes:
        return profile, notes
    return dataclasses.replace(profile, resources=dataclasses.replace(have, **changes)), notes
