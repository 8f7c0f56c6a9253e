"""The bubblewrap sandbox of the local backend, as a pure argument list.

Inside the sandbox the server sees the operating system read-only, its own
home read-write, a private ``/tmp``, and of the XNAT archive **only the scope's
directories, read-only**, under :data:`~spawner.plan.DATA_MOUNT` (the archive
root itself is never bound, so other projects do not exist there). Network is
shared (the hub's proxy must reach the server); PID, IPC and UTS namespaces
are private, and the sandbox dies with the spawner's process.
"""

from __future__ import annotations

import dataclasses
import posixpath

from xnat_bridge.errors import InvalidRequest

from .plan import DATA_MOUNT, ScopeMount, SpawnPlan

#: the operating system, read-only (``-try``: skipped when absent)
SYSTEM_RO = ("/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc")


@dataclasses.dataclass(frozen=True)
class SandboxSpec:
    """Host paths the sandbox needs besides the scope."""

    archive_root: str                 #: host path of the XNAT archive ("" = none: no mounts planned)
    home: str                         #: the user's home, bound read-write
    ro_paths: tuple[str, ...] = ()    #: extra read-only binds (the venv, the code, slurm.conf, munge)
    rw_paths: tuple[str, ...] = ()    #: extra read-write binds (the offload staging directory)
    bwrap: str = "bwrap"


def _abs(path: str, what: str) -> str:
    if not path.startswith("/") or "\x00" in path or "\n" in path:
        raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
    norm = posixpath.normpath(path)
    if norm in ("/", "/xnat") or norm.startswith(DATA_MOUNT):
        raise InvalidRequest(f"{what} {path!r} may not be bound into the sandbox")
    return norm


def mount_source(archive_root: str, mount: ScopeMount) -> str:
    """Host path of one scope directory; refuses anything that is not a clean sub-path."""
    parts = mount.source.split("/")
    if mount.source.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidRequest(f"scope path {mount.source!r} is not a clean archive sub-path")
    if mount.target != posixpath.join(DATA_MOUNT, mount.source):
        raise InvalidRequest(f"scope mount target {mount.target!r} is not under {DATA_MOUNT}")
    return posixpath.join(archive_root, mount.source)


def bwrap_args(plan: SpawnPlan, spec: SandboxSpec) -> list[str]:
    """``bwrap ... --`` for *plan*; the server command follows the ``--``."""
    args = [spec.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    for path in SYSTEM_RO:
        args += ["--ro-bind-try", path, path]
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
             "--tmpfs", "/xnat", "--dir", DATA_MOUNT]
    for path in spec.ro_paths:  # after the tmpfs mounts, so that e.g. /run/munge shows through
        path = _abs(path, "read-only path")
        args += ["--ro-bind-try", path, path]
    for path in spec.rw_paths:
        path = _abs(path, "read-write path")
        args += ["--bind-try", path, path]
    home = _abs(spec.home, "home")
    args += ["--bind", home, home]
    if plan.mounts:  # the plan decided to mount (then it also has XNAT_DATA); a root is needed
        archive = _abs(spec.archive_root, "archive root")
        for mount in sorted(plan.mounts, key=lambda m: m.target):
            args += ["--ro-bind", mount_source(archive, mount), mount.target]
    args += ["--chdir", home, "--"]
    return args
