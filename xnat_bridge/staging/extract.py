"""Decryption and safe extraction of bundles and result archives.

Top layer: builds on :mod:`.manifest`, :mod:`.keys`, :mod:`.engine` and :mod:`.common`.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import Conflict, InvalidRequest, NotFound
from ..files import safe_relpath
from .common import DATA_PREFIX, HASHES_NAME, MANIFEST_NAME, MAX_MANIFEST_BYTES, XCHUNK, BytesSource
from .engine import AgeEngine, resolve_engine
from .keys import as_identity
from .manifest import canonical_json, final_manifest, norm_digest, parse_hashes, parse_manifest

log = logging.getLogger(__name__)


def _is_regular(m: tarfile.TarInfo) -> bool:
    return m.type in (tarfile.REGTYPE, tarfile.AREGTYPE) and not m.sparse


def _kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "a symbolic link"
    if m.islnk():
        return "a hard link"
    if m.ischr() or m.isblk():
        return "a device"
    if m.isfifo():
        return "a FIFO"
    if m.isdir():
        return "a directory"
    if m.issparse():
        return "a sparse file"
    return f"of tar type {m.type!r}"


class _Tree:
    """Creates files and directories under *root* through directory file
    descriptors, never following a symlink, and remembers what it created.

    With *parent_fd*, *root* is a name in that directory: it is made and
    opened relative to the descriptor (the node's job directory, whose path
    is not trusted)."""

    def __init__(self, root: str | Path, parent_fd: int | None = None):
        self.root = Path(root)
        self.parent_fd = parent_fd
        if parent_fd is not None and (len(self.root.parts) != 1 or str(self.root) in (".", "..")):
            raise InvalidRequest(f"{root!r} must be one name in the directory it is made in",
                                 item=str(root))
        at = {} if parent_fd is None else {"dir_fd": parent_fd}
        self.created_root = False
        try:
            os.mkdir(self.root, 0o700, **at)
            self.created_root = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise NotFound(f"cannot create {self.root}: its parent does not exist",
                           item=str(self.root)) from None
        try:
            self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, **at)
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                raise InvalidRequest(f"{self.root} is a symbolic link or not a directory; refusing to "
                                     "extract into it", item=str(self.root)) from None
            raise
        self.created: list[tuple[str, bool]] = []  # (relative path, is_dir)
        self._cached: tuple[str, int] | None = None

    def _dir_fd(self, parts: list[str]) -> int:
        key = "/".join(parts)
        if not parts:
            return self.fd
        if self._cached and self._cached[0] == key:
            return self._cached[1]
        cur = self.fd
        try:
            for i, part in enumerate(parts):
                rel = "/".join(parts[:i + 1])
                try:
                    os.mkdir(part, 0o700, dir_fd=cur)
                    self.created.append((rel, True))
                except FileExistsError:
                    pass
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=cur)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise InvalidRequest(f"{rel} in {self.root} is not a directory (a file or a "
                                             "symbolic link); refusing to write through it",
                                             item=rel) from None
                    raise
                if cur != self.fd:
                    os.close(cur)
                cur = nxt
        except BaseException:
            if cur != self.fd:
                os.close(cur)
            raise
        if self._cached:
            os.close(self._cached[1])
        self._cached = (key, cur)
        return cur

    def mkdirs(self, rel: str) -> None:
        self._dir_fd(rel.split("/"))

    def write(self, rel: str, src: BinaryIO, size: int, *, md5: bool = False,
              keep: bytearray | None = None) -> tuple[str, str]:
        """Copy *src* into the new file *rel* (0600); return its sha256 and (with *md5*) md5.
        With *keep*, the bytes are also appended to it (what was hashed is what is kept)."""
        parts = rel.split("/")
        parent = self._dir_fd(parts[:-1])
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=parent)
        except FileExistsError:
            raise Conflict(f"{rel} already exists in {self.root}; extract into an empty directory",
                           item=rel) from None
        self.created.append((rel, False))
        digest = hashlib.sha256()
        side = _SideHash(size) if md5 else None
        done = 0
        try:
            with os.fdopen(fd, "wb") as out:
                while True:
                    chunk = src.read(XCHUNK)
                    if not chunk:
                        break
                    digest.update(chunk)
                    if side is not None:
                        side.update(chunk)
                    if keep is not None:
                        keep += chunk
                    out.write(chunk)
                    done += len(chunk)
            md5_hex = side.hexdigest() if side is not None else ""
        finally:
            if side is not None:
                side.stop()
        if done != size:
            raise Conflict(f"{rel}: {done} bytes in the archive, {size} expected", item=rel)
        return digest.hexdigest(), md5_hex

    def remove_created(self) -> None:
        for rel, is_dir in reversed(self.created):
            try:
                if is_dir:
                    os.rmdir(rel, dir_fd=self.fd)
                else:
                    os.unlink(rel, dir_fd=self.fd)
            except OSError:
                log.warning("could not remove %s from %s", rel, self.root)
        self.created.clear()
        if self.created_root:
            try:
                os.rmdir(self.root, **({} if self.parent_fd is None else {"dir_fd": self.parent_fd}))
            except OSError:
                log.warning("could not remove %s", self.root)

    def close(self) -> None:
        if self._cached:
            os.close(self._cached[1])
            self._cached = None
        os.close(self.fd)


class _SideHash:
    """XNAT's md5 of a file, computed beside its sha256: in a helper thread for large files
    (hashlib releases the GIL, so both digests run on two cores), inline for small ones."""

    THREAD_FROM = 8 << 20
    _END = None

    def __init__(self, size: int):
        self._md5 = hashlib.md5()
        self._queue: queue.Queue | None = None
        if size >= self.THREAD_FROM:
            self._queue = queue.Queue(maxsize=64)
            self._thread = threading.Thread(target=self._run, name="bundle-md5", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while (chunk := self._queue.get()) is not self._END:
            self._md5.update(chunk)

    def update(self, chunk: bytes) -> None:
        if self._queue is None:
            self._md5.update(chunk)
        else:
            self._queue.put(chunk)

    def hexdigest(self) -> str:
        self.stop()
        return self._md5.hexdigest()

    def stop(self) -> None:
        if self._queue is not None:
            self._queue.put(self._END)
            self._thread.join()
            self._queue = None


def _member_path(name: str, label: str) -> str:
    try:
        return safe_relpath(name)
    except InvalidRequest:
        raise InvalidRequest(f"{label}: member {name!r} has an unsafe path (absolute, '..', empty "
                             "segment, NUL or backslash); refusing to extract", item=name[:200]) from None


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    while True:
        member = tar.next()
        if member is None:
            return
        yield member
        # stream mode keeps every header read so far; forget them to keep memory bounded
        tar.members.clear()


def _run_extraction(path: str | Path, identity, dest_dir: str | Path,
                    body: Callable[[Iterator[tarfile.TarInfo], tarfile.TarFile, _Tree, str], Any],
                    engine: AgeEngine | None, dir_fd: int | None = None):
    key = as_identity(identity)
    path = Path(path)
    label = path.name
    dec = resolve_engine(engine).decryptor(path, key)
    tree: _Tree | None = None
    ok = False
    try:
        tree = _Tree(dest_dir, dir_fd)
        try:
            with tarfile.open(fileobj=dec.reader, mode="r|", bufsize=XCHUNK) as tar:
                result = body(_members(tar), tar, tree, label)
        except tarfile.TarError as e:
            raise InvalidRequest(f"{label} does not hold a valid tar archive ({e})", item=label) from None
        dec.finish()
        ok = True
        return result
    except BaseException:
        dec.abort()
        dec.raise_error()  # a decryption failure explains the rest best
        raise
    finally:
        if tree is not None:
            if not ok:
                tree.remove_created()
            tree.close()


def _read_small(tar: tarfile.TarFile, m: tarfile.TarInfo, what: str, label: str) -> bytes:
    if m.size > MAX_MANIFEST_BYTES:
        raise InvalidRequest(f"{label}: {what} is larger than {MAX_MANIFEST_BYTES} bytes", item=label)
    return tar.extractfile(m).read()


def extract_bundle(bundle_path: str | Path, identity, dest_dir: str | Path,
                   expected_manifest_sha256: str | None = None, *,
                   expected_contents_sha256: str | None = None,
                   engine: AgeEngine | None = None, dir_fd: int | None = None,
                   hold: dict[str, bytes] | None = None) -> dict:
    """Decrypt, unpack and verify a bundle into *dest_dir*; return its final manifest (a dict).

    *dest_dir* is created 0700 if missing (its parent must exist); files land
    as ``data/<name>`` and the extra members, 0600, and ``MANIFEST.json`` —
    the final manifest (MANIFEST.json of the bundle with every file's sha256
    from its HASHES.json, ``manifest_sha256`` and ``contents_sha256``) — is
    written last, once everything verified. Members are checked as they
    arrive against the bundle's first member, MANIFEST.json (listed, once,
    regular file, size, extra members' sha256, and XNAT's md5 where no
    *expected_manifest_sha256* is given); HASHES.json must be
    the last member and every data file's sha256 must match it, as must
    *expected_manifest_sha256* and *expected_contents_sha256*. Raises
    PermissionDenied (wrong identity), InvalidRequest (not a bundle; unsafe
    member: escaping path, link, device, FIFO), Conflict (member not listed
    or twice, size, md5 or sha256 mismatch, missing file or HASHES.json, a
    digest differs from the expected one, corrupt ciphertext). Nothing is
    usable before this function returns: on failure everything extracted is
    removed. *engine* decrypts (default: :func:`~.engine.default_engine`, the
    age CLI when installed).

    With *dir_fd*, *dest_dir* is one name in that directory, made and opened
    relative to the descriptor. *hold* names extra members (its keys, e.g. the
    training script) whose verified bytes are put into it as its values once
    the whole bundle verified (a name that is no extra member is removed) — so that a caller runs what was verified rather
    than re-reading a file that could have changed since.
    """
    want = norm_digest(expected_manifest_sha256) if expected_manifest_sha256 else None
    want_contents = norm_digest(expected_contents_sha256) if expected_contents_sha256 else None
    held: dict[str, bytes] = {}
    # XNAT's md5 of a data file is checked here only for a bundle that stands alone. With
    # *expected_manifest_sha256* (the worker always passes it) every file's sha256 must match
    # what the staging computed from the very bytes whose md5 it verified then (REST streams
    # check it at their end; a mount staging checks it where no sha256 was recorded yet, and a
    # recorded one stands for bytes an earlier staging verified): md5 here adds nothing
    check_md5 = want is None

    def body(members, tar, tree, label):
        first = next(members, None)
        if first is None or first.name != MANIFEST_NAME or not _is_regular(first):
            raise InvalidRequest(f"{label} is not a staging bundle: its first member must be "
                                 f"{MANIFEST_NAME}", item=label)
        raw = _read_small(tar, first, MANIFEST_NAME, label)
        head = parse_manifest(raw, label)
        contents = hashlib.sha256(raw).hexdigest()
        if want_contents is not None and contents != want_contents:
            raise Conflict(f"{label} holds bundle contents {contents[:12]}..., not the expected "
                           f"{want_contents[:12]}...", item=label)
        data = {DATA_PREFIX + f["name"]: f for f in head["files"]}
        extras = {f["name"]: f for f in head["extra"]}
        computed: dict[str, str] = {}
        final = None
        for m in members:
            name = _member_path(m.name, label)
            if not _is_regular(m):
                raise InvalidRequest(f"{label}: member {name!r} is {_kind(m)}; bundles hold regular "
                                     "files only", item=name)
            if final is not None:
                raise Conflict(f"{label}: member {name!r} follows {HASHES_NAME}, which must be the "
                               "last member", item=name)
            if name == HASHES_NAME:
                _require_all(label, data, extras)
                shas = parse_hashes(_read_small(tar, m, HASHES_NAME, label), label, head, contents)
                for f in head["files"]:
                    if shas[f["name"]] != computed[f["name"]]:
                        raise Conflict(f"{label}: {DATA_PREFIX + f['name']!r} does not match its "
                                       f"sha256 in {HASHES_NAME}", item=DATA_PREFIX + f["name"])
                final = final_manifest(head, contents, shas)
                if want is not None and final["manifest_sha256"] != want:
                    raise Conflict(f"{label} holds dataset {final['manifest_sha256'][:12]}..., not the "
                                   f"expected {want[:12]}...", item=label)
                continue
            entry = data.pop(name, None) or extras.pop(name, None)
            if entry is None:
                raise Conflict(f"{label}: member {name!r} is not listed in {MANIFEST_NAME} (or "
                               "appears twice)", item=name)
            if m.size != entry["size"]:
                raise Conflict(f"{label}: {name!r} has {m.size} bytes, {MANIFEST_NAME} says "
                               f"{entry['size']}", item=name)
            xnat_md5 = entry.get("md5", "") if check_md5 else ""
            keep = bytearray() if hold and "md5" not in entry and name in hold else None
            sha, md5 = tree.write(name, tar.extractfile(m), m.size, md5=bool(xnat_md5), keep=keep)
            if xnat_md5 and md5 != xnat_md5:
                raise Conflict(f"{label}: {name!r} does not match XNAT's md5 in {MANIFEST_NAME}",
                               item=name)
            if "md5" in entry:  # a data file: its sha256 is checked against HASHES.json
                computed[entry["name"]] = sha
            elif sha != entry["sha256"]:
                raise Conflict(f"{label}: {name!r} does not match its sha256 in {MANIFEST_NAME}",
                               item=name)
            elif keep is not None:
                held[name] = bytes(keep)
        if final is None:
            _require_all(label, data, extras)
            raise Conflict(f"{label} is incomplete: it ends without {HASHES_NAME}, the sha256 of its "
                           "files; stage it again", item=label)
        doc = canonical_json(final)
        tree.write(MANIFEST_NAME, BytesSource(doc), len(doc))
        return final

    manifest = _run_extraction(bundle_path, identity, dest_dir, body, engine, dir_fd)
    if hold is not None:
        for name in [n for n in hold if n not in held]:
            del hold[name]  # not an extra member of this bundle
        hold.update(held)
    log.info("extracted bundle %s into %s: %d files, %d bytes", Path(bundle_path).name, dest_dir,
             manifest["file_count"], manifest["total_size"])
    return manifest


def _require_all(label: str, data: dict, extras: dict) -> None:
    missing = sorted([*data, *extras])
    if missing:
        raise Conflict(f"{label}: {len(missing)} file(s) listed in {MANIFEST_NAME} are missing, "
                       f"e.g. {missing[0]!r}", item=missing[0])


def decrypt_to_directory(path: str | Path, identity, dest_dir: str | Path, *,
                         engine: AgeEngine | None = None) -> dict:
    """Decrypt an age-encrypted tar (e.g. from :func:`encrypt_directory`) into *dest_dir*.

    Same safety rules as :func:`extract_bundle` (no escaping paths, no links,
    devices or FIFOs; files 0600, directories 0700; everything removed on
    failure), without a manifest: regular files and directories are accepted.
    *engine* as for :func:`extract_bundle`. Returns
    ``{"files": [{"name", "size", "sha256"}], "directories": [...]}``.
    """
    def body(members, tar, tree, label):
        files, dirs = [], []
        for m in members:
            name = m.name
            while name.startswith("./"):
                name = name[2:]
            if name in ("", ".") and m.isdir():
                continue
            _member_path(name, label)
            if m.isdir():
                tree.mkdirs(name)
                dirs.append(name)
                continue
            if not _is_regular(m):
                raise InvalidRequest(f"{label}: member {name!r} is {_kind(m)}; only regular files "
                                     "and directories are extracted", item=name)
            sha, _ = tree.write(name, tar.extractfile(m), m.size)
            files.append({"name": name, "size": m.size, "sha256": sha})
        return {"files": files, "directories": dirs}

    result = _run_extraction(path, identity, dest_dir, body, engine)
    log.info("decrypted %s into %s: %d files", Path(path).name, dest_dir, len(result["files"]))
    return result
