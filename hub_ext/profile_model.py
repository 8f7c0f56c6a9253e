"""The data model of admin profiles (frozen dataclasses) and its formatting helpers.

Parsing and validation live in :mod:`hub_ext.profile_schema`; loading, the
visibility rules, hot reload and ``check-config`` in :mod:`hub_ext.profiles`,
which re-exports everything here. The ``offload:`` section is the server's own
model, :class:`xnat_bridge.offload.policy.OffloadPolicy` (one model of the
limits, handed to servers unchanged).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Iterable

from xnat_bridge.errors import InvalidRequest, NotFound
from xnat_bridge.offload.policy import DEFAULT_STAGING_DIR, OffloadPolicy  # noqa: F401  (part of this model)
from xnat_bridge.units import format_memory, format_walltime  # noqa: F401  (part of this model's API)

BACKENDS = ("local", "slurm", "kubernetes")
SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


# --------------------------------------------------------------------------
# Public data model
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a profiles file, with where it is and how to fix it."""

    source: str
    line: int | None  # 1-based; None when the problem concerns the whole file
    path: str  # e.g. "profiles[2].resources.memory"; "" for the whole file
    message: str

    def __str__(self) -> str:
        where = f"{self.source}:{self.line}" if self.line else self.source
        return ": ".join(part for part in (where, self.path, self.message) if part)


class ProfileConfigError(InvalidRequest):
    """A profiles file is invalid; ``problems`` lists everything wrong in it."""

    reason = "invalid_profiles"

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass(frozen=True)
class Resources:
    """What a server gets. Memory sizes are bytes, walltime is seconds; None = backend default."""

    cpus: int = 1
    memory: int | None = None
    gpus: int = 0
    # slurm
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: int | None = None
    constraint: str | None = None
    # kubernetes
    image: str | None = None
    cpu_limit: float | None = None
    mem_limit: int | None = None
    node_selector: dict[str, str] = field(default_factory=dict, hash=False)
    tolerations: tuple[dict[str, Any], ...] = field(default=(), hash=False)


@dataclass(frozen=True)
class Allow:
    """Who sees a profile. Every rule that is set must match; empty = everyone."""

    roles: tuple[str, ...] = ()
    site_roles: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    @property
    def everyone(self) -> bool:
        return not (self.roles or self.site_roles or self.projects or self.users or self.groups)

    @property
    def needs_project(self) -> bool:
        """True when the profile is tied to projects (``roles`` or ``projects`` set)."""
        return bool(self.roles or self.projects)

    def project_matches(self, project: str) -> bool:
        """The project id matches one of the ``projects`` patterns (or none are set)."""
        return not self.projects or any(fnmatchcase(project, pat) for pat in self.projects)

    def role_matches(self, role: str | None) -> bool:
        return not self.roles or role in self.roles

    def admits(self, project: str, role: str | None) -> bool:
        return self.project_matches(project) and self.role_matches(role)


@dataclass(frozen=True)
class Profile:
    """One entry of the spawn page."""

    slug: str
    display_name: str
    backend: str
    description: str = ""
    default: bool = False
    resources: Resources = Resources()
    allow: Allow = Allow()
    #: where the scope appears in the server: ``xnat`` (``/xnat/data/{P}/arc001/...``), ``plugin``
    #: (XNAT's JupyterHub plugin: ``/data/projects/{P}/experiments/...``); None = plugin for starts
    #: from XNAT's "Start Jupyter", xnat otherwise
    data_layout: str | None = None
    #: slurm only: where the partition's nodes mount the XNAT archive (an absolute, clean path,
    #: e.g. ``/mnt/xnat/archive``); set: the server runs in a per-job bubblewrap sandbox on the node
    #: with the scope's folders of it bound read-only (``XNAT_DATA``, as on the local backend);
    #: None: nothing mounted, ``XNAT_DATA`` unset, XNAT's REST API only
    archive_node_path: str | None = None


@dataclass(frozen=True)
class ProfileConfig:
    """A validated profiles file."""

    profiles: tuple[Profile, ...]
    hardware_map: dict[str, str] = field(default_factory=dict, hash=False)
    offload: OffloadPolicy = OffloadPolicy()  #: the ``offload:`` section (the server's model of it)
    source: str = "<string>"

    @property
    def slugs(self) -> list[str]:
        return [p.slug for p in self.profiles]

    def by_slug(self, slug: str) -> Profile:
        """The profile called *slug*; :class:`NotFound` names the known ones."""
        for profile in self.profiles:
            if profile.slug == slug:
                return profile
        raise NotFound(f"no profile {slug!r}; known profiles: {', '.join(self.slugs)}", item=slug)

    @property
    def default_profile(self) -> Profile:
        """The profile marked ``default: true``, else the first one."""
        return next((p for p in self.profiles if p.default), self.profiles[0])

    def profile_for_hardware(self, hardware: str | int) -> Profile | None:
        """The profile the admin mapped an XNAT hardware config id or name to, if any."""
        slug = self.hardware_map.get(str(hardware))
        return self.by_slug(slug) if slug else None


