"""The development server's HTTP application (tornado).

Routes (each the XNAT 1.8 path of the same name):

* login and sessions: ``/``, ``PUT /data/services/auth``, ``GET|DELETE /data/JSESSION``,
  ``GET /data/auth``
* site: ``/data/version`` (404, as XNAT ≥ 1.7), ``/xapi/siteConfig/buildInfo``,
  ``/xapi/schemas``, ``/xapi/schemas/{xnat,xdat}``
* alias tokens: ``/data/services/tokens/issue[/user/{u}]``,
  ``/validate/{alias}/{secret}``, ``/invalidate/{alias}/{secret}``
* users: ``/xapi/users``, ``/xapi/users/{u}/roles[/{role}]``, ``/xapi/users/{u}/groups``,
  ``/xapi/users/{u}/enabled/{true|false}``
* archive: ``/data/...`` (see :mod:`.routes`), handled in :mod:`.data_api`

Authentication: HTTP Basic with a password or an alias token (alias as user
name), or the ``JSESSIONID`` cookie. Errors answer with XNAT's HTML status page
and the matching status; 401 carries ``WWW-Authenticate``.
"""

from __future__ import annotations

import base64
import binascii
import html
import json
import logging
import re
from importlib import resources
from pathlib import Path

from tornado import web

from xnat_bridge.errors import (
    AuthenticationFailed,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    XnatHpcError,
)

from . import shapes
from .access import Access
from .store import Store

log = logging.getLogger(__name__)

XNAT_VERSION = "1.8.10"
SCHEMAS = ("xnat", "xdat")
_ROLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


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
                raise AuthenticationFailed("Login attempt failed. Please try again.")
            self.via_basic = True
        else:
            sid = self.get_cookie("JSESSIONID")
            if sid:
                login = self.store.session_user(sid)
                row = self.store.user(login) if login else None
                if row is not None and row["enabled"]:
                    self.login = login
        if self.login is None and not self.public:
            raise AuthenticationFailed("Authentication required")

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
        elif isinstance(exc, XnatHpcError):
            message = exc.message
        else:
            message = "Internal server error"
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Basic realm="XNAT"')
        self.set_header("Content-Type", "text/html;charset=UTF-8")
        self.finish(_status_page(status_code, self._reason, message))

    def _handle_request_exception(self, e: BaseException) -> None:
        if isinstance(e, XnatHpcError):
            if self._finished:
                return
            self.send_error(e.status, exc_info=(type(e), e, e.__traceback__))
            return
        super()._handle_request_exception(e)

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, XnatHpcError):
            log.info("%s %s -> %s: %s", self.request.method, self.request.path, value.status,
                     value.message)
            return
        super().log_exception(typ, value, tb)


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
        raise AuthenticationFailed("malformed Authorization header") from None
    user, sep, password = raw.partition(":")
    if not sep:
        raise AuthenticationFailed("malformed Authorization header")
    return user, password


async def _in_thread(db_path: str, method: str, *args):
    """Run a slow Store method (scrypt) in a worker thread with its own connection."""
    import asyncio

    def work():
        st = Store(db_path)
        try:
            return getattr(st, method)(*args)
        finally:
            st.close()

    return await asyncio.get_running_loop().run_in_executor(None, work)


# -- login and site --------------------------------------------------------

class RootHandler(BaseHandler):
    """The landing page; with Basic credentials it also opens a session (as XNAT)."""

    public = True

    def get(self, *_):
        if self.login and self.via_basic:
            self.start_session()
        who = html.escape(self.login) if self.login else "Guest"
        self.set_header("Content-Type", "text/html;charset=UTF-8")
        self.finish(f"<html><head><title>XNAT (development server)</title></head><body>"
                    f"<span id=\"user_info\">Logged in as: {who}</span>"
                    f"<p>xnat-hpc-hub development XNAT {XNAT_VERSION}</p></body></html>")


class AuthServiceHandler(BaseHandler):
    """``PUT|POST /data/services/auth`` with form fields username, password → JSESSIONID."""

    public = True

    async def put(self):
        user = self.get_body_argument("username", "") or self.get_argument("username", "")
        password = self.get_body_argument("password", "") or self.get_argument("password", "")
        login = await self._check_basic(user, password) if user and password else None
        if login is None:
            raise AuthenticationFailed("Login attempt failed. Please try again.")
        self.login = login
        sid = self.start_session()
        self.set_header("Content-Type", "text/plain;charset=UTF-8")
        self.finish(sid)

    post = put


class JSessionHandler(BaseHandler):
    """``GET /data/JSESSION`` → the session id; ``DELETE`` ends the session."""

    public = True

    def get(self):
        if self.login is None:
            raise AuthenticationFailed("Authentication required")
        sid = self.get_cookie("JSESSIONID") if not self.via_basic else None
        if not sid or self.store.session_user(sid) != self.login:
            sid = self.start_session()
        self.set_header("Content-Type", "text/plain;charset=UTF-8")
        self.finish(sid)

    def delete(self):
        sid = self.get_cookie("JSESSIONID")
        if sid:
            self.store.end_session(sid)
        self.clear_cookie("JSESSIONID", path="/")
        self.set_status(200)
        self.finish("")


class AuthCheckHandler(BaseHandler):
    def get(self):
        self.set_header("Content-Type", "text/plain;charset=UTF-8")
        self.finish(f"User '{self.login}' is logged in")


class VersionHandler(BaseHandler):
    """XNAT ≥ 1.7 has no ``/data/version``: clients fall back to buildInfo."""

    public = True

    def get(self):
        raise NotFound("The server has not found anything matching the request URI")


class BuildInfoHandler(BaseHandler):
    public = True

    def get(self):
        self.write_json({
            "version": XNAT_VERSION,
            "buildNumber": "devxnat",
            "buildDate": "2026-01-01",
            "commit": "xnat-hpc-hub-devserver",
            "isDevelopmentServer": "true",
        })


class SchemasHandler(BaseHandler):
    def get(self, name: str | None = None):
        if name is None:
            self.write_json(list(SCHEMAS))
            return
        if name not in SCHEMAS:
            raise NotFound(f"no schema named {name}")
        text = resources.files(__package__).joinpath("schemas", f"{name}.xsd").read_text()
        self.set_header("Content-Type", "application/xml;charset=UTF-8")
        self.finish(text)


# -- alias tokens -------------------------------------------------------------

class TokenIssueHandler(BaseHandler):
    def get(self, for_user: str | None = None):
        login = self.login
        if for_user is not None and for_user != login:
            if not self.access().admin:
                raise PermissionDenied("only site administrators may issue tokens for others")
            if self.store.user(for_user) is None:
                raise NotFound(f"no user {for_user}")
            login = for_user
        tok = self.store.issue_token(login)
        row = self.store.token(tok["alias"])
        body = shapes.alias_token(row, tok["secret"], login)
        self.write_json(body)

    put = post = get


class TokenValidateHandler(BaseHandler):
    """``/data/services/tokens/validate/{alias}/{secret}`` → ``{"valid": user}`` or ``{}``."""

    public = True

    def get(self, alias: str, secret: str):
        login = self.store.validate_token(alias, secret)
        row = self.store.user(login) if login else None
        if row is None or not row["enabled"]:
            self.write_json({})
            return
        self.write_json({"valid": login})


class TokenInvalidateHandler(BaseHandler):
    def get(self, alias: str, secret: str):
        tok = self.store.token(alias)
        if tok is None:
            raise NotFound("no such alias token")
        owner = self.store.validate_token(alias, secret)
        if owner is None and not (tok["login"] == self.login or self.access().admin):
            raise PermissionDenied("that alias token is not yours to invalidate")
        self.store.invalidate_token(alias)
        self.write_json({})

    delete = put = post = get


# -- users (xapi) -------------------------------------------------------------

class XapiUserHandler(BaseHandler):
    """Site roles, groups and the enabled flag of one user."""

    def _target(self, username: str, *, write: bool = False):
        row = self.store.user(username)
        acc = self.access()
        if username != self.login and not acc.admin:
            raise PermissionDenied(f"only {username} and site administrators may see this")
        if write and not acc.admin:
            raise PermissionDenied("only site administrators may change users")
        if row is None:
            raise NotFound(f"no user {username}")
        return row

    def get(self, username: str, what: str, arg: str | None = None):
        self._target(username)
        if what == "roles" and arg is None:
            self.write_json(self.store.roles(username))
        elif what == "groups" and arg is None:
            groups = self.store.memberships(username)
            from .store import GROUP_SUFFIX

            self.write_json(sorted(f"{p}_{GROUP_SUFFIX[g]}" for p, g in groups.items()))
        elif what == "enabled" and arg is None:
            self.write_json(bool(self.store.user(username)["enabled"]))
        else:
            raise NotFound(self.request.path)

    def put(self, username: str, what: str, arg: str | None = None):
        self._target(username, write=True)
        if what == "roles" and arg:
            if not _ROLE_RE.match(arg):
                raise InvalidRequest(f"invalid role name {arg!r}")
            self.store.add_role(username, arg)
        elif what == "enabled" and arg in ("true", "false"):
            self.store.set_enabled(username, arg == "true")
        else:
            raise NotFound(self.request.path)
        self.write_json({})

    def delete(self, username: str, what: str, arg: str | None = None):
        self._target(username, write=True)
        if what != "roles" or not arg:
            raise NotFound(self.request.path)
        self.store.remove_role(username, arg)
        self.write_json({})


class XapiUsersHandler(BaseHandler):
    """``GET /xapi/users`` (user names), ``POST /xapi/users`` (create; admins only)."""

    def get(self):
        if not self.access().admin:
            raise PermissionDenied("only site administrators may list users")
        self.write_json([r["login"] for r in self.store.users()])

    def post(self):
        if not self.access().admin:
            raise PermissionDenied("only site administrators may create users")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise InvalidRequest("the body must be JSON") from None
        username = str(body.get("username", ""))
        password = str(body.get("password", ""))
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", username) or not password:
            raise InvalidRequest("username (letters, digits, _.@-) and password are required")
        if self.store.user(username) is not None:
            raise InvalidRequest(f"user {username} already exists")
        self.store.add_user(username, password, firstname=str(body.get("firstName", "")),
                            lastname=str(body.get("lastName", "")), email=str(body.get("email", "")),
                            enabled=bool(body.get("enabled", True)))
        self.write_json({"username": username}, status=201)


#: ``/data/search/elements``: the searchable data types and their display fields
SEARCH_ELEMENTS = {
    "xnat:projectData": ("Projects", "Project", ("ID", "NAME", "DESCRIPTION", "PI")),
    "xnat:subjectData": ("Subjects", "Subject", ("SUBJECT_ID", "SUBJECT_LABEL", "PROJECT", "GENDER_TEXT", "YOB")),
    "xnat:mrSessionData": ("MR Sessions", "MR Session", ("SESSION_ID", "LABEL", "PROJECT", "DATE", "SUBJECT_ID")),
    "xnat:eegSessionData": ("EEG Sessions", "EEG Session", ("SESSION_ID", "LABEL", "PROJECT", "DATE", "SUBJECT_ID")),
    "xnat:ecgSessionData": ("ECG Sessions", "ECG Session", ("SESSION_ID", "LABEL", "PROJECT", "DATE", "SUBJECT_ID")),
    "xnat:mrScanData": ("MR Scans", "MR Scan", ("ID", "TYPE", "SERIES_DESCRIPTION", "QUALITY")),
    "xnat:eegScanData": ("EEG Scans", "EEG Scan", ("ID", "TYPE", "SERIES_DESCRIPTION", "QUALITY")),
    "xnat:ecgScanData": ("ECG Scans", "ECG Scan", ("ID", "TYPE", "SERIES_DESCRIPTION", "QUALITY")),
}


class SearchElementsHandler(BaseHandler):
    """``/data/search/elements[/{xsiType}]``: data types and their search fields."""

    def get(self, element: str | None = None):
        if element is None:
            rows = [{"ELEMENT_NAME": name, "PLURAL": plural, "SINGULAR": singular,
                     "SECURED": "true", "COUNT": "0"}
                    for name, (plural, singular, _) in SEARCH_ELEMENTS.items()]
            self.write_json(shapes.result_set(rows, title="Elements"))
            return
        if element not in SEARCH_ELEMENTS:
            raise NotFound(f"no data type {element}")
        rows = [{"FIELD_ID": f, "HEADER": f.replace("_", " ").title(), "SUMMARY": "",
                 "TYPE": "string", "REQUIRES_VALUE": "false", "DESC": "", "ELEMENT_NAME": element,
                 "SRC": "0"} for f in SEARCH_ELEMENTS[element][2]]
        self.write_json(shapes.result_set(rows, title="Fields"))


def make_app(store: Store, archive: Path) -> web.Application:
    from .data_api import DataHandler

    tok = r"([^/]+)"
    return web.Application(
        [
            (r"/", RootHandler),
            (r"/app/(.*)", RootHandler),
            (r"/data/services/auth/?", AuthServiceHandler),
            (r"/data/JSESSION/?", JSessionHandler),
            (r"/data/auth/?", AuthCheckHandler),
            (r"/data/version/?", VersionHandler),
            (r"/xapi/siteConfig/buildInfo/?", BuildInfoHandler),
            (r"/xapi/schemas/?", SchemasHandler),
            (r"/xapi/schemas/([A-Za-z]+)", SchemasHandler),
            (r"/data/services/tokens/issue/?", TokenIssueHandler),
            (rf"/data/services/tokens/issue/user/{tok}", TokenIssueHandler),
            (rf"/data/services/tokens/validate/{tok}/{tok}", TokenValidateHandler),
            (rf"/data/services/tokens/invalidate/{tok}/{tok}", TokenInvalidateHandler),
            (r"/data/search/elements/?", SearchElementsHandler),
            (r"/data/search/elements/([A-Za-z]+:[A-Za-z]+)", SearchElementsHandler),
            (r"/xapi/users/?", XapiUsersHandler),
            (rf"/xapi/users/{tok}/(roles|groups|enabled)/?", XapiUserHandler),
            (rf"/xapi/users/{tok}/(roles|enabled)/{tok}", XapiUserHandler),
            (r"/(?:data|REST)/.*", DataHandler),
        ],
        store=store,
        archive=archive,
        default_handler_class=_NotFoundHandler,
        xsrf_cookies=False,
    )


class _NotFoundHandler(BaseHandler):
    public = True

    def prepare(self):
        raise NotFound("The server has not found anything matching the request URI")
