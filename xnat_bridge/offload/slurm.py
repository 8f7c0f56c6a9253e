"""The offload layer's side of Slurm: the adapter :mod:`xnat_bridge.slurm`, as a job run uses it.

* :func:`slurm_state`, :func:`wait_gone`, :func:`scancel` — what the server
  asks Slurm about one job (the adapter's batched status and cancel, with the
  run's rules: a failure is logged, never raised);
* :func:`partition_tmp_disk` — the node-local scratch of a partition's nodes
  (``sinfo -o %d``, their ``TmpDisk``), checked before a job is submitted;
* :func:`make_slurm_cluster` — the default cluster factory of
  :class:`~.context.OffloadContext`: dask-jobqueue's ``SLURMCluster`` whose
  job class runs ``sbatch`` and ``scancel`` through :func:`procs.arun`
  instead of its own ``Job._call``;
* :func:`load_slurm_cluster` — ``dask_jobqueue.SLURMCluster``, imported
  without its import-time side effect.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import threading
import time

from .. import procs, slurm
from ..errors import CommandFailed, XnatHpcError
from ..extras import needs_extra
from ..slurm import parse_tmp_disk
from .jobscript import sbatch_environment

__all__ = ["SLURM_COMMAND_TIMEOUT", "gateway_job_class", "load_slurm_cluster", "make_slurm_cluster",
           "parse_tmp_disk", "partition_tmp_disk", "scancel", "slurm_state", "wait_gone"]

log = logging.getLogger(__name__)

#: seconds one ``sbatch``/``scancel`` of dask-jobqueue may take (slurmctld retries while it is down)
SLURM_COMMAND_TIMEOUT = 120
_IMPORT_LOCK = threading.Lock()
_JOB_CLASS = None


def slurm_state(slurm_job_id: str) -> str | None:
    """The job's Slurm state (``RUNNING``, ``COMPLETED``, ...) or None when Slurm forgot it, or
    cannot say (``squeue`` failing)."""
    try:
        job = slurm.status([slurm_job_id], timeout=20).get(str(slurm_job_id))
    except CommandFailed:
        return None
    return job.state if job else None


def wait_gone(slurm_job_id: str | None, timeout: float = 30) -> bool:
    """Wait until Slurm no longer lists the job as pending/running (its traps have run): it
    ended (:data:`~xnat_bridge.slurm.TERMINAL_STATES`) or Slurm forgot it."""
    deadline = time.monotonic() + timeout
    while slurm_job_id and time.monotonic() < deadline:
        state = slurm_state(slurm_job_id)
        if state is None or slurm.is_terminal(state):
            return True
        time.sleep(0.2)
    return not slurm_job_id


def scancel(slurm_job_id: str | None) -> None:
    """``scancel`` the job (nothing without an id); a failure is logged, never raised."""
    if slurm_job_id:
        try:
            slurm.cancel([str(slurm_job_id)], timeout=30)
        except XnatHpcError as e:  # CommandFailed, or an id that is no Slurm job id
            log.warning("scancel %s failed: %s", slurm_job_id, e.message)


def partition_tmp_disk(partition: str) -> int | None:
    """The node-local scratch of *partition*'s nodes in bytes (the smallest ``TmpDisk``), or
    None when Slurm cannot say (no ``TmpDisk`` declared, ``sinfo`` failing: nothing to check)."""
    try:
        return slurm.tmp_disk(partition, timeout=20)
    except CommandFailed as e:
        log.info("sinfo for partition %s failed (%s): the node-local scratch is not checked",
                 partition, e.message)
        return None


def load_slurm_cluster():
    """``dask_jobqueue.SLURMCluster``, imported without its import-time side effect.

    dask-jobqueue 0.9 installs ``SIGINT → sys.exit()`` when imported (its
    ``runner`` module): that fails outside the main thread and would replace
    the jupyter server's own Ctrl-C handling. The handler is not installed.
    """
    with _IMPORT_LOCK:
        if "dask_jobqueue" not in sys.modules:
            original = signal.signal

            def keep_handlers(signum, handler):
                return signal.getsignal(signum)

            signal.signal = keep_handlers
            try:
                with needs_extra("server", "offloading to Slurm (xnat_bridge.offload)"):
                    importlib.import_module("dask_jobqueue")
            finally:
                signal.signal = original
    return sys.modules["dask_jobqueue"].SLURMCluster


def gateway_job_class():
    """dask-jobqueue's ``SLURMJob`` with ``sbatch``/``scancel`` run by :func:`procs.arun`.

    They run with :func:`~.jobscript.sbatch_environment` of the server's, never its own
    (which holds the user's XNAT token): the job gets sbatch's environment (``--export=ALL``).
    dask-jobqueue's contract for ``Job._call`` is kept: it returns stdout and
    raises ``RuntimeError`` (with the exit code, command, stdout and stderr,
    as dask-jobqueue words it) when the command fails — ``Job._close_job``
    suppresses exactly that for a job that is already gone.
    """
    global _JOB_CLASS
    base = load_slurm_cluster().job_cls
    with _IMPORT_LOCK:
        if _JOB_CLASS is None:
            class GatewaySLURMJob(base):
                @staticmethod
                async def _call(cmd, *, shell=False, **kwargs):
                    if shell or kwargs:
                        raise ValueError("the offload layer runs Slurm commands as argument lists only")
                    try:
                        proc = await procs.arun(cmd, timeout=SLURM_COMMAND_TIMEOUT,
                                                env=sbatch_environment(os.environ))
                    except CommandFailed as e:
                        raise RuntimeError(
                            "Command exited with non-zero exit code.\n"
                            f"Exit code: {e.returncode}\nCommand:\n{' '.join(e.cmd)}\n"
                            f"stdout:\n{e.stdout}\nstderr:\n{e.stderr}\n") from None
                    return proc.stdout

            _JOB_CLASS = GatewaySLURMJob
        return _JOB_CLASS


def make_slurm_cluster(**options):
    """A ``SLURMCluster(**options)`` whose Slurm commands go through :mod:`xnat_bridge.procs`."""
    return load_slurm_cluster()(job_cls=gateway_job_class(), **options)
