"""The wipe guard on the Slurm node: ``python -m xnat_bridge.offload.nodeguard CMD...``.

The job script starts the dask worker through this guard (dask-jobqueue's
``python`` setting is ``<python> -m xnat_bridge.offload.nodeguard <python>``).
Before anything else it opens and checks the job's node-local directory
(``$XNAT_HPC_JOB_DIR``, made by the job script's prologue with ``mktemp -d``;
:meth:`~xnat_bridge.offload.jobdir.JobDir.open`: its owner, mode 0700, not a
link, node-local, and nobody else able to change a directory above it). A
directory that fails a check stops the job here, with the reason on stderr
(the job's Slurm output): no worker starts, no key is claimed.

It then runs *CMD* as a child — telling it, in ``$XNAT_HPC_JOB_DIR_ID``, which
directory it checked — and removes everything in that directory through the
descriptor it holds (no link followed, nothing else removed under its name)
when the child ends and — without waiting for the child — when Slurm signals
the job (``scancel``, walltime, the server gone and the worker's death
timeout): Slurm sends SIGTERM, then SIGKILL after ``KillWait`` seconds. The
job script ``exec``s this guard, so it is the batch step's task: with
``proctrack/cgroup`` Slurm sends SIGTERM to that process only (the rest of
the step gets the SIGKILL), and a bash ``trap`` would run only after its
foreground child had exited. The prologue's traps cover the script until the
``exec``; what a SIGKILL leaves is removed with the job's private ``/tmp``
(``job_container/tmpfs``) or by the site's Epilog (docs/admin.md).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .jobdir import JOB_DIR_ID_VAR, JOB_DIR_VAR, JobDir, UnsafeJobDir

GRACE = 2.0  # seconds the worker gets to stop its script before the wipe
REFUSED = 78  # EX_CONFIG: the job's directory failed a check


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m xnat_bridge.offload.nodeguard CMD [ARG...]", file=sys.stderr)
        return 2
    path = os.environ.get(JOB_DIR_VAR)
    job_dir: JobDir | None = None
    env = dict(os.environ)
    if path:
        try:
            job_dir = JobDir.open(path)
        except UnsafeJobDir as e:
            print(f"xnat-hpc: job refused on {os.uname().nodename}: {e.message}", file=sys.stderr, flush=True)
            try:
                os.rmdir(path)  # the prologue's (empty) directory; a link or anything else stays
            except OSError:
                pass
            return REFUSED
        env[JOB_DIR_ID_VAR] = job_dir.ident

    def wipe() -> None:
        if job_dir is not None:
            job_dir.wipe()

    child: subprocess.Popen | None = None

    def on_signal(signum, _frame):
        if child is not None:
            try:
                child.send_signal(signum)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + GRACE
            while child.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        wipe()
        if child is not None and child.poll() is None:
            child.kill()
        wipe()
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        child = subprocess.Popen(argv, env=env)
        return child.wait()
    finally:
        wipe()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
