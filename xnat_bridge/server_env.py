"""What the hub hands a user's server: one typed contract, read and written here only.

The hub's spawner builds a :class:`ServerEnv` and puts :meth:`ServerEnv.to_env`
into the server's environment; the server (:mod:`xnat_bridge.connection`,
:mod:`xnat_bridge.serverext`, the offload manager) reads it back with
:meth:`ServerEnv.from_env` or the per-variable readers below. The names and
value formats follow XNAT's JupyterHub plugin, so ``xnat.connect()`` works
with no arguments:

=====================  =====================================================
``XNAT_HOST``          XNAT base URL
``XNAT_USER``          the user's XNAT alias token (its secret, ``XNAT_PASS``,
                       is handed over separately and is not part of this contract)
``XNAT_HPC_SCOPE``     the data scope as JSON (:meth:`Scope.to_json`); absent =
                       no restriction beyond XNAT (a notebook outside the hub)
``XNAT_HPC_PROFILE``   slug of the admin profile the server was started with
``XNAT_HPC_OFFLOAD``   the site's offload limits as a JSON object
                       (:class:`~xnat_bridge.offload.policy.OffloadPolicy`:
                       partition and resource limits, staging area, the
                       nodes' ``node_scratch`` in bytes when the site sets it,
                       ``staging_threads``/``staging_buffer``);
                       absent = the documented defaults
``XNAT_DATA``          where the scope's archive directories are mounted
                       read-only inside the server; absent = nothing mounted,
                       files come through XNAT's REST API
``XNAT_XSI_TYPE``,     the XNAT item a launch from XNAT's UI was about (its general
``XNAT_ITEM_ID``       type, as the plugin sets it: ``xnat:projectData``,
                       ``xnat:subjectData`` or ``xnat:experimentData``)
``JUPYTERHUB_ROOT_DIR``
``XDG_CONFIG_HOME``    both the plugin's workspace ``/workspace/{user}`` (read-write),
                       where the server has one; absent = the home directory
``XNAT_HPC_WORKSPACE`` ``{workspace}/xnat-hpc`` with it (datasets, jobs: inside the
                       server's root directory); absent = ``~/xnat-hpc``
``XNAT_HPC_PERMISSION_TTL`` seconds the server trusts XNAT's answer about the user's
                       projects (``c.OwnerAccess.permission_ttl``, the bound on a
                       revocation's delay); absent = 60
(others)               the variables of XNAT's compute environment, passed
                       through (names checked by the hub: never one above, never
                       a reserved one)
=====================  =====================================================

The workspace and the compute environment's variables are written only: a server does not
read them back through :meth:`ServerEnv.from_env`.
``XNAT_HPC_PERMISSION_TTL`` is the hub's setting, not the start's plan: the spawner writes it
beside :meth:`ServerEnv.to_env`, the server reads it with :func:`permission_ttl_from_env`.

Pure apart from the default ``environ=os.environ``; imports nothing from the hub side.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping

from .errors import InvalidRequest
from .offload.policy import ENV as OFFLOAD
from .offload.policy import OffloadPolicy
from .scope import ENV as SCOPE
from .scope import Scope

HOST = "XNAT_HOST"
USER = "XNAT_USER"
PASS = "XNAT_PASS"  #: the alias secret: never in :meth:`ServerEnv.to_env`
PROFILE = "XNAT_HPC_PROFILE"
DATA = "XNAT_DATA"
XSI_TYPE = "XNAT_XSI_TYPE"
ITEM_ID = "XNAT_ITEM_ID"
ROOT_DIR = "JUPYTERHUB_ROOT_DIR"
CONFIG_HOME = "XDG_CONFIG_HOME"
WORKSPACE = "XNAT_HPC_WORKSPACE"
PERMISSION_TTL = "XNAT_HPC_PERMISSION_TTL"
DEFAULT_PERMISSION_TTL = 60.0

#: offload keys the hub always writes; the policy's other fields (``node_scratch``,
#: ``staging_threads``, ``staging_buffer``, account, qos, defaults) only when they differ from
#: their defaults — so ``node_scratch`` travels whenever the site set it
_OFFLOAD_KEYS = ("partition", "max_cpus", "max_memory", "max_gpus", "max_walltime", "exclusive",
                 "staging_dir")


@dataclasses.dataclass(frozen=True)
class LaunchItem:
    """The XNAT item a server was started for from XNAT's "Start Jupyter" button."""

    xsi_type: str   #: e.g. ``xnat:mrSessionData``
    item_id: str    #: XNAT's id of the project, subject or experiment


# -- one reader per variable -------------------------------------------------------


def host_from_env(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(HOST, "")


def user_from_env(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(USER, "")


def scope_from_env(environ: Mapping[str, str] = os.environ) -> Scope:
    """``XNAT_HPC_SCOPE``; absent or empty = unrestricted (XNAT alone decides)."""
    return Scope.from_json(environ.get(SCOPE))


def profile_from_env(environ: Mapping[str, str] = os.environ) -> str:
    return environ.get(PROFILE, "")


def offload_from_env(environ: Mapping[str, str] = os.environ) -> OffloadPolicy:
    """``XNAT_HPC_OFFLOAD``; absent or empty = the default limits."""
    text = environ.get(OFFLOAD, "").strip()
    if not text:
        return OffloadPolicy()
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{OFFLOAD} is not valid JSON: {e}") from None
    return OffloadPolicy.from_json(doc)


def data_from_env(environ: Mapping[str, str] = os.environ) -> str | None:
    """``XNAT_DATA``: the read-only mount of the scope inside the server, or None."""
    return environ.get(DATA) or None


def item_from_env(environ: Mapping[str, str] = os.environ) -> LaunchItem | None:
    xsi_type, item_id = environ.get(XSI_TYPE, ""), environ.get(ITEM_ID, "")
    return LaunchItem(xsi_type, item_id) if xsi_type and item_id else None


def permission_ttl_from_env(environ: Mapping[str, str] = os.environ) -> float:
    """``XNAT_HPC_PERMISSION_TTL`` in seconds (above 0, at most a day); absent = 60."""
    raw = environ.get(PERMISSION_TTL, "").strip()
    if not raw:
        return DEFAULT_PERMISSION_TTL
    try:
        ttl = float(raw)
    except ValueError:
        ttl = -1.0
    if not 0 < ttl <= 86400:
        raise InvalidRequest(f"{PERMISSION_TTL} must be a number of seconds above 0 and at most 86400, "
                             f"not {raw!r}")
    return ttl


def offload_to_env(policy: OffloadPolicy) -> str:
    """``XNAT_HPC_OFFLOAD``'s value: memory in bytes, walltime in seconds, keys sorted."""
    doc, defaults = policy.to_json(), OffloadPolicy().to_json()
    return json.dumps({k: v for k, v in doc.items() if k in _OFFLOAD_KEYS or v != defaults[k]},
                      sort_keys=True)


# -- the contract ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ServerEnv:
    """Everything the hub hands a server, secrets excluded."""

    host: str                                        #: ``XNAT_HOST``
    user: str                                        #: ``XNAT_USER`` (the alias token's name)
    scope: Scope = Scope.unrestricted()              #: ``XNAT_HPC_SCOPE``
    profile: str = ""                                #: ``XNAT_HPC_PROFILE``
    offload: OffloadPolicy = OffloadPolicy()         #: ``XNAT_HPC_OFFLOAD``
    data_dir: str | None = None                      #: ``XNAT_DATA``; None = REST only
    item: LaunchItem | None = None                   #: ``XNAT_XSI_TYPE`` / ``XNAT_ITEM_ID``
    workspace: str | None = None                     #: ``JUPYTERHUB_ROOT_DIR``, ``XDG_CONFIG_HOME``
    #: XNAT's compute environment's variables, ``(name, value)`` sorted; the hub's own win
    compute_env: tuple[tuple[str, str], ...] = ()

    def to_env(self) -> dict[str, str]:
        """The public environment variables (``XNAT_PASS`` is not among them)."""
        env = dict(self.compute_env)  # first: a name of the contract below is always the hub's
        env.update({HOST: self.host, USER: self.user})
        if self.scope.restricted:
            env[SCOPE] = self.scope.to_json()
        env[PROFILE] = self.profile
        env[OFFLOAD] = offload_to_env(self.offload)
        if self.data_dir is not None:
            env[DATA] = self.data_dir
        if self.item is not None:  # the XNAT plugin's convention
            env[XSI_TYPE] = self.item.xsi_type
            env[ITEM_ID] = self.item.item_id
        if self.workspace is not None:  # the plugin's convention
            env[ROOT_DIR] = env[CONFIG_HOME] = self.workspace
            env[WORKSPACE] = f"{self.workspace.rstrip('/')}/xnat-hpc"
        return env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> ServerEnv:
        """Read back what :meth:`to_env` wrote (or a partial environment outside the hub)."""
        return cls(host=host_from_env(environ), user=user_from_env(environ),
                   scope=scope_from_env(environ), profile=profile_from_env(environ),
                   offload=offload_from_env(environ), data_dir=data_from_env(environ),
                   item=item_from_env(environ))
