"""``xnat-kube``: the XNAT-scoped spawner on kubespawner.

The mixin validates the request with XNAT and calls :meth:`apply_plan`, which
only runs the pure builders of :mod:`spawner.kube_objects` and sets
kubespawner's traits; kubespawner then creates the pod. The alias token lives
in a per-server ``Secret`` (created or replaced just before the pod, deleted
after it) that the pod reads through ``secretKeyRef``.
"""

from __future__ import annotations

import asyncio
import copy

from traitlets import Dict, Unicode, default, validate

from xnat_bridge.extras import needs_extra

with needs_extra("hub", "the Kubernetes backend (spawner.kube)"):
    from jupyterhub.utils import exponential_backoff
    from kubernetes_asyncio.client.rest import ApiException
    from kubespawner import KubeSpawner

from .kube_objects import (
    GPU_RESOURCE,
    MANAGED_TRAITS,
    ArchiveVolume,
    make_secret,
    pod_settings,
    secret_name_for,
    trait_values,
)
from .mixin import XnatScopedSpawner
from .plan import DataMount, SpawnPlan


class XnatKubeSpawner(XnatScopedSpawner, KubeSpawner):
    """A pod that sees only its scope of the XNAT archive, read-only."""

    backends = ("kubernetes",)

    xnat_archive_volume = Dict(
        help="""Where the XNAT archive root is reachable in the cluster, mounted read-only
        and only at the scope's sub-paths (``subPath`` = ``PROJECT[/arcNNN/SESSION]``).
        Either a PVC, ``{"claim_name": "xnat-archive"}``, or an NFS export,
        ``{"nfs_server": "nfs.example.org", "nfs_path": "/data/xnat/archive"}``.
        Empty (default): nothing is mounted and servers reach the data through
        XNAT's REST API only.""",
    ).tag(config=True)

    xnat_gpu_resource = Unicode(
        GPU_RESOURCE,
        help="Extended resource a profile's ``gpus`` are requested as (e.g. amd.com/gpu).",
    ).tag(config=True)

    _xnat_base: dict | None = None     # the configured values of the traits a plan sets
    _xnat_settings = None
    _xnat_secret: dict | None = None

    @validate("xnat_archive_volume")
    def _check_archive(self, proposal):
        ArchiveVolume.from_config(proposal["value"])  # raises with the fix in the message
        return proposal["value"]

    @default("xnat_data_root")
    def _default_data_root(self):
        """Where the archive is in the cluster (``pvc:NAME`` / ``nfs:SERVER:PATH``), for the record."""
        archive = ArchiveVolume.from_config(self.xnat_archive_volume)
        if archive is None:
            return ""
        if archive.claim_name:
            return f"pvc:{archive.claim_name}"
        return f"nfs:{archive.nfs_server}:{archive.nfs_path}"

    def data_mount(self) -> DataMount:
        """``subPath`` mounts of ``xnat_archive_volume``; none (REST only) when it is empty."""
        return DataMount.VOLUME if ArchiveVolume.from_config(self.xnat_archive_volume) else DataMount.NONE

    @property
    def xnat_secret_name(self) -> str:
        return secret_name_for(self.pod_name)

    def apply_plan(self, plan: SpawnPlan) -> None:
        if self._xnat_base is None:
            self._xnat_base = {name: copy.deepcopy(getattr(self, name)) for name in MANAGED_TRAITS}
        archive = ArchiveVolume.from_config(self.xnat_archive_volume)
        if archive is None:
            self.log.info("No xnat_archive_volume: %s's server reaches its scope through REST only",
                          plan.user)
        self._xnat_settings = pod_settings(plan, archive, secret_name=self.xnat_secret_name,
                                           gpu_resource=self.xnat_gpu_resource)
        self._xnat_secret = make_secret(plan, self.xnat_secret_name) if plan.secret_env else None
        for name, value in trait_values(self._xnat_settings, self._xnat_base).items():
            setattr(self, name, value)

    async def load_user_options(self):
        """Nothing: the mixin has validated ``user_options`` against XNAT and the admin's profiles
        and applied the plan. kubespawner's own ``profile_list`` is not used; its check would
        refuse our ``profile`` (a slug of ours) as unknown."""

    def get_env(self):
        """Last word on the plan's secrets: they stay ``secretKeyRef``, never values."""
        env = super().get_env()  # the mixin has put plan.secret_env in as plain values
        if self._xnat_settings is not None:
            env.update(self._xnat_settings.environment)
        return env

    async def get_pod_manifest(self):
        """The pod, once the Secret it reads ``XNAT_PASS`` from exists (namespace is ready here)."""
        if self._xnat_secret is not None:
            await self._xnat_put_secret(self._xnat_secret)
        return await super().get_pod_manifest()

    async def _xnat_put_secret(self, body: dict) -> None:
        """Create the Secret; one left from an earlier start is deleted first (z2jh's hub role
        may create and delete secrets, not update them). The body is never logged."""
        name, timeout = body["metadata"]["name"], self.k8s_api_request_timeout
        self.log.info("Writing secret %s/%s for %s", self.namespace, name, self.user.name)

        async def create() -> bool:
            try:
                await asyncio.wait_for(self.api.create_namespaced_secret(self.namespace, body), timeout)
                return True
            except asyncio.TimeoutError:
                return False
            except ApiException as e:
                if e.status != 409:
                    raise
            await self._xnat_delete_secret(name)
            return False

        await exponential_backoff(create, f"Could not create secret {self.namespace}/{name}",
                                  timeout=self.k8s_api_request_retry_timeout)

    async def _xnat_delete_secret(self, name: str) -> None:
        try:
            await asyncio.wait_for(self.api.delete_namespaced_secret(name, self.namespace),
                                   self.k8s_api_request_timeout)
        except ApiException as e:
            if e.status != 404:
                raise

    async def stop(self, now=False):
        await super().stop(now=now)
        self._xnat_settings = self._xnat_secret = None
        try:
            await self._xnat_delete_secret(self.xnat_secret_name)
        except (ApiException, asyncio.TimeoutError) as e:
            self.log.warning("Could not delete secret %s/%s: %s", self.namespace, self.xnat_secret_name,
                             getattr(e, "reason", type(e).__name__))
