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
import re

from hub_ext.profiles import Profile
from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope
from xnat_bridge.server_env import ServerEnv

#: where the scope's archive directories appear inside a server (read-only), in this hub's layout
DATA_MOUNT = "/xnat/data"
#: ``XNAT_DATA`` of XNAT's JupyterHub plugin, and the root of its layout
PLUGIN_DATA = "/data"
#: the archive's folder of a project's sessions (XNAT's ``currentArc``) where XNAT does not say
#: otherwise: a start from XNAT's "Start Jupyter" takes it from XNAT's paths
#: (:func:`spawner.xnat_launch.archive_paths`)
ARC = "arc001"
_ARC_RE = re.compile(r"^arc[0-9]{3,6}$")
#: the plugin's workspace directory of each user inside a server (``/workspace/{user}``, read-write)
WORKSPACE_ROOT = "/workspace"
#: environment names that may carry a secret: handed over as secrets (a Kubernetes ``Secret``,
#: the Slurm bootstrap), never in a batch script, an ``sbatch`` environment or a pod spec
SECRET_NAME = re.compile(r"(TOKEN|SECRET|PASS|KEY|CRYPT)", re.IGNORECASE)


def is_arc_folder(name: str) -> bool:
    """Whether *name* is an archive folder of a project's sessions (``arc001``, ``arc002``, …)."""
    return bool(_ARC_RE.match(name))


def workspace_dir(user: str) -> str:
    """The plugin's workspace of *user* inside a server: ``/workspace/{user}``."""
    return f"{WORKSPACE_ROOT}/{user}"


class DataLayout(enum.Enum):
    """Where a mounted scope appears inside the server (a profile's ``data_layout``).

    * ``xnat``: the archive's own paths under :data:`DATA_MOUNT`: ``/xnat/data/{P}`` (a whole
      project), ``/xnat/data/{P}/arc001/{session}`` (a narrowed one).
    * ``plugin``: XNAT's JupyterHub plugin's paths under :data:`PLUGIN_DATA`, so notebooks
      written for the plugin run unchanged: ``/data/projects/{P}/experiments`` (the project's
      sessions: ``{P}/arc001`` or the archive folder XNAT names), ``/data/projects/{P}/resources``,
      ``/data/projects/{P}/subjects`` (a whole project), ``/data/projects/{P}/experiments/{session}``
      and ``/data/projects/{P}/subject-resources/{subject}`` (a narrowed one), and the user's
      workspace at ``/workspace/{user}`` where the backend gives one (:data:`WORKSPACE_BACKENDS`;
      local: the home directory, read-write).
    """

    XNAT = "xnat"
    PLUGIN = "plugin"

    @property
    def root(self) -> str:
        """``XNAT_DATA`` when something is mounted."""
        return PLUGIN_DATA if self is DataLayout.PLUGIN else DATA_MOUNT


def mount_target(layout: DataLayout, source: str) -> str:
    """Where the archive sub-path *source* appears in a server with *layout* (pure); refuses a
    source the layout has no place for. The one rule backends check every mount against."""
    parts = source.split("/")
    if source.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidRequest(f"scope path {source!r} is not a clean archive sub-path")
    if layout is DataLayout.XNAT:
        return f"{DATA_MOUNT}/{source}"
    project, rest = parts[0], parts[1:]
    if len(rest) == 1 and is_arc_folder(rest[0]):
        return f"{PLUGIN_DATA}/projects/{project}/experiments"
    if len(rest) == 2 and is_arc_folder(rest[0]):
        return f"{PLUGIN_DATA}/projects/{project}/experiments/{rest[1]}"
    if rest in (["resources"], ["subjects"]):
        return f"{PLUGIN_DATA}/projects/{project}/{rest[0]}"
    if len(rest) == 2 and rest[0] == "subjects":
        return f"{PLUGIN_DATA}/projects/{project}/subject-resources/{rest[1]}"
    raise InvalidRequest(f"scope path {source!r} has no place in the plugin's data layout")


class DataMount(enum.Enum):
    """How a backend gives a server its scope's files (each backend says it once)."""

    NONE = "none"            #: nothing mounted; the server reads through XNAT's REST API
    #: read-only binds of host directories in a bubblewrap sandbox: the hub host's archive (local),
    #: or the compute node's for a Slurm profile that names ``archive_node_path`` (a Slurm profile
    #: without one mounts nothing: :func:`spawner.decide.build_plan`)
    HOST_PATH = "host path"
    VOLUME = "volume"        #: ``subPath`` mounts of a cluster volume (Kubernetes)


#: backends that give a server of the plugin's layout its workspace at ``/workspace/{user}``,
#: read-write, and how; a server of the others gets no ``JUPYTERHUB_ROOT_DIR``/``XDG_CONFIG_HOME``
#: (it starts in the home directory, as a form start does)
WORKSPACE_BACKENDS = {
    "local": "the sandbox binds the user's home directory there (spawner.sandbox)",
    # slurm: only a profile with archive_node_path runs a sandbox on the node, which binds the home
    # there (build_plan decides, spawner.decide.node_sandbox); without one no /workspace
    # kubernetes: only where the site's storage mounts the home there (z2jh
    # singleuser.storage.homeMountPath: /workspace/{unescaped_username}): build_plan(workspace=True)
}


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
    #: the directory may be missing from the archive (a project's resources/subjects folders; in a
    #: start from XNAT every folder, as the plugin mounts only what exists): bound only where it
    #: exists (local), left out where a missing one fails the start (Kubernetes) unless ``listed``
    optional: bool = False
    #: XNAT's start listed this directory as present (the plugin checks): a backend that cannot
    #: skip a missing directory mounts it all the same
    listed: bool = False


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
    layout: DataLayout = DataLayout.XNAT  #: where the mounts are (their targets follow it)

    def __post_init__(self) -> None:
        workspace = self.server_env.workspace
        if workspace is not None and (self.layout is not DataLayout.PLUGIN
                                      or workspace != workspace_dir(self.user)):
            raise InvalidRequest(f"spawn plan of {self.user}: workspace {workspace!r} is not the plugin "
                                 f"layout's {workspace_dir(self.user)!r}")
        want = self.layout.root if self.mounts else None
        if self.server_env.data_dir != want:
            raise InvalidRequest(f"spawn plan of {self.user}: XNAT_DATA is {self.server_env.data_dir!r} "
                                 f"but {len(self.mounts)} directories are mounted; it must be {want!r}")
        for mount in self.mounts:
            if mount.target != mount_target(self.layout, mount.source):
                raise InvalidRequest(f"spawn plan of {self.user}: mount target {mount.target!r} is not "
                                     f"where the {self.layout.value} layout puts {mount.source!r}")

    @property
    def scope(self) -> Scope:
        """The data scope (never unrestricted for a spawned server)."""
        return self.server_env.scope

    @property
    def projects(self) -> list[str]:
        return sorted(self.scope.projects or {})
