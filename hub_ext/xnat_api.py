"""Asynchronous calls from the hub process to XNAT's login and token API.

The hub runs on an event loop, so these use tornado's non-blocking HTTP client
rather than the (blocking) xnatpy session that the user's server uses. They
cover only what the authenticator needs: issue, validate and invalidate XNAT
alias tokens, and read a user's site roles. Every failure is mapped to the
package's typed errors:

* XNAT says no (401/403) → :class:`AuthenticationFailed` / :class:`TokenExpired`
* XNAT does not answer, times out, or answers 5xx → :class:`XnatUnavailable`

Credentials travel only in the ``Authorization`` header, never in a URL: XNAT
(Tomcat's access log, a proxy's log) writes request paths to files. XNAT's own
``/data/services/tokens/validate/{alias}/{secret}`` puts the secret in the path,
so it is not used: a token is checked by authenticating with it, as XNAT accepts
an alias token as HTTP Basic user (alias) and password (secret) on every REST
call, and asking ``GET /xapi/users/username`` who that is; it is ended with
``/data/services/tokens/invalidate/{alias}`` authenticated the same way.

For XNAT's JupyterHub plugin, :meth:`XnatHubClient.plugin_user_options` reads the user
options XNAT stored for a server (``GET /xapi/jupyterhub/users/{u}/server[/{name}]/user-options``)
as an account with the plugin's ``JupyterHub`` role (HTTP Basic, as the plugin's own
hub configuration does).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from xnat_bridge.errors import (
    AuthenticationFailed,
    NotFound,
    PermissionDenied,
    TokenExpired,
    XnatUnavailable,
)

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class AliasToken:
    """An XNAT alias token: ``alias`` is public-ish, ``secret`` is a password."""

    alias: str
    secret: str
    #: seconds since the epoch; 0 when XNAT did not say
    expires: float = 0.0

    def to_state(self) -> dict:
        return {"alias": self.alias, "secret": self.secret, "expires": self.expires}

    @classmethod
    def from_state(cls, state: dict | None) -> "AliasToken | None":
        if not state or not state.get("alias") or not state.get("secret"):
            return None
        return cls(state["alias"], state["secret"], float(state.get("expires") or 0))

    def __repr__(self) -> str:  # never show the secret
        return f"AliasToken(alias={self.alias!r}, expires={self.expires})"


def _basic(user: str, password: str) -> str:
    raw = f"{user}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode()


class XnatHubClient:
    """The hub's view of one XNAT server."""

    def __init__(self, url: str, *, timeout: float = 10.0, validate_cert: bool = True):
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.validate_cert = validate_cert

    async def _fetch(self, method: str, path: str, *, auth: tuple[str, str] | None = None,
                     what: str = "", accept: str = "application/json",
                     missing: NotFound | None = None) -> bytes:
        headers = {"Accept": accept}
        if auth:
            headers["Authorization"] = _basic(*auth)
        req = HTTPRequest(
            self.url + path,
            method=method,
            headers=headers,
            connect_timeout=self.timeout,
            request_timeout=self.timeout,
            validate_cert=self.validate_cert,
            follow_redirects=False,
            body=b"" if method in ("PUT", "POST") else None,
        )
        try:
            resp = await AsyncHTTPClient().fetch(req)
        except HTTPClientError as e:
            if e.code == 599:
                raise XnatUnavailable(
                    f"XNAT at {self.url} did not answer ({what or path.split('?')[0]}): "
                    f"{e.message}"
                ) from None
            if e.code == 401:
                raise AuthenticationFailed("XNAT rejected the username or password") from None
            if e.code == 403:
                raise PermissionDenied(f"XNAT refused {what or 'the request'}") from None
            if e.code == 404 and missing is not None:
                raise missing from None
            if e.code >= 500:
                raise XnatUnavailable(
                    f"XNAT at {self.url} failed with HTTP {e.code} ({what})"
                ) from None
            raise AuthenticationFailed(f"XNAT answered HTTP {e.code} to {what}") from None
        except OSError as e:
            raise XnatUnavailable(f"XNAT at {self.url} is not reachable: {e}") from None
        return resp.body

    async def issue_token(self, username: str, password: str) -> AliasToken:
        """Log in with a password (or an alias token) and get a fresh alias token."""
        body = await self._fetch(
            "GET", "/data/services/tokens/issue", auth=(username, password), what="login"
        )
        data = json.loads(body)
        expires = data.get("estimatedExpirationTime") or 0
        try:
            expires = float(expires) / 1000.0  # XNAT gives milliseconds
        except (TypeError, ValueError):
            expires = 0.0
        return AliasToken(str(data["alias"]), str(data["secret"]), expires)

    async def validate_token(self, alias: str, secret: str) -> str:
        """The username the token belongs to; TokenExpired when XNAT says no.

        Authenticates with the token (Basic alias:secret) and asks XNAT who that is
        (``GET /xapi/users/username``, text): XNAT answers 401 for an unknown, expired or
        invalidated token and for a disabled account. The secret is never in the URL."""
        try:
            body = await self._fetch("GET", "/xapi/users/username", auth=(alias, secret),
                                     what="token validation", accept="text/plain, */*")
        except (AuthenticationFailed, PermissionDenied):
            raise TokenExpired("the XNAT alias token is no longer valid; log in again") from None
        user = body.decode("utf-8", errors="replace").strip()
        if not user or user.lower() == "guest":
            raise TokenExpired("the XNAT alias token is no longer valid; log in again")
        return user

    async def invalidate_token(self, token: AliasToken) -> None:
        """End *token* in XNAT (``/data/services/tokens/invalidate/{alias}``, authenticated
        with the token itself); a token XNAT no longer accepts is already ended."""
        try:
            await self._fetch("GET", f"/data/services/tokens/invalidate/{quote(token.alias, safe='')}",
                              auth=(token.alias, token.secret), what="token invalidation")
        except (AuthenticationFailed, PermissionDenied, TokenExpired):
            pass  # already invalid: the goal is reached

    async def roles(self, username: str, token: AliasToken) -> list[str]:
        """The user's XNAT site roles (e.g. ``Administrator``, ``Jupyter``)."""
        body = await self._fetch(
            "GET", f"/xapi/users/{quote(username, safe='')}/roles",
            auth=(token.alias, token.secret), what="site roles",
        )
        data = json.loads(body)
        return [str(r) for r in data] if isinstance(data, list) else []


    async def plugin_user_options(self, username: str, server_name: str,
                                  account: tuple[str, str]) -> dict:
        """The plugin's ``XnatUserOptions`` that XNAT stored for *username*'s server *server_name*
        ("" = the default server), read as *account* (user, password) holding XNAT's ``JupyterHub``
        role. :class:`NotFound` when XNAT has none — no start from XNAT for that server, or the
        user can no longer read the item (the plugin answers 404 then)."""
        server = f"/{quote(server_name, safe='')}" if server_name else ""
        path = f"/xapi/jupyterhub/users/{quote(username, safe='')}/server{server}/user-options"
        missing = NotFound(f"XNAT has no Jupyter start for {username}'s server {server_name or '(default)'}, "
                           "or you can no longer read the item it was started from; start it again "
                           "from XNAT", item=server_name or username)
        try:
            body = await self._fetch("GET", path, auth=account, what="the plugin's user options",
                                     missing=missing)
        except AuthenticationFailed:
            raise AuthenticationFailed(
                "XNAT refused the hub's JupyterHub service account (c.XnatScopedSpawner.xnat_service_user); "
                "check its password file and that it holds XNAT's JupyterHub role") from None
        except PermissionDenied:
            raise PermissionDenied(
                "XNAT refused the hub's JupyterHub service account: give it XNAT's JupyterHub role") from None
        try:
            data = json.loads(body)
        except ValueError:
            raise XnatUnavailable("XNAT answered the plugin's user options with something other "
                                  "than JSON; is the JupyterHub plugin installed?") from None
        if not isinstance(data, dict):
            raise XnatUnavailable("XNAT's user options are not a JSON object")
        return data


def token_is_expiring(token: AliasToken, margin: float = 3600.0, now: float | None = None) -> bool:
    """True when XNAT said when the token expires and that is within *margin* s."""
    now = time.time() if now is None else now
    return bool(token.expires) and token.expires - now < margin
