"""Governance's client of the hub's REST API, as the hub service ``xnat-hpc-governance``.

What governance does to the hub's users and servers (the owners' page lists the servers running
now; a revocation, from the access page or the periodic re-check, stops servers) goes through
the hub's public REST API (``/hub/api``) with the token of one hub service,
:data:`SERVICE_NAME`, whose role grants the least it needs (:data:`GOVERNANCE_SCOPES`):

==================  =====================================================================
``list:users``      ``GET /users?state=active``: the users with a running server (it
                    implies ``read:users:name``)
``read:servers``    the ``servers`` of those user models, each with ``started``, ``ready``
                    and ``pending``; ``GET /users/{u}`` while a stop is awaited
``delete:servers``  ``DELETE /users/{u}/server`` and ``/users/{u}/servers/{name}``: stop
``admin:server_state``  each server's ``state``: the hub's
                    :class:`~xnat_bridge.spawn_record.SpawnRecord` (the scope the hub decided
                    at the start, the XNAT login), which revocation and the re-check read
``admin:auth_state``  each user's ``auth_state``: the XNAT alias token the re-check asks XNAT
                    with (as the user, before the service account)
==================  =====================================================================

Nothing reaches into JupyterHub's objects (no ``orm`` query, no private attribute of a
spawner), so the code can move into a service process of its own as it is (issue 19): the hub
stops a server the way its REST API always does — proxy route removed, spawner stopped, the
server's token deleted.

Configuration (:class:`XnatGovernance`): ``c.XnatGovernance.token_file``, a 0600 file of the
hub's account holding the service's token (:func:`xnat_bridge.private.read_private_file`; never
on a command line, in a URL or a log), and ``c.XnatGovernance.hub_api_url`` (default: the hub's
own ``api_url``). :func:`register_governance` registers the service and its role on a hub's
configuration from that file, so the file is named once. Without a token file every call raises
:class:`GovernanceNotConfigured` naming what to add: governance never falls back to the hub's
internals.

The client is async (Tornado's ``AsyncHTTPClient``); the token file is read in a thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import json
import logging
import os
import sys
from collections.abc import Mapping
from urllib.parse import quote, urlencode, urlsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPResponse
from traitlets import Bool, Float, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from xnat_bridge.errors import NotFound, PermissionDenied, XnatHpcError
from xnat_bridge.private import read_private_file

log = logging.getLogger(__name__)

#: the hub service governance acts as (``c.JupyterHub.services``)
SERVICE_NAME = "xnat-hpc-governance"
#: where the service serves the owners' pages by default (a privileged port: c.XnatGovernance.pages_url)
DEFAULT_PAGES_URL = "http://127.0.0.1:981"
#: what a user's token needs to open the owners' pages (every user's role holds it: register_governance)
PAGES_ACCESS_SCOPE = f"access:services!service={SERVICE_NAME}"
#: the least its role needs (module docstring: which call needs which)
GOVERNANCE_SCOPES = ("list:users", "read:servers", "delete:servers", "admin:server_state", "admin:auth_state",
                     "shares", "read:users:name")
#: JupyterHub's paginated answer of list endpoints (``{"items": …, "_pagination": …}``)
PAGINATION_MEDIA_TYPE = "application/jupyterhub-pagination+json"
#: what to add to ``jupyterhub_config.py`` (shown by the errors and the owners' page)
HOW_TO_CONFIGURE = (
    'c.XnatGovernance.token_file = "/etc/xnat-hpc-hub/governance-token" (a 0600 file of the hub\'s '
    "account: openssl rand -hex 32 > FILE; chmod 600 FILE), then "
    "`from hub_ext.hub_rest import register_governance; register_governance(c, config_file=__file__)` "
    f"(the service {SERVICE_NAME} and its role; docs/admin.md, \"The hub's pages and APIs\")")


class GovernanceNotConfigured(XnatHpcError):
    """The governance service's token or the hub's API address is not (correctly) configured."""

    status = 503
    reason = "governance_not_configured"


class HubApiError(XnatHpcError):
    """The hub's REST API did not answer, or not as it documents."""

    status = 502
    reason = "hub_api_error"


class XnatGovernance(LoggingConfigurable):
    """How governance reaches the hub's REST API (module docstring)."""

    token_file = Unicode(
        "",
        help=f"""File holding the API token of the hub service ``{SERVICE_NAME}``, through
        which governance lists running servers (owners' page) and stops them (revocations,
        the re-check). A regular file of the hub's account, mode 0600, one line (e.g.
        ``openssl rand -hex 32``); anything else is refused. Example:
        ``/etc/xnat-hpc-hub/governance-token``. Register the service with the same file:
        ``register_governance(c)`` (``hub_ext.hub_rest``). Empty (default): the owners' page
        lists no running servers and revocations stop none, each saying what to add.""",
    ).tag(config=True)

    hub_api_url = Unicode(
        "",
        help="""The hub's REST API as governance calls it, e.g.
        ``http://127.0.0.1:8081/hub/api``. Default: the hub's own ``api_url``
        (``http://{hub_connect_ip}:{hub_port}/hub/api``). On Kubernetes prefer the loopback
        address: the hub's Service name may be closed to the hub pod by a network policy.
        Warning: the token travels in a header to this address; use https for anything that
        is not loopback.""",
    ).tag(config=True)

    service_socket = Unicode(
        "/run/xnat-hpc-hub/governance.sock",
        help="""The Unix socket the governance service's process listens on: the hub passes the
        researchers' servers' calls to governance (``/hub/api/xnat-hpc/audit``, ``…/jobs/{id}``,
        ``…/review/…``) on to it there. A socket, not a TCP port: those calls carry the servers'
        own hub tokens, and a port on the loopback address can be taken by any account on the
        machine while the service restarts. The socket is 0600 in a directory of the hub's
        account that no other account may write (the service makes it 0700 when it is missing,
        and refuses one open to others); the hub connects only to a socket of its own account.
        An absolute path of at most 100 bytes. Example: ``/run/xnat-hpc-hub/governance.sock``.""",
    ).tag(config=True)

    pages_url = Unicode(
        DEFAULT_PAGES_URL,
        help=f"""Where the governance service's process serves the project owners' pages (the
        audit, access and review pages, ``/services/{SERVICE_NAME}/owner`` …; owners log in
        through the hub's OAuth): the hub's proxy routes ``/services/{SERVICE_NAME}/`` there.
        ``http://127.0.0.1:PORT``. JupyterHub's proxy routes a service only to a TCP port, and a
        port on the loopback address can be taken by any account on the machine while the service
        restarts, which would then receive owners' sessions: the default is a **privileged
        port** (below ``net.ipv4.ip_unprivileged_port_start``, 1024 by default), which only the
        hub's account (root, as the local and Slurm backends need) can take. The service refuses
        an unprivileged port unless ``c.XnatGovernance.allow_unprivileged_pages_port`` is set
        (Kubernetes: the hub pod's own network namespace). Example: ``http://127.0.0.1:981``.""",
    ).tag(config=True)

    pages_ip = Unicode(
        "",
        help="""The address the service listens on for the owners' pages. Default: the host of
        ``c.XnatGovernance.pages_url``. Set it where the proxy reaches the service by a name the
        service cannot bind: on Kubernetes (z2jh), ``pages_url = "http://hub:10101"`` (the hub's
        Service, which the proxy pod reaches) and ``pages_ip = "0.0.0.0"`` (the hub pod's
        interfaces). Example: ``0.0.0.0``.""",
    ).tag(config=True)

    allow_unprivileged_pages_port = Bool(
        False,
        help="""Let the service serve the owners' pages on a port any account may take
        (``c.XnatGovernance.pages_url``). Only where no other account shares the hub's network
        namespace: the hub's pod on Kubernetes (z2jh), a container of its own. Default: False.""",
    ).tag(config=True)

    timeout = Float(
        30.0,
        help="""Seconds one call to the hub's REST API may take. Example: ``10``.""",
    ).tag(config=True)

    stop_timeout = Float(
        60.0,
        help="""Seconds a stop waits until the hub no longer lists the server (polling
        ``GET /users/{u}``); a stop still pending then is reported as such (the hub goes on
        stopping it). Keep it above the spawners' own stop time. Example: ``120``.""",
    ).tag(config=True)

    poll_interval = Float(
        0.5,
        help="""Seconds between two looks at a server being stopped. Example: ``1``.""",
    ).tag(config=True)

    @validate("hub_api_url")
    def _http_url(self, proposal):
        value = proposal["value"].strip()
        if value and not value.startswith(("http://", "https://")):
            raise TraitError(f"c.XnatGovernance.hub_api_url must be an http(s) URL of the hub's REST API, "
                             f"not {value!r}; e.g. http://127.0.0.1:8081/hub/api")
        return value.rstrip("/")

    @validate("pages_url")
    def _pages_url(self, proposal):
        value = proposal["value"].strip().rstrip("/")
        try:
            check_pages_url(value)
        except ValueError as exc:
            raise TraitError(f"c.XnatGovernance.pages_url: {exc}") from None
        return value

    @validate("service_socket")
    def _socket_path(self, proposal):
        value = proposal["value"]
        if not os.path.isabs(value) or len(os.fsencode(value)) > 100:
            raise TraitError(f"c.XnatGovernance.service_socket must be an absolute path of at most 100 bytes "
                             f"(a Unix socket's limit), not {value!r}; e.g. /run/xnat-hpc-hub/governance.sock")
        return value

    @validate("timeout", "stop_timeout", "poll_interval")
    def _positive(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"c.XnatGovernance.{proposal['trait'].name} must be more than 0 seconds, "
                             f"not {proposal['value']}")
        return proposal["value"]


def check_pages_url(url: str) -> tuple[str, int]:
    """``(host, port)`` of a pages address ``http://HOST:PORT`` (pure); :class:`ValueError`
    naming what is wrong otherwise."""
    parsed = urlsplit(url)
    try:
        port = parsed.port
    except ValueError:
        port = None
    if parsed.scheme != "http" or not parsed.hostname or not port or parsed.path not in ("", "/") \
            or parsed.query or parsed.username:
        raise ValueError(f"{url!r} is not http://HOST:PORT (e.g. {DEFAULT_PAGES_URL})")
    return parsed.hostname, port


def unprivileged_port_start() -> int:
    """The first port any account may bind (Linux's ``net.ipv4.ip_unprivileged_port_start``;
    1024 where it cannot be read)."""
    try:
        with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", encoding="ascii") as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 1024


# -- the token file ----------------------------------------------------------------------------

def read_token(path: str) -> str:
    """The service's token from *path* (a private file of this account, one line); blocking.
    :class:`GovernanceNotConfigured` naming the setting and the file otherwise."""
    what = "c.XnatGovernance.token_file"
    if not path:
        raise GovernanceNotConfigured(f"the hub's governance service is not configured: {what} is not set. "
                                      f"Add {HOW_TO_CONFIGURE}")
    try:
        token = read_private_file(path, what=what, max_bytes=4096).decode("utf-8", "replace").strip()
    except NotFound:
        raise GovernanceNotConfigured(f"{what} {path} does not exist; create it: openssl rand -hex 32 > {path}; "
                                      f"chmod 600 {path} (and restart the hub)", item=path) from None
    except XnatHpcError as exc:  # UnsafePath: a link, another account's, open to others
        raise GovernanceNotConfigured(exc.message, item=path) from None
    if not token or any(ch.isspace() for ch in token):
        raise GovernanceNotConfigured(f"{what} {path} must hold the service's token on one line "
                                      "(e.g. openssl rand -hex 32)", item=path)
    return token


#: what the service's process gets from the hub's environment (a managed service's is empty
#: but for the hub's own ``JUPYTERHUB_*`` and ``PATH``-like keys)
SERVICE_ENV_KEEP = ("XNAT_HOST", "PYTHONPATH")


def managed_service(config_file: str, python: str | None = None) -> dict:
    """What makes the governance service's entry a managed one (``command``, ``environment``):
    the hub starts this interpreter with ``-m xnat_hpc_governance`` and the hub's
    configuration file, and passes on :data:`SERVICE_ENV_KEEP` from its own environment."""
    return {"command": [python or sys.executable, "-m", "xnat_hpc_governance",
                        f"--config={os.path.abspath(config_file)}"],
            "environment": {k: os.environ[k] for k in SERVICE_ENV_KEEP if os.environ.get(k)}}


def register_governance(c, token_file: str | None = None, *, config_file: str | None = None) -> None:
    """Register the service :data:`SERVICE_NAME` on the hub's configuration *c* with the token
    of *token_file* (default: ``c.XnatGovernance.token_file``, which is set to it), and its role
    with :data:`GOVERNANCE_SCOPES`. For ``jupyterhub_config.py``: the file is read (and
    checked) when the hub loads its configuration, so a missing or unsafe file stops the hub
    with a message naming it.

    With *config_file* (``register_governance(c, config_file=__file__)`` in
    ``jupyterhub_config.py``) the hub starts, stops and restarts the service's process
    (:mod:`xnat_hpc_governance`: the revocation re-check), which reads the same file. Without
    it the service is registered but not started: a site runs
    ``python -m xnat_hpc_governance --config=…`` itself, or the re-check does not run."""
    section = c.XnatGovernance
    path = str(token_file if token_file is not None else section.get("token_file", "") or "")
    token = read_token(path)
    section.token_file = path
    # the owners' pages: the proxy routes /services/{name}/ to the service's port, and owners
    # log in through the hub's OAuth without a confirmation page (the service is the hub's own)
    service = {"name": SERVICE_NAME, "api_token": token, "url": XnatGovernance(config=c).pages_url,
               "oauth_no_confirm": True}
    if config_file:
        if not os.path.isfile(config_file):
            raise GovernanceNotConfigured(f"register_governance(c, config_file={config_file!r}): no such file; "
                                          "pass the hub's own configuration file (config_file=__file__)")
        service.update(managed_service(config_file))
    from .server_scopes import add_user_role_scopes

    # JupyterHub >= 5 no longer gives every user access:services: the owners' pages need it
    add_user_role_scopes(c, [PAGES_ACCESS_SCOPE])
    role = {"name": SERVICE_NAME, "description": "xnat-hpc-hub governance: read running servers and their "
            "records, stop them, share them with the members of their projects",
            "services": [SERVICE_NAME], "scopes": list(GOVERNANCE_SCOPES)}
    hub = c.JupyterHub
    for key, item in (("services", service), ("load_roles", role)):
        current = hub[key] if key in hub else None
        if isinstance(current, list):
            if any(isinstance(x, Mapping) and x.get("name") == SERVICE_NAME for x in current):
                raise GovernanceNotConfigured(f"c.JupyterHub.{key} already holds {SERVICE_NAME}; "
                                              "register_governance(c) adds it: remove the other entry")
            hub[key] = [*current, item]  # a new list: the caller's is not changed
        else:
            getattr(hub, key).append(item)  # unset, or appended to before: traitlets' lazy list


# -- the client --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunningServer:
    """One server the hub lists as active (started, starting or stopping)."""

    user: str
    name: str
    #: when it was started, UTC to the second (``2026-01-01T00:00:00Z``), or ""
    started: str = ""
    ready: bool = False
    pending: str | None = None


def utc_seconds(text) -> str:
    """JupyterHub's ISO 8601 time (``…T12:00:00.123456Z``) as UTC to the second with ``Z``
    (pure); "" for none, the text itself when it is no time."""
    if not text:
        return ""
    try:
        when = _dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return str(text)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def servers_of(models) -> list[RunningServer]:
    """The active servers in a list of JupyterHub user models (pure). A model without
    ``servers`` means the token may not read them: :class:`PermissionDenied` naming the scope."""
    out = []
    for model in models:
        if not isinstance(model, Mapping) or "name" not in model:
            raise HubApiError(f"the hub's user list holds {type(model).__name__}, not a user model")
        if "servers" not in model:
            raise PermissionDenied(_refusal("read the users' servers", "read:servers", 200,
                                            "user models without servers"))
        for name, server in sorted((model.get("servers") or {}).items()):
            server = server if isinstance(server, Mapping) else {}
            if server.get("stopped"):
                continue
            out.append(RunningServer(str(model["name"]), str(name), utc_seconds(server.get("started")),
                                     bool(server.get("ready")), server.get("pending")))
    return out


@dataclasses.dataclass(frozen=True)
class Share:
    """*guest* may use *owner*'s server *server* (a JupyterHub share, since *created*)."""

    owner: str
    server: str
    guest: str
    created: str = ""


@dataclasses.dataclass(frozen=True)
class HubServer:
    """One server of a user as the hub's REST API shows it to governance, with its ``state``
    (the spawner's persisted state: the hub's SpawnRecord)."""

    name: str
    active: bool = True
    ready: bool = False
    pending: str | None = None
    #: UTC to the second, or ""
    started: str = ""
    state: Mapping = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class HubUser:
    """A user as the hub's REST API shows them to governance: their servers (the active ones,
    each with its state) and their ``auth_state`` (None when the hub keeps none)."""

    name: str
    servers: Mapping[str, HubServer] = dataclasses.field(default_factory=dict)
    auth_state: Mapping | None = None


def hub_user_of(model, *, auth_state: bool = True) -> HubUser:
    """A :class:`HubUser` from a JupyterHub user model (pure). Servers without ``state``, a
    model without ``servers`` or (with *auth_state*) without ``auth_state`` mean the token lacks
    the scope: :class:`PermissionDenied` naming it (a re-check that saw no scope would think
    nothing runs). JupyterHub fills ``auth_state`` in ``GET /users/{u}`` only, never in the
    list: read the list with *auth_state* False."""
    if not isinstance(model, Mapping) or not isinstance(model.get("name"), str):
        raise HubApiError(f"the hub answered {type(model).__name__}, not a user model")
    if "servers" not in model:
        raise PermissionDenied(_refusal("read the users' servers", "read:servers", 200,
                                        "user models without servers"))
    if auth_state and "auth_state" not in model:
        raise PermissionDenied(_refusal("read the users' XNAT tokens", "admin:auth_state", 200,
                                        "user models without auth_state"))
    servers = {}
    for name, server in sorted((model.get("servers") or {}).items()):
        server = server if isinstance(server, Mapping) else {}
        if server.get("stopped"):
            continue
        if "state" not in server:
            raise PermissionDenied(_refusal("read the servers' records", "admin:server_state", 200,
                                            "server models without state"))
        servers[str(name)] = HubServer(str(name), True, bool(server.get("ready")), server.get("pending"),
                                       utc_seconds(server.get("started")), dict(server.get("state") or {}))
    state = model.get("auth_state")
    return HubUser(model["name"], servers, dict(state) if isinstance(state, Mapping) else None)


def _refusal(what: str, scope: str, code: int, said: str) -> str:
    return (f"the hub refused to let governance {what} (HTTP {code}: {said}): the role of the hub service "
            f"{SERVICE_NAME} needs the scope {scope} (c.JupyterHub.load_roles; register_governance(c) "
            f"grants {', '.join(GOVERNANCE_SCOPES)}), and c.XnatGovernance.token_file must hold that "
            "service's token")


def _message(resp: HTTPResponse) -> str:
    try:
        doc = json.loads(resp.body or b"{}")
    except ValueError:
        doc = {}
    said = doc.get("message") if isinstance(doc, dict) else None
    return str(said or resp.reason or "no message")[:300]


class HubRestClient:
    """The hub's REST API at *api_url* (``…/hub/api``) with *token* (module docstring). The
    token goes in the ``Authorization`` header only; ``repr`` does not show it."""

    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0, stop_timeout: float = 60.0,
                 poll_interval: float = 0.5, page_size: int = 200, http: AsyncHTTPClient | None = None):
        self.api_url = api_url.rstrip("/")
        self._token = token
        self.timeout, self.stop_timeout, self.poll_interval = timeout, stop_timeout, poll_interval
        self.page_size = page_size
        self.http = http or AsyncHTTPClient()

    def __repr__(self) -> str:
        return f"HubRestClient({self.api_url!r})"

    @property
    def token(self) -> str:
        """The token this client calls the hub with (for the service's own ``HubAuth``)."""
        return self._token

    async def _call(self, method: str, path: str, *, query: Mapping | None = None, what: str, scope: str,
                    paginated: bool = False, body: Mapping | None = None) -> HTTPResponse:
        """One call (*body* sent as JSON); the response when the hub answered below 400 or 404,
        else the error: :class:`PermissionDenied` naming *scope* (401, 403), :class:`HubApiError`."""
        url = self.api_url + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Authorization": f"token {self._token}",
                   "Accept": f"{PAGINATION_MEDIA_TYPE}, application/json" if paginated else "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        try:
            resp = await self.http.fetch(url, method=method, headers=headers, raise_error=False,
                                         follow_redirects=False, request_timeout=self.timeout,
                                         allow_nonstandard_methods=True,
                                         body=None if body is None else json.dumps(body))
        except (OSError, HTTPClientError) as exc:  # refused, unreachable, timed out (599)
            raise HubApiError(f"the hub's REST API at {self.api_url} did not answer ({exc}) when governance "
                              f"tried to {what}; check c.XnatGovernance.hub_api_url") from None
        if resp.code == 599:
            raise HubApiError(f"the hub's REST API at {self.api_url} did not answer ({resp.error}) when governance "
                              f"tried to {what}; check c.XnatGovernance.hub_api_url")
        if resp.code in (401, 403):
            raise PermissionDenied(_refusal(what, scope, resp.code, _message(resp)))
        if resp.code >= 400 and resp.code != 404:
            raise HubApiError(f"the hub's REST API answered HTTP {resp.code} when governance tried to {what}: "
                              f"{_message(resp)}")
        return resp

    @staticmethod
    def _json(resp: HTTPResponse, what: str):
        try:
            return json.loads(resp.body or b"null")
        except ValueError:
            raise HubApiError(f"the hub's answer to {what} is not JSON") from None

    async def _active_models(self, what: str) -> list:
        """The user models of ``GET /users?state=active``, page by page."""
        models: list = []
        offset = 0
        while True:
            resp = await self._call("GET", "/users", query={"state": "active", "offset": offset,
                                                            "limit": self.page_size},
                                    what=what, scope="list:users", paginated=True)
            if resp.code == 404:
                raise HubApiError(f"{self.api_url}/users is not the hub's user list (HTTP 404); "
                                  "check c.XnatGovernance.hub_api_url")
            doc = self._json(resp, what)
            if isinstance(doc, list):  # a hub that does not paginate: everything at once
                return models + doc
            if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
                raise HubApiError(f"the hub's answer to {what} is neither a list nor a page of users")
            models += doc["items"]
            following = (doc.get("_pagination") or {}).get("next") or {}
            nxt = following.get("offset")
            if not isinstance(nxt, int) or nxt <= offset:
                return models
            offset = nxt

    async def running_servers(self) -> list[RunningServer]:
        """Every active server (``GET /users?state=active``, page by page), by user and name."""
        return servers_of(await self._active_models("list the users with running servers"))

    async def active_users(self) -> list[HubUser]:
        """Every user with an active server, each with their servers' state
        (``admin:server_state``); ``auth_state`` is None (the list never carries it: read
        :meth:`user` for it)."""
        return [hub_user_of(m, auth_state=False)
                for m in await self._active_models("list the users with running servers")]

    async def user(self, name: str, *, auth_state: bool = True) -> HubUser | None:
        """*name* as the hub knows them now (active servers with state and, with *auth_state*,
        their ``auth_state``), or None when the hub has no such user."""
        what = f"read {name}'s servers"
        resp = await self._call("GET", f"/users/{quote(name, safe='')}", what=what, scope="read:servers")
        if resp.code == 404:
            return None
        return hub_user_of(self._json(resp, what), auth_state=auth_state)

    async def server(self, user: str, name: str = "") -> RunningServer | None:
        """*user*'s server *name* as the hub lists it now, or None (no such user, or not running)."""
        what = f"read {user}'s servers"
        resp = await self._call("GET", f"/users/{quote(user, safe='')}", what=what, scope="read:servers")
        if resp.code == 404:
            return None
        doc = self._json(resp, what)
        found = [s for s in servers_of([doc]) if s.name == name] if isinstance(doc, dict) else []
        return found[0] if found else None

    # -- JupyterHub's shares (JupyterHub >= 5), as governance makes and ends them --------------------
    @staticmethod
    def _share_path(owner: str, name: str) -> str:
        return f"/shares/{quote(owner, safe='')}/{quote(name, safe='')}"

    async def shares(self, owner: str, name: str = "") -> list[Share]:
        """The users *owner*'s server *name* is shared with (``GET /shares/{owner}/{server}``,
        page by page; groups are left out: governance shares with users only)."""
        what = f"read the shares of {owner}/{name or '(default)'}"
        out: list[Share] = []
        offset = 0
        while True:
            resp = await self._call("GET", self._share_path(owner, name), query={"offset": offset, "limit": 200},
                                    what=what, scope="read:shares", paginated=True)
            if resp.code == 404:
                return out
            doc = self._json(resp, what)
            items = doc.get("items") if isinstance(doc, dict) else doc
            for item in items or ():
                user = (item or {}).get("user") or {}
                if user.get("name"):
                    out.append(Share(owner, name, str(user["name"]), utc_seconds(item.get("created_at"))))
            nxt = ((doc.get("_pagination") or {}).get("next") or {}).get("offset") if isinstance(doc, dict) else None
            if not isinstance(nxt, int) or nxt <= offset:
                return out
            offset = nxt

    async def share(self, owner: str, name: str, guest: str) -> Share:
        """Share *owner*'s server *name* with *guest* (access only: JupyterHub's default scope)."""
        what = f"share {owner}/{name or '(default)'} with {guest}"
        resp = await self._call("POST", self._share_path(owner, name), body={"user": guest}, what=what,
                                scope="shares")
        if resp.code == 404:
            raise HubApiError(f"the hub has no server {owner}/{name or '(default)'} to share (HTTP 404)")
        doc = self._json(resp, what)
        return Share(owner, name, guest, utc_seconds((doc or {}).get("created_at")))

    async def unshare(self, owner: str, name: str, guest: str) -> None:
        """End *guest*'s share of *owner*'s server *name* (none: nothing to do)."""
        await self._call("PATCH", self._share_path(owner, name), body={"user": guest},
                         what=f"end {guest}'s share of {owner}/{name or '(default)'}", scope="shares")

    async def unshare_all(self, owner: str, name: str) -> None:
        """End every share of *owner*'s server *name*."""
        await self._call("DELETE", self._share_path(owner, name),
                         what=f"end the shares of {owner}/{name or '(default)'}", scope="shares")

    async def stop_server(self, user: str, name: str = "", *, timeout: float | None = None) -> None:
        """Stop *user*'s server *name* (``""``: the default one) through the hub's REST API and
        wait until the hub no longer lists it (at most *timeout* seconds, default
        :attr:`stop_timeout`; :class:`HubApiError` then, while the hub goes on stopping it). A
        server that is not running (or a user the hub does not know) is already stopped."""
        shown = f"{user}/{name or '(default)'}"
        if await self.server(user, name) is None:  # JupyterHub 5.0 answers 500 for an unknown user
            return
        path = f"/users/{quote(user, safe='')}/" + (f"servers/{quote(name, safe='')}" if name else "server")
        resp = await self._call("DELETE", path, what=f"stop the server {shown}", scope="delete:servers")
        log.info("governance: asked the hub to stop %s (HTTP %s)", shown, resp.code)
        limit = self.stop_timeout if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            current = await self.server(user, name)
            if current is None:
                return
            if loop.time() >= deadline:
                raise HubApiError(f"the hub still lists the server {shown} ({current.pending or 'running'}) "
                                  f"{limit:.0f} s after governance asked it to stop; it goes on stopping it "
                                  "(c.XnatGovernance.stop_timeout)")
            await asyncio.sleep(min(self.poll_interval, max(0.0, deadline - loop.time())))


# -- from the hub's settings ------------------------------------------------------------------

def _hub_api_url(tornado_settings: Mapping) -> str:
    hub = tornado_settings.get("hub")
    return str(getattr(hub, "api_url", "") or "")


async def governance_client(tornado_settings: Mapping) -> HubRestClient:
    """The client as the hub's configuration (Tornado ``settings["config"]``) sets it, with the
    hub's own ``api_url`` (``settings["hub"]``) unless ``c.XnatGovernance.hub_api_url`` says
    otherwise. :class:`GovernanceNotConfigured` naming what to add."""
    settings = XnatGovernance(config=tornado_settings.get("config"))
    token = await asyncio.to_thread(read_token, settings.token_file)
    url = settings.hub_api_url or _hub_api_url(tornado_settings)
    if not url:
        raise GovernanceNotConfigured("the hub's REST API address is unknown; set c.XnatGovernance.hub_api_url, "
                                      "e.g. http://127.0.0.1:8081/hub/api")
    return HubRestClient(url, token, timeout=settings.timeout, stop_timeout=settings.stop_timeout,
                         poll_interval=settings.poll_interval)
