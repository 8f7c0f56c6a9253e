"""Reading XNAT files: two modes behind one interface.

* ``mount``: read from a read-only archive mount (``XNAT_DATA``), which holds
  XNAT's layout ``{project}/arc001/{session}/SCANS/{scan}/{resource}/{path}``.
  Every path is resolved and must stay inside the mount (symlinks that lead
  elsewhere are refused).
* ``api``: download through XNAT REST with the user's own session into a
  per-user cache (``~/.cache/xnat-hpc/files`` by default): resumable (HTTP
  ``Range`` on a ``.part`` file), verified against XNAT's md5 digest and, when
  known, the manifest's sha256, concurrent (a thread pool), and atomic (the
  cache entry appears under its final name only when complete and verified).

Both return the same bytes for the same :class:`FileRef`; the mode is chosen by
what the server was given (``XNAT_DATA`` set and readable → mount; the
connection reads it through :mod:`xnat_bridge.server_env`).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Callable

from .client import XnatClient
from .errors import Conflict, InvalidRequest, NotFound

CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class FileRef:
    """Where one XNAT file lives: REST ``uri`` and archive-relative ``archive_path``."""

    uri: str
    archive_path: str
    size: int
    md5: str = ""
    sha256: str = ""


def safe_relpath(rel: str) -> str:
    """Refuse absolute paths, ``..``/``.``/empty segments, NUL and backslashes."""
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        raise InvalidRequest(f"unsafe path {rel!r}", item=rel[:200])
    if any(part in ("", ".", "..") for part in rel.split("/")):
        raise InvalidRequest(f"unsafe path {rel!r}", item=rel[:200])
    return rel


def _inside(root: Path, rel: str) -> Path:
    root_real = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root_real / safe_relpath(rel)))
    if root_real not in real.parents:
        raise InvalidRequest(f"{rel} leads outside {root}", item=rel)
    return real


class FileAccess:
    """Interface: ``open(ref)`` → binary stream; ``fetch(refs)`` → local paths."""

    mode = "none"

    def open(self, ref: FileRef) -> BinaryIO:  # pragma: no cover - interface
        raise NotImplementedError

    def fetch(self, refs: list[FileRef], *, workers: int = 4,
              progress: Callable[[int], None] | None = None) -> list[Path]:  # pragma: no cover
        raise NotImplementedError


class MountAccess(FileAccess):
    mode = "mount"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotFound(f"XNAT_DATA mount {root} does not exist")

    def path(self, ref: FileRef) -> Path:
        real = _inside(self.root, ref.archive_path)
        if not real.is_file():
            raise NotFound(f"{ref.archive_path} is not in the archive mount", item=ref.archive_path)
        return real

    def open(self, ref: FileRef) -> BinaryIO:
        return open(self.path(ref), "rb")

    def fetch(self, refs, *, workers=4, progress=None) -> list[Path]:
        out = []
        for ref in refs:
            p = self.path(ref)
            if p.stat().st_size != ref.size:
                raise Conflict(f"{ref.archive_path} changed in XNAT: size {p.stat().st_size}, "
                               f"expected {ref.size}", item=ref.archive_path)
            out.append(p)
            if progress:
                progress(ref.size)
        return out


class ApiAccess(FileAccess):
    mode = "api"

    def __init__(self, client: XnatClient, cache_dir: str | Path | None = None):
        self.client = client
        self.cache_dir = Path(cache_dir or Path.home() / ".cache" / "xnat-hpc" / "files")
        self.cache_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    def cache_path(self, ref: FileRef) -> Path:
        """The cache entry: by host + URI + XNAT digest, so a changed file gets a new entry."""
        key = hashlib.sha256(f"{self.client.host}\n{ref.uri}\n{ref.md5}\n{ref.size}".encode()).hexdigest()
        name = safe_relpath(ref.archive_path).rsplit("/", 1)[-1]
        return self.cache_dir / key[:2] / f"{key[2:20]}-{name}"

    def open(self, ref: FileRef) -> BinaryIO:
        return open(self._fetch_one(ref, None), "rb")

    def fetch(self, refs, *, workers=4, progress=None) -> list[Path]:
        if workers <= 1 or len(refs) <= 1:
            return [self._fetch_one(r, progress) for r in refs]
        with cf.ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(lambda r: self._fetch_one(r, progress), refs))

    def _fetch_one(self, ref: FileRef, progress) -> Path:
        final = self.cache_path(ref)
        if final.exists() and final.stat().st_size == ref.size:
            if progress:
                progress(ref.size)
            return final
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = final.with_name(final.name + ".part")
        have = part.stat().st_size if part.exists() else 0
        if have > ref.size:
            part.unlink()
            have = 0
        if have < ref.size or ref.size == 0:
            headers = {"Range": f"bytes={have}-"} if have else None
            resp = self.client.request("GET", ref.uri, stream=True, headers=headers,
                                       what=ref.archive_path, timeout=120)
            if have and resp.status_code != 206:  # server ignored the range: start over
                have = 0
            with resp, open(part, "ab" if have else "wb") as out:
                os.chmod(part, 0o600)
                for chunk in resp.iter_content(CHUNK):
                    out.write(chunk)
                    if progress:
                        progress(len(chunk))
            if have and progress:
                progress(have)
        self._verify(part, ref)
        os.replace(part, final)
        return final

    @staticmethod
    def _verify(part: Path, ref: FileRef) -> None:
        size = part.stat().st_size
        md5, sha = hashlib.md5(), hashlib.sha256()
        with open(part, "rb") as f:
            while chunk := f.read(CHUNK):
                md5.update(chunk)
                if ref.sha256:
                    sha.update(chunk)
        bad = (size != ref.size or (ref.md5 and md5.hexdigest() != ref.md5)
               or (ref.sha256 and sha.hexdigest() != ref.sha256))
        if bad:
            part.unlink(missing_ok=True)
            raise Conflict(f"download of {ref.archive_path} does not match XNAT's checksum/size; "
                           "it was discarded — try again", item=ref.archive_path)


def choose_access(client: XnatClient, data_root: str | None = None,
                  cache_dir: str | Path | None = None) -> FileAccess:
    """``mount`` when *data_root* (the server's ``XNAT_DATA``) is a readable directory, else ``api``."""
    if data_root and os.path.isdir(data_root) and os.access(data_root, os.R_OK | os.X_OK):
        return MountAccess(data_root)
    return ApiAccess(client, cache_dir)


def copy_to(paths_and_names: list[tuple[Path, str]], dest: Path) -> list[Path]:
    """Copy fetched files to ``dest/name`` (names checked), creating directories."""
    out = []
    for src, name in paths_and_names:
        target = dest / safe_relpath(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        shutil.copyfile(src, tmp)
        os.replace(tmp, target)
        out.append(target)
    return out
