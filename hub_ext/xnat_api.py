"""Asynchronous calls from the hub process to XNAT's login and token API.

The hub runs on an event loop, so these use tornado's non-blocking HTTP client
rather than the (blocking) xnatpy session that the user's server uses. They
cover only what the authenticator needs: issue, validate and invalidate XNAT
alias tokens, and read a user's site roles. Every failure is mapped to the
package's typed errors:

* XNAT says no (401/403) → :class:`AuthenticationFailed` / :class:`TokenExpired`
* XNAT does not answer, times out, or answers 5xx → :class:`XnatUnavailable`

Credentials travel only in the ``Authorization`` header (never in a URL that
could be logged), except for XNAT's token-validation endpoint whose path *is*
``/validate/{alias}/{secret}``; that URL is never logged here.
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
                     what: str = "") -> bytes:
        headers = {"Accept": "application/json"}
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
        """The username the token belongs to; TokenExpired when XNAT says no."""
        path = f"/data/services/tokens/validate/{quote(alias, safe='')}/{quote(secret, safe='')}"
        try:
            body = await self._fetch("GET", path, auth=(alias, secret), what="token validation")
        except (AuthenticationFailed, PermissionDenied):
            raise TokenExpired("the XNAT alias token is no longer valid; log in again") from None
        try:
            data = json.loads(body)
        except ValueError:
            data = {}
        user = data.get("valid") if isinstance(data, dict) else None
        if not user:
            raise TokenExpired("the XNAT alias token is no longer valid; log in again")
        return str(user)

    async def invalidate_token(self, token: AliasToken) -> None:
        path = (
            f"/data/services/tokens/invalidate/{quote(token.alias, safe='')}"
            f"/{quote(token.secret, safe='')}"
        )
        try:
            await self._fetch("GET", path, auth=(token.alias, token.secret),
                              what="token invalidation")
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


def token_is_expiring(token: AliasToken, margin: float = 3600.0, now: float | None = None) -> bool:
    """True when XNAT said when the token expires and that is within *margin* s."""
    now = time.time() if now is None else now
    return bool(token.expires) and token.expires - now < margin
