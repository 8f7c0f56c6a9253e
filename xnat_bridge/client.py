"""The XNAT connection every bridge operation goes through.

Built on xnatpy: :meth:`XnatClient.xnat` is a real ``xnat.connect()`` session
(object model and all) for notebook users, and its login logic (password →
``PUT /data/services/auth``, alias token → Basic + JSESSIONID) is what the
bridge's own requests use. Bridge calls go through one method,
:meth:`XnatClient.request`, which

* re-logs in once when XNAT answers 401 to a session that expired,
* retries idempotent requests on connection errors and 502/503/504,
* maps every failure to the package's typed errors: unreachable or 5xx →
  :class:`~xnat_bridge.errors.XnatUnavailable`, bad credentials →
  :class:`~xnat_bridge.errors.AuthenticationFailed`, an alias token XNAT no
  longer accepts → :class:`~xnat_bridge.errors.TokenExpired`, 403 →
  :class:`~xnat_bridge.errors.PermissionDenied`, 404 →
  :class:`~xnat_bridge.errors.NotFound`.

Credentials default to XNAT's own Jupyter convention, so inside a spawned
server ``XnatClient()`` needs no arguments: ``XNAT_HOST``, ``XNAT_USER`` and
``XNAT_PASS`` (an alias token on this hub). The password is kept only in this
object's memory, never logged (``repr`` hides it).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from urllib.parse import urlsplit

import requests

from .errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    TokenExpired,
    XnatUnavailable,
)

log = logging.getLogger(__name__)

#: connections kept open to XNAT (shared by all threads; more are opened and dropped when needed)
POOL_SIZE = 32

_ALIAS_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_H3_RE = re.compile(r"<h3>(.*?)</h3>", re.S)


def is_alias_token(user: str) -> bool:
    """XNAT alias tokens are UUIDs used as the user name."""
    return bool(_ALIAS_RE.match(user or ""))


def _xnat_message(resp: requests.Response) -> str:
    m = _H3_RE.search(resp.text or "")
    return m.group(1).strip() if m else f"HTTP {resp.status_code}"


class XnatClient:
    """One logged-in user on one XNAT server.

    Thread-safe for concurrent requests: ``requests.Session`` is not, so each
    thread gets its own session (:attr:`_http`), and all of them share one
    cookie jar (the XNAT session, ``JSESSIONID``; ``http.cookiejar`` locks
    itself) and one connection pool (urllib3's pool is thread-safe). A lock
    guards only the re-login.
    """

    def __init__(self, host: str | None = None, user: str | None = None,
                 password: str | None = None, *, verify: bool = True,
                 timeout: float = 30.0, retries: int = 2):
        host = host or os.environ.get("XNAT_HOST", "")
        user = user or os.environ.get("XNAT_USER", "")
        password = password if password is not None else os.environ.get("XNAT_PASS", "")
        if not host:
            raise InvalidRequest("no XNAT server given: pass host= or set XNAT_HOST")
        parts = urlsplit(host)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise InvalidRequest(f"XNAT_HOST must be an http(s) URL, got {host!r}")
        if not user or not password:
            raise InvalidRequest("no XNAT credentials: pass user=/password= or set XNAT_USER/XNAT_PASS")
        self.host = host.rstrip("/")
        self.user = user
        self._password = password
        self.verify = verify
        self.timeout = timeout
        self.retries = retries
        self._cookies = requests.cookies.RequestsCookieJar()
        self._adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
        self._sessions = threading.local()  # a thread's session goes with the thread
        self._login_lock = threading.Lock()
        self._login_generation = 0
        self._xnat = None
        self.username = self._login()

    def __repr__(self) -> str:
        return f"XnatClient(host={self.host!r}, user={self.username!r})"

    @property
    def _http(self) -> requests.Session:
        """This thread's session (shared cookies and connection pool)."""
        session = getattr(self._sessions, "session", None)
        if session is None:
            session = requests.Session()
            session.verify = self.verify
            session.cookies = self._cookies
            session.mount("http://", self._adapter)
            session.mount("https://", self._adapter)
            self._sessions.session = session
        return session

    @property
    def uses_token(self) -> bool:
        return is_alias_token(self.user)

    # -- login ----------------------------------------------------------------
    def _login(self) -> str:
        """Open an XNAT session (JSESSIONID cookie) and return the real user name."""
        self._http.cookies.clear()
        try:
            if self.uses_token:
                r = self._http.get(self.host + "/data/JSESSION", auth=(self.user, self._password),
                                   timeout=self.timeout)
            else:
                r = self._http.put(self.host + "/data/services/auth",
                                   data={"username": self.user, "password": self._password},
                                   timeout=self.timeout)
        except requests.RequestException as e:
            raise XnatUnavailable(f"XNAT at {self.host} is not reachable: {e}") from None
        if r.status_code in (401, 403):
            if self.uses_token:
                raise TokenExpired("XNAT no longer accepts this alias token; log in to the hub "
                                   "again (or restart your server) to get a new one")
            raise AuthenticationFailed(f"XNAT rejected the credentials of {self.user!r}")
        if r.status_code >= 500:
            raise XnatUnavailable(f"XNAT at {self.host} failed to log in (HTTP {r.status_code})")
        if r.status_code != 200:
            raise AuthenticationFailed(f"XNAT answered HTTP {r.status_code} to the login")
        sid = r.text.strip()
        if not self._http.cookies.get("JSESSIONID") and sid:
            self._http.cookies.set("JSESSIONID", sid)
        who = self._http.get(self.host + "/data/auth", timeout=self.timeout)
        m = re.search(r"User '([^']+)' is logged in", who.text)
        if who.status_code != 200 or not m:
            raise AuthenticationFailed("XNAT did not confirm the login")
        self._login_generation += 1
        return m.group(1)

    def _relogin(self, generation: int) -> None:
        with self._login_lock:
            if generation == self._login_generation:  # nobody else did it meanwhile
                log.info("XNAT session of %s expired; logging in again", self.username)
                self._login()

    # -- requests -------------------------------------------------------------
    def request(self, method: str, path: str, *, params: dict | None = None, what: str = "",
                stream: bool = False, headers: dict | None = None,
                timeout: float | tuple[float, float] | None = None,
                accept: tuple[int, ...] = (), data=None) -> requests.Response:
        """One XNAT REST call; returns the 2xx response or raises a typed error.

        *what* names the item for error messages (``project NEURO_MRI``);
        *accept* lists error statuses returned to the caller instead of raised
        (e.g. ``416`` for a range request); *data* is the body: bytes, or a file object
        streamed from its current position (rewound to it before a retry).
        """
        url = self.host + path
        idempotent = method.upper() in ("GET", "HEAD", "PUT", "DELETE")
        attempts = 1 + (self.retries if idempotent else 0)
        relogged = False
        start = data.tell() if hasattr(data, "seek") else None
        for attempt in range(attempts):
            generation = self._login_generation
            if start is not None:
                data.seek(start)
            try:
                resp = self._http.request(method, url, params=params, stream=stream, data=data,
                                          headers=headers, timeout=timeout or self.timeout)
            except (requests.ConnectionError, requests.Timeout) as e:
                if attempt + 1 < attempts:
                    time.sleep(0.2 * 2 ** attempt)
                    continue
                raise XnatUnavailable(f"XNAT at {self.host} did not answer ({what or path}): "
                                      f"{type(e).__name__}") from None
            if resp.status_code == 401 and not relogged:
                resp.close()
                self._relogin(generation)
                relogged = True
                continue
            if resp.status_code in (502, 503, 504) and attempt + 1 < attempts:
                resp.close()
                time.sleep(0.2 * 2 ** attempt)
                continue
            if resp.status_code in accept:
                return resp
            return self._check(resp, what or path)
        raise XnatUnavailable(f"XNAT at {self.host} kept failing ({what or path})")

    def _check(self, resp: requests.Response, what: str) -> requests.Response:
        code = resp.status_code
        if code < 400:
            return resp
        message = _xnat_message(resp)
        resp.close()
        if code == 401:
            if self.uses_token:
                raise TokenExpired("XNAT no longer accepts this alias token; log in again")
            raise AuthenticationFailed(f"XNAT rejected the credentials of {self.user!r}")
        if code == 403:
            raise PermissionDenied(f"XNAT does not let {self.username} read {what}", item=what)
        if code == 404:
            raise NotFound(f"{what} does not exist in XNAT", item=what)
        if code >= 500:
            raise XnatUnavailable(f"XNAT failed with HTTP {code} on {what}: {message}")
        raise InvalidRequest(f"XNAT refused the request for {what}: {message}", item=what)

    def get_json(self, path: str, *, params: dict | None = None, what: str = ""):
        params = dict(params or {})
        params.setdefault("format", "json")
        resp = self.request("GET", path, params=params, what=what)
        try:
            return resp.json()
        except ValueError:
            raise XnatUnavailable(f"XNAT answered {what or path} with something that is not JSON") from None

    def result(self, path: str, *, params: dict | None = None, what: str = "") -> list[dict]:
        """The ``ResultSet.Result`` rows of an XNAT listing."""
        doc = self.get_json(path, params=params, what=what)
        try:
            return list(doc["ResultSet"]["Result"])
        except (KeyError, TypeError):
            raise XnatUnavailable(f"XNAT's listing of {what or path} has no ResultSet") from None

    # -- xnatpy ---------------------------------------------------------------
    @property
    def xnat(self):
        """A real xnatpy session for the same user (built on first use)."""
        if self._xnat is None:
            from .extras import needs_extra

            with needs_extra("server", "an xnatpy session (XnatClient.xnat)"):
                import xnat

            self._xnat = xnat.connect(self.host, user=self.user, password=self._password,
                                      verify=self.verify, loglevel="WARNING")
        return self._xnat

    def close(self) -> None:
        if self._xnat is not None:
            self._xnat.disconnect()
            self._xnat = None
        try:
            self._http.delete(self.host + "/data/JSESSION", timeout=5)
        except requests.RequestException:
            pass
        self._adapter.close()  # the connections of every thread's session

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
