"""The Unix socket between the hub and the governance service's process.

The hub passes the researchers' servers' calls to governance on to the service
(:mod:`hub_ext.governance_forward`); those calls carry the servers' own hub tokens. A TCP port
on the loopback address would hand them to whichever account bound it first — any account on
the machine, while the service restarts. So the service listens on a Unix socket
(``c.XnatGovernance.service_socket``) that only the hub's account can reach or take:

- the socket's directory belongs to the hub's account and no other account may write it
  (:func:`check_directory`; made 0700 when missing): nobody else can place a socket or a link
  there;
- the socket is 0600 (:func:`listen`): nobody else can connect to the service;
- the hub connects only to a socket, not a link, of its own account (:func:`check_socket`).

Both processes run as the hub's account (JupyterHub starts managed services as itself).
"""

from __future__ import annotations

import os
import socket
import stat

from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import Resolver, bind_unix_socket

from xnat_bridge.errors import XnatHpcError


class GovernanceUnavailable(XnatHpcError):
    """The governance service's socket is not there (the service is not running), or not safe."""

    status = 503
    reason = "governance_unavailable"


def check_directory(path: str, *, create: bool = False) -> None:
    """The socket's directory *path* is a directory (not a link) of this account that no other
    account may write; with *create*, a missing one is made 0700. :class:`GovernanceUnavailable`
    naming the fix otherwise."""
    what = f"the governance service's socket directory {path} (c.XnatGovernance.service_socket)"
    if create and not os.path.lexists(path):
        os.makedirs(path, mode=0o700, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise GovernanceUnavailable(f"{what} does not exist", item=path) from None
    if not stat.S_ISDIR(st.st_mode):
        raise GovernanceUnavailable(f"{what} is not a directory (a link or a file)", item=path)
    if st.st_uid != os.geteuid():
        raise GovernanceUnavailable(f"{what} belongs to uid {st.st_uid}, not to the hub's account "
                                    f"(uid {os.geteuid()}); make it the hub's: chown, chmod 700", item=path)
    if st.st_mode & 0o022:
        raise GovernanceUnavailable(f"{what} may be written by other accounts (mode {stat.S_IMODE(st.st_mode):o}); "
                                    "chmod 700 it", item=path)


def check_socket(path: str) -> None:
    """*path* is a Unix socket (not a link) of this account, safe to send the servers' tokens to."""
    check_directory(os.path.dirname(path))
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise GovernanceUnavailable(f"the governance service is not running (no socket at {path})", item=path) \
            from None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        raise GovernanceUnavailable(f"{path} is not the governance service's socket (not a socket of the hub's "
                                    "account); nothing is sent to it", item=path)


def listen(path: str) -> socket.socket:
    """The service's listening socket at *path*, 0600, in a checked directory (made 0700 when
    missing). A socket of this account left there by a process that ended is replaced; anything
    else is refused."""
    check_directory(os.path.dirname(path), create=True)
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
            raise GovernanceUnavailable(f"{path} exists and is not a socket of the hub's account; remove it",
                                        item=path)
    return bind_unix_socket(path, mode=0o600)


class _SocketResolver(Resolver):
    """Every host name resolves to the socket *path* (Tornado's client then connects there)."""

    def initialize(self, path: str) -> None:  # noqa: D401 - Tornado's Configurable
        self.path = path

    async def resolve(self, host, port, family=socket.AF_UNSPEC):
        return [(socket.AF_UNIX, self.path)]

    def close(self) -> None:
        pass


def client(path: str) -> AsyncHTTPClient:
    """An HTTP client whose every request goes to the socket *path* (its own instance: close it).
    Call :func:`check_socket` before each use."""
    from tornado.simple_httpclient import SimpleAsyncHTTPClient

    return SimpleAsyncHTTPClient(force_instance=True, resolver=_SocketResolver(path=path))
