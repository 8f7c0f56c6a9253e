"""What a server is started with: the validated, backend-neutral spawn plan.

The mixin (:mod:`spawner.mixin`) turns a request (form or REST
``user_options``) into a :class:`SpawnPlan` only after asking XNAT; a backend
turns the plan into its own settings (bubblewrap binds, an sbatch script, a
pod spec) with a pure function. Nothing from the request reaches a backend
except through this plan, so raw ``user_options`` never land in a batch
script or a manifest.

Whether the scope is mounted is decided once, when the plan is made, from the
backend's :class:`DataMount` (:func:`spawner.decide.build_plan`): the plan then
has the mounts and ``XNAT_DATA`` in its :class:`~xnat_bridge.server_env.ServerEnv`,
or neither. Builders read the plan and never add or remove either.
"""

from __future__ import annotations

import dataclasses
import enum

from hub_ext.profiles import Profile
from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope
from xnat_bridge.server_env import ServerEnv

#: where the scope's archive directories appear inside a server (read-only)
DATA_MOUNT = "/xnat/data"


class DataMount(enum.Enum):
    """How a backend gives a server its scope's files (each backend says it once)."""

    NONE = "none"            #: nothing mounted; the server reads through XNAT's REST API (Slurm)
    HOST_PATH = "host path"  #: read-only binds of host directories (local bubblewrap)
    VOLUME = "volume"        #: ``subPath`` mounts of a cluster volume (Kubernetes)


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
    """Everything a backend needs, already checked against XNAT and the profile.

    ``mounts`` is empty exactly when nothing is mounted, and ``server_env.data_dir``
    (``XNAT_DATA``) is :data:`DATA_MOUNT` exactly when it is not; a plan that says
    otherwise is refused.
    """

    user: str                         #: JupyterHub (= XNAT) user name
    server_name: str                  #: "" for the default server
    profile: Profile                  #: the admin profile chosen (visible to this user)
    roles: dict[str, str]             #: project id -> XNAT role (Owner/Member/Collaborator/...)
    mounts: tuple[ScopeMount, ...]    #: read-only archive directories of the scope; () = none
    server_env: ServerEnv             #: what the server is handed (scope, offload, XNAT_DATA, ...)
    secret_env: dict[str, str] = dataclasses.field(default_factory=dict, repr=False)
    #: ^ XNAT_PASS (the alias token secret): given to the process, never to a file or sbatch

    def __post_init__(self) -> None:
        want = DATA_MOUNT if self.mounts else None
        if self.server_env.data_dir != want:
            raise InvalidRequest(f"spawn plan of {self.user}: XNAT_DATA is {self.server_env.data_dir!r} "
                                 f"but {len(self.mounts)} directories are mounted; it must be {want!r}")

    @property
    def scope(self) -> Scope:
        """The data scope (never unrestricted for a spawned server)."""
        return self.server_env.scope

    @property
    def projects(self) -> list[str]:
        return sorted(self.scope.projects or {})
