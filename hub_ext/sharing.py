"""Sharing a researcher's server with members of its projects (issue 22, part 2), pure.

JupyterHub (>= 5) shares a server with a user (``POST /hub/api/shares/{owner}/{server}``); the
guest then opens it with their own login, as its owner's account, with its owner's scope. Here a
share is made only by the governance service (the only holder of the ``shares`` scope: users are
not given it), and only with a user whom XNAT lets read **every** project of the server's scope,
as the hub decided it at the server's start. The same rule is asked again when the guest opens
the server (the server asks governance) and by the periodic re-check, which ends a share whose
guest lost a project (:mod:`xnat_hpc_governance.revocation_watch`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from xnat_bridge.errors import InvalidRequest, XnatUnavailable

#: a hub user's name as a share names it (JupyterHub's names hold no "/" or white space)
_NAME = re.compile(r"^[^/\s]{1,255}$")


def check_guest(body, owner: str) -> str:
    """The guest of a share request ``{"user": NAME}`` (pure); the owner is no guest."""
    if not isinstance(body, Mapping) or set(body) != {"user"}:
        raise InvalidRequest("the body must be {\"user\": NAME}: the hub user to share the server with")
    guest = body["user"]
    if not isinstance(guest, str) or not _NAME.match(guest):
        raise InvalidRequest(f"{str(guest)[:60]!r} is not a hub user's name", item=str(guest)[:60])
    if guest == owner:
        raise InvalidRequest("a server is not shared with its own user")
    return guest


def unreadable(projects: Iterable[str], readable: set[str] | None, guest: str) -> list[str]:
    """The projects of a server's scope *guest* may not read (sorted; empty: they may read all);
    *readable* None (XNAT could not tell) is an error, never a yes."""
    if readable is None:
        raise XnatUnavailable(f"XNAT could not tell which projects {guest} may read; try again later")
    return sorted(set(projects) - set(readable))
