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
import json
import logging
import os
import socket
import threading
from pathlib import Path

log = logging.getLogger(__name__)

ACTIONS = ("login", "spawn", "browse", "dataset_create", "dataset_resolve", "download",
           "open", "stage", "submit", "key_release", "result_retrieve", "cancel",
           "permission_denied")
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

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["items"] = list(self.items)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def make_event(user: str, action: str, outcome: str = "allowed", *, items=(), files: int = 0,
               bytes: int = 0, hashes: dict | None = None, detail: str = "") -> AuditEvent:
    if action not in ACTIONS:
        raise ValueError(f"unknown audit action {action!r}")
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown audit outcome {outcome!r}")
    for k in (hashes or {}):
        if any(w in k.lower() for w in _SECRET_WORDS):
            raise ValueError(f"audit hashes must not carry secrets ({k!r})")
    return AuditEvent(user, action, outcome, tuple(str(i) for i in items), int(files), int(bytes),
                      dict(hashes or {}), detail[:500], _now(),
                      os.environ.get("JUPYTERHUB_SERVER_NAME") or socket.gethostname())


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


class JsonLinesSink(AuditSink):
    """Append events to a JSON-lines file (created 0600)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path or Path.home() / "xnat-hpc" / "audit.jsonl")

    def emit(self, event: AuditEvent) -> None:
        line = (event.to_json() + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
        except OSError as e:  # auditing must not take the server down; say so loudly
            log.error("could not write audit event %s for %s: %s", event.action, event.user, e)

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
