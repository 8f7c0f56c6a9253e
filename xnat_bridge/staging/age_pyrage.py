"""The age engine that runs pyrage in-process (no ``age`` binary needed).

Encryption: a helper thread reads and hashes the chunk stream ahead of
``pyrage.encrypt_io`` (both release the GIL), memory bounded by a small queue.
Decryption: ``pyrage.decrypt_io`` in a thread writes plaintext into a pipe
(kernel memory) that the tar reader takes from.

Imports :mod:`.common` only; :mod:`.engine` chooses between this engine and
:mod:`.age_cli`.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, NamedTuple

import pyrage

from ..errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from .common import CHUNK, XCHUNK, Tick, TickCallback, set_pipe_size


@dataclasses.dataclass(frozen=True)
class PyrageEngine:
    """pyrage (the Rust age library) in this process."""

    name: ClassVar[str] = "pyrage"

    def encrypt(self, fd: int, chunks: Iterator, recipient,
                on_tick: TickCallback | None = None) -> None:
        """Encrypt *chunks* to the pyrage *recipient* into *fd*; closes *chunks* in every case."""
        encrypt_pyrage(fd, chunks, recipient, on_tick)

    def decryptor(self, path: Path, identity) -> "PyrageDecryptor":
        """A running decryption of the file *path* with the pyrage *identity*."""
        return PyrageDecryptor(path, identity)


# --------------------------------------------------------------------------- encryption


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
                if type(chunk) is not bytes and type(chunk) is not Tick:
                    chunk = bytes(chunk)  # a view is valid until the next item only: keep a copy
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

    :class:`Tick` items in the stream go to *on_tick* (in the reading
    thread). pyrage turns an exception raised in ``read`` into an
    ``EncryptError`` carrying only its text; the original is kept in
    ``error`` and re-raised.
    """

    def __init__(self, chunks: Iterator, on_tick: TickCallback | None = None):
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
            if type(chunk) is Tick:
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


def encrypt_pyrage(fd: int, chunks: Iterator, recipient,
                    on_tick: TickCallback | None = None) -> None:
    """``pyrage.encrypt_io`` of *chunks* into *fd*, a helper thread reading and hashing ahead.

    :class:`Tick` marks go to *on_tick* (in the calling thread); an exception
    of the chunk source is re-raised as it was. Closes *chunks* in every case.
    """
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


# --------------------------------------------------------------------------- decryption


class PyrageDecryptor:
    """``pyrage.decrypt_io`` in a thread, writing plaintext into a pipe (kernel memory).

    ``reader`` is the pipe's read end for the tar reader. :meth:`finish` reads
    to the end, so that age authenticates the final chunk, and raises a
    decryption failure; :meth:`abort` closes the pipe, which stops the thread.
    """

    def __init__(self, path: Path, identity):
        self.path = path
        self.error: BaseException | None = None
        try:
            self._src = open(path, "rb", buffering=CHUNK)
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist", item=str(path)) from None
        r, w = os.pipe()
        set_pipe_size(w)
        self.reader = os.fdopen(r, "rb", buffering=XCHUNK)
        self._writer = os.fdopen(w, "wb", buffering=XCHUNK)
        self._thread = threading.Thread(target=self._run, args=(identity,),
                                        name=f"age-decrypt {path.name}", daemon=True)
        self._thread.start()

    def _run(self, identity) -> None:
        try:
            pyrage.decrypt_io(self._src, self._writer, [identity])
            self._writer.flush()
        except BaseException as e:
            self.error = e
        finally:
            for f in (self._writer, self._src):
                try:
                    f.close()
                except BaseException as e:
                    self.error = self.error or e

    def finish(self) -> None:
        while self.reader.read(XCHUNK):
            pass
        self._thread.join()
        self.reader.close()
        self.raise_error()

    def abort(self) -> None:
        self.reader.close()
        self._thread.join()

    def raise_error(self) -> None:
        err = self.error
        if err is None or isinstance(err, BrokenPipeError):  # BrokenPipe: we stopped it
            return
        name = self.path.name
        if isinstance(err, pyrage.DecryptError) and "no matching keys" in str(err).lower():
            raise PermissionDenied(f"{name} cannot be decrypted with this identity: it was encrypted "
                                   "to another recipient; use the identity whose public key the "
                                   "bundle was staged for", item=name) from None
        if isinstance(err, pyrage.DecryptError):
            raise InvalidRequest(f"{name} is not a valid age file ({err})", item=name) from None
        if isinstance(err, OSError) and "decryption" in str(err).lower():
            raise Conflict(f"{name} is corrupt or truncated: age could not authenticate it; "
                           "stage it again", item=name) from None
        raise err
