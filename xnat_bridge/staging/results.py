"""Results direction: a directory encrypted to the user's recipient.

Top layer: builds on :mod:`.keys`, :mod:`.stream` and :mod:`.common`.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import Conflict, InvalidRequest, NotFound
from ..files import safe_relpath
from .common import PARTIAL, fsync_dir, unlink_quiet
from .engine import AgeEngine
from .keys import as_recipient
from .stream import TarOut, encrypt_stream

log = logging.getLogger(__name__)


def _inside(root_real: str, path: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk(root_real: str, rel: str = "") -> Iterator[tuple[str, os.DirEntry]]:
    with os.scandir(os.path.join(root_real, rel) if rel else root_real) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        yield name, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root_real, name)


def _directory_chunks(root_real: str, shown: str, listing: list[dict]) -> Iterator[bytes]:
    tar = TarOut(time.time())
    for name, entry in _walk(root_real):
        safe_relpath(name)
        path = entry.path
        if entry.is_symlink():
            target = os.path.realpath(path)
            if not _inside(root_real, target):
                raise InvalidRequest(f"{name} in {shown} is a symbolic link to {os.readlink(path)!r}, "
                                     "outside the directory; refusing to archive it (copy the file "
                                     "in instead)", item=name)
            if not os.path.isfile(target):
                log.warning("not archiving %s in %s: a symbolic link to a directory or to nothing "
                            "(directory contents are archived under their own names)", name, shown)
                continue
            path = target
        elif entry.is_dir(follow_symlinks=False):
            yield tar.header(name, directory=True)
            continue
        elif not entry.is_file(follow_symlinks=False):
            log.warning("not archiving %s in %s: not a regular file (socket, FIFO or device)", name, shown)
            continue
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb", buffering=0) as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Conflict(f"{name} in {shown} changed while it was being archived", item=name)
            yield tar.header(name, st.st_size)
            sha = yield from tar.body(src, st.st_size, f"{name} in {shown}")
        listing.append({"name": name, "size": st.st_size, "sha256": sha})
    yield tar.end()


def encrypt_directory(src_dir: str | Path, recipient, out_path: str | Path, *,
                      engine: AgeEngine | None = None) -> dict:
    """Tar *src_dir* (PAX, streaming) and encrypt it with age to *recipient* into *out_path*.

    Written to ``<out_path>.partial`` (0600) and renamed when complete.
    Symbolic links that lead outside *src_dir* are refused (InvalidRequest);
    links to files inside are archived as copies, links to directories inside
    and special files are skipped with a warning. *engine* encrypts (default:
    :func:`~.engine.default_engine`). Returns ``{"path", "size",
    "files": [{"name", "size", "sha256"}]}``.
    """
    rcpt, _ = as_recipient(recipient)
    src = Path(src_dir)
    if not src.is_dir():
        raise NotFound(f"{src} is not a directory", item=str(src))
    root_real = os.path.realpath(src)
    out = Path(out_path)
    if _inside(root_real, os.path.realpath(out.parent)):
        raise InvalidRequest(f"write {out.name} outside the directory being archived ({src})")
    if os.path.lexists(out):
        raise Conflict(f"{out} already exists; choose a new name", item=str(out))
    partial = out.with_name(out.name + PARTIAL)
    listing: list[dict] = []
    try:
        size = encrypt_stream(partial, _directory_chunks(root_real, str(src), listing), rcpt,
                              engine=engine)
        if os.path.lexists(out):
            raise Conflict(f"{out} appeared while it was being written", item=str(out))
        os.rename(partial, out)
        fsync_dir(out.parent)
    except BaseException:
        unlink_quiet(partial)
        raise
    log.info("encrypted %s (%d files) into %s, %d bytes", src, len(listing), out, size)
    return {"path": str(out), "size": size, "files": listing}
