"""Reading XNAT files as verified streams: two modes behind one interface.

* ``mount``: read from a read-only archive mount (``XNAT_DATA``), which holds
  XNAT's layout ``{project}/arc001/{session}/SCANS/{scan}/{resource}/{path}``.
  Every path is resolved and must stay inside the mount (symlinks that lead
  elsewhere are refused).
* ``api``: read through XNAT REST with the user's own session, straight from
  the HTTP response. When the connection drops or a read times out, the rest
  is requested again with an HTTP ``Range: bytes=N-`` header and the same
  stream continues (bounded retries within a retry window); if XNAT ignores
  the range, the bytes already delivered are skipped, never delivered twice.

:meth:`FileAccess.open` returns a stream and **never writes a file**: nothing
of a file's content lands on disk unless a caller writes it (staging encrypts
it; :func:`xnat_bridge.download.download_files` writes where the researcher
asked; :mod:`xnat_bridge.filecache` is the admin's opt-in node-local cache).
Every stream counts the bytes it delivers and computes their md5 as it goes:
when the file's listed size is reached it checks XNAT's md5, and the next read
checks that the file ends there, so a reader that takes exactly ``size``
bytes and then ``read(1)`` (the tar writer) has verified the whole file.
A mismatch raises :class:`~xnat_bridge.errors.Conflict` naming the file; a
transfer that cannot be resumed raises
:class:`~xnat_bridge.errors.XnatUnavailable` naming the file and why.

Streams are safe to use from any thread (one lock per stream), and many
streams may be open at once (each REST stream holds one pooled connection of
:class:`~xnat_bridge.client.XnatClient`). The mode is chosen by what the
server was given (``XNAT_DATA`` set and readable → mount; the connection reads
it through :mod:`xnat_bridge.server_env`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import logging
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import BinaryIO

import requests
import urllib3.exceptions

from .client import XnatClient
from .errors import Conflict, InvalidRequest, NotFound, XnatHpcError, XnatUnavailable

log = logging.getLogger(__name__)

CHUNK = 1 << 20
#: default seconds a REST stream keeps trying to resume after a failure
DEFAULT_RETRY_WINDOW = 60.0
#: at most this many re-requests in one failure episode (progress starts a new episode)
MAX_RESUMES = 20
_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
#: what a dropped or stalled transfer raises while reading a response body
_TRANSIENT = (urllib3.exceptions.HTTPError, requests.RequestException, http.client.HTTPException,
              ConnectionError, TimeoutError, OSError)


@dataclasses.dataclass(frozen=True)
class FileRef:
    """Where one XNAT file lives: REST ``uri`` and archive-relative ``archive_path``;
    its listed ``size`` and XNAT digest ``md5`` ("" when XNAT has none) and, once
    known, its ``sha256``."""

    uri: str
    archive_path: str
    size: int
    md5: str = ""
    sha256: str = ""


def safe_relpath(rel: str) -> str:
    """Refuse absolute paths, ``..``/``.``/empty segments, NUL and backslashes."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise InvalidRequest(f"unsafe path {rel!r}", item=rel[:200])
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise InvalidRequest(f"unsafe path {rel!r}", item=rel[:200])
    return rel


def _inside(root: Path, rel: str) -> Path:
    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root_real / safe_relpath(rel)))
    if root_real not in real.parents:
        raise InvalidRequest(f"{rel} leads outside {root}", item=rel)
    return real


class FileAccess:
    """Interface: ``open(ref)`` → a verifying binary stream of the file (see the module
    docstring); ``close()`` releases what the access holds. Implementations never
    write the file's content anywhere."""

    mode = "none"
    #: whether its streams check XNAT's md5 themselves (else the staging checks it: see
    #: :class:`~xnat_bridge.staging.fetch.Prefetcher`)
    checks_md5 = True

    def open(self, ref: FileRef) -> BinaryIO:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        """Release resources (nothing by default)."""


class VerifyingStream(io.RawIOBase):
    """A read-only stream of one file that counts and md5-hashes what it delivers.

    Subclasses implement :meth:`_next` (up to *n* bytes of the source; ``b""`` at
    its end). Reads never go past the listed size; once it is reached, XNAT's md5
    is checked, and the next read checks that the source ends there. After a
    failure every further read raises the same error.
    """

    def __init__(self, ref: FileRef, *, check_md5: bool = True):
        super().__init__()
        self.ref = ref
        self._md5 = hashlib.md5() if (check_md5 and ref.md5) else None
        self._done = 0
        self._ended = False
        self._error: BaseException | None = None
        self._lock = threading.Lock()

    @property
    def bytes_read(self) -> int:
        return self._done

    def readable(self) -> bool:
        return True

    def _next(self, n: int) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def _next_into(self, view: memoryview) -> int:
        """Up to ``len(view)`` bytes of the source into *view* (0 at its end); by default through
        :meth:`_next` (a subclass that can read into a buffer directly saves the copy)."""
        chunk = self._next(len(view))
        view[:len(chunk)] = chunk
        return len(chunk)

    def _guarded(self, op):
        """Run *op* under the stream's lock: refused once closed, and once failed every further
        call raises the same error."""
        with self._lock:
            if self.closed:
                raise ValueError(f"read of closed stream of {self.ref.archive_path}")
            if self._error is not None:
                raise self._error
            try:
                return op()
            except BaseException as e:
                self._error = e
                raise

    def read(self, n: int | None = -1) -> bytes:
        return self._guarded(lambda: self._read_all() if n is None or n < 0 else self._read(n))

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer) -> int:
        """:meth:`read` into *buffer*, with the same checks; without a copy where the source
        reads into a buffer itself (:meth:`_next_into`: a file of the mount)."""
        return self._guarded(lambda: self._read_into(memoryview(buffer).cast("B")))

    def _read_into(self, view: memoryview) -> int:
        if len(view) == 0 or self._ended:
            return 0
        if self._done >= self.ref.size:
            self._check_end()
            return 0
        view = view[:min(len(view), self.ref.size - self._done)]
        return self._took(view, self._next_into(view))

    def _read_all(self) -> bytes:
        parts = []
        while chunk := self._read(CHUNK):
            parts.append(chunk)
        return b"".join(parts)

    def _read(self, n: int) -> bytes:
        if n == 0 or self._ended:
            return b""
        size = self.ref.size
        if self._done >= size:
            self._check_end()
            return b""
        chunk = self._next(min(n, size - self._done))
        if len(chunk) > size - self._done:  # a source that returned more than asked
            raise Conflict(f"{self.ref.archive_path} has more bytes than the {size} XNAT lists: it "
                           "changed in XNAT; create the dataset again", item=self.ref.archive_path)
        self._took(chunk, len(chunk))
        return chunk

    def _took(self, data, n: int) -> int:
        """Count *n* bytes the source gave (the first *n* of *data*), md5 them, check the end."""
        if not n:
            raise Conflict(f"{self.ref.archive_path} ended after {self._done} bytes, but XNAT lists "
                           f"{self.ref.size}: it changed in XNAT; create the dataset again",
                           item=self.ref.archive_path)
        self._done += n
        if self._md5 is not None:
            self._md5.update(data[:n] if len(data) != n else data)
        if self._done == self.ref.size:
            self._check_md5()
        return n

    def _check_md5(self) -> None:
        if self._md5 is not None and self._md5.hexdigest() != self.ref.md5.lower():
            raise Conflict(f"{self.ref.archive_path} does not match XNAT's md5 ({self._md5.hexdigest()[:12]}…, "
                           f"XNAT lists {self.ref.md5[:12]}…): it changed in XNAT or was damaged on the "
                           "way; create the dataset again or ask the XNAT admin", item=self.ref.archive_path)

    def _check_end(self) -> None:
        if self.ref.size == 0:
            self._check_md5()
        if self._next(1):
            raise Conflict(f"{self.ref.archive_path} has more bytes than the {self.ref.size} XNAT lists: "
                           "it changed in XNAT; create the dataset again", item=self.ref.archive_path)
        self._ended = True


# -- mount ----------------------------------------------------------------------

class LocalFileStream(VerifyingStream):
    """A verifying stream of a local file (*path* opened without following a final symlink)."""

    def __init__(self, path: str | Path, ref: FileRef, *, check_md5: bool = True, where: str = "the mount"):
        super().__init__(ref, check_md5=check_md5)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._f = os.fdopen(fd, "rb", buffering=0)
        size = os.fstat(fd).st_size
        if size != ref.size:
            self._f.close()
            raise Conflict(f"{ref.archive_path} changed in XNAT: {where} has {size} bytes, the "
                           f"dataset lists {ref.size}; create the dataset again", item=ref.archive_path)

    def _next(self, n: int) -> bytes:
        return self._f.read(n)

    def _next_into(self, view: memoryview) -> int:
        return self._f.readinto(view) or 0

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class MountAccess(FileAccess):
    """Files from the read-only archive mount, size-checked at open and at their end.

    *check_md5* also verifies XNAT's md5 on every read. It is off by default: md5
    runs at about 0.6 GB/s on one core, slower than age. The staging of a job
    checks XNAT's md5 itself where no sha256 of the file is recorded yet (its
    first staging; the recorded sha256 then stands for those verified bytes), so
    that a bundle never holds a mount file unchecked against XNAT's catalog.
    ``c.XnatHpcExtension.mount_check_md5 = True`` turns it on for every read.
    """

    mode = "mount"

    def __init__(self, root: str | Path, *, check_md5: bool = False):
        self.root = Path(root)
        self.check_md5 = check_md5
        if not self.root.is_dir():
            raise NotFound(f"XNAT_DATA mount {root} does not exist")

    @property
    def checks_md5(self) -> bool:
        return self.check_md5

    def path(self, ref: FileRef) -> Path:
        real = _inside(self.root, ref.archive_path)
        if not real.is_file():
            raise NotFound(f"{ref.archive_path} is not in the archive mount", item=ref.archive_path)
        return real

    def open(self, ref: FileRef) -> BinaryIO:
        return LocalFileStream(self.path(ref), ref, check_md5=self.check_md5)


# -- REST -------------------------------------------------------------------------

class _RestStream(VerifyingStream):
    """The body of ``GET {uri}``, resumed with ``Range`` after a drop or a stall."""

    def __init__(self, client: XnatClient, ref: FileRef, *, retry_window: float,
                 timeout: float | None):
        super().__init__(ref)
        self._client = client
        self._retry_window = retry_window
        self._timeout = timeout
        self._resp: requests.Response | None = None
        self._closing = False
        self._with_retries(lambda: None)  # connect now: a missing file fails at open

    # the transfer
    def _connect(self) -> None:
        ref = self.ref
        headers = {"Accept-Encoding": "identity"}
        if self._done:
            headers["Range"] = f"bytes={self._done}-"
        resp = self._client.request("GET", ref.uri, stream=True, headers=headers, what=ref.archive_path,
                                    timeout=self._timeout, accept=(416,))
        self._resp = resp
        if resp.status_code == 416:
            raise Conflict(f"{ref.archive_path} is now shorter than the {self._done} bytes already "
                           "read: it changed in XNAT; create the dataset again", item=ref.archive_path)
        skip = self._check_response(resp)
        if skip:
            log.info("XNAT ignored the range request for %s; skipping %d bytes already read",
                     ref.archive_path, skip)
            while skip:
                data = resp.raw.read(min(CHUNK, skip))
                if not data:
                    raise Conflict(f"{ref.archive_path} is now shorter than the {self._done} bytes "
                                   "already read: it changed in XNAT; create the dataset again",
                                   item=ref.archive_path)
                skip -= len(data)

    def _check_response(self, resp: requests.Response) -> int:
        """The number of bytes to skip (a 200 to a range request), after checking the size."""
        ref = self.ref
        if resp.status_code == 206:
            m = _CONTENT_RANGE_RE.match(resp.headers.get("Content-Range", "").strip())
            if not m or int(m.group(1)) != self._done:
                raise XnatUnavailable(f"XNAT answered the resumed download of {ref.archive_path} "
                                      f"with the wrong range ({resp.headers.get('Content-Range')!r})",
                                      item=ref.archive_path)
            total = None if m.group(3) == "*" else int(m.group(3))
            skip = 0
        elif resp.status_code == 200:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            skip = self._done
        else:
            raise XnatUnavailable(f"XNAT answered the download of {ref.archive_path} with HTTP "
                                  f"{resp.status_code}", item=ref.archive_path)
        if total is not None and total != ref.size:
            raise Conflict(f"{ref.archive_path} changed in XNAT: it now has {total} bytes, the dataset "
                           f"lists {ref.size}; create the dataset again", item=ref.archive_path)
        return skip

    def _drop(self) -> None:
        if self._resp is not None:
            try:
                self._resp.close()
            except Exception:  # noqa: BLE001 - closing a broken connection
                pass
            self._resp = None

    def _with_retries(self, action):
        """Run *action* on a connected response; re-request from where we are on a drop."""
        started = None
        tries = 0
        while True:
            if self._closing:
                raise ValueError(f"the stream of {self.ref.archive_path} was closed")
            try:
                if self._resp is None:
                    self._connect()
                return action()
            except XnatUnavailable as e:
                why = e.message
            except XnatHpcError:  # changed, gone, refused: resuming cannot help
                self._drop()
                raise
            except _TRANSIENT as e:
                if self._closing:  # closed from another thread (a cancelled staging)
                    raise ValueError(f"the stream of {self.ref.archive_path} was closed") from None
                why = f"{type(e).__name__}: {e}"[:300]
            self._drop()
            now = time.monotonic()
            started = started if started is not None else now
            tries += 1
            left = started + self._retry_window - now
            if left <= 0 or tries > MAX_RESUMES:
                raise XnatUnavailable(
                    f"reading {self.ref.archive_path} from XNAT failed after {self._done} of "
                    f"{self.ref.size} bytes and could not be resumed within "
                    f"{self._retry_window:g} s ({tries} tries): {why}", item=self.ref.archive_path)
            log.info("reading %s from XNAT failed at byte %d (%s); resuming (try %d)",
                     self.ref.archive_path, self._done, why, tries)
            time.sleep(min(0.25 * 2 ** (tries - 1), 5.0, max(left, 0.0)))

    def _next(self, n: int) -> bytes:
        if self._resp is None and self._done >= self.ref.size:
            return b""  # the response that delivered the last byte had the listed length
        return self._with_retries(lambda: self._resp.raw.read(n))

    def close(self) -> None:
        """Close (also from another thread: a blocked read then fails instead of resuming)."""
        self._closing = True
        resp = self._resp
        if resp is not None:  # wake a read blocked in another thread (closing the fd does not)
            sock = getattr(getattr(resp.raw, "connection", None), "sock", None)
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        if not self.closed:
            self._drop()
        super().close()


class ApiAccess(FileAccess):
    """Files through XNAT REST, streamed (no file written, no cache).

    *retry_window*: seconds a stream keeps re-requesting the rest of a file after
    a dropped connection or a stalled read (at most :data:`MAX_RESUMES` tries per
    failure); *timeout*: seconds a connect or a read may wait (default: the
    client's timeout).
    """

    mode = "api"

    def __init__(self, client: XnatClient, *, retry_window: float = DEFAULT_RETRY_WINDOW,
                 timeout: float | None = None):
        if retry_window < 0:
            raise InvalidRequest(f"retry_window must be ≥ 0 seconds, got {retry_window}")
        self.client = client
        self.retry_window = float(retry_window)
        self.timeout = timeout

    def open(self, ref: FileRef) -> BinaryIO:
        return _RestStream(self.client, ref, retry_window=self.retry_window, timeout=self.timeout)


def choose_access(client: XnatClient, data_root: str | None = None, *,
                  retry_window: float = DEFAULT_RETRY_WINDOW) -> FileAccess:
    """``mount`` when *data_root* (the server's ``XNAT_DATA``) is a readable directory, else ``api``."""
    if data_root and os.path.isdir(data_root) and os.access(data_root, os.R_OK | os.X_OK):
        return MountAccess(data_root)
    return ApiAccess(client, retry_window=retry_window)
