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
   ``OUTPUT_DIR`` and a small environment, its stdout+stderr through one pipe
   (never the worker's own stdout, which is Slurm's ``--output`` file): streamed
   to the scheduler (topic :func:`log_topic`) while it runs — unless the job's
   results are held for review (*review_recipient*): then the lines go to a
   node-local file in the job's private directory (:class:`HeldLog`) and only
   status lines without any of the script's output are streamed;
5. encrypts ``OUTPUT_DIR`` to the user's result recipient into the staging area —
   a held job's output log included, as the member
   :data:`~xnat_bridge.offload.review.LOG_MEMBER` of its sealed results (approval
   releases it with them, rejection deletes it with them);
6. removes every plaintext byte in a ``finally`` — on success and failure —
   through the directory's descriptor (no link followed).

Nothing here logs or returns the identity. The return value is public facts:
exit code, result archive facts, the last log lines (none for a held job).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import queue
import socket
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
from .phases import SCRIPT_START_VAR

log = logging.getLogger(__name__)

CLAIM_HANDLER = "xnat_hpc_claim_key"
FLUSH_INTERVAL = 0.3
TAIL_LINES = 20
#: a held job's output, node-local, in its private directory beside ``output/`` (never inside
#: ``OUTPUT_DIR`` while the script runs: the script may empty that)
HELD_LOG_FILE = "script-output.log"
#: what a log event carries: the script's own lines, or the job's status lines (no script output)
OUTPUT, STATUS = "output", "status"
_SAFE_ENV = ("PATH", "LANG", "LC_ALL", "HOME", "USER", "LOGNAME", "SLURM_JOB_ID", "SLURM_CPUS_ON_NODE",
             "SLURM_JOB_CPUS_PER_NODE", "CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")


class KeyRefused(Exception):
    """The scheduler refused to release the dataset identity."""


def _call_scheduler(op: str, timeout: float = 30, **kw):
    from distributed import get_worker
    from distributed.utils import sync

    w = get_worker()
    return sync(w.loop, getattr(w.scheduler, op), callback_timeout=timeout, **kw)


def _send_log(job_id: str, text: str, kind: str = OUTPUT) -> None:
    """Hand lines to the scheduler's event stream; never blocks (batched, in order). *kind*:
    :data:`OUTPUT` (the script's lines) or :data:`STATUS` (the job's own, no script output)."""
    from distributed import get_worker

    get_worker().log_event(log_topic(job_id), {"job": job_id, "text": text, "kind": kind})


def log_topic(job_id: str) -> str:
    return f"xnat-hpc-log-{job_id}"


def _script_env(data_dir: Path, out_dir: Path, tmp_dir: Path, job_id: str, threads: int) -> dict:
    env = {k: os.environ[k] for k in _SAFE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.update(DATASET_DIR=str(data_dir), OUTPUT_DIR=str(out_dir), TMPDIR=str(tmp_dir),
               XNAT_HPC_JOB_ID=job_id, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=str(threads),
               PYTHONDONTWRITEBYTECODE="1", MPLCONFIGDIR=str(tmp_dir))
    return env


class LiveLog:
    """Where a job's script output goes when its results are not held: streamed to the
    scheduler as it comes (*send*, default :func:`_send_log`), the last TAIL_LINES kept for
    the result."""

    def __init__(self, job_id: str, send=None):
        self.job_id, self._send = job_id, send
        self.tail: collections.deque = collections.deque(maxlen=TAIL_LINES)

    def write(self, text: str) -> None:
        self.tail.extend(text.splitlines(keepends=True))
        (self._send or _send_log)(self.job_id, text, OUTPUT)

    def close(self) -> None:
        pass


class HeldLog:
    """Where a held job's script output goes: a file in the job's private node-local directory
    *dir_fd*, 0600 — an anonymous one (``O_TMPFILE``: no name the script could reach, gone
    with the process whatever happens) where the file system has them, else the new file
    *name* (``O_EXCL | O_NOFOLLOW``, relative to the descriptor). Nothing of the output leaves
    the node but sealed with the results (:meth:`place` puts it among them): no tail, nothing
    streamed; only the counts are known (:func:`held_status`)."""

    def __init__(self, dir_fd: int, name: str = HELD_LOG_FILE):
        self.name, self.dir_fd, self.anonymous = name, dir_fd, True
        try:
            self.fd = os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except (OSError, AttributeError):  # no O_TMPFILE on this file system (or platform)
            self.anonymous = False
            self.fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                              0o600, dir_fd=dir_fd)
        self.lines = self.bytes = 0
        self.tail: tuple = ()

    def write(self, text: str) -> None:
        view = memoryview(text.encode("utf-8", errors="replace"))
        self.bytes += len(view)
        self.lines += text.count("\n")
        while view:
            view = view[os.write(self.fd, view):]

    def place(self, out_fd: int, member: str) -> None:
        """Give the log the name *member* in the results directory *out_fd*, once the script
        ended (a hard link of the very file written: no copy, no link followed). An entry
        *member* that the script made is refused (Conflict): the name is the job's."""
        try:
            if self.anonymous:
                os.link(f"/proc/self/fd/{self.fd}", member, dst_dir_fd=out_fd, follow_symlinks=True)
            else:
                os.link(self.name, member, src_dir_fd=self.dir_fd, dst_dir_fd=out_fd, follow_symlinks=False)
        except FileExistsError:
            raise Conflict(f"the script wrote {member} into OUTPUT_DIR; that name is reserved for the job's "
                           "output log, which is sealed with the results of a job held for review — write "
                           "your file under another name and submit the job again", item=member) from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def held_status(phase: str, lines: int = 0, nbytes: int = 0, exit_code: int | None = None) -> str:
    """The status lines a held job streams instead of its output (pure): no script output,
    only the phase, and at the end the exit code and the log's size."""
    if phase == "start":
        return ("[xnat-hpc] this job's results are held for review: the script's output is kept on the "
                "node and sealed with its results; it is released when the project owners approve\n")
    if exit_code == 0:
        return (f"[xnat-hpc] the script ended (exit code 0); its output ({lines} lines, {nbytes} bytes) "
                "is sealed with the results for review\n")
    return (f"[xnat-hpc] the script ended with exit code {exit_code}; its output ({lines} lines, {nbytes} "
            "bytes) was withheld and deleted on the node: a held job's output leaves the node only "
            "sealed with its results, and a failed script has none\n")


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


def _run_script(cmd: list[str], env: dict, cwd: Path, sink, pass_fds: tuple[int, ...] = ()) -> int:
    """Run *cmd*; its stdout and stderr are one pipe read here and handed to *sink* (a
    :class:`LiveLog` or :class:`HeldLog`) in batches. The script inherits no descriptor of the
    worker's (``close_fds``): not its stdout/stderr (Slurm's ``--output``/``--error`` files),
    only *pass_fds*."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                            pass_fds=pass_fds)
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
            if batch and (ended or time.monotonic() - last >= FLUSH_INTERVAL or len(batch) >= 500):
                sink.write("".join(batch))
                batch, last = [], time.monotonic()
        return proc.wait()
    finally:
        if proc.poll() is None:  # interrupted (worker closing): end the whole script session
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def _seal_held(log: HeldLog, work_fd: int, out_dir: Path, results_path: str, result_recipient: str,
               review_recipient: str) -> tuple[dict, dict]:
    """Seal a held job's results with its output log among them (member
    :data:`~xnat_bridge.offload.review.LOG_MEMBER`): one archive, one key, one decision."""
    from .review import LOG_MEMBER, seal_held_results

    out_fd = os.open("output", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=work_fd)
    try:
        log.place(out_fd, LOG_MEMBER)
    finally:
        os.close(out_fd)
    log.close()
    return seal_held_results(out_dir, results_path, result_recipient, review_recipient, log_member=LOG_MEMBER)


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
    return value carries the wrapped shares and previews under ``"review"``; the script's
    output is then not streamed but sealed with them (:class:`HeldLog`), and ``"tail"`` is
    empty — for a failed script too, whose output is deleted on the node.
    """
    from ..staging import encrypt_directory, extract_bundle

    task_started = time.time()
    os.umask(0o077)
    job_dir, made_here = open_job_dir()  # refused before the key is asked for
    slurm_job_id = os.environ.get("SLURM_JOB_ID", "")
    work_fd = -1
    work = ""
    sink: LiveLog | HeldLog | None = None
    try:
        reply = _call_scheduler(CLAIM_HANDLER, job=job_id, slurm_job_id=slurm_job_id,
                                node_times={"script": os.environ.get(SCRIPT_START_VAR, ""),
                                            "task": task_started})
        if not isinstance(reply, dict) or "identity" not in reply:
            raise KeyRefused(str(reply.get("error") if isinstance(reply, dict) else reply))
        work, work_fd = job_dir.make_private(f"xnat-hpc-{job_id}-")
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
        # a held job's output stays on the node until it is sealed with the results
        sink = HeldLog(work_fd) if review_recipient else LiveLog(job_id)
        if review_recipient:
            _send_log(job_id, held_status("start"), STATUS)
        script_fd = sealed_copy(code)
        try:
            rc = _run_script(script_command(script_fd, str(root / "bundle" / script_member)), env, tmp_dir,
                             sink, pass_fds=(script_fd,))
        finally:
            os.close(script_fd)
        result = {"exit_code": rc, "tail": list(sink.tail), "slurm_job_id": slurm_job_id, "results": None,
                  "node": socket.gethostname()}
        if review_recipient:
            _send_log(job_id, held_status("end", sink.lines, sink.bytes, rc), STATUS)
            if rc == 0:
                result["results"], result["review"] = _seal_held(sink, work_fd, out_dir, results_path,
                                                                 result_recipient, review_recipient)
        elif rc == 0:
            result["results"] = encrypt_directory(out_dir, result_recipient, results_path)
        return result
    finally:
        if sink is not None:
            sink.close()
        if work_fd >= 0:
            os.close(work_fd)
        if work:
            job_dir.remove(work)
        if made_here:
            job_dir.wipe()
        job_dir.close()
