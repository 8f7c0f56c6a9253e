"""One checked helper for private files and directories, and for files another account may
have planted.

The rule, the same everywhere (tested once, ``tests/unit/test_private_files.py``):

* **nothing is followed**: every open carries ``O_NOFOLLOW``; a symbolic link is refused,
  never read through;
* **nothing blocks**: a file in a directory someone else can write is looked at with
  ``lstat`` first and opened with ``O_NONBLOCK``, then ``fstat``-checked on the descriptor
  (and compared with the ``lstat``): a FIFO, socket or device is refused at once instead of
  hanging the reader (a FIFO with no writer blocks a plain ``open`` for ever);
* **private** means: owned by the expected account (this process's effective uid unless
  said otherwise) and no group or other permission bits (``0700`` directories, ``0600``
  files);
* **created private**: ``O_CREAT | O_EXCL | O_NOFOLLOW``, mode ``0600`` whatever the umask,
  replaced atomically through a temporary name and ``rename`` where a file is rewritten.

A refusal raises :class:`UnsafePath` (a :class:`~xnat_bridge.errors.PermissionDenied`)
whose message names the path and the fix; a missing path raises
:class:`~xnat_bridge.errors.NotFound`. Everything here blocks (file system calls): call
it from a thread on an event loop. Pure standard library; imports nothing of the hub.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from typing import BinaryIO

from .errors import NotFound, PermissionDenied

#: the most a :func:`read_regular` reads unless told otherwise (1 MiB)
DEFAULT_MAX_BYTES = 1 << 20
#: flags every open here adds
SAFE_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(PermissionDenied):
    """A path that is not what it must be: a link, a FIFO or device, another account's, or
    open to group or others."""

    reason = "unsafe_path"


def _shown(name, dir_fd: int | None) -> str:
    """*name* as a message shows it (with the directory of *dir_fd* where it is known)."""
    name = os.fsdecode(name)
    if dir_fd is None or os.path.isabs(name):
        return name
    try:
        return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
    except OSError:
        return name


def kind_of(mode: int) -> str:
    """What a file of *mode* is, in words (pure)."""
    for test, word in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return word
    return "not a regular file"


def problem(st: os.stat_result, *, directory: bool, owner_uid: int | None, private: bool) -> str:
    """Why *st* (from ``lstat`` or ``fstat``) is not an acceptable file or directory, or ""
    (pure). *owner_uid*: the account that must own it (None: any); *private*: no group or
    other permission bits."""
    wanted = stat.S_ISDIR if directory else stat.S_ISREG
    if not wanted(st.st_mode):
        return f"is {kind_of(st.st_mode)}, not a {'directory' if directory else 'regular file'}"
    if owner_uid is not None and st.st_uid != owner_uid:
        return f"belongs to uid {st.st_uid}, not to uid {owner_uid}"
    if private and st.st_mode & 0o077:
        return f"is open to group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return ""


def _fix(path: str, why: str, *, directory: bool, owner_uid: int | None) -> str:
    if why.startswith("is a symbolic link"):
        return f"remove the link ({path}); it is {'recreated' if directory else 'rewritten'} private"
    if why.startswith("belongs to uid"):
        return f"chown {owner_uid} {path}"
    if why.startswith("is open to group"):
        return f"chmod {'700' if directory else '600'} {path}"
    return f"remove {path}"


def _refuse(path: str, why: str, *, what: str, directory: bool, owner_uid: int | None) -> UnsafePath:
    fix = _fix(path, why, directory=directory, owner_uid=owner_uid)
    return UnsafePath(f"{what} {path} {why}; refusing to use it — fix it with: {fix}", item=path)


def _lstat(name, dir_fd: int | None) -> os.stat_result:
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


def _owner(owner_uid: int | None, private: bool) -> int | None:
    return owner_uid if owner_uid is not None else (os.geteuid() if private else None)


# -- directories ------------------------------------------------------------------------

def check_private_dir(path, *, create: bool = False, owner_uid: int | None = None,
                      what: str = "directory") -> os.stat_result:
    """*path* is a directory (not a link) owned by *owner_uid* (default: this process's
    effective uid) with no group or other bits; created ``0700`` first when *create* and
    absent. Its ``lstat``; :class:`UnsafePath` or :class:`NotFound` otherwise."""
    path = os.fsdecode(path)
    if create:
        try:
            os.mkdir(path, 0o700)
            fd = os.open(path, _DIR_FLAGS)  # a link swapped in meanwhile: ELOOP, refused below
            try:
                os.fchmod(fd, 0o700)  # whatever the umask
            finally:
                os.close(fd)
        except FileExistsError:
            pass
        except PermissionError:
            raise UnsafePath(f"cannot create {what} {path}: its parent is not writable for uid "
                             f"{os.geteuid()}; an administrator must create it (mode 0700)", item=path) from None
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotFound(f"{what} {path} does not exist; create it with: mkdir -m 700 {path}", item=path) from None
    owner = _owner(owner_uid, True)
    why = problem(st, directory=True, owner_uid=owner, private=True)
    if why:
        raise _refuse(path, why, what=what, directory=True, owner_uid=owner)
    return st


def open_directory(name, *, dir_fd: int | None = None, owner_uid: int | None = None,
                   private: bool = False, what: str = "directory") -> int:
    """A descriptor of the directory *name* (relative to *dir_fd* if given), opened with
    ``O_DIRECTORY | O_NOFOLLOW`` and checked on the descriptor: a directory, owned by
    *owner_uid* when given (or by this process when *private*), with no group or other
    bits when *private*. The caller closes it."""
    shown = lambda: _shown(name, dir_fd)  # noqa: E731 - only built for messages
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise NotFound(f"{what} {shown()} does not exist", item=shown()) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            try:
                why = f"is {kind_of(_lstat(name, dir_fd).st_mode)}, not a directory"
            except OSError:
                why = "is not a directory"
            raise _refuse(shown(), why, what=what, directory=True, owner_uid=owner_uid) from None
        raise
    try:
        owner = _owner(owner_uid, private)
        why = problem(os.fstat(fd), directory=True, owner_uid=owner, private=private)
        if why:
            raise _refuse(shown(), why, what=what, directory=True, owner_uid=owner)
    except BaseException:
        os.close(fd)
        raise
    return fd


# -- regular files ----------------------------------------------------------------------

def _fdopen_mode(flags: int) -> str:
    access = flags & os.O_ACCMODE
    if access == os.O_RDONLY:
        return "rb"
    if access == os.O_WRONLY:
        return "ab" if flags & os.O_APPEND else "wb"
    return "a+b" if flags & os.O_APPEND else "r+b"


def open_regular(name, *, dir_fd: int | None = None, flags: int = os.O_RDONLY,
                 max_bytes: int | None = None, owner_uid: int | None = None, private: bool = False,
                 what: str = "file") -> BinaryIO:
    """The regular file *name* (relative to *dir_fd* if given) opened without following a
    link and without blocking (``O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC`` added to *flags*;
    never ``O_CREAT``: see :func:`create_private_file`), as an unbuffered binary file object.

    Checked before opening (``lstat``: a FIFO, socket or device is never opened) and again
    on the descriptor (``fstat``, same file as the ``lstat``): a regular file, owned by
    *owner_uid* when given (or by this process when *private*), without group or other
    bits when *private*, at most *max_bytes* long when given."""
    if flags & os.O_CREAT:
        raise ValueError("open_regular never creates: use create_private_file")
    owner = _owner(owner_uid, private)
    shown = lambda: _shown(name, dir_fd)  # noqa: E731 - only built for messages
    try:
        before = _lstat(name, dir_fd)
    except FileNotFoundError:
        raise NotFound(f"{what} {shown()} does not exist", item=shown()) from None
    why = problem(before, directory=False, owner_uid=owner, private=private)
    if why:
        raise _refuse(shown(), why, what=what, directory=False, owner_uid=owner)
    try:
        fd = os.open(name, flags | SAFE_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        raise NotFound(f"{what} {shown()} does not exist", item=shown()) from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EWOULDBLOCK):  # swapped for a link / FIFO
            raise _refuse(shown(), "changed into something that is not a regular file while it was "
                                   "being opened", what=what, directory=False, owner_uid=owner) from None
        raise
    try:
        st = os.fstat(fd)
        why = problem(st, directory=False, owner_uid=owner, private=private)
        if not why and (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            why = "was replaced while it was being opened"
        if why:
            raise _refuse(shown(), why, what=what, directory=False, owner_uid=owner)
        if max_bytes is not None and st.st_size > max_bytes:
            raise UnsafePath(f"{what} {shown()} is {st.st_size} bytes, more than the {max_bytes} it may be; "
                             "refusing to read it — remove it or replace it with a smaller one", item=shown())
        # a regular file ignores O_NONBLOCK for reads and writes; cleared all the same
        os.set_blocking(fd, True)
        return os.fdopen(fd, _fdopen_mode(flags), buffering=0)
    except BaseException:
        os.close(fd)
        raise


def read_regular(name, *, dir_fd: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 owner_uid: int | None = None, private: bool = False, what: str = "file") -> bytes:
    """The bytes of the regular file *name* (:func:`open_regular`), at most *max_bytes*: a
    longer file (or one that grew while read) is refused, never cut short silently."""
    with open_regular(name, dir_fd=dir_fd, max_bytes=max_bytes, owner_uid=owner_uid, private=private,
                      what=what) as f:
        chunks, size = [], 0
        while True:
            chunk = f.read(min(1 << 16, max_bytes + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                shown = _shown(name, dir_fd)
                raise UnsafePath(f"{what} {shown} grew past {max_bytes} bytes while it was read; "
                                 "refusing it — try again once it is complete", item=shown)
        return b"".join(chunks)


def check_private_file(path, *, what: str = "file", dir_fd: int | None = None) -> os.stat_result:
    """*path* is a regular file (not a link), owned by this process's effective uid, with no
    group or other bits (``0600``); its ``lstat``, else :class:`UnsafePath` / :class:`NotFound`."""
    owner = os.geteuid()
    shown = _shown(path, dir_fd)
    try:
        st = _lstat(path, dir_fd)
    except FileNotFoundError:
        raise NotFound(f"{what} {shown} does not exist", item=shown) from None
    why = problem(st, directory=False, owner_uid=owner, private=True)
    if why:
        raise _refuse(shown, why, what=what, directory=False, owner_uid=owner)
    return st


def read_private_file(path, *, what: str = "file", max_bytes: int = DEFAULT_MAX_BYTES,
                      dir_fd: int | None = None) -> bytes:
    """The bytes of a private file (:func:`check_private_file`'s rule, checked on the open
    descriptor): a password file, a key."""
    return read_regular(path, dir_fd=dir_fd, max_bytes=max_bytes, private=True, what=what)


def create_private_file(path, data: bytes, *, replace: bool = False, dir_fd: int | None = None) -> None:
    """Write *data* to a new file *path*, mode ``0600`` (whatever the umask), created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and synced. With *replace*, an existing file is
    replaced atomically: the data goes to a new temporary name beside it, then ``rename``
    (a reader sees the old file or the new one, never half of one); without, an existing
    *path* (a link included) raises ``FileExistsError``."""
    path = os.fsdecode(path)
    target = path
    if replace:
        head, tail = os.path.split(path)
        target = os.path.join(head, f".{tail}.{secrets.token_hex(6)}.tmp")
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | SAFE_FLAGS, 0o600, dir_fd=dir_fd)
    try:
        try:
            os.set_blocking(fd, True)
            os.fchmod(fd, 0o600)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if replace:
            os.rename(target, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(target, dir_fd=dir_fd)
        except OSError:
            pass
        raise
