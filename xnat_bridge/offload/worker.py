"""What runs on the Slurm node: :func:`run_training`, sent with ``client.submit``.

1. claims the dataset identity from the scheduler (handler ``xnat_hpc_claim_key``,
   over the job's TLS comm, with this node's ``SLURM_JOB_ID``) — the key is
   held in this function's memory only;
2. decrypts and verifies the bundle (``extract_bundle``: every file's size,
   XNAT md5 and sha256 against the bundle's MANIFEST.json and HASHES.json, and
   the data and contents digests the server expects) into a private 0700
   directory under the job's node-local directory (``$XNAT_HPC_JOB_DIR`` from
   the job script prologue, which also wipes it on exit/TERM), umask 077;
   the script starts only once the whole bundle verified;
3. runs ``python script`` with ``DATASET_DIR`` and ``OUTPUT_DIR`` and a small
   environment, streaming its stdout+stderr lines to the scheduler (handler
   ``xnat_hpc_log``) while it runs;
4. encrypts ``OUTPUT_DIR`` to the user's result recipient into the staging area;
5. removes every plaintext byte in a ``finally`` — on success and failure.

Nothing here logs or returns the identity. The return value is public facts:
exit code, result archive facts, the last log lines.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

CLAIM_HANDLER = "xnat_hpc_claim_key"
FLUSH_INTERVAL = 0.3
TAIL_LINES = 20
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME", "SLURM_JOB_ID", "SLURM_CPUS_ON_NODE",
             "SLURM_JOB_CPUS_PER_NODE", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")


class KeyRefused(Exception):
    """The scheduler refused to release the dataset identity."""


def _call_scheduler(op: str, timeout: float = 30, **kw):
    from distributed import get_worker
    from distributed.utils import sync

    w = get_worker()
    return sync(w.loop, getattr(w.scheduler, op), callback_timeout=timeout, **kw)


def _send_log(job_id: str, text: str) -> None:
    """Hand output lines to the scheduler's event stream; never blocks (batched, in order)."""
    from distributed import get_worker

    get_worker().log_event(log_topic(job_id), {"job": job_id, "text": text})


def log_topic(job_id: str) -> str:
    return f"xnat-hpc-log-{job_id}"


def _script_env(data_dir: Path, out_dir: Path, tmp_dir: Path, job_id: str, threads: int) -> dict:
    env = {k: os.environ[k] for k in _SAFE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(DATASET_DIR=str(data_dir), OUTPUT_DIR=str(out_dir), TMPDIR=str(tmp_dir),
               XNAT_HPC_JOB_ID=job_id, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
               PYTHONDONTWRITEBYTECODE="1", MPLCONFIGDIR=str(tmp_dir))
    return env


def _pump(stream, lines: queue.Queue) -> None:
    for raw in iter(stream.readline, b""):
        lines.put(raw.decode("utf-8", errors="replace"))
    lines.put(None)


def _run_script(cmd: list[str], env: dict, cwd: Path, job_id: str, tail: collections.deque) -> int:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    reader.start()
    batch: list[str] = []
    last = time.monotonic()
    ended = False
    try:
        while not ended:
            try:
                line = lines.get(timeout=FLUSH_INTERVAL)
            except queue.Empty:
                line = ""
            if line is None:
                ended = True
            elif line:
                batch.append(line)
                tail.append(line)
            if batch and (ended or time.monotonic() - last >= FLUSH_INTERVAL or len(batch) >= 500):
                _send_log(job_id, "".join(batch))
                batch, last = [], time.monotonic()
        return proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (worker closing): end the whole script session
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def run_training(job_id: str, bundle_path: str, manifest_sha256: str, script_member: str,
                 results_path: str, result_recipient: str, threads: int = 1,
                 contents_sha256: str | None = None) -> dict:
    """The task of one offloaded job (runs in the dask worker on the Slurm node).

    *manifest_sha256* and *contents_sha256* are the digests the server staged: the bundle's
    data and its MANIFEST.json (script and metadata included) must match both.
    """
    from ..staging import encrypt_directory, extract_bundle

    slurm_job_id = os.environ.get("SLURM_JOB_ID", "")
    reply = _call_scheduler(CLAIM_HANDLER, job=job_id, slurm_job_id=slurm_job_id)
    if not isinstance(reply, dict) or "identity" not in reply:
        raise KeyRefused(str(reply.get("error") if isinstance(reply, dict) else reply))
    base = os.environ.get("XNAT_HPC_JOB_DIR") or os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()
    os.umask(0o077)
    Path(base).mkdir(mode=0o700, parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"xnat-hpc-{job_id}-", dir=base))
    tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
    try:
        bundle_dir = work / "bundle"
        # nothing reaches the script before the whole bundle verified (sizes, XNAT md5,
        # sha256 against HASHES.json, both digests): extract_bundle removes everything otherwise
        extract_bundle(bundle_path, reply.pop("identity"), bundle_dir, manifest_sha256,
                       expected_contents_sha256=contents_sha256)
        del reply
        out_dir, tmp_dir = work / "output", work / "tmp"
        out_dir.mkdir(mode=0o700)
        tmp_dir.mkdir(mode=0o700)
        script = bundle_dir / script_member
        env = _script_env(bundle_dir / "data", out_dir, tmp_dir, job_id, threads)
        rc = _run_script([sys.executable, str(script)], env, tmp_dir, job_id, tail)
        result = {"exit_code": rc, "tail": list(tail), "slurm_job_id": slurm_job_id, "results": None}
        if rc == 0:
            result["results"] = encrypt_directory(out_dir, result_recipient, results_path)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
