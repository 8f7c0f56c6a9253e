"""The development server's HTTP application (tornado).

Routes (each the XNAT 1.8 path of the same name):

* login and sessions: ``/``, ``PUT /data/services/auth``, ``GET|DELETE /data/JSESSION``,
  ``GET /data/auth``
* site: ``/data/version`` (404, as XNAT ≥ 1.7), ``/xapi/siteConfig/buildInfo``,
  ``/xapi/schemas``, ``/xapi/schemas/{xnat,xdat}``
* alias tokens: ``/data/services/tokens/issue[/user/{u}]``,
  ``/validate/{alias}/{secret}``, ``/invalidate/{alias}[/{secret}]``
* users: ``/xapi/users``, ``/xapi/users/username`` (who is asking), ``/xapi/users/{u}/roles[/{role}]``,
  ``/xapi/users/{u}/groups``, ``/xapi/users/{u}/enabled/{true|false}``

The access log masks token secrets in paths and credentials in query strings
(:mod:`.redact`).
* archive: ``/data/...`` (see :mod:`.routes`), handled in :mod:`.data_api`
* stored searches: ``/data/search/saved[/{id}[/results]]`` (:mod:`.stored_search`)
* XNAT's JupyterHub plugin: ``/xapi/jupyterhub/...``, ``/xapi/event_tracking/{key}``,
  compute-environment and hardware configs (:mod:`.jupyterhub_plugin`,
  :mod:`.jupyterhub_service`)

Authentication, errors and JSON answers are :class:`.handler.BaseHandler`'s.
"""

from __future__ import annotations

import html
import json
import re
from importlib import resources
from pathlib import Path

from tornado import web

from . import jupyterhub_plugin, shapes, stored_search
from .data_api import DataHandler
from .errors import BadRequest, Forbidden, NotFound, Unauthorized
from .handler import BaseHandler, log_request
from .plugin_state import PluginState
from .store import GROUP_SUFFIX, Store


XNAT_VERSION = "1.8.10"
SCHEMAS = ("xnat", "xdat")
_ROLE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


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
            raise Unauthorized("Login attempt failed. Please try again.")
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
            raise Unauthorized("Authentication required")
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
                raise Forbidden("only site administrators may issue tokens for others")
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
    """``/data/services/tokens/invalidate/{alias}[/{secret}]`` → ``{"result": "OK"}``.

    As XNAT's ``AliasTokenRestlet``: the caller must be logged in (e.g. with the token
    itself as Basic credentials) and own the token, or be a site administrator; the
    secret segment, when given, is not needed and not checked."""

    def get(self, alias: str, _secret: str | None = None):
        tok = self.store.token(alias)
        if tok is None:
            raise NotFound(f"Can't find an alias token with the alias {alias}")
        if tok["login"] != self.login and not self.access().admin:
            raise Forbidden("Non-admin users can only request operations on alias tokens for "
                            "their own account")
        self.store.invalidate_token(alias)
        self.write_json({"result": "OK"})

    delete = put = post = get


# -- users (xapi) -------------------------------------------------------------

class XapiUserHandler(BaseHandler):
    """Site roles, groups and the enabled flag of one user."""

    def _target(self, username: str, *, write: bool = False):
        row = self.store.user(username)
        acc = self.access()
        if username != self.login and not acc.admin:
            raise Forbidden(f"only {username} and site administrators may see this")
        if write and not acc.admin:
            raise Forbidden("only site administrators may change users")
        if row is None:
            raise NotFound(f"no user {username}")
        return row

    def get(self, username: str, what: str, arg: str | None = None):
        self._target(username)
        if what == "roles" and arg is None:
            self.write_json(self.store.roles(username))
        elif what == "groups" and arg is None:
            groups = self.store.memberships(username)
            self.write_json(sorted([f"{p}_{GROUP_SUFFIX[g]}" for p, g in groups.items()]
                                   + self.store.site_groups(username)))
        elif what == "enabled" and arg is None:
            self.write_json(bool(self.store.user(username)["enabled"]))
        else:
            raise NotFound(self.request.path)

    def put(self, username: str, what: str, arg: str | None = None):
        self._target(username, write=True)
        if what == "roles" and arg:
            if not _ROLE_RE.match(arg):
                raise BadRequest(f"invalid role name {arg!r}")
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


class XapiUsernameHandler(BaseHandler):
    """``GET /xapi/users/username``: the logged-in user's name, as text (XNAT's ``UsersApi``).
    With an alias token as Basic credentials this says whose token it is."""

    def get(self):
        self.set_header("Content-Type", "text/plain;charset=UTF-8")
        self.finish(self.login)


class XapiUsersHandler(BaseHandler):
    """``GET /xapi/users`` (user names), ``POST /xapi/users`` (create; admins only)."""

    def get(self):
        if not self.access().admin:
            raise Forbidden("only site administrators may list users")
        self.write_json([r["login"] for r in self.store.users()])

    def post(self):
        if not self.access().admin:
            raise Forbidden("only site administrators may create users")
        try:
            body = json.loads(self.request.body or b"{}")
        except ValueError:
            raise BadRequest("the body must be JSON") from None
        username = str(body.get("username", ""))
        password = str(body.get("password", ""))
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$", username) or not password:
            raise BadRequest("username (letters, digits, _.@-) and password are required")
        if self.store.user(username) is not None:
            raise BadRequest(f"user {username} already exists")
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


def make_app(store: Store, archive: Path, *, plugin_state: PluginState | None = None,
             site_url: str | None = None) -> web.Application:
    """The application; *plugin_state* holds the JupyterHub plugin's preferences (a fresh
    :class:`.plugin_state.PluginState` over *store* when None); *site_url* is XNAT's address
    as the plugin hands it to notebooks (``XNAT_HOST``; default: the address a start came to)."""
    tok = r"([^/]+)"
    return web.Application(
        jupyterhub_plugin.routes() + [
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
            (rf"/data/services/tokens/invalidate/{tok}/?", TokenInvalidateHandler),
            (rf"/data/services/tokens/invalidate/{tok}/{tok}", TokenInvalidateHandler),
            (r"/data/search/elements/?", SearchElementsHandler),
            (r"/data/search/elements/([A-Za-z]+:[A-Za-z]+)", SearchElementsHandler),
            *stored_search.routes(),
            (r"/xapi/users/?", XapiUsersHandler),
            (r"/xapi/users/username/?", XapiUsernameHandler),
            (rf"/xapi/users/{tok}/(roles|groups|enabled)/?", XapiUserHandler),
            (rf"/xapi/users/{tok}/(roles|enabled)/{tok}", XapiUserHandler),
            (r"/(?:data|REST)/.*", DataHandler),
        ],
        store=store,
        archive=archive,
        plugin_state=plugin_state or PluginState(
            store, defaults={"workspacePath": str(Path(archive).resolve().parent / "workspaces")}),
        site_url=site_url,
        default_handler_class=_NotFoundHandler,
        xsrf_cookies=False,
        log_function=log_request,
    )


class _NotFoundHandler(BaseHandler):
    public = True

    def prepare(self):
        raise NotFound("The server has not found anything matching the request URI")
