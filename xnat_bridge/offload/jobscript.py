"""The ``SLURMCluster`` options of one offloaded job (a pure builder).

:func:`cluster_options` turns a :class:`ClusterSpec` into the keyword
arguments of ``dask_jobqueue.SLURMCluster``. What ends up in the job script
(and so in slurmctld's state directory) is public: partition, resources, the
worker command with the *paths* of the per-job TLS files, and a prologue that
creates the job's node-local directory and wipes it on exit or termination.
Never a key: the dataset identity travels later, over the TLS comm.

The node-local directory is made by ``mktemp -d``: a name nobody can predict
(``xnat-hpc-slurm-<Slurm job id>.<12 random characters>``), mode 0700, and
``mkdir`` fails rather than accept an entry that exists — another account
cannot prepare it, or a symbolic link, where the job will look. The node guard
and the worker then check it and everything above it
(:mod:`xnat_bridge.offload.jobdir`) before anything is decrypted.

``sbatch`` runs with an environment of its own, :func:`sbatch_environment` (``PATH``,
``HOME``, the user's name, the locale, ``SLURM_CONF``), never the server's (which holds
the user's XNAT alias token: slurmctld would store it with the job), and the job gets
exactly that (``--export=ALL``). Not ``--export=NONE`` or a list of names: with those,
Slurm 22.05 loads the user's login environment on the node (``su - USER -c env``), which
delayed every job's start by about a second in one run of two (measured on the dev cluster:
script start 0.25 s after ``sbatch`` with ``ALL``, 1.2–1.6 s in half the runs otherwise).

Site settings read from the environment of the user's server:

``XNAT_HPC_WORKER_PYTHON``  interpreter on the nodes (default ``/opt/xnat-hpc-hub/venv/bin/python``)
``XNAT_HPC_SCHEDULER_HOST`` address the workers reach the scheduler on (default ``127.0.0.1``)
``XNAT_HPC_WORKER_INTERFACE`` worker network interface (default ``lo`` for a loopback scheduler)
``XNAT_HPC_NODE_TMPDIR``    node-local base directory (default ``$SLURM_TMPDIR``, ``$TMPDIR`` or ``/tmp``
                            on the node)
``XNAT_HPC_DEATH_TIMEOUT``  seconds a worker lives on without its scheduler (default 60)
"""

from __future__ import annotations

import dataclasses
import os
import shlex
from collections.abc import Mapping

from .phases import SCRIPT_START_VAR
from .policy import ResourceRequest, format_walltime

DEFAULT_PYTHON = "/opt/xnat-hpc-hub/venv/bin/python"
#: the variables of the server's environment that ``sbatch`` (and so the job) gets
SBATCH_ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "SLURM_CONF")
NODE_TMP_DEFAULT = "${SLURM_TMPDIR:-${TMPDIR:-/tmp}}"
JOB_DIR_VAR = "XNAT_HPC_JOB_DIR"
#: mktemp's template tail: 12 random characters of [A-Za-z0-9], about 71 bits
JOB_DIR_RANDOM = "X" * 12


@dataclasses.dataclass(frozen=True)
class ClusterSpec:
    job_id: str
    request: ResourceRequest
    exclusive: bool
    shared_temp_directory: str
    log_directory: str
    python: str = DEFAULT_PYTHON
    scheduler_host: str = "127.0.0.1"
    worker_interface: str | None = "lo"
    node_tmpdir: str = NODE_TMP_DEFAULT
    death_timeout: int = 60

    @classmethod
    def from_env(cls, job_id: str, request: ResourceRequest, exclusive: bool, shared_temp_directory: str,
                 log_directory: str, environ: Mapping[str, str] = os.environ) -> ClusterSpec:
        host = environ.get("XNAT_HPC_SCHEDULER_HOST", "").strip() or "127.0.0.1"
        iface = environ.get("XNAT_HPC_WORKER_INTERFACE", "").strip() or (
            "lo" if host.startswith("127.") else None)
        return cls(job_id, request, exclusive, shared_temp_directory, log_directory,
                   python=environ.get("XNAT_HPC_WORKER_PYTHON", "").strip() or DEFAULT_PYTHON,
                   scheduler_host=host, worker_interface=iface,
                   node_tmpdir=environ.get("XNAT_HPC_NODE_TMPDIR", "").strip() or NODE_TMP_DEFAULT,
                   death_timeout=int(environ.get("XNAT_HPC_DEATH_TIMEOUT", "").strip() or 60))


def sbatch_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The whole environment ``sbatch`` runs with, from the server's *environ* (pure):
    :data:`SBATCH_ENV_KEEP` only — no token, no ``SBATCH_*`` option, nothing else."""
    return {k: environ[k] for k in SBATCH_ENV_KEEP if k in environ}


def node_job_dir_template(node_tmpdir: str) -> str:
    """The shell word given to ``mktemp -d``: the node-local base, the job's name, 12 X."""
    base = f'"{node_tmpdir}"' if node_tmpdir == NODE_TMP_DEFAULT else shlex.quote(node_tmpdir)
    return f'{base}/xnat-hpc-slurm-"$SLURM_JOB_ID".{JOB_DIR_RANDOM}'


def prologue(spec: ClusterSpec) -> list[str]:
    """Shell lines run before the worker: the start time, private umask, wipe traps, a fresh job dir.

    The traps come first, so that a signal between ``mktemp`` and the worker wipes too;
    ``rm -rf`` removes a link, never what it points to. They cover the script until it
    ``exec``s the node guard (:func:`cluster_options`), which wipes from then on.
    """
    wipe = f'[ -z "${JOB_DIR_VAR}" ] || rm -rf -- "${JOB_DIR_VAR}"'
    return [
        f"export {SCRIPT_START_VAR}=$EPOCHREALTIME",  # the job's start, for its phases (bash >= 5)
        "umask 077",
        f"{JOB_DIR_VAR}=",
        f"trap '{wipe}' EXIT",
        f"trap '{wipe}; exit 143' TERM INT HUP",
        f"{JOB_DIR_VAR}=$(mktemp -d {node_job_dir_template(spec.node_tmpdir)}) || "
        "{ echo \"xnat-hpc: cannot create the job's node-local directory (mktemp said why above): "
        "set XNAT_HPC_NODE_TMPDIR to a directory that exists on every node of the partition\" >&2; "
        "exit 1; }",
        f"export {JOB_DIR_VAR}",
    ]


def cluster_options(spec: ClusterSpec) -> dict:
    """Keyword arguments for ``SLURMCluster`` (one worker process, TLS, loopback-safe)."""
    r = spec.request
    extra = ["--export=ALL"]  # of sbatch_environment(): sbatch runs with nothing else
    if spec.exclusive:
        extra.append("--exclusive")
    if r.account:
        extra.append(f"--account={r.account}")
    if r.qos:
        extra.append(f"--qos={r.qos}")
    if r.gpus:
        extra.append(f"--gres=gpu:{r.gpus}")
    opts = {
        "queue": r.partition,
        "cores": r.cpus,
        "processes": 1,
        "memory": f"{max(1, r.memory // 2**20)}MiB",
        "walltime": format_walltime(r.walltime),
        "job_name": f"xnat-hpc-{spec.job_id}",
        # exec: the guard *is* the batch step's task, so that it receives Slurm's SIGTERM itself;
        # with proctrack/cgroup Slurm signals only that process before its SIGKILL to all, and
        # bash runs a trap only after its foreground child has exited
        "python": f"exec {spec.python} -m xnat_bridge.offload.nodeguard {spec.python}",
        "security": True,
        "shared_temp_directory": spec.shared_temp_directory,
        "log_directory": spec.log_directory,
        "scheduler_options": {"host": spec.scheduler_host, "dashboard": False,
                              "dashboard_address": "127.0.0.1:0"},
        "death_timeout": spec.death_timeout,
        "job_extra_directives": extra,
        "job_script_prologue": prologue(spec),
        "nanny": False,
    }
    if spec.worker_interface:
        opts["interface"] = spec.worker_interface
    return opts
