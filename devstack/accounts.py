"""Unix accounts for the demo and the tests.

The local and Slurm backends run each server as the user's own Unix account,
as JupyterHub's LocalProcessSpawner and batchspawner do. Production sites have
these accounts already (LDAP/SSSD). The demo and the tests create their demo
users' accounts themselves with ``useradd`` — and say so.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import stat
from pathlib import Path, PurePosixPath

from xnat_bridge import procs
from xnat_bridge.errors import PermissionDenied

log = logging.getLogger(__name__)


def ensure_accounts(names: list[str], *, shell: str = "/bin/bash") -> list[str]:
    """Create missing accounts (with a home, no password); return the names created."""
    created = []
    for name in names:
        try:
            pwd.getpwnam(name)
            continue
        except KeyError:
            pass
        procs.run(["useradd", "--create-home", "--shell", shell, "--user-group", name])
        home = pwd.getpwnam(name).pw_dir
        os.chmod(home, 0o700)  # a user's workspace is theirs alone
        log.info("created Unix account %s for the demo users", name)
        created.append(name)
    return created


def install_file(name: str, source: Path, relative: str) -> bool:
    """Copy *source* to ``~name/relative`` (owned by the user, 0644) unless it exists.

    The demo runs this as root in homes the users control, so nothing there is trusted:
    every path component is opened relative to the directory before it with
    ``O_NOFOLLOW`` (a symbolic link is never followed), missing directories are created
    and handed to the user through their descriptor, and the file is created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` and given to the user with ``fchown`` before a byte
    is written. True when installed; False when a regular file is already there (left as
    it is); :class:`~xnat_bridge.errors.PermissionDenied` naming the path when a component
    is a symbolic link or not a directory / regular file (nothing is created or changed)."""
    entry = pwd.getpwnam(name)
    path = PurePosixPath(relative)
    if path.is_absolute() or not path.parts or any(p in (".", "..") for p in path.parts):
        raise ValueError(f"install_file needs a plain relative path, not {relative!r}")
    data = Path(source).read_bytes()
    dir_fd = _open_dir(entry.pw_dir, None, name, relative, f"~{name}")
    try:
        for i, part in enumerate(path.parts[:-1]):
            try:
                os.mkdir(part, 0o755, dir_fd=dir_fd)
                created = True
            except FileExistsError:
                created = False
            sub = _open_dir(part, dir_fd, name, relative, f"~{name}/{'/'.join(path.parts[:i + 1])}")
            os.close(dir_fd)
            dir_fd = sub
            if created:
                os.fchown(dir_fd, entry.pw_uid, entry.pw_gid)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path.name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            st = os.stat(path.name, dir_fd=dir_fd, follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                return False
            raise _refused(name, relative, f"~{name}/{relative}", st.st_mode) from None
        with os.fdopen(fd, "wb") as f:
            os.fchown(fd, entry.pw_uid, entry.pw_gid)
            os.fchmod(fd, 0o644)
            f.write(data)
    finally:
        os.close(dir_fd)
    log.info("installed %s for %s", relative, name)
    return True


def _open_dir(path: str, dir_fd: int | None, name: str, relative: str, shown: str) -> int:
    """A descriptor of the directory *path* (relative to *dir_fd*), never through a link."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)
        raise _refused(name, relative, shown, st.st_mode) from None


def _refused(name: str, relative: str, shown: str, mode: int) -> PermissionDenied:
    kind = "a symbolic link" if stat.S_ISLNK(mode) else "neither a directory nor a regular file"
    return PermissionDenied(f"Not installing {relative} for {name}: {shown} is {kind}, which this "
                            "helper never follows or replaces (remove it and run the demo again).")
