"""``POST /hub/api/xnat-hpc/audit``: researchers' servers hand their audit events to the hub.

Authenticated with the server's **own** hub token (``JUPYTERHUB_API_TOKEN``, in the
``Authorization: token …`` header): the hub accepts it only when it is the token it
issued to one of that user's active servers (:func:`server_for_token`) — a user's
personal API token, a browser cookie or another user's server are refused (403). The
hub stamps identity itself: ``user`` and ``server`` from the token, ``source`` =
``server``, ``time`` = the hub's clock; identity fields in the body are never
believed: an event claiming another user is recorded as the token's user, with the
claim kept as ``extra.claimed_user`` (and a warning in the hub's log).

Body (JSON, at most :data:`MAX_BODY` bytes, at most :data:`MAX_EVENTS` events)::

    {"boot": "<the sender's outbox id>", "events": [{"seq": 1, "time": "...", "action": "stage",
      "outcome": "allowed", "items": [...], "files": 3, "bytes": 123, "hashes": {...},
      "detail": "...", "extra": {...}}, ...]}

``seq`` numbers of one boot id are consecutive: the hub appends those above the last one
it stored for ``(user, server, boot)`` and skips those at or below it (a redelivery),
so a retried batch is never appended twice. A batch that starts above the next
expected number (a gap) is refused with 409 naming the expected number: events are
appended in order or not at all. The answer: ``{"acked": LAST_SEQ, "appended": N,
"duplicates": M}``.
"""

from __future__ import annotations

import hmac
import json

from jupyterhub import orm
from jupyterhub.apihandlers import APIHandler
from tornado import web

from xnat_bridge import audit
from xnat_bridge.errors import InvalidRequest, PermissionDenied

from .audit_log import HubAuditLog
from .errors import map_errors
from .revocation_watch import ensure_watch

ROUTE = r"/api/xnat-hpc/audit"
MAX_BODY = 1024 * 1024
MAX_EVENTS = 500
MAX_ITEMS = 1000


def server_for_token(user, token: str, orm_token) -> str | None:
    """The name of *user*'s active server that *token* was issued to, or None."""
    for name, spawner in list(user.spawners.items()):
        if not spawner.active or spawner.server is None:
            continue
        issued = getattr(spawner, "api_token", "") or ""
        if issued and hmac.compare_digest(issued.encode(), token.encode()):
            return name
        # after a hub restart the spawner no longer holds the plaintext: the token's note
        # ("Server at <base_url>", set by JupyterHub when it issued it) names the server
        if not issued and orm_token is not None and orm_token.note == f"Server at {spawner.server.base_url}":
            return name
    return None


def parse_batch(body: bytes, user: str, server: str) -> tuple[str, list[dict], list[str]]:
    """(boot id, records stamped for *user*/*server*, warnings) from a request body (pure)."""
    if len(body) > MAX_BODY:
        raise InvalidRequest(f"audit batch larger than {MAX_BODY} bytes; send at most {MAX_EVENTS} events at a time")
    try:
        doc = json.loads(body or b"{}")
        boot, events = str(doc["boot"]), list(doc["events"])
    except (ValueError, KeyError, TypeError):
        raise InvalidRequest('expected JSON {"boot": ID, "events": [{"seq": N, "action": ..., ...}]}') from None
    if not boot or len(boot) > 64 or not boot.replace("-", "").isalnum():
        raise InvalidRequest("boot must be 1-64 letters, digits or '-'")
    if not events or len(events) > MAX_EVENTS:
        raise InvalidRequest(f"a batch holds 1 to {MAX_EVENTS} events")
    records, warnings, last = [], [], None
    for ev in events:
        if not isinstance(ev, dict):
            raise InvalidRequest("every event is a JSON object")
        try:
            seq = int(ev["seq"])
        except (KeyError, ValueError, TypeError):
            raise InvalidRequest("every event needs its sequence number (seq)") from None
        if seq < 1 or (last is not None and seq != last + 1):
            raise InvalidRequest(f"sequence numbers of a batch must be consecutive from 1 up (got {seq} after {last})")
        last = seq
        items = ev.get("items") or []
        if not isinstance(items, list) or len(items) > MAX_ITEMS:
            raise InvalidRequest(f"items must be a list of at most {MAX_ITEMS} XNAT items (event {seq})")
        extra = ev.get("extra") or {}
        if not isinstance(extra, dict):
            raise InvalidRequest(f"extra must be a JSON object (event {seq})")
        claimed = ev.get("user")
        if claimed not in (None, "", user):
            extra = {**extra, "claimed_user": str(claimed)[:100]}
            warnings.append(f"event {seq} claimed user {str(claimed)[:100]!r}; recorded as {user!r}")
        try:
            event = audit.make_event(user, str(ev.get("action")), str(ev.get("outcome", "allowed")),
                                     items=[str(i)[:500] for i in items], files=int(ev.get("files") or 0),
                                     bytes=int(ev.get("bytes") or 0), hashes=ev.get("hashes") or {},
                                     detail=str(ev.get("detail") or ""), server=server, extra=extra)
        except (ValueError, TypeError) as e:
            raise InvalidRequest(f"event {seq}: {e}") from None
        rec = event.to_dict()
        rec.pop("time")
        rec.update(source="server", event_time=str(ev.get("time") or "")[:40],
                   stream=f"{user}/{server}/{boot}", stream_seq=seq)
        records.append(rec)
    return boot, records, warnings


class AuditIngestHandler(APIHandler):
    """Events from a user's server, stamped with the identity its token proves."""

    @map_errors
    async def post(self):
        token = self.get_auth_token()
        user = self.current_user
        if not token or user is None or getattr(user, "kind", "user") != "user":
            raise web.HTTPError(403, "send audit events with the server's own JUPYTERHUB_API_TOKEN")
        ensure_watch(self.settings)  # running servers post here: the re-check runs after a restart
        server = server_for_token(user, token, orm.APIToken.find(self.db, token))
        if server is None:
            raise PermissionDenied("only a running server's own hub token (JUPYTERHUB_API_TOKEN) may "
                                   "send audit events")
        _boot, records, warnings = parse_batch(self.request.body, user.name, server)
        for w in warnings:
            self.log.warning("audit from %s/%s: %s", user.name, server, w)
        audit_log = HubAuditLog(config=self.settings.get("config"), log=self.log)
        seqs = await audit_log.ingest(records)  # a gap in the stream: OutOfOrder (409), nothing appended
        appended = sum(1 for s in seqs if s)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"acked": records[-1]["stream_seq"], "appended": appended,
                                "duplicates": len(seqs) - appended}))
