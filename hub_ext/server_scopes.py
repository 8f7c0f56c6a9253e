"""What a researcher's server may tell governance: custom scopes on the server's own hub token.

A server calls governance with its ``JUPYTERHUB_API_TOKEN`` (audit ingestion, the job ledger
and held results: :mod:`xnat_hpc_governance.audit_api`, :mod:`xnat_hpc_governance.server_api`). The token names what the
server may do there, as JupyterHub's own scopes name the rest:

==========================  =====================================================================
``custom:xnat-hpc:audit``   post the server's audit events (``POST /hub/api/xnat-hpc/audit``)
``custom:xnat-hpc:jobs``    enter its jobs in the hub's ledger and report them, hold their results
                            for review, and fetch the hub's key share of an approved job
                            (``/hub/api/xnat-hpc/jobs/{id}``, ``/hub/api/xnat-hpc/review/jobs/{id}``)
==========================  =====================================================================

Each is granted **filtered to the server itself** (``custom:xnat-hpc:audit!server=bob/gpu``):
:func:`register_server_scopes` defines them (``c.JupyterHub.custom_scopes``), asks for them in
every server's token (``c.Spawner.server_token_scopes``, ``…!server``, which JupyterHub resolves
to ``!server=USER/NAME`` when it issues the token) and lets users hold them (the ``user`` role,
``…!user``: JupyterHub gives a server's token only the requested scopes its user holds). JupyterHub
5.0 and 6.x behave the same here. What the token already carried stays:
``access:servers!server`` (the server's own login) and ``users:activity!user`` (JupyterHub's
activity reports, the idle culler's data).

**The rule of a call** (:func:`required_scope`, checked by :func:`check_server_token` after the
token was bound to its server by the digest in the server's
:class:`~xnat_bridge.spawn_record.SpawnRecord`): a server started while the hub defined these
scopes (its record's ``server_scopes`` is not empty) must hold the call's scope for **that**
server; a server started before a site upgraded (no marker: its token was issued with the
``server`` role's scopes only) is held to what it was issued, ``users:activity!user=NAME``,
until it stops, so that its events still arrive. Personal tokens, cookies and other servers'
tokens are not bound to the server and never get this far. (The ledger API also asks every
caller for ``users:activity!user=NAME``, which JupyterHub puts in every server's token, and
lets that alone read the user's own rows: :mod:`xnat_hpc_governance.server_api`.)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from traitlets.config import LazyConfigValue

from xnat_bridge.errors import PermissionDenied, XnatHpcError
from xnat_bridge.spawn_record import SCOPE_PREFIX, SpawnRecord

AUDIT = SCOPE_PREFIX + "audit"
JOBS = SCOPE_PREFIX + "jobs"

#: the custom scopes of researchers' servers, as ``c.JupyterHub.custom_scopes`` takes them
#: (JupyterHub shows the descriptions on token pages)
SERVER_SCOPES: dict[str, dict[str, str]] = {
    AUDIT: {"description": "Post the audit events of a server to xnat-hpc-hub's audit trail."},
    JOBS: {"description": ("Enter and report a server's jobs in xnat-hpc-hub's job ledger, hold their "
                           "results for review and fetch the key share of approved results.")},
}

#: what every server's token keeps (JupyterHub's default ``server`` role): its own login, activity
BASE_SERVER_TOKEN_SCOPES = ("users:activity!user", "access:servers!server")

#: what a server started before the hub defined :data:`SERVER_SCOPES` was issued, and still holds
LEGACY_SCOPE = "users:activity"


class ServerScopesConflict(XnatHpcError):
    """The hub's configuration defines one of :data:`SERVER_SCOPES` differently."""

    status = 500
    reason = "server_scopes_conflict"


# -- configuration -------------------------------------------------------------------------------
def server_token_scopes(base: Iterable[str]) -> list[str]:
    """*base* (the scopes a server's token is asked for otherwise) with :data:`SERVER_SCOPES`
    filtered to the server (``…!server``) added, nothing dropped, no scope twice (pure)."""
    out = list(dict.fromkeys(base))
    return out + [f"{s}!server" for s in SERVER_SCOPES if f"{s}!server" not in out]


def user_role_scopes(base: Iterable[str]) -> list[str]:
    """*base* (the ``user`` role's scopes) with :data:`SERVER_SCOPES` filtered to the user
    (``…!user``) added (pure): a server's token gets only what its user holds."""
    out = list(dict.fromkeys(base))
    return out + [f"{s}!user" for s in SERVER_SCOPES if f"{s}!user" not in out]


def add_user_role_scopes(c, scopes: Iterable[str]) -> None:
    """Add *scopes* to the ``user`` role of the hub's configuration *c*: to the site's own
    ``user`` role in ``c.JupyterHub.load_roles``, or to a ``user`` role of ``self`` and the site's
    ``extra_user_scopes`` (JupyterHub 6 ignores them once the role is defined; JupyterHub 5.0
    has none). Adding a scope twice changes nothing."""
    hub = c.JupyterHub
    add = list(scopes)

    def merged(base: Iterable[str]) -> list[str]:
        out = list(dict.fromkeys(base))
        return out + [s for s in add if s not in out]

    roles, found = [], False
    for role in _value(hub, "load_roles", []):
        if isinstance(role, Mapping) and role.get("name") == "user":
            role, found = {**role, "scopes": merged(role.get("scopes", ["self"]))}, True
        roles.append(role)
    if not found:
        extra = sorted(_value(hub, "extra_user_scopes", set()))
        roles.append({"name": "user", "description": "Standard user privileges, and xnat-hpc-hub's",
                      "scopes": merged(["self", *extra])})
    hub.load_roles = roles


def _value(section, key: str, default):
    """*section*'s *key* as a plain value (a lazy ``.append``/``.update`` applied to *default*),
    or *default* when unset."""
    if key not in section:
        return default
    value = section[key]
    return value.get_value(default) if isinstance(value, LazyConfigValue) else value


def _default_server_scopes(hub) -> list[str]:
    """What JupyterHub asks for a server's token when ``server_token_scopes`` is empty: the
    ``server`` role's scopes, the site's own (``load_roles``) or JupyterHub's default."""
    for role in _value(hub, "load_roles", []):
        if isinstance(role, Mapping) and role.get("name") == "server" and "scopes" in role:
            return list(role["scopes"])
    from jupyterhub.roles import get_default_roles

    for role in get_default_roles():
        if role["name"] == "server":
            return list(role["scopes"])
    return list(BASE_SERVER_TOKEN_SCOPES)


def _with_server_scopes(value, default: list[str]):
    """A ``server_token_scopes`` value with :data:`SERVER_SCOPES` added: a list, or a callable
    that adds them to what the site's callable answers (its empty answer: *default*)."""
    if callable(value):
        if getattr(value, "xnat_hpc_server_scopes", False):
            return value
        site = value

        async def scopes(spawner):
            from jupyterhub.utils import maybe_future

            asked = await maybe_future(site(spawner))
            return server_token_scopes(asked or default)

        scopes.xnat_hpc_server_scopes = True
        scopes.__doc__ = f"{getattr(site, '__name__', 'the site callable')}'s scopes and xnat-hpc's"
        return scopes
    return server_token_scopes(value or default)


def register_server_scopes(c) -> None:
    """Make every server's hub token carry :data:`SERVER_SCOPES`, each filtered to the server,
    on the hub's configuration *c* (``jupyterhub_config.py``; call it after your own
    ``load_roles`` and ``server_token_scopes``, which an assignment after it would replace):

    * ``c.JupyterHub.custom_scopes``: the two scopes defined (a different definition of one of
      them: :class:`ServerScopesConflict`);
    * the ``user`` role (``c.JupyterHub.load_roles``): ``…!user`` added to the site's ``user``
      role, or a ``user`` role of ``self``, the site's ``extra_user_scopes`` (JupyterHub 6
      ignores them once the role is defined) and those (JupyterHub 5.0 has no
      ``extra_user_scopes``);
    * ``server_token_scopes``: ``…!server`` added on ``c.Spawner`` and on every spawner section
      that sets its own (a list; a callable is wrapped); where unset, the ``server`` role's
      scopes and ours, so ``access:servers!server`` and ``users:activity!user`` stay.

    Calling it twice changes nothing more."""
    hub = c.JupyterHub
    custom = dict(_value(hub, "custom_scopes", {}))
    for name, definition in SERVER_SCOPES.items():
        if name in custom and dict(custom[name]) != definition:
            raise ServerScopesConflict(f"c.JupyterHub.custom_scopes defines {name} as {custom[name]!r}; "
                                       "register_server_scopes(c) defines it: remove the other definition")
        custom[name] = dict(definition)
    hub.custom_scopes = custom

    add_user_role_scopes(c, [f"{s}!user" for s in SERVER_SCOPES])

    default = _default_server_scopes(hub)
    sections = {name for name, section in c.items()
                if isinstance(section, Mapping) and "server_token_scopes" in section}
    for name in sections | {"Spawner"}:
        section = c[name]
        section.server_token_scopes = _with_server_scopes(_value(section, "server_token_scopes", []), default)


# -- the check of a call -------------------------------------------------------------------------
def required_scope(scope: str, user: str, server: str, record: SpawnRecord | None, *,
                   unreadable: bool = False) -> str:
    """The expanded scope a call needing *scope* (:data:`AUDIT`, :data:`JOBS`) must carry from
    *user*'s server *server* with spawn record *record* (pure): *scope* filtered to that server
    when the record says the hub defined the server scopes at its start — also for a record the
    hub cannot read (*unreadable*: nothing says it is old) — else what servers were issued
    before (``users:activity!user=USER``)."""
    if unreadable or (record is not None and record.server_scopes):
        return f"{scope}!server={user}/{server}"
    return f"{LEGACY_SCOPE}!user={user}"


def check_server_token(has_scope: Callable[[str], bool], scope: str, user: str, server: str,
                       read_record: Callable[[], SpawnRecord | None], what: str) -> str:
    """Raise :class:`PermissionDenied` naming the missing scope unless the request (whose
    ``has_scope`` is given: the token's scopes as the hub expands them) may do *what* as
    *user*'s server *server* (whose own token the request carries; *read_record* reads its
    spawn record, raising when the record does not read); the scope checked."""
    try:
        record, unreadable = read_record(), False
    except XnatHpcError:
        record, unreadable = None, True
    needed = required_scope(scope, user, server, record, unreadable=unreadable)
    if has_scope(needed):
        return needed
    label = f"{user}/{server}" if server else f"{user}/ (default server)"
    if needed.startswith(scope):
        raise PermissionDenied(
            f"the hub token of server {label} does not hold the scope {needed}, which is needed to {what}. "
            "The hub grants it to the servers it starts (hub_ext.server_scopes.register_server_scopes(c) "
            "in jupyterhub_config.py: the user role must hold "
            f"{scope}!user and Spawner.server_token_scopes ask for {scope}!server); restart the server "
            "after changing that configuration")
    raise PermissionDenied(f"the hub token of server {label} does not hold the scope {needed}, which a "
                           f"server started before the hub granted {AUDIT} and {JOBS} needs to {what}")
