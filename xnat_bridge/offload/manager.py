"""The user's server's offload service: :class:`OffloadManager`.

One manager per server process and workspace. :meth:`OffloadManager.submit`
validates everything synchronously (client token, resources, script, dataset,
scope, XNAT access, the partition's node-local scratch, staging area) and
returns a record in state STAGING; a
background thread per job (:class:`~.runner.JobRun`, built from the job's
inputs and the manager's :class:`~.context.OffloadContext`) stages, submits,
follows and collects. No call of the manager waits on Slurm or on the job, except
:meth:`wait`: the jupyter-server extension can call ``list``/``get``/``logs``/
``cancel``/``active`` from its handlers, and should call ``submit`` in an
executor (it reads the script, the manifest and asks XNAT once).

Idempotency lives here and nowhere else: a ``client_token`` is checked
(:func:`~.inputs.check_client_token`) and looked up by :meth:`submit_once`,
and the registry keeps it unique when two submits race.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import weakref
from pathlib import Path

from .. import audit as audit_mod
from .. import procs
from ..audit_outbox import default_sink
from .. import slurm as slurm_mod
from ..errors import Conflict, InvalidRequest, NotFound, SlurmUnavailable, XnatHpcError
from ..private import create_private_file, open_regular
from ..staging import AgeEngine, manifest_sha256, user_dir
from .bundles import BundleCache
from .context import OffloadContext, job_dir
from .inputs import check_client_token, check_dataset, resolve_script
from .phases import PhaseClock
from .policy import OffloadPolicy, ResourceRequest
from .registry import JobRecord, JobRegistry, JobState, new_job_id, now_iso
from . import review as review_mod
from . import sweep as sweep_mod
from .runner import JobRun
from .slurm import make_slurm_cluster, partition_tmp_disk, scancel

log = logging.getLogger(__name__)

_LIVE: weakref.WeakSet[OffloadManager] = weakref.WeakSet()
_DEFAULT = object()  # slurm_check not given
_HOST = socket.gethostname()


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


@dataclasses.dataclass(frozen=True)
class Submission:
    """What :meth:`OffloadManager.submit_once` did: the job, and whether this call created it
    (False: its ``client_token`` named a job submitted before)."""

    record: JobRecord
    created: bool


class OffloadManager:
    """Submit, follow, cancel and collect offloaded training jobs of one user.

    *cluster_factory* builds the dask cluster of one job from ``SLURMCluster``
    keyword arguments (default :func:`~.slurm.make_slurm_cluster`: dask-jobqueue's
    ``SLURMCluster`` with its ``sbatch``/``scancel`` through :mod:`xnat_bridge.procs`).
    *slurm_check* is asked before a submission is accepted whether Slurm's controller
    answers (default, with the default cluster factory: ``scontrol ping``, at once — a
    submission while Slurm is down is refused with
    :class:`~xnat_bridge.errors.SlurmUnavailable`, HTTP 503, before anything is recorded,
    staged or waited for); None asks nothing (a cluster factory that is no Slurm).
    *staging_engine* is the age engine that encrypts bundles and decrypts results in
    this server (:mod:`xnat_bridge.staging.engine`; default: the ``age`` CLI when
    installed, else pyrage). The worker on the compute node decrypts with its node's
    default engine: both engines read and write the same age files.
    """

    def __init__(self, connection=None, *, workspace: Path | None = None,
                 policy: OffloadPolicy | None = None, sink: audit_mod.AuditSink | None = None,
                 root_dir: Path | None = None, cluster_factory=None,
                 staging_engine: AgeEngine | None = None, slurm_check=_DEFAULT):
        self.connection = connection
        if workspace is None:
            if connection is None:
                raise InvalidRequest("OffloadManager needs a connection or a workspace directory")
            workspace = connection.workspace
        self.workspace = _private_dir(Path(workspace))
        self.root_dir = Path(root_dir or os.environ.get("XNAT_HPC_ROOT_DIR") or self.workspace)
        if policy is None:  # the hub's XNAT_HPC_OFFLOAD (imported here: server_env imports offload)
            from ..server_env import offload_from_env
            policy = offload_from_env()
        self.policy = policy
        self.sink = sink or (connection.sink if connection is not None
                             else default_sink(self.workspace))
        self.user = connection.user if connection is not None else (
            os.environ.get("JUPYTERHUB_USER") or os.environ.get("USER") or "unknown")
        self.registry = JobRegistry(self.workspace)
        self.bundles = BundleCache(self.policy.staging_dir, self.user, self.audit, engine=staging_engine,
                                   threads=self.policy.staging_threads,
                                   buffer_bytes=self.policy.staging_buffer)
        self.cluster_factory = cluster_factory or make_slurm_cluster
        self.slurm_check = (slurm_mod.controller_up if cluster_factory is None else None) \
            if slurm_check is _DEFAULT else slurm_check
        #: the hub's review API (results review of sensitive projects); None outside a hub
        self.review_client = review_mod.ReviewClient.from_env()
        self._review_lock = threading.Lock()  # one opening of held results at a time
        self._context: OffloadContext | None = None
        self.owner = f"{_HOST}:{os.getpid()}:{os.urandom(6).hex()}"
        self._runs: dict[str, JobRun] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._mark_lost()
        _LIVE.add(self)
        self._sweep_staging()

    # -- plumbing ----------------------------------------------------------------
    def audit(self, action: str, outcome: str = "allowed", **kw) -> None:
        try:
            self.sink.emit(audit_mod.make_event(self.user, action, outcome, **kw))
        except Exception:
            log.exception("audit event %s for %s could not be emitted", action, self.user)

    def job_dir(self, job_id: str) -> Path:
        return job_dir(self.workspace, job_id)

    def context(self) -> OffloadContext:
        """The collaborators every job run of this manager gets (needs the XNAT connection)."""
        conn = self._connection()
        with self._lock:
            if self._context is None or self._context.files is not conn.access:
                self._context = OffloadContext(
                    registry=self.registry, files=conn.access, policy=self.policy, audit=self.audit,
                    workspace=self.workspace, bundles=self.bundles, cluster_factory=self.cluster_factory,
                    on_finished=self._finished, engine=self.bundles.engine,
                    record_hashes=self._record_hashes)
            return self._context

    def _record_hashes(self, name: str, version: int, sha256_by_name) -> object:
        """The sha256s a staging computed, into dataset *name* v*version* (the connection's store)."""
        return self._connection().datasets.record_sha256(name, version, sha256_by_name)

    def _finished(self, run: JobRun) -> None:
        with self._lock:
            if self._runs.get(run.id) is run:
                del self._runs[run.id]

    def _owner_gone(self, owner: str) -> bool:
        host, _, rest = owner.partition(":")
        pid = rest.partition(":")[0]
        if host != _HOST or not pid.isdigit():
            return False  # another machine's server: not ours to judge
        if int(pid) != os.getpid():
            return not procs.pid_alive(int(pid))
        return not any(m.owner == owner and not m._closed for m in list(_LIVE))

    def _mark_lost(self) -> None:
        for rec, owner in self.registry.active():
            if not self._owner_gone(owner):
                continue
            if rec.slurm_job_id:
                scancel(rec.slurm_job_id)
                msg = (f"the server restarted while the job was {rec.state.value}; its Slurm job "
                       f"{rec.slurm_job_id} was cancelled")
            else:
                msg = f"the server restarted while the job was {rec.state.value}; submit it again"
            log.warning("job %s of %s: %s", rec.id, rec.user, msg)
            self.registry.update(rec.id, state=JobState.LOST, message=msg)

    def _sweep_staging(self) -> None:
        """Remove what jobs of servers that are gone left on the staging area: worker TLS keys,
        bundles nobody can open, unheld results (:mod:`.sweep`); audited."""
        try:
            udir = user_dir(self.policy.staging_dir, self.user, create=False)
        except XnatHpcError as e:
            log.info("staging clean-up of %s skipped: %s", self.user, e.message)
            return
        if udir is None:
            return
        live = {rec.id for rec, owner in self.registry.active() if not self._owner_gone(owner)}
        held = {rec.id for rec in self.registry.list()
                if rec.terminal and review_mod.HeldResults(self.job_dir(rec.id)).exists()}
        stale = sweep_mod.stale_entries(os.listdir(udir), live_jobs=live, held_jobs=held,
                                        bundles_in_use=bool(live))
        removed = sweep_mod.remove_entries(udir, stale) if stale else []
        if removed:
            tls = sum(1 for n in removed if n.startswith(".tls-"))
            log.warning("staging clean-up of %s: removed %d leftovers of servers that are gone (%d TLS "
                        "directories with worker keys) from %s", self.user, len(removed), tls, udir)
            self.audit("staging_cleanup", detail=f"staging area {udir}: removed {len(removed)} leftovers of jobs "
                                         f"no longer running ({tls} worker TLS directories)",
                       extra={"removed": removed[:100]})

    # -- the contract --------------------------------------------------------------
    def submit(self, dataset: str, script: str, *, dataset_version: int | None = None, partition=None,
               cpus=None, mem=None, gpus=None, walltime=None, account=None, qos=None,
               client_token: str | None = None) -> JobRecord:
        """Validate everything, record the job (STAGING) and continue in the background.

        *script* is relative to the server's root directory (or an absolute path inside it
        or the workspace); a known *client_token* returns the job it named instead.
        """
        return self.submit_once(dataset, script, dataset_version=dataset_version, partition=partition,
                                cpus=cpus, mem=mem, gpus=gpus, walltime=walltime, account=account,
                                qos=qos, client_token=client_token).record

    def submit_once(self, dataset: str, script: str, *, dataset_version: int | None = None,
                    partition=None, cpus=None, mem=None, gpus=None, walltime=None, account=None,
                    qos=None, client_token: str | None = None) -> Submission:
        """:meth:`submit`, saying whether this call created the job (False: a known *client_token*)."""
        if self._closed:
            raise Conflict("this offload manager is closed")
        phases = PhaseClock()
        check_client_token(client_token)
        if client_token is not None:
            existing = self.registry.by_token(client_token)
            if existing is not None:
                return Submission(existing, created=False)
        request = self.policy.check(ResourceRequest.parse(
            self.policy, partition=partition, cpus=cpus, mem=mem, gpus=gpus, walltime=walltime,
            account=account, qos=qos))
        if self.slurm_check is not None and not self.slurm_check():
            self.audit("submit", "failed", detail="Slurm's controller does not answer")
            raise SlurmUnavailable("Slurm is not answering (its controller is down or unreachable): "
                                   "nothing was staged or submitted — submit the job again when Slurm "
                                   "is back, or ask an administrator")
        ctx = self.context()
        conn = self.connection
        script_obj = resolve_script(script, [self.root_dir, self.workspace])
        manifest = check_dataset(conn, dataset, dataset_version)
        self.policy.check_scratch(f"{manifest.name!r} v{manifest.version}", manifest.total_size,
                                  None if self.policy.node_scratch is not None
                                  else partition_tmp_disk(request.partition))
        udir = user_dir(self.policy.staging_dir, self.user, create=True)
        self._check_space(udir, manifest.total_size)
        now = now_iso()
        job_id = new_job_id()
        # known once every file's sha256 is (else set by the run after its first staging)
        known_sha = (manifest_sha256([{"name": f.name, "size": f.size, "sha256": f.sha256} for f in manifest.files])
                     if all(f.sha256 for f in manifest.files) else "")
        review = self._enter_ledger(job_id, manifest, known_sha, script_obj.sha256)
        rec = JobRecord(
            id=job_id, user=self.user, dataset=manifest.name, dataset_version=manifest.version,
            manifest_sha256=known_sha,
            script=script_obj.path, script_sha256=script_obj.sha256, resources=request.to_json(),
            state=JobState.STAGING, slurm_job_id=None, created=now, updated=now, started=None,
            ended=None, exit_code=None, message="staging", client_token=client_token)
        stored = self.registry.add(rec, self.owner)
        if stored.id != rec.id:  # the same client_token won a race
            return Submission(stored, created=False)
        _private_dir(self.job_dir(rec.id))
        run = JobRun(rec, manifest, script_obj, request, ctx)
        phases.mark("checks")
        run.phases = phases
        run.review = review
        run.ledger = self.review_client
        with self._lock:
            self._runs[rec.id] = run
        log.info("job %s of %s: dataset %s v%d, script %s, %s", rec.id, self.user, manifest.name,
                 manifest.version, script_obj.path, request)
        run.start()
        return Submission(rec, created=True)

    def resubmit(self, job_id: str, client_token: str | None = None) -> JobRecord:
        """Submit a finished job again (same dataset version, script path and resources)."""
        old = self.get(job_id)
        if not old.terminal:
            raise Conflict(f"job {job_id} is still {old.state.value}; cancel it first", item=job_id)
        r = old.resources
        return self.submit(old.dataset, old.script, dataset_version=old.dataset_version,
                           partition=r.get("partition"), cpus=r.get("cpus"), mem=r.get("memory"),
                           gpus=r.get("gpus"), walltime=r.get("walltime"), account=r.get("account"),
                           qos=r.get("qos"), client_token=client_token)

    def _enter_ledger(self, job_id: str, manifest, manifest_sha: str, script_sha: str) -> dict | None:
        """Enter the job in the hub's ledger before anything is staged; the review the hub
        asks for (``{"recipient": the job's own review recipient, "review": [projects],
        "client": ReviewClient}``) or None. No hub: None. A hub that cannot enter it refuses
        the submission (fail closed: its projects may need review)."""
        if self.review_client is None:
            return None
        answer = self.review_client.enter(job_id, {
            "dataset": manifest.name, "dataset_version": manifest.version,
            "manifest_sha256": manifest_sha, "script_sha256": script_sha})
        if not answer.get("review"):
            return None
        if not answer.get("recipient"):
            raise Conflict(f"the hub entered job {job_id} for review by {', '.join(answer['review'])} "
                           "without a review recipient; the job was not started")
        return {"recipient": str(answer["recipient"]), "review": list(answer["review"]),
                "client": self.review_client}

    def review(self, job_id: str, refresh: bool = True) -> dict | None:
        """The job's ``review`` state (``{"state", "reason", "since", "projects", "pending"}``)
        or None when its results were not held; *refresh* asks the hub about a held job."""
        held = review_mod.HeldResults(self.job_dir(job_id))
        if not held.exists():
            return None
        if refresh:
            try:
                state, _share = review_mod.refresh(self.review_client, held, job_id, self.audit)
            except XnatHpcError as e:
                log.warning("job %s: review state not refreshed: %s", job_id, e.message)
                state = held.load()
        else:
            state = held.load()
        return review_mod.HeldResults.public(state)

    def _open_held(self, job_id: str) -> None:
        """Results held for review: open them once approved, else say why not (typed errors)."""
        held = review_mod.HeldResults(self.job_dir(job_id))
        if not held.exists():
            return
        with self._review_lock:
            review_mod.open_held(self.review_client, held, job_id, self.audit, self.get(job_id),
                                 engine=self.bundles.engine)

    def _connection(self):
        if self.connection is None:
            from ..connection import connect

            self.connection = connect(sink=self.sink, workspace=self.workspace)
        return self.connection

    def _check_space(self, udir: Path, data_bytes: int) -> None:
        st = os.statvfs(udir)
        free = st.f_bavail * st.f_frsize
        need = int(data_bytes * 1.01) + (1 << 20)
        if free < need:
            raise Conflict(f"the staging area {self.policy.staging_dir} has {free // 2**20} MiB free; "
                           f"this dataset needs about {need // 2**20} MiB — ask an administrator or "
                           "remove finished jobs' bundles", item=str(self.policy.staging_dir))

    def list(self) -> list[JobRecord]:
        return self.registry.list()

    def get(self, job_id: str) -> JobRecord:
        return self.registry.get(job_id)

    def progress(self, job_id: str) -> dict | None:
        """The live staging progress of *job_id* (bytes, files, rate, eta_s), from memory; None when
        this process is not staging it (:class:`~.progress.StagingTracker`, never in the registry)."""
        with self._lock:
            run = self._runs.get(job_id)
        return run.progress.snapshot() if run is not None else None

    def logs(self, job_id: str, offset: int = 0) -> tuple[str, int]:
        """The job's log from byte *offset* (at most 4 MiB, whole UTF-8 characters) and the
        offset after it. A job whose results are held for review logs no script output: its
        log ends with where the output is (:meth:`~.review.HeldResults.log_note`: held,
        approved, rejected), and the output follows once the approved results are opened."""
        self.get(job_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidRequest(f"offset must be a non-negative integer, not {offset!r}")
        held = review_mod.HeldResults(self.job_dir(job_id))
        if held.exists():
            try:
                with self._review_lock:
                    held.note_log()
            except (OSError, ValueError, XnatHpcError) as e:
                log.warning("job %s: the held job's log note was not written: %s", job_id, e)
        try:
            with open_regular(self.job_dir(job_id) / review_mod.LOG_FILE, what=f"the log of job {job_id}") as f:
                f.seek(offset)
                data = f.read(4 << 20)
        except NotFound:
            return "", offset
        cut = len(data)
        while cut > 0 and (data[cut - 1] & 0xC0) == 0x80:  # do not split a UTF-8 character
            cut -= 1
        if cut and data[cut - 1] >= 0xC0:
            cut -= 1
        if cut == 0 and data:
            cut = len(data)
        return data[:cut].decode("utf-8", errors="replace"), offset + cut

    def cancel(self, job_id: str) -> JobRecord:
        rec = self.get(job_id)
        if rec.terminal:
            return rec
        rec = self.registry.update(job_id, state=JobState.CANCELLED, message="cancelled by user")
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None:
            run.cancel()
        scancel(rec.slurm_job_id)
        self.audit("cancel", detail=f"job {job_id} slurm {rec.slurm_job_id or '-'} "
                                    f"(was {rec.message[:80]})")
        return rec

    def wait(self, job_id: str, timeout: float | None = None) -> JobRecord:
        """Block until the job is terminal and its clean-up is finished (TimeoutError otherwise)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            rec = self.get(job_id)
            with self._lock:
                run = self._runs.get(job_id)
            if rec.terminal:
                if run is not None:
                    run.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
                    if run.thread.is_alive():
                        raise TimeoutError(f"job {job_id} is {rec.state.value} but still cleaning up")
                return self.get(job_id)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {rec.state.value} after {timeout} s")
            time.sleep(0.2)

    def results(self, job_id: str) -> dict:
        rec = self.get(job_id)
        if rec.state != JobState.DONE:
            raise Conflict(f"job {job_id} is {rec.state.value}, not done: no results"
                           + (f" ({rec.message[:200]})" if rec.message else ""), item=job_id)
        self._open_held(job_id)
        out = self.job_dir(job_id) / "results"
        if not out.is_dir():
            raise NotFound(f"the results of job {job_id} were removed from {out}", item=job_id)
        files = []
        for p in sorted(out.rglob("*")):
            if p.is_file() and not p.is_symlink():
                files.append({"name": p.relative_to(out).as_posix(), "size": p.stat().st_size})
        prov_path = self.job_dir(job_id) / "provenance.json"
        provenance = json.loads(prov_path.read_text()) if prov_path.exists() else {}
        return {"path": str(out), "files": files, "provenance": provenance}

    def publish(self, job_id: str, project: str | None = None) -> dict:
        """Publish a finished job's results to XNAT with the hub's signed RO-Crate
        (:mod:`.publish`): ``{"resource", "url", "state", "files"}``. Again for a published
        job: its publication, unchanged."""
        from ..results_crate import FileEntry
        from . import publish as pub

        rec = self.get(job_id)
        results = self.results(job_id)  # done, held results approved and opened
        done = pub.load_state(self.job_dir(job_id))
        if done is not None and done.get("state") == "published":
            return done
        if self.review_client is None:
            raise InvalidRequest("publishing needs the hub's signature: this server was not started by a hub "
                                 "(no JUPYTERHUB_API_URL)")
        manifest = self._connection().load_dataset(rec.dataset, rec.dataset_version)
        target = pub.choose_target((f.name for f in manifest.files), project)
        out = Path(results["path"])
        # what the job returned, as decrypted (the upload hashes each file again as it sends it)
        files = sorted((FileEntry(f["name"], int(f["size"]), f["sha256"])
                        for f in results["provenance"].get("results") or () if f.get("sha256")),
                       key=lambda f: f.path)
        if not files:
            raise Conflict(f"job {job_id} has no result files to publish", item=job_id)
        signed = self.review_client.sign_publication(job_id, {
            "target": target.to_json(), "files": [dataclasses.asdict(f) | {"name": f.path} for f in files],
            "run": pub.run_claims(results["provenance"])})
        crate, signature = signed["crate"].encode(), signed["signature"]
        writer = pub.XnatResourceWriter(self._connection().client, pub.resource_path(target, job_id),
                                        target.project)
        try:
            outcome = pub.upload(writer, out, files, crate, signature)
        except XnatHpcError as e:
            self._report_publication(job_id, "failed", e.message)
            raise
        except OSError as e:
            self._report_publication(job_id, "failed", f"{e.filename}: {e.strerror}")
            raise Conflict(f"a result file of job {job_id} could not be read: {e.filename}: {e.strerror}") from None
        self._report_publication(job_id, "published")
        state = {"state": "published", "resource": signed["resource"], "url": signed["url"],
                 "files": len(files), "bytes": sum(f.size for f in files), "outcome": outcome,
                 "allowed_signers": signed["allowed_signers"]}
        create_private_file(self.job_dir(job_id) / pub.STATE_FILE, json.dumps(state, indent=1).encode(), replace=True)
        return state

    def _report_publication(self, job_id: str, state: str, message: str = "") -> None:
        try:
            self.review_client.report_publication(job_id, state, message)
        except XnatHpcError as e:  # the upload's outcome stands; the hub's trail lacks its end
            log.warning("job %s: the hub was not told the publication %s: %s", job_id, state, e.message)

    def active(self) -> bool:
        return any(not rec.terminal for rec, _ in self.registry.active())

    def close(self) -> None:
        """Cancel jobs still followed by this process, wait for their clean-up, remove bundles."""
        if self._closed:
            return
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if not self.get(run.id).terminal:
                self.registry.update(run.id, state=JobState.CANCELLED,
                                     message="cancelled: the server shut down")
            run.cancel()
        for run in runs:
            run.thread.join(60)
        self.bundles.close()
        self._closed = True
        self.registry.close()
