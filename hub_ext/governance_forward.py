"""The hub's addresses for what servers tell governance, passed on to the governance service.

A researcher's server knows one address, the hub's API (``JUPYTERHUB_API_URL``: reachable from
every backend, a Slurm node or a pod included), and posts its audit events and jobs there::

    POST  /hub/api/xnat-hpc/audit
    POST|PATCH|GET  /hub/api/xnat-hpc/jobs/{job}
    POST|PATCH  /hub/api/xnat-hpc/jobs/{job}/publish
    GET|POST  /hub/api/xnat-hpc/shares, GET|DELETE /hub/api/xnat-hpc/shares/{guest}
    GET   /hub/api/xnat-hpc/review/policy
    POST|GET  /hub/api/xnat-hpc/review/jobs/{job}

The hub takes none of them itself: it passes each call as it came (method, path, query, body,
the ``Authorization`` header and ``Content-Type``; never a cookie) to the governance service's
process through its Unix socket (``c.XnatGovernance.service_socket``,
:mod:`hub_ext.governance_socket`: only the hub's account reaches or takes it) under the service's
prefix (``/services/xnat-hpc-governance/api/…``), which identifies the caller with the hub and decides
(:mod:`xnat_hpc_governance.server_api`), and hands its answer back (status, body,
``Content-Type``, ``Retry-After``, ``Cache-Control``). The hub does not look at the token: it is
neither checked nor counted as activity here.

The service not answering (it is restarting: the hub restarts a managed service that exits) is
a 503 with ``Retry-After``, which a server's outbox takes as "later" and keeps its events
(:mod:`xnat_bridge.audit_outbox`): nothing is lost while the service is away.
"""

from __future__ import annotations

import json
import logging

from tornado import web
from tornado.httpclient import HTTPClientError

from . import governance_socket
from .hub_rest import HOW_TO_CONFIGURE, SERVICE_NAME, XnatGovernance

log = logging.getLogger(__name__)

#: the calls passed on, relative to the hub's prefix
ROUTE = (r"/api/xnat-hpc/(audit|jobs/j[0-9a-f]{12}(?:/publish)?|review/policy|review/jobs/j[0-9a-f]{12}"
         r"|shares(?:/[^/]+)?)")
#: what of a call is passed on
CALL_HEADERS = ("Authorization", "Content-Type")
#: what of the answer is handed back
ANSWER_HEADERS = ("Content-Type", "Retry-After", "Cache-Control")
#: seconds a server waits before trying again while the service is away
RETRY_AFTER = 5


def service_prefix(hub_base_url: str) -> str:
    """The service's prefix as JupyterHub gives it (pure): ``{base_url}services/{name}/``."""
    return (hub_base_url or "/").rstrip("/") + f"/services/{SERVICE_NAME}/"


class GovernanceForwardHandler(web.RequestHandler):
    """Passes a server's call to governance on to the service (module docstring)."""

    def check_xsrf_cookie(self):  # token calls; no cookie is passed on
        return

    async def get(self, path: str):
        await self.forward(path)

    async def post(self, path: str):
        await self.forward(path)

    async def patch(self, path: str):
        await self.forward(path)

    async def delete(self, path: str):
        await self.forward(path)

    def target(self, path: str) -> str:
        """The service's address of *path* (the host name is not used: the socket is)."""
        query = f"?{self.request.query}" if self.request.query else ""
        return "http://xnat-hpc-governance" + service_prefix(self.settings.get("base_url", "/")) + f"api/{path}{query}"

    async def forward(self, path: str) -> None:
        settings = XnatGovernance(config=self.settings.get("config"))
        sock = settings.service_socket
        headers = {k: self.request.headers[k] for k in CALL_HEADERS if k in self.request.headers}
        body = self.request.body if self.request.method in ("POST", "PATCH") else None
        resp, problem = None, ""
        try:
            governance_socket.check_socket(sock)
            http = governance_socket.client(sock)
            try:
                resp = await http.fetch(self.target(path), method=self.request.method, headers=headers, body=body,
                                        raise_error=False, follow_redirects=False,
                                        request_timeout=settings.timeout, allow_nonstandard_methods=True)
            finally:
                http.close()
            problem = str(resp.error) if resp.code == 599 else ""
        except governance_socket.GovernanceUnavailable as exc:
            problem = exc.message
        except (OSError, HTTPClientError) as exc:
            problem = str(exc)
        if resp is None or problem:
            if not settings.token_file:  # never registered: say what to add, not "try again"
                log.error("the servers' calls to governance cannot be taken: the governance service is not "
                          "configured. Add %s", HOW_TO_CONFIGURE)
                message = (f"the hub's governance service ({SERVICE_NAME}) is not configured on this hub; "
                           "its administrators must add it (docs/admin.md, \"The governance service\")")
            else:
                log.warning("governance service did not answer (%s): %s %s answered 503", problem,
                            self.request.method, self.request.path)
                message = (f"the hub's governance service ({SERVICE_NAME}) is not answering; try again in "
                           f"{RETRY_AFTER} s (the hub restarts it; a server's outbox keeps its events meanwhile)")
            self.set_status(503)
            self.set_header("Retry-After", str(RETRY_AFTER))
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps({"status": 503, "message": message}))
            return
        self.set_status(resp.code, resp.reason)
        for key in ANSWER_HEADERS:
            if key in resp.headers:
                self.set_header(key, resp.headers[key])
        self.finish(resp.body or None)  # no body at all for a 204


class MovedToGovernance(web.RequestHandler):
    """The owners' pages' old addresses on the hub: a redirect (302, the query kept) to the same
    page on the governance service (:mod:`xnat_hpc_governance.owner_pages`), which logs owners in
    through the hub's OAuth. A bookmark or a script (``?format=json`` with ``Authorization:
    token``; ``curl -L`` keeps the header on the same host) keeps working."""

    def initialize(self, page: str) -> None:
        self.page = page

    def get(self):
        query = f"?{self.request.query}" if self.request.query else ""
        self.redirect(service_prefix(self.settings.get("base_url", "/")) + self.page + query)


#: the owners' pages' old addresses (relative to the hub's prefix) → the service's pages
MOVED_PAGES = {r"/xnat-hpc/owner": "owner", r"/xnat-hpc/owner/access": "owner/access",
               r"/xnat-hpc/review": "review"}


def forward_handlers() -> list[tuple]:
    """The relay of the servers' calls, and the owners' pages' old addresses."""
    return [(ROUTE, GovernanceForwardHandler),
            *((route, MovedToGovernance, {"page": page}) for route, page in MOVED_PAGES.items())]
