"""The tar stream out (PAX, chunk by chunk) and its streaming encryption into a file.

Imports :mod:`.common` and :mod:`.engine`; used by :mod:`.area` (bundles) and
:mod:`.results` (result archives). Memory stays bounded: chunks of at most
CHUNK bytes are produced as the engine consumes them.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import Conflict
from .common import CHUNK, Tick, TickCallback
from .engine import AgeEngine, resolve_engine


class TarOut:
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
             tick: bool = False) -> Generator[bytes | Tick, None, str]:
        """Yield exactly *size* bytes of *src* plus padding; return their sha256 (hex).

        With *tick*, a :class:`Tick` follows every chunk (progress of data files).
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
                yield Tick(len(chunk), 0)
        if src.read(1):
            raise Conflict(f"{label} has more bytes than expected ({size}): it changed after "
                           "it was listed", item=label)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            yield bytes(pad)
        self.offset += size + pad
        return digest.hexdigest()

    def pad(self, size: int) -> bytes:
        """The padding after a member of *size* bytes whose data the caller yielded itself."""
        pad = -size % tarfile.BLOCKSIZE
        self.offset += size + pad
        return bytes(pad)

    def end(self) -> bytes:
        n = 2 * tarfile.BLOCKSIZE
        n += -(self.offset + n) % tarfile.RECORDSIZE
        self.offset += n
        return bytes(n)


def encrypt_stream(path: Path, chunks: Iterator, recipient, on_tick: TickCallback | None = None,
                   *, engine: AgeEngine | None = None, durable: bool = True) -> int:
    """Encrypt *chunks* to *recipient* into a new file *path* (0600); return its size.

    *durable* fsyncs the file before returning: for a file that is the only copy of what it
    holds (results); a staging bundle is a cache that every use authenticates end to end,
    and is written without (:func:`~.area.stage_files`).

    *recipient* is a pyrage recipient (:func:`~.keys.as_recipient`); *engine*
    defaults to :func:`~.engine.default_engine`. With the age CLI, this
    thread reads, hashes and frames the tar stream while age encrypts in its
    own process; with pyrage, a helper thread reads and hashes ahead of the
    encryption. *chunks* is closed in every case; the caller removes *path*
    on error.
    """
    engine = resolve_engine(engine)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        engine.encrypt(fd, chunks, recipient, on_tick)
        if durable:
            os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)
