"""``POST /hub/api/xnat-hpc/audit``: researchers' servers hand their audit events to governance.

The hub passes the call on to the governance service's process
(:mod:`hub_ext.governance_forward`), which takes it (:mod:`xnat_hpc_governance.server_api`)
with what this module decides: who sent it, what of it is a claim, and the limits.

Authenticated with the server's **own** hub token (``JUPYTERHUB_API_TOKEN``, in the
``Authorization: token …`` header): the hub accepts it only when it is the token it
issued to one of that user's active servers (:func:`server_for_token`) — a user's
personal API token, a browser cookie or another user's server are refused (403) — and
when the token holds ``custom:xnat-hpc:audit`` for that server
(:func:`hub_ext.server_scopes.check_server_token`; a server started before the hub granted
that scope: ``users:activity`` for its user, as it was issued). The hub stamps identity
itself: ``user`` and ``server`` from the token, ``source`` = ``server``, ``time`` = the
hub's clock; identity fields in the body are never believed: an event claiming another
user is recorded as the token's user, with the claim kept as ``extra.claimed_user`` (and a
warning in the hub's log).

**What a server reports is its claim.** The researcher's own code runs in the server, so
the hub attributes an event to a project only when the project is in the scope the hub
decided at the server's start (:func:`xnat_bridge.spawn_record.record_of`): items of any
other project move from ``items`` to ``extra.claimed_items`` with ``extra.out_of_scope =
true`` (:func:`apply_scope`), so that no query by project — the owner page — shows them to
that project's owner. That holds for denials too (a ``permission_denied`` event naming a
project outside the scope is recorded, as the server's claim, not as an event of that
project), and for the actions only the hub records (:data:`HUB_ONLY_ACTIONS`: logins,
spawns, grants, revocations, review decisions), whose items are always claims when a
server sends them. A server started before the hub kept scope records has an empty scope
(every item a claim; one warning per server in the hub's log). Everything else a server
sends (Slurm ids, hashes, states) is recorded with ``source = "server"`` and shown on the
owner page as *reported by the server*.

**Limits per server** (:class:`AuditIngest`, ``c.AuditIngest.*``): a batch larger than
``max_batch_bytes`` (default 256 KiB) or with more events than a minute allows is refused
with 413 naming the limit; each ``(user, server)`` has a token bucket of events and one of
bytes per minute — over either, the answer is 429 with ``Retry-After`` (whole seconds) and
nothing of the batch is appended. The server's outbox keeps the events and sends them
again later, in order (:mod:`xnat_bridge.audit_outbox`).

Body (JSON, at most ``c.AuditIngest.max_batch_bytes``, at most :data:`MAX_EVENTS` events)::

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

import dataclasses
import json
import math
import time

from collections.abc import Callable

from traitlets import Any, Integer, TraitError, validate
from traitlets.config import LoggingConfigurable

from xnat_bridge import audit
from xnat_bridge.errors import InvalidRequest, XnatHpcError
from xnat_bridge.spawn_record import SpawnRecord, server_of_token

from hub_ext.audit_store import project_of
from hub_ext.errors import RateLimited
from hub_ext.hub_rest import HubUser

ROUTE = r"/api/xnat-hpc/audit"
MAX_EVENTS = 500
MAX_ITEMS = 1000
#: the default of ``c.AuditIngest.max_batch_bytes`` (and what :func:`parse_batch` takes alone)
MAX_BATCH_BYTES = 256 * 1024
#: where the hub keeps its one :class:`AuditIngest` (Tornado settings)
SETTINGS_KEY = "xnat_hpc_audit_ingest"
#: actions only the hub itself records: from a server, every item of theirs is a claim
HUB_ONLY_ACTIONS = frozenset({"login", "spawn", "grant", "revoke", "server_stopped",
                              "review_policy", "review_approve", "review_reject", "ledger_enter",
                              "publish", "share", "unshare"})
#: fields of ``extra`` that only the hub writes (a server's own are dropped, with a warning)
RESERVED_EXTRA = ("claimed_user", "claimed_items", "out_of_scope")


class BatchTooLarge(InvalidRequest):
    """A batch over the hub's size limits: send fewer events at a time (413)."""

    status = 413
    reason = "batch_too_large"


def server_for_token(user: HubUser, token: str) -> str | None:
    """The name of *user*'s active server whose own hub token *token* is, or None.

    Decided by the digest of the token JupyterHub issued for the server's start, kept in the
    hub's :class:`~xnat_bridge.spawn_record.SpawnRecord` (the server's state, read through the
    hub's REST API, so also after a hub restart); a personal token of the same user never
    matches, whatever its note or scopes. A server whose record keeps no digest (started
    before the hub kept one) matches nothing: it must be restarted to post."""
    records = {}
    for name, server in user.servers.items():
        if not server.active:
            continue
        try:
            records[name] = SpawnRecord.from_state(server.state)
        except XnatHpcError:
            records[name] = None
    return server_of_token(records, token)


def parse_batch(body: bytes, user: str, server: str, *, max_bytes: int = MAX_BATCH_BYTES,
                ) -> tuple[str, list[dict], list[str]]:
    """(boot id, records stamped for *user*/*server*, warnings) from a request body (pure)."""
    if len(body) > max_bytes:
        raise BatchTooLarge(f"audit batch of {len(body)} bytes is larger than the hub's limit of {max_bytes} "
                            "bytes (c.AuditIngest.max_batch_bytes); send fewer events at a time")
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
        reserved = sorted(k for k in RESERVED_EXTRA if k in extra)
        if reserved:
            extra = {k: v for k, v in extra.items() if k not in RESERVED_EXTRA}
            warnings.append(f"event {seq} set {', '.join(reserved)} in extra (only the hub does); dropped")
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


def apply_scope(records: list[dict], scope: frozenset[str]) -> tuple[list[dict], int]:
    """*records* with every item outside *scope* (project ids the hub decided at the server's
    start) moved to ``extra.claimed_items`` (and ``extra.out_of_scope = true``); for
    :data:`HUB_ONLY_ACTIONS` every item. The records and how many of them changed (pure)."""
    out, changed = [], 0
    for rec in records:
        items = list(rec.get("items") or ())
        hub_only = rec.get("action") in HUB_ONLY_ACTIONS
        inside = [] if hub_only else [i for i in items if project_of(i) in scope]
        if len(inside) == len(items):
            out.append(rec)
            continue
        claimed = [i for i in items if hub_only or project_of(i) not in scope]
        extra = {**(rec.get("extra") or {}), "claimed_items": claimed, "out_of_scope": True}
        out.append({**rec, "items": inside, "extra": extra})
        changed += 1
    return out, changed


# -- per-server limits ---------------------------------------------------------------------------
@dataclasses.dataclass
class TokenBucket:
    """*capacity* tokens, refilled at *rate* per second (pure: the caller gives the time)."""

    capacity: float
    rate: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.stamp) * self.rate)
        self.stamp = now

    def wait_for(self, n: float, now: float) -> float:
        """Seconds until *n* tokens are there (0: now); takes nothing."""
        self.refill(now)
        return 0.0 if n <= self.tokens else (n - self.tokens) / self.rate

    def take(self, n: float) -> None:
        self.tokens -= n


class AuditIngest(LoggingConfigurable):
    """What the hub takes from each server's audit sender: sizes, rates, and the scope that
    decides which of its items are facts (one per hub, in the Tornado settings under
    :data:`SETTINGS_KEY`; see the module docstring)."""

    max_events_per_minute = Integer(
        1200,
        help="""The most audit events one server (each named server of a user on its own) may
        post per minute: a token bucket that holds a minute's worth (so a burst of this many
        is taken at once) and refills evenly over the minute. A batch over it is refused with
        HTTP 429 and a Retry-After header (whole seconds); nothing of it is appended, and the
        server's outbox sends it again after that time, in order. Also caps one batch (with
        the API's own 500). Example: 600 (10 events a second, bursts of 600).""",
    ).tag(config=True)

    max_bytes_per_minute = Integer(
        4 * 1024 * 1024,
        help="""The most bytes of request bodies one server may post per minute (a token bucket
        like c.AuditIngest.max_events_per_minute); over it, HTTP 429 with Retry-After. Also caps
        one batch. Example: 8388608 (8 MiB a minute).""",
    ).tag(config=True)

    max_batch_bytes = Integer(
        MAX_BATCH_BYTES,
        help="""The largest request body (bytes) the audit ingestion API reads: a larger batch is
        refused with HTTP 413 naming this limit, and the server's sender splits it. Keep it
        above the largest single event a server may send (an event names at most 1000 XNAT
        items). Example: 131072 (128 KiB). Default 262144 (256 KiB).""",
    ).tag(config=True)

    clock = Any(
        time.monotonic,
        help="The clock of the buckets (seconds, monotonic); tests give their own.",
    )

    @validate("max_events_per_minute", "max_bytes_per_minute", "max_batch_bytes")
    def _positive(self, proposal):
        if proposal.value < 1:
            raise TraitError(f"c.AuditIngest.{proposal.trait.name} must be at least 1, not {proposal.value}")
        return proposal.value

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._buckets: dict[tuple[str, str], tuple[TokenBucket, TokenBucket]] = {}
        self._unscoped: set[tuple[str, str]] = set()

    # -- the scope --------------------------------------------------------------------------
    def scope_of(self, user: str, server: str, read_record: Callable[[], SpawnRecord | None]) -> frozenset[str]:
        """The projects the hub decided at the start of *user*'s server *server* (*read_record*
        reads its record); empty (every item a claim) when it has no usable record — said once
        per server."""
        try:
            record = read_record()
            problem = "" if record is not None else "it was started before the hub kept scope records"
        except XnatHpcError as exc:
            record, problem = None, exc.message
        if record is not None:
            return record.projects
        if (user, server) not in self._unscoped:
            self._unscoped.add((user, server))
            self.log.warning("audit from %s/%s: no scope record (%s); every XNAT item it reports is kept "
                             "as its claim until it restarts", user, server, problem)
        return frozenset()

    # -- sizes and rates ----------------------------------------------------------------------
    @property
    def batch_events(self) -> int:
        return min(MAX_EVENTS, self.max_events_per_minute)

    @property
    def batch_bytes(self) -> int:
        return min(self.max_batch_bytes, self.max_bytes_per_minute)

    def admit(self, user: str, server: str, events: int, nbytes: int) -> None:
        """Take *events* and *nbytes* from the buckets of ``(user, server)``, or take nothing
        and raise :class:`RateLimited` saying when to come back."""
        now = self.clock()
        key = (user, server)
        if key not in self._buckets:
            self._prune(now)
            self._buckets[key] = (
                TokenBucket(self.max_events_per_minute, self.max_events_per_minute / 60.0,
                            self.max_events_per_minute, now),
                TokenBucket(self.max_bytes_per_minute, self.max_bytes_per_minute / 60.0,
                            self.max_bytes_per_minute, now))
        ev_bucket, byte_bucket = self._buckets[key]
        wait = max(ev_bucket.wait_for(events, now), byte_bucket.wait_for(nbytes, now))
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise RateLimited(
                f"audit events from {user}/{server} over the hub's limit of {self.max_events_per_minute} "
                f"events and {self.max_bytes_per_minute} bytes a minute per server "
                "(c.AuditIngest.max_events_per_minute, max_bytes_per_minute); nothing of this batch was "
                f"appended, send it again in {retry} s", retry_after=retry)
        ev_bucket.take(events)
        byte_bucket.take(nbytes)

    def _prune(self, now: float) -> None:
        """Forget buckets that have filled up again (they would start full anyway)."""
        if len(self._buckets) < 1024:
            return
        for key, (ev_bucket, byte_bucket) in list(self._buckets.items()):
            if now - max(ev_bucket.stamp, byte_bucket.stamp) >= 60.0:
                del self._buckets[key]

    def check(self, body: bytes, user: str, server: str, scope: frozenset[str],
              ) -> tuple[list[dict], list[str]]:
        """The records to append for a request *body* of *user*'s server *server*, and warnings
        for the hub's log: size (:class:`BatchTooLarge`, 413), validity
        (:class:`InvalidRequest`, 400), rate (:class:`RateLimited`, 429; nothing taken when
        any of these refuses), then out-of-scope items made claims (:func:`apply_scope`)."""
        _boot, records, warnings = parse_batch(body, user, server, max_bytes=self.batch_bytes)
        if len(records) > self.batch_events:
            raise BatchTooLarge(f"a batch of {len(records)} events is more than the hub takes from one server "
                                f"in a minute (c.AuditIngest.max_events_per_minute = "
                                f"{self.max_events_per_minute}); send at most {self.batch_events} at a time")
        self.admit(user, server, len(records), len(body))
        records, claims = apply_scope(records, scope)
        if claims:
            warnings.append(f"{claims} event(s) named XNAT items outside the server's scope "
                            f"({', '.join(sorted(scope)) or 'none recorded'}); kept as extra.claimed_items")
        return records, warnings


def ensure_ingest(tornado_settings: dict, log=None) -> AuditIngest:
    """The service's one :class:`AuditIngest`, made from the hub's configuration on first use and
    kept in the Tornado settings (not a module global)."""
    ingest = tornado_settings.get(SETTINGS_KEY)
    if ingest is None:
        kwargs = {"log": log} if log is not None else {}
        ingest = tornado_settings[SETTINGS_KEY] = AuditIngest(config=tornado_settings.get("config"), **kwargs)
    return ingest
