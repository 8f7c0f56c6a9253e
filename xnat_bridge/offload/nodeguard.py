"""The wipe guard on the Slurm node: ``python -m xnat_bridge.offload.nodeguard CMD...``.

The job script starts the dask worker through this guard (dask-jobqueue's
``python`` setting is ``<python> -m xnat_bridge.offload.nodeguard <python>``).
It runs *CMD* as a child and removes the job's node-local directory
(``$XNAT_HPC_JOB_DIR``, made by the job script's prologue) when the child
ends and — without waiting for the child — when Slurm signals the job
(``scancel``, walltime, the server gone and the worker's death timeout):
Slurm sends SIGTERM, then SIGKILL after ``KillWait`` seconds, and a bash
``trap`` runs only after its foreground child has exited, which a busy
worker may not do in time. The prologue's trap stays as a second line.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

GRACE = 2.0  # seconds the worker gets to stop its script before the wipe


def wipe(path: str | None) -> None:
    if path and os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m xnat_bridge.offload.nodeguard CMD [ARG...]", file=sys.stderr)
        return 2
    job_dir = os.environ.get("XNAT_HPC_JOB_DIR")
    child = subprocess.Popen(argv)

    def on_signal(signum, _frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + GRACE
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        wipe(job_dir)
        if child.poll() is None:
            child.kill()
        wipe(job_dir)
        os._exit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    rc = child.wait()
    wipe(job_dir)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
