"""The age engine that runs the ``age`` command-line tool in a child process.

With the CLI (Debian package ``age``), the tar stream built and hashed in
Python and the encryption run on two cores, like ``tar | age``. Only public
data reaches the child's command line: the recipient (``age1...``) to
encrypt; to decrypt, the identity goes through an anonymous pipe read as
``-i /dev/fd/N`` — never a file, an argument or an environment variable. The
child gets a minimal environment (PATH and LC_ALL only). Every age process
is reaped, whatever happens.

Imports :mod:`.common` only; :mod:`.engine` chooses between this engine and
:mod:`.age_pyrage`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

from ..errors import CommandFailed, Conflict, InvalidRequest, NotFound, PermissionDenied
from .common import XCHUNK, Tick, TickCallback, set_pipe_size


@dataclasses.dataclass(frozen=True)
class AgeCliEngine:
    """The ``age`` CLI: encryption and decryption in a child process (two cores).

    *binary* is the age executable; None looks ``age`` up on PATH each time
    the engine is used (so the object can travel to another host), and
    raises :class:`~xnat_bridge.errors.NotFound` when it is not installed.
    """

    name: ClassVar[str] = "age-cli"
    binary: str | None = None

    def executable(self) -> str:
        """The age executable to run (NotFound when it is not installed)."""
        found = self.binary or shutil.which("age")
        if found is None:
            raise NotFound("the age command-line tool is not installed (Debian package age); "
                           "install it or use the pyrage engine")
        return found

    def encrypt(self, fd: int, chunks: Iterator, recipient,
                on_tick: TickCallback | None = None) -> None:
        """Encrypt *chunks* to *recipient* into *fd*; closes *chunks* in every case."""
        try:
            encrypt_cli(self.executable(), fd, chunks, str(recipient), on_tick)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # closes the file being read, if any

    def decryptor(self, path: Path, identity) -> "CliDecryptor":
        """A running ``age -d`` over the file *path* (a pyrage identity or its text)."""
        return CliDecryptor(self.executable(), path, str(identity))


def _child_env() -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}


def encrypt_argv(age: str, recipient: str) -> list[str]:
    """``age -r RECIPIENT``: plaintext on stdin, ciphertext on stdout. Public data only."""
    if not recipient.startswith("age1"):
        raise InvalidRequest("only an age1... recipient may reach the age command line")
    return [age, "-r", recipient]


def decrypt_argv(age: str, identity_fd: int) -> list[str]:
    """``age -d -i /dev/fd/N``: ciphertext on stdin, the identity read from pipe *N*."""
    return [age, "-d", "-i", f"/dev/fd/{int(identity_fd)}"]


def _age_error(what: str, argv: list[str], rc: int, stderr: str) -> BaseException:
    text = stderr.strip()
    if "no space left" in text.lower():
        return OSError(errno.ENOSPC, f"no space left on device while {what} ({text})")
    return CommandFailed(argv, rc, stderr=text)


# --------------------------------------------------------------------------- encryption


def encrypt_cli(age: str, fd: int, chunks: Iterator, recipient: str,
                on_tick: TickCallback | None = None) -> None:
    """Feed *chunks* (bytes-like; :class:`Tick` marks go to *on_tick*) to ``age -r`` writing into *fd*.

    Raises what the chunk source raises (age is killed first), OSError ENOSPC
    or CommandFailed (with age's stderr) when age fails. Always reaps age.
    """
    argv = encrypt_argv(age, recipient)
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=fd, stderr=subprocess.PIPE,
                            bufsize=0, close_fds=True, env=_child_env())
    wfd = proc.stdin.fileno()
    set_pipe_size(wfd)
    broken = False
    try:
        for chunk in chunks:
            if type(chunk) is Tick:
                if on_tick is not None:
                    on_tick(chunk.nbytes, chunk.nfiles)
                continue
            view = memoryview(chunk)
            try:
                while view:
                    view = view[os.write(wfd, view):]
            except BrokenPipeError:
                broken = True  # age died: its exit status and stderr tell why (below)
                break
    except BaseException:
        proc.kill()  # a source failure: age must not complete a file of a cut stream
        raise
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        rc = proc.wait()  # reaped in every case
        stderr = proc.stderr.read(1 << 16).decode("utf-8", "replace")
        proc.stderr.close()
    if rc != 0 or broken:
        raise _age_error("encrypting", argv, rc, stderr)


# --------------------------------------------------------------------------- decryption


class CliDecryptor:
    """``age -d`` in a child process: ciphertext on its stdin, plaintext from ``reader``.

    The identity is written into an anonymous pipe (a few dozen bytes, within
    the pipe buffer) whose read end the child opens as ``/dev/fd/N``; the
    parent closes both ends before reading anything. :meth:`finish` reads to
    the end and requires exit status 0 (age authenticated the whole stream);
    :meth:`abort` closes the reader, so that age stops (SIGPIPE), and reaps it.
    """

    def __init__(self, age: str, path: Path, secret: str):
        self.path = path
        try:
            src = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist", item=str(path)) from None
        try:
            r, w = os.pipe()
            try:
                os.write(w, secret.encode() + b"\n")
            finally:
                os.close(w)
            try:
                self.argv = decrypt_argv(age, r)
                self._proc = subprocess.Popen(self.argv, stdin=src, stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, bufsize=XCHUNK, pass_fds=(r,),
                                              env=_child_env())
            finally:
                os.close(r)
        finally:
            os.close(src)
        set_pipe_size(self._proc.stdout.fileno())
        self.reader = self._proc.stdout
        self.returncode: int | None = None
        self._stderr = ""

    def _reap(self, timeout: float | None = None) -> None:
        if self.returncode is not None:
            return
        try:
            self.returncode = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self.returncode = self._proc.wait()
        self._stderr = self._proc.stderr.read(1 << 16).decode("utf-8", "replace").strip()
        self._proc.stderr.close()

    def finish(self) -> None:
        while self.reader.read(XCHUNK):
            pass
        self.reader.close()
        self._reap()
        if self.returncode != 0:
            self.raise_error(stopped_ok=False)

    def abort(self) -> None:
        self.reader.close()
        self._reap(timeout=10)

    def raise_error(self, stopped_ok: bool = True) -> None:
        rc = self.returncode
        if rc is None or rc == 0 or (rc < 0 and stopped_ok):  # < 0: stopped by us (SIGPIPE)
            return
        name, text = self.path.name, self._stderr
        low = text.lower()
        if "no identity matched" in low:
            raise PermissionDenied(f"{name} cannot be decrypted with this identity: it was encrypted "
                                   "to another recipient; use the identity whose public key the "
                                   "bundle was staged for", item=name)
        if "authenticate" in low or "unexpected eof" in low or "truncated" in low:
            raise Conflict(f"{name} is corrupt or truncated: age could not authenticate it; "
                           "stage it again", item=name)
        if "header" in low or "intro" in low:
            raise InvalidRequest(f"{name} is not a valid age file ({text.splitlines()[0]})", item=name)
        raise _age_error(f"decrypting {name}", self.argv, rc, text)
