"""The plumbing the development clusters share (``slurm up``, ``kube up``): daemons started
directly, without systemd, each with a pid file and a private log, in a session of its own,
stopped with SIGTERM and, after a grace period, SIGKILL.

A pid file can outlive its process and its number be taken by another: :func:`running_pid`
checks the process is alive, not a zombie, and (given a name) still that program.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from pathlib import Path


@dataclasses.dataclass
class DaemonStatus:
    """One daemon, as ``status`` reports it (*detail*: what the cluster says of itself)."""

    name: str
    running: bool
    pid: int | None
    detail: str = ""


def read_pid(path: Path) -> int | None:
    """The number in the pid file *path*; None when there is none."""
    try:
        return int(path.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def _stat_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1][:1]
    except (OSError, IndexError):
        return None


def alive(pid: int | None) -> bool:
    """*pid* names a running process (a zombie is not running)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    state = _stat_state(pid)
    return state is not None and state != "Z"


def running_pid(path: Path, name: str | None = None) -> int | None:
    """The pid in *path* when that process runs and, with *name*, is that program (its first
    argument's base name; an empty command line is a process exiting, still counted)."""
    pid = read_pid(path)
    if not alive(pid):
        return None
    if name is not None:
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            return None
        if argv0 and os.path.basename(argv0) != name:
            return None  # the number was taken by another program
    return pid


def start(argv: list[str], *, log: Path, pid_file: Path, cwd: Path | None = None) -> int:
    """*argv* in a new session (its own process group), stdout and stderr appended to *log*
    (0600), its pid written to *pid_file*; the pid."""
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd,
                                start_new_session=True, cwd=cwd)
    finally:
        os.close(log_fd)
    pid_file.write_text(f"{proc.pid}\n")
    return proc.pid


def terminate(pid: int, timeout: float = 15, *, group: bool = False) -> None:
    """SIGTERM to *pid* (its process group with *group*), SIGKILL after *timeout* seconds if it
    still runs."""
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
