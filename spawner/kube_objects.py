"""The Kubernetes backend's pod settings and Secret, as pure functions.

:func:`pod_settings` turns a validated :class:`~spawner.plan.SpawnPlan` into
the values of kubespawner's traits (:class:`KubePodSettings`); kubespawner's
own ``make_pod`` then builds the pod from them. :func:`make_secret` builds the
``Secret`` that holds ``plan.secret_env`` (``XNAT_PASS``, the alias token
secret); the pod refers to it with ``valueFrom.secretKeyRef``, so the token
never appears in the pod spec.

The data scope becomes one volume, the XNAT archive (a PVC or an NFS export,
:class:`ArchiveVolume`), mounted once per :class:`~spawner.plan.ScopeMount`
with ``subPath`` = the archive directory and ``readOnly: true``: the archive
root itself is never mounted, so other projects do not exist in the pod.

Nothing here talks to a cluster or reads kubespawner state; inputs are explicit.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import posixpath
import re
from collections.abc import Mapping
from typing import Any

from xnat_bridge.errors import InvalidRequest

from .plan import DataLayout, ScopeMount, SpawnPlan, mount_target

#: name of the archive volume in the pod
ARCHIVE_VOLUME = "xnat-archive"
#: extended resource a GPU is counted in (NVIDIA's device plugin)
GPU_RESOURCE = "nvidia.com/gpu"
#: label / annotation prefix of everything this bundle sets
PREFIX = "xnat-hpc-hub/"

_LABEL_VALUE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*$")
_SECRET_KEY = re.compile(r"^[-._A-Za-z0-9]{1,253}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
#: one directory name of an archive path (XNAT ids/labels, ``arc001``)
_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,99}$")
_NFS_SERVER = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.\-:\[\]]{0,252})$")

#: kubespawner traits :func:`trait_values` sets (the backend remembers their configured values)
MANAGED_TRAITS = ("image", "cpu_guarantee", "cpu_limit", "mem_guarantee", "mem_limit",
                  "extra_resource_limits", "node_selector", "tolerations", "volumes",
                  "volume_mounts", "environment", "extra_labels", "extra_annotations")
#: traits whose strings kubespawner expands as ``str.format`` templates (``{username}``)
_TEMPLATED = frozenset({"volumes", "volume_mounts", "environment", "extra_labels", "extra_annotations"})


@dataclasses.dataclass(frozen=True)
class ArchiveVolume:
    """How the XNAT archive root is reachable in the cluster: a PVC, or an NFS export.

    Configured on the spawner as ``c.XnatKubeSpawner.xnat_archive_volume``, e.g.
    ``{"claim_name": "xnat-archive"}`` or
    ``{"nfs_server": "nfs.example.org", "nfs_path": "/data/xnat/archive"}``.
    It is always mounted read-only, and only at the scope's sub-paths.
    """

    claim_name: str | None = None
    nfs_server: str | None = None
    nfs_path: str | None = None

    def __post_init__(self) -> None:
        if bool(self.claim_name) == bool(self.nfs_server or self.nfs_path):
            raise InvalidRequest("xnat_archive_volume needs either claim_name (a PVC) or "
                                 "nfs_server and nfs_path, not both and not neither; e.g. "
                                 "{'claim_name': 'xnat-archive'}")
        if self.claim_name and not (_DNS_SUBDOMAIN.match(self.claim_name) and len(self.claim_name) <= 253):
            raise InvalidRequest(f"xnat_archive_volume claim_name {self.claim_name!r} is not a valid "
                                 "PVC name (lower-case letters, digits, '-' and '.')")
        if self.nfs_server or self.nfs_path:
            if not self.nfs_server or not _NFS_SERVER.match(self.nfs_server):
                raise InvalidRequest(f"xnat_archive_volume nfs_server {self.nfs_server!r} is not a "
                                     "host name or address")
            path = self.nfs_path or ""
            if not path.startswith("/") or posixpath.normpath(path) != path.rstrip("/") or "\x00" in path:
                raise InvalidRequest(f"xnat_archive_volume nfs_path {self.nfs_path!r} must be a clean "
                                     "absolute path, e.g. /data/xnat/archive")

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> ArchiveVolume | None:
        """From the trait's dict; ``None`` or ``{}`` = no archive in the cluster (REST only)."""
        if not value:
            return None
        unknown = set(value) - {"claim_name", "nfs_server", "nfs_path"}
        if unknown:
            raise InvalidRequest(f"xnat_archive_volume: unknown key(s) {', '.join(sorted(unknown))}; "
                                 "use claim_name, or nfs_server and nfs_path")
        for key, item in value.items():
            if item is not None and not isinstance(item, str):
                raise InvalidRequest(f"xnat_archive_volume {key} must be text, got {item!r}")
        return cls(**value)

    def volume(self) -> dict[str, Any]:
        """The pod's ``volumes`` entry, read-only."""
        if self.claim_name:
            return {"name": ARCHIVE_VOLUME,
                    "persistentVolumeClaim": {"claimName": self.claim_name, "readOnly": True}}
        return {"name": ARCHIVE_VOLUME,
                "nfs": {"server": self.nfs_server, "path": self.nfs_path, "readOnly": True}}


@dataclasses.dataclass(frozen=True)
class KubePodSettings:
    """Values of kubespawner's traits for one server; ``None`` = keep the spawner's configured value.

    ``environment`` holds plain values and, for secrets, ``{"valueFrom": {"secretKeyRef": ...}}``
    entries (kubespawner passes dict values through as ``EnvVar`` specs); it has ``XNAT_DATA``
    exactly when the plan mounts the scope (the plan decides, :func:`spawner.decide.build_plan`).
    """

    image: str | None
    cpu_guarantee: float | None
    cpu_limit: float | None
    mem_guarantee: int | None
    mem_limit: int | None
    extra_resource_limits: dict[str, str]
    node_selector: dict[str, str]
    tolerations: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    volume_mounts: list[dict[str, Any]]
    environment: dict[str, Any]
    extra_labels: dict[str, str]
    extra_annotations: dict[str, str]


def label_value(text: str) -> str:
    """*text* as a Kubernetes label value: unchanged when valid, else cleaned with a hash suffix.

    Label values are at most 63 of ``[A-Za-z0-9_.-]``, first and last alphanumeric;
    ``alice@example.org`` → ``alice-example.org-1f2e3d4c``. The hash keeps two
    different inputs from ending up with the same label.
    """
    if _LABEL_VALUE.match(text):
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", text)[:54].strip("-_.")
    return f"{clean}-{digest}" if clean else digest


def check_mount(mount: ScopeMount, projects: list[str], layout: DataLayout = DataLayout.XNAT) -> ScopeMount:
    """Refuse a mount whose ``subPath`` could leave its project's archive directory.

    ``source`` must be relative, made of plain directory names (no ``..``, ``.``,
    empty part or leading ``/``) and start with the mount's project, which must be
    in the scope; ``target`` must be where *layout* puts ``source``
    (:func:`spawner.plan.mount_target`; ``DATA_MOUNT/source`` in the xnat layout).
    """
    parts = mount.source.split("/")
    if mount.source.startswith("/") or not all(_PATH_PART.match(p) and p not in (".", "..") for p in parts):
        raise InvalidRequest(f"scope path {mount.source!r} is not a clean archive sub-path "
                             "(relative, no '..', no leading '/')", item=mount.project)
    if parts[0] != mount.project or mount.project not in projects:
        raise InvalidRequest(f"scope path {mount.source!r} is not inside project {mount.project!r} "
                             "of the scope", item=mount.project)
    want = mount_target(layout, mount.source)
    if mount.target != want:
        raise InvalidRequest(f"scope mount target {mount.target!r} is not {want}", item=mount.project)
    return mount


def _labels(plan: SpawnPlan) -> dict[str, str]:
    return {PREFIX + "user": label_value(plan.user),
            PREFIX + "profile": label_value(plan.profile.slug),
            PREFIX + "scope-projects": label_value(".".join(plan.projects))}


def _annotations(plan: SpawnPlan) -> dict[str, str]:
    return {PREFIX + "user": plan.user,
            PREFIX + "profile": plan.profile.slug,
            PREFIX + "scope": plan.scope.to_json(),
            PREFIX + "roles": json.dumps(plan.roles, sort_keys=True)}


def _check_secret_keys(plan: SpawnPlan) -> None:
    for key in plan.secret_env:
        if not (_ENV_NAME.match(key) and _SECRET_KEY.match(key)):
            raise InvalidRequest(f"secret environment name {key!r} is not a valid variable name")


def pod_settings(plan: SpawnPlan, archive: ArchiveVolume | None, *, secret_name: str = "",
                 gpu_resource: str = GPU_RESOURCE) -> KubePodSettings:
    """kubespawner trait values for *plan*.

    *archive*: where the archive is in the cluster; needed when the plan mounts the scope
    (a backend without one plans no mounts: the scope is reachable through XNAT's REST API
    only). *secret_name*: the Secret from :func:`make_secret` that ``plan.secret_env`` is
    read from (required when there is one).
    """
    if plan.profile.backend != "kubernetes":
        raise InvalidRequest(f"profile {plan.profile.slug!r} is for the {plan.profile.backend!r} "
                             "backend, not kubernetes")
    if not plan.scope.restricted:
        raise InvalidRequest("a server's scope must name its projects; an unrestricted scope "
                             "is never spawned")
    res = plan.profile.resources
    projects = plan.projects
    # optional folders (a project's resources/subjects) are left out: a missing subPath fails the
    # pod; those XNAT's start listed as present (the plugin's own check) are mounted
    mounts = sorted((check_mount(m, projects, plan.layout) for m in plan.mounts if not m.optional or m.listed),
                    key=lambda m: m.target)
    targets = [m.target for m in mounts]
    if len(set(targets)) != len(targets):
        raise InvalidRequest("the scope mounts the same directory twice: " + ", ".join(targets))
    volumes, volume_mounts = [], []
    if mounts and archive is None:
        raise InvalidRequest("the plan mounts the scope but there is no archive volume; set "
                             "xnat_archive_volume, e.g. {'claim_name': 'xnat-archive'}, or plan no mounts")
    if mounts:
        volumes.append(archive.volume())
        volume_mounts = [{"name": ARCHIVE_VOLUME, "mountPath": m.target, "subPath": m.source,
                          "readOnly": True} for m in mounts]

    _check_secret_keys(plan)
    if plan.secret_env and not (_DNS_SUBDOMAIN.match(secret_name) and len(secret_name) <= 253):
        raise InvalidRequest(f"secret name {secret_name!r} is not a valid Kubernetes object name")
    environment: dict[str, Any] = {k: str(v) for k, v in plan.server_env.to_env().items()
                                   if k not in plan.secret_env}
    for key in sorted(plan.secret_env):
        environment[key] = {"name": key, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": key}}}

    return KubePodSettings(
        image=res.image,
        cpu_guarantee=float(res.cpus) if res.cpus else None,
        cpu_limit=float(res.cpu_limit) if res.cpu_limit is not None else None,
        mem_guarantee=res.memory,
        mem_limit=res.mem_limit,
        extra_resource_limits={gpu_resource: str(res.gpus)} if res.gpus else {},
        node_selector=dict(res.node_selector),
        tolerations=[dict(t) for t in res.tolerations],
        volumes=volumes,
        volume_mounts=volume_mounts,
        environment=environment,
        extra_labels=_labels(plan),
        extra_annotations=_annotations(plan),
    )


def make_secret(plan: SpawnPlan, name: str) -> dict[str, Any]:
    """The ``Secret`` (a manifest dict) holding ``plan.secret_env``, base64 as the API wants it."""
    if not (_DNS_SUBDOMAIN.match(name) and len(name) <= 253):
        raise InvalidRequest(f"secret name {name!r} is not a valid Kubernetes object name "
                             "(lower-case letters, digits, '-' and '.')")
    _check_secret_keys(plan)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name,
                     "labels": {**_labels(plan), "app.kubernetes.io/managed-by": "xnat-hpc-hub"},
                     "annotations": _annotations(plan)},
        "data": {k: base64.b64encode(v.encode()).decode("ascii") for k, v in sorted(plan.secret_env.items())},
    }


def secret_name_for(pod_name: str) -> str:
    """The Secret's name beside a pod: ``jupyter-alice`` → ``jupyter-alice-xnat``."""
    name = f"{pod_name}-xnat"
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        name = f"xnat-{hashlib.sha256(pod_name.encode()).hexdigest()[:16]}"
    return name


def escape_template(value: Any) -> Any:
    """Double ``{`` and ``}`` in every string, so kubespawner's ``str.format`` expansion keeps them."""
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, list):
        return [escape_template(v) for v in value]
    if isinstance(value, dict):
        return {k: escape_template(v) for k, v in value.items()}
    return value


def _as_list(value: Any) -> list:
    """A kubespawner list-or-dict trait as the list kubespawner makes of it (dict: values by key)."""
    if isinstance(value, dict):
        return [value[k] for k in sorted(value)]
    return list(value or [])


def trait_values(settings: KubePodSettings, base: Mapping[str, Any]) -> dict[str, Any]:
    """Trait name → value to set, combining *settings* with the spawner's configured *base* values.

    Scalars from the profile replace the configured ones (``None`` keeps them); dicts are
    merged (the plan wins); lists get the plan's entries appended (the admin's home volume
    stays). The plan's strings in traits kubespawner expands as templates are escaped, so
    that JSON (the scope annotation) survives; the configured values are left as they are.
    """
    out: dict[str, Any] = {}
    for name in MANAGED_TRAITS:
        ours = getattr(settings, name)
        if name in _TEMPLATED:  # only ours: the admin's own templates ({username}) must still expand
            ours = escape_template(ours)
        configured = base.get(name)
        if isinstance(ours, dict):
            out[name] = {**(configured or {}), **ours}
        elif isinstance(ours, list):
            out[name] = _as_list(configured) + ours
        else:
            out[name] = configured if ours is None else ours
    return out
