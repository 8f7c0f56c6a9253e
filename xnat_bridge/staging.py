"""Encrypted staging bundles: a tar stream encrypted with age, written to shared storage.

The user's server stages a dataset for the secure partition as **one file**,
``<staging_dir>/<user>/<bundle_id>.tar.age``; the worker decrypts it into
node-local storage with the dataset key it received over TLS. Results travel
back the same way (:func:`encrypt_directory` on the worker,
:func:`decrypt_to_directory` in the user's server).

Bundle format
-------------
An age v1 file (https://age-encryption.org/v1), encrypted to one X25519
recipient (``age1...``) — ChaCha20-Poly1305 STREAM in 64 KiB authenticated
chunks, readable by the ``age`` command-line tool
(``age -d -i KEYFILE bundle.tar.age | tar -t``). Its plaintext is a PAX
(POSIX.1-2001) tar stream of regular files only (mode 0600, uid/gid 0, no
directories, no links), in this order:

1. ``MANIFEST.json``, canonical JSON (sorted keys, no spaces)::

       {"format": "xnat-hpc-bundle", "format_version": 1,
        "files": [{"name": "S1/E1/1/NIFTI/t1.nii.gz", "size": 123, "sha256": "..."}, ...],
        "manifest_sha256": "<sha256 of the canonical JSON of files>",
        "extra": [{"name": "script/train.py", "size": 456, "sha256": "..."}],
        "metadata": {...what the caller passed, e.g. the training script's hash...},
        "file_count": 1, "total_size": 123}

   ``files`` is sorted by name; ``manifest_sha256`` identifies the data (the
   key of :func:`find_bundle`). MANIFEST.json holds no time stamp, so the
   sha256 of its bytes (``contents_sha256``) identifies the whole plaintext.
2. every data file as ``data/<name>``, in the order of ``files``;
3. the extra members (e.g. ``script/train.py``), sorted by name.

Next to the bundle, ``<bundle_id>.json`` (mode 0600) holds public facts only —
format, bundle id, manifest and contents digests, recipient public key, size
in bytes, creation time — for :func:`find_bundle`.

Security rules
--------------
* No plaintext byte is ever written to the staging area, not even a temporary
  file: the tar stream is generated in memory, chunk by chunk, and handed to
  age (``pyrage.encrypt_io``) as it is produced; memory stays bounded
  (about 1 MiB of data in flight) whatever the dataset size.
* The ciphertext is written to ``<bundle_id>.tar.age.partial`` (O_CREAT|O_EXCL,
  0600), fsynced, and renamed to its final name only when complete; on any
  error the partial file (and sidecar) is removed and the error re-raised.
* The per-user directory is created 0700; an existing one that is a symlink,
  belongs to another uid or is open to group/others is refused. The staging
  root must exist (an administrator creates it).
* Each file is hashed (sha256) as it streams and compared with its manifest
  entry, sizes included: a file that changed raises
  :class:`~xnat_bridge.errors.Conflict` naming it. Names are checked with
  :func:`xnat_bridge.files.safe_relpath` (relative, no ``..``/``.``/empty
  segments, no NUL, no backslash) → :class:`~xnat_bridge.errors.InvalidRequest`.
* Identities (``AGE-SECRET-KEY-1...``) are never logged and never written to a
  file by this module; :class:`AgeIdentity` hides its secret in ``repr`` and
  refuses to be pickled. Only recipients (public keys) reach the sidecar.
* Extraction decrypts streaming (a thread runs ``pyrage.decrypt_io`` into a
  pipe, the tar reader takes from the pipe) and writes through directory file
  descriptors with O_NOFOLLOW, files 0600 and directories 0700 (umask 077
  without touching the process-wide umask). It refuses members that would
  escape the destination, links, devices, FIFOs and — for bundles — anything
  not listed in MANIFEST.json, verifies every size and sha256, reads the age
  stream to its authenticated end, and on any failure removes everything it
  created.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import queue
import re
import secrets
import stat
import tarfile
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import pyrage

from .errors import Conflict, InvalidRequest, NotFound, PermissionDenied
from .files import safe_relpath

log = logging.getLogger(__name__)

FORMAT = "xnat-hpc-bundle"
FORMAT_VERSION = 1
INFO_FORMAT = "xnat-hpc-bundle-info"
MANIFEST_NAME = "MANIFEST.json"
DATA_PREFIX = "data/"
SUFFIX = ".tar.age"
PARTIAL = ".partial"
CHUNK = 1 << 20  # reads of staged files, encrypted output buffer, pipe size
# extraction reads: below glibc's initial mmap threshold (128 KiB), so that the
# per-chunk bytes objects come from the heap, not from a fresh mmap each time
# (with 1 MiB chunks a new process extracts ~30 % slower)
XCHUNK = 64 << 10
MAX_MANIFEST_BYTES = 64 << 20
PROGRESS_INTERVAL = 0.2

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")
_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}$")
_SECRET_PREFIX = "AGE-SECRET-KEY-1"

ProgressCallback = Callable[[int, int, int, int], None]


# --------------------------------------------------------------------------- keys


class AgeIdentity:
    """An age X25519 identity (the dataset or result key), held in memory only.

    ``repr``/``str`` show the public recipient, never the secret; pickling is
    refused so the key cannot slip into a spill file or cache by accident.
    Call :meth:`secret` explicitly for the one channel allowed to carry it
    (the TLS connection to the job's worker).
    """

    __slots__ = ("_key", "recipient")

    def __init__(self, secret: str):
        self._key = _parse_identity(secret)
        self.recipient = str(self._key.to_public())

    @classmethod
    def generate(cls) -> "AgeIdentity":
        obj = cls.__new__(cls)
        obj._key = pyrage.x25519.Identity.generate()
        obj.recipient = str(obj._key.to_public())
        return obj

    def secret(self) -> str:
        """The ``AGE-SECRET-KEY-1...`` string. Never log it or write it to a file."""
        return str(self._key)

    def __repr__(self) -> str:
        return f"AgeIdentity(recipient={self.recipient!r}, secret=<hidden>)"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("AgeIdentity cannot be pickled; send identity.secret() explicitly "
                        "over the job's TLS channel")


def generate_keypair() -> tuple[str, str]:
    """A new X25519 key pair: ``(identity "AGE-SECRET-KEY-1...", recipient "age1...")``."""
    key = pyrage.x25519.Identity.generate()
    return str(key), str(key.to_public())


def _parse_identity(text: str):
    if not isinstance(text, str):
        raise TypeError("an age identity must be a string, an AgeIdentity or a pyrage identity")
    # accept an age key file's content too: "# created: ...", "# public key: ...", the key
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    keys = [ln for ln in lines if ln.upper().startswith(_SECRET_PREFIX)]
    if len(keys) != 1:
        raise InvalidRequest("not an age X25519 identity: expected one line AGE-SECRET-KEY-1...")
    try:
        return pyrage.x25519.Identity.from_str(keys[0])
    except pyrage.IdentityError:
        raise InvalidRequest("the age identity is malformed (invalid Bech32 encoding)") from None


def _as_identity(identity):
    if isinstance(identity, AgeIdentity):
        return identity._key
    if isinstance(identity, pyrage.x25519.Identity):
        return identity
    return _parse_identity(identity)


def _as_recipient(recipient) -> tuple[Any, str]:
    """(pyrage recipient, its ``age1...`` string)."""
    if isinstance(recipient, AgeIdentity):
        recipient = recipient.recipient
    if isinstance(recipient, pyrage.x25519.Recipient):
        return recipient, str(recipient)
    if not isinstance(recipient, str):
        raise TypeError("a recipient must be an 'age1...' string or a pyrage recipient")
    text = recipient.strip()
    if text.upper().startswith(_SECRET_PREFIX):
        raise InvalidRequest("that is an age secret key, not a recipient: pass its public "
                             "key (age1...) and keep the secret in memory")
    try:
        return pyrage.x25519.Recipient.from_str(text), text
    except pyrage.RecipientError:
        shown = text[:16] + ("..." if len(text) > 16 else "")
        raise InvalidRequest(f"{shown!r} is not an age X25519 recipient (age1...)",
                             item=shown) from None


# --------------------------------------------------------------------------- manifests


@dataclasses.dataclass(frozen=True)
class StagedFile:
    """One data file: archive-relative name, size, sha256, and how to read it.

    ``open`` returns a binary file object (a read-only mount, a REST download
    stream, ...); it is called once, read to the end and closed.
    """

    name: str
    size: int
    sha256: str
    open: Callable[[], BinaryIO] = dataclasses.field(repr=False, compare=False)


@dataclasses.dataclass(frozen=True)
class BundleInfo:
    """A complete bundle on the staging area (public facts only)."""

    path: Path
    bundle_id: str
    manifest_sha256: str
    recipient: str
    size: int
    created: str
    contents_sha256: str = ""
    file_count: int = 0
    total_size: int = 0

    def to_json(self) -> dict:
        return {"format": INFO_FORMAT, "format_version": FORMAT_VERSION,
                "bundle_id": self.bundle_id, "manifest_sha256": self.manifest_sha256,
                "contents_sha256": self.contents_sha256, "recipient": self.recipient,
                "size": self.size, "created": self.created, "file_count": self.file_count,
                "total_size": self.total_size}


def canonical_json(obj) -> bytes:
    """Sorted keys, no spaces, ASCII (the same canon as dataset manifests)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("ascii")


def _check_entry(name, size, sha256, what: str) -> dict:
    if not isinstance(name, str):
        raise InvalidRequest(f"{what} name must be a string, not {type(name).__name__}")
    safe_relpath(name)
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidRequest(f"{what} {name!r}: size must be a non-negative integer", item=name)
    sha = sha256.lower() if isinstance(sha256, str) else ""
    if not _SHA_RE.match(sha):
        raise InvalidRequest(f"{what} {name!r}: sha256 must be 64 hex digits", item=name)
    return {"name": name, "size": size, "sha256": sha}


def file_entries(files: Iterable[StagedFile]) -> list[dict]:
    """Validated ``{"name", "size", "sha256"}`` entries, sorted by name (pure)."""
    entries = [_check_entry(f.name, f.size, f.sha256, "data file") for f in files]
    entries.sort(key=lambda e: e["name"])
    for a, b in zip(entries, entries[1:]):
        if a["name"] == b["name"]:
            raise InvalidRequest(f"data file {a['name']!r} is listed twice", item=a["name"])
    return entries


def manifest_sha256(files: Iterable[StagedFile] | Iterable[dict]) -> str:
    """sha256 (hex) of the canonical JSON of the file list — the bundle's reuse key."""
    files = list(files)
    if files and isinstance(files[0], StagedFile):
        entries = file_entries(files)
    else:
        entries = sorted(({"name": f["name"], "size": f["size"], "sha256": f["sha256"]}
                          for f in files), key=lambda e: e["name"])
    return hashlib.sha256(canonical_json(entries)).hexdigest()


def _check_extras(extra_members: Mapping[str, bytes] | None) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name, content in sorted((extra_members or {}).items()):
        if not isinstance(name, str):
            raise InvalidRequest("extra member names must be strings")
        safe_relpath(name)
        if name == MANIFEST_NAME or name.startswith(DATA_PREFIX):
            raise InvalidRequest(f"extra member {name!r} clashes with the bundle's own names "
                                 f"({MANIFEST_NAME}, {DATA_PREFIX}...); use e.g. script/{name}",
                                 item=name)
        if not isinstance(content, (bytes, bytearray, memoryview)):
            raise InvalidRequest(f"extra member {name!r} must be bytes", item=name)
        out[name] = bytes(content)
    return out


def build_manifest(files: Iterable[StagedFile], metadata: Mapping | None = None,
                   extra_members: Mapping[str, bytes] | None = None) -> dict:
    """The MANIFEST.json document of a bundle (pure)."""
    entries = file_entries(files)
    extras = _check_extras(extra_members)
    meta = dict(metadata or {})
    try:
        meta_json = canonical_json(meta)
    except (TypeError, ValueError) as e:
        raise InvalidRequest(f"bundle metadata must be JSON data: {e}") from None
    if _SECRET_PREFIX.encode() in meta_json.upper():
        raise InvalidRequest("bundle metadata contains an age secret key; never put a key "
                             "into a bundle")
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "files": entries,
        "manifest_sha256": hashlib.sha256(canonical_json(entries)).hexdigest(),
        "extra": [{"name": n, "size": len(c), "sha256": hashlib.sha256(c).hexdigest()}
                  for n, c in extras.items()],
        "metadata": meta,
        "file_count": len(entries),
        "total_size": sum(e["size"] for e in entries),
    }


def contents_sha256(files: Iterable[StagedFile], metadata: Mapping | None = None,
                    extra_members: Mapping[str, bytes] | None = None) -> str:
    """sha256 of the MANIFEST.json a bundle of these inputs would carry."""
    return hashlib.sha256(canonical_json(build_manifest(files, metadata, extra_members))).hexdigest()


def _parse_manifest(raw: bytes, label: str) -> dict:
    try:
        doc = json.loads(raw)
        if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not an {FORMAT} v{FORMAT_VERSION} manifest")
        files = [_check_entry(f["name"], f["size"], f["sha256"], "data file") for f in doc["files"]]
        extra = [_check_entry(f["name"], f["size"], f["sha256"], "extra member")
                 for f in doc.get("extra", [])]
        stated = str(doc["manifest_sha256"])
    except InvalidRequest as e:
        raise InvalidRequest(f"{label}: {MANIFEST_NAME} is invalid: {e}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise InvalidRequest(f"{label}: {MANIFEST_NAME} is invalid: {e}") from None
    if manifest_sha256(files) != stated:
        raise Conflict(f"{label}: {MANIFEST_NAME} does not match its own digest", item=label)
    doc["files"], doc["extra"] = files, extra
    return doc


def _norm_digest(value: str) -> str:
    text = value.strip().lower() if isinstance(value, str) else ""
    text = text.removeprefix("sha256:")
    if not _SHA_RE.match(text):
        raise InvalidRequest(f"{value!r} is not a sha256 digest (64 hex digits)")
    return text


# --------------------------------------------------------------------------- tar stream out


class _TarOut:
    """A PAX tar stream built chunk by chunk (headers from ``tarfile.TarInfo.tobuf``)."""

    def __init__(self, mtime: float):
        self.mtime = int(mtime)
        self.offset = 0

    def header(self, name: str, size: int = 0, *, directory: bool = False) -> bytes:
        info = tarfile.TarInfo(name)
        info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
        info.mode = 0o700 if directory else 0o600
        info.size = 0 if directory else size
        info.mtime = self.mtime
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        buf = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        self.offset += len(buf)
        return buf

    def body(self, src: BinaryIO, size: int, label: str,
             tick: bool = False) -> Generator[bytes | _Tick, None, str]:
        """Yield exactly *size* bytes of *src* plus padding; return their sha256 (hex).

        With *tick*, a :class:`_Tick` follows every chunk (progress of data files).
        """
        digest = hashlib.sha256()
        done = 0
        while done < size:
            chunk = src.read(min(CHUNK, size - done))
            if not chunk:
                raise Conflict(f"{label} has fewer bytes than expected ({done} of {size}): "
                               "it changed after it was listed", item=label)
            if len(chunk) > size - done:
                raise Conflict(f"{label} has more bytes than expected ({size}): it changed "
                               "after it was listed", item=label)
            if not isinstance(chunk, bytes):
                chunk = bytes(chunk)
            digest.update(chunk)
            done += len(chunk)
            yield chunk
            if tick:
                yield _Tick(len(chunk), 0)
        if src.read(1):
            raise Conflict(f"{label} has more bytes than expected ({size}): it changed after "
                           "it was listed", item=label)
        pad = -size % tarfile.BLOCKSIZE
        if pad:
            yield bytes(pad)
        self.offset += size + pad
        return digest.hexdigest()

    def end(self) -> bytes:
        n = 2 * tarfile.BLOCKSIZE
        n += -(self.offset + n) % tarfile.RECORDSIZE
        self.offset += n
        return bytes(n)


class _Tick(NamedTuple):
    """A progress mark in a chunk stream: data bytes and files passed so far."""

    nbytes: int
    nfiles: int


class _Prefetch:
    """Runs a chunk generator in a thread, *depth* chunks ahead of the consumer.

    Reading the sources and hashing them (both release the GIL) then overlap
    with encryption; memory stays bounded by the queue (depth x 1 MiB). An
    exception of the generator is handed over and raised to the consumer.
    """

    _END = object()

    def __init__(self, chunks: Iterator, depth: int = 8):
        self._queue: queue.Queue = queue.Queue(depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(chunks,), name="bundle-reader",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, chunks) -> None:
        try:
            for chunk in chunks:
                if not self._put(chunk):
                    return
            self._put(self._END)
        except BaseException as e:
            self._put(_Failure(e))
        finally:
            chunks.close()

    def __iter__(self):
        return self

    def __next__(self):
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # stay at the end
            raise StopIteration
        if isinstance(item, _Failure):
            self._queue.put(item)
            raise item.error
        return item

    def close(self) -> None:
        self._stop.set()
        while self._thread.is_alive():
            try:
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()


class _Failure(NamedTuple):
    error: BaseException


class _PullReader:
    """A read()-able view of an iterator of byte chunks, for ``pyrage.encrypt_io``.

    :class:`_Tick` items in the stream go to *on_tick* (in the reading
    thread). pyrage turns an exception raised in ``read`` into an
    ``EncryptError`` carrying only its text; the original is kept in
    ``error`` and re-raised.
    """

    def __init__(self, chunks: Iterator, on_tick: Callable[[int, int], None] | None = None):
        self._chunks = chunks
        self._on_tick = on_tick
        self._buf = b""
        self._pos = 0
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self._read(n)
        except BaseException as e:
            self.error = e
            raise

    def _read(self, n: int) -> bytes:
        if n is None or n < 0:
            n = 1 << 62
        avail = len(self._buf) - self._pos
        if avail >= n:
            self._pos += n
            return self._buf[self._pos - n:self._pos]
        parts = [self._buf[self._pos:]] if avail else []
        need = n - avail
        self._buf, self._pos = b"", 0
        for chunk in self._chunks:
            if type(chunk) is _Tick:
                if self._on_tick is not None:
                    self._on_tick(chunk.nbytes, chunk.nfiles)
                continue
            if len(chunk) >= need:
                parts.append(chunk[:need])
                self._buf, self._pos = chunk, need
                break
            parts.append(chunk)
            need -= len(chunk)
        return parts[0] if len(parts) == 1 else b"".join(parts)


class _Progress:
    def __init__(self, callback: ProgressCallback | None, total_bytes: int, total_files: int):
        self.callback = callback
        self.total_bytes, self.total_files = total_bytes, total_files
        self.bytes = self.files = 0
        self._last = -1e9

    def add(self, nbytes: int = 0, nfiles: int = 0) -> None:
        self.bytes += nbytes
        self.files += nfiles
        if self.callback is not None and time.monotonic() - self._last >= PROGRESS_INTERVAL:
            self._call()

    def finish(self) -> None:
        if self.callback is not None:
            self._call()

    def _call(self) -> None:
        self._last = time.monotonic()
        self.callback(self.bytes, self.files, self.total_bytes, self.total_files)


def _encrypt_stream(path: Path, chunks: Iterator, recipient,
                    on_tick: Callable[[int, int], None] | None = None) -> int:
    """Encrypt *chunks* to *recipient* into a new file *path* (0600); return its size.

    The caller removes *path* on error.
    """
    source = _Prefetch(chunks)
    reader = _PullReader(source, on_tick)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb", buffering=CHUNK) as out:
            try:
                pyrage.encrypt_io(reader, out, [recipient])
            except BaseException:
                if reader.error is not None:
                    raise reader.error from None
                raise
            out.flush()
            os.fsync(fd)
            return os.fstat(fd).st_size
    finally:
        source.close()  # stops the reader thread; the generator closes its open source


# --------------------------------------------------------------------------- staging area


def _check_user(user: str) -> str:
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise InvalidRequest(f"user name {user!r} cannot name a staging directory", item=str(user)[:100])
    return user


def _check_private_dir(path: Path) -> None:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise PermissionDenied(f"staging directory {path} is a symbolic link; refusing to stage "
                               "there (remove it, it is recreated 0700)", item=str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidRequest(f"staging path {path} exists and is not a directory", item=str(path))
    if st.st_uid != os.geteuid():
        raise PermissionDenied(f"staging directory {path} belongs to uid {st.st_uid}, not to this "
                               f"server's uid {os.geteuid()}; refusing to stage there", item=str(path))
    if st.st_mode & 0o077:
        raise PermissionDenied(f"staging directory {path} is open to group or others (mode "
                               f"{stat.S_IMODE(st.st_mode):04o}); refusing to stage there — fix "
                               f"it with: chmod 700 {path}", item=str(path))


def user_dir(staging_dir: str | Path, user: str, *, create: bool = True) -> Path | None:
    """``<staging_dir>/<user>``, created 0700 and checked (None if absent and not *create*)."""
    _check_user(user)
    root = Path(staging_dir)
    try:
        st = os.stat(root)
    except FileNotFoundError:
        raise NotFound(f"staging directory {root} does not exist; an administrator must "
                       "create it on the shared file system", item=str(root)) from None
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidRequest(f"staging path {root} is not a directory", item=str(root))
    path = root / user
    if create:
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)
        except FileExistsError:
            pass
        except PermissionError:
            raise PermissionDenied(f"cannot create {path}: the staging directory {root} is not "
                                   "writable for this server's user", item=str(path)) from None
    elif not os.path.lexists(path):
        return None
    _check_private_dir(path)
    return path


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _unlink_quiet(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private_json(path: Path, doc: dict) -> None:
    tmp = path.with_name(path.name + PARTIAL)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _bundle_chunks(manifest_bytes: bytes, files: list[StagedFile], extras: dict[str, bytes],
                   mtime: float) -> Iterator[bytes | _Tick]:
    tar = _TarOut(mtime)
    yield tar.header(MANIFEST_NAME, len(manifest_bytes))
    yield from tar.body(_BytesSource(manifest_bytes), len(manifest_bytes), MANIFEST_NAME)
    for f in files:
        label = f"data file {f.name!r}"
        yield tar.header(DATA_PREFIX + f.name, f.size)
        src = f.open()
        try:
            sha = yield from tar.body(src, f.size, label, tick=True)
        finally:
            src.close()
        if sha != f.sha256.lower():
            raise Conflict(f"{label} does not match its manifest (sha256 {sha[:12]}..., expected "
                           f"{f.sha256.lower()[:12]}...): it changed after the dataset was made; "
                           "re-create the dataset", item=f.name)
        yield _Tick(0, 1)
    for name, content in extras.items():
        yield tar.header(name, len(content))
        yield from tar.body(_BytesSource(content), len(content), f"extra member {name!r}")
    yield tar.end()


class _BytesSource:
    """A minimal read() over bytes, without copying them into a BytesIO."""

    def __init__(self, data: bytes):
        self._data, self._pos = data, 0

    def read(self, n: int) -> bytes:
        self._pos += n
        return self._data[self._pos - n:self._pos]


def stage_files(files: Iterable[StagedFile], *, staging_dir: str | Path, user: str, recipient,
                metadata: Mapping | None = None, extra_members: Mapping[str, bytes] | None = None,
                progress: ProgressCallback | None = None) -> BundleInfo:
    """Stream *files* into ``<staging_dir>/<user>/<bundle_id>.tar.age``, encrypted to *recipient*.

    *recipient* is an ``age1...`` string (or pyrage recipient); *metadata* a
    JSON mapping stored in MANIFEST.json; *extra_members* small in-memory
    members, e.g. ``{"script/train.py": b"..."}``; *progress* is called as
    ``progress(bytes_done, files_done, total_bytes, total_files)`` at most every
    0.2 s and once at the end, in the calling thread. Each file's ``open()``
    and reads run in one helper thread (reading and hashing overlap with
    encryption), one file at a time. Raises InvalidRequest (bad names, digests),
    Conflict (a file does not match its size or sha256; nothing is left behind),
    PermissionDenied (unsafe per-user directory), NotFound (no staging root).
    """
    files = list(files)
    manifest = build_manifest(files, metadata, extra_members)
    extras = _check_extras(extra_members)
    rcpt, rcpt_str = _as_recipient(recipient)
    manifest_bytes = canonical_json(manifest)
    by_name = {f.name: f for f in files}
    ordered = [by_name[e["name"]] for e in manifest["files"]]
    udir = user_dir(staging_dir, user, create=True)

    bundle_id = f"{manifest['manifest_sha256'][:12]}-{secrets.token_hex(6)}"
    final = udir / (bundle_id + SUFFIX)
    partial = udir / (bundle_id + SUFFIX + PARTIAL)
    info_path = udir / (bundle_id + ".json")
    tracker = _Progress(progress, manifest["total_size"], manifest["file_count"])
    log.info("staging bundle %s for user %s: %d files, %d bytes, recipient %s", bundle_id, user,
             manifest["file_count"], manifest["total_size"], rcpt_str)
    started = time.monotonic()
    info_written = False
    try:
        chunks = _bundle_chunks(manifest_bytes, ordered, extras, time.time())
        size = _encrypt_stream(partial, chunks, rcpt, tracker.add)
        info = BundleInfo(path=final, bundle_id=bundle_id, manifest_sha256=manifest["manifest_sha256"],
                          recipient=rcpt_str, size=size, created=_now_iso(),
                          contents_sha256=hashlib.sha256(manifest_bytes).hexdigest(),
                          file_count=manifest["file_count"], total_size=manifest["total_size"])
        _write_private_json(info_path, info.to_json())
        info_written = True
        os.rename(partial, final)
        _fsync_dir(udir)
    except BaseException as e:
        _unlink_quiet(partial)
        if info_written:
            _unlink_quiet(info_path)
        log.warning("staging bundle %s for user %s failed: %s", bundle_id, user,
                    getattr(e, "message", type(e).__name__))
        raise
    tracker.finish()
    log.info("staged bundle %s for user %s: %d bytes in %.1f s", bundle_id, user, size,
             time.monotonic() - started)
    return info


def _read_info(udir: Path, bundle_id: str) -> BundleInfo | None:
    """The sidecar of *bundle_id*, if it and its bundle are complete and private."""
    try:
        fd = os.open(udir / (bundle_id + ".json"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            doc = json.loads(f.read(1 << 20))
        if doc.get("format") != INFO_FORMAT or doc.get("bundle_id") != bundle_id:
            return None
        path = udir / (bundle_id + SUFFIX)
        st = os.lstat(path)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077
                or st.st_size != int(doc["size"])):
            return None
        return BundleInfo(path=path, bundle_id=bundle_id, manifest_sha256=str(doc["manifest_sha256"]),
                          recipient=str(doc["recipient"]), size=int(doc["size"]),
                          created=str(doc["created"]), contents_sha256=str(doc.get("contents_sha256", "")),
                          file_count=int(doc.get("file_count", 0)), total_size=int(doc.get("total_size", 0)))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def list_bundles(staging_dir: str | Path, user: str) -> list[BundleInfo]:
    """Every complete bundle of *user*, oldest first."""
    udir = user_dir(staging_dir, user, create=False)
    if udir is None:
        return []
    found = []
    with os.scandir(udir) as it:
        for entry in it:
            stem = entry.name[:-len(".json")]
            if entry.name.endswith(".json") and _BUNDLE_ID_RE.match(stem):
                info = _read_info(udir, stem)
                if info is not None:
                    found.append(info)
    return sorted(found, key=lambda i: (i.created, i.bundle_id))


def find_bundle(staging_dir: str | Path, user: str, manifest_sha256: str, *,
                recipient: str | None = None, contents_sha256: str | None = None) -> BundleInfo | None:
    """The newest complete bundle of *user* for this manifest digest, or None.

    The manifest digest covers the data files only; pass *contents_sha256*
    (see :func:`contents_sha256`) to also require the same metadata and extra
    members (e.g. the same training script), and *recipient* to require a
    bundle that the key you hold can open.
    """
    want = _norm_digest(manifest_sha256)
    want_contents = _norm_digest(contents_sha256) if contents_sha256 else None
    want_rcpt = _as_recipient(recipient)[1] if recipient is not None else None
    for info in reversed(list_bundles(staging_dir, user)):
        if info.manifest_sha256 != want:
            continue
        if want_rcpt is not None and info.recipient != want_rcpt:
            continue
        if want_contents is not None and info.contents_sha256 != want_contents:
            continue
        return info
    return None


def remove_bundle(info: BundleInfo) -> None:
    """Delete a bundle and its sidecar (missing files are fine)."""
    _unlink_quiet(Path(info.path))
    _unlink_quiet(Path(info.path).with_name(info.bundle_id + ".json"))


# --------------------------------------------------------------------------- results out


def _inside(root_real: str, path: str) -> bool:
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def _walk(root_real: str, rel: str = "") -> Iterator[tuple[str, os.DirEntry]]:
    with os.scandir(os.path.join(root_real, rel) if rel else root_real) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        name = f"{rel}/{entry.name}" if rel else entry.name
        yield name, entry
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(root_real, name)


def _directory_chunks(root_real: str, shown: str, listing: list[dict]) -> Iterator[bytes]:
    tar = _TarOut(time.time())
    for name, entry in _walk(root_real):
        safe_relpath(name)
        path = entry.path
        if entry.is_symlink():
            target = os.path.realpath(path)
            if not _inside(root_real, target):
                raise InvalidRequest(f"{name} in {shown} is a symbolic link to {os.readlink(path)!r}, "
                                     "outside the directory; refusing to archive it (copy the file "
                                     "in instead)", item=name)
            if not os.path.isfile(target):
                log.warning("not archiving %s in %s: a symbolic link to a directory or to nothing "
                            "(directory contents are archived under their own names)", name, shown)
                continue
            path = target
        elif entry.is_dir(follow_symlinks=False):
            yield tar.header(name, directory=True)
            continue
        elif not entry.is_file(follow_symlinks=False):
            log.warning("not archiving %s in %s: not a regular file (socket, FIFO or device)", name, shown)
            continue
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb", buffering=0) as src:
            st = os.fstat(src.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise Conflict(f"{name} in {shown} changed while it was being archived", item=name)
            yield tar.header(name, st.st_size)
            sha = yield from tar.body(src, st.st_size, f"{name} in {shown}")
        listing.append({"name": name, "size": st.st_size, "sha256": sha})
    yield tar.end()


def encrypt_directory(src_dir: str | Path, recipient, out_path: str | Path) -> dict:
    """Tar *src_dir* (PAX, streaming) and encrypt it with age to *recipient* into *out_path*.

    Written to ``<out_path>.partial`` (0600) and renamed when complete.
    Symbolic links that lead outside *src_dir* are refused (InvalidRequest);
    links to files inside are archived as copies, links to directories inside
    and special files are skipped with a warning. Returns ``{"path", "size",
    "files": [{"name", "size", "sha256"}]}``.
    """
    rcpt, _ = _as_recipient(recipient)
    src = Path(src_dir)
    if not src.is_dir():
        raise NotFound(f"{src} is not a directory", item=str(src))
    root_real = os.path.realpath(src)
    out = Path(out_path)
    if _inside(root_real, os.path.realpath(out.parent)):
        raise InvalidRequest(f"write {out.name} outside the directory being archived ({src})")
    if os.path.lexists(out):
        raise Conflict(f"{out} already exists; choose a new name", item=str(out))
    partial = out.with_name(out.name + PARTIAL)
    listing: list[dict] = []
    try:
        size = _encrypt_stream(partial, _directory_chunks(root_real, str(src), listing), rcpt)
        if os.path.lexists(out):
            raise Conflict(f"{out} appeared while it was being written", item=str(out))
        os.rename(partial, out)
        _fsync_dir(out.parent)
    except BaseException:
        _unlink_quiet(partial)
        raise
    log.info("encrypted %s (%d files) into %s, %d bytes", src, len(listing), out, size)
    return {"path": str(out), "size": size, "files": listing}


# --------------------------------------------------------------------------- extraction


class _Decryptor:
    """``pyrage.decrypt_io`` in a thread, writing plaintext into a pipe (kernel memory).

    ``reader`` is the pipe's read end for the tar reader. :meth:`finish` reads
    to the end, so that age authenticates the final chunk, and raises a
    decryption failure; :meth:`abort` closes the pipe, which stops the thread.
    """

    def __init__(self, path: Path, identity):
        self.path = path
        self.error: BaseException | None = None
        try:
            self._src = open(path, "rb", buffering=CHUNK)
        except FileNotFoundError:
            raise NotFound(f"{path} does not exist", item=str(path)) from None
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, CHUNK)
        except OSError:
            pass  # a smaller pipe only costs speed
        self.reader = os.fdopen(r, "rb", buffering=XCHUNK)
        self._writer = os.fdopen(w, "wb", buffering=XCHUNK)
        self._thread = threading.Thread(target=self._run, args=(identity,),
                                        name=f"age-decrypt {path.name}", daemon=True)
        self._thread.start()

    def _run(self, identity) -> None:
        try:
            pyrage.decrypt_io(self._src, self._writer, [identity])
            self._writer.flush()
        except BaseException as e:
            self.error = e
        finally:
            for f in (self._writer, self._src):
                try:
                    f.close()
                except BaseException as e:
                    self.error = self.error or e

    def finish(self) -> None:
        while self.reader.read(XCHUNK):
            pass
        self._thread.join()
        self.reader.close()
        self.raise_error()

    def abort(self) -> None:
        self.reader.close()
        self._thread.join()

    def raise_error(self) -> None:
        err = self.error
        if err is None or isinstance(err, BrokenPipeError):  # BrokenPipe: we stopped it
            return
        name = self.path.name
        if isinstance(err, pyrage.DecryptError) and "no matching keys" in str(err).lower():
            raise PermissionDenied(f"{name} cannot be decrypted with this identity: it was encrypted "
                                   "to another recipient; use the identity whose public key the "
                                   "bundle was staged for", item=name) from None
        if isinstance(err, pyrage.DecryptError):
            raise InvalidRequest(f"{name} is not a valid age file ({err})", item=name) from None
        if isinstance(err, OSError) and "decryption" in str(err).lower():
            raise Conflict(f"{name} is corrupt or truncated: age could not authenticate it; "
                           "stage it again", item=name) from None
        raise err


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
    descriptors, never following a symlink, and remembers what it created."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.created_root = False
        try:
            os.mkdir(self.root, 0o700)
            self.created_root = True
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise NotFound(f"cannot create {self.root}: its parent does not exist",
                           item=str(self.root)) from None
        self.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
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

    def write(self, rel: str, src: BinaryIO, size: int) -> str:
        """Copy *src* into the new file *rel* (0600); return its sha256."""
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
        done = 0
        with os.fdopen(fd, "wb") as out:
            while True:
                chunk = src.read(XCHUNK)
                if not chunk:
                    break
                digest.update(chunk)
                out.write(chunk)
                done += len(chunk)
        if done != size:
            raise Conflict(f"{rel}: {done} bytes in the archive, {size} expected", item=rel)
        return digest.hexdigest()

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
                os.rmdir(self.root)
            except OSError:
                log.warning("could not remove %s", self.root)

    def close(self) -> None:
        if self._cached:
            os.close(self._cached[1])
            self._cached = None
        os.close(self.fd)


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
                    body: Callable[[Iterator[tarfile.TarInfo], tarfile.TarFile, _Tree, str], Any]):
    key = _as_identity(identity)
    path = Path(path)
    label = path.name
    dec = _Decryptor(path, key)
    tree: _Tree | None = None
    ok = False
    try:
        tree = _Tree(dest_dir)
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


def extract_bundle(bundle_path: str | Path, identity, dest_dir: str | Path,
                   expected_manifest_sha256: str | None = None) -> dict:
    """Decrypt and unpack a bundle into *dest_dir*; return its MANIFEST.json (a dict).

    *dest_dir* is created 0700 if missing (its parent must exist); files land
    as ``MANIFEST.json``, ``data/<name>`` and the extra members, 0600. Raises
    PermissionDenied (wrong identity), InvalidRequest (not a bundle; unsafe
    member: escaping path, link, device, FIFO), Conflict (member not listed,
    size or sha256 mismatch, missing file, digest differs from
    *expected_manifest_sha256*, corrupt ciphertext). On failure everything
    extracted is removed.
    """
    want = _norm_digest(expected_manifest_sha256) if expected_manifest_sha256 else None

    def body(members, tar, tree, label):
        first = next(members, None)
        if first is None or first.name != MANIFEST_NAME or not _is_regular(first):
            raise InvalidRequest(f"{label} is not a staging bundle: its first member must be "
                                 f"{MANIFEST_NAME}", item=label)
        if first.size > MAX_MANIFEST_BYTES:
            raise InvalidRequest(f"{label}: {MANIFEST_NAME} is larger than {MAX_MANIFEST_BYTES} bytes",
                                 item=label)
        raw = tar.extractfile(first).read()
        manifest = _parse_manifest(raw, label)
        if want is not None and manifest["manifest_sha256"] != want:
            raise Conflict(f"{label} holds dataset {manifest['manifest_sha256'][:12]}..., not the "
                           f"expected {want[:12]}...", item=label)
        expected = {DATA_PREFIX + f["name"]: f for f in manifest["files"]}
        expected.update({f["name"]: f for f in manifest["extra"]})
        tree.write(MANIFEST_NAME, _BytesSource(raw), len(raw))
        for m in members:
            name = _member_path(m.name, label)
            if not _is_regular(m):
                raise InvalidRequest(f"{label}: member {name!r} is {_kind(m)}; bundles hold regular "
                                     "files only", item=name)
            entry = expected.pop(name, None)
            if entry is None:
                raise Conflict(f"{label}: member {name!r} is not listed in {MANIFEST_NAME} (or "
                               "appears twice)", item=name)
            if m.size != entry["size"]:
                raise Conflict(f"{label}: {name!r} has {m.size} bytes, {MANIFEST_NAME} says "
                               f"{entry['size']}", item=name)
            sha = tree.write(name, tar.extractfile(m), m.size)
            if sha != entry["sha256"]:
                raise Conflict(f"{label}: {name!r} does not match its sha256 in {MANIFEST_NAME}",
                               item=name)
        if expected:
            missing = sorted(expected)
            raise Conflict(f"{label}: {len(missing)} file(s) listed in {MANIFEST_NAME} are missing, "
                           f"e.g. {missing[0]!r}", item=missing[0])
        return manifest

    manifest = _run_extraction(bundle_path, identity, dest_dir, body)
    log.info("extracted bundle %s into %s: %d files, %d bytes", Path(bundle_path).name, dest_dir,
             manifest["file_count"], manifest["total_size"])
    return manifest


def decrypt_to_directory(path: str | Path, identity, dest_dir: str | Path) -> dict:
    """Decrypt an age-encrypted tar (e.g. from :func:`encrypt_directory`) into *dest_dir*.

    Same safety rules as :func:`extract_bundle` (no escaping paths, no links,
    devices or FIFOs; files 0600, directories 0700; everything removed on
    failure), without a manifest: regular files and directories are accepted.
    Returns ``{"files": [{"name", "size", "sha256"}], "directories": [...]}``.
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
            sha = tree.write(name, tar.extractfile(m), m.size)
            files.append({"name": name, "size": m.size, "sha256": sha})
        return {"files": files, "directories": dirs}

    result = _run_extraction(path, identity, dest_dir, body)
    log.info("decrypted %s into %s: %d files", Path(path).name, dest_dir, len(result["files"]))
    return result


__all__ = [
    "AgeIdentity", "BundleInfo", "StagedFile", "build_manifest", "canonical_json", "contents_sha256",
    "decrypt_to_directory", "encrypt_directory", "extract_bundle", "file_entries", "find_bundle",
    "generate_keypair", "list_bundles", "manifest_sha256", "remove_bundle", "stage_files", "user_dir",
]
