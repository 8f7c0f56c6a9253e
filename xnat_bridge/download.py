"""The researcher's explicit download of files into a directory they name.

This is the one place besides a running job where dataset files are written in
plaintext, and only because the researcher asked for it
(:meth:`xnat_bridge.connection.Connection.download`, audited there). Each
file is streamed from its :class:`~xnat_bridge.files.FileAccess` (which
verifies the size, and XNAT's md5; where a mount skips md5, this module checks
it) into ``DIR/name.part`` (created 0600, never
following a link), its sha256 computed on the way and compared with the
recorded one when there is one, then renamed to ``DIR/name``: a file appears
under its name only complete and verified. Files download concurrently; the
first failure stops the rest, every ``.part`` is removed, and the error names
the file.
"""

from __future__ import annotations

import concurrent.futures as cf
import errno
import hashlib
import os
import threading
from pathlib import Path
from typing import Callable

from .errors import Conflict, InvalidRequest, PermissionDenied, XnatHpcError
from .files import CHUNK, FileAccess, FileRef, safe_relpath


class _Stopped(Exception):
    """Another file failed: stop this one."""


def _target(dest: Path, name: str) -> Path:
    """``dest/name`` (directories created 0700), refusing names that would leave *dest*,
    also through links."""
    target = dest / safe_relpath(name)
    real_dest = os.path.realpath(dest)
    real_parent = os.path.realpath(target.parent)
    if real_parent != real_dest and not real_parent.startswith(real_dest.rstrip("/") + "/"):
        raise InvalidRequest(f"{name} would be written outside {dest} (a link in the way)", item=name)
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    return target


def _write_error(name: str, dest: Path, e: OSError) -> XnatHpcError:
    why = e.strerror or type(e).__name__
    if e.errno in (errno.EACCES, errno.EPERM):
        return PermissionDenied(f"cannot write {name} into {dest}: {why}", item=name)
    return XnatHpcError(f"writing {name} into {dest} failed: {why}; nothing was left under that name",
                        item=name)


def _one(access: FileAccess, ref: FileRef, name: str, dest: Path, stop: threading.Event,
         progress: Callable[[int], None] | None) -> tuple[Path, str]:
    if stop.is_set():
        raise _Stopped()
    try:
        target = _target(dest, name)
        part = target.with_name(target.name + ".part")
        if os.path.lexists(part):  # left by an interrupted earlier download
            os.unlink(part)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise _write_error(name, dest, e) from None
    done = False
    try:
        sha = hashlib.sha256()
        # the stream verifies the size, and XNAT's md5 unless the access skips it (the mount's
        # default, for staging throughput): then this explicit download checks it itself
        md5 = hashlib.md5() if ref.md5 and getattr(access, "check_md5", True) is False else None
        with os.fdopen(fd, "wb") as out, access.open(ref) as src:
            while chunk := src.read(CHUNK):
                if stop.is_set():
                    raise _Stopped()
                sha.update(chunk)
                if md5 is not None:
                    md5.update(chunk)
                try:
                    out.write(chunk)
                except OSError as e:
                    raise _write_error(name, dest, e) from None
                if progress:
                    progress(len(chunk))
            if md5 is not None and md5.hexdigest() != ref.md5.lower():
                raise Conflict(f"{name} does not match XNAT's md5: it changed in XNAT; create the "
                               "dataset again", item=name)
            if ref.sha256 and sha.hexdigest() != ref.sha256.lower():
                raise Conflict(f"{name} does not match its recorded sha256: it changed in XNAT; "
                               "create the dataset again", item=name)
            try:  # no fsync per file: it cost a quarter of the throughput (the rename is atomic)
                out.flush()
            except OSError as e:
                raise _write_error(name, dest, e) from None
        try:
            os.replace(part, target)
        except OSError as e:
            raise _write_error(name, dest, e) from None
        done = True
        return target, sha.hexdigest()
    finally:
        if not done:
            try:
                os.unlink(part)
            except FileNotFoundError:
                pass


def download_files(access: FileAccess, items: list[tuple[FileRef, str]], dest: str | Path, *,
                   workers: int = 4, progress: Callable[[int], None] | None = None) -> list[tuple[Path, str]]:
    """Write each ``(ref, name)`` of *items* to ``dest/name``, verified; ``[(path, sha256)]`` in order.

    *dest* is created (0700) when missing. Raises the first failure (naming the
    file) after every started file has stopped and removed its ``.part``.
    """
    dest = Path(dest)
    try:
        dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise _write_error(str(dest), dest, e) from None
    stop = threading.Event()
    with cf.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="xnat-download") as pool:
        futures = [pool.submit(_one, access, ref, name, dest, stop, progress) for ref, name in items]
        first: BaseException | None = None
        for fut in cf.as_completed(futures):
            if fut.cancelled():
                continue
            exc = fut.exception()
            if exc is not None and not isinstance(exc, _Stopped) and first is None:
                first = exc
                stop.set()
                for other in futures:
                    other.cancel()
    if first is not None:
        raise first
    return [f.result() for f in futures]
