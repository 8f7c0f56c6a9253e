"""XNAT's plugin API on this hub: ``/hub/xnat-plugin/api``, the hub's REST API in XNAT's names.

XNAT's JupyterHub plugin calls the hub's REST API with the XNAT login as the user name and,
since plugin 1.2.0, the start's event-tracking id as the server name (``20261207T004607123Z``).
JupyterHub ≥ 6 refuses such server names (``Invalid server_name``) and this hub's users are
Unix account names, which many XNAT logins are not. A site points the plugin's "JupyterHub API
URL" here instead of at ``/hub/api`` (docs/admin.md, "XNAT's Start Jupyter"); each call is
passed on to the hub's own REST API, unchanged but for the names:

* the login in ``/users/{login}…`` becomes its hub user (:func:`hub_ext.names.hub_name`, the
  authenticator's mapping), and the user's ``name`` in the answer the login again;
* the server name in ``/users/{u}/servers/{name}…`` becomes the hub's
  (:func:`hub_ext.names.hub_server_name`), and the keys and ``name`` of ``servers`` in the
  answer XNAT's (:func:`hub_ext.names.xnat_server_name`) — so XNAT's polling finds its server
  under the exact name it made, and "open" uses the hub's own ``url``;
* a start's flat body gets ``servername`` (XNAT's name, where the plugin sent null) and
  ``xnatLogin``: the spawner reads the start's settings back from XNAT under those names,
  and checks that they map to the user and server it starts (:mod:`spawner.mixin`).

A name that cannot be mapped is answered 400 with the reason before anything is created. Only
the services in ``c.XnatPluginGateway.services`` (default ``["xnat"]``) may call it (403
otherwise); the hub checks each passed-on call with the caller's own token, as always. The
version check (``GET …/``) needs no token, as on the hub's API.

The cost: one loopback HTTP request per plugin call (the plugin makes a handful per start, and
polls ``GET /users/{u}`` every 8 s while a server starts).
"""

from __future__ import annotations

import json
import re
from urllib.parse import quote

from tornado import web
from tornado.httpclient import AsyncHTTPClient
from traitlets import Float, List, Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge.errors import InvalidRequest, PermissionDenied
from xnat_bridge.extras import needs_extra

from .errors import map_errors
from .names import hub_name as default_hub_name
from .names import hub_server_name, xnat_server_name

with needs_extra("hub", "XNAT's plugin API (hub_ext.plugin_gateway)"):
    from jupyterhub import orm
    from jupyterhub.apihandlers.base import APIHandler

ROUTE = r"/xnat-plugin/api(/.*)?"
#: what the gateway adds to a start's flat body: the XNAT login it was made for
LOGIN_KEY = "xnatLogin"
#: headers passed on to the hub's API (and back)
_REQUEST_HEADERS = ("Authorization", "Content-Type", "Accept")
_USER_PATH = re.compile(r"^/users/([^/]+)(/.*)?$")
_SERVER_PATH = re.compile(r"^/servers/([^/]+)(/.*)?$")
_START_PATH = re.compile(r"/users/[^/]+/server(?:s/[^/]+)?")


class XnatPluginGateway(LoggingConfigurable):
    """Settings of ``/hub/xnat-plugin/api``."""

    services = List(
        Unicode(), ["xnat"],
        help="""The hub services (``c.JupyterHub.services`` names) that may call XNAT's plugin
        API ``/hub/xnat-plugin/api``: XNAT's own, whose token is the plugin's
        ``jupyterHubToken`` preference. Anyone else is answered 403.""",
    ).tag(config=True)

    hub_api_url = Unicode(
        "",
        help="""Where the calls are passed on: the hub's own REST API. Default: the hub's
        ``api_url`` (``http://{hub_ip}:{hub_port}/hub/api``).""",
    ).tag(config=True)

    timeout = Float(
        30.0,
        help="""Seconds a call passed on to the hub's own REST API may take (loopback).""",
    ).tag(config=True)


def map_path(path: str, to_hub_user) -> tuple[str, str | None, str | None]:
    """``(hub API path, login, XNAT's server name)`` for a plugin API *path* (decoded, after
    ``/hub/xnat-plugin/api``; pure but for *to_hub_user*, the login → hub user mapping).
    :class:`InvalidRequest` for a name that cannot be mapped."""
    path = path or "/"
    match = _USER_PATH.match(path)
    if not match:
        return path, None, None
    login, rest = match.group(1), match.group(2) or ""
    user = to_hub_user(login)
    server = None
    smatch = _SERVER_PATH.match(rest)
    if smatch:
        server = smatch.group(1)
        rest = f"/servers/{quote(hub_server_name(server), safe='')}{smatch.group(2) or ''}"
    return f"/users/{quote(user, safe='')}{rest}", login, server


def start_body(body: bytes, login: str, server: str | None) -> bytes:
    """A start's body with XNAT's names added (pure): the plugin's flat ``XnatUserOptions``
    (or JupyterHub's ``{"user_options": …}``) gets ``servername`` and :data:`LOGIN_KEY`."""
    try:
        doc = json.loads(body or b"null")
    except ValueError:
        raise InvalidRequest("the start's body is not JSON") from None
    if not isinstance(doc, dict):
        return body
    options = doc.get("user_options") if isinstance(doc.get("user_options"), dict) else doc
    if "xsiType" not in options:
        return body
    sent = options.get("servername")
    if sent not in (None, "", server or ""):
        raise InvalidRequest(f"the start names the server {sent!r} in its body and {server or ''!r} "
                             "in its address")
    if server:
        options["servername"] = server
    options[LOGIN_KEY] = login
    return json.dumps(doc, separators=(",", ":")).encode()


def xnat_user_model(model, login: str | None):
    """A hub user model in XNAT's names (pure): ``name`` the login (when the call named it)
    and the ``servers`` keyed and named as XNAT named them."""
    if not isinstance(model, dict):
        return model
    out = dict(model)
    if login is not None and "name" in out:
        out["name"] = login
    elif login is None:
        out["name"] = _login_of(out)
    servers = out.get("servers")
    if isinstance(servers, dict):
        renamed = {}
        for key, server in servers.items():
            name = xnat_server_name(key)
            if isinstance(server, dict):
                server = {**server, "name": xnat_server_name(server.get("name", key) or "")}
            renamed[name] = server
        out["servers"] = renamed
    return out


def _login_of(model: dict) -> str:
    """The login of a listed user: the one its plugin-started servers were started for, else
    its hub name (a user XNAT never started a server for)."""
    for server in (model.get("servers") or {}).values():
        login = ((server or {}).get("user_options") or {}).get(LOGIN_KEY)
        if login:
            return login
    return model.get("name", "")


class PluginGatewayHandler(APIHandler):
    """Every method of ``/hub/xnat-plugin/api/…`` passed on to ``/hub/api/…`` in hub names."""

    def check_xsrf_cookie(self):  # token-only (cookies are refused below)
        return

    @property
    def gateway(self) -> XnatPluginGateway:
        return XnatPluginGateway(config=self.settings.get("config"), log=self.log)

    def _to_hub_user(self, login: str) -> str:
        normalize = getattr(self.authenticator, "normalize_username", None)
        if normalize is not None and type(self.authenticator).__name__ == "XnatAuthenticator":
            return normalize(login)
        return default_hub_name(login)

    def _check_caller(self, gateway: XnatPluginGateway) -> None:
        caller = self.current_user
        allowed = set(gateway.services)
        if not isinstance(caller, orm.Service) or caller.name not in allowed:
            raise PermissionDenied("XNAT's plugin API is for the hub service(s) "
                                   f"{', '.join(sorted(allowed)) or '(none configured)'} only")
        if not self.request.headers.get("Authorization"):
            raise PermissionDenied("XNAT's plugin API takes the service's token, not a cookie")

    @map_errors
    async def _pass_on(self, path: str | None):
        path = path or "/"
        gateway = self.gateway
        if not (self.request.method == "GET" and path == "/"):
            self._check_caller(gateway)
        hub_path, login, server = map_path(path, self._to_hub_user)
        body = self.request.body if self.request.method in ("POST", "PATCH", "DELETE") else None
        if self.request.method == "POST" and login is not None and _START_PATH.fullmatch(hub_path):
            body = start_body(body or b"", login, server or "")
        headers = {k: v for k in _REQUEST_HEADERS if (v := self.request.headers.get(k))}
        query = f"?{self.request.query}" if self.request.query else ""
        resp = await AsyncHTTPClient().fetch(
            (gateway.hub_api_url or self.hub.api_url).rstrip("/") + hub_path + query, method=self.request.method, headers=headers,
            body=body if body else (b"" if self.request.method in ("POST", "PATCH") else None),
            allow_nonstandard_methods=True, raise_error=False, follow_redirects=False,
            request_timeout=gateway.timeout)
        if resp.code == 599:
            self.log.error("XNAT's plugin API could not reach the hub's own API: %s", resp.error)
            raise web.HTTPError(503, "the hub's API did not answer")
        self.set_status(resp.code)
        ctype = resp.headers.get("Content-Type", "")
        payload = resp.body or b""
        if payload and ctype.startswith("application/json") and hub_path.startswith("/users"):
            payload = self._rewrite(payload, hub_path, login)
        if ctype:
            self.set_header("Content-Type", ctype)
        if resp.code not in (204, 304):
            self.write(payload)
        self.finish()

    @staticmethod
    def _rewrite(payload: bytes, hub_path: str, login: str | None) -> bytes:
        try:
            doc = json.loads(payload)
        except ValueError:
            return payload
        if hub_path == "/users" and isinstance(doc, list):
            doc = [xnat_user_model(m, None) for m in doc]
        elif hub_path == "/users" and isinstance(doc, dict) and isinstance(doc.get("items"), list):
            doc = {**doc, "items": [xnat_user_model(m, None) for m in doc["items"]]}
        elif re.fullmatch(r"/users/[^/]+", hub_path):
            doc = xnat_user_model(doc, login)
        elif re.fullmatch(r"/users/[^/]+/servers?(/[^/]+)?", hub_path) and isinstance(doc, dict) \
                and "name" in doc:
            doc = {**doc, "name": xnat_server_name(doc.get("name") or "")}
        return json.dumps(doc).encode()

    async def get(self, path=None):
        await self._pass_on(path)

    async def post(self, path=None):
        await self._pass_on(path)

    async def delete(self, path=None):
        await self._pass_on(path)

    async def patch(self, path=None):
        await self._pass_on(path)


def gateway_handlers() -> list[tuple[str, type]]:
    return [(ROUTE, PluginGatewayHandler)]
