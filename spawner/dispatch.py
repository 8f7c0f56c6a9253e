"""``xnat`` (the dispatcher): one hub, profiles of every backend.

The admin's profiles may mix ``local``, ``slurm`` and ``kubernetes``; this
spawner shows them all in one form, validates the request like every
backend (it is an :class:`~spawner.mixin.XnatScopedSpawner` too), and then
hands the already-checked plan to a child spawner of the profile's backend
(``backend_classes``), delegating start, poll, stop and state to it — the
pattern of wrapspawner's ProfilesSpawner, with validation before the choice.

The child gets the plan (``xnat_plan``) and this start's progress channel
(``spawn_progress``, :mod:`spawner.progress`) explicitly; JupyterHub reads the
progress from this spawner, the child reports into the same channel.
"""

from __future__ import annotations

from traitlets import Any, Dict, Unicode
from traitlets.utils.importstring import import_item

from hub_ext.errors import spawn_error
from xnat_bridge.errors import XnatHpcError
from xnat_bridge.extras import needs_extra

from .mixin import XnatScopedSpawner
from .plan import DataMount, SpawnPlan
from .progress import SpawnProgress

with needs_extra("hub", "the XNAT spawner (spawner.dispatch)"):
    from jupyterhub.spawner import Spawner

#: traits the child must share with the spawner JupyterHub created
_SHARED = ("user", "orm_spawner", "hub", "authenticator", "proxy_spec", "oauth_client_id",
           "cookie_options", "cookie_host_prefix_enabled", "trusted_alt_names", "user_options",
           "internal_ssl", "internal_trust_bundles", "internal_certs_location", "public_url",
           "public_hub_url", "api_token", "cert_paths")


class XnatProfilesSpawner(XnatScopedSpawner, Spawner):
    """Dispatch each server to the backend of the profile the user chose."""

    backends = ("local", "slurm", "kubernetes")

    backend_classes = Dict(
        default_value={"local": "spawner.local.XnatLocalSpawner", "slurm": "spawner.slurm.XnatSlurmSpawner",
         "kubernetes": "spawner.kube.XnatKubeSpawner"},
        help="""Spawner class (import string) for each profile backend. Configure each
        backend's own options on its class, e.g. ``c.XnatSlurmSpawner.server_host``.""",
    ).tag(config=True)

    child = Any(None, help="The backend spawner of the current server.")
    _child_backend = Unicode("")

    def _make_child(self, backend: str) -> Spawner:
        try:
            cls = import_item(self.backend_classes[backend])
        except KeyError:
            raise spawn_error(XnatHpcError(f"no spawner configured for backend {backend!r}")) from None
        kwargs = {name: getattr(self, name) for name in _SHARED
                  if self.has_trait(name) and cls.class_traits().get(name) is not None}
        child = cls(config=self.config, _deprecated_db_session=self.db, **kwargs)
        self.child, self._child_backend = child, backend
        return child

    def data_mount_for(self, profile) -> DataMount:
        """The profile's backend says how it mounts data; it becomes this server's child."""
        return self._make_child(profile.backend).data_mount()

    async def start(self):
        self.spawn_progress = SpawnProgress()
        plan: SpawnPlan = await self.checked_plan()
        child = self.child  # made for the profile's backend while planning (data_mount_for)
        child.xnat_plan = plan
        child.spawn_progress = self.spawn_progress
        child.api_token = self.api_token
        return await child.start()

    async def poll(self):
        return await self.child.poll() if self.child is not None else 0

    async def stop(self, now=False):
        try:
            if self.child is not None:
                await self.child.stop(now=now)
        finally:
            self.spawn_progress = None

    def get_state(self):
        state = super().get_state()
        if self.child is not None:
            state.update(backend=self._child_backend, child=self.child.get_state())
        return state

    def load_state(self, state):
        super().load_state(state)
        backend = state.get("backend")
        if backend and backend in self.backend_classes:
            self._make_child(backend).load_state(state.get("child") or {})

    def clear_state(self):
        super().clear_state()
        if self.child is not None:
            self.child.clear_state()
        self.child, self._child_backend = None, ""
