"""Reading a bundle's data files concurrently, ahead of the tar writer, bounded in memory.

:class:`Prefetcher` runs a pool of threads (default :data:`~.common.FETCH_THREADS`)
that open the files through their ``open()`` (a mount, a REST stream) in
manifest order, read them into buffers of :data:`~.common.CHUNK` bytes,
check their size, compute their sha256 (and, when asked, XNAT's md5) and queue
the filled buffers per file; the tar writer takes the files in manifest order
with :meth:`Prefetcher.read`. So many small files over REST are fetched in
parallel instead of one request after the other, and hashing runs on several
cores.

Memory: the readers fill buffers of a pool that holds at most *buffer_bytes*
(default :data:`~.common.FETCH_BUFFER`) — buffers being filled, queued, or
just handed to the writer — plus a few buffers for the file the writer waits
for (so that it never waits behind files further ahead). The buffers are
allocated once and reused (``readinto``), so the bound does not depend on the
dataset's size, nor drift with the allocator's per-thread arenas.

Errors and cancellation: the first exception of any thread (a file that
changed, a source that cannot be read or resumed, a cancelled job's reader)
stops every thread and is raised to the writer at its next :meth:`read`;
:meth:`close` stops the threads, waits for them and closes every stream that
is still open. No byte is written anywhere by this module.

Imports :mod:`.common` and :mod:`.manifest` only.
"""

from __future__ import annotations

import collections
import hashlib
import io
import logging
import threading
from collections.abc import Iterator, Sequence

from ..errors import Conflict, InvalidRequest
from .common import CHUNK, FETCH_BUFFER, FETCH_THREADS
from .manifest import StagedFile

log = logging.getLogger(__name__)

#: how long :meth:`Prefetcher.close` waits for threads before closing their streams under them
CLOSE_GRACE = 2.0
#: how long it then waits for them to end
CLOSE_TIMEOUT = 30.0


class FileDigests:
    """What reading one file produced: its byte count, sha256 and (when asked) md5, all hex."""

    __slots__ = ("md5", "nbytes", "sha256")

    def __init__(self, nbytes: int, sha256: str, md5: str):
        self.nbytes, self.sha256, self.md5 = nbytes, sha256, md5


class _Slot:
    """The queue of one file: filled buffers not yet taken, buffers it holds, the end result."""

    __slots__ = ("done", "held", "items")

    def __init__(self):
        self.items: collections.deque[tuple[bytearray, int]] = collections.deque()
        self.held = 0  # buffers of this file: queued, being filled, or just handed to the writer
        self.done: FileDigests | None = None


class _Stop(Exception):
    """Internal: the pool is stopping; the thread ends quietly."""


def _changed(f: StagedFile, what: str) -> Conflict:
    return Conflict(f"data file {f.name!r} {what}: it changed in XNAT after the dataset was made; "
                    "re-create the dataset", item=f.name)


def _readinto(src, view: memoryview, state: list) -> int:
    """``src.readinto(view)``, or ``read`` + copy for sources without a working readinto."""
    if state[0]:
        try:
            n = src.readinto(view)
            if n is not None:
                return n
        except (AttributeError, NotImplementedError, io.UnsupportedOperation):
            pass
        state[0] = False
    data = src.read(len(view))
    view[:len(data)] = data
    return len(data)


class Prefetcher:
    """Reads *files* concurrently in manifest order (see the module docstring).

    *threads* ≥ 1 readers; *buffer_bytes* ≥ one *chunk*: the readers fill
    buffers of *chunk* bytes from a pool of ``buffer_bytes // chunk`` (plus a
    few for the file the writer waits for), allocated once and reused, so
    that memory does not drift with the allocator's per-thread arenas.
    *verify_md5* also computes XNAT's md5 of files that have one and no
    known sha256, and compares it (for sources that do not verify it
    themselves): a known sha256 is of bytes whose md5 the staging that
    recorded it verified, and is checked here on every read. Use as a
    context manager, or call :meth:`start` and :meth:`close`.
    """

    def __init__(self, files: Sequence[StagedFile], *, threads: int = FETCH_THREADS,
                 buffer_bytes: int = FETCH_BUFFER, verify_md5: bool = False, chunk: int = CHUNK):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise InvalidRequest(f"staging threads must be a whole number >= 1, not {threads!r}")
        if isinstance(buffer_bytes, bool) or not isinstance(buffer_bytes, int) or buffer_bytes < chunk:
            raise InvalidRequest(f"the staging buffer must be at least {chunk} bytes, not {buffer_bytes!r}")
        self.files = list(files)
        self.threads = min(threads, max(1, len(self.files)))
        self.chunk = chunk
        self.max_buffers = buffer_bytes // chunk
        #: buffers the file the writer waits for may hold beyond the shared pool
        self.reserve_buffers = min(self.max_buffers, 4)
        self.verify_md5 = verify_md5
        self._lock = threading.Lock()
        self._data = threading.Condition(self._lock)  # the writer waits here for data of its file
        self._room = threading.Condition(self._lock)  # readers wait here for a buffer
        self._slots: list[_Slot | None] = [None] * len(self.files)
        self._next = 0          # the next file a thread takes
        self._current = 0       # the file the writer reads
        self._held = 0          # buffers in use over all files
        self._free: list[bytearray] = []
        self._peak = 0
        self._error: BaseException | None = None
        self._stopping = False
        self._streams: dict[int, object] = {}  # thread ident -> its open stream
        self._pool: list[threading.Thread] = []

    @property
    def reserve(self) -> int:
        """Bytes the file the writer waits for may hold beyond *buffer_bytes*."""
        return self.reserve_buffers * self.chunk

    # -- life cycle -----------------------------------------------------------------
    def start(self) -> Prefetcher:
        for i in range(self.threads if self.files else 0):
            t = threading.Thread(target=self._work, name=f"bundle-fetch-{i}", daemon=True)
            self._pool.append(t)
            t.start()
        return self

    def __enter__(self) -> Prefetcher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def peak_bytes(self) -> int:
        """The most buffer bytes that were in use at one time (for tests and benchmarks)."""
        return self._peak * self.chunk

    def close(self) -> None:
        """Stop every thread, wait for them, close every stream still open (idempotent)."""
        with self._lock:
            self._stopping = True
            self._data.notify_all()
            self._room.notify_all()
        for t in self._pool:
            t.join(CLOSE_GRACE / max(1, len(self._pool)))
        with self._lock:
            stuck = list(self._streams.values())
        for stream in stuck:  # a read that hangs (XNAT stopped answering): close it under the reader
            log.warning("staging: closing a stream that did not end within %.0f s", CLOSE_GRACE)
            _close_quietly(stream)
        for t in self._pool:
            t.join(CLOSE_TIMEOUT)
            if t.is_alive():
                log.warning("staging: reader thread %s did not end within %.0f s", t.name, CLOSE_TIMEOUT)
        with self._lock:
            self._slots = [None] * len(self.files)
            self._free.clear()

    # -- the writer's side ------------------------------------------------------------
    def read(self, index: int) -> Iterator[memoryview]:
        """Yield the data of file *index* (files are read in order); return its :class:`FileDigests`.

        Each chunk is a view of a pool buffer, valid until the next chunk is
        requested (a consumer that keeps chunks longer copies them). Raises the
        first error of any reader thread.
        """
        with self._lock:
            self._current = index
            self._room.notify_all()  # the reader of this file may now use the reserve
        handed: bytearray | None = None
        try:
            while True:
                with self._lock:
                    if handed is not None:
                        self._release(handed, self._slots[index])
                        handed = None
                    while True:
                        if self._error is not None:
                            raise self._error
                        if self._stopping:
                            raise _Stop()
                        slot = self._slots[index]
                        if slot is not None and (slot.items or slot.done is not None):
                            break
                        self._data.wait()
                    if not slot.items:
                        self._slots[index] = None
                        return slot.done
                    handed, n = slot.items.popleft()
                yield memoryview(handed)[:n]
        finally:
            if handed is not None:
                with self._lock:
                    self._release(handed, self._slots[index])

    # -- the buffer pool (call with the lock held) ---------------------------------------
    def _acquire(self, index: int, slot: _Slot) -> bytearray:
        while not self._stopping and not (
                self._held < self.max_buffers
                or (index == self._current and slot.held < self.reserve_buffers)):
            self._room.wait()
        if self._stopping:
            raise _Stop()
        self._held += 1
        slot.held += 1
        self._peak = max(self._peak, self._held)
        return self._free.pop() if self._free else bytearray(self.chunk)

    def _release(self, buf: bytearray, slot: _Slot | None) -> None:
        self._held -= 1
        if slot is not None:
            slot.held -= 1
        self._free.append(buf)
        # all of them: a single wake-up could go to a reader further ahead while the reader
        # of the writer's file, whose reserve this release also freed, sleeps on
        self._room.notify_all()

    # -- the readers' side --------------------------------------------------------------
    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    if self._stopping or self._error is not None or self._next >= len(self.files):
                        return
                    index = self._next
                    self._next += 1
                    slot = self._slots[index] = _Slot()
                self._fetch(index, slot)
        except _Stop:
            return
        except BaseException as e:  # noqa: BLE001 - handed to the writer, which raises it
            with self._lock:
                if self._error is None and not self._stopping:
                    self._error = e
                self._stopping = True
                self._data.notify_all()
                self._room.notify_all()

    def _fetch(self, index: int, slot: _Slot) -> None:
        f = self.files[index]
        me = threading.get_ident()
        src = f.open()
        with self._lock:
            self._streams[me] = src
        buf = None
        try:
            sha = hashlib.sha256()
            md5 = hashlib.md5() if self.verify_md5 and f.md5 and not f.sha256 else None
            done, ended, mode = 0, False, [True]
            while not ended:
                with self._lock:
                    buf = self._acquire(index, slot)
                view = memoryview(buf)
                filled = 0
                while filled < len(buf):
                    n = _readinto(src, view[filled:], mode)
                    if not n:
                        ended = True
                        break
                    part = view[filled:filled + n]
                    filled += n
                    done += n
                    if done > f.size:
                        raise _changed(f, f"has more bytes than the {f.size} it had when it was listed")
                    sha.update(part)
                    if md5 is not None:
                        md5.update(part)
                with self._lock:
                    if filled:
                        slot.items.append((buf, filled))
                        if index == self._current:
                            self._data.notify()
                    else:
                        self._release(buf, slot)
                    buf = None
            if done < f.size:
                raise _changed(f, f"has fewer bytes than expected ({done} of {f.size})")
            digest = sha.hexdigest()
            if f.sha256 and digest != f.sha256.lower():
                raise Conflict(f"data file {f.name!r} does not match the sha256 recorded for this "
                               f"dataset version ({digest[:12]}..., recorded {f.sha256.lower()[:12]}...): "
                               "XNAT now serves other bytes; re-create the dataset", item=f.name)
            md5_hex = md5.hexdigest() if md5 is not None else ""
            if md5 is not None and md5_hex != f.md5.lower():
                raise Conflict(f"data file {f.name!r} does not match XNAT's md5 ({md5_hex[:12]}..., "
                               f"XNAT says {f.md5.lower()[:12]}...); re-create the dataset or ask the "
                               "XNAT administrator", item=f.name)
            with self._lock:
                slot.done = FileDigests(done, digest, md5_hex)
                if index == self._current:
                    self._data.notify()
        finally:
            with self._lock:
                if buf is not None:
                    self._release(buf, slot)
                self._streams.pop(me, None)
            _close_quietly(src)


def _close_quietly(stream) -> None:
    try:
        stream.close()
    except Exception as e:  # noqa: BLE001 - closing after a failure: the first error matters
        log.debug("staging: closing a source stream: %r", e)
