"""Deciding a spawn: pure functions from (request, profiles, XNAT's answers) to a plan.

The mixin gathers the facts from XNAT (:class:`XnatFacts`, asked fresh at
every start, never from the form) and calls :func:`choose_profile`,
:func:`scope_mounts` and :func:`server_env`. Each raises a typed error naming
the problem and the fix; nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping

from hub_ext.profiles import Profile, ProfileConfig, profile_allows_projects, visible_profiles
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.scope import Scope

from .plan import DATA_MOUNT, ScopeMount
from .request import SpawnRequest

ARC = "arc001"


@dataclasses.dataclass(frozen=True)
class Session:
    """One XNAT experiment (session) of a scoped project, as the archive stores it."""

    id: str
    label: str
    subject_id: str
    subject_label: str


@dataclasses.dataclass(frozen=True)
class XnatFacts:
    """What XNAT said about the user at start time."""

    user: str
    project_roles: dict[str, str]
    site_roles: tuple[str, ...] = ()
    #: project id -> its sessions; filled only for projects whose scope is narrowed
    sessions: dict[str, tuple[Session, ...]] = dataclasses.field(default_factory=dict)


def choose_profile(config: ProfileConfig, request: SpawnRequest, facts: XnatFacts, *,
                   groups: Iterable[str] = (), backends: Iterable[str] | None = None) -> Profile:
    """The profile to use: asked for (or mapped from XNAT's hardware config, or the
    default), visible to this user, allowed with the selected projects, and run by
    one of *backends* (``None`` = any)."""
    allowed_backends = set(backends) if backends is not None else None
    visible = [p for p in visible_profiles(config, username=facts.user, groups=list(groups),
                                           site_roles=facts.site_roles,
                                           project_roles=facts.project_roles)
               if allowed_backends is None or p.backend in allowed_backends]
    slug = request.profile
    if slug is None and request.hardware is not None:
        mapped = config.profile_for_hardware(request.hardware)
        if mapped is None:
            raise InvalidRequest(f"XNAT hardware config {request.hardware!r} is not mapped to a profile "
                                 "on this hub; ask the hub admin to add it under xnat_hardware")
        slug = mapped.slug
    if slug is None:
        if not visible:
            raise PermissionDenied("no server profile is available to you on this hub")
        slug = next((p.slug for p in visible if p.default), visible[0].slug)
    profile = config.by_slug(slug)
    if profile not in visible:
        raise PermissionDenied(f"profile {slug!r} is not available to you; available: "
                               f"{', '.join(p.slug for p in visible) or 'none'}", item=slug)
    profile_allows_projects(profile, facts.project_roles, request.projects)
    return profile


def check_readable(scope: Scope, project_roles: Mapping[str, str]) -> dict[str, str]:
    """Every scoped project must be readable in XNAT; returns project -> role."""
    roles = {}
    for project in sorted(scope.projects or {}):
        role = project_roles.get(project)
        if role is None:
            raise PermissionDenied(f"you may not read XNAT project {project!r} (or it does not exist); "
                                   "ask its owner for access", item=project)
        roles[project] = role
    return roles


def _selected(scope: Scope, project: str, sessions: Iterable[Session]) -> list[Session]:
    ps = (scope.projects or {})[project]
    return [s for s in sessions
            if ps.experiments.intersection((s.id, s.label))
            or ps.subjects.intersection((s.subject_id, s.subject_label))]


def scope_mounts(scope: Scope, sessions: Mapping[str, Iterable[Session]]) -> tuple[ScopeMount, ...]:
    """One read-only mount per whole project, or per session of a narrowed one."""
    mounts = []
    for project, ps in sorted((scope.projects or {}).items()):
        if ps.whole:
            mounts.append(ScopeMount(project, project, f"{DATA_MOUNT}/{project}"))
            continue
        chosen = _selected(scope, project, sessions.get(project, ()))
        if not chosen:
            wanted = sorted(ps.subjects | ps.experiments)
            raise NotFound(f"{', '.join(wanted)} matches no experiment of project {project} "
                           "that you can read", item=wanted[0])
        for s in sorted(chosen, key=lambda s: s.label):
            source = f"{project}/{ARC}/{s.label}"
            mounts.append(ScopeMount(project, source, f"{DATA_MOUNT}/{source}"))
    return tuple(mounts)


def server_env(*, xnat_url: str, alias: str, scope: Scope, profile: Profile, offload: dict,
               with_data: bool, request: SpawnRequest) -> dict[str, str]:
    """The server's public environment (the alias secret goes separately, as XNAT_PASS)."""
    env = {
        "XNAT_HOST": xnat_url,
        "XNAT_USER": alias,
        "XNAT_HPC_SCOPE": scope.to_json(),
        "XNAT_HPC_PROFILE": profile.slug,
        "XNAT_HPC_OFFLOAD": json.dumps(offload, sort_keys=True),
    }
    if with_data:
        env["XNAT_DATA"] = DATA_MOUNT
    if request.xnat_item is not None:  # the XNAT plugin's convention
        env["XNAT_XSI_TYPE"] = request.xnat_item.xsi_type
        env["XNAT_ITEM_ID"] = request.xnat_item.item_id
    return env
