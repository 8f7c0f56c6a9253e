"""The hub's audit log: one file, configured once (``c.HubAuditLog.path``).

The spawners append an event for every start, allowed or denied, with its
scope; the owners' page (:mod:`hub_ext.owner`) reads them back and checks the
hash chain. Both build a :class:`HubAuditLog` from the hub's configuration
(the spawner from ``self.config``, the page from the Tornado settings' ``config``),
so they always agree on the file. The file format is
:class:`xnat_bridge.audit.JsonLinesSink`'s: JSON lines, created 0600, appended
under an ``flock``, hash-chained.

Async contract: :meth:`HubAuditLog.record` is awaited on the hub's event loop and
does its file work (lock, read the last hash, append) in a thread;
:meth:`HubAuditLog.snapshot` is blocking and meant for a thread.
"""

from __future__ import annotations

import asyncio
import os

from traitlets import Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge import audit


class HubAuditLog(LoggingConfigurable):
    """The hub's hash-chained JSON-lines audit log."""

    path = Unicode(
        "xnat-hpc-audit.jsonl",
        help="""JSON-lines file of the hub's audit events: every spawn with its scope, allowed
        or denied, hash-chained (``xnat-hpc-hub audit verify FILE``). Created 0600 and only
        appended to; the project owners' page (/hub/xnat-hpc/owner) reads it. A relative path
        is relative to the hub's working directory, e.g. ``/var/log/xnat-hpc-hub/audit.jsonl``.
        Keep it where only the hub's account can write.""",
    ).tag(config=True)

    @property
    def abspath(self) -> str:
        return os.path.abspath(self.path)

    def sink(self) -> audit.JsonLinesSink:
        return audit.JsonLinesSink(self.abspath)

    async def record(self, user: str, action: str, outcome: str, *, items=(), detail: str = "") -> None:
        """Append one event for *user*; the file work runs in a thread, off the event loop."""
        event = audit.make_event(user, action, outcome, items=items, detail=detail)
        await asyncio.to_thread(self.sink().emit, event)

    def snapshot(self) -> tuple[list[dict], str]:
        """All events and a sentence about the hash chain (blocking: run it in a thread)."""
        path = self.abspath
        if not os.path.exists(path):
            return [], "no events yet"
        events = self.sink().read()
        count, problem = audit.verify_chain(path)
        return events, problem or f"hash chain intact ({count} events)"
