"""Bottom layer: bundle format constants, chunk-stream items, progress, small file helpers.

Everything else in :mod:`xnat_bridge.staging` may import from here; this
module imports nothing from the package.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

FORMAT = "xnat-hpc-bundle"
#: 2: MANIFEST.json first (what is known before the data is read: names, sizes, XNAT md5,
#: extras, metadata), HASHES.json last (every data file's sha256, computed while streaming)
FORMAT_VERSION = 2
HASHES_FORMAT = "xnat-hpc-bundle-hashes"
INFO_FORMAT = "xnat-hpc-bundle-info"
MANIFEST_NAME = "MANIFEST.json"
HASHES_NAME = "HASHES.json"
DATA_PREFIX = "data/"
SUFFIX = ".tar.age"
PARTIAL = ".partial"
CHUNK = 1 << 20  # reads of staged files, encrypted output buffer, pipe size
#: files read concurrently ahead of the tar writer, and the data they may hold in memory
FETCH_THREADS = 8
FETCH_BUFFER = 64 << 20
# extraction reads: below glibc's initial mmap threshold (128 KiB), so that the
# per-chunk bytes objects come from the heap, not from a fresh mmap each time
# (with 1 MiB chunks a new process extracts ~30 % slower)
XCHUNK = 64 << 10
MAX_MANIFEST_BYTES = 64 << 20
PROGRESS_INTERVAL = 0.2
#: how an age X25519 identity starts (upper case); never logged, never stored
SECRET_PREFIX = "AGE-SECRET-KEY-1"

ProgressCallback = Callable[[int, int, int, int], None]
#: called with (data bytes, data files) passed since the last call
TickCallback = Callable[[int, int], None]


# --------------------------------------------------------------------------- chunk streams


class Tick(NamedTuple):
    """A progress mark in a chunk stream: data bytes and files passed so far.

    Chunk streams (``Iterator[bytes | Tick]``) carry these between the byte
    chunks; the engine that consumes the stream hands them to its *on_tick*.
    """

    nbytes: int
    nfiles: int


class BytesSource:
    """A minimal read() over bytes, without copying them into a BytesIO."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        self._pos += n
        return self._data[self._pos - n:self._pos]


class Progress:
    """Counts data bytes and files and calls *callback* at most every PROGRESS_INTERVAL.

    ``callback(bytes_done, files_done, total_bytes, total_files)``; :meth:`add`
    fits a :data:`TickCallback`, :meth:`finish` makes the final call. The
    throttle reads *clock* (default: the class attribute :attr:`clock`,
    ``time.monotonic``), so that tests drive it instead of sleeping.
    """

    #: the clock of the throttle (seconds); a test may replace it for every Progress
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, callback: ProgressCallback | None, total_bytes: int, total_files: int,
                 clock: Callable[[], float] | None = None):
        self.callback = callback
        self.total_bytes, self.total_files = total_bytes, total_files
        self.bytes = self.files = 0
        if clock is not None:
            self.clock = clock
        self._last: float | None = None  # no call yet: the first add() reports at once

    def add(self, nbytes: int = 0, nfiles: int = 0) -> None:
        self.bytes += nbytes
        self.files += nfiles
        if self.callback is not None and (self._last is None
                                          or self.clock() - self._last >= PROGRESS_INTERVAL):
            self._call()

    def finish(self) -> None:
        if self.callback is not None:
            self._call()

    def _call(self) -> None:
        self._last = self.clock()
        self.callback(self.bytes, self.files, self.total_bytes, self.total_files)


# --------------------------------------------------------------------------- file helpers


def set_pipe_size(fd: int) -> None:
    """Grow the pipe *fd* to CHUNK bytes where the kernel allows it."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, CHUNK)
    except OSError:
        pass  # a smaller pipe only costs speed


def unlink_quiet(path: Path) -> None:
    """Remove *path*; a missing file is fine."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def fsync_dir(path: Path) -> None:
    """fsync the directory *path* (after a rename into it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
