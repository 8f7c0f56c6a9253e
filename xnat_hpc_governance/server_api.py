"""What the researchers' servers tell governance, taken in the governance service's process.

Routes (under the service's prefix, ``/services/xnat-hpc-governance/``; the hub passes its
own addresses ``/hub/api/xnat-hpc/…`` on to them, :mod:`hub_ext.governance_forward`, so a
server knows only the hub's API)::

    POST  api/audit                 a server's audit events (xnat_hpc_governance.audit_api decides what of
                                    them is a claim, and the limits)
    POST  api/jobs/{job}            a server enters a job it submits in the ledger; the answer
                                    names the projects needing review and the job's own review
                                    recipient
    PATCH api/jobs/{job}            the server reports the Slurm id, state, manifest digest
    GET   api/jobs/{job}            the job's ledger row, to a token of its user
    GET   api/review/policy         gone (410): replaced by the ledger entry
    POST  api/review/jobs/{job}     a server registers its held job (ledger jobs only)
    GET   api/review/jobs/{job}     its state; once approved, ``?share=1``: the hub's key share
    POST  api/jobs/{job}/publish    the hub signs the RO-Crate of a finished job's results for XNAT
                                    (hub_ext.publication decides what it signs)
    PATCH api/jobs/{job}/publish    the server reports its upload to XNAT (published, failed)
    GET   api/shares                the users the calling server is shared with
    POST  api/shares                share it with a user (``{"user": …}``) who reads, in XNAT, every
                                    project of its scope (JupyterHub's own share, made by this service)
    GET   api/shares/{guest}        may *guest* use the calling server now (asked by the server when
                                    the guest opens it; a share that no longer holds is ended)
    DELETE api/shares/{guest}       end *guest*'s share

**Who is calling** is asked of the hub, never taken from the call: the token in the
``Authorization`` header (never a cookie, never the URL) is identified by the hub's REST API
(``GET /hub/api/user``, :class:`jupyterhub.services.auth.HubAuth`, at every call), with the
scopes the hub gave it; the server it belongs to is the active server of that user whose
:class:`~xnat_bridge.spawn_record.SpawnRecord` keeps its digest (the servers' state, read through
the REST API as the service: ``admin:server_state``; found once per token), and the call needs the custom scope of
:mod:`hub_ext.server_scopes` for that server. The scope of a server — which projects its jobs
and events are about — is the record's, as the hub decided it at the start.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging

from tornado import web

from hub_ext.audit_log import HubAuditLog
from hub_ext.errors import map_errors
from hub_ext.hub_rest import HubRestClient
from hub_ext.review_store import ReviewStore
from hub_ext.server_scopes import AUDIT, JOBS, check_server_token
from xnat_bridge.errors import Conflict, Gone, InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from xnat_bridge.spawn_record import SpawnRecord, token_sha256

from .audit_api import ensure_ingest, server_for_token

log = logging.getLogger(__name__)

#: the routes, relative to the service's prefix
AUDIT_PATH = r"api/audit"
POLICY_PATH = r"api/review/policy"
REVIEW_JOB_PATH = r"api/review/jobs/(j[0-9a-f]{12})"
LEDGER_PATH = r"api/jobs/(j[0-9a-f]{12})"
PUBLISH_PATH = r"api/jobs/(j[0-9a-f]{12})/publish"
SHARES_PATH = r"api/shares"
SHARE_PATH = r"api/shares/([^/]+)"
#: the trail's actions of a job whose record ids the crate names
JOB_ACTIONS = ("ledger_enter", "job_state", "review_hold", "review_approve", "key_release")

#: tokens whose server is kept at most (all are forgotten beyond: each is found again)
MAX_BINDINGS = 10000

#: what a call without a usable token is told
TOKEN_NEEDED = ("send the server's own hub token (its JUPYTERHUB_API_TOKEN) as Authorization: token …; "
                "a cookie or a token in the address is not taken")


def _check_scopes(required: set[str], held: set[str]) -> set[str]:
    from jupyterhub.services.auth import check_scopes

    return check_scopes(required, held)


class ServerAPIHandler(web.RequestHandler):
    """A call of a researcher's server, identified by the hub (module docstring). Settings:
    ``config`` (the hub's), ``hub`` (:class:`~hub_ext.hub_rest.HubRestClient` as the service),
    ``hub_auth`` (a :class:`~jupyterhub.services.auth.HubAuth`), ``audit_log``, ``review_store``."""

    def check_xsrf_cookie(self):  # a token in the header only: no cookie is ever read
        return

    @property
    def log(self) -> logging.Logger:
        return log

    @property
    def hub(self) -> HubRestClient:
        return self.settings["hub"]

    @property
    def audit_log(self) -> HubAuditLog:
        return self.settings["audit_log"]

    @property
    def store(self) -> ReviewStore:
        return self.settings["review_store"]

    def token(self) -> str:
        match = self.settings["hub_auth"].auth_header_pat.match(self.request.headers.get("Authorization", ""))
        if not match:
            raise PermissionDenied(TOKEN_NEEDED)
        return match.group(1).strip()

    async def caller(self) -> dict:
        """The hub's model of the header token's owner (``name``, ``kind``, ``scopes``), asked of
        the hub at every call (never from a cache: a token the hub deleted — its server stopped —
        is refused at once)."""
        if getattr(self, "_caller", None) is None:
            model = await self.settings["hub_auth"].user_for_token(self.token(), use_cache=False, sync=False)
            if not model:
                raise PermissionDenied("the hub does not know this token (expired, or its server stopped); "
                                       + TOKEN_NEEDED)
            self._caller = model
        return self._caller

    def has_scope(self, scope: str) -> bool:
        return bool(_check_scopes({scope}, set(self._caller.get("scopes") or ())))

    async def user_from_token(self) -> str:
        """The calling user, from a hub token that may report activity for them
        (``users:activity!user=NAME``, which JupyterHub gives every server's own token): enough to
        read the user's own rows; what a server does needs :meth:`server_from_token`."""
        model = await self.caller()
        name = str(model.get("name") or "")
        if model.get("kind", "user") != "user" or not name or not self.has_scope(f"users:activity!user={name}"):
            raise PermissionDenied("governance takes a server's hub token (its JUPYTERHUB_API_TOKEN, as "
                                   "Authorization: token ...; scope users:activity for its user)")
        return name

    async def server_from_token(self, scope: str, what: str) -> tuple[str, str, frozenset[str]]:
        """``(user, server, projects)`` of the running server whose own hub token this call
        carries, with the server's scope **as the hub decided it at its start**, when the token
        holds *scope* for that server (:func:`~hub_ext.server_scopes.check_server_token`). A
        personal token, a cookie or another server's token is refused: only a server does *what*.

        Which server a token belongs to is found once per token (the digest in the server's
        record, read through the hub's REST API) and kept: JupyterHub issues a new token at
        every start and deletes it at the stop, and a start's record never changes, so while
        the hub still knows the token (asked at every call, :meth:`caller`) the binding holds."""
        name = await self.user_from_token()
        token = self.token()
        bindings: dict = self.settings.setdefault("bindings", {})
        key = token_sha256(token)
        bound = bindings.get(key)
        if bound is None or bound[0] != name:
            user = await self.hub.user(name, auth_state=False)
            server = server_for_token(user, token) if user is not None else None
            if server is None:
                raise PermissionDenied(f"only a running server's own hub token (JUPYTERHUB_API_TOKEN) may {what} "
                                       "(a server whose start the hub recorded without its token's digest, before "
                                       "this hub version: restart it)")
            if len(bindings) >= MAX_BINDINGS:
                bindings.clear()
            bound = bindings[key] = (name, server, dict(user.servers[server].state))
        _, server, state = bound

        def read_record() -> SpawnRecord | None:
            return SpawnRecord.from_state(state)

        check_server_token(self.has_scope, scope, name, server, read_record, what)
        record = read_record()
        return name, server, record.projects if record is not None else frozenset()

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

    def write_error(self, status_code: int, **kwargs) -> None:
        """``{"status": …, "message": …}``, as JupyterHub's API answers, with the error's
        headers (``Retry-After``)."""
        exc = kwargs.get("exc_info", (None, None, None))[1]
        message = getattr(exc, "log_message", None) or self._reason
        for key, value in (getattr(exc, "headers", None) or {}).items():
            self.set_header(key, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"status": status_code, "message": message}))

    async def record(self, user: str, action: str, outcome: str, **kw) -> None:
        await self.audit_log.record(user, action, outcome, **kw)


class AuditIngestHandler(ServerAPIHandler):
    """Events from a user's server, stamped with the identity its token proves
    (:mod:`xnat_hpc_governance.audit_api`)."""

    @map_errors
    async def post(self):
        user, server, scope = await self.server_from_token(AUDIT, "send audit events")
        ingest = ensure_ingest(self.settings, log)
        records, warnings = ingest.check(self.request.body, user, server, scope)
        for w in warnings:
            log.warning("audit from %s/%s: %s", user, server, w)
        seqs = await self.audit_log.ingest(records)  # a gap in the stream: OutOfOrder (409), nothing appended
        appended = sum(1 for s in seqs if s)
        self.reply({"acked": records[-1]["stream_seq"], "appended": appended, "duplicates": len(seqs) - appended})


class ReviewPolicyAPIHandler(ServerAPIHandler):
    """Gone: a job learns whether it needs review, and its own review recipient, when the
    ledger enters it (``POST /api/xnat-hpc/jobs/{job}``)."""

    @map_errors
    async def get(self):
        await self.user_from_token()
        raise Gone("the hub no longer answers a review policy for a list of projects: a server enters each "
                   "job in the hub's ledger (POST /hub/api/xnat-hpc/jobs/{job}) and gets the job's own review "
                   "recipient; restart your server to use this hub version")


class LedgerJobAPIHandler(ServerAPIHandler):
    """The job ledger, as the researchers' servers use it (see :mod:`hub_ext.review_store`)."""

    what = "enter jobs in the hub's ledger or hold their results"

    @map_errors
    async def post(self, job_id: str):
        user, server, projects = await self.server_from_token(JOBS, self.what)
        body = self.body_json()
        try:
            job = await asyncio.to_thread(self.store.enter_job, user, server, job_id, projects, body)
        except XnatHpcError as e:
            await self.record(user, "ledger_enter", "denied", items=sorted(projects),
                              detail=f"job {job_id} from server {server or '(default)'}: {e.message}"[:500],
                              extra={"job": job_id, "server": server})
            raise
        await self.record(user, "ledger_enter", "allowed", items=job["projects"],
                          detail=(f"job {job_id} from server {server or '(default)'}; scope "
                                  f"{', '.join(job['projects'])}"
                                  + (f"; results held for review by {', '.join(job['review'])}"
                                     if job["review"] else "")),
                          hashes={k: job[f"{k}_sha256"] for k in ("manifest", "script") if job[f"{k}_sha256"]},
                          extra={"job": job_id, "server": server, "review": job["review"]})
        self.reply(job, status=201)

    @map_errors
    async def patch(self, job_id: str):
        user, server, projects = await self.server_from_token(JOBS, self.what)
        body = self.body_json()
        try:
            job = await asyncio.to_thread(self.store.update_job, user, job_id, body)
        except XnatHpcError as e:  # another user's job, a Slurm id replaced, an ended job changed
            await self.record(user, "job_state", "denied", items=sorted(projects),
                              detail=f"job {job_id} from server {server or '(default)'}: {e.message}"[:500],
                              extra={"job": job_id, "server": server})
            raise
        await self.record(user, "job_state", "allowed", items=job["projects"],
                          detail=f"job {job_id} reported by server {server or '(default)'}: "
                                 + ", ".join(f"{k} {v}" for k, v in sorted(body.items()) if k != "message")[:400],
                          extra={"job": job_id, "server": server, "state": job["state"],
                                 "slurm_job_id": job["slurm_job_id"]})
        self.reply(job)

    @map_errors
    async def get(self, job_id: str):
        user = await self.user_from_token()
        self.reply(await asyncio.to_thread(self.store.ledger_job, user, job_id))


class ReviewJobAPIHandler(ServerAPIHandler):
    @map_errors
    async def post(self, job_id: str):
        user, server, projects = await self.server_from_token(JOBS, LedgerJobAPIHandler.what)
        body = self.body_json()
        try:
            job = await asyncio.to_thread(self.store.register, user, job_id, body)
        except XnatHpcError as e:  # unknown job, a share or preview sealed to another key, too many held
            await self.record(user, "review_hold", "denied", items=sorted(projects),
                              detail=f"job {job_id} from server {server or '(default)'}: {e.message}"[:500],
                              extra={"job": job_id, "server": server})
            raise
        await self.record(user, "review_hold", "allowed", items=job["projects"],
                          detail=f"job {job_id}: {len(job['results'])} result file(s) held for review",
                          extra={"job": job_id, "slurm_job_id": job["slurm_job_id"],
                                 "manifest_sha256": job["manifest_sha256"], "script_sha256": job["script_sha256"]})
        self.reply(public_job(job), status=201)

    @map_errors
    async def get(self, job_id: str):
        user = await self.user_from_token()
        job = await asyncio.to_thread(self.store.job, user, job_id)
        out = public_job(job)
        if job["state"] == "approved" and self.get_argument("share", "") == "1":
            # the hub's key share goes only to a running server of the job's user, as its writes do
            await self.server_from_token(JOBS, "fetch the hub's key share of an approved job")
            share = await asyncio.to_thread(self.store.release_share, user, job_id)
            out["share"] = base64.b64encode(share).decode("ascii")
            await self.record(user, "key_release", "allowed", items=job["projects"],
                              detail=f"job {job_id}: the hub's share of the approved results key",
                              extra={"job": job_id, "slurm_job_id": job["slurm_job_id"]})
        self.reply(out)


class PublishAPIHandler(ServerAPIHandler):
    """The hub's signature of a job's results for XNAT (:mod:`hub_ext.publication`)."""

    what = "publish a job's results"

    async def _job_records(self, user: str, job_id: str) -> list[int]:
        def query() -> list[int]:
            events = self.audit_log.query(user=user, actions=list(JOB_ACTIONS), limit=1000)
            return sorted(int(e["seq"]) for e in events
                          if (e.get("extra") or {}).get("job") == job_id and "seq" in e)

        return await asyncio.to_thread(query)

    @map_errors
    async def post(self, job_id: str):
        from hub_ext.publication import check_publishable, check_request, run_record
        from xnat_bridge.offload.publish import resource_path
        from xnat_bridge.results_crate import crate_metadata, dumps

        user, server, projects = await self.server_from_token(JOBS, self.what)
        req = check_request(self.body_json())
        target = req.target
        resource = resource_path(target, job_id)
        xnat_url = str(self.settings.get("xnat_url") or "").rstrip("/")
        facts = {"job": job_id, "server": server, "resource": resource}
        try:
            if target.project not in projects:
                raise PermissionDenied(f"your server {server or '(default)'} was started on "
                                       f"{', '.join(sorted(projects)) or 'no project'}: it cannot publish to "
                                       f"project {target.project}", item=target.project)
            ledger = await asyncio.to_thread(self.store.ledger_job, user, job_id)
            held = await asyncio.to_thread(self.store.job, user, job_id) if ledger["review"] else None
            check_publishable(ledger, held, req)
            earlier = await asyncio.to_thread(self.store.publication, user, job_id)
            files = [[f.path, f.size, f.sha256] for f in req.files]
            if earlier is not None and earlier["state"] != "failed":
                if (earlier["resource"], earlier["files"]) != (resource, files):
                    raise Conflict(f"job {job_id} was published to {earlier['resource']} with other files; a "
                                   "job's results are published once", item=job_id)
                self.reply(self._answer(earlier))  # the same request again (a retry): the same signature
                return
        except XnatHpcError as e:
            await self.record(user, "publish", "denied", items=[target.project],
                              detail=f"job {job_id} to {resource}: {e.message}"[:500], extra=facts)
            raise
        ids = await self._job_records(user, job_id)
        seq = await self.audit_log.record(
            user, "publish", "allowed", items=[target.project], files=len(req.files),
            bytes=sum(f.size for f in req.files),
            hashes={"manifest": ledger["manifest_sha256"], "script": ledger["script_sha256"]},
            detail=f"job {job_id}: {len(req.files)} result file(s) signed for {resource}",
            extra={**facts, "url": xnat_url + resource, "state": "signed"})
        record = run_record(ledger, held, req, xnat_url=xnat_url, audit_ids=[*ids, seq])
        crate = dumps(crate_metadata(record, req.files))
        signature = await asyncio.to_thread(self.settings["results_signer"].sign, crate)
        pub = await asyncio.to_thread(self.store.add_publication, user, job_id, resource=resource,
                                      url=xnat_url + resource, files=files, crate=crate.decode(),
                                      signature=signature)
        self.reply(self._answer(pub), status=201)

    def _answer(self, pub: dict) -> dict:
        return {"resource": pub["resource"], "url": pub["url"], "crate": pub["crate"],
                "signature": pub["signature"], "state": pub["state"],
                "allowed_signers": self.settings["results_signer"].allowed_signers()}

    @map_errors
    async def patch(self, job_id: str):
        user, server, projects = await self.server_from_token(JOBS, self.what)
        body = self.body_json()
        state, message = body.get("state"), str(body.get("message") or "")[:500]
        pub = await asyncio.to_thread(self.store.set_publication_state, user, job_id, state, message)
        project = pub["resource"].split("/")[3]
        await self.record(user, "publish", "allowed" if state == "published" else "failed", items=[project],
                          files=len(pub["files"]), bytes=sum(int(f[1]) for f in pub["files"]),
                          detail=(f"job {job_id}: published to XNAT as {pub['resource']}" if state == "published"
                                  else f"job {job_id}: the upload to {pub['resource']} failed: {message}")[:500],
                          extra={"job": job_id, "server": server, "resource": pub["resource"], "url": pub["url"],
                                 "state": state})
        self.reply(self._answer(pub))


class SharesAPIHandler(ServerAPIHandler):
    """A researcher's server shared with members of its projects (:mod:`hub_ext.sharing`)."""

    what = "share its server"

    @property
    def watch(self):
        return self.settings["watch"]

    async def guest_check(self, guest: str, projects: frozenset[str]) -> list[str]:
        """The projects of *projects* XNAT does not let *guest* read now (none: they may)."""
        from hub_ext.sharing import unreadable

        user = await self.hub.user(guest)
        if user is None:
            raise NotFound(f"the hub has no user {guest}: they must have logged in once", item=guest)
        readable = await asyncio.wait_for(self.watch.permissions(user), self.watch.question_timeout)
        return unreadable(projects, readable, guest)

    @map_errors
    async def get(self):
        user, server, _ = await self.server_from_token(JOBS, self.what)
        shares = await self.hub.shares(user, server)
        self.reply({"server": server, "shares": [{"user": s.guest, "created": s.created} for s in shares]})

    @map_errors
    async def post(self):
        from hub_ext.sharing import check_guest

        user, server, projects = await self.server_from_token(JOBS, self.what)
        guest = check_guest(self.body_json(), user)
        facts = {"server": server, "guest": guest}
        try:
            if not projects:
                raise PermissionDenied(f"your server {server or '(default)'} has no data scope the hub decided: "
                                       "restart it to share it")
            missing = await self.guest_check(guest, projects)
            if missing:
                raise PermissionDenied(f"{guest} may not read {', '.join(missing)} in XNAT: a server is shared only "
                                       f"with users who read every project of its scope ({', '.join(sorted(projects))})",
                                       item=guest)
            share = await self.hub.share(user, server, guest)
        except XnatHpcError as e:
            await self.record(user, "share", "denied", items=sorted(projects),
                              detail=f"server {server or '(default)'} with {guest}: {e.message}"[:500], extra=facts)
            raise
        await self.record(user, "share", "allowed", items=sorted(projects),
                          detail=f"server {server or '(default)'} shared with {guest}, who reads every project of "
                                 "its scope in XNAT", extra=facts)
        self.reply({"server": server, "user": guest, "created": share.created,
                    "projects": sorted(projects)}, status=201)


class ShareAPIHandler(SharesAPIHandler):
    @map_errors
    async def get(self, guest: str):
        """The server asks when *guest* opens it: a share, and every project readable now."""
        user, server, projects = await self.server_from_token(JOBS, "check who opens it")
        if guest == user:
            self.reply({"user": guest, "allowed": True, "owner": True})
            return
        if guest not in {s.guest for s in await self.hub.shares(user, server)}:
            raise PermissionDenied(f"{user}'s server {server or '(default)'} is not shared with {guest}", item=guest)
        missing = await self.guest_check(guest, projects) if projects else ["(no scope)"]
        if missing:
            reason = f"{guest} may no longer read {', '.join(missing)} in XNAT"
            await self.hub.unshare(user, server, guest)
            await self.record(user, "unshare", "allowed", items=sorted(projects),
                              detail=f"server {server or '(default)'}: {guest}'s share ended when they opened it: "
                                     f"{reason}", extra={"server": server, "guest": guest, "by": "open check"})
            raise PermissionDenied(f"{reason}: the share of {user}'s server ended", item=guest)
        self.reply({"user": guest, "allowed": True, "owner": False, "projects": sorted(projects)})

    @map_errors
    async def delete(self, guest: str):
        user, server, projects = await self.server_from_token(JOBS, self.what)
        await self.hub.unshare(user, server, guest)
        await self.record(user, "unshare", "allowed", items=sorted(projects),
                          detail=f"server {server or '(default)'}: {guest}'s share ended by {user}",
                          extra={"server": server, "guest": guest, "by": user})
        self.set_status(204)
        self.finish()


def public_job(job: dict) -> dict:
    """What a server is told of a held job (pure)."""
    return {k: job[k] for k in ("job", "projects", "state", "reason", "by", "since", "decided", "pending")}


#: the hub's own events (:mod:`hub_ext.hub_events`): on the socket only, outside the service's
#: prefix, so the hub's relay (which passes on only ``{prefix}api/…`` routes) never reaches it
HUB_EVENTS_PATH = r"/xnat-hpc-hub-events"
#: what a batch of the hub's events may hold
MAX_HUB_BATCH = 1000
_EVENT_FIELDS = ("user", "action", "outcome", "items", "files", "bytes", "hashes", "detail", "server", "extra")


def hub_records(boot: str, events: list) -> list[dict]:
    """The trail's records of a batch of the hub's own events (pure): each as the hub recorded it
    (``source`` ``hub``, its clock as ``event_time``), in the stream ``hub:BOOT`` by its sequence
    number (a batch sent twice is appended once); :class:`InvalidRequest` naming the first event
    that is not one."""
    from xnat_bridge import audit

    if not isinstance(boot, str) or not boot or len(boot) > 64 or not isinstance(events, list) \
            or len(events) > MAX_HUB_BATCH:
        raise InvalidRequest(f"expected {{boot, events}} with at most {MAX_HUB_BATCH} events")
    records = []
    for n, ev in enumerate(events):
        try:
            made = audit.make_event(str(ev["user"]), ev["action"], ev["outcome"], items=ev.get("items") or (),
                                    files=ev.get("files", 0), bytes=ev.get("bytes", 0), hashes=ev.get("hashes"),
                                    detail=str(ev.get("detail") or ""), server=str(ev.get("server") or ""),
                                    extra=ev.get("extra")).to_dict()
            seq = int(ev["seq"])
            if seq < 1 or not isinstance(ev.get("time"), str):
                raise ValueError("seq or time")
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidRequest(f"event {n} of the batch is not one of the hub's events: {exc}") from None
        rec = {k: made.get(k) for k in _EVENT_FIELDS if made.get(k) is not None}
        records.append({**rec, "source": "hub", "event_time": ev["time"][:40], "stream": f"hub:{boot}",
                        "stream_seq": seq})
    return records


class HubEventsHandler(ServerAPIHandler):
    """``POST /xnat-hpc-hub-events``: a batch of the hub's own events (logins, spawns) from the hub's
    outbox (:mod:`hub_ext.hub_events`). Only on the service's Unix socket, which only the hub's
    account reaches (the hub's relay passes the servers' calls on, never this route), and only
    with the service's own token (which the hub holds in ``c.XnatGovernance.token_file``).
    Answers ``{"acked": N}``: the last sequence number the trail holds."""

    def check_xsrf_cookie(self):
        return

    @map_errors
    async def post(self):
        import hmac

        given = self.request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"token {self.settings['service_token']}".encode()):
            raise PermissionDenied("only the hub sends its own events, with the service's token")
        try:
            body = json.loads(self.request.body or b"null")
        except ValueError:
            raise InvalidRequest("expected JSON {boot, events}") from None
        if not isinstance(body, dict):
            raise InvalidRequest("expected JSON {boot, events}")
        records = hub_records(body.get("boot"), body.get("events"))
        if records:
            await self.settings["audit_log"].ingest(records)
        self.finish({"acked": max((r["stream_seq"] for r in records), default=0)})


def server_api_handlers(prefix: str) -> list[tuple[str, type]]:
    """The routes of the servers' calls under the service's *prefix* (``/services/NAME/``), and the
    hub's own events."""
    return [(prefix + AUDIT_PATH, AuditIngestHandler), (prefix + POLICY_PATH, ReviewPolicyAPIHandler),
            (prefix + REVIEW_JOB_PATH, ReviewJobAPIHandler), (prefix + LEDGER_PATH, LedgerJobAPIHandler),
            (prefix + PUBLISH_PATH, PublishAPIHandler), (prefix + SHARES_PATH, SharesAPIHandler),
            (prefix + SHARE_PATH, ShareAPIHandler),
            (HUB_EVENTS_PATH, HubEventsHandler)]
