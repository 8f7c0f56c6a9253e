"""Deliver a server's audit events to the hub: a durable outbox and one sender.

The hub's trail is the authoritative one (``POST {JUPYTERHUB_API_URL}/xnat-hpc/audit``,
:mod:`xnat_hpc_governance.audit_api`); the researcher's own ``audit.jsonl`` is their copy.

* :class:`Outbox` — ``<workspace>/audit-outbox.jsonl`` (``audit-outbox-<server>.jsonl`` for a
  named server: each server of a user has its own, since the hub attributes what a
  sender delivers to the sender's server) (0600): a header line
  ``{"boot": ID, "first": N}`` then one event per line with its sequence number
  ``seq`` (consecutive), appended under an ``flock`` and ``fsync``'d before
  :meth:`Outbox.append` returns, by any process of the user (the server, kernels).
  ``audit-outbox.ack`` (atomically replaced) holds the last sequence number the hub
  acknowledged. Only acknowledged events are ever removed (:meth:`Outbox.compact`
  rewrites the file without them, atomically, under the lock); a line cut short by a
  crash is skipped. The boot id names the outbox file's life: the hub dedups by
  ``(user, server, boot, seq)``, so a batch sent twice is appended once.
* :class:`Sender` — a thread of the server process: sends the pending events in
  order, in batches, with the server's own hub token in the ``Authorization``
  header (never in the URL); while the hub is down it retries with exponential
  backoff (1 s … :attr:`Sender.max_backoff`); it acknowledges locally only what the
  hub acknowledged. An event the hub rejects as invalid (HTTP 400) alone in its
  batch is logged and dropped from the outbox (it stays in the local log) so that
  it cannot block the ones behind it. Batches stay under :attr:`Sender.max_batch_bytes`;
  a batch the hub finds too large (413) is sent again in halves (an event too large
  alone is dropped like an invalid one). When the hub says the server sent too much
  (429, ``Retry-After``), nothing was appended: the sender waits that long — new events
  do not wake it early — and sends the same events again, in order; nothing is dropped.
  Any other refusal (403, 409, 5xx) is retried with the backoff.
* :class:`HubSink` — the audit sink: appends to the outbox and wakes the sender.
"""

from __future__ import annotations

import email.utils
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path

from .audit import AuditEvent, AuditSink

log = logging.getLogger(__name__)

OUTBOX_NAME = "audit-outbox.jsonl"
BATCH = 200


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def outbox_name(server: str = "") -> str:
    """The outbox file of the server named *server* ("" = the default server)."""
    if not server:
        return OUTBOX_NAME
    safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in server)[:64]
    return f"audit-outbox-{safe}.jsonl"


class Outbox:
    """The events not yet acknowledged by the hub (see the module docstring)."""

    def __init__(self, workspace: str | Path, server: str = ""):
        self.dir = Path(workspace)
        self.path = self.dir / outbox_name(server)
        self.ack_path = self.path.with_suffix(".ack")

    # -- locking: the fd must still be the file at self.path (compact replaces it) --------
    def _open_locked(self, mode: int):
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, mode)
            try:
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    @staticmethod
    def _read(fd: int) -> tuple[dict, list[dict]]:
        size = os.fstat(fd).st_size
        data = os.pread(fd, size, 0) if size else b""
        header, events = {}, []
        for n, line in enumerate(data.split(b"\n")):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError:
                log.warning("audit outbox: skipping a damaged line (cut short by a crash?)")
                continue
            if n == 0 and "boot" in doc:
                header = doc
            elif isinstance(doc, dict) and isinstance(doc.get("seq"), int):
                events.append(doc)
        return header, events

    def append(self, event: dict) -> int:
        """Append *event*; its sequence number (durable when this returns)."""
        fd = self._open_locked(fcntl.LOCK_EX)
        try:
            seq = self._next_seq(fd)
            os.write(fd, (json.dumps({**event, "seq": seq}, sort_keys=True, separators=(",", ":")) + "\n").encode())
            os.fsync(fd)
            return seq
        finally:
            os.close(fd)

    def _next_seq(self, fd: int) -> int:
        """The next sequence number, from the file's tail (the whole file only when the tail
        holds no complete event); writes the header of a new file and ends a cut line."""
        size = os.fstat(fd).st_size
        if size == 0:
            os.write(fd, (json.dumps({"boot": uuid.uuid4().hex, "first": 1}) + "\n").encode())
            return 1
        if os.pread(fd, 1, size - 1) != b"\n":
            os.write(fd, b"\n")  # end a line a crash cut short
        start = max(0, size - 65536)
        for line in reversed(os.pread(fd, size - start, start).split(b"\n")[1 if start else 0:]):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and isinstance(doc.get("seq"), int):
                return doc["seq"] + 1
            if isinstance(doc, dict) and "boot" in doc and start == 0:
                return int(doc.get("first", 1))
        header, events = self._read(fd)
        return events[-1]["seq"] + 1 if events else int(header.get("first", 1))

    def acked(self) -> int:
        try:
            return int(json.loads(self.ack_path.read_text())["acked"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return 0

    def pending(self, limit: int = BATCH) -> tuple[str, list[dict]]:
        """(boot id, up to *limit* events not acknowledged yet, in order)."""
        if not self.path.exists():
            return "", []
        fd = self._open_locked(fcntl.LOCK_SH)
        try:
            header, events = self._read(fd)
        finally:
            os.close(fd)
        done = self.acked()
        return str(header.get("boot", "")), [e for e in events if e["seq"] > done][:limit]

    def ack(self, seq: int) -> None:
        """The hub acknowledged every event up to *seq*."""
        if seq > self.acked():
            _write_atomically(self.ack_path, json.dumps({"acked": int(seq)}))

    def compact(self) -> None:
        """Rewrite the outbox without the acknowledged events (under the lock, atomically)."""
        if not self.path.exists():
            return
        fd = self._open_locked(fcntl.LOCK_EX)
        try:
            header, events = self._read(fd)
            done = self.acked()
            keep = [e for e in events if e["seq"] > done]
            if len(keep) == len(events) or not header:
                return
            first = keep[0]["seq"] if keep else done + 1
            text = json.dumps({"boot": header["boot"], "first": first}) + "\n" + "".join(
                json.dumps(e, sort_keys=True, separators=(",", ":")) + "\n" for e in keep)
            _write_atomically(self.path, text)
        finally:
            os.close(fd)


class HubBusy(RuntimeError):
    """The hub refused a batch for now (HTTP 429): send it again after :attr:`retry_after` s."""

    def __init__(self, message: str, retry_after: float | None):
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (a number of seconds or an HTTP date); None when
    absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


class Sender:
    """Sends the outbox to the hub from a thread of the server process."""

    max_backoff = 60.0
    #: the longest wait a hub's ``Retry-After`` is obeyed for (seconds); then it is asked again
    max_retry_after = 600.0
    #: the largest batch the sender builds (bytes of JSON), below the hub's default 256 KiB
    max_batch_bytes = 192 * 1024

    def __init__(self, outbox: Outbox, api_url: str, token: str, *, interval: float = 1.0,
                 timeout: float = 10.0, verify: bool | str = True):
        self.outbox, self.url = outbox, api_url.rstrip("/") + "/xnat-hpc/audit"
        self._token, self.interval, self.timeout, self.verify = token, interval, timeout, verify
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.backoff = 0.0
        self.sent = 0
        self.batch = BATCH  # events per batch; halved when the hub says a batch is too large

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="xnat-hpc-audit-sender", daemon=True)
            self._thread.start()

    def stop(self, flush_timeout: float = 5.0) -> None:
        """Stop the thread after one last attempt (bounded by *flush_timeout*)."""
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(flush_timeout + self.timeout)

    def _run(self) -> None:
        while True:
            try:
                self.send_once()
                self.backoff = 0.0
            except Exception as exc:  # noqa: BLE001 - the hub is down or refused: keep, retry later
                self.backoff = self.wait_after(exc)
                log.warning("audit: the hub did not take the events (%s); they stay in the outbox, "
                            "retrying in %.0f s", exc, self.backoff)
            if self._stop.is_set():
                return
            self._pause(self.backoff or self.interval, hold=bool(self.backoff))
            if self._stop.is_set() and self.backoff:
                return

    def wait_after(self, exc: BaseException) -> float:
        """Seconds to wait after a failed send: the hub's ``Retry-After`` for a 429 (at most
        :attr:`max_retry_after`), else the doubled backoff (1 s … :attr:`max_backoff`)."""
        if isinstance(exc, HubBusy) and exc.retry_after is not None:
            return min(self.max_retry_after, max(1.0, exc.retry_after))
        return min(self.max_backoff, max(1.0, self.backoff * 2))

    def _pause(self, seconds: float, *, hold: bool) -> None:
        """Wait *seconds*; a new event (:attr:`wake`) ends the wait early unless *hold* (a backoff:
        the hub is down or asked for time). :meth:`stop` always ends it."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            woken = self.wake.wait(left)
            self.wake.clear()
            if woken and not hold:
                return

    def _fit(self, boot: str, events: list[dict]) -> list[dict]:
        """The longest head of *events* whose batch stays under :attr:`max_batch_bytes` (at least one)."""
        size = len(json.dumps({"boot": boot, "events": []}))
        for n, event in enumerate(events):
            size += len(json.dumps(event)) + 2
            if n and size > self.max_batch_bytes:
                return events[:n]
        return events

    def post(self, body: dict) -> tuple[int, str | None, str]:
        """POST one batch *body*; ``(status, Retry-After, response text)``. Over HTTP(S) with the
        token in the ``Authorization`` header; a sender of another transport overrides it."""
        import requests

        r = requests.post(self.url, json=body, timeout=self.timeout,
                          headers={"Authorization": f"token {self._token}"}, verify=self.verify)
        return r.status_code, r.headers.get("Retry-After"), r.text

    def send_once(self, limit: int = BATCH) -> int:
        """Send what is pending, batch by batch; how many the hub acknowledged. Raises when
        the hub cannot be reached or refuses."""
        total, limit = 0, min(limit, self.batch)
        while True:
            boot, events = self.outbox.pending(limit)
            if not events:
                if total:
                    self.outbox.compact()
                return total
            events = self._fit(boot, events)
            status, retry_after, text = self.post({"boot": boot, "events": events})
            if status == 429:  # nothing appended: the same events, later, in order
                raise HubBusy(f"HTTP 429: {text[:200]}", retry_after_seconds(retry_after))
            if status in (400, 413) and len(events) == 1:
                log.error("audit: the hub rejected event %s (%s) with HTTP %s: %s; dropped from the outbox, "
                          "kept in the local log", events[0]["seq"], events[0].get("action"), status, text[:300])
                self.outbox.ack(events[0]["seq"])
                continue
            if status == 413:
                limit = self.batch = max(1, len(events) // 2)  # the hub's limit is lower: smaller batches
                continue
            if status == 400:
                limit = 1  # find the one it rejects
                continue
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {text[:200]}")
            acked = int(json.loads(text)["acked"])
            self.outbox.ack(acked)
            total += len([e for e in events if e["seq"] <= acked])
            self.sent += len(events)
            limit = self.batch


class HubSink(AuditSink):
    """Every event into the durable outbox; the :class:`Sender` (if any) is woken."""

    def __init__(self, outbox: Outbox, sender: Sender | None = None):
        self.outbox, self.sender = outbox, sender

    def emit(self, event: AuditEvent) -> None:
        try:
            self.outbox.append(event.to_dict())
        except OSError as e:  # auditing must not take the server down; say so loudly
            log.error("could not queue audit event %s for %s for the hub: %s", event.action, event.user, e)
            return
        if self.sender is not None:
            self.sender.wake.set()


_SENDERS: dict[str, Sender] = {}
_SENDERS_LOCK = threading.Lock()


def hub_sender(workspace: str | Path, env: dict | None = None) -> Sender | None:
    """This process's sender for *workspace*, started, when the server runs under a hub
    (``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN`` set); else None."""
    env = os.environ if env is None else env
    url, token = env.get("JUPYTERHUB_API_URL", ""), env.get("JUPYTERHUB_API_TOKEN", "")
    if not url or not token:
        return None
    key = str(Path(workspace).absolute())
    with _SENDERS_LOCK:
        sender = _SENDERS.get(key)
        if sender is None:
            verify: bool | str = env.get("JUPYTERHUB_SSL_CAFILE") or True
            outbox = Outbox(workspace, env.get("JUPYTERHUB_SERVER_NAME", ""))
            sender = _SENDERS[key] = Sender(outbox, url, token, verify=verify)
            sender.start()
        return sender


def stop_senders(flush_timeout: float = 5.0) -> None:
    with _SENDERS_LOCK:
        senders = list(_SENDERS.values())
        _SENDERS.clear()
    for s in senders:
        s.stop(flush_timeout)


class TeeSink(AuditSink):
    """Every event to each of *sinks* (the researcher's local copy and the hub's outbox)."""

    def __init__(self, *sinks: AuditSink):
        self.sinks = sinks

    def emit(self, event: AuditEvent) -> None:
        for sink in self.sinks:
            sink.emit(event)


def default_sink(workspace: str | Path, env: dict | None = None) -> AuditSink:
    """The sink of a connection or offload manager without one: the researcher's local log
    ``<workspace>/audit.jsonl`` (their copy, not authoritative) and, under a hub
    (``JUPYTERHUB_API_URL`` and ``JUPYTERHUB_API_TOKEN`` set), the hub's outbox too. Only the
    server process sends (:func:`hub_sender`, started by the server extension); events of
    kernels wait in the outbox for it."""
    from .audit import JsonLinesSink

    env = os.environ if env is None else env
    local = JsonLinesSink(Path(workspace) / "audit.jsonl")
    if not env.get("JUPYTERHUB_API_URL") or not env.get("JUPYTERHUB_API_TOKEN"):
        return local
    with _SENDERS_LOCK:
        sender = _SENDERS.get(str(Path(workspace).absolute()))
    return TeeSink(local, HubSink(Outbox(workspace, env.get("JUPYTERHUB_SERVER_NAME", "")), sender))
