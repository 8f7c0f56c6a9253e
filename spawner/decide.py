"""Deciding a spawn: pure functions from (request, profiles, XNAT's answers) to a plan.

The mixin gathers the facts from XNAT (:class:`XnatFacts`, asked fresh at
every start, never from the form) and calls :func:`check_readable`,
:func:`choose_profile`, :func:`scope_mounts` and then :func:`build_plan` with
the backend's :class:`~spawner.plan.DataMount`. Each raises a typed error
naming the problem and the fix; nothing here does I/O.

Data flows one way: form / REST / XNAT → :class:`~spawner.request.SpawnRequest`
→ :class:`~spawner.plan.SpawnPlan` (with its :class:`~xnat_bridge.server_env.ServerEnv`)
→ the backend's pure builder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from hub_ext.profiles import Profile, ProfileConfig, profile_allows_projects, visible_profiles
from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.offload.policy import OffloadPolicy
from xnat_bridge.scope import Scope
from xnat_bridge.server_env import PASS, LaunchItem, ServerEnv

from .plan import (
    ARC,
    PLUGIN_DATA,
    SECRET_NAME,
    WORKSPACE_BACKENDS,
    DataLayout,
    DataMount,
    ScopeMount,
    SpawnPlan,
    mount_target,
    workspace_dir,
)
from .request import STORED_SEARCH_KIND, STORED_SEARCH_TYPE, SpawnRequest
from .xnat_launch import XnatLaunch, archive_paths, item_type, within_listed


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


def data_layout(profile: Profile, request: SpawnRequest) -> DataLayout:
    """The profile's ``data_layout``; unset: the plugin's layout for starts from XNAT's
    "Start Jupyter" (notebooks written for the plugin run unchanged), this hub's otherwise."""
    if profile.data_layout is not None:
        return DataLayout(profile.data_layout)
    return DataLayout.PLUGIN if request.source == "xnat" else DataLayout.XNAT


def scope_mounts(scope: Scope, sessions: Mapping[str, Iterable[Session]],
                 layout: DataLayout = DataLayout.XNAT, *,
                 launch: XnatLaunch | None = None) -> tuple[ScopeMount, ...]:
    """The scope's read-only mounts in *layout*: a whole project is one mount (xnat) or its
    sessions, resources and subjects folders (plugin); a narrowed one is one mount per
    session (plus, in the plugin's layout, each selected subject's resources folder).

    *launch*: what XNAT stored for a start from its "Start Jupyter" (:mod:`spawner.xnat_launch`).
    In the plugin's layout the mounts then follow the plugin: a folder XNAT did not list (it
    lists only those that exist) is skipped, not a failed start; each listed one is mounted from
    the archive sub-path XNAT's path names (:func:`~spawner.xnat_launch.archive_paths`: XNAT's
    ``currentArc``, not an assumed ``arc001``), skipped where the hub's archive lacks it
    (``optional``, ``listed``); and a subject with no experiments starts (XNAT vouched for the
    item), with its resources folder if XNAT lists one. The scope itself is still the hub's:
    only sessions the hub found in the scope are mounted."""
    mounts = []
    listed = archive_paths(launch)[0] if launch is not None and layout is DataLayout.PLUGIN else None
    searched = launch is not None and launch.xsi_type == STORED_SEARCH_TYPE

    def add(project: str, source: str, optional: bool = False) -> None:
        target = mount_target(layout, source)
        if listed is None:
            mounts.append(ScopeMount(project, source, target, optional))
        elif target in listed:  # else: XNAT found no such folder, and the plugin skips it
            xnat_source = listed[target]
            if xnat_source is None:  # XNAT's path says nothing of the archive's: the default, if there
                mounts.append(ScopeMount(project, source, target, True))
            else:
                mounts.append(ScopeMount(project, xnat_source, target, True, listed=True))
        elif searched:  # a stored search's item, inside the project's folders XNAT lists for it
            inside, xnat_source = within_listed(listed, target)
            if inside:
                mounts.append(ScopeMount(project, xnat_source or source, target, True,
                                         listed=xnat_source is not None))

    for project, ps in sorted((scope.projects or {}).items()):
        if ps.whole:
            if layout is DataLayout.XNAT:
                add(project, project)
            else:
                add(project, f"{project}/{ARC}")
                add(project, f"{project}/resources", True)
                add(project, f"{project}/subjects", True)
            continue
        chosen = _selected(scope, project, sessions.get(project, ()))
        from_xnat = listed is not None and bool(ps.subjects) and not ps.experiments
        if not chosen and not from_xnat:
            wanted = sorted(ps.subjects | ps.experiments)
            raise NotFound(f"{', '.join(wanted)} matches no experiment of project {project} "
                           "that you can read", item=wanted[0])
        for s in sorted(chosen, key=lambda s: s.label):
            add(project, f"{project}/{ARC}/{s.label}")
        if layout is DataLayout.PLUGIN:
            subjects = {s.subject_label for s in chosen
                        if ps.subjects.intersection((s.subject_id, s.subject_label))}
            if from_xnat and not subjects and len(ps.subjects) == 1:
                # a subject without experiments: its label as XNAT lists its resources folder
                prefix = f"{PLUGIN_DATA}/projects/{project}/subject-resources/"
                subjects = {t[len(prefix):] for t in listed if t.startswith(prefix)}
            for label in sorted(subjects):
                add(project, f"{project}/subjects/{label}", True)
    return tuple(mounts)


def server_env(*, xnat_url: str, alias: str, scope: Scope, profile: Profile, offload: OffloadPolicy,
               with_data: bool, request: SpawnRequest, layout: DataLayout = DataLayout.XNAT,
               workspace: str | None = None, compute_env: Mapping[str, str] | None = None) -> ServerEnv:
    """What the server is handed (the alias secret goes separately, as ``XNAT_PASS``).
    ``XNAT_XSI_TYPE`` is the item's general type, as XNAT's plugin sets it
    (:func:`~spawner.xnat_launch.item_type`), not the concrete one XNAT's UI posts."""
    item = request.xnat_item
    return ServerEnv(host=xnat_url, user=alias, scope=scope, profile=profile.slug, offload=offload,
                     data_dir=layout.root if with_data else None,
                     item=LaunchItem(item_type(item), item.item_id) if item is not None else None,
                     workspace=workspace, compute_env=tuple(sorted((compute_env or {}).items())))


def plan_workspace(user: str, profile: Profile, layout: DataLayout, workspace: bool | None = None) -> str | None:
    """``/workspace/{user}`` for a server of the plugin's layout whose backend gives it
    (*workspace*; ``None``: :data:`~spawner.plan.WORKSPACE_BACKENDS` decides by the profile's
    backend), else ``None`` (pure)."""
    if layout is not DataLayout.PLUGIN:
        return None
    if workspace is None:
        workspace = profile.backend in WORKSPACE_BACKENDS
    return workspace_dir(user) if workspace else None


def node_sandbox(profile: Profile) -> bool:
    """Whether *profile*'s server runs in a sandbox on its compute node: a Slurm profile that
    names where its nodes mount the archive (``archive_node_path``) (pure)."""
    return profile.backend == "slurm" and profile.archive_node_path is not None


def build_plan(*, user: str, server_name: str, request: SpawnRequest, profile: Profile,
               roles: dict[str, str], mounts: tuple[ScopeMount, ...], data_mount: DataMount,
               xnat_url: str, alias: str, secret: str, offload: OffloadPolicy,
               layout: DataLayout = DataLayout.XNAT, launch: XnatLaunch | None = None,
               workspace: bool | None = None) -> SpawnPlan:
    """The plan, and the one place that decides whether the scope is mounted.

    *mounts* are the scope's directories (:func:`scope_mounts`); *data_mount* is how the
    backend that runs the server mounts data. With :attr:`DataMount.NONE` the plan has no
    mounts and no ``XNAT_DATA``; otherwise both, ``XNAT_DATA`` being *layout*'s root (the
    mounts' targets are *layout*'s, :func:`scope_mounts`). A Slurm profile mounts only where it
    names its nodes' archive (:func:`node_sandbox`); that sandbox on the node also gives the
    plugin layout's workspace. Any other Slurm profile is :attr:`DataMount.NONE`.

    In the plugin's layout the server gets the workspace ``/workspace/{user}`` as
    ``JUPYTERHUB_ROOT_DIR``/``XDG_CONFIG_HOME`` where its backend gives one
    (:func:`plan_workspace`). *launch* (a start from XNAT) adds the compute environment's
    variables (:attr:`~spawner.xnat_launch.XnatLaunch.env`, reserved names already refused):
    those whose names may carry a secret (:data:`~spawner.plan.SECRET_NAME`) go with
    ``XNAT_PASS`` as secrets, the others into the server's environment.
    """
    if profile.backend == "slurm":  # the archive in a sandbox on the node, or REST only
        if not node_sandbox(profile):
            data_mount = DataMount.NONE
        if workspace is None:
            workspace = data_mount is not DataMount.NONE  # the node sandbox binds the home there
    item = request.xnat_item
    if item is not None and item.kind == STORED_SEARCH_KIND and not request.scope.projects:
        raise InvalidRequest(f"the start from XNAT stored search {item.item_id} was not resolved to the "
                             "search's items (the hub's spawner lacks that step); ask the hub admin to "
                             "update the hub", item=item.item_id)
    mounted = tuple(mounts) if data_mount is not DataMount.NONE else ()
    passed = dict(launch.env) if launch is not None else {}
    secrets = {k: v for k, v in passed.items() if SECRET_NAME.search(k)}
    env = server_env(xnat_url=xnat_url, alias=alias, scope=request.scope, profile=profile,
                     offload=offload, with_data=bool(mounted), request=request, layout=layout,
                     workspace=plan_workspace(user, profile, layout, workspace),
                     compute_env={k: v for k, v in passed.items() if k not in secrets})
    return SpawnPlan(user, server_name, profile, roles, mounted, env, {**secrets, PASS: secret}, layout)
