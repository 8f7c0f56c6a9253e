"""REST handlers under ``{base_url}xnat-hpc/api/`` (contract: ``openapi.yaml`` beside this file).

One base class, :class:`XnatHpcHandler`, does what every endpoint shares:

* authentication (``@web.authenticated``) and jupyter_server authorization
  (``@authorized``, resource ``xnat-hpc``); cookie-authenticated non-GET
  requests are XSRF-checked by jupyter_server's standard ``check_xsrf_cookie``;
* running blocking work (XNAT requests, hashing, SQLite, Slurm) in a thread:
  :meth:`XnatHpcHandler.blocking`; the event loop never waits on I/O;
* mapping errors to responses in ONE place (:meth:`XnatHpcHandler.write_error`):
  an :class:`~xnat_bridge.errors.XnatHpcError` → its status and
  ``{"error", "message", "item"?}``; tornado HTTP errors (XSRF, 404 route) →
  the same shape; anything else → 500 ``internal error; see the server log``
  with the traceback in the log only.

:data:`ROUTES` is the handler table: OpenAPI path template → handler class;
the extension derives its URL patterns from it and ``tests/unit/test_openapi.py``
checks that ``openapi.yaml`` describes exactly these paths and methods.
"""

from __future__ import annotations

import functools
import json
import logging
import re

from tornado import web
from tornado.ioloop import IOLoop

from ..errors import InvalidRequest, NotFound, XnatHpcError
from ..extras import needs_extra
from . import sharing, views

with needs_extra("server", "the server extension (xnat_bridge.serverext)"):
    from jupyter_server.auth.decorator import authorized
    from jupyter_server.base.handlers import APIHandler
    from jupyter_server.extension.handler import ExtensionHandlerMixin

log = logging.getLogger(__name__)

API_PREFIX = "xnat-hpc/api"
AUTH_RESOURCE = "xnat-hpc"
_HTTP_REASONS = {400: "invalid_request", 401: "authentication_failed", 403: "forbidden",
                 404: "not_found", 405: "method_not_allowed", 409: "conflict"}
#: the 403 of a request that no token or login of this server's owner authenticated (no
#: credentials, another user's token, a token without access to this server, a deleted one)
NOT_AUTHENTICATED = ("access to this server refused: the request carries no JupyterHub token or "
                     "hub login with access to it (only the server's owner has access)")


def endpoint(method):
    """Authenticated + authorized (resource ``xnat-hpc``) handler method."""
    return web.authenticated(authorized(method))


class XnatHpcHandler(ExtensionHandlerMixin, APIHandler):
    """Base of every xnat-hpc handler: auth, threads, error mapping."""

    auth_resource = AUTH_RESOURCE

    async def prepare(self) -> None:
        await super().prepare()
        self.extensionapp.ensure_activity_reporter()

    @property
    def state(self):
        return self.extensionapp.state

    @property
    def root_dir(self) -> str:
        return self.serverapp.root_dir

    async def blocking(self, fn, *args, **kwargs):
        """Run *fn* in the server's default thread pool and return its result."""
        return await IOLoop.current().run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def json_body(self):
        """The request body as JSON (InvalidRequest when it is not)."""
        try:
            return json.loads(self.request.body or b"null")
        except ValueError:
            raise InvalidRequest("the request body is not valid JSON") from None

    def reply(self, data, status: int = 200) -> None:
        self.set_status(status)
        if status == 204:
            self.finish()
            return
        self.finish(json.dumps(data))

    # -- the one place errors become responses ---------------------------------
    def write_error(self, status_code: int, **kwargs) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, XnatHpcError):
            self.set_status(exc.status)
            body = exc.to_json()
        elif isinstance(exc, web.HTTPError) or exc is None:
            message = self._reason
            if exc is not None and exc.log_message:
                message = exc.log_message % exc.args if exc.args else exc.log_message
            if status_code == 403 and not self._authenticated():
                message = NOT_AUTHENTICATED  # rather than "Forbidden" or "'_xsrf' argument missing"
            body = {"error": _HTTP_REASONS.get(status_code, "error"), "message": message}
        else:
            self.set_status(500)
            body = {"error": "error", "message": "internal error; see the server log"}
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

    def _authenticated(self) -> bool:
        """Whether ``prepare`` found a user this server accepts."""
        try:
            return self.current_user is not None
        except Exception:  # noqa: BLE001 - not resolved yet: not authenticated
            return False

    def log_exception(self, typ, value, tb) -> None:
        if isinstance(value, XnatHpcError):
            log.info("xnat-hpc %s %s -> %s %s: %s", self.request.method, self.request.path,
                     value.status, value.reason, value.message)
            return
        super().log_exception(typ, value, tb)


# -- browsing -------------------------------------------------------------------

class ScopeHandler(XnatHpcHandler):
    @endpoint
    async def get(self):
        def work():
            c = self.state.connection()
            return views.scope_json(c.user, c.client.host, c.scope, c.access.mode)

        self.reply(await self.blocking(work))


class ProjectsHandler(XnatHpcHandler):
    @endpoint
    async def get(self):
        items = await self.blocking(lambda: self.state.connection().projects())
        self.reply({"items": [views.item_json(p) for p in items]})


class SubjectsHandler(XnatHpcHandler):
    @endpoint
    async def get(self, project):
        offset, limit = views.page_args(self.get_query_argument("offset", None),
                                        self.get_query_argument("limit", None))
        page = await self.blocking(lambda: self.state.connection().subjects(project, offset, limit))
        self.reply(views.page_json(page))


class ExperimentsHandler(XnatHpcHandler):
    @endpoint
    async def get(self, project):
        offset, limit = views.page_args(self.get_query_argument("offset", None),
                                        self.get_query_argument("limit", None))
        subject = self.get_query_argument("subject", None) or None
        page = await self.blocking(
            lambda: self.state.connection().experiments(project, subject, offset, limit))
        self.reply(views.page_json(page))


class ScansHandler(XnatHpcHandler):
    @endpoint
    async def get(self, project, experiment):
        scans = await self.blocking(lambda: self.state.connection().scans(project, experiment))
        self.reply({"items": [views.scan_json(s) for s in scans]})


class ResourcesHandler(XnatHpcHandler):
    @endpoint
    async def get(self, project, experiment):
        scan = self.get_query_argument("scan", None) or None
        items = await self.blocking(
            lambda: self.state.connection().resources(project, experiment, scan))
        self.reply({"items": [views.item_json(r) for r in items]})


class FilesHandler(XnatHpcHandler):
    @endpoint
    async def get(self, project, experiment):
        scan = self.get_query_argument("scan", None) or None
        resource = self.get_query_argument("resource", None) or None
        items = await self.blocking(
            lambda: self.state.connection().files(project, experiment, scan, resource))
        self.reply({"items": [views.item_json(f) for f in items]})


# -- datasets -------------------------------------------------------------------

class DatasetsHandler(XnatHpcHandler):
    @endpoint
    async def get(self):
        def work():
            store = self.state.datasets()
            return [views.dataset_summary(store.load(n), store.versions(n)) for n in store.names()]

        self.reply({"items": await self.blocking(work)})

    @endpoint
    async def post(self):
        name, selection = views.parse_dataset_body(self.json_body())

        def work():
            m = self.state.connection().create_dataset(name, selection)
            return views.dataset_summary(m, self.state.datasets().versions(m.name))

        self.reply(await self.blocking(work), status=201)


class DatasetHandler(XnatHpcHandler):
    @endpoint
    async def get(self, name):
        version = self.get_query_argument("version", None)
        version = None if version in (None, "") else views.int_arg(version, "version", 1, 1)

        def work():
            store = self.state.datasets()
            return views.dataset_detail(store.load(name, version), store.versions(name))

        self.reply(await self.blocking(work))

    @endpoint
    async def delete(self, name):
        removed = await self.blocking(lambda: self.state.datasets().delete(name))
        log.info("xnat-hpc: dataset %r deleted (%d versions)", name, removed)
        self.reply(None, status=204)


# -- offload --------------------------------------------------------------------

class LimitsHandler(XnatHpcHandler):
    @endpoint
    async def get(self):
        policy = await self.blocking(self.state.policy)
        body = policy.to_json()
        body["partitions"] = [policy.partition]
        self.reply(body)


class ScriptsHandler(XnatHpcHandler):
    @endpoint
    async def get(self):
        items = await self.blocking(views.list_scripts, self.root_dir, skip=(self.state.workspace,))
        self.reply({"items": items})


def _progress(manager, job_id: str) -> dict | None:
    """The manager's live staging progress of *job_id* (a ``manager_class`` without it: none)."""
    of = getattr(manager, "progress", None)
    return of(job_id) if of is not None else None


def _review(manager, doc: dict) -> dict:
    """*doc* (a job's JSON) with ``review``: held / approved / rejected and why, or None when
    its results were not held (:meth:`OffloadManager.review`; asks the hub about held jobs)."""
    of = getattr(manager, "review", None)
    doc["review"] = of(doc["id"]) if of is not None and doc.get("state") == "done" else None
    return doc


class JobsHandler(XnatHpcHandler):
    @endpoint
    async def get(self):
        def work():
            m = self.state.manager()
            out = views.jobs_json(m.list(), lambda job_id: _progress(m, job_id))
            out["items"] = [_review(m, doc) for doc in out["items"]]
            return out

        self.reply(await self.blocking(work))

    @endpoint
    async def post(self):
        req = views.parse_job_body(self.json_body())
        # the manager checks every value (script, resources, dataset) and the client_token;
        # one submit at a time per server keeps staging-space checks and submits in order
        async with self.extensionapp.submit_lock:
            done = await self.blocking(lambda: self.state.manager().submit_once(
                req["dataset"], req["script"], dataset_version=req.get("dataset_version"),
                partition=req.get("partition"), cpus=req.get("cpus"), mem=req.get("memory"),
                gpus=req.get("gpus"), walltime=req.get("walltime"),
                client_token=req.get("client_token")))
        job = done.record
        log.info("xnat-hpc: job %s %s for %s (dataset %s, script %s)", job.id,
                 "submitted" if done.created else "already exists", job.user, job.dataset, job.script)
        self.reply(views.job_json(job), status=202 if done.created else 200)


class JobHandler(XnatHpcHandler):
    @endpoint
    async def get(self, job_id):
        views.check_job_id(job_id)
        def work():
            m = self.state.manager()
            return _review(m, views.job_json(m.get(job_id), _progress(m, job_id)))

        self.reply(await self.blocking(work))


class JobLogsHandler(XnatHpcHandler):
    @endpoint
    async def get(self, job_id):
        views.check_job_id(job_id)
        offset = views.int_arg(self.get_query_argument("offset", None), "offset", 0, 0)

        def work():
            m = self.state.manager()
            state = m.get(job_id).state
            text, nxt = m.logs(job_id, offset)
            return {"text": text, "offset": nxt, "state": getattr(state, "value", state)}

        self.reply(await self.blocking(work))


class JobCancelHandler(XnatHpcHandler):
    @endpoint
    async def post(self, job_id):
        views.check_job_id(job_id)
        job = await self.blocking(lambda: self.state.manager().cancel(job_id))
        log.info("xnat-hpc: job %s cancel requested by %s -> %s", job_id, job.user, job.state)
        self.reply(views.job_json(job))


class JobResultsHandler(XnatHpcHandler):
    @endpoint
    async def get(self, job_id):
        views.check_job_id(job_id)
        results = await self.blocking(lambda: self.state.manager().results(job_id))
        self.reply(views.results_json(results, self.root_dir))


class JobPublishHandler(XnatHpcHandler):
    @endpoint
    async def post(self, job_id):
        views.check_job_id(job_id)
        project = views.parse_publish_body(self.json_body())
        done = await self.blocking(lambda: self.state.manager().publish(job_id, project))
        log.info("xnat-hpc: job %s results published to %s", job_id, done["resource"])
        self.reply(views.publication_json(done))


class SharesHandler(XnatHpcHandler):
    """This server's shares (its owner only; the hub decides who may be a guest)."""

    @endpoint
    async def get(self):
        sharing.check_owner(self.current_user.username)
        self.reply(await self.blocking(lambda: sharing.hub_client().shares()))

    @endpoint
    async def post(self):
        sharing.check_owner(self.current_user.username)
        guest = views.parse_share_body(self.json_body())
        done = await self.blocking(lambda: sharing.hub_client().share(guest))
        log.info("xnat-hpc: server shared with %s", guest)
        self.reply(done, status=201)


class ShareHandler(XnatHpcHandler):
    @endpoint
    async def delete(self, user):
        sharing.check_owner(self.current_user.username)
        await self.blocking(lambda: sharing.hub_client().unshare(user))
        log.info("xnat-hpc: share of %s ended", user)
        self.reply(None, status=204)


class UnknownRouteHandler(XnatHpcHandler):
    """Anything else under ``xnat-hpc/api/``: a JSON 404 instead of an HTML page."""

    async def _unknown(self, path):
        raise NotFound(f"no endpoint xnat-hpc/api/{path[:100]}; see openapi.yaml", item=path[:100])

    get = post = put = patch = delete = endpoint(_unknown)


#: OpenAPI path template (relative to ``xnat-hpc/api/``) → handler; the one route table
ROUTES: list[tuple[str, type[XnatHpcHandler]]] = [
    ("scope", ScopeHandler),
    ("projects", ProjectsHandler),
    ("projects/{project}/subjects", SubjectsHandler),
    ("projects/{project}/experiments", ExperimentsHandler),
    ("projects/{project}/experiments/{experiment}/scans", ScansHandler),
    ("projects/{project}/experiments/{experiment}/resources", ResourcesHandler),
    ("projects/{project}/experiments/{experiment}/files", FilesHandler),
    ("datasets", DatasetsHandler),
    ("datasets/{name}", DatasetHandler),
    ("limits", LimitsHandler),
    ("scripts", ScriptsHandler),
    ("jobs", JobsHandler),
    ("jobs/{job_id}", JobHandler),
    ("jobs/{job_id}/logs", JobLogsHandler),
    ("jobs/{job_id}/cancel", JobCancelHandler),
    ("jobs/{job_id}/results", JobResultsHandler),
    ("jobs/{job_id}/publish", JobPublishHandler),
    ("shares", SharesHandler),
    ("shares/{user}", ShareHandler),
]

_HTTP_METHODS = ("get", "post", "put", "patch", "delete")


def handler_methods(handler: type[XnatHpcHandler]) -> list[str]:
    """The HTTP methods a handler class implements (lower case)."""
    return [m for m in _HTTP_METHODS if getattr(handler, m) is not getattr(web.RequestHandler, m)]


def route_pattern(template: str) -> str:
    """``projects/{project}/subjects`` → ``xnat-hpc/api/projects/(?P<project>[^/]+)/subjects``."""
    return API_PREFIX + "/" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", template)


def url_handlers() -> list[tuple[str, type[XnatHpcHandler]]]:
    """(URL pattern without base_url, handler) for the ExtensionApp."""
    return [(route_pattern(t) + "/?", h) for t, h in ROUTES] + [
        (API_PREFIX + "/(?P<path>.*)", UnknownRouteHandler)]


def route_table() -> dict[str, list[str]]:
    """``{"/scope": ["get"], ...}`` — what the OpenAPI file must describe."""
    return {"/" + t: handler_methods(h) for t, h in ROUTES}


