"""The job's node-local directory on a compute node, used through descriptors only.

The job script's prologue makes it with ``mktemp -d`` (a fresh directory with
an unpredictable name, mode 0700; ``mkdir`` never accepts an existing entry)
under the node-local base and exports its path as ``$XNAT_HPC_JOB_DIR``. The
node guard and the worker then open it with :meth:`JobDir.open`, which trusts
nothing about the path:

* every directory from ``/`` down to the base is opened one component at a
  time (``O_NOFOLLOW``) and must belong to root or to the job's uid and be
  writable by nobody else, unless it has the sticky bit (``/tmp``): nobody but
  root and the job's uid can rename, replace or enter anything on the way;
* the job directory itself must be a directory (not a link), owned by the
  job's uid, mode exactly 0700, on a node-local file system (not NFS, Lustre,
  GPFS, BeeGFS, CephFS, SMB, … — read from the kernel's mount table for the
  descriptor's own mount).

What lies below it is made and opened relative to its descriptor
(``mkdir``/``open`` with ``dir_fd``, ``O_NOFOLLOW``, ``O_EXCL``) and removed the
same way (:meth:`JobDir.wipe`, :meth:`JobDir.remove`): a wipe never follows a
link and never removes what took the directory's name after it was opened.
A directory that fails a check raises :class:`UnsafeJobDir`, which says what
was found and what the admin sets instead; nothing is decrypted then.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import stat

from ..errors import Conflict

JOB_DIR_VAR = "XNAT_HPC_JOB_DIR"
#: set by the node guard in the worker's environment: ``<st_dev>:<st_ino>`` of the directory
#: it checked and will wipe, so that the worker uses exactly that one
JOB_DIR_ID_VAR = "XNAT_HPC_JOB_DIR_ID"

#: file systems shared between nodes (``/proc/self/mountinfo`` type names): a job directory
#: there would put plaintext on shared storage
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "afs", "9p", "lustre", "gpfs", "beegfs",
    "ceph", "fuse.ceph", "fuse.ceph-fuse", "fuse.cephfs", "glusterfs", "fuse.glusterfs",
    "fuse.sshfs", "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "panfs", "pvfs2",
    "orangefs", "wekafs", "ocfs2", "gfs2", "davfs", "fuse.davfs2",
})

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FIX = ("set XNAT_HPC_NODE_TMPDIR (or the node's TMPDIR) to node-local storage that belongs to root "
        "and is writable by others only with the sticky bit, such as /tmp, or a per-job /tmp "
        "(job_container/tmpfs); see docs/admin.md")


class UnsafeJobDir(Conflict):
    """The job's node-local directory (or a directory above it) could be changed by
    someone other than the job's uid and root, or lies on shared storage."""

    reason = "unsafe_job_dir"


def _describe(st: os.stat_result) -> str:
    return f"owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):04o}"


def mount_fs_type(fd: int) -> str | None:
    """The file system type of the mount that *fd* lies on (``/proc/self/fdinfo`` gives the
    descriptor's mount id, ``/proc/self/mountinfo`` its type); None when unknown."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as f:
            mnt_id = next((ln.split()[1] for ln in f if ln.startswith("mnt_id:")), None)
        if mnt_id is None:
            return None
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] == mnt_id and "-" in fields:
                    return fields[fields.index("-") + 1]
    except OSError:
        return None
    return None


def _check_above(st: os.stat_result, where: str, uid: int) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeJobDir(f"{where}, above the job's node-local directory, is not a directory; {_FIX}",
                           item=where)
    if st.st_uid not in (0, uid):
        raise UnsafeJobDir(f"{where}, above the job's node-local directory, belongs to uid {st.st_uid} "
                           f"(not root, not this job's uid {uid}), who could replace what lies below "
                           f"it; {_FIX}", item=where)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise UnsafeJobDir(f"{where}, above the job's node-local directory, is writable by others "
                           f"without the sticky bit ({_describe(st)}): anyone could rename the job's "
                           f"directory and put their own in its place; {_FIX}", item=where)


def _walk_to(real: str, uid: int) -> int:
    """Open every component of the absolute real path *real* from ``/``, without following a
    link, checking each as a directory above the job's; return an ``O_PATH`` descriptor of it."""
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    where = "/"
    try:
        _check_above(os.fstat(fd), where, uid)
        for part in [p for p in real.split("/") if p]:
            where = os.path.join(where, part)
            try:
                nxt = os.open(part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as e:
                raise UnsafeJobDir(f"{where}, above the job's node-local directory, cannot be opened as "
                                   f"a directory without following a link ({e.strerror}); {_FIX}",
                                   item=where) from None
            os.close(fd)
            fd = nxt
            _check_above(os.fstat(fd), where, uid)
        return fd
    except BaseException:
        os.close(fd)
        raise


class JobDir:
    """An open, checked node-local job directory: :attr:`fd` (``O_RDONLY``), its path, its
    parent's descriptor (``O_PATH``) and its name there."""

    def __init__(self, path: str, parent_fd: int, name: str, fd: int):
        self.path, self.parent_fd, self.name, self.fd = path, parent_fd, name, fd
        st = os.fstat(fd)
        self.ident = f"{st.st_dev}:{st.st_ino}"

    @classmethod
    def open(cls, path: str, *, uid: int | None = None) -> JobDir:
        """Open and check the existing job directory *path* (see the module's docstring)."""
        uid = os.getuid() if uid is None else uid
        if not path or not os.path.isabs(path):
            raise UnsafeJobDir(f"the job's node-local directory {path!r} is not an absolute path; "
                               "run the job through the job script of xnat-hpc-hub", item=path or None)
        parent, name = os.path.split(os.path.normpath(path))
        parent_fd = _walk_to(os.path.realpath(parent), uid)
        try:
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UnsafeJobDir(f"the job's node-local directory {path} is a symbolic link or "
                                       "not a directory; refusing to use it", item=path) from None
                raise UnsafeJobDir(f"the job's node-local directory {path} cannot be opened "
                                   f"({e.strerror}); {_FIX}", item=path) from None
            return cls._checked(os.path.join(os.path.realpath(parent), name), parent_fd, name, fd, uid)
        except BaseException:
            os.close(parent_fd)
            raise

    @classmethod
    def create(cls, base: str, prefix: str = "xnat-hpc-", *, uid: int | None = None) -> JobDir:
        """Make a fresh 0700 directory with an unpredictable name under *base* (checked like
        the directories above a job directory) and open it. For a worker started without
        the job script's prologue."""
        uid = os.getuid() if uid is None else uid
        real = os.path.realpath(base)
        parent_fd = _walk_to(real, uid)
        try:
            for _ in range(16):
                name = prefix + secrets.token_urlsafe(12).replace("-", "x").replace("_", "y")
                try:
                    os.mkdir(name, 0o700, dir_fd=parent_fd)
                    break
                except FileExistsError:
                    continue
            else:
                raise UnsafeJobDir(f"could not create a fresh directory in {real}", item=real)
            fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
            return cls._checked(os.path.join(real, name), parent_fd, name, fd, uid)
        except BaseException:
            os.close(parent_fd)
            raise

    @classmethod
    def _checked(cls, path: str, parent_fd: int, name: str, fd: int, uid: int) -> JobDir:
        """The open directory *fd* once :meth:`_check` passed; *fd* is closed if it does not."""
        try:
            cls._check(fd, path, uid)
            return cls(path, parent_fd, name, fd)
        except BaseException:
            os.close(fd)
            raise

    @staticmethod
    def _check(fd: int, path: str, uid: int) -> None:
        st = os.fstat(fd)
        if st.st_uid != uid or stat.S_IMODE(st.st_mode) != 0o700:
            raise UnsafeJobDir(f"the job's node-local directory {path} is not this job's own private "
                               f"directory ({_describe(st)}; expected owner uid {uid}, mode 0700): "
                               "someone else made it or changed it; refusing to use it", item=path)
        fs = mount_fs_type(fd)
        if fs in SHARED_FS_TYPES:
            raise UnsafeJobDir(f"the job's node-local directory {path} is on a shared file system "
                               f"({fs}): plaintext would leave the node; {_FIX}", item=path)

    def check_same(self, ident: str | None) -> None:
        """Refuse when the node guard checked (and will wipe) another directory than this one."""
        if ident and ident != self.ident:
            raise UnsafeJobDir(f"the job's node-local directory {self.path} is not the one the node "
                               "guard opened: it was replaced; refusing to use it", item=self.path)

    # -- below the directory: always relative to descriptors -----------------------------
    def make_private(self, prefix: str) -> tuple[str, int]:
        """A new 0700 subdirectory with an unpredictable name; returns (name, O_RDONLY fd)."""
        name = prefix + secrets.token_hex(8)
        os.mkdir(name, 0o700, dir_fd=self.fd)
        try:
            return name, os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except BaseException:
            self.remove(name)
            raise

    def remove(self, name: str) -> None:
        """Remove the entry *name* of the directory, whatever it is, following no link."""
        try:
            st = os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(name, dir_fd=self.fd, ignore_errors=True)
        else:
            try:
                os.unlink(name, dir_fd=self.fd)
            except FileNotFoundError:
                pass

    def wipe(self) -> None:
        """Remove everything in the directory, then the directory itself if its name in the
        parent still holds it. Safe to call more than once (and after the prologue's trap)."""
        try:
            names = os.listdir(self.fd)
        except OSError:
            names = []
        for name in names:
            self.remove(name)
        try:
            st = os.stat(self.name, dir_fd=self.parent_fd, follow_symlinks=False)
        except OSError:
            return
        if f"{st.st_dev}:{st.st_ino}" == self.ident:
            try:
                os.rmdir(self.name, dir_fd=self.parent_fd)
            except OSError:
                pass

    def close(self) -> None:
        for fd in (self.fd, self.parent_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self.fd = self.parent_fd = -1
