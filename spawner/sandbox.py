"""The bubblewrap sandbox of a server, as a pure argument list: the local backend's, and the
per-job sandbox on a compute node of a Slurm profile that names ``archive_node_path``
(:mod:`spawner.slurm_script`; there the archive root is the nodes' path and the batch script,
run as root, is what starts ``bwrap``). One builder, :func:`bwrap_args`, serves both.

Inside the sandbox the server sees the operating system read-only, its own
home read-write, a private ``/tmp``, and of the XNAT archive **only the scope's
directories, read-only**, under :data:`~spawner.plan.DATA_MOUNT` (the archive
root itself is never bound, so other projects do not exist there). Network is
shared (the hub's proxy must reach the server); PID, IPC and UTS namespaces
are private, and the sandbox dies with the spawner's process.

The archive is closed to the users' accounts (files of a dedicated group,
under a directory only root can traverse), so the hub runs ``bwrap`` as root:
root sets up the read-only binds of the scope, and only then, inside the
sandbox, :func:`setpriv_args` drops to the user — their uid, gid and groups
plus the archive group (only when the scope is mounted), no capabilities
(none inheritable, an empty bounding set) and ``no_new_privs``. The archive
group is thus held only by processes that see nothing of the archive but the
scope; a shell, a batch job or a Slurm server of the same user does not have it.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import posixpath

from xnat_bridge.errors import InvalidRequest, XnatHpcError

from .plan import DATA_MOUNT, PLUGIN_DATA, DataLayout, ScopeMount, SpawnPlan, mount_target

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


@dataclasses.dataclass(frozen=True)
class RunAs:
    """Whom the server runs as inside the sandbox (``bwrap`` itself runs as root)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()      #: supplementary groups: the user's, plus the archive group
    setpriv: str = "setpriv"          #: util-linux ``setpriv``


def sandbox_identity(account, *, mounted: bool, archive_group: str, setpriv: str, setting: str,
                     log: logging.Logger, who: str, on_nodes: bool = False) -> RunAs:
    """Whom a sandbox drops to: *account*'s uid, gid and groups from the user database, plus
    *archive_group* when the scope is *mounted* (blocking: group database). A missing group
    refuses the start (the admin is told how to make it, *setting* naming where it is set);
    a user who holds the group outside the sandbox too is logged for the admin."""
    groups = os.getgrouplist(account.pw_name, account.pw_gid)
    if mounted and archive_group:
        try:
            archive_gid = grp.getgrnam(archive_group).gr_gid
        except KeyError:
            where = " on the node" if on_nodes else ""
            log.error("cannot start %s's server with its scope mounted%s: the group %r of %s.archive_group "
                      "does not exist; create it (groupadd --system %s%s) and give it the archive "
                      "(docs/admin.md)", who, where, archive_group, setting, archive_group,
                      ", the same gid on the nodes" if on_nodes else "")
            raise XnatHpcError("Your server was not started: this hub's access to the XNAT archive"
                               f"{' on the compute nodes' if on_nodes else ''} is not set up. The hub's "
                               "administrators have been told.") from None
        if archive_gid in groups:
            log.warning("%s is a member of the archive group %r outside the sandbox too: remove them "
                        "from it (gpasswd -d %s %s)", account.pw_name, archive_group, account.pw_name,
                        archive_group)
        groups.append(archive_gid)
    return RunAs(account.pw_uid, account.pw_gid, tuple(groups), setpriv)


def _abs(path: str, what: str) -> str:
    if not path.startswith("/") or "\x00" in path or "\n" in path:
        raise InvalidRequest(f"{what} must be an absolute path, got {path!r}")
    norm = posixpath.normpath(path)
    if norm in ("/", "/xnat") or norm.startswith(DATA_MOUNT):
        raise InvalidRequest(f"{what} {path!r} may not be bound into the sandbox")
    return norm


def mount_source(archive_root: str, mount: ScopeMount, layout: DataLayout = DataLayout.XNAT) -> str:
    """Host path of one scope directory; refuses anything that is not a clean sub-path or
    whose target is not where *layout* puts it."""
    parts = mount.source.split("/")
    if mount.source.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidRequest(f"scope path {mount.source!r} is not a clean archive sub-path")
    if mount.target != mount_target(layout, mount.source):
        raise InvalidRequest(f"scope mount target {mount.target!r} is not where the {layout.value} "
                             f"layout puts {mount.source!r}")
    return posixpath.join(archive_root, mount.source)


class _Tree:
    """What exists in the sandbox so far: bound trees (their contents come from the host)
    and directories made in it (``--dir``, tmpfs mounts)."""

    def __init__(self) -> None:
        self.binds: set[str] = set()
        self.dirs: set[str] = {"/", "/proc", "/dev", "/tmp", "/run", "/xnat", DATA_MOUNT}

    def parents(self, target: str) -> list[str]:
        """``--dir`` for each directory above *target* that is not there yet: made 0755
        explicitly, because ``bwrap`` run as root makes missing parents 0700, which the
        user could not traverse."""
        out: list[str] = []
        current = posixpath.dirname(target)
        missing = []
        while current not in self.dirs and not any(current == b or current.startswith(b + "/")
                                                   for b in self.binds):
            missing.append(current)
            current = posixpath.dirname(current)
        for directory in reversed(missing):
            self.dirs.add(directory)
            out += ["--dir", directory]
        return out

    def bind(self, option: str, source: str, target: str) -> list[str]:
        args = self.parents(target) + [option, source, target]
        self.binds.add(target)
        return args


def bwrap_args(plan: SpawnPlan, spec: SandboxSpec) -> list[str]:
    """``bwrap ... --`` for *plan*; the server command follows the ``--``. Every directory
    above a bind that the sandbox lacks is made with ``--dir`` (0755) first."""
    args = [spec.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
            "--unshare-uts", "--unshare-cgroup-try"]
    tree = _Tree()
    for path in SYSTEM_RO:
        args += tree.bind("--ro-bind-try", path, path)
    args += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run",
             "--tmpfs", "/xnat", "--dir", DATA_MOUNT]
    if plan.layout is DataLayout.PLUGIN:  # an empty /data, whatever the host has there
        args += ["--tmpfs", PLUGIN_DATA]
        tree.dirs.add(PLUGIN_DATA)
    for path in spec.ro_paths:  # after the tmpfs mounts, so that e.g. /run/munge shows through
        path = _abs(path, "read-only path")
        args += tree.bind("--ro-bind-try", path, path)
    for path in spec.rw_paths:
        path = _abs(path, "read-write path")
        args += tree.bind("--bind-try", path, path)
    home = _abs(spec.home, "home")
    args += tree.bind("--bind", home, home)
    if plan.layout is DataLayout.PLUGIN:  # the plugin's workspace: the user's home, read-write
        args += tree.bind("--bind", home, posixpath.join("/workspace", plan.user))
    if plan.mounts:  # the plan decided to mount (then it also has XNAT_DATA); a root is needed
        archive = _abs(spec.archive_root, "archive root")
        for mount in sorted(plan.mounts, key=lambda m: m.target):
            option = "--ro-bind-try" if mount.optional else "--ro-bind"
            args += tree.bind(option, mount_source(archive, mount, plan.layout), mount.target)
    args += ["--chdir", home, "--"]
    return args


def setpriv_args(run_as: RunAs) -> list[str]:
    """``setpriv ... --``: from root inside the sandbox to the user, for good (the server
    command follows the ``--``). Never root: uid or gid 0 is refused."""
    if run_as.uid <= 0 or run_as.gid <= 0 or any(g <= 0 for g in run_as.groups):
        raise InvalidRequest(f"a server may not run as root or with group 0 (uid {run_as.uid}, "
                             f"gid {run_as.gid}, groups {list(run_as.groups)}); ask the hub's "
                             "administrators to take the account out of group 0")
    groups = sorted(set(run_as.groups))
    return [run_as.setpriv, f"--reuid={run_as.uid}", f"--regid={run_as.gid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]


def sandbox_command(plan: SpawnPlan, spec: SandboxSpec, run_as: RunAs) -> list[str]:
    """``bwrap ... -- setpriv ... --``: the sandbox of *plan* built by root, the server in it as
    *run_as* (the server command follows the last ``--``)."""
    return bwrap_args(plan, spec) + setpriv_args(run_as)


def closed_to_users(ancestors: list[os.stat_result]) -> bool:
    """Whether a path is closed to every account but root: one of its directories (*ancestors*:
    ``stat`` of the path and each directory above it) belongs to root and grants group and
    others nothing (0700), so nobody else can look up anything beneath it (pure)."""
    return any(st.st_uid == 0 and not st.st_mode & 0o077 for st in ancestors)


# -- stopping: the server inside, not bubblewrap -------------------------------------------------

def children_of(pid: int, proc: str = "/proc") -> list[int]:
    """The processes whose parent is *pid* (from every ``/proc/N/stat``; *proc* for tests)."""
    out = []
    try:
        entries = os.listdir(proc)
    except OSError:
        return out
    for name in entries:
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc, name, "stat"), "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue  # gone meanwhile
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[1] == str(pid):
            out.append(int(name))
    return sorted(out)


def sandboxed_server_pids(bwrap_pid: int, proc: str = "/proc") -> list[int]:
    """The server's process(es) in the sandbox of *bwrap_pid*: the children of the sandbox's
    init, which ``bwrap --unshare-pid`` puts between itself and the command (empty when the
    sandbox is gone or its command has not started yet)."""
    return [server for init in children_of(bwrap_pid, proc) for server in children_of(init, proc)]
