"""A researcher's server shared with members of its projects: the server's side (issue 22).

The hub's governance service makes the shares (JupyterHub's own, after XNAT says the guest
reads every project of the server's scope: :mod:`hub_ext.sharing`); the server offers them to
its owner (``GET|POST …/xnat-hpc/api/shares``, ``DELETE …/shares/{user}``: the owner only)
and asks the hub again whenever a share's guest (:func:`is_guest`) uses it:
:class:`ShareAuthorizer`, jupyter_server's authorizer of every request, allows the owner and
asks governance about anyone else (``GET /hub/api/xnat-hpc/shares/{user}``), keeping a yes for
``ttl`` seconds (the permission cache's 60 s); a no, or a hub that cannot answer, refuses.

A guest works **as the owner's account, with the owner's scope and XNAT rights**: their
kernels run as the owner, their files are the owner's, what they stage and submit is audited
as the owner's. Share only with whom you would hand your session.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from traitlets import Float

from ..errors import PermissionDenied, XnatHpcError
from ..extras import needs_extra
from ..offload.review import ReviewClient

with needs_extra("server", "the server's share authorizer (xnat_bridge.serverext.sharing)"):
    from jupyter_server.auth.authorizer import Authorizer

log = logging.getLogger(__name__)


def owner() -> str:
    """The server's owner as the hub started it (``JUPYTERHUB_USER``), or "" outside a hub."""
    return os.environ.get("JUPYTERHUB_USER", "")


def is_guest(hub_user: dict, server_owner: str) -> bool:
    """Whether the hub's model of a non-owner caller is a share's guest (pure): a **user** whose
    access to servers is this server alone (a share grants ``access:servers!server=OWNER/NAME``).
    A hub service, or an administrator's access (``access:servers``, or all of the owner's
    servers), is the admins' own, trusted as the hub is (docs/security.md), and not asked about."""
    if hub_user.get("kind", "user") != "user":
        return False
    scopes = set(hub_user.get("scopes") or ())
    return not ({"access:servers", f"access:servers!user={server_owner}"} & scopes)


def check_owner(user_name: str) -> None:
    """Only the server's owner manages its shares (a guest works in it, shares nothing)."""
    if owner() and user_name != owner():
        raise PermissionDenied(f"only {owner()}, whose server this is, shares it")


def hub_client() -> ReviewClient:
    client = ReviewClient.from_env()
    if client is None:
        raise PermissionDenied("sharing needs the hub: this server was not started by one (no JUPYTERHUB_API_URL)")
    return client


class ShareAuthorizer(Authorizer):
    """jupyter_server's authorizer (``c.ServerApp.authorizer_class``): the owner, or a guest
    the hub says may use this server now (module docstring)."""

    ttl = Float(60.0, help="""Seconds a guest the hub allowed is not asked about again (0: at every
        request). A guest whose share ended, or who lost a project of the server's scope in
        XNAT, is refused at the first request after that.""").tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._allowed: dict[str, float] = {}

    async def is_authorized(self, handler, user, action: str, resource: str) -> bool:
        name = getattr(user, "username", "")
        if not owner() or name == owner() or not is_guest(getattr(user, "hub_user", None) or {}, owner()):
            return True
        now = time.monotonic()
        if self._allowed.get(name, 0.0) > now:
            return True
        try:
            client = hub_client()
            await asyncio.get_running_loop().run_in_executor(None, client.check_guest, name)
        except XnatHpcError as e:
            self._allowed.pop(name, None)
            log.warning("xnat-hpc: %s refused on %s's server (%s %s): %s", name, owner(), action, resource, e.message)
            return False
        self._allowed[name] = now + self.ttl
        return True
