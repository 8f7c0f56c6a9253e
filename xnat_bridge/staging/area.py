"""The staging area: per-user 0700 directories, staging and finding bundles.

Top layer: builds on :mod:`.manifest`, :mod:`.keys`, :mod:`.fetch`, :mod:`.stream` and :mod:`.common`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from ..errors import InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from ..private import check_private_dir, check_private_file, read_regular
from .common import (
    DATA_PREFIX,
    FETCH_BUFFER,
    FETCH_THREADS,
    HASHES_NAME,
    INFO_FORMAT,
    MANIFEST_NAME,
    PARTIAL,
    SUFFIX,
    BytesSource,
    Progress,
    ProgressCallback,
    Tick,
    fsync_dir,
    unlink_quiet,
)
from .engine import AgeEngine
from .fetch import Prefetcher
from .keys import as_recipient
from .manifest import (
    BundleInfo,
    StagedFile,
    build_hashes,
    build_manifest,
    canonical_json,
    check_extras,
    final_manifest,
    norm_digest,
)
from .stream import TarOut, encrypt_stream

log = logging.getLogger(__name__)

_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")
_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}$")


def _check_user(user: str) -> str:
    if not isinstance(user, str) or not _USER_RE.match(user):
        raise InvalidRequest(f"user name {user!r} cannot name a staging directory", item=str(user)[:100])
    return user


def _check_private_dir(path: Path) -> None:
    """The user's staging directory: 0700, this server's account's, not a link
    (:func:`xnat_bridge.private.check_private_dir`, the one rule for private directories)."""
    check_private_dir(path, what="staging directory")


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
        unlink_quiet(tmp)
        raise


def _bundle_chunks(head: dict, head_bytes: bytes, files: list[StagedFile], extras: dict[str, bytes],
                   mtime: float, fetcher: Prefetcher, result: dict) -> Iterator[bytes | Tick]:
    """The bundle's tar stream; puts its final manifest into ``result["final"]`` at the end."""
    tar = TarOut(mtime)
    yield tar.header(MANIFEST_NAME, len(head_bytes))
    yield from tar.body(BytesSource(head_bytes), len(head_bytes), MANIFEST_NAME)
    sha256_by_name: dict[str, str] = {}
    for index, f in enumerate(files):
        yield tar.header(DATA_PREFIX + f.name, f.size)
        chunks = fetcher.read(index)
        while True:
            try:
                chunk = next(chunks)
            except StopIteration as end:
                sha256_by_name[f.name] = end.value.sha256
                break
            yield chunk
            yield Tick(len(chunk), 0)
        pad = tar.pad(f.size)
        if pad:
            yield pad
        yield Tick(0, 1)
    for name, content in extras.items():
        yield tar.header(name, len(content))
        yield from tar.body(BytesSource(content), len(content), f"extra member {name!r}")
    final = final_manifest(head, hashlib.sha256(head_bytes).hexdigest(), sha256_by_name)
    trailer = canonical_json(build_hashes(final))
    yield tar.header(HASHES_NAME, len(trailer))
    yield from tar.body(BytesSource(trailer), len(trailer), HASHES_NAME)
    yield tar.end()
    result["final"] = final


def stage_files(files: Iterable[StagedFile], *, staging_dir: str | Path, user: str, recipient,
                metadata: Mapping | None = None, extra_members: Mapping[str, bytes] | None = None,
                progress: ProgressCallback | None = None, engine: AgeEngine | None = None,
                threads: int = FETCH_THREADS, buffer_bytes: int = FETCH_BUFFER,
                verify_md5: bool = False) -> BundleInfo:
    """Stream *files* into ``<staging_dir>/<user>/<bundle_id>.tar.age``, encrypted to *recipient*.

    One pass over the data: each file is read once (:class:`~.fetch.Prefetcher`:
    *threads* readers ahead of the tar writer, at most about *buffer_bytes*
    queued), its size checked, its sha256 computed (and compared where the
    StagedFile knows it), and its bytes go through the tar writer into age.
    *verify_md5* also checks XNAT's md5 of files whose sha256 is not known yet
    (for sources that do not, e.g. the archive mount). *recipient* is an ``age1...`` string (or pyrage
    recipient); *metadata* a JSON mapping stored in MANIFEST.json;
    *extra_members* small in-memory members, e.g. ``{"script/train.py":
    b"..."}``; *progress* is called as ``progress(bytes_done, files_done,
    total_bytes, total_files)`` at most every 0.2 s and once at the end, in
    the calling thread. *engine* encrypts (default:
    :func:`~.engine.default_engine`, the age CLI when installed).

    Returns the :class:`BundleInfo` with every file's sha256 (``file_sha256``).
    Raises InvalidRequest (bad names, digests), Conflict (a file does not
    match its size or known sha256), what a source raises (a file that cannot
    be read or resumed), OSError ENOSPC/EDQUOT (staging area full),
    PermissionDenied (unsafe per-user directory), NotFound (no staging root);
    in every failure the partial bundle and its sidecar are removed and every
    reader thread and stream is closed.
    """
    files = list(files)
    head = build_manifest(files, metadata, extra_members)
    extras = check_extras(extra_members)
    rcpt, rcpt_str = as_recipient(recipient)
    head_bytes = canonical_json(head)
    contents = hashlib.sha256(head_bytes).hexdigest()
    by_name = {f.name: f for f in files}
    ordered = [by_name[e["name"]] for e in head["files"]]
    fetcher = Prefetcher(ordered, threads=threads, buffer_bytes=buffer_bytes, verify_md5=verify_md5)
    udir = user_dir(staging_dir, user, create=True)

    bundle_id = f"{contents[:12]}-{secrets.token_hex(6)}"
    final = udir / (bundle_id + SUFFIX)
    partial = udir / (bundle_id + SUFFIX + PARTIAL)
    info_path = udir / (bundle_id + ".json")
    tracker = Progress(progress, head["total_size"], head["file_count"])
    log.info("staging bundle %s for user %s: %d files, %d bytes, recipient %s, %d readers",
             bundle_id, user, head["file_count"], head["total_size"], rcpt_str, fetcher.threads)
    started = time.monotonic()
    info_written = False
    result: dict = {}
    try:
        try:
            chunks = _bundle_chunks(head, head_bytes, ordered, extras, time.time(), fetcher.start(), result)
            size = encrypt_stream(partial, chunks, rcpt, tracker.add, engine=engine, durable=False)
        finally:
            fetcher.close()
        done = result["final"]
        info = BundleInfo(path=final, bundle_id=bundle_id, manifest_sha256=done["manifest_sha256"],
                          recipient=rcpt_str, size=size, created=_now_iso(), contents_sha256=contents,
                          file_count=head["file_count"], total_size=head["total_size"],
                          file_sha256={e["name"]: e["sha256"] for e in done["files"]})
        _write_private_json(info_path, info.to_json())
        info_written = True
        os.rename(partial, final)
        fsync_dir(udir)
    except BaseException as e:
        unlink_quiet(partial)
        if info_written:
            unlink_quiet(info_path)
        log.warning("staging bundle %s for user %s failed: %s", bundle_id, user,
                    getattr(e, "message", None) or f"{type(e).__name__}: {e}")
        raise
    tracker.finish()
    log.info("staged bundle %s for user %s: %d bytes in %.1f s (at most %d MiB queued)", bundle_id, user,
             size, time.monotonic() - started, fetcher.peak_bytes >> 20)
    return info


def _read_info(udir: Path, bundle_id: str) -> BundleInfo | None:
    """The sidecar of *bundle_id*, if it and its bundle are complete and private."""
    try:
        doc = json.loads(read_regular(udir / (bundle_id + ".json"), max_bytes=1 << 20, what="bundle sidecar"))
        if doc.get("format") != INFO_FORMAT or doc.get("bundle_id") != bundle_id:
            return None
        path = udir / (bundle_id + SUFFIX)
        if check_private_file(path, what="staged bundle").st_size != int(doc["size"]):
            return None
        return BundleInfo(path=path, bundle_id=bundle_id, manifest_sha256=str(doc["manifest_sha256"]),
                          recipient=str(doc["recipient"]), size=int(doc["size"]),
                          created=str(doc["created"]), contents_sha256=str(doc.get("contents_sha256", "")),
                          file_count=int(doc.get("file_count", 0)), total_size=int(doc.get("total_size", 0)))
    except (OSError, XnatHpcError, ValueError, KeyError, TypeError, AttributeError):
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
    want = norm_digest(manifest_sha256)
    want_contents = norm_digest(contents_sha256) if contents_sha256 else None
    want_rcpt = as_recipient(recipient)[1] if recipient is not None else None
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
    unlink_quiet(Path(info.path))
    unlink_quiet(Path(info.path).with_name(info.bundle_id + ".json"))
