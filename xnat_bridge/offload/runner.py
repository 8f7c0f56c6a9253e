"""One offloaded job, followed in a background thread: stage → submit → run → collect.

A :class:`JobRun` is built from its own inputs — the job's record, manifest,
resolved script and resource request — and one :class:`~.context.OffloadContext`
(registry, file access, policy, audit, workspace, bundle cache, cluster
factory, how to record hashes); it holds no reference to the manager. After
staging it records the sha256s the staging computed into the dataset version
(``record_hashes``) and sets the job's ``manifest_sha256`` to the bundle's.
It owns everything secret about its job — the dataset identity (unless the bundle is shared through the bundle
cache) and the result identity — and every temporary thing: the per-job
``shared_temp_directory`` with dask-jobqueue's TLS files, the dask cluster,
the Slurm job, the encrypted results archive. Its ``finally`` removes them
whatever the outcome and then calls the context's ``on_finished``. The registry
record is its only output besides the job's directory ``<workspace>/jobs/<id>/``
(log.txt, results/, provenance.json).

A job whose results are held for review (``review`` set by the manager) writes no
script output to ``log.txt`` — the node seals it with the results, and only the
node's status lines are kept here (:func:`keep_log_event`, whatever a node sends) —
and reports no output tail when the script fails.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

from ..errors import SlurmError, XnatHpcError
from ..staging import AgeIdentity, decrypt_to_directory
from . import review as review_mod
from . import worker as worker_mod
from .bundles import Bundle, reader_threads
from .context import OffloadContext
from .inputs import Script, audit_items
from .jobscript import ClusterSpec, cluster_options
from .keyrelease import KeyRelease
from .phases import PhaseClock, node_phases
from .policy import ResourceRequest
from .progress import StagingTracker
from .registry import JobRecord, JobState, now_iso
from .slurm import scancel, slurm_state, wait_gone

log = logging.getLogger(__name__)

#: the ledger's word for each registry state it keeps (:mod:`hub_ext.review_store`)
_LEDGER_STATES = {"running": "running", "done": "done", "failed": "failed", "cancelled": "cancelled",
                  "lost": "lost"}


def ledger_report(fields: dict) -> dict:
    """What of a registry update the hub's ledger keeps (pure): Slurm id, manifest digest,
    ledger state."""
    out = {}
    if fields.get("slurm_job_id"):
        out["slurm_job_id"] = str(fields["slurm_job_id"])
    if fields.get("manifest_sha256"):
        out["manifest_sha256"] = str(fields["manifest_sha256"])
    state = fields.get("state")
    state = getattr(state, "value", state)
    if state in _LEDGER_STATES:
        out["state"] = _LEDGER_STATES[state]
    return out

POLL = 0.25
SQUEUE_EVERY = 3.0
READ_CHECK_EVERY = 0.5


def keep_log_event(msg: dict, held: bool) -> bool:
    """Whether a log event from the node goes into the job's ``log.txt`` (pure): every event
    of a job whose results are not held; only the node's status lines
    (``kind == "status"``, no script output) of a held job — whatever a node sends."""
    return not held or msg.get("kind") == worker_mod.STATUS


class Cancelled(Exception):
    """The job was cancelled (by the user, another process, or a refused key claim)."""


class JobEnded(XnatHpcError):
    """The job ended without results (the script failed, the node could not use the bundle, ...)."""

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        self.exit_code = exit_code


def write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


class CancellableReader:
    """A file object whose reads stop with the job's cancellation (*check_cancel* raises).

    Several of them are read at once by the staging readers; *check_cancel* must be cheap
    (see :meth:`JobRun.check_cancel_reading`).
    """

    def __init__(self, src, check_cancel):
        self._src, self._check_cancel = src, check_cancel

    def read(self, n: int = -1) -> bytes:
        self._check_cancel()
        return self._src.read(n)

    def readinto(self, buffer) -> int:
        self._check_cancel()
        return self._src.readinto(buffer)

    def close(self) -> None:
        self._src.close()


class JobRun:
    """The background life of one job (see the module docstring)."""

    def __init__(self, record: JobRecord, manifest, script: Script, request: ResourceRequest,
                 ctx: OffloadContext):
        self.ctx = ctx
        self.id = record.id
        self.manifest_sha = record.manifest_sha256
        self.manifest = manifest
        self.script = script
        self.request = request
        self.job_dir = ctx.job_dir(record.id)
        self.cancel_event = threading.Event()
        self.fail_reason: str | None = None
        self.cluster = None
        self.client = None
        self.slurm_job_id: str | None = None
        self.key: KeyRelease | None = None
        self.tls_dir: str | None = None
        self.results_archive: Path | None = None
        self.result_identity = AgeIdentity.generate()
        self.bundle: Bundle | None = None
        self.bundle_suspect = False  # the node could not use the bundle: do not reuse it
        #: the hub's review policy when the dataset needs results review (set by the manager):
        #: {"recipient": hub's age recipient, "review": [projects], "client": ReviewClient}
        self.review: dict | None = None
        #: the hub's job ledger (set by the manager when a hub runs this server): told the
        #: Slurm id, the manifest digest and the state as they become known
        self.ledger = None
        #: live staging progress, in memory only (the REST API reads :meth:`StagingTracker.snapshot`)
        self.progress = StagingTracker()
        #: where the job's start goes (:mod:`~.phases`); the manager starts it at the submission
        self.phases = PhaseClock()
        self.sbatch_returned = 0.0  # wall-clock time sbatch returned (the node's phases start there)
        self._log_lock = threading.Lock()
        self._next_registry_check = 0.0
        self.thread = threading.Thread(target=self._main, name=f"offload-{record.id}", daemon=True)

    # -- helpers ---------------------------------------------------------------
    def update(self, **fields) -> JobRecord:
        rec = self.ctx.registry.update(self.id, **fields)
        self._report_to_ledger(fields)
        return rec

    def _report_to_ledger(self, fields: dict) -> None:
        """What the hub's ledger keeps of this job (:func:`ledger_report`), told as it changes;
        a hub that cannot be told is logged, never fatal (the ledger's facts come from the hub)."""
        report = ledger_report(fields)
        if self.ledger is None or not report:
            return
        try:
            self.ledger.report(self.id, **report)
        except XnatHpcError as e:
            log.warning("job %s: the hub's ledger was not told %s: %s", self.id, sorted(report), e.message)

    def append_log(self, text: str) -> None:
        with self._log_lock:
            fd = os.open(self.job_dir / review_mod.LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
            try:
                view = memoryview(text.encode("utf-8", errors="replace"))
                while view:
                    view = view[os.write(fd, view):]
            finally:
                os.close(fd)

    def check_cancel(self) -> None:
        if self.cancel_event.is_set():
            raise Cancelled(self.fail_reason or "cancelled by user")
        rec = self.ctx.registry.get(self.id)
        if rec.terminal:  # cancelled from another process (CLI)
            self.cancel_event.set()
            raise Cancelled(rec.message or f"job {rec.state.value} elsewhere")

    def check_cancel_reading(self) -> None:
        """:meth:`check_cancel` for the staging readers: the event at every read, the registry
        (a cancel from another process) at most every READ_CHECK_EVERY seconds."""
        if self.cancel_event.is_set():
            raise Cancelled(self.fail_reason or "cancelled by user")
        now = time.monotonic()
        if now >= self._next_registry_check:
            self._next_registry_check = now + READ_CHECK_EVERY
            self.check_cancel()

    def cancel(self, reason: str | None = None) -> None:
        if reason and not self.fail_reason:
            self.fail_reason = reason
        self.cancel_event.set()

    # -- the thread ------------------------------------------------------------
    def start(self) -> None:
        self.thread.start()

    def _main(self) -> None:
        try:
            self.progress.start(self.manifest.total_size, len(self.manifest.files))
            bundle = self.bundle = self.ctx.bundles.obtain(self.id, self.manifest, self.script, self._open,
                                                           report=lambda message: self.update(message=message),
                                                           progress=self.progress.update,
                                                           verify_md5=not getattr(self.ctx.files, "checks_md5", True),
                                                           threads=reader_threads(
                                                               self.ctx.policy.staging_threads,
                                                               getattr(self.ctx.files, "mode", ""),
                                                               os.cpu_count()))
            self.phases.mark("staging")
            self._record_hashes(bundle)
            self.check_cancel()
            self._submit(bundle)
            result = self._follow(bundle)
            self._collect(result)
        except Cancelled as e:
            if self.fail_reason:  # refused key claim: a failure, not a user's cancel
                self.update(state=JobState.FAILED, message=self.fail_reason)
            else:
                self.update(state=JobState.CANCELLED, message=str(e) or "cancelled by user")
        except XnatHpcError as e:
            log.warning("job %s failed: %s", self.id, e.message)
            self.update(state=JobState.FAILED, message=e.message, exit_code=getattr(e, "exit_code", None))
        except Exception as e:
            log.exception("job %s failed unexpectedly", self.id)
            self.update(state=JobState.FAILED, message=f"internal error: {type(e).__name__}: {e}")
        finally:
            self._audit_end()
            self._cleanup()

    def _audit_end(self) -> None:
        """A ``job_state`` audit event for a job that ended failed or cancelled (a done job's
        end is its ``result_retrieve``), for the owners' jobs table."""
        try:
            rec = self.ctx.registry.get(self.id)
            state = JobState(rec.state)
        except Exception:  # noqa: BLE001 - no record, no event; the job's own error is reported already
            return
        if state in (JobState.FAILED, JobState.CANCELLED):
            self.ctx.audit("job_state", "failed" if state == JobState.FAILED else "allowed",
                           items=audit_items(self.manifest),
                           detail=f"job {self.id} slurm {self.slurm_job_id or '-'}: {(rec.message or '')[:300]}",
                           extra={"job": self.id, "slurm_job_id": self.slurm_job_id or "", "state": state.value})

    def _open(self, f):
        return CancellableReader(self.ctx.files.open(f.ref()), self.check_cancel_reading)

    def _record_hashes(self, bundle: Bundle) -> None:
        """Write the sha256s this staging computed into the dataset version, so that later
        bundles and jobs verify against them; the job's record gets the bundle's digest."""
        staged = bundle.info.file_sha256
        new = {f.name: staged[f.name] for f in self.manifest.files
               if not getattr(f, "sha256", "") and f.name in staged}
        if new and self.ctx.record_hashes is not None:
            self.manifest = self.ctx.record_hashes(self.manifest.name, self.manifest.version, new)
            log.info("job %s: recorded the sha256 of %d file(s) in dataset %s v%d", self.id, len(new),
                     self.manifest.name, self.manifest.version)
        if self.manifest_sha != bundle.info.manifest_sha256:
            self.manifest_sha = bundle.info.manifest_sha256
            self.update(manifest_sha256=self.manifest_sha)

    def _submit(self, bundle: Bundle) -> None:
        staging_user_dir = Path(bundle.info.path).parent
        self.tls_dir = tempfile.mkdtemp(prefix=f".tls-{self.id}-", dir=staging_user_dir)
        os.chmod(self.tls_dir, 0o700)
        slurm_logs = self.job_dir / "slurm"
        slurm_logs.mkdir(mode=0o700, exist_ok=True)
        spec = ClusterSpec.from_env(self.id, self.request, self.ctx.policy.exclusive, self.tls_dir,
                                    str(slurm_logs))
        self.key = KeyRelease(self.id, bundle.identity, lambda: self.slurm_job_id,
                              self._key_released, self._key_refused)
        self.update(state=JobState.QUEUED, message="submitting to Slurm")
        try:
            self.cluster = self.ctx.cluster_factory(**cluster_options(spec))
            self.cluster.scheduler.handlers[worker_mod.CLAIM_HANDLER] = self.key.handler
            self.phases.mark("scheduler")
            # scale(1) by hand, so that an sbatch failure is raised here (scale() only logs it)
            self.cluster.worker_spec.update(self.cluster.new_worker_spec())
            self.cluster.sync(self.cluster._correct_state)
            self.phases.mark("sbatch")
            self.sbatch_returned = time.time()
            jobs = [getattr(w, "job_id", None) for w in self.cluster.workers.values()]
        except Exception as e:  # noqa: BLE001 - sbatch failed: controller down, bad partition, ...
            detail = str(e).strip().splitlines()
            reason = next((ln for ln in reversed(detail) if "sbatch" in ln.lower() or "error" in ln.lower()),
                          detail[-1] if detail else type(e).__name__)
            self.ctx.audit("submit", "failed", detail=f"job {self.id}: {reason}"[:500])
            raise SlurmError(f"Slurm did not accept the job: {reason.strip()}. Nothing ran; "
                             "submit it again when Slurm is back (the staged bundle is reused)") from None
        self.slurm_job_id = next((j for j in jobs if j), None)
        if not self.slurm_job_id:
            raise SlurmError("Slurm did not return a job id; submit the job again")
        self.update(slurm_job_id=self.slurm_job_id,
                    message=f"queued as Slurm job {self.slurm_job_id} on partition {self.request.partition}")
        self.ctx.audit("submit", items=audit_items(self.manifest), files=len(self.manifest.files),
                       bytes=self.manifest.total_size, hashes={"manifest": bundle.info.manifest_sha256,
                                                               "script": self.script.sha256},
                       detail=f"job {self.id} slurm {self.slurm_job_id} partition {self.request.partition}",
                       extra={"job": self.id, "slurm_job_id": self.slurm_job_id, "dataset": self.manifest.name,
                              "resources": self.request.to_json()})

    def _key_released(self, slurm_job_id: str) -> None:
        for phase, seconds in node_phases(self.sbatch_returned, self.key.node_times if self.key else None,
                                          time.time()).items():
            self.phases.add(phase, seconds)
        phases = self.phases.as_json()
        self.update(state=JobState.RUNNING, started=now_iso(), phases=phases,
                    message=f"running as Slurm job {slurm_job_id}")
        text = self.phases.text()
        log.info("job %s: running as Slurm job %s; its start: %s", self.id, slurm_job_id, text)
        self.append_log(f"[xnat-hpc] running as Slurm job {slurm_job_id}; its start: {text}\n")
        self.ctx.audit("key_release", items=audit_items(self.manifest), hashes={"manifest": self.manifest_sha},
                       detail=f"job {self.id} slurm {slurm_job_id}",
                       extra={"job": self.id, "slurm_job_id": slurm_job_id})

    def _key_refused(self, slurm_job_id: str, reason: str) -> None:
        self.ctx.audit("key_release", "denied", items=audit_items(self.manifest),
                       hashes={"manifest": self.manifest_sha}, detail=f"job {self.id}: {reason}",
                       extra={"job": self.id, "slurm_job_id": slurm_job_id})
        self.cancel(f"security: {reason}; the job was stopped")

    def _log_event(self, event) -> None:
        _time, msg = event
        if not (isinstance(msg, dict) and msg.get("job") == self.id and isinstance(msg.get("text"), str)):
            return
        if keep_log_event(msg, held=self.review is not None):
            self.append_log(msg["text"])
        else:
            log.warning("job %s: its results are held for review; %d characters of script output from "
                        "the node were not written to its log", self.id, len(msg["text"]))

    def _follow(self, bundle: Bundle) -> dict:
        from distributed import Client

        self.client = Client(self.cluster, set_as_default=False)
        self.client.subscribe_topic(worker_mod.log_topic(self.id), self._log_event)
        results_name = f"results-{self.id}-{os.urandom(4).hex()}.tar.age"
        self.results_archive = Path(bundle.info.path).parent / results_name
        fut = self.client.submit(
            worker_mod.run_training, self.id, str(bundle.info.path), bundle.info.manifest_sha256,
            self.script.member, str(self.results_archive), self.result_identity.recipient,
            self.request.cpus, bundle.info.contents_sha256,
            review_recipient=self.review["recipient"] if self.review else None,
            key=f"xnat-hpc-{self.id}", pure=False)
        next_check = time.monotonic() + SQUEUE_EVERY
        while not fut.done():
            self.check_cancel()
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + SQUEUE_EVERY
                if self.fail_reason is None and slurm_state(self.slurm_job_id) is None:
                    time.sleep(1.0)  # the result may be on its way
                    if not fut.done():
                        raise JobEnded(f"Slurm job {self.slurm_job_id} ended before the script finished "
                                       "(walltime, node failure or scancel); see "
                                       f"{self.job_dir / 'slurm'}")
            time.sleep(POLL)
        self.check_cancel()
        try:
            return fut.result()
        except Exception as e:  # noqa: BLE001 - whatever failed on the node fails the job
            self.bundle_suspect = True
            if isinstance(e, worker_mod.KeyRefused):
                raise JobEnded(f"the worker did not get the dataset key: {e}") from None
            if isinstance(e, XnatHpcError):
                raise JobEnded(f"on the node: {e.message}") from None
            raise JobEnded(f"on the node: {type(e).__name__}: {e}") from None

    def _collect(self, result: dict) -> None:
        rc = int(result["exit_code"])
        if rc != 0:
            if self.review is not None:  # a held job's output never shows here, not even its tail
                raise JobEnded(f"the script exited with code {rc}; its output was withheld and deleted on "
                               "the node (the dataset's results are held for review)", exit_code=rc)
            tail = "".join(result.get("tail") or []).strip()[-1500:]
            raise JobEnded(f"the script exited with code {rc}" + (f"; last output:\n{tail}" if tail else ""),
                           exit_code=rc)
        if result.get("review"):  # sealed for review: kept encrypted until the owners decide
            self._hold(result)
            return
        if self.review is not None:  # a node that did not seal: its results are not released
            raise JobEnded("the node returned results that were not sealed for review, although the "
                           "dataset's results are held for review; they were deleted — submit the job "
                           "again (the nodes may run another version of xnat-hpc-hub)")
        self.update(state=JobState.COLLECTING, exit_code=0, message="decrypting results")
        out = self.job_dir / "results"
        if out.exists():
            shutil.rmtree(out)
        listing = decrypt_to_directory(self.results_archive, self.result_identity, out,
                                       engine=self.ctx.engine)
        rec = self.ctx.registry.get(self.id)
        ended = now_iso()
        prov = self._provenance(rec, ended, listing["files"], node=str(result.get("node") or ""))
        write_private(self.job_dir / "provenance.json", json.dumps(prov, indent=1, sort_keys=True).encode())
        self.ctx.audit("result_retrieve", items=audit_items(self.manifest), files=len(listing["files"]),
                       bytes=sum(f["size"] for f in listing["files"]),
                       hashes={"manifest": rec.manifest_sha256, "script": rec.script_sha256},
                       detail=f"job {self.id} slurm {self.slurm_job_id}",
                       extra={"job": self.id, "slurm_job_id": self.slurm_job_id})
        self.update(state=JobState.DONE, exit_code=0, ended=ended,
                    message=f"done: {len(listing['files'])} result file(s)")

    def _provenance(self, rec: JobRecord, ended: str, files: list[dict], node: str = "") -> dict:
        return {
            "format": "xnat-hpc-provenance", "format_version": 1,
            "job_id": self.id, "user": rec.user, "slurm_job_id": self.slurm_job_id,
            "xnat_host": self.manifest.xnat_host, "dataset": rec.dataset,
            "dataset_version": rec.dataset_version, "dataset_digest": self.manifest.digest,
            "manifest_sha256": rec.manifest_sha256, "file_count": len(self.manifest.files),
            "total_size": self.manifest.total_size, "script": rec.script,
            "script_sha256": rec.script_sha256, "resources": rec.resources,
            "partition": self.request.partition, "node": node,
            "created": rec.created, "started": rec.started, "ended": ended, "exit_code": 0,
            "results": files,
        }

    def _hold(self, result: dict) -> None:
        """The results stay sealed in the staging area; the owners decide (:mod:`.review`)."""
        ended = now_iso()
        files = [f for f in result["results"]["files"] if f["name"] != review_mod.LOG_MEMBER]
        prov = self._provenance(self.ctx.registry.get(self.id), ended, files, node=str(result.get("node") or ""))
        state = review_mod.hold(self, result, prov, ended)
        with self._log_lock:
            review_mod.HeldResults(self.job_dir).note_log()  # the log says where the output is
        waiting = ", ".join(state["pending"])
        self.update(state=JobState.DONE, exit_code=0, ended=ended,
                    message=f"done: {len(prov['results'])} result file(s), held for review by the "
                            f"owners of {waiting}")

    def _cleanup(self) -> None:
        if self.key is not None:
            self.key.forget()
        if self.ctx.registry.get(self.id).state != JobState.DONE:
            scancel(self.slurm_job_id)  # stop the node first: its script and worker end now
        for closer in (self.client, self.cluster):
            if closer is not None:
                try:
                    closer.close()
                except Exception as e:  # noqa: BLE001 - dask-jobqueue asserts on worker status
                    log.debug("job %s: closing %s: %r", self.id, type(closer).__name__, e)
        scancel(self.slurm_job_id)
        if not wait_gone(self.slurm_job_id):
            log.warning("job %s: Slurm job %s still listed after scancel", self.id, self.slurm_job_id)
        if self.tls_dir:
            shutil.rmtree(self.tls_dir, ignore_errors=True)
        if self.results_archive is not None:
            for p in (self.results_archive, self.results_archive.with_name(self.results_archive.name + ".partial")):
                try:
                    os.unlink(p)
                except FileNotFoundError:
                    pass
        if self.bundle is not None:
            bundle, self.bundle = self.bundle, None
            self.ctx.bundles.release(bundle, drop=self.bundle_suspect, job_id=self.id)
        self.ctx.on_finished(self)
