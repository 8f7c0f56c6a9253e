"""Results review for sensitive projects: the owners' page.

Routes (relative to the hub prefix, installed by :func:`hub_ext.handlers.xnat_hpc_handlers`)::

    GET  /xnat-hpc/review                      the owner's page (logged-in users, no JavaScript)
    POST /xnat-hpc/review/projects             mark / unmark a project (form: project, review=on|off)
    POST /xnat-hpc/review/jobs/{user}/{job}    decide (form: decision=approve|reject, reason)

The servers' side of review (the job ledger, held results, the key share of approved results:
``/hub/api/xnat-hpc/jobs/{job}``, ``/hub/api/xnat-hpc/review/…``) is taken by the governance
service's process (:mod:`xnat_hpc_governance.server_api`); the hub passes it on
(:mod:`hub_ext.governance_forward`).

Who may do what is decided here and nowhere else: the page's forms are XSRF-checked
(JupyterHub's cookie check) and act only on projects the visitor **owns in XNAT
right now** (asked of XNAT with the visitor's own alias token; site admins are not
owners); the API answers a job only to a token of the job's own user; it enters, changes
and holds jobs and releases the share (only after approval) only for a running server's own
token holding ``custom:xnat-hpc:jobs`` for that server (:mod:`hub_ext.server_scopes`).
Every change and every refusal is audited on the hub's trail (``review_policy``,
``review_hold``, ``review_approve``, ``review_reject``, ``key_release``).
The store and the review key: :mod:`hub_ext.review_store`.
"""

from __future__ import annotations

import asyncio
import re

from jupyterhub.handlers import BaseHandler
from tornado import web

from xnat_bridge.errors import InvalidRequest, NotFound, PermissionDenied

from .audit_log import HubAuditLog
from .errors import map_errors
from .pages import ensure_pages
from .review_page import render_page
from .review_store import ReviewStore, decidable
from .visitor import visitor_permissions

PAGE_ROUTE = r"/xnat-hpc/review"
PROJECT_ROUTE = r"/xnat-hpc/review/projects"
DECIDE_ROUTE = r"/xnat-hpc/review/jobs/([^/]{1,200})/(j[0-9a-f]{12})"
_PROJECT_RE = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")


def review_store(settings: dict, log=None) -> ReviewStore:
    store = ReviewStore(config=settings.get("config"))
    if log is not None:
        store.log = log
    return store


async def audit(settings: dict, user: str, action: str, outcome: str, *, items=(), detail: str = "",
                hashes: dict | None = None, extra: dict | None = None) -> None:
    await HubAuditLog(config=settings.get("config")).record(user, action, outcome, items=items,
                                                            detail=detail, hashes=hashes, extra=extra)


class _OwnerMixin:
    async def owned_now(self) -> set[str]:
        """The projects the logged-in visitor owns in XNAT now (their own alias token): their
        Owners groups only, so a site admin reviews no project they do not own themselves."""
        perms = await visitor_permissions(self, "review your projects' results")
        return perms.owned()

    def page_url(self, notice: str = "") -> str:
        url = self.hub.base_url + PAGE_ROUTE.lstrip("/")
        return url + (f"?notice={notice}" if notice else "")


NOTICES = {"marked": "The project's results now need review.",
           "unmarked": "The project's results no longer need review.",
           "approve": "Approved.", "reject": "Rejected: the results were deleted."}


class ReviewPageHandler(_OwnerMixin, BaseHandler):
    @web.authenticated
    @map_errors
    async def get(self):
        owned = await self.owned_now()
        store = review_store(self.settings, self.log)

        def read():
            jobs = store.jobs_for(owned)
            previews = {(j["user"], j["job"]): store.previews(j["user"], j["job"])
                        for j in jobs if j["state"] == "held" and decidable(j["projects"], owned)}
            return store.marked(owned), jobs, previews

        marked, jobs, previews = await asyncio.to_thread(read)
        notice = NOTICES.get(self.get_argument("notice", ""), "")
        self.set_header("Cache-Control", "no-store")  # previews of held results: never cached
        self.finish(render_page(self.current_user.name, sorted(owned), marked, jobs, previews,
                                self.xsrf_token.decode("ascii"), notice,
                                pages=ensure_pages(self.settings, self.log)))


class ReviewProjectHandler(_OwnerMixin, BaseHandler):
    @web.authenticated
    @map_errors
    async def post(self):
        project, review = self.get_body_argument("project", ""), self.get_body_argument("review", "")
        if not _PROJECT_RE.match(project) or review not in ("on", "off"):
            raise InvalidRequest("expected project=<XNAT project id> and review=on|off")
        owned = await self.owned_now()
        name = self.current_user.name
        if project not in owned:
            await audit(self.settings, name, "review_policy", "denied", items=[project],
                        detail=f"not an owner of {project}: review setting unchanged")
            raise PermissionDenied(f"only an owner of {project} (in XNAT) changes its results review")
        store = review_store(self.settings, self.log)
        changed = await asyncio.to_thread(store.mark, project, name, review == "on")
        if changed:
            await audit(self.settings, name, "review_policy", "allowed", items=[project],
                        detail=f"results review {'required' if review == 'on' else 'no longer required'}",
                        extra={"review": review})
        self.redirect(self.page_url("marked" if review == "on" else "unmarked"))


class ReviewDecisionHandler(_OwnerMixin, BaseHandler):
    @web.authenticated
    @map_errors
    async def post(self, job_user: str, job_id: str):
        decision = self.get_body_argument("decision", "")
        reason = self.get_body_argument("reason", "")
        if decision not in ("approve", "reject"):
            raise InvalidRequest("decision must be approve or reject")
        action = f"review_{decision}"
        owned = await self.owned_now()
        name = self.current_user.name
        store = review_store(self.settings, self.log)
        job = await asyncio.to_thread(store.job, job_user, job_id)
        mine = decidable(job["projects"], owned)
        if not mine:
            await audit(self.settings, name, action, "denied", items=job["projects"],
                        detail=f"job {job_id} of {job_user}: not an owner of its projects",
                        extra={"job": job_id, "job_user": job_user})
            # the same answer as for a job that does not exist: a visitor who owns none of its
            # projects learns neither that it exists nor which projects it is about
            raise NotFound(f"no held results of job {job_id} of {job_user}", item=job_id)
        job = await asyncio.to_thread(store.record_decision, job_user, job_id, mine, name, decision, reason)
        await audit(self.settings, name, action, "allowed", items=mine,
                    detail=(f"job {job_id} of {job_user}: {decision}d for {', '.join(mine)}"
                            + (f": {reason.strip()[:300]}" if decision == "reject" else "")
                            + f"; job now {job['state']}"),
                    extra={"job": job_id, "job_user": job_user, "state": job["state"],
                           "manifest_sha256": job["manifest_sha256"], "script_sha256": job["script_sha256"]})
        self.redirect(self.page_url(decision))


def review_handlers() -> list[tuple[str, type]]:
    """The owners' review page and its forms (the servers' review API is the governance
    service's: :mod:`xnat_hpc_governance.server_api`, reached through
    :mod:`hub_ext.governance_forward`)."""
    return [(PAGE_ROUTE, ReviewPageHandler), (PROJECT_ROUTE, ReviewProjectHandler),
            (DECIDE_ROUTE, ReviewDecisionHandler)]
