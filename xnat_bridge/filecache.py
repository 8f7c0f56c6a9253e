"""The admin's opt-in file cache: plaintext copies of XNAT files on node-local storage.

Off by default: nothing caches a file unless the admin sets
``c.XnatHpcExtension.file_cache_dir`` to node-local storage (a local SSD of
the node the server runs on, e.g. ``/local/scratch``). Then

* the root must be an existing absolute directory outside the home directory
  (the home directory is shared storage, read by storage admins and backed
  up: :func:`check_cache_root` refuses it);
* each server process gets a directory of its own below the root,
  ``xnat-hpc-cache-{uid}-{pid}-{random}``, created 0700, holding a ``.lock``
  that the process keeps ``flock``-ed while it runs;
* the server wipes its directory when it stops (:meth:`FileCache.close`, also
  at interpreter exit), and a server starting wipes this user's directories
  whose lock nobody holds any more (their server died);
* entries are keyed by XNAT host, URI, XNAT md5 and size (a file changed in
  XNAT gets a new entry), written 0600 while the first reader streams the file
  and made visible only when that read verified the whole file; a cached
  entry is verified again (size, md5) each time it is read.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import hashlib
import io
import logging
import os
import pwd
import secrets
import shutil
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidRequest, NotFound
from .files import FileAccess, FileRef, LocalFileStream

log = logging.getLogger(__name__)

PREFIX = "xnat-hpc-cache-"
LOCK_NAME = ".lock"
#: a directory of ours without a lock file is another server's that is just starting, unless older
_UNLOCKED_GRACE_S = 60.0


def _homes() -> set[str]:
    homes = {os.path.expanduser("~")}
    try:
        homes.add(pwd.getpwuid(os.getuid()).pw_dir)
    except KeyError:
        pass
    return {os.path.realpath(h) for h in homes if h and h != "/"}


def check_cache_root(path: str | Path) -> Path:
    """The real path of a cache root; InvalidRequest when it is relative, under the
    home directory, or not an existing directory."""
    text = str(path)
    if not os.path.isabs(text):
        raise InvalidRequest(f"file_cache_dir must be an absolute path on node-local storage, got {text!r}")
    real = os.path.realpath(text)
    for home in _homes():
        if real == home or real.startswith(home.rstrip("/") + "/"):
            raise InvalidRequest(
                f"file_cache_dir {text} is in the home directory {home}: the home directory is shared "
                "storage, and cached files are plaintext; give a directory on node-local storage "
                "(e.g. /local/scratch) or leave file_cache_dir empty (no cache)", item=text)
    if not os.path.isdir(real):
        raise NotFound(f"file_cache_dir {text} does not exist; the admin creates it on node-local "
                       "storage (e.g. mkdir -m 1777 /local/scratch/xnat-hpc)", item=text)
    return Path(real)


def _lock_free(lock_path: Path) -> bool:
    """Whether nobody holds *lock_path* (its server died); False when it cannot be opened."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # releases the lock we may have taken


def wipe_stale(root: Path, uid: int | None = None) -> list[str]:
    """Remove this user's cache directories under *root* whose server is gone; their names."""
    uid = os.getuid() if uid is None else uid
    mine = f"{PREFIX}{uid}-"
    wiped = []
    try:
        entries = list(os.scandir(root))
    except OSError as e:
        log.warning("file cache: cannot list %s: %s", root, e.strerror)
        return wiped
    for entry in entries:
        if not entry.name.startswith(mine):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            continue
        path = Path(entry.path)
        lock = path / LOCK_NAME
        stale = (_lock_free(lock) if os.path.lexists(lock)
                 else time.time() - st.st_mtime > _UNLOCKED_GRACE_S)
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            wiped.append(entry.name)
    if wiped:
        log.info("file cache: wiped %d directories of servers that are gone under %s", len(wiped), root)
    return wiped


class FileCache:
    """One server process's cache directory below *root* (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = check_cache_root(root)
        self.wiped = wipe_stale(self.root)
        name = f"{PREFIX}{os.getuid()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.dir = self.root / name
        os.mkdir(self.dir, 0o700)
        os.chmod(self.dir, 0o700)
        self._lock_fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_EXCL
                                | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._closed = False
        self._guard = threading.Lock()
        atexit.register(self.close)
        log.info("file cache: %s (node-local, wiped when this server stops)", self.dir)

    def entry(self, host: str, ref: FileRef) -> Path:
        key = hashlib.sha256(f"{host}\n{ref.uri}\n{ref.md5}\n{ref.size}".encode()).hexdigest()
        return self.dir / key[:2] / key[2:]

    def close(self) -> None:
        """Wipe the directory and release the lock (idempotent)."""
        with self._guard:
            if self._closed:
                return
            self._closed = True
        shutil.rmtree(self.dir, ignore_errors=True)
        try:
            os.close(self._lock_fd)
        except OSError:
            pass
        atexit.unregister(self.close)

    @property
    def closed(self) -> bool:
        return self._closed


class _TeeStream(io.RawIOBase):
    """Reads *inner* and writes what it delivers into *part*; renames it to *final*
    when *inner* verified the whole file, removes it otherwise."""

    def __init__(self, inner: BinaryIO, part: Path, final: Path):
        super().__init__()
        self._inner, self._part, self._final = inner, part, final
        self._out = os.fdopen(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                                      | os.O_CLOEXEC, 0o600), "wb")
        self._lock = threading.Lock()

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        with self._lock:
            try:
                data = self._inner.read(n)
            except BaseException:  # a file that failed verification is never cached
                if self._out is not None:
                    self._abandon()
                raise
            if self._out is None:
                return data
            try:
                if data:
                    self._out.write(data)
                if not data or (n is None or n < 0):  # the inner stream verified its end
                    self._out.close()
                    self._out = None
                    os.replace(self._part, self._final)
            except OSError as e:  # the cache is full or gone: go on without it
                log.warning("file cache: cannot write %s (%s); reading on without the cache",
                            self._final, e.strerror)
                self._abandon()
            return data

    def _abandon(self) -> None:
        if self._out is not None:
            try:
                self._out.close()
            except OSError:
                pass
            self._out = None
        try:
            os.unlink(self._part)
        except FileNotFoundError:
            pass

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()  # first, without the lock: ends a read blocked in another thread
        with self._lock:
            if self._out is not None:
                self._abandon()
        super().close()


class CachedAccess(FileAccess):
    """*inner* (REST) with *cache*: a cached, verified copy when there is one, else a
    stream of *inner* that fills the cache as it is read."""

    def __init__(self, inner: FileAccess, cache: FileCache, host: str):
        self.inner, self.cache, self.host = inner, cache, host
        self.mode = inner.mode

    def open(self, ref: FileRef) -> BinaryIO:
        if self.cache.closed:
            return self.inner.open(ref)
        final = self.cache.entry(self.host, ref)
        try:
            return LocalFileStream(final, ref, where="the file cache")
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ELOOP:
                raise
        inner = self.inner.open(ref)
        try:
            final.parent.mkdir(mode=0o700, exist_ok=True)
            return _TeeStream(inner, final.with_name(f"{final.name}.{secrets.token_hex(4)}.part"), final)
        except OSError as e:  # the cache is full or gone: read without it
            log.warning("file cache: cannot write %s (%s); reading without the cache", final, e.strerror)
            return inner

    def close(self) -> None:
        self.inner.close()


