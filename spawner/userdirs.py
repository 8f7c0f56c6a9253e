"""Per-user directories that the hub creates, as root, before a server starts.

The offload staging area (the profile file's ``offload.staging_dir``) is shared
storage. Its root belongs to root and is not writable by users (0755 or 0711),
so no account can create ``<staging>/carol`` before carol does and keep her
from offloading for good. Instead the local and Slurm backends call
:func:`ensure_user_dir` at every start (the hub is root there): it creates
``<staging>/<name>`` owned by the user, mode 0700, or accepts one that already
is exactly that — a directory, owned by the user, mode 0700 — and refuses
anything else (another owner, other modes, a symbolic link, a file).

Nothing is followed: the name is created and inspected relative to a
descriptor of the root (``mkdir``/``lstat`` with ``dir_fd``), opened with
``O_NOFOLLOW | O_DIRECTORY``, checked to be the very directory that was
inspected, and handed to the user through that descriptor (``fchown``,
``fchmod``). The server refuses a per-user directory that is not its own as
well (:func:`xnat_bridge.staging.area.user_dir`).

:func:`user_dir_problem` is the pure decision; :func:`ensure_user_dir` the one
privileged function (blocking file-system calls: run it in a thread).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import stat
from pathlib import Path

from xnat_bridge.errors import Conflict, InvalidRequest, NotFound, XnatHpcError

log = logging.getLogger(__name__)

#: what a per-user directory name may be (the server's rule, :mod:`xnat_bridge.staging.area`)
NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")

#: the one mode a per-user directory may have
PRIVATE = 0o700


def user_dir_problem(st: os.stat_result, uid: int) -> str:
    """Why the existing entry *st* (from ``lstat``) is not the private directory of *uid*;
    "" when it is: a directory (not a link), owned by *uid*, mode exactly 0700 (pure)."""
    if stat.S_ISLNK(st.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to the user (uid {uid})"
    mode = stat.S_IMODE(st.st_mode)
    if mode != PRIVATE:
        return f"has mode {mode:04o}, not 0700"
    return ""


def root_problem(st: os.stat_result) -> str:
    """Why the staging root *st* lets users squat other users' directories; "" when it does
    not: writable by neither group nor others (pure)."""
    if stat.S_IMODE(st.st_mode) & 0o022:
        return (f"is writable by other accounts (mode {stat.S_IMODE(st.st_mode):04o}): any account "
                "can create a directory under another user's name in it first")
    return ""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or name in (".", ".."):
        raise InvalidRequest(f"the name {name!r} cannot name a staging directory")
    return name


def ensure_user_dir(root: str | os.PathLike, name: str, uid: int, gid: int) -> Path:
    """``<root>/<name>``: created owned by *uid*:*gid*, mode 0700, or the existing one if it
    is exactly that. Raises :class:`Conflict` when something else is there (nothing is
    changed then), :class:`NotFound` when *root* does not exist. Blocking; needs root to
    hand a new directory to another uid."""
    _check_name(name)
    path = Path(root) / name
    try:
        root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"the staging area {root} does not exist; an administrator must create it "
                       "(owned by root, mode 0755, on storage the compute nodes share)",
                       item=str(root)) from None
    except NotADirectoryError:
        raise InvalidRequest(f"the staging area {root} is not a directory", item=str(root)) from None
    try:
        problem = root_problem(os.fstat(root_fd))
        if problem:
            log.warning("staging area %s %s; make it root-owned and mode 0755 (docs/admin.md)",
                        root, problem)
        created = True
        try:
            os.mkdir(name, PRIVATE, dir_fd=root_fd)
        except FileExistsError:
            created = False
        before = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
        if not created:
            problem = user_dir_problem(before, uid)
            if problem:
                raise Conflict(f"the staging directory {path} {problem}", item=str(path))
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
                raise Conflict(f"the staging directory {path} was replaced while it was checked",
                               item=str(path))
            if created:
                if st.st_uid != os.geteuid():  # not the directory this call made
                    raise Conflict(f"the staging directory {path} was replaced while it was made",
                                   item=str(path))
                os.fchown(fd, uid, gid)
                os.fchmod(fd, PRIVATE)
                log.info("created staging directory %s for uid %d (0700)", path, uid)
        finally:
            os.close(fd)
    finally:
        os.close(root_fd)
    return path


def staging_name(auth_state: dict | None, hub_name: str) -> str:
    """The per-user directory's name: the XNAT login, as the server names it (its XNAT
    connection's user), which is the hub name unless ``username_map`` maps it (pure)."""
    return str((auth_state or {}).get("xnat_user") or hub_name)


async def prepare_staging(spawner, plan, account) -> str | None:
    """The user's staging directory for *plan*'s server, made (as root) by :func:`ensure_user_dir`
    in a thread; None when the profile file's staging area does not exist (logged: the server
    starts, its offload is refused with the reason). A directory that is not the user's own
    refuses the start: audited, logged for the admin with the fix, raised for the user."""
    root = plan.server_env.offload.staging_dir
    if not root:
        return None
    name = staging_name(await spawner.user.get_auth_state(), spawner.user.name)
    if os.geteuid() not in (0, account.pw_uid):
        spawner.log.warning("the hub is not root: it cannot make %s's staging directory in %s; the "
                            "server makes it if it can", spawner.user.name, root)
        return None
    try:
        path = await asyncio.to_thread(ensure_user_dir, root, name, account.pw_uid, account.pw_gid)
    except NotFound as exc:
        spawner.log.warning("starting %s without a staging directory: %s", spawner.user.name, exc.message)
        return None
    except Conflict as exc:
        spawner.log.error("refused to start a server of %s: %s; it is not the private directory the hub "
                          "makes, so check who made it, then remove it (rm -r -- %s): the next start "
                          "makes it again, owned by %s, mode 0700", spawner.user.name, exc.message,
                          os.path.join(root, name), account.pw_name)
        await spawner.xnat_audit("spawn", "denied", items=plan.projects, detail=exc.message)
        raise Conflict(f"Your server was not started: {exc.message}, so it is not the private "
                       "directory this hub makes for you. The hub's administrators have been told; "
                       "ask them to remove it.", item=exc.item) from None
    except XnatHpcError as exc:
        spawner.log.error("refused to start a server of %s: %s", spawner.user.name, exc.message)
        raise type(exc)(f"Your server was not started: {exc.message}.", item=exc.item) from None
    except OSError as exc:
        spawner.log.error("refused to start a server of %s: cannot make its staging directory in %s: %s",
                          spawner.user.name, root, exc)
        raise XnatHpcError(f"Your server was not started: the hub could not make your staging "
                           f"directory in {root} ({exc.strerror}). The hub's administrators have "
                           "been told.") from None
    return str(path)
