"""A real single-node Slurm cluster for the demo and the tests.

``xnat-hpc-hub slurm up`` starts Debian's ``munged``, ``slurmctld`` and
``slurmd`` directly (no systemd) with a generated one-node ``slurm.conf`` that
has two partitions: ``interactive`` (default, for notebook servers) and
``secure`` (for offloaded training jobs). State, spool, logs and pid files all
live under one run directory. Every call is safe to repeat.

The configuration is written to ``/etc/slurm/slurm.conf`` as well, because
every Slurm client (``sbatch``, ``squeue``; batchspawner and dask-jobqueue run
them as various Unix users) reads that path. A file there that this tool did
not write is never overwritten: ``up`` refuses and says why.

This is a development cluster: ``SlurmUser=root``, no accounting. It uses the
isolation a secure partition needs (docs/admin.md, "A secure partition") where
this machine allows it, and says in ``slurm.conf`` what it leaves out and why:

* ``ProctrackType=proctrack/cgroup``, ``TaskPlugin=task/cgroup`` (a
  ``cgroup.conf`` next to ``slurm.conf``: cores, memory and devices constrained)
  when the cgroup v1 controllers are mounted and writable by root
  (:func:`probe_cgroups`; cgroup v2 alone would need systemd here);
* ``JobContainerType=job_container/tmpfs`` with ``PrologFlags=Contain`` (a
  ``job_container.conf``: every job gets a private ``/tmp`` and ``/dev/shm``,
  made under ``<run dir>/jobtmp`` and removed by Slurm when the job ends) when
  root can make a mount namespace (:func:`probe_mount_namespaces`);
* never ``OverSubscribe=EXCLUSIVE``: the one node carries both partitions, so a
  notebook server in ``interactive`` that submits to ``secure`` would wait for
  its own node forever.

The node is this machine, so it "mounts" devxnat's archive where devxnat keeps it
(closed to the users' accounts, as on a site's nodes): a Slurm profile whose
``archive_node_path`` names it runs its server in a sandbox on the node
(:mod:`spawner.slurm_script`); ``up`` makes the root-only directory those jobs write
their output to (:data:`SERVER_LOG_DIR`, ``c.XnatSlurmSpawner.sandbox_log_dir``).

Production sites point the hub at their own Slurm.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from pathlib import Path

from xnat_bridge.errors import CommandFailed, SlurmError
from xnat_bridge.procs import run, which

from .daemons import DaemonStatus, alive, read_pid, terminate

log = logging.getLogger(__name__)

MANAGED_MARKER = "# managed by xnat-hpc-hub slurm up"
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")
DEFAULT_RUN_DIR = Path("/var/lib/xnat-hpc-hub/slurm")
MUNGE_SOCKET_DIR = Path("/run/munge")
MUNGE_KEY = Path("/etc/munge/munge.key")
#: root's directory on the node for the output of sandboxed server jobs (they start as root and
#: must not write in a user's home): ``c.XnatSlurmSpawner.sandbox_log_dir`` of the dev hubs
SERVER_LOG_DIR = Path("/var/log/xnat-hpc-hub/slurm-servers")
INSTALL_HINT = (
    "install them with `make install` (or `apt-get install slurm-wlm munge` as root)"
)


@dataclasses.dataclass(frozen=True)
class SlurmDevConfig:
    """Everything the generated ``slurm.conf`` depends on."""

    run_dir: Path
    controller_host: str
    node_name: str = "xnat-node1"
    cpus: int = 1
    memory_mb: int = 1024
    cluster_name: str = "xnathpc"
    ctld_port: int = 6817
    slurmd_port: int = 6818
    interactive_max_time: str = "8:00:00"
    secure_max_time: str = "2-00:00:00"
    #: the node-local scratch a job may fill (``TmpDisk``, MB = MiB, of ``TmpFS``); 0 = not declared
    tmp_disk_mb: int = 0
    tmp_fs: str = "/tmp"
    #: ``proctrack/cgroup`` + ``task/cgroup`` (with ``cgroup.conf``)
    cgroups: bool = True
    #: ``job_container/tmpfs`` (with ``job_container.conf``) + ``PrologFlags=Contain``
    job_container: bool = True
    #: why a setting of a secure partition is not used on this machine (comments in slurm.conf)
    not_used: tuple[str, ...] = ()
    #: the node's directory for the output of sandboxed server jobs (root's, 0700)
    server_log_dir: Path = SERVER_LOG_DIR

    @classmethod
    def for_this_machine(cls, run_dir: Path) -> "SlurmDevConfig":
        """CPUs and memory of this machine (leaving 512 MB to the system), and the size of its
        /tmp file system as the node's TmpDisk (whole GiB, never above what slurmd finds, so
        the node is not drained for "Low TmpDisk")."""
        mem_kb = 0
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
                    break
        st = os.statvfs(cls.tmp_fs)
        no_cgroups, no_namespaces = probe_cgroups(), probe_mount_namespaces()
        not_used = []
        if no_cgroups:
            not_used.append(f"proctrack/cgroup, task/cgroup: {no_cgroups}")
        if no_namespaces:
            not_used.append(f"job_container/tmpfs: {no_namespaces}")
        return cls(
            run_dir=Path(run_dir),
            controller_host=socket.gethostname().split(".")[0],
            cpus=os.cpu_count() or 1,
            memory_mb=max(256, mem_kb // 1024 - 512),
            tmp_disk_mb=st.f_blocks * st.f_frsize // 2**30 * 1024,
            cgroups=no_cgroups is None,
            job_container=no_namespaces is None,
            not_used=tuple(not_used),
        )

    # paths under the run directory
    @property
    def conf_path(self) -> Path:
        return self.run_dir / "etc" / "slurm.conf"

    @property
    def state_dir(self) -> Path:
        return self.run_dir / "state"

    @property
    def spool_dir(self) -> Path:
        return self.run_dir / "spool"

    @property
    def log_dir(self) -> Path:
        return self.run_dir / "log"

    @property
    def pid_dir(self) -> Path:
        return self.run_dir / "run"

    @property
    def job_tmp_dir(self) -> Path:
        """``BasePath`` of job_container/tmpfs: the jobs' private /tmp live below it."""
        return self.run_dir / "jobtmp"

    @property
    def cgroup_conf_path(self) -> Path:
        return self.conf_path.parent / "cgroup.conf"

    @property
    def job_container_conf_path(self) -> Path:
        return self.conf_path.parent / "job_container.conf"

    def pid_file(self, daemon: str) -> Path:
        return self.pid_dir / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.log_dir / f"{daemon}.log"


def _fs_type(path: Path) -> str | None:
    """The type of the file system mounted exactly at *path*, or None."""
    found = None
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and fields[4] == str(path) and "-" in fields:
                    found = fields[fields.index("-") + 1]
    except OSError:
        return None
    return found


CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V1_CONTROLLERS = ("freezer", "cpuset", "memory", "devices")


def probe_cgroups(root: Path = CGROUP_ROOT) -> str | None:
    """None when Slurm's cgroup plugins can run on this machine, else why not (one sentence).

    Slurm 22.05 (Debian 12) uses cgroup v1 here: the controllers it needs must be mounted
    under *root* and root must be able to make a cgroup in each. Its cgroup/v2 plugin needs
    systemd to delegate a subtree to slurmd, so a cgroup-v2-only machine without systemd
    cannot use them."""
    fs = _fs_type(root)
    if fs == "cgroup2":
        if Path("/run/systemd/system").is_dir():
            return None
        return (f"{root} is cgroup v2 only and systemd is not running; Slurm 22.05's cgroup/v2 "
                "plugin needs systemd to delegate a cgroup to slurmd")
    if fs is None:
        return f"no cgroup file system is mounted at {root}"
    if os.geteuid() != 0:
        return "only root can tell whether cgroups are usable"
    for ctrl in CGROUP_V1_CONTROLLERS:
        where = root / ctrl
        if _fs_type(where) != "cgroup":
            return f"the cgroup v1 controller {ctrl!r} is not mounted at {where}"
        probe = where / f"xnat-hpc-probe-{os.getpid()}"
        try:
            probe.mkdir()
            probe.rmdir()
        except OSError as e:
            return f"root cannot create a cgroup in {where} ({e.strerror})"
    return None


def probe_mount_namespaces() -> str | None:
    """None when root can make a private mount namespace (job_container/tmpfs needs one per
    job), else why not."""
    if os.geteuid() != 0:
        return "only root can tell whether mount namespaces are usable"
    unshare = which("unshare")
    if unshare is None:
        return "unshare (util-linux) is not installed to check for mount namespaces"
    try:
        run([unshare, "--mount", "--propagation", "private", "true"], timeout=10)
    except CommandFailed as e:
        return f"root cannot make a mount namespace here ({e.message.strip()[:200]})"
    return None


def slurm_conf(cfg: SlurmDevConfig) -> str:
    """The ``slurm.conf`` text for *cfg* (pure; golden-tested)."""
    isolation = ["# secure-partition isolation (docs/admin.md, \"A secure partition\"); cgroup.conf and",
                 "# job_container.conf lie next to this file"]
    isolation += [f"# not used on this machine: {why}" for why in cfg.not_used]
    isolation += [
        "ProctrackType=" + ("proctrack/cgroup" if cfg.cgroups else "proctrack/linuxproc"),
        "TaskPlugin=" + ("task/cgroup" if cfg.cgroups else "task/none"),
        "JobContainerType=" + ("job_container/tmpfs" if cfg.job_container else "job_container/none"),
    ]
    if cfg.job_container or cfg.cgroups:
        isolation.append("PrologFlags=Contain")
    lines = [
        MANAGED_MARKER,
        f"# run directory: {cfg.run_dir}",
        f"ClusterName={cfg.cluster_name}",
        f"SlurmctldHost={cfg.controller_host}(127.0.0.1)",
        f"SlurmctldPort={cfg.ctld_port}",
        f"SlurmdPort={cfg.slurmd_port}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        "MpiDefault=none",
        *isolation,
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core_Memory",
        "ReturnToService=2",
        "MinJobAge=120",
        "KillWait=5",
        "InactiveLimit=0",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        f"StateSaveLocation={cfg.state_dir}",
        f"SlurmdSpoolDir={cfg.spool_dir}",
        f"SlurmctldPidFile={cfg.pid_file('slurmctld')}",
        f"SlurmdPidFile={cfg.pid_file('slurmd')}",
        f"SlurmctldLogFile={cfg.log_file('slurmctld')}",
        f"SlurmdLogFile={cfg.log_file('slurmd')}",
        "SlurmctldDebug=info",
        "SlurmdDebug=info",
        f"TmpFS={cfg.tmp_fs}",
        f"NodeName={cfg.node_name} NodeAddr=127.0.0.1 NodeHostname={cfg.controller_host}"
        f" CPUs={cfg.cpus} RealMemory={cfg.memory_mb}"
        + (f" TmpDisk={cfg.tmp_disk_mb}" if cfg.tmp_disk_mb > 0 else "")
        + " State=UNKNOWN",
        f"PartitionName=interactive Nodes={cfg.node_name} Default=YES"
        f" MaxTime={cfg.interactive_max_time} State=UP",
        "# not OverSubscribe=EXCLUSIVE: one node carries both partitions, and a server in",
        "# 'interactive' that submits a job to 'secure' would wait for its own node forever",
        f"PartitionName=secure Nodes={cfg.node_name} Default=NO"
        f" MaxTime={cfg.secure_max_time} State=UP",
        "",
    ]
    return "\n".join(lines)


def cgroup_conf(cfg: SlurmDevConfig) -> str:
    """``cgroup.conf`` (pure): jobs held to their cores, memory and devices (GPUs)."""
    return "\n".join([
        MANAGED_MARKER,
        "CgroupPlugin=autodetect",
        f"CgroupMountpoint={CGROUP_ROOT}",
        "ConstrainCores=yes",
        "ConstrainRAMSpace=yes",
        "ConstrainDevices=yes",
        "",
    ])


def job_container_conf(cfg: SlurmDevConfig) -> str:
    """``job_container.conf`` (pure): where the jobs' private /tmp and /dev/shm are made."""
    return "\n".join([
        MANAGED_MARKER,
        "AutoBasePath=true",
        f"BasePath={cfg.job_tmp_dir}",
        "",
    ])


class SlurmDev:
    """Start, stop and inspect the development cluster in *run_dir*."""

    daemons = ("munged", "slurmctld", "slurmd")

    def __init__(self, run_dir: Path | str = DEFAULT_RUN_DIR, cfg: SlurmDevConfig | None = None):
        self.cfg = cfg or SlurmDevConfig.for_this_machine(Path(run_dir))

    # -- checks ---------------------------------------------------------
    @staticmethod
    def missing_programs() -> list[str]:
        progs = ["munged", "munge", "slurmctld", "slurmd", "sbatch", "scontrol", "sinfo"]
        return [p for p in progs if which(p) is None]

    def _require_programs(self) -> None:
        missing = self.missing_programs()
        if missing:
            raise SlurmError(
                f"Slurm/munge programs not found: {', '.join(missing)}; {INSTALL_HINT}"
            )
        if os.geteuid() != 0:
            raise SlurmError("`xnat-hpc-hub slurm up|down` starts system daemons: run it as root")

    def _munged_pid(self) -> int | None:
        for path in (MUNGE_SOCKET_DIR / "munged.pid", self.cfg.pid_file("munged")):
            pid = read_pid(path)
            if alive(pid):
                return pid
        return None

    def _munge_works(self) -> bool:
        try:
            cred = run(["munge", "-n"], timeout=10).stdout
            run(["unmunge"], input=cred.encode(), timeout=10)
            return True
        except CommandFailed:
            return False

    # -- up -------------------------------------------------------------
    def up(self, timeout: float = 60) -> list[DaemonStatus]:
        """Start whatever is not running; wait until the node accepts jobs."""
        self._require_programs()
        cfg = self.cfg
        for d in (cfg.state_dir, cfg.spool_dir, cfg.log_dir, cfg.pid_dir, cfg.conf_path.parent,
                  cfg.job_tmp_dir, cfg.server_log_dir):
            d.mkdir(parents=True, exist_ok=True)
        if cfg.server_log_dir.is_symlink():
            raise SlurmError(f"{cfg.server_log_dir} is a symbolic link; give the server jobs' output a "
                             "real directory")
        os.chown(cfg.server_log_dir, 0, 0)
        os.chmod(cfg.server_log_dir, 0o700)  # root writes the sandboxed servers' output here
        os.chmod(cfg.run_dir, 0o755)
        os.chmod(cfg.job_tmp_dir, 0o700)  # the jobs' private /tmp; Slurm mounts them as root
        os.chmod(cfg.state_dir, 0o700)  # job scripts and environments live here
        os.chmod(cfg.spool_dir, 0o755)  # slurmd makes a 0700 job dir per job in it, owned by the user
        os.chmod(cfg.log_dir, 0o700)
        os.chmod(cfg.conf_path.parent, 0o755)

        changed = self._write_conf()
        self._start_munged()
        running_ctld = alive(read_pid(cfg.pid_file("slurmctld")))
        running_d = alive(read_pid(cfg.pid_file("slurmd")))
        if changed and (running_ctld or running_d):
            log.info("slurm.conf changed: restarting slurmctld and slurmd")
            self._stop_slurm()
            running_ctld = running_d = False
        if not running_ctld:
            run(["slurmctld", "-f", str(cfg.conf_path)], timeout=30)
        if not running_d:
            run(["slurmd", "-f", str(cfg.conf_path), "-N", cfg.node_name], timeout=30)
        self._wait_ready(timeout)
        return self.status()

    def _write_conf(self) -> bool:
        """Write the run-dir and system config; True when the content changed."""
        text = slurm_conf(self.cfg)
        if SYSTEM_CONF.exists() and MANAGED_MARKER not in SYSTEM_CONF.read_text(errors="replace"):
            raise SlurmError(
                f"{SYSTEM_CONF} exists and was not written by xnat-hpc-hub: this machine "
                "already has a Slurm configuration; point the hub at that cluster instead "
                "of starting the development one (or move the file away)"
            )
        # slurmd (-f) and slurmstepd read cgroup.conf and job_container.conf next to the
        # slurm.conf they were started with; the clients need neither
        files = {self.cfg.conf_path: text, SYSTEM_CONF: text,
                 self.cfg.cgroup_conf_path: cgroup_conf(self.cfg),
                 self.cfg.job_container_conf_path: job_container_conf(self.cfg)}
        changed = False
        for path, content in files.items():
            old = path.read_text() if path.exists() else None
            changed = changed or old != content
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".conf.tmp")
            tmp.write_text(content)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        return changed

    def _start_munged(self) -> None:
        if self._munged_pid() and self._munge_works():
            return
        if not MUNGE_KEY.exists():
            log.info("creating %s", MUNGE_KEY)
            MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(MUNGE_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
            _chown_to(MUNGE_KEY, "munge")
        for d in (MUNGE_SOCKET_DIR, Path("/var/log/munge"), Path("/var/lib/munge")):
            d.mkdir(parents=True, exist_ok=True)
            _chown_to(d, "munge")
        os.chmod(MUNGE_SOCKET_DIR, 0o755)
        run(["runuser", "-u", "munge", "--", which("munged") or "munged"], timeout=30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._munge_works():
                return
            time.sleep(0.1)
        raise SlurmError("munged did not come up; see /var/log/munge/munged.log")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                out = run(
                    ["sinfo", "--noheader", "-N", "-o", "%N %t"], timeout=10
                ).stdout.split()
                last = " ".join(out)
                if len(out) >= 2 and out[1].rstrip("*") in ("idle", "mix", "alloc", "comp"):
                    return
                if len(out) >= 2 and out[1].rstrip("*") in ("down", "drain", "drng", "unk"):
                    # ReturnToService=2 normally revives it; nudge it once it registers
                    run(
                        ["scontrol", "update", f"NodeName={self.cfg.node_name}", "State=RESUME"],
                        check=False,
                        timeout=10,
                    )
            except CommandFailed as e:
                last = e.message
            time.sleep(0.2)
        raise SlurmError(
            f"Slurm did not become ready within {timeout:.0f} s (last: {last!r}); "
            f"see the logs in {self.cfg.log_dir}"
        )

    # -- down -----------------------------------------------------------
    def down(self, stop_munge: bool = True) -> list[DaemonStatus]:
        """Stop slurmd, slurmctld and (unless told not to) munged."""
        self._require_programs()
        self._stop_slurm()
        if stop_munge:
            pid = self._munged_pid()
            if pid:
                terminate(pid)
        return self.status()

    def _stop_slurm(self) -> None:
        for daemon in ("slurmd", "slurmctld"):
            pid = read_pid(self.cfg.pid_file(daemon))
            if alive(pid):
                terminate(pid)
            self.cfg.pid_file(daemon).unlink(missing_ok=True)

    # -- status ---------------------------------------------------------
    def status(self) -> list[DaemonStatus]:
        out = []
        munged = self._munged_pid()
        out.append(DaemonStatus("munged", bool(munged), munged))
        for daemon in ("slurmctld", "slurmd"):
            pid = read_pid(self.cfg.pid_file(daemon))
            out.append(DaemonStatus(daemon, alive(pid), pid if alive(pid) else None))
        if all(s.running for s in out):
            try:
                parts = run(
                    ["sinfo", "--noheader", "-o", "%P %a %D %t %l"], timeout=10
                ).stdout.strip()
                out[-1].detail = parts
            except CommandFailed as e:
                out[-1].detail = e.message
        return out

    def is_up(self) -> bool:
        return all(s.running for s in self.status())


def format_status(statuses: list[DaemonStatus], run_dir: Path) -> str:
    lines = [f"Slurm development cluster (run directory {run_dir}):"]
    for s in statuses:
        state = f"running (pid {s.pid})" if s.running else "NOT running"
        lines.append(f"  {s.name:<10} {state}")
    partitions = statuses[-1].detail if statuses else ""
    if partitions:
        lines.append("  partitions (name avail nodes state timelimit):")
        lines.extend(f"    {p}" for p in partitions.splitlines())
    return "\n".join(lines)


def _chown_to(path: Path, user: str) -> None:
    import pwd

    pw = pwd.getpwnam(user)
    os.chown(path, pw.pw_uid, pw.pw_gid)
