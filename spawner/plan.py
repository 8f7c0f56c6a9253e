"""What a server is started with: the validated, backend-neutral spawn plan.

The mixin (:mod:`spawner.mixin`) turns a request (form or REST
``user_options``) into a :class:`SpawnPlan` only after asking XNAT; a backend
turns the plan into its own settings (bubblewrap binds, an sbatch script, a
pod spec) with a pure function. Nothing from the request reaches a backend
except through this plan, so raw ``user_options`` never land in a batch
script or a manifest.
"""

from __future__ import annotations

import dataclasses

from hub_ext.profiles import Profile
from xnat_bridge.scope import Scope

#: where the scope's archive directories appear inside a server (read-only)
DATA_MOUNT = "/xnat/data"


@dataclasses.dataclass(frozen=True)
class ScopeMount:
    """One archive directory of the scope, mounted read-only.

    ``source`` is relative to the archive root in XNAT's layout
    (``NEURO_MRI`` for a whole project, ``NEURO_MRI/arc001/MR_S001_01`` for one
    session); ``target`` is the absolute path inside the server, always under
    :data:`DATA_MOUNT` and mirroring ``source`` (so ``XNAT_DATA`` paths stay
    the archive's paths).
    """

    project: str
    source: str
    target: str


@dataclasses.dataclass(frozen=True)
class SpawnPlan:
    """Everything a backend needs, already checked against XNAT and the profile."""

    user: str                         #: JupyterHub (= XNAT) user name
    server_name: str                  #: "" for the default server
    profile: Profile                  #: the admin profile chosen (visible to this user)
    scope: Scope                      #: the data scope (never unrestricted)
    roles: dict[str, str]             #: project id -> XNAT role (Owner/Member/Collaborator/...)
    mounts: tuple[ScopeMount, ...]    #: read-only archive directories of the scope
    env: dict[str, str]               #: environment for the server, secrets excluded
    secret_env: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    #: ^ XNAT_PASS (the alias token secret): given to the process, never to a file or sbatch

    @property
    def projects(self) -> list[str]:
        return sorted(self.scope.projects or {})
