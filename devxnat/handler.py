"""The base request handler of the development server: who is asking, and how errors look.

Authentication: HTTP Basic with a password or an alias token (alias as user
name), or the ``JSESSIONID`` cookie. Errors (:mod:`.errors`) answer with XNAT's
HTML status page and the matching status; 401 carries ``WWW-Authenticate``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import html
import json
import logging
from pathlib import Path

from tornado import web

from .access import Access
from .errors import HttpError, Unauthorized
from .redact import redact_uri
from .store import Store

log = logging.getLogger(__name__)
access_log = logging.getLogger("tornado.access")


def log_request(handler: web.RequestHandler) -> None:
    """The access log line of one request (the application's ``log_function``): status,
    method, the URI with token secrets and credentials masked (:func:`.redact.redact_uri`),
    client address, time."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    req = handler.request
    access_log.log(level, "%d %s %s (%s) %.2fms", status, req.method, redact_uri(req.uri or ""),
                   req.remote_ip, 1000.0 * req.request_time())


class BaseHandler(web.RequestHandler):
    """Identity, errors and JSON for every handler."""

    #: endpoints that answer without a login
    public = False

    @property
    def store(self) -> Store:
        return self.settings["store"]

    @property
    def archive(self) -> Path:
        return self.settings["archive"]

    def check_xsrf_cookie(self) -> None:  # XNAT's REST API has no XSRF tokens
        return

    async def prepare(self) -> None:
        self.login: str | None = None
        self.via_basic = False
        header = self.request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            user, password = _decode_basic(header[6:])
            self.login = await self._check_basic(user, password)
            if self.login is None:
                raise Unauthorized("Login attempt failed. Please try again.")
            self.via_basic = True
        else:
            sid = self.get_cookie("JSESSIONID")
            if sid:
                login = self.store.session_user(sid)
                row = self.store.user(login) if login else None
                if row is not None and row["enabled"]:
                    self.login = login
        if self.login is None and not self.public:
            raise Unauthorized("Authentication required")

    async def _check_basic(self, user: str, password: str) -> str | None:
        """Login for Basic credentials: an alias token or a password (scrypt, off the loop)."""
        if self.store.token(user) is not None:
            login = self.store.validate_token(user, password)
        else:
            row = await _in_thread(self.store.path, "check_password", user, password)
            login = row["login"] if row is not None else None
        if login is None:
            return None
        row = self.store.user(login)
        return login if row is not None and row["enabled"] else None

    def access(self) -> Access:
        return Access(self.store, self.login)

    def write_json(self, doc, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json;charset=UTF-8")
        self.finish(json.dumps(doc))

    def start_session(self) -> str:
        sid = self.store.new_session(self.login)
        self.set_cookie("JSESSIONID", sid, path="/", httponly=True)
        return sid

    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, web.HTTPError):
            message = exc.log_message or self._reason
        elif isinstance(exc, HttpError):
            message = exc.message
        else:
            message = "Internal server error"
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="XNAT"')
        self.set_header("Content-Type", "text/html;charset=UTF-8")
        self.finish(_status_page(status_code, self._reason, message))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, HttpError):
            if self._finished:
                return
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ, value, tb) -> None:
        """Errors are logged with the redacted URI only (never a token secret in a path)."""
        where = f"{self.request.method} {redact_uri(self.request.uri or '')}"
        if isinstance(value, HttpError):
            log.info("%s -> %s: %s", where, value.status, value.message)
        elif isinstance(value, web.HTTPError):
            log.warning("%s -> %s: %s", where, value.status_code, value.log_message or "")
        else:
            log.error("uncaught exception in %s", where, exc_info=(typ, value, tb))


def _status_page(code: int, reason: str, message: str) -> str:
    return (
        "<html><head><title>Status page</title></head><body>"
        f"<h3>{html.escape(message)}</h3>"
        f"<p>{code} {html.escape(reason)}</p>"
        "</body></html>"
    )


def _decode_basic(b64: str) -> tuple[str, str]:
    try:
        raw = base64.b64decode(b64.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("malformed Authorization header") from None
    user, sep, password = raw.partition(":")
    if not sep:
        raise Unauthorized("malformed Authorization header")
    return user, password


async def _in_thread(db_path: str, method: str, *args):
    """Run a slow Store method (scrypt) in a worker thread with its own connection."""

    def work():
        st = Store(db_path)
        try:
            return getattr(st, method)(*args)
        finally:
            st.close()

    return await asyncio.get_running_loop().run_in_executor(None, work)
