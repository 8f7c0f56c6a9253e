"""The logged-in visitor of the hub's pages, as XNAT knows them.

The owners' pages (audit, access, review) never take the hub's word for what a visitor
may do: they ask XNAT **with the visitor's own alias token** from ``auth_state``, each
request. These are the three steps they share: the token (or a clear refusal when the
visitor has none, e.g. a user XNAT started a server for who never logged in), a client of
the hub's XNAT, and the visitor's permissions now.
"""

from __future__ import annotations

import asyncio
import os

from xnat_bridge.client import XnatClient
from xnat_bridge.errors import PermissionDenied
from xnat_bridge.permissions import Permissions, fetch_permissions

from .xnat_api import AliasToken


def xnat_url(handler) -> str:
    """The XNAT the hub logs users in to (``c.XnatAuthenticator.xnat_url``, else ``$XNAT_HOST``)."""
    return getattr(handler.authenticator, "xnat_url", "") or os.environ.get("XNAT_HOST", "")


async def visitor_token(handler, why: str) -> AliasToken:
    """The visitor's alias token, or :class:`PermissionDenied` "log in with your XNAT account
    to *why*"."""
    state = await handler.current_user.get_auth_state() or {}
    token = AliasToken.from_state(state.get("xnat_token"))
    if token is None:
        raise PermissionDenied(f"log in with your XNAT account to {why}")
    return token


async def visitor_login(handler) -> str:
    """The visitor's XNAT login: the one they logged in with (``auth_state``; their hub name
    may be mapped from it, :mod:`hub_ext.names`), else their hub name."""
    state = await handler.current_user.get_auth_state() or {}
    return str(state.get("xnat_user") or handler.current_user.name)


def visitor_client(handler, token: AliasToken) -> XnatClient:
    """A client of the hub's XNAT as the visitor (short timeouts: a page waits on it)."""
    return XnatClient(xnat_url(handler), token.alias, token.secret, retries=1, timeout=15)


async def visitor_permissions(handler, why: str) -> Permissions:
    """What XNAT says the visitor may do now (asked in a thread, with their own token)."""
    token = await visitor_token(handler, why)
    name = await visitor_login(handler)

    def ask() -> Permissions:
        with visitor_client(handler, token) as client:
            return fetch_permissions(client, name)

    return await asyncio.to_thread(ask)
