"""Results review for sensitive projects: the owners' page and the servers' API.

Routes (relative to the hub prefix, installed by :func:`hub_ext.handlers.xnat_hpc_handlers`)::

    GET  /xnat-hpc/review                      the owner's page (logged-in users, no JavaScript)
    POST /xnat-hpc/review/projects             mark / unmark a project (form: project, review=on|off)
    POST /xnat-hpc/review/jobs/{user}/{job}    decide (form: decision=approve|reject, reason)
    POST /api/xnat-hpc/jobs/{job}              a server enters a job it submits in the ledger; the
                                               answer names the projects needing review and the
                                               job's own review recipient
    PATCH /api/xnat-hpc/jobs/{job}             the server reports the Slurm id, state, manifest digest
    GET  /api/xnat-hpc/review/policy           gone (410): replaced by the ledger entry
    POST /api/xnat-hpc/review/jobs/{job}       a server registers its held job (ledger jobs only)
    GET  /api/xnat-hpc/review/jobs/{job}       its state; once approved, ``?share=1``: the hub's key share

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
import base64
import json
import re

from jupyterhub.apihandlers import APIHandler
from jupyterhub.handlers import BaseHandler
from tornado import web

from xnat_bridge.errors import Gone, InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from xnat_bridge.spawn_record import record_of

from .audit_api import server_for_token
from .audit_log import HubAuditLog
from .errors import map_errors
from .pages import ensure_pages
from .review_page import render_page
from .review_store import ReviewStore, decidable
from .server_scopes import JOBS, check_server_token
from .visitor import visitor_permissions

PAGE_ROUTE = r"/xnat-hpc/review"
PROJECT_ROUTE = r"/xnat-hpc/review/projects"
DECIDE_ROUTE = r"/xnat-hpc/review/jobs/([^/]{1,200})/(j[0-9a-f]{12})"
POLICY_ROUTE = r"/api/xnat-hpc/review/policy"
JOB_ROUTE = r"/api/xnat-hpc/review/jobs/(j[0-9a-f]{12})"
LEDGER_ROUTE = r"/api/xnat-hpc/jobs/(j[0-9a-f]{12})"
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


class _ServerAPI(APIHandler):
    #: token in the Authorization header only: JupyterHub would otherwise fall back to the
    #: login cookie when the header's token is unknown (and these handlers skip the XSRF check)
    _accept_cookie_auth = False

    def user_from_token(self) -> str:
        """The job's user, from a hub token in the Authorization header (never a cookie) that
        may report activity for them (``users:activity!user=NAME``): what every server's own
        ``JUPYTERHUB_API_TOKEN`` holds (JupyterHub adds it to each), and a token limited to
        anything less does not. Enough to read the user's own rows and review states; what a
        server does (:meth:`server_from_token`) needs its own token and custom scope too."""
        user = self.current_user
        orm_token = self.get_token()  # the header's token as the hub knows it, or None
        if orm_token is None or orm_token.user is None or user is None \
                or getattr(user, "kind", "user") != "user" or orm_token.user.name != user.name \
                or not self.has_scope(f"users:activity!user={user.name}"):
            raise PermissionDenied("the review API takes a server's hub token (its JUPYTERHUB_API_TOKEN, "
                                   "as Authorization: token ...; scope users:activity for its user)")
        return user.name

    def server_from_token(self, what: str = "enter jobs in the hub's ledger or hold their results",
                          ) -> tuple[str, str, frozenset[str]]:
        """``(user, server, projects)`` of the running server whose own hub token this request
        carries, with the server's scope **as the hub decided it at its start** (the spawner's
        :class:`~xnat_bridge.spawn_record.SpawnRecord`), when the token holds
        ``custom:xnat-hpc:jobs`` for that server (:func:`~hub_ext.server_scopes.check_server_token`;
        a server started before the hub granted it: ``users:activity`` for its user). A personal
        token, a cookie or another user's server token is refused: only a server does *what*."""
        name = self.user_from_token()
        token = self.get_auth_token()
        server = server_for_token(self.current_user, token)
        if server is None:
            raise PermissionDenied(f"only a running server's own hub token (JUPYTERHUB_API_TOKEN) may {what}")
        spawner = self.current_user.spawners[server]
        check_server_token(self.has_scope, JOBS, name, server, spawner, what)
        record = record_of(spawner)
        return name, server, record.projects if record is not None else frozenset()

    def check_xsrf_cookie(self):  # token-authenticated only (user_from_token): no cookie involved
        return

    def body_json(self) -> dict:
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError:
            raise InvalidRequest("expected a JSON body") from None

    def reply(self, data: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(data))


class ReviewPolicyAPIHandler(_ServerAPI):
    """Gone: a job learns whether it needs review, and its own review recipient, when the
    ledger enters it (``POST /api/xnat-hpc/jobs/{job}``)."""

    @map_errors
    async def get(self):
        self.user_from_token()
        raise Gone("the hub no longer answers a review policy for a list of projects: a server enters each "
                   "job in the hub's ledger (POST /hub/api/xnat-hpc/jobs/{job}) and gets the job's own review "
                   "recipient; restart your server to use this hub version")


class LedgerJobAPIHandler(_ServerAPI):
    """The job ledger, as the researchers' servers use it (see :mod:`hub_ext.review_store`)."""

    @map_errors
    async def post(self, job_id: str):
        user, server, projects = self.server_from_token()
        body = self.body_json()
        store = review_store(self.settings, self.log)
        try:
            job = await asyncio.to_thread(store.enter_job, user, server, job_id, projects, body)
        except XnatHpcError as e:
            await audit(self.settings, user, "ledger_enter", "denied", items=sorted(projects),
                        detail=f"job {job_id} from server {server or '(default)'}: {e.message}"[:500],
                        extra={"job": job_id, "server": server})
            raise
        await audit(self.settings, user, "ledger_enter", "allowed", items=job["projects"],
                    detail=(f"job {job_id} from server {server or '(default)'}; scope {', '.join(job['projects'])}"
                            + (f"; results held for review by {', '.join(job['review'])}" if job["review"] else "")),
                    hashes={k: job[f"{k}_sha256"] for k in ("manifest", "script") if job[f"{k}_sha256"]},
                    extra={"job": job_id, "server": server, "review": job["review"]})
        self.reply(job, status=201)

    @map_errors
    async def patch(self, job_id: str):
        user, server, projects = self.server_from_token()
        body = self.body_json()
        store = review_store(self.settings, self.log)
        try:
            job = await asyncio.to_thread(store.update_job, user, job_id, body)
        except XnatHpcError as e:  # another user's job, a Slurm id replaced, an ended job changed
            await audit(self.settings, user, "job_state", "denied", items=sorted(projects),
                        detail=f"job {job_id} from server {server or '(default)'}: {e.message}"[:500],
                        extra={"job": job_id, "server": server})
            raise
        await audit(self.settings, user, "job_state", "allowed", items=job["projects"],
                    detail=f"job {job_id} reported by server {server or '(default)'}: "
                           + ", ".join(f"{k} {v}" for k, v in sorted(body.items()) if k != "message")[:400],
                    extra={"job": job_id, "server": server, "state": job["state"],
                           "slurm_job_id": job["slurm_job_id"]})
        self.reply(job)

    @map_errors
    async def get(self, job_id: str):
        user = self.user_from_token()
        store = review_store(self.settings, self.log)
        self.reply(await asyncio.to_thread(store.ledger_job, user, job_id))


class ReviewJobAPIHandler(_ServerAPI):
    @map_errors
    async def post(self, job_id: str):
        user, server, projects = self.server_from_token()
        body = self.body_json()
        store = review_store(self.settings, self.log)
        try:
            job = await asyncio.to_thread(store.register, user, job_id, body)
        except XnatHpcError as e:  # unknown job, a share or preview sealed to another key, too many held
            await audit(self.settings, user, "review_hold", "denied", items=sorted(projects),
                        detail=f"job {job_id} from server {server or '(default)'}: {e.message}"[:500],
                        extra={"job": job_id, "server": server})
            raise
        await audit(self.settings, user, "review_hold", "allowed", items=job["projects"],
                    detail=f"job {job_id}: {len(job['results'])} result file(s) held for review",
                    extra={"job": job_id, "slurm_job_id": job["slurm_job_id"],
                           "manifest_sha256": job["manifest_sha256"], "script_sha256": job["script_sha256"]})
        self.reply(_public(job), status=201)

    @map_errors
    async def get(self, job_id: str):
        user = self.user_from_token()
        store = review_store(self.settings, self.log)
        job = await asyncio.to_thread(store.job, user, job_id)
        out = _public(job)
        if job["state"] == "approved" and self.get_argument("share", "") == "1":
            # the hub's key share goes only to a running server of the job's user, as its writes do
            self.server_from_token("fetch the hub's key share of an approved job")
            share = await asyncio.to_thread(store.release_share, user, job_id)
            out["share"] = base64.b64encode(share).decode("ascii")
            await audit(self.settings, user, "key_release", "allowed", items=job["projects"],
                        detail=f"job {job_id}: the hub's share of the approved results key",
                        extra={"job": job_id, "slurm_job_id": job["slurm_job_id"]})
        self.reply(out)


def _public(job: dict) -> dict:
    return {k: job[k] for k in ("job", "projects", "state", "reason", "by", "since", "decided", "pending")}


def review_handlers() -> list[tuple[str, type]]:
    return [(PAGE_ROUTE, ReviewPageHandler), (PROJECT_ROUTE, ReviewProjectHandler),
            (DECIDE_ROUTE, ReviewDecisionHandler), (POLICY_ROUTE, ReviewPolicyAPIHandler),
            (JOB_ROUTE, ReviewJobAPIHandler), (LEDGER_ROUTE, LedgerJobAPIHandler)]
