"""Checking what a researcher hands to :meth:`OffloadManager.submit`: script, dataset, client token.

:func:`resolve_script` is the ONE script resolver of the project: the notebook
API, the widgets and the REST API (through the manager) all go through it, with
one set of rules. :func:`check_client_token` is the one syntax of an
idempotency token; the manager alone checks and looks it up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import stat
from pathlib import Path

from ..errors import InvalidRequest, NotFound
from ..files import safe_relpath

MAX_SCRIPT_BYTES = 16 * 2**20
CLIENT_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,128}$")


@dataclasses.dataclass(frozen=True)
class Script:
    """A training script, read once: its display path, content and sha256."""

    path: str  # relative to the base directory it was found under
    name: str  # file name, the bundle member is ``script/<name>``
    content: bytes
    sha256: str
    source: Path  # the real path it was read from

    @property
    def member(self) -> str:
        return f"script/{self.name}"


class ScriptNotFound(InvalidRequest, NotFound):
    """The script does not exist: a bad request (HTTP 400, ``invalid_request``) that is
    also a :class:`~xnat_bridge.errors.NotFound` for Python callers."""

    status = InvalidRequest.status
    reason = InvalidRequest.reason


def _inside(base_real: str, real: str) -> bool:
    return real.startswith(base_real.rstrip(os.sep) + os.sep)


def resolve_script(script, bases: list[Path]) -> Script:
    """Find *script* and read it: a ``.py`` file relative to ``bases[0]``, or an absolute
    path that leads inside one of *bases* (the server's root directory, the workspace).

    Refused (:class:`InvalidRequest`, with a message naming the problem): non-strings
    and empty strings; NUL and backslashes; ``~``; absolute paths outside the bases;
    ``..``, ``.`` and empty segments; names not ending in ``.py``; paths leading
    outside the bases (also through symbolic links, at any level); anything that is
    not a regular file; files above 16 MiB. A missing file: :class:`ScriptNotFound`.
    """
    if isinstance(script, Path):
        script = str(script)
    if not isinstance(script, str) or not script.strip():
        raise InvalidRequest("script must be the path of a Python file relative to the server's root "
                             "directory (your workspace), e.g. 'train.py'", item="script")
    item = script[:200]
    where = ", ".join(map(str, bases))
    if "\x00" in script or "\\" in script:
        raise InvalidRequest(f"script path {item!r} contains a NUL or backslash", item=item)
    if script.startswith("~"):
        raise InvalidRequest(f"script path {item!r} is absolute; give it relative to the server's root "
                             "directory", item=item)
    bases_real = [os.path.realpath(b) for b in bases]
    if os.path.isabs(script):
        candidate = script
        if not any(_inside(b, os.path.realpath(candidate)) for b in bases_real):
            raise InvalidRequest(f"script {item!r} is an absolute path outside your workspace ({where}); "
                                 "give it relative to the server's root directory, or copy it there first",
                                 item=item)
    else:
        if ".." in script.split("/"):
            raise InvalidRequest(f"script {item!r} contains '..'; it must be a plain relative path inside "
                                 "the server's root directory", item=item)
        try:
            safe_relpath(script)
        except InvalidRequest:
            raise InvalidRequest(f"script {item!r} is not a plain relative path inside your workspace "
                                 "(no '.' or empty segments)", item=item) from None
        candidate = os.path.join(bases[0], script)
    if not script.endswith(".py"):
        irregular = os.path.lexists(candidate) and not os.path.isfile(candidate)
        raise InvalidRequest(f"script {item!r} is not a Python file (.py)"
                             + (" and not a regular file" if irregular else ""), item=item)
    try:
        lst = os.lstat(candidate)
    except FileNotFoundError:
        raise ScriptNotFound(f"script {item!r} does not exist (looked in {os.path.dirname(candidate)})",
                             item=item) from None
    except OSError as e:
        raise InvalidRequest(f"script {item!r} cannot be read: {e.strerror}", item=item) from None
    real = os.path.realpath(candidate)
    base = next((b for b in bases_real if _inside(b, real)), None)
    if base is None:
        raise InvalidRequest(f"script {item!r} is outside your workspace ({where})"
                             + (f" (it is a symbolic link to {os.readlink(candidate)!r})"
                                if stat.S_ISLNK(lst.st_mode) else "") + "; copy it there first", item=item)
    fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidRequest(f"script {item!r} is not a regular file", item=item)
        if st.st_size > MAX_SCRIPT_BYTES:
            raise InvalidRequest(f"script {item!r} has {st.st_size} bytes; the limit is "
                                 f"{MAX_SCRIPT_BYTES} (put data into the dataset, not the script)", item=item)
        with os.fdopen(fd, "rb", closefd=False) as f:
            content = f.read(MAX_SCRIPT_BYTES + 1)
    finally:
        os.close(fd)
    name = os.path.basename(real)
    safe_relpath(name)
    return Script(os.path.relpath(real, base), name, content, hashlib.sha256(content).hexdigest(),
                  Path(real))


def check_client_token(token) -> str | None:
    """*token* when it is a valid idempotency token (or None), else InvalidRequest."""
    if token is not None and (not isinstance(token, str) or not CLIENT_TOKEN_RE.match(token)):
        raise InvalidRequest("client_token must be 1-128 letters, digits, '_', '.', ':' or '-'",
                             item="client_token")
    return token


def check_dataset(conn, name: str, version: int | None):
    """Load dataset *name* (NotFound), refuse an empty one, check scope and XNAT read access.

    Files whose sha256 is not known yet are fine: staging computes it (one pass over the data)."""
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise InvalidRequest(f"dataset_version must be a positive integer, not {version!r}")
    manifest = conn.load_dataset(name, version)
    if not manifest.files:
        raise InvalidRequest(f"dataset {name!r} v{manifest.version} has no files; nothing to train on",
                             item=name)
    # a file's sha256 may still be unknown (""): the first staging computes and records it
    for project in sorted({f.archive_path.split("/", 1)[0] for f in manifest.files}):
        conn.scope.check_project(project)
        conn.permission_info().require_read(project)
    return manifest


def audit_items(manifest) -> list[str]:
    """The XNAT items of a dataset's selection as audit events name them (``PROJECT/SUBJECT/...``)."""
    return ["/".join(str(v) for v in item.values()) for item in manifest.selection]
