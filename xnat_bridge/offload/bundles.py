"""Staged bundles of this server process, and their identities, in memory only.

Staging is one pass over the data (issue 11): every file is read once, through
the job's opener, several at a time; a sha256 the dataset version does not know
yet is computed on the way and comes back in ``bundle.info.file_sha256`` for the
run to record; a recorded one is verified (a file that changed is refused with
its name).

Decision (issue 5, "a staged bundle can be reused"): a bundle is encrypted to
an X25519 identity that is **never written anywhere**; it lives in this
process's memory. So a bundle can be reused only within one server lifetime:
a later job on the same dataset version *and* the same training script (the
script is a member of the bundle, so the bundle's ``contents_sha256`` covers
it) reuses the bundle and its identity, and the worker of each job still
claims the key once over its own TLS comm. After a restart the identities are
gone and jobs stage afresh; :meth:`BundleCache.close` removes every bundle this
process staged, and a bundle a node could not use (tampered, unreadable) is
removed at once and never reused.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import BinaryIO

from ..errors import XnatHpcError
from ..staging import (
    FETCH_BUFFER,
    FETCH_THREADS,
    AgeEngine,
    AgeIdentity,
    BundleInfo,
    StagedFile,
    contents_sha256,
    find_bundle,
    remove_bundle,
    stage_files,
)
from ..staging.common import ProgressCallback
from .inputs import Script, audit_items

log = logging.getLogger(__name__)


class StagingFailed(XnatHpcError):
    """The staging area could not take the bundle (full, unwritable)."""

    status = 507
    reason = "staging_failed"


@dataclasses.dataclass
class Bundle:
    """One staged bundle of this process, its identity (memory only) and how many jobs use it."""

    info: BundleInfo
    identity: AgeIdentity
    contents: str
    users: int = 0


#: ``opener(manifest_file)`` → a binary file object of that file's bytes (the caller's
#: file access, wrapped as it likes: e.g. a reader that stops when its job is cancelled)
Opener = Callable[[object], BinaryIO]


def reader_threads(configured: int, source_mode: str, cpus: int | None) -> int:
    """How many files a staging reads at once (pure): *configured* (the policy's
    ``staging_threads``) for XNAT's REST API, whose requests wait on the network; at most one
    per CPU core for the archive mount, whose readers are bound by hashing — more of them
    only take the core that age encrypts on (measured: 1 GB from the mount on 2 cores in
    1.3 s with 2 readers, 1.7 s with 8)."""
    if source_mode == "mount":
        return max(1, min(configured, cpus or 1))
    return configured


def staged_files(manifest, opener: Opener) -> list[StagedFile]:
    """The manifest's files as :class:`StagedFile` entries read through *opener*: size, XNAT's
    md5 and the sha256 where the dataset version has one (``""``: computed while staging)."""
    return [StagedFile(f.name, f.size, getattr(f, "sha256", "") or "", functools.partial(opener, f),
                       md5=getattr(f, "md5", "") or "")
            for f in manifest.files]


def _recorded_differs(manifest, info: BundleInfo) -> str | None:
    """The first file whose sha256 recorded in *manifest* differs from the one *info* staged."""
    staged = info.file_sha256
    for f in manifest.files:
        known = (getattr(f, "sha256", "") or "").lower()
        if known and staged.get(f.name, known) != known:
            return f.name
    return None


def bundle_metadata(manifest, script: Script) -> dict:
    """What MANIFEST.json carries besides the files: public facts, no job id (reuse key)."""
    m = manifest
    return {"dataset": m.name, "dataset_version": m.version, "dataset_digest": m.digest,
            "xnat_host": m.xnat_host, "script": script.member, "script_sha256": script.sha256}


class BundleCache:
    """The bundles this process staged, by the sha256 of their plaintext (see the module docstring)."""

    def __init__(self, staging_dir: str, user: str, audit, engine: AgeEngine | None = None, *,
                 threads: int = FETCH_THREADS, buffer_bytes: int = FETCH_BUFFER):
        self.staging_dir, self.user, self.audit = staging_dir, user, audit
        #: the age engine bundles are encrypted with (None: :func:`~xnat_bridge.staging.default_engine`)
        self.engine = engine
        #: files read concurrently while staging, and the memory their data may hold
        self.threads, self.buffer_bytes = threads, buffer_bytes
        self._by_contents: dict[str, Bundle] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def obtain(self, job_id: str, manifest, script: Script, opener: Opener,
               report: Callable[[str], None] = lambda message: None,
               progress: ProgressCallback | None = None, verify_md5: bool = False,
               threads: int | None = None) -> Bundle:
        """The bundle of *manifest* + *script* for job *job_id*, users += 1.

        Reused when this process staged the same contents (names, sizes, XNAT md5,
        script, metadata: :func:`~xnat_bridge.staging.contents_sha256`, known before
        staging) and the bundle is still there and agrees with every sha256 the
        dataset version recorded; else staged afresh through *opener*, which
        computes every unknown sha256 (``bundle.info.file_sha256``). *report*
        receives the messages for the job's record (a few per staging, never a
        tick); *progress* receives every staging tick as ``progress(bytes_done,
        files_done, bytes_total, files_total)`` (at most every 0.2 s, in the
        staging thread: keep it cheap and in memory, e.g.
        :meth:`~.progress.StagingTracker.update`). *verify_md5*: the opener's streams
        do not check XNAT's md5 (the archive mount), so the staging checks it for every
        file whose sha256 is not recorded yet. *threads*: readers of this staging
        (default: the cache's, :func:`reader_threads`).
        """
        files = staged_files(manifest, opener)
        extras = {script.member: script.content}
        meta = bundle_metadata(manifest, script)
        contents = contents_sha256(files, meta, extras)
        with self._lock:
            key_lock = self._locks.setdefault(contents, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._by_contents.get(contents)
            if cached is not None and _recorded_differs(manifest, cached.info) is not None:
                log.warning("job %s: bundle %s disagrees with the sha256s recorded for dataset %s v%s; "
                            "staging afresh", job_id, cached.info.bundle_id, manifest.name, manifest.version)
                cached = None
            if cached is not None and find_bundle(self.staging_dir, self.user, cached.info.manifest_sha256,
                                                  recipient=cached.identity.recipient,
                                                  contents_sha256=contents) is not None:
                cached.users += 1
                report(f"reusing staged bundle {cached.info.bundle_id}")
                return cached
            identity = AgeIdentity.generate()
            info = self._stage(job_id, manifest, files, identity, meta, extras, report, progress,
                               verify_md5, threads or self.threads)
            bundle = Bundle(info, identity, contents, users=1)
            with self._lock:
                self._by_contents[contents] = bundle
            return bundle

    def _stage(self, job_id, manifest, files, identity, meta, extras, report, progress,
               verify_md5: bool, threads: int) -> BundleInfo:
        started = time.monotonic()
        total = sum(f.size for f in files)
        report(f"staging {len(files)} files ({total} bytes)")
        try:
            info = stage_files(files, staging_dir=self.staging_dir, user=self.user,
                               recipient=identity.recipient, metadata=meta, extra_members=extras,
                               progress=progress, engine=self.engine, threads=threads,
                               buffer_bytes=self.buffer_bytes, verify_md5=verify_md5)
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                what = "is full" if e.errno == errno.ENOSPC else "is over your quota"
            else:
                what = f"is not writable ({e.strerror or e})"
            self.audit("stage", "failed", files=len(files), bytes=total,
                       detail=f"job {job_id}: staging area {what}")
            raise StagingFailed(f"the staging area {self.staging_dir} {what} (dataset {manifest.name} "
                                f"v{manifest.version}, {total} bytes); the partial bundle was removed and "
                                "nothing in your workspace changed — ask an administrator, then submit "
                                "again") from None
        except XnatHpcError as e:
            self.audit("stage", "failed", files=len(files), bytes=total, detail=f"job {job_id}: {e.message}")
            raise
        self.audit("stage", items=audit_items(manifest), files=info.file_count, bytes=info.total_size,
                   hashes={"manifest": info.manifest_sha256, "contents": info.contents_sha256},
                   detail=f"job {job_id} bundle {info.bundle_id} ({info.size} bytes encrypted) in "
                          f"{time.monotonic() - started:.1f} s")
        return info

    def staged(self) -> list[Bundle]:
        """The bundles this process staged and still holds (for audits and tests)."""
        with self._lock:
            return list(self._by_contents.values())

    def release(self, bundle: Bundle, *, drop: bool = False, job_id: str = "-") -> None:
        """Job *job_id* no longer uses *bundle*; with *drop* (the node could not use it) remove it
        at once and never reuse it."""
        with self._lock:
            bundle.users -= 1
            if drop and self._by_contents.get(bundle.contents) is bundle:
                del self._by_contents[bundle.contents]
        if drop:
            log.warning("job %s: removing bundle %s, the node could not use it", job_id, bundle.info.bundle_id)
            remove_bundle(bundle.info)

    def close(self) -> None:
        """Remove every bundle this process staged and forget their identities."""
        with self._lock:
            bundles = list(self._by_contents.values())
            self._by_contents.clear()
        for b in bundles:
            remove_bundle(b.info)
