"""The one gateway for external commands (``sbatch``, ``squeue``, ``scancel``,
``bwrap``, ``age``, ``munged``, ...).

Arguments are always a list (never a shell string), the command is logged at
debug level, and a non-zero exit raises :class:`~xnat_bridge.errors.CommandFailed`
with the exit code, stdout and stderr — the habit of dask-jobqueue's
``Job._call``. Never pass a secret as an argument: argument lists are visible
to every user in ``ps``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from .errors import CommandFailed

log = logging.getLogger(__name__)


def _check_cmd(cmd: Sequence[str]) -> list[str]:
    cmd = [str(c) for c in cmd]
    if not cmd:
        raise ValueError("empty command")
    return cmd


def run(
    cmd: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = 60,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Run *cmd* to completion and return the CompletedProcess (text output).

    Raises CommandFailed on a non-zero exit when *check* is true, and when the
    program does not exist (exit code 127, as a shell would say).
    """
    cmd = _check_cmd(cmd)
    log.debug("run: %s", " ".join(cmd))
    try:
        proc = subprocess.run(
            cmd,
            input=input,
            capture_output=True,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            timeout=timeout,
        )
    except FileNotFoundError:
        raise CommandFailed(cmd, 127, "", f"{cmd[0]}: command not found") from None
    except subprocess.TimeoutExpired as e:
        raise CommandFailed(cmd, 124, "", f"timed out after {timeout} s") from e
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, out, err)
    return result


async def arun(
    cmd: Sequence[str],
    *,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = 60,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """The asyncio twin of :func:`run`, for code on an event loop."""
    cmd = _check_cmd(cmd)
    log.debug("arun: %s", " ".join(cmd))
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=cwd,
        )
    except FileNotFoundError:
        raise CommandFailed(cmd, 127, "", f"{cmd[0]}: command not found") from None
    try:
        out_b, err_b = await asyncio.wait_for(proc.communicate(input), timeout)
    except asyncio.TimeoutError as e:
        proc.kill()
        await proc.wait()
        raise CommandFailed(cmd, 124, "", f"timed out after {timeout} s") from e
    out = out_b.decode(errors="replace")
    err = err_b.decode(errors="replace")
    result = subprocess.CompletedProcess(cmd, proc.returncode, out, err)
    if check and proc.returncode != 0:
        raise CommandFailed(cmd, proc.returncode, out, err)
    return result


def which(name: str) -> str | None:
    """Path of *name* on PATH or in the sbin directories (root tools live there)."""
    return shutil.which(name) or shutil.which(
        name, path="/usr/sbin:/sbin:/usr/local/sbin:/usr/bin:/bin"
    )


def pid_alive(pid: int) -> bool:
    """Whether a process *pid* exists on this machine (one of another account counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
