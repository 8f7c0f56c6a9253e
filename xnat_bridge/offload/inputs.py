"""Checking what a researcher hands to :meth:`OffloadManager.submit`: the script and the dataset."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

from ..errors import InvalidRequest, NotFound
from ..files import safe_relpath

MAX_SCRIPT_BYTES = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class Script:
    """A training script, read once: its display path, content and sha256."""

    path: str  # relative to the base directory it was found under
    name: str  # file name, the bundle member is ``script/<name>``
    content: bytes
    sha256: str

    @property
    def member(self) -> str:
        return f"script/{self.name}"


def _inside(base_real: str, real: str) -> bool:
    return real.startswith(base_real.rstrip(os.sep) + os.sep)


def resolve_script(script, bases: list[Path]) -> Script:
    """Find *script* (relative to ``bases[0]``, or absolute inside one of *bases*) and read it.

    Refuses paths with ``..``, paths outside the bases (also through symbolic
    links), anything that is not a regular file, and files above 16 MiB.
    """
    if isinstance(script, Path):
        script = str(script)
    if not isinstance(script, str) or not script.strip():
        raise InvalidRequest("script must be the path of a Python file in your workspace, e.g. 'train.py'",
                             item="script")
    bases_real = [os.path.realpath(b) for b in bases]
    if os.path.isabs(script):
        candidate = script
        if not any(_inside(b, os.path.realpath(candidate)) for b in bases_real):
            raise InvalidRequest(f"script {script!r} is outside your workspace "
                                 f"({', '.join(map(str, bases))}); copy it there first", item=script)
    else:
        try:
            safe_relpath(script)
        except InvalidRequest:
            raise InvalidRequest(f"script {script!r} is not a plain relative path inside your workspace "
                                 "(no '..', no leading '/')", item=script[:200]) from None
        candidate = os.path.join(bases[0], script)
    try:
        lst = os.lstat(candidate)
    except FileNotFoundError:
        raise NotFound(f"script {script!r} does not exist (looked in {os.path.dirname(candidate)})",
                       item=script) from None
    except OSError as e:
        raise InvalidRequest(f"script {script!r} cannot be read: {e.strerror}", item=script) from None
    real = os.path.realpath(candidate)
    base = next((b for b in bases_real if _inside(b, real)), None)
    if base is None:
        raise InvalidRequest(f"script {script!r} is outside your workspace ({', '.join(map(str, bases))})"
                             + (f" (it is a symbolic link to {os.readlink(candidate)!r})"
                                if stat.S_ISLNK(lst.st_mode) else "") + "; copy it there first", item=script)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(f"script {script!r} is not a regular file", item=script)
        if st.st_size > MAX_SCRIPT_BYTES:
            raise InvalidRequest(f"script {script!r} has {st.st_size} bytes; the limit is "
                                 f"{MAX_SCRIPT_BYTES} (put data into the dataset, not the script)", item=script)
        with os.fdopen(fd, "rb", closefd=False) as f:
            content = f.read(MAX_SCRIPT_BYTES + 1)
    finally:
        os.close(fd)
    name = os.path.basename(real)
    safe_relpath(name)
    return Script(os.path.relpath(real, base), name, content, hashlib.sha256(content).hexdigest())


def check_dataset(conn, name: str, version: int | None):
    """Load dataset *name* (NotFound), refuse an empty one, check scope and XNAT read access."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidRequest(f"dataset_version must be a positive integer, not {version!r}")
    manifest = conn.load_dataset(name, version)
    if not manifest.files:
        raise InvalidRequest(f"dataset {name!r} v{manifest.version} has no files; nothing to train on",
                             item=name)
    missing = [f.name for f in manifest.files if not f.sha256]
    if missing:
        raise InvalidRequest(f"dataset {name!r} v{manifest.version} lacks sha256 for {missing[0]!r}; "
                             "create it again", item=name)
    for project in sorted({f.archive_path.split("/", 1)[0] for f in manifest.files}):
        conn.scope.check_project(project)
        conn.permission_info().require_read(project)
    return manifest
