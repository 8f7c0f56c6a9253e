"""What runs on the Slurm node: :func:`run_training`, sent with ``client.submit``.

1. claims the dataset identity from the scheduler (handler ``xnat_hpc_claim_key``,
   over the job's TLS comm, with this node's ``SLURM_JOB_ID``) — the key is
   held in this function's memory only;
2. opens the job's node-local directory (``$XNAT_HPC_JOB_DIR``, made by the job
   script's prologue with ``mktemp -d``) and checks it and every directory above
   it (:class:`~xnat_bridge.offload.jobdir.JobDir`: owner, mode 0700, not a link,
   node-local, the one the node guard checked) — before the key is claimed;
3. decrypts and verifies the bundle (``extract_bundle``: every file's size,
   XNAT md5 and sha256 against the bundle's MANIFEST.json and HASHES.json, and
   the data and contents digests the server expects) into a fresh 0700
   directory in it, umask 077, every file created relative to a directory
   descriptor (``O_EXCL | O_NOFOLLOW``); the script starts only once the whole
   bundle verified;
4. runs the script's *verified bytes* — kept in memory during the extraction
   and handed to the interpreter in a sealed memfd, never re-read from the
   file — with ``DATASET_DIR`` (the verified data directory; its path is
   checked to lead to the directory that was written through descriptors) and
   ``OUTPUT_DIR`` and a small environment, streaming its stdout+stderr lines
   to the scheduler (handler ``xnat_hpc_log``) while it runs;
5. encrypts ``OUTPUT_DIR`` to the user's result recipient into the staging area;
6. removes every plaintext byte in a ``finally`` — on success and failure —
   through the directory's descriptor (no link followed).

Nothing here logs or returns the identity. The return value is public facts:
exit code, result archive facts, the last log lines.
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import queue
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ..errors import Conflict
from .jobdir import JOB_DIR_ID_VAR, JOB_DIR_VAR, JobDir

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


#: run by ``python -c``: reads the script's verified bytes from the descriptor in argv[1] and
#: runs them as ``__main__`` with ``__file__`` = argv[2] (the extracted copy's path, for the
#: script's own use; the interpreter never opens it)
_BOOT = """\
def _boot():
    import os, sys
    fd, name = int(sys.argv[1]), sys.argv[2]
    with open(fd, "rb") as f:
        source = f.read()
    sys.argv[:] = [name]
    sys.path[0] = os.path.dirname(name)
    g = globals()
    g["__file__"], g["__cached__"] = name, None
    del g["_boot"]
    return compile(source, name, "exec")
exec(_boot())
"""


def sealed_copy(data: bytes, name: str = "xnat-hpc-script") -> int:
    """A memfd holding *data*, sealed against any change (write, grow, shrink, new seals);
    the caller closes it. Nobody — the job's own uid included — can alter what it holds."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK
                    | fcntl.F_SEAL_SEAL)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd
    except BaseException:
        os.close(fd)
        raise


def script_command(fd: int, path: str) -> list[str]:
    """The interpreter command that runs the bytes in *fd* as the script at *path*."""
    return [sys.executable, "-c", _BOOT, str(fd), path]


def _run_script(cmd: list[str], env: dict, cwd: Path, job_id: str, tail: collections.deque,
                pass_fds: tuple[int, ...] = ()) -> int:
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, pass_fds=pass_fds)
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


def open_job_dir() -> tuple[JobDir, bool]:
    """The job's node-local directory, checked; True when this process made it (and removes it).

    ``$XNAT_HPC_JOB_DIR`` (the prologue's ``mktemp -d``) when set — and then it must be the
    directory the node guard checked (``$XNAT_HPC_JOB_DIR_ID``); otherwise, for a worker
    started some other way, a fresh one under ``$SLURM_TMPDIR``/``$TMPDIR``/``/tmp``.
    """
    path = os.environ.get(JOB_DIR_VAR)
    if path:
        job_dir = JobDir.open(path)
        try:
            job_dir.check_same(os.environ.get(JOB_DIR_ID_VAR))
        except BaseException:
            job_dir.close()
            raise
        return job_dir, False
    base = os.environ.get("SLURM_TMPDIR") or tempfile.gettempdir()
    return JobDir.create(base, prefix="xnat-hpc-worker-"), True


def _same_dir(path: str, dir_fd: int, name: str) -> bool:
    """Does *path* (as the script will open it) lead to the entry *name* of *dir_fd*?"""
    try:
        by_path = os.stat(path)
        by_fd = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return stat.S_ISDIR(by_fd.st_mode) and (by_path.st_dev, by_path.st_ino) == (by_fd.st_dev, by_fd.st_ino)


def run_training(job_id: str, bundle_path: str, manifest_sha256: str, script_member: str,
                 results_path: str, result_recipient: str, threads: int = 1,
                 contents_sha256: str | None = None, review_recipient: str | None = None) -> dict:
    """The task of one offloaded job (runs in the dask worker on the Slurm node).

    *manifest_sha256* and *contents_sha256* are the digests the server staged: the bundle's
    data and its MANIFEST.json (script and metadata included) must match both. With
    *review_recipient* (the hub's review key: a project of the dataset needs results review)
    the results are sealed by :func:`~xnat_bridge.offload.review.seal_held_results` and the
    return value carries the wrapped shares and previews under ``"review"``.
    """
    from ..staging import encrypt_directory, extract_bundle

    os.umask(0o077)
    job_dir, made_here = open_job_dir()  # refused before the key is asked for
    slurm_job_id = os.environ.get("SLURM_JOB_ID", "")
    work_fd = -1
    work = ""
    try:
        reply = _call_scheduler(CLAIM_HANDLER, job=job_id, slurm_job_id=slurm_job_id)
        if not isinstance(reply, dict) or "identity" not in reply:
            raise KeyRefused(str(reply.get("error") if isinstance(reply, dict) else reply))
        work, work_fd = job_dir.make_private(f"xnat-hpc-{job_id}-")
        tail: collections.deque = collections.deque(maxlen=TAIL_LINES)
        # nothing reaches the script before the whole bundle verified (sizes, XNAT md5,
        # sha256 against HASHES.json, both digests): extract_bundle removes everything otherwise
        held: dict[str, bytes] = {script_member: b""}
        extract_bundle(bundle_path, reply.pop("identity"), "bundle", manifest_sha256,
                       expected_contents_sha256=contents_sha256, dir_fd=work_fd, hold=held)
        del reply
        code = held.get(script_member)
        if code is None:
            raise Conflict(f"the bundle holds no script {script_member!r}; submit the job again",
                           item=script_member)
        for sub in ("output", "tmp"):
            os.mkdir(sub, 0o700, dir_fd=work_fd)
        root = Path(job_dir.path) / work
        data_dir, out_dir, tmp_dir = root / "bundle" / "data", root / "output", root / "tmp"
        bundle_fd = os.open("bundle", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                            dir_fd=work_fd)
        try:
            try:
                os.mkdir("data", 0o700, dir_fd=bundle_fd)  # a dataset of extra members only
            except FileExistsError:
                pass
            checks = ((str(data_dir), bundle_fd, "data"), (str(out_dir), work_fd, "output"),
                      (str(tmp_dir), work_fd, "tmp"))
            if not all(_same_dir(*c) for c in checks):
                raise Conflict(f"the paths below {job_dir.path} no longer lead to the directories that "
                               "were verified; refusing to run the script", item=job_dir.path)
        finally:
            os.close(bundle_fd)
        env = _script_env(data_dir, out_dir, tmp_dir, job_id, threads)
        script_fd = sealed_copy(code)
        try:
            rc = _run_script(script_command(script_fd, str(root / "bundle" / script_member)), env, tmp_dir,
                             job_id, tail, pass_fds=(script_fd,))
        finally:
            os.close(script_fd)
        result = {"exit_code": rc, "tail": list(tail), "slurm_job_id": slurm_job_id, "results": None}
        if rc == 0 and review_recipient:
            from .review import seal_held_results

            result["results"], result["review"] = seal_held_results(out_dir, results_path,
                                                                    result_recipient, review_recipient)
        elif rc == 0:
            result["results"] = encrypt_directory(out_dir, result_recipient, results_path)
        return result
    finally:
        if work_fd >= 0:
            os.close(work_fd)
        if work:
            job_dir.remove(work)
        if made_here:
            job_dir.wipe()
        job_dir.close()
