"""The plugin's JupyterHub REST client (``DefaultJupyterHubClient``), asynchronous.

Calls, URLs and headers as the Java client sends them with Spring's ``RestTemplate``:
``Authorization: token {jupyterHubToken}`` on everything but the version check
(``GET {api}/``), ``Content-Type: application/json`` on bodies (compact JSON, nulls kept),
RestTemplate's ``Accept`` for the declared response type. A 4xx/5xx answer is an error
(:class:`HubError`) except where the Java client turns 404 into "absent".
The token is never logged.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from tornado.httpclient import AsyncHTTPClient

log = logging.getLogger(__name__)

#: RestTemplate's Accept header for a JSON-mapped response type, and for ``String``
ACCEPT_JSON = "application/json, application/*+json"
ACCEPT_STRING = "text/plain, application/json, application/*+json, */*"


class HubError(Exception):
    """A hub call failed (connection refused, or a 4xx/5xx answer)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


class UserNotFound(Exception):
    """The hub has no such user (the client's ``UserNotFoundException``)."""


class ResourceAlreadyExists(Exception):
    """The server is already running (the client's ``ResourceAlreadyExistsException``)."""


class HubClient:
    """One client per call sequence, with the preferences' API URL and token."""

    def __init__(self, api_url: str, token: str, *, timeout: float = 30.0):
        self.api_url = api_url  # joined as the Java client does: api_url + "/users/..."
        self._token = token
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"HubClient({self.api_url!r})"

    async def _call(self, method: str, path: str, *, auth: bool = True, body=None,
                    accept: str = ACCEPT_JSON):
        headers = {"Accept": accept}
        if auth:
            headers["Authorization"] = f"token {self._token}"
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body, separators=(",", ":"))
        elif method in ("POST", "PUT"):
            data = ""
        url = self.api_url + path
        resp = await AsyncHTTPClient().fetch(
            url, method=method, headers=headers, body=data, raise_error=False,
            allow_nonstandard_methods=True, request_timeout=self.timeout, follow_redirects=False)
        if resp.code == 599:
            raise HubError(f"{method} {url}: {resp.error}")
        log.debug("hub %s %s -> %s", method, url, resp.code)
        return resp

    @staticmethod
    def _json(resp):
        try:
            return json.loads(resp.body or b"null")
        except ValueError:
            raise HubError(f"the hub answered {resp.code} with a body that is not JSON", resp.code) from None

    def _check(self, resp, what: str):
        if resp.code >= 400:
            raise HubError(f"{what}: the hub answered {resp.code}", resp.code)
        return resp

    async def version(self) -> dict:
        return self._json(self._check(await self._call("GET", "/", auth=False), "version"))

    async def info(self) -> dict:
        return self._json(self._check(await self._call("GET", "/info"), "info"))

    async def users(self) -> list:
        return self._json(self._check(await self._call("GET", "/users"), "users"))

    async def get_user(self, username: str) -> dict | None:
        resp = await self._call("GET", f"/users/{quote(username, safe='')}")
        if resp.code == 404:
            return None
        return self._json(self._check(resp, f"user {username}"))

    async def create_user(self, username: str) -> dict:
        resp = await self._call("POST", f"/users/{quote(username, safe='')}")
        return self._json(self._check(resp, f"create user {username}"))

    async def get_server(self, username: str, servername: str = "") -> dict | None:
        user = await self.get_user(username)
        if user is None:
            return None
        return (user.get("servers") or {}).get(servername)

    def _server_path(self, username: str, servername: str) -> str:
        u = quote(username, safe="")
        return f"/users/{u}/server" if not servername.strip() else f"/users/{u}/servers/{quote(servername, safe='')}"

    async def start_server(self, username: str, servername: str, body: dict) -> None:
        user = await self.get_user(username)
        if user is None:
            raise UserNotFound(username)
        if servername in (user.get("servers") or {}):
            raise ResourceAlreadyExists(username)
        resp = await self._call("POST", self._server_path(username, servername), body=body,
                                accept=ACCEPT_STRING)
        if not 200 <= resp.code <= 299:
            log.info("the hub refused to start %s/%s: %s %s", username, servername, resp.code,
                     (resp.body or b"")[:500].decode("utf-8", "replace"))
            raise HubError(f"start: the hub answered {resp.code}", resp.code)

    async def stop_server(self, username: str, servername: str = "") -> None:
        resp = await self._call("DELETE", self._server_path(username, servername), body={"remove": True},
                                accept=ACCEPT_STRING)
        if resp.code == 404:
            return
        self._check(resp, "stop")

    async def create_token(self, username: str, token: dict) -> dict:
        resp = await self._call("POST", f"/users/{quote(username, safe='')}/tokens", body=token)
        return self._json(self._check(resp, "token"))
