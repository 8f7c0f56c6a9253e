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

from traitlets import Bool, Dict, Float, Unicode, default, validate

from xnat_bridge.extras import needs_extra

with needs_extra("hub", "the Kubernetes backend (spawner.kube)"):
    from jupyterhub.utils import exponential_backoff
    from kubernetes_asyncio.client.rest import ApiException
    from kubespawner import KubeSpawner

from hub_ext.unix_accounts import unix_account

from .kube_objects import (
    GPU_RESOURCE,
    MANAGED_TRAITS,
    ArchiveVolume,
    make_secret,
    pod_settings,
    secret_name_for,
    trait_values,
)
from .kube_watch import PodWillNotStart, api_refusal, claim_failure, claim_names, pod_ended, pod_failure, \
    unbound_claims_block
from .mixin import XnatScopedSpawner
from .userdirs import prepare_staging
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

    xnat_pod_check_interval = Float(
        0.5,
        help="""Seconds between two looks at a starting pod (in kubespawner's watch of the pods: no
        request): running, the start ends at once; in a state that waiting does not cure
        (an image the node lacks with ``imagePullPolicy: Never``, a claim no volume can bind, a
        server that keeps crashing: :func:`spawner.kube_watch.pod_failure`); the start then fails
        at once with the reason. 0: never look (kubespawner waits for ``start_timeout``).""",
    ).tag(config=True)

    xnat_unix_accounts = Bool(
        False,
        help="""Run each server's pod as the user's Unix account — its uid and primary gid, as the
        local and Slurm backends map hub users to accounts (``c.UnixAccounts``) — and make the
        user's directory in the offload staging area as they do (root's hub, the staging area
        reachable at the profiles' ``offload.staging_dir``). For sites whose pods are clients of
        a Slurm partition (the EMCP setup): Slurm, munge and the nodes know users by uid, and
        the staging area is shared with the nodes at the same path. Off (default): the image's
        account (kubespawner's ``uid``/``gid``).""",
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

    async def prepare_host(self, plan: SpawnPlan) -> None:
        """With :attr:`xnat_unix_accounts`: the pod's uid and gid are the user's Unix account's,
        and their staging directory is made as on the other backends."""
        if not self.xnat_unix_accounts:
            return
        account = await asyncio.to_thread(unix_account, self.user.name, self.config)
        await prepare_staging(self, plan, account)
        self.uid, self.gid = account.pw_uid, account.pw_gid

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

    async def _start(self):
        """kubespawner's start, watched: a pod that will not start fails it at once with the
        reason (:class:`~spawner.kube_watch.PodWillNotStart`); the API server's refusal of the pod
        for a quota becomes an error the user understands (:func:`~spawner.kube_watch.api_refusal`).
        Whatever ends a start early (those, an API error, JupyterHub's ``start_timeout``) removes
        its pod and Secret."""
        start = asyncio.ensure_future(super()._start())
        try:
            url = await self._xnat_watch_start(start)
        except BaseException:
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            await asyncio.shield(self._xnat_remove_after_failure())
            raise
        if not start.done():  # the pod ran before kubespawner's back-off looked again
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
        return url

    def _xnat_running(self, pod: dict | None) -> bool:
        """The pod runs and kubespawner has nothing left to do after that (no services, no
        internal TLS, no hook): its start may end now."""
        return (pod is not None and not (self.internal_ssl or self.services_enabled or self.after_pod_created_hook)
                and bool((pod.get("status") or {}).get("containerStatuses")) and self.is_pod_running(pod))

    async def _xnat_watch_start(self, start: asyncio.Future):
        """kubespawner's start *start* until it ends, looking at the pod in its watch every
        :attr:`xnat_pod_check_interval`: ended at once when the pod runs (kubespawner would look
        again only after its exponential back-off, up to seconds later) or will never run."""
        try:
            while True:
                done, _ = await asyncio.wait({start}, timeout=self.xnat_pod_check_interval or None)
                if done:
                    return start.result()
                pod = self._xnat_pod()
                if self._xnat_running(pod):
                    self.pod_id = pod["metadata"]["uid"]
                    return self._get_pod_url(pod)
                reason = await self._xnat_pod_failure()
                if reason:
                    self.log.warning("%s's pod %s/%s will not start: %s", self.user.name, self.namespace,
                                     self.pod_name, reason)
                    raise PodWillNotStart(f"Your server cannot start: {reason}.")
        except ApiException as e:
            refusal = api_refusal(e.status, e.body)
            if refusal is None:
                raise
            self.log.warning("%s's pod %s/%s refused: %s", self.user.name, self.namespace, self.pod_name,
                             refusal.message)
            raise refusal from None

    def _xnat_pod(self) -> dict | None:
        reflector = getattr(self, "pod_reflector", None)
        return reflector.pods.get(f"{self.namespace}/{self.pod_name}") if reflector is not None else None

    async def _xnat_pod_failure(self) -> str | None:
        pod = self._xnat_pod()
        if pod is None:
            return None
        reasons = {}
        if unbound_claims_block(pod):
            for claim in claim_names(pod):
                reasons[claim] = await self._xnat_claim_failure(claim, pod["metadata"].get("creationTimestamp"))
        return pod_failure(pod, reasons)

    async def _xnat_claim_failure(self, name: str, since: str | None) -> str | None:
        """:func:`~spawner.kube_watch.claim_failure` of the claim *name* (its events too; the
        hub's Role reads both); None when the API does not answer."""
        timeout = self.k8s_api_request_timeout
        try:
            claim = await asyncio.wait_for(self.api.read_namespaced_persistent_volume_claim(name, self.namespace),
                                           timeout)
            events = await asyncio.wait_for(self.api.list_namespaced_event(
                self.namespace, field_selector=f"involvedObject.kind=PersistentVolumeClaim,involvedObject.name={name}"),
                timeout)
        except (ApiException, asyncio.TimeoutError):
            return None
        plain = self.api.api_client.sanitize_for_serialization
        return claim_failure(plain(claim), [plain(e) for e in events.items], since)

    async def poll(self):
        """kubespawner's, and a pod that is being deleted or was evicted is a stopped server at
        once (the hub notices within its poll interval, not when the pod is finally gone). A
        stopped server's Secret is deleted here: JupyterHub calls ``stop`` only for a server it
        finds running."""
        status = await super().poll()
        if status is None:
            ended = pod_ended(self._xnat_pod())
            if ended:
                self.log.warning("%s's server %s/%s has stopped: %s", self.user.name, self.namespace,
                                 self.pod_name, ended)
                status = 1
        if status is not None:
            await self._xnat_drop_secret()
        return status

    async def stop(self, now=False):
        try:
            await super().stop(now=now)
        finally:
            self._xnat_settings = self._xnat_secret = None
            await self._xnat_drop_secret()

    async def _xnat_drop_secret(self) -> None:
        try:
            await self._xnat_delete_secret(self.xnat_secret_name)
        except (ApiException, asyncio.TimeoutError) as e:
            self.log.warning("Could not delete secret %s/%s: %s", self.namespace, self.xnat_secret_name,
                             getattr(e, "reason", type(e).__name__))

    async def _xnat_remove_after_failure(self) -> None:
        """A start that failed leaves nothing: its pod (when there is one; JupyterHub stops only
        a server whose pod it finds) and its Secret (always: the token must not outlive it)."""
        try:
            await KubeSpawner.stop(self, now=True)
        except Exception:  # noqa: BLE001 - the start's own error is what the user must read
            self.log.exception("Could not delete %s/%s after its failed start", self.namespace, self.pod_name)
        finally:
            await self._xnat_drop_secret()
