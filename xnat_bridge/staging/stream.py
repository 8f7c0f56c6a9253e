"""Tar stream out and streaming age encryption (bounded memory)."""

from __future__ import annotations

import hashlib
import os
import queue
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pyrage

from ..errors import Conflict
from . import engine
from .common import CHUNK, PROGRESS_INTERVAL, ProgressCallback

# --------------------------------------------------------------------------- tar stream out


class _TarOut:
    """A PAX tar stream built chunk by chunk (headers from ``tarfile.TarInfo.tobuf``)."""

    def __init__(self, mtime: float):
        self.mtime = int(mtime)
        self.offset = 0

    def header(self, name: str, size: int = 0, *, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        info.mode = 0o700 if directory else 0o600
        info.size = 0 if directory else size
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        buf = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.offset += len(buf)
        return buf

    def body(self, src: BinaryIO, size: int, label: str,
             tick: bool = False) -> Generator[bytes | _Tick, None, str]:
        """Yield exactly *size* bytes of *src* plus padding; return their sha256 (hex).

        With *tick*, a :class:`_Tick` follows every chunk (progress of data files).
        """
        digest = hashlib.sha256()
        done = 0
        while done < size:
            chunk = src.read(min(CHUNK, size - done))
            if not chunk:
                raise Conflict(f"{label} has fewer bytes than expected ({done} of {size}): "
                               "it changed after it was listed", item=label)
            if len(chunk) > size - done:
                raise Conflict(f"{label} has more bytes than expected ({size}): it changed "
                               "after it was listed", item=label)
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk)
            digest.update(chunk)
            done += len(chunk)
            yield chunk
            if tick:
                yield _Tick(len(chunk), 0)
        if src.read(1):
            raise Conflict(f"{label} has more bytes than expected ({size}): it changed after "
                           "it was listed", item=label)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            yield bytes(pad)
        self.offset += size + pad
        return digest.hexdigest()

    def end(self) -> bytes:
        n = 2 * tarfile.BLOCKSIZE
        n += -(self.offset + n) % tarfile.RECORDSIZE
        self.offset += n
        return bytes(n)


class _Tick(NamedTuple):
    """A progress mark in a chunk stream: data bytes and files passed so far."""

    nbytes: int
    nfiles: int


class _Prefetch:
    """Runs a chunk generator in a thread, *depth* chunks ahead of the consumer.

    Reading the sources and hashing them (both release the GIL) then overlap
    with encryption; memory stays bounded by the queue (depth x 1 MiB). An
    exception of the generator is handed over and raised to the consumer.
    """

    _END = object()

    def __init__(self, chunks: Iterator, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(chunks,), name="bundle-reader",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks) -> None:
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(self._END)
        except BaseException as e:
            self._put(_Failure(e))
        finally:
            chunks.close()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # stay at the end
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


class _Failure(NamedTuple):
    error: BaseException


class _PullReader:
    """A read()-able view of an iterator of byte chunks, for ``pyrage.encrypt_io``.

    :class:`_Tick` items in the stream go to *on_tick* (in the reading
    thread). pyrage turns an exception raised in ``read`` into an
    ``EncryptError`` carrying only its text; the original is kept in
    ``error`` and re-raised.
    """

    def __init__(self, chunks: Iterator, on_tick: Callable[[int, int], None] | None = None):
        self._chunks = chunks
        self._on_tick = on_tick
        self._buf = b""
        self._pos = 0
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self._read(n)
        except BaseException as e:
            self.error = e
            raise

    def _read(self, n: int) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        avail = len(self._buf) - self._pos
        if avail >= n:
            self._pos += n
            return self._buf[self._pos - n:self._pos]
        parts = [self._buf[self._pos:]] if avail else []
        need = n - avail
        self._buf, self._pos = b"", 0
        for chunk in self._chunks:
            if type(chunk) is _Tick:
                if self._on_tick is not None:
                    self._on_tick(chunk.nbytes, chunk.nfiles)
                continue
            if len(chunk) >= need:
                parts.append(chunk[:need])
                self._buf, self._pos = chunk, need
                break
            parts.append(chunk)
            need -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total_bytes: int, total_files: int):
        self.callback = callback
        self.total_bytes, self.total_files = total_bytes, total_files
        self.bytes = self.files = 0
        self._last = -1e9

    def add(self, nbytes: int = 0, nfiles: int = 0) -> None:
        self.bytes += nbytes
        self.files += nfiles
        if self.callback is not None and time.monotonic() - self._last >= PROGRESS_INTERVAL:
            self._call()

    def finish(self) -> None:
        if self.callback is not None:
            self._call()

    def _call(self) -> None:
        self._last = time.monotonic()
        self.callback(self.bytes, self.files, self.total_bytes, self.total_files)


def _encrypt_stream(path: Path, chunks: Iterator, recipient,
                    on_tick: Callable[[int, int], None] | None = None) -> int:
    """Encrypt *chunks* to *recipient* into a new file *path* (0600), fsync it; return its size.

    With the age CLI (:mod:`.engine`), this thread reads, hashes and frames
    the tar stream while age encrypts in its own process; with pyrage, a
    helper thread reads and hashes ahead of the encryption. The caller
    removes *path* on error.
    """
    age = engine.age_binary()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if age is not None:
            try:
                engine.encrypt_cli(age, fd, chunks, str(recipient), on_tick)
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()  # closes the file being read, if any
        else:
            _encrypt_pyrage(fd, chunks, recipient, on_tick)
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _encrypt_pyrage(fd: int, chunks: Iterator, recipient,
                    on_tick: Callable[[int, int], None] | None) -> None:
    source = _Prefetch(chunks)
    reader = _PullReader(source, on_tick)
    try:
        with os.fdopen(os.dup(fd), "wb", buffering=CHUNK) as out:
            try:
                pyrage.encrypt_io(reader, out, [recipient])
            except BaseException:
                if reader.error is not None:
                    raise reader.error from None
                raise
    finally:
        source.close()  # stops the reader thread; the generator closes its open source
