"""Staged bundles of this server process, and their identities, in memory only.

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
import logging
import threading
import time

from ..errors import XnatHpcError
from ..staging import (
    AgeIdentity,
    BundleInfo,
    StagedFile,
    contents_sha256,
    find_bundle,
    remove_bundle,
    stage_files,
)

log = logging.getLogger(__name__)


class StagingFailed(XnatHpcError):
    """The staging area could not take the bundle (full, unwritable)."""

    status = 507
    reason = "staging_failed"


@dataclasses.dataclass
class Bundle:
    info: BundleInfo
    identity: AgeIdentity
    contents: str
    users: int = 0


class _CancellableReader:
    """A file object whose reads stop with the job's cancellation."""

    def __init__(self, src, run):
        self._src, self._run = src, run

    def read(self, n: int = -1) -> bytes:
        self._run.check_cancel()
        return self._src.read(n)

    def close(self) -> None:
        self._src.close()


def staged_files(run) -> list[StagedFile]:
    access = run.m.connection.access

    def opener(f):
        return lambda: _CancellableReader(access.open(f.ref()), run)

    return [StagedFile(f.name, f.size, f.sha256, opener(f)) for f in run.manifest.files]


def bundle_metadata(run) -> dict:
    """What MANIFEST.json carries besides the files: public facts, no job id (reuse key)."""
    m = run.manifest
    return {"dataset": m.name, "dataset_version": m.version, "dataset_digest": m.digest,
            "xnat_host": m.xnat_host, "script": run.script.member, "script_sha256": run.script.sha256}


class BundleCache:
    def __init__(self, staging_dir: str, user: str, audit):
        self.staging_dir, self.user, self.audit = staging_dir, user, audit
        self._by_contents: dict[str, Bundle] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def obtain(self, run) -> Bundle:
        """The bundle for *run* (reused when this process staged the same contents), users += 1."""
        files = staged_files(run)
        extras = {run.script.member: run.script.content}
        meta = bundle_metadata(run)
        contents = contents_sha256(files, meta, extras)
        with self._lock:
            key_lock = self._locks.setdefault(contents, threading.Lock())
        with key_lock:
            with self._lock:
                cached = self._by_contents.get(contents)
            if cached is not None and find_bundle(self.staging_dir, self.user, cached.info.manifest_sha256,
                                                  recipient=cached.identity.recipient,
                                                  contents_sha256=contents) is not None:
                cached.users += 1
                run.bundle = cached
                run.update(message=f"reusing staged bundle {cached.info.bundle_id}")
                return cached
            identity = AgeIdentity.generate()
            info = self._stage(run, files, identity, meta, extras)
            bundle = Bundle(info, identity, contents, users=1)
            with self._lock:
                self._by_contents[contents] = bundle
            run.bundle = bundle
            return bundle

    def _stage(self, run, files, identity, meta, extras) -> BundleInfo:
        started = time.monotonic()

        def progress(done_bytes, done_files, total_bytes, total_files):
            rate = done_bytes / max(time.monotonic() - started, 1e-6) / 1e6
            run.update(message=f"staging {done_files}/{total_files} files, {rate:.0f} MB/s")

        total = sum(f.size for f in files)
        try:
            info = stage_files(files, staging_dir=self.staging_dir, user=self.user,
                               recipient=identity.recipient, metadata=meta, extra_members=extras,
                               progress=progress)
        except OSError as e:
            what = ("is full" if e.errno in (errno.ENOSPC, errno.EDQUOT)
                    else f"is not writable ({e.strerror})")
            self.audit("stage", "failed", files=len(files), bytes=total,
                       detail=f"job {run.id}: staging area {what}")
            raise StagingFailed(f"the staging area {self.staging_dir} {what}; the partial bundle was "
                                "removed and nothing in your workspace changed — ask an administrator, "
                                "then submit again") from None
        except XnatHpcError as e:
            self.audit("stage", "failed", files=len(files), bytes=total, detail=f"job {run.id}: {e.message}")
            raise
        self.audit("stage", items=run.m.items(run.manifest), files=info.file_count, bytes=info.total_size,
                   hashes={"manifest": info.manifest_sha256, "contents": info.contents_sha256},
                   detail=f"job {run.id} bundle {info.bundle_id} ({info.size} bytes encrypted) in "
                          f"{time.monotonic() - started:.1f} s")
        return info

    def release(self, run) -> None:
        bundle = getattr(run, "bundle", None)
        if bundle is None:
            return
        run.bundle = None
        with self._lock:
            bundle.users -= 1
            drop = run.bundle_suspect
            if drop and self._by_contents.get(bundle.contents) is bundle:
                del self._by_contents[bundle.contents]
        if drop:
            log.warning("job %s: removing bundle %s, the node could not use it", run.id, bundle.info.bundle_id)
            remove_bundle(bundle.info)

    def close(self) -> None:
        """Remove every bundle this process staged and forget their identities."""
        with self._lock:
            bundles = list(self._by_contents.values())
            self._by_contents.clear()
        for b in bundles:
            remove_bundle(b.info)
