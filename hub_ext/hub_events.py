"""The hub's own audit events (logins, spawns) → the governance service, through a durable outbox.

The governance service (:mod:`xnat_hpc_governance`) is the one writer of the audit trail when it
runs: the researchers' servers' events reach it through the hub's relay, the owners' acts are its
own, and the hub's own events come here:

* :meth:`HubEventLog.record` (the authenticator's logins, the spawners' starts and refusals)
  appends the event to the hub's outbox — the same :class:`xnat_bridge.audit_outbox.Outbox` a
  researcher's server keeps, here ``audit-outbox-hub.jsonl`` in ``hub-outbox/`` beside the audit
  store (a directory of the hub's account only), ``fsync``'d before it returns — and wakes the
  sender. A login or a start never waits on the store's write lock or on the service.
* :class:`SocketSender` (one thread per hub process) sends the outbox in order, in batches, to
  the service's ``/xnat-hpc-hub-events`` over its Unix socket (``c.XnatGovernance.service_socket``,
  :mod:`hub_ext.governance_socket`: only a socket of the hub's own account), with the service's
  own token (``c.XnatGovernance.token_file``) in the ``Authorization`` header. The service
  appends each batch once (the outbox's boot id and sequence numbers are the stream,
  :mod:`hub_ext.audit_store`) and acknowledges; while the service is away the events wait and
  the sender retries with backoff (the server's sender's rules: nothing is dropped).
* Events an earlier run of the hub could not deliver stay in the outbox and go with the hub's
  next event (a login, a start), in order, once each.

A hub without the governance service registered (no ``c.XnatGovernance.token_file``) appends its
own events to the store itself (:class:`~hub_ext.audit_log.HubAuditLog`), as before.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import socket
import threading

from traitlets.config import LoggingConfigurable

from xnat_bridge import audit
from xnat_bridge.audit_outbox import Outbox, Sender
from xnat_bridge.errors import XnatHpcError

from . import governance_socket
from .audit_log import HubAuditLog
from .hub_rest import XnatGovernance, read_token

log = logging.getLogger(__name__)

#: the outbox's name (:func:`xnat_bridge.audit_outbox.outbox_name`) and its directory beside the store
OUTBOX_SERVER = "hub"
OUTBOX_DIR = "hub-outbox"
#: the service's route for them on its socket (outside its prefix: never passed on by the hub's relay)
ROUTE = "/xnat-hpc-hub-events"

_SENDERS: dict[str, SocketSender] = {}
_SENDERS_LOCK = threading.Lock()


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the service's Unix socket (checked to be the hub's own account's first)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("xnat-hpc-governance", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        governance_socket.check_socket(self._path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class SocketSender(Sender):
    """The outbox's sender, over the service's Unix socket instead of the hub's HTTP API."""

    def __init__(self, outbox: Outbox, socket_path: str, path: str, token: str, *, timeout: float = 10.0):
        super().__init__(outbox, "http://xnat-hpc-governance", token, timeout=timeout)
        self.socket_path, self.url = socket_path, path

    def post(self, body: dict) -> tuple[int, str | None, str]:
        conn = _UnixConnection(self.socket_path, self.timeout)
        try:
            conn.request("POST", self.url, body=json.dumps(body).encode(),
                         headers={"Authorization": f"token {self._token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            return resp.status, resp.getheader("Retry-After"), resp.read().decode("utf-8", "replace")
        except (OSError, XnatHpcError) as exc:
            raise RuntimeError(f"the governance service is not answering on {self.socket_path}: {exc}") from None
        finally:
            conn.close()


def outbox_of(config) -> Outbox:
    """The hub's outbox, beside the audit store of *config* (``c.HubAuditLog.path``)."""
    return Outbox(os.path.join(os.path.dirname(HubAuditLog(config=config).abspath), OUTBOX_DIR), OUTBOX_SERVER)


def sender_of(config) -> SocketSender | None:
    """This process's sender of *config*'s outbox, started (once); None without the governance
    service (``c.XnatGovernance.token_file`` unset)."""
    governance = XnatGovernance(config=config)
    if not governance.token_file:
        return None
    outbox = outbox_of(config)
    key = str(outbox.path)
    with _SENDERS_LOCK:
        sender = _SENDERS.get(key)
        if sender is None:
            token = read_token(governance.token_file)
            sender = _SENDERS[key] = SocketSender(outbox, governance.service_socket, ROUTE, token,
                                                  timeout=governance.timeout)
        sender.start()
    return sender


def stop_senders(flush_timeout: float = 2.0) -> None:
    """Stop this process's senders after one last attempt each (a hub shutting down, tests)."""
    with _SENDERS_LOCK:
        senders = list(_SENDERS.values())
        _SENDERS.clear()
    for sender in senders:
        sender.stop(flush_timeout)


class HubEventLog(LoggingConfigurable):
    """What the hub's authenticator and spawners record their events with (module docstring):
    :meth:`record` has :meth:`HubAuditLog.record`'s signature."""

    async def record(self, user: str, action: str, outcome: str, *, items=(), detail: str = "",
                     files: int = 0, bytes: int = 0, hashes: dict | None = None, source: str = "hub",
                     server: str = "", extra: dict | None = None) -> int:
        """Keep one event of the hub's for the governance service (durable when this returns);
        its sequence number in the outbox (without the service: its record number)."""
        sender = await asyncio.to_thread(sender_of, self.config)
        if sender is None:
            return await HubAuditLog(config=self.config, log=self.log).record(
                user, action, outcome, items=items, detail=detail, files=files, bytes=bytes, hashes=hashes,
                source=source, server=server, extra=extra)
        event = audit.make_event(user, action, outcome, items=items, files=files, bytes=bytes, hashes=hashes,
                                 detail=detail, server=server, extra=extra).to_dict()
        seq = await asyncio.to_thread(sender.outbox.append, event)
        sender.wake.set()
        return seq
