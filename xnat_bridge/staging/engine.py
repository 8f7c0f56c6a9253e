"""The age engine, a plug point: what encrypts and decrypts the tar streams.

Two implementations, one contract (:class:`AgeEngine`):

* :class:`~.age_cli.AgeCliEngine` — the ``age`` command-line tool (Debian
  package ``age``) in a child process: the tar stream is built and hashed in
  Python while age encrypts on another core, like ``tar | age``;
* :class:`~.age_pyrage.PyrageEngine` — pyrage in-process.

Both write and read the same age v1 files. :func:`default_engine` picks the
CLI when it is on PATH and pyrage otherwise; :func:`engine_by_name` maps a
configuration value (``"auto"``, ``"age-cli"``, ``"pyrage"``) to an engine.
Every function of :mod:`xnat_bridge.staging` that encrypts or decrypts takes
``engine=`` (default: :func:`default_engine`, decided at each call); nothing
is switched by module state.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from .age_cli import AgeCliEngine
from .age_pyrage import PyrageEngine
from .common import TickCallback

__all__ = ["AgeCliEngine", "AgeEngine", "Decryptor", "ENGINE_NAMES", "PyrageEngine", "default_engine",
           "engine_by_name", "resolve_engine"]

#: the names :func:`engine_by_name` accepts
ENGINE_NAMES = ("auto", "age-cli", "pyrage")


class Decryptor(Protocol):
    """A decryption in progress, from :meth:`AgeEngine.decryptor`.

    ``reader`` yields the plaintext. :meth:`finish` reads to the end and
    raises unless the whole stream was authenticated; :meth:`abort` stops the
    decryption and releases its thread or process; :meth:`raise_error`
    raises the decryption's own failure, if any, as a package error
    (PermissionDenied: another recipient; Conflict: corrupt or truncated;
    InvalidRequest: not an age file), and does nothing otherwise.
    """

    reader: BinaryIO

    def finish(self) -> None: ...

    def abort(self) -> None: ...

    def raise_error(self) -> None: ...


@runtime_checkable
class AgeEngine(Protocol):
    """Encrypts chunk streams to an age X25519 recipient and decrypts age files.

    ``encrypt(fd, chunks, recipient, on_tick)`` writes the age file for
    *chunks* (bytes-like items, with :class:`~.common.Tick` marks that go to
    *on_tick*) into the open file *fd*, to the pyrage *recipient*. An item
    that is not ``bytes`` (a view of a reader's buffer) is valid only until
    the next item is requested: an engine that keeps items longer copies
    them. It closes
    *chunks* whatever happens, raises what the chunk source raises, and
    OSError ENOSPC or CommandFailed when the encryption itself fails. The
    caller fsyncs and closes *fd*.

    ``decryptor(path, identity)`` starts decrypting the file *path* with the
    pyrage *identity* and returns a :class:`Decryptor`; NotFound if *path*
    does not exist.

    Engines are small frozen objects (picklable, comparable) so that a
    configuration can name one and a job can carry it.
    """

    name: str

    def encrypt(self, fd: int, chunks: Iterator, recipient,
                on_tick: TickCallback | None = None) -> None: ...

    def decryptor(self, path: Path, identity) -> Decryptor: ...


def default_engine() -> AgeEngine:
    """The ``age`` CLI when it is on PATH, pyrage otherwise (looked up at each call)."""
    found = shutil.which("age")
    return AgeCliEngine(found) if found is not None else PyrageEngine()


def engine_by_name(name: str) -> AgeEngine:
    """The engine a configuration names: ``"auto"`` (:func:`default_engine`),
    ``"age-cli"`` (the CLI; using it raises NotFound where age is not
    installed) or ``"pyrage"``. Anything else: ValueError."""
    if name == "auto":
        return default_engine()
    if name == "age-cli":
        return AgeCliEngine()
    if name == "pyrage":
        return PyrageEngine()
    raise ValueError(f"staging engine {name!r}: use one of {', '.join(ENGINE_NAMES)}")


def resolve_engine(engine: AgeEngine | None) -> AgeEngine:
    """*engine*, or :func:`default_engine` when it is None (the ``engine=`` default)."""
    return default_engine() if engine is None else engine
