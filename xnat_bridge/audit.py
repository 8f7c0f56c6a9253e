"""Audit events: one structured record per data-access decision.

An event says who did what to which XNAT items, with what outcome::

    {"time": "2026-11-23T10:00:00.123Z", "user": "alice", "action": "download",
     "outcome": "allowed", "items": ["NEURO_MRI/XNAT_E00001/scans/1"], "files": 3,
     "bytes": 123456, "hashes": {"manifest": "sha256:..."}, "detail": "...", "server": "..."}

Sinks are pluggable (the ``audit_sink`` of the server extension, or the
``sink=`` of :func:`xnat_bridge.connect`): :class:`JsonLinesSink` (default,
``~/xnat-hpc/audit.jsonl``, mode 0600, one ``O_APPEND`` write per event so
concurrent writers never interleave) and :class:`MemorySink` (tests,
notebooks). Events never contain a secret: there is no field for one, and
:func:`make_event` refuses detail keys that look like credentials.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ACTIONS = ("login", "spawn", "browse", "dataset_create", "dataset_resolve", "download",
           "open", "stage", "submit", "key_release", "result_retrieve", "cancel",
           "permission_denied", "grant", "revoke", "server_stopped",
           "review_policy", "review_hold", "review_approve", "review_reject", "review_delete",
           "job_state", "ledger_enter", "publish", "share", "unshare", "staging_cleanup")
OUTCOMES = ("allowed", "denied", "failed")
_SECRET_WORDS = ("password", "secret", "token", "identity", "key")


@dataclasses.dataclass(frozen=True)
class AuditEvent:
    user: str
    action: str
    outcome: str
    items: tuple[str, ...] = ()
    files: int = 0
    bytes: int = 0
    hashes: dict = dataclasses.field(default_factory=dict)
    detail: str = ""
    time: str = ""
    server: str = ""
    extra: dict = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["items"] = list(self.items)
        if not d["extra"]:
            del d["extra"]  # events without structured fields keep the version-1 shape (and chain)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


#: the largest ``extra`` (canonical JSON, characters) an event may carry
MAX_EXTRA = 2000


def _check_keys(doc, where: str) -> None:
    if isinstance(doc, dict):
        for k, v in doc.items():
            if any(w in str(k).lower() for w in _SECRET_WORDS):
                raise ValueError(f"audit {where} must not carry secrets ({k!r})")
            _check_keys(v, where)
    elif isinstance(doc, (list, tuple)):
        for v in doc:
            _check_keys(v, where)


def make_event(user: str, action: str, outcome: str = "allowed", *, items=(), files: int = 0,
               bytes: int = 0, hashes: dict | None = None, detail: str = "", server: str | None = None,
               extra: dict | None = None) -> AuditEvent:
    """One event. *extra* holds structured fields for the owners' page (``job``,
    ``slurm_job_id``, ``resources``, ``state``, ``dataset`` …): JSON values, no key that looks
    like a secret, at most :data:`MAX_EXTRA` characters. *server* defaults to this server's
    name (``JUPYTERHUB_SERVER_NAME``) or the host name."""
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    _check_keys(dict(hashes or {}), "hashes")
    extra = dict(extra or {})
    _check_keys(extra, "extra fields")
    if len(json.dumps(extra, sort_keys=True, separators=(",", ":"), default=str)) > MAX_EXTRA:
        raise ValueError(f"audit extra fields are longer than {MAX_EXTRA} characters")
    extra = json.loads(json.dumps(extra, default=str))
    if server is None:
        server = os.environ.get("JUPYTERHUB_SERVER_NAME") or socket.gethostname()
    return AuditEvent(user, action, outcome, tuple(str(i) for i in items), int(files), int(bytes),
                      dict(hashes or {}), detail[:500], _now(), server, extra)


class AuditSink:
    """Where events go. Subclasses implement :meth:`emit`; it must not raise."""

    def emit(self, event: AuditEvent) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class MemorySink(AuditSink):
    def __init__(self):
        self.events: list[AuditEvent] = []
        self._lock = threading.Lock()

    def emit(self, event: AuditEvent) -> None:
        with self._lock:
            self.events.append(event)


GENESIS = "0" * 64


def chain_hash(prev: str, body: str) -> str:
    """The hash of one line: sha256 of the previous line's hash and this event's canonical JSON."""
    return hashlib.sha256((prev + body).encode()).hexdigest()


def _last_hash(fd: int) -> str:
    size = os.fstat(fd).st_size
    if size == 0:
        return GENESIS
    start = max(0, size - 65536)
    tail = os.pread(fd, size - start, start).rstrip(b"\n").rsplit(b"\n", 1)[-1]
    try:
        return str(json.loads(tail)["hash"])
    except (ValueError, KeyError, TypeError):
        return chain_hash(GENESIS, tail.decode("utf-8", "replace"))  # a foreign last line: chain onto it


class JsonLinesSink(AuditSink):
    """Append events to a JSON-lines file (created 0600), **hash-chained**.

    Every line carries ``prev`` (the hash of the line before; 64 zeros for the
    first) and ``hash`` = sha256(prev + the event's canonical JSON), so a line
    changed, removed or inserted later breaks the chain at that point
    (:func:`verify_chain`, ``xnat-hpc-hub audit verify FILE``). Writers in
    several processes (the server, kernels) take an ``flock`` for each append.
    """

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or Path.home() / "xnat-hpc" / "audit.jsonl")

    def emit(self, event: AuditEvent) -> None:
        body = event.to_json()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                prev = _last_hash(fd)
                line = body[:-1] + f',"prev":"{prev}","hash":"{chain_hash(prev, body)}"}}\n'
                os.write(fd, line.encode())
            finally:
                os.close(fd)  # releases the lock
        except OSError as e:  # auditing must not take the server down; say so loudly
            log.error("could not write audit event %s for %s: %s", event.action, event.user, e)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


def verify_chain(path: str | Path) -> tuple[int, str | None]:
    """(number of lines, None) when the chain holds, else (line number, what is wrong)."""
    prev = GENESIS
    count = 0
    with open(path, encoding="utf-8") as f:
        for count, line in enumerate(f, 1):
            try:
                doc = json.loads(line)
                stated_prev, stated = doc.pop("prev"), doc.pop("hash")
            except (ValueError, KeyError, AttributeError):
                return count, f"line {count} is not a chained audit event"
            body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
            if stated_prev != prev:
                return count, f"line {count} does not follow line {count - 1} (a line was removed or inserted)"
            if chain_hash(prev, body) != stated:
                return count, f"line {count} was changed after it was written"
            prev = stated
    return count, None
