"""The XNAT side of NrgXnat/xnat-jupyterhub-plugin: its REST API (``JupyterHubApi``,
``JupyterHubPreferencesApi``), its start/stop service (``DefaultJupyterHubService``) and the
XNAT APIs its UI reads (event tracking, compute-environment and hardware configs).

Routes (XNAT's paths)::

    GET        /xapi/jupyterhub/version                       hub version (any logged-in user)
    GET        /xapi/jupyterhub/info | /users                 admins
    GET|POST   /xapi/jupyterhub/users/{u}                     the hub's user / create it
    GET|POST|DELETE /xapi/jupyterhub/users/{u}/server[/{name}]   server state / start / stop
    GET        /xapi/jupyterhub/users/{u}/server[/{name}]/user-options   JupyterHub role, admins
    GET        /xapi/jupyterhub/users/{u}/server/events       admins
    POST       /xapi/jupyterhub/users/{u}/tokens              a hub token for the user's servers
    GET|POST   /xapi/jupyterhub/preferences[/{name}]          the plugin's preferences
    GET        /xapi/event_tracking/{key}                     XNAT's event tracking data
    GET|POST   /xapi/hardware-configs, /xapi/compute-environment-configs[?type=]   admins
    GET|PUT|DELETE /xapi/hardware-configs/{id}, /xapi/compute-environment-configs/{id}   admins
    GET        /xapi/compute-environment-configs/available?type=&site=&prj=&user=&datatype=

``{u}`` must be the caller or the caller a site administrator (XNAT's ``@Username`` with
``AccessLevel.User``). A start is answered at once; the rest runs as a task on devxnat's
loop (:mod:`.jupyterhub_service`) and reports through event tracking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re

from . import compute_services as cs
from . import plugin_configs as pc
from .access import Access
from .errors import BadRequest, Forbidden, InternalError, MethodNotAllowed, NotFound
from .handler import BaseHandler
from .jupyterhub_service import JupyterHubService, as_int, can_read_item
from .plugin_state import PluginState

log = logging.getLogger(__name__)


def _state(settings) -> PluginState:
    return settings["plugin_state"]


# -- handlers ------------------------------------------------------------------------

class PluginHandler(BaseHandler):
    def state(self) -> PluginState:
        return _state(self.settings)

    def service(self) -> JupyterHubService:
        return JupyterHubService(self.settings)

    def target_user(self, username: str):
        """XNAT's ``@Username`` check: the caller, or any user for a site administrator."""
        if username != self.login and not self.access().admin:
            raise Forbidden(f"User {self.login} is not authorized to access user {username}")
        row = self.store.user(username)
        if row is None:
            raise NotFound(f"Unable to find user {username}")
        return row

    def require_admin(self) -> None:
        if not self.access().admin:
            raise Forbidden(f"User {self.login} is not authorized to access this resource")

    def json_body(self) -> dict:
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise BadRequest("The request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object")
        return body

    def write_nothing(self) -> None:
        """A ``void`` controller method: 200 and no body."""
        self.set_status(200)
        self.finish()

    async def hub_call(self, coro):
        try:
            return await coro
        except Exception as e:  # noqa: BLE001 - XNAT answers 500 when the hub call throws
            raise InternalError(f"JupyterHub request failed: {e}") from None


class HubInfoHandler(PluginHandler):
    """``/version`` (any logged-in user), ``/info`` and ``/users`` (admins)."""

    async def get(self, what: str):
        hub = self.service().client()
        if what == "version":
            self.write_json(await self.hub_call(hub.version()))
            return
        self.require_admin()
        if what == "info":
            self.write_json(await self.hub_call(hub.info()))
        else:
            self.write_json([pc.hub_user_view(u) for u in await self.hub_call(hub.users())])


class HubUserHandler(PluginHandler):
    async def get(self, username: str):
        self.target_user(username)
        user = await self.hub_call(self.service().client().get_user(username))
        if user is None:
            raise NotFound(f"No user with name {username}exists on JupyterHub.")
        self.write_json(pc.hub_user_view(user))

    async def post(self, username: str):
        self.target_user(username)
        await self.hub_call(self.service().client().create_user(username))
        self.write_nothing()


class ServerHandler(PluginHandler):
    """``/users/{u}/server[/{name}]``: GET the hub's server, POST start, DELETE stop."""

    async def get(self, username: str, servername: str | None = None):
        self.target_user(username)
        server = await self.hub_call(self.service().client().get_server(username, servername or ""))
        if server is None:  # the plugin returns null: Spring answers 200 with no body
            self.write_nothing()
            return
        self.write_json(pc.hub_server_view(server))

    def post(self, username: str, servername: str | None = None):
        self.target_user(username)
        req = self.json_body()
        if servername is not None and servername != req.get("servername"):
            raise BadRequest("Server name in path does not match server name in request body.")
        if req.get("dashboardConfigId") is None:
            st, roles = self.state(), self.store.roles(self.login)
            if not st.flag("allUsersCanStartJupyter") and pc.JUPYTER_ROLE not in roles:
                raise Forbidden(f"User {self.login} has insufficient privileges")
        errors = pc.validate_start_request(self.login, req)
        if errors:
            raise BadRequest(", ".join(errors))
        host = self.settings.get("site_url") or f"{self.request.protocol}://{self.request.host}"
        self.service().start(self.login, self.access(), req, host)
        self.write_nothing()

    def delete(self, username: str, servername: str | None = None):
        self.target_user(username)
        key = self.get_argument("eventTrackingId", None)
        if not key:
            raise BadRequest("Required String parameter 'eventTrackingId' is not present")
        self.service().stop(username, servername or "", key)
        self.write_nothing()


class UserOptionsHandler(PluginHandler):
    """The stored options, for the hub's service account (``JupyterHub`` role) and admins;
    404 when none are stored or the user can no longer read the item."""

    def get(self, username: str, servername: str | None = None):
        roles = self.store.roles(self.login)
        if pc.JUPYTERHUB_ROLE not in roles and "Administrator" not in roles:
            raise Forbidden(f"User {self.login} is not authorized to access this resource")
        row = self.store.user(username)
        if row is None:
            raise NotFound(f"Unable to find user {username}")
        doc = self.state().options(row["xdat_user_id"], servername or "")
        if doc is None or not can_read_item(self.store, Access(self.store, username), doc.get("projectId"),
                                             doc.get("itemId", ""), doc.get("xsiType", "")):
            raise NotFound("User options not found." if servername is not None
                           else "Jupyter server configuration not found.")
        self.write_json(doc)


class ServerEventsHandler(PluginHandler):
    def get(self, username: str):
        self.require_admin()
        row = self.store.user(username)
        doc = self.state().options(row["xdat_user_id"], "") if row else None
        if doc is None:
            raise NotFound("Cannot find event tracking ID")
        data = self.state().tracking(doc["eventTrackingId"], row["xdat_user_id"])
        if data is None:
            raise NotFound("Cannot find event tracking data")
        self.write_json({"eventTrackingId": doc["eventTrackingId"], "payload": data["payload"],
                         "succeeded": str(data["succeeded"]).lower(), "finalMessage": data["finalMessage"],
                         "lastUpdated": ""})


class TokensHandler(PluginHandler):
    async def post(self, username: str):
        self.target_user(username)
        note, expires = self.get_argument("note", None), self.get_argument("expiresIn", None)
        if note is None or expires is None or as_int(expires) is None:
            raise BadRequest("Required parameters 'note' and 'expiresIn' (an integer) are missing")
        token = {"note": note, "expires_in": int(expires),
                 "scopes": [f"access:servers!user={username}"]}
        self.write_json(await self.hub_call(self.service().client().create_token(username, token)))


class PreferencesHandler(PluginHandler):
    """``JupyterHubPreferencesApi``: everyone reads ``allUsersCanStartJupyter``; admins and the
    JupyterHub role read all (the hub token included, as the plugin does); admins write."""

    def _privileged(self) -> bool:
        roles = self.store.roles(self.login)
        return "Administrator" in roles or pc.JUPYTERHUB_ROLE in roles

    def get(self, name: str | None = None):
        st = self.state()
        if name is None:
            prefs = st.prefs()
            if not self._privileged():
                prefs = {k: v for k, v in prefs.items() if k in pc.PUBLIC_PREFERENCES}
            self.write_json(prefs)
            return
        if name not in st.defaults:
            raise NotFound(f"No JupyterHub plugin preference named {name}")
        if name in pc.SECRET_PREFERENCES and not self._privileged():
            raise Forbidden("You do not have sufficient permissions.")
        value = st.pref(name)
        kind = pc.TYPED_PREFERENCES.get(name)
        if kind is bool:
            value = st.flag(name)
        elif kind is int:
            value = int(st.num(name))
        self.write_json({name: value})

    def post(self, name: str | None = None):
        self.require_admin()
        st = self.state()
        if name is not None:
            if name not in st.defaults:
                raise BadRequest(f"Invalid preference name {name}")
            st.set_pref(name, self.request.body.decode("utf-8"))
            self.write_nothing()
            return
        ctype = self.request.headers.get("Content-Type", "")
        if ctype.startswith("application/x-www-form-urlencoded"):
            body = {k: v[-1].decode("utf-8") for k, v in self.request.body_arguments.items()}
        else:
            body = self.json_body()
        for key, value in body.items():
            if key not in st.defaults:
                log.error("Got an invalid preference name error for the preference: %s", key)
                continue
            st.set_pref(key, json.dumps(value) if isinstance(value, (list, dict)) else
                        (str(value).lower() if isinstance(value, bool) else str(value)))
        self.write_nothing()

    def put(self, name: str | None = None):
        raise MethodNotAllowed("Request method 'PUT' not supported")


class EventTrackingHandler(PluginHandler):
    """``GET /xapi/event_tracking/{key}``: the caller's tracking data for that key."""

    def get(self, key: str):
        data = self.state().tracking(key, self.store.user(self.login)["xdat_user_id"])
        if data is None:
            raise NotFound(f"No event tracking data for key {key}")
        self.write_json(data)


@contextlib.contextmanager
def _compute_errors():
    """The compute services' failures as XNAT answers them: an unreadable body 400, a refused
    one 500 with the service's message (``XapiRestControllerAdvice``), an unknown id 404."""
    try:
        yield
    except cs.UnreadableConfig as e:
        raise BadRequest(f"JSON parse error: {e}") from None
    except cs.InvalidConfig as e:
        raise InternalError(f"There was an error in the request : {e}") from None
    except cs.ConfigNotFound as e:
        raise NotFound(str(e)) from None


def _path_id(which: str) -> int:
    """The ``{id}`` path variable (a Java ``Long``)."""
    if not re.fullmatch(r"[+-]?\d{1,18}", which):
        raise InternalError("There was an error in the request : Failed to convert value of type "
                            f"'java.lang.String' to required type 'java.lang.Long'; For input string: \"{which}\"")
    return int(which)


class ComputeConfigsHandler(PluginHandler):
    """XNAT's compute services' REST API (``HardwareConfigsApi``,
    ``ComputeEnvironmentConfigsApi``; :class:`.plugin_state.ComputeConfigs` holds the configs):
    GET all or one, POST (201), PUT ``/{id}`` (200), DELETE ``/{id}`` (204), for site
    administrators only (``restrictTo = Admin``). A subclass names its configs' operations."""

    #: the 404 text of GET ``/{id}`` and the 500 text of a PUT whose body names another id
    NOT_FOUND = MISMATCH = ""

    def compute(self):
        return self.state().compute

    def get(self, which: str | None = None):
        self.require_admin()
        with _compute_errors():
            if which is None:
                self.write_json(self.all())
                return
            cid = _path_id(which)
            found = self.one(cid)
            if found is None:
                raise cs.ConfigNotFound(self.NOT_FOUND.format(cid))
        self.write_json(found)

    def post(self, which: str | None = None):
        if which is not None:
            raise MethodNotAllowed("Request method 'POST' not supported")
        self.require_admin()
        body = self.json_body()
        with _compute_errors():
            created = self.create(self.read(body))
        log.info("%s created %s %s", self.login, self.request.path, created["id"])
        self.write_json(created, status=201)

    def put(self, which: str | None = None):
        if which is None:
            raise MethodNotAllowed("Request method 'PUT' not supported")
        self.require_admin()
        body = self.json_body()
        with _compute_errors():
            cid, cfg = _path_id(which), self.read(body)
            if cfg["id"] != cid:
                raise cs.InvalidConfig(self.MISMATCH)
            updated = self.update(cfg)
        log.info("%s updated %s", self.login, self.request.path)
        self.write_json(updated)

    def delete(self, which: str | None = None):
        if which is None:
            raise MethodNotAllowed("Request method 'DELETE' not supported")
        self.require_admin()
        with _compute_errors():
            self.remove(_path_id(which))
        log.info("%s deleted %s", self.login, self.request.path)
        self.set_status(204)
        self.finish()

    # the configs' operations
    def read(self, body) -> dict:
        raise NotImplementedError

    def all(self) -> list[dict]:
        raise NotImplementedError

    def one(self, cid: int) -> dict | None:
        raise NotImplementedError

    def create(self, cfg: dict) -> dict:
        raise NotImplementedError

    def update(self, cfg: dict) -> dict:
        raise NotImplementedError

    def remove(self, cid: int) -> None:
        raise NotImplementedError


class HardwareConfigsHandler(ComputeConfigsHandler):
    """``/xapi/hardware-configs[/{id}]``."""

    NOT_FOUND = "No hardware config found for ID {}"
    MISMATCH = "The hardware config ID in the path must match the ID in the body."

    def read(self, body):
        return cs.read_hardware_config(body)

    def all(self):
        return self.compute().hardware_list()

    def one(self, cid):
        return self.compute().hardware(cid)

    def create(self, cfg):
        return self.compute().create_hardware(cfg)

    def update(self, cfg):
        return self.compute().update_hardware(cfg)

    def remove(self, cid):
        self.compute().delete_hardware(cid)


class ComputeEnvironmentConfigsHandler(ComputeConfigsHandler):
    """``/xapi/compute-environment-configs[?type=|/{id}]``, and ``…/available`` for any
    logged-in user (``restrictTo = Read``)."""

    NOT_FOUND = "Compute environment config not found."
    MISMATCH = "The ID in the path must match the ID in the body."

    def get(self, which: str | None = None):
        if which != "available":
            super().get(which)
            return
        # getAvailable: the query's type and execution scope (site, prj, user, datatype)
        params = {k: v[0].decode("utf-8", "replace") for k, v in self.request.query_arguments.items()}
        with _compute_errors():
            ctype = cs.config_type(params.pop("type")) if "type" in params else None
            self.write_json(cs.available_compute_environments(
                self.compute().environments(), config_type=ctype, execution_scope=cs.execution_scope(params)))

    def read(self, body):
        return cs.read_compute_environment_config(body)

    def all(self):
        return self.compute().environments(cs.config_type(self.get_argument("type", None), blank_is_none=True))

    def one(self, cid):
        return self.compute().environment(cid)

    def create(self, cfg):
        return self.compute().create_environment(cfg)

    def update(self, cfg):
        return self.compute().update_environment(cfg)

    def remove(self, cid):
        self.compute().delete_environment(cid)


def routes() -> list:
    """The tornado routes of the plugin (more specific paths first)."""
    u = r"([^/]+)"
    base = r"/xapi/jupyterhub"
    return [
        (rf"{base}/(version|info|users)/?", HubInfoHandler),
        (rf"{base}/users/{u}/server/user-options/?", UserOptionsHandler),
        (rf"{base}/users/{u}/server/events/?", ServerEventsHandler),
        (rf"{base}/users/{u}/server/{u}/user-options/?", UserOptionsHandler),
        (rf"{base}/users/{u}/server/?", ServerHandler),
        (rf"{base}/users/{u}/server/{u}/?", ServerHandler),
        (rf"{base}/users/{u}/tokens/?", TokensHandler),
        (rf"{base}/users/{u}/?", HubUserHandler),
        (rf"{base}/preferences/?", PreferencesHandler),
        (rf"{base}/preferences/{u}/?", PreferencesHandler),
        (r"/xapi/event_tracking/([^/]+)/?", EventTrackingHandler),
        (r"/xapi/hardware-configs/?", HardwareConfigsHandler),
        (r"/xapi/hardware-configs/([^/]+)/?", HardwareConfigsHandler),
        (r"/xapi/compute-environment-configs/?", ComputeEnvironmentConfigsHandler),
        (r"/xapi/compute-environment-configs/([^/]+)/?", ComputeEnvironmentConfigsHandler),
    ]
