"""What revoking a user's access to an XNAT project does on the hub, and on Slurm.

When an owner takes a user out of a project (:mod:`hub_ext.owner_access`, or in
XNAT's own UI and then found by :class:`RevocationWatch`), XNAT already refuses
the user's alias token for that project. What the hub adds:

* **running servers** whose scope holds the project are stopped
  (``c.OwnerAccess.on_revoke = "stop"``, the default) or left running
  (``"narrow"``): a server left running keeps no data of the project it could not
  already read, and every new operation on the project (browse, download, dataset,
  staging, submission) is refused by the server within its permission cache's TTL
  (:data:`xnat_bridge.permissions.DEFAULT_TTL_S`, 60 s) because the server asks XNAT
  again with the user's token; files the user already copied into the workspace stay;
* **offload jobs** on the project's data, found in the hub's audit trail (``submit``
  events: user, Slurm job id, dataset items, manifest digest), are cancelled when Slurm
  still lists them as the user's own pending or running job (``scancel``; the job's node
  guard wipes its node-local directory), and their encrypted bundles are removed from
  the user's staging directory;
* every effect is audited (``server_stopped``, ``cancel``, ``revoke``) with its reason,
  and told to the user on the hub's home and spawn pages for a week
  (:func:`user_notice`, for ``c.JupyterHub.template_vars``; kept in the hub process's
  memory, so a hub restart forgets them; the audit trail keeps everything).

The decisions (which servers, which jobs, which bundle files) are pure functions
here; the effects are the few functions at the end (Slurm commands through
:mod:`xnat_bridge.procs`, file removal that follows no link). The hub stops a server
the JupyterHub way, through a handler's ``stop_single_user`` or the app's
equivalent, handed in as a callable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import json
import logging
import os
import pwd
import re
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from traitlets import Enum, Float, Unicode
from traitlets.config import LoggingConfigurable

from xnat_bridge import procs
from xnat_bridge.errors import CommandFailed

log = logging.getLogger(__name__)

#: what the ``on_revoke`` setting may say
ON_REVOKE = ("stop", "narrow")
#: Slurm states of a job that still holds (or will hold) the dataset
ACTIVE_STATES = ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "RESIZING", "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED")
#: a per-user directory name (the staging area's rule, :mod:`xnat_bridge.staging.area`)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")
_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}$")
_SLURM_ID_RE = re.compile(r"\bslurm (\d+)\b")
#: the files of one bundle in ``<staging>/<user>/`` (:mod:`xnat_bridge.staging.area`)
BUNDLE_SUFFIXES = (".tar.age", ".tar.age.partial", ".json")


class OwnerAccess(LoggingConfigurable):
    """Settings of the owners' access page and of what a revocation does."""

    on_revoke = Enum(
        ON_REVOKE, default_value="stop",
        help="""What happens to a running server whose scope holds a project its user lost
        access to. ``"stop"`` (default): the hub stops it at once and audits
        ``server_stopped``. ``"narrow"``: it keeps running; every new operation on that
        project (browse, download, dataset, staging, submission) is refused by the server
        within its XNAT permission cache's TTL (60 s), since the server asks XNAT again with
        the user's own token; files already copied into the workspace stay. Warning: a
        server that mounts the archive (local and Kubernetes backends) keeps its read-only
        mount of the project until it stops, so "narrow" does not end file access there; use
        it where servers read XNAT through REST only (Slurm backend). Offload jobs on the
        project's data are cancelled and their bundles wiped in both modes.""",
    ).tag(config=True)

    recheck_interval = Float(
        300.0,
        help="""Seconds between the hub's re-checks of every running server's scope against
        XNAT (with the user's own token), catching revocations done in XNAT's UI rather than
        on the hub's access page; each loss is handled like a revocation from the page.
        0 turns the re-check off. The loop starts with the first request to one of the hub's
        XNAT pages (owner page, access page) after the hub starts.""",
    ).tag(config=True)

    staging_dir = Unicode(
        "",
        help="""The offload staging area's root, where revoked jobs' encrypted bundles are
        removed (``<staging_dir>/<user>/``). Empty (default): the ``offload.staging_dir`` of
        the profiles file the user's spawner reads. Example: ``/shared/xnat-hpc/staging``.""",
    ).tag(config=True)


# -- pure decisions ---------------------------------------------------------------------

def scope_projects(user_options: Mapping | None) -> set[str]:
    """The XNAT projects a server's ``user_options`` scope it to (pure): the form's or REST's
    ``projects`` (a name, a list, or a mapping of project → narrowing), or an XNAT launch's
    ``projectId``. Unknown shapes give the empty set."""
    options = dict(user_options or {})
    found: set[str] = set()
    if isinstance(options.get("projectId"), str):
        found.add(options["projectId"])
    projects = options.get("projects")
    if isinstance(projects, str):
        found.add(projects)
    elif isinstance(projects, Mapping):
        found.update(str(p) for p in projects)
    elif isinstance(projects, (list, tuple)):
        found.update(str(p) for p in projects if isinstance(p, str))
    return {p.strip() for p in found if p.strip()}


@dataclasses.dataclass(frozen=True)
class ServerView:
    """What the decision needs of one of a user's servers."""

    name: str
    projects: frozenset[str]
    active: bool = True
    pending: str | None = None


def servers_hit(servers: Iterable[ServerView], project: str) -> list[ServerView]:
    """The active servers whose scope holds *project* (pure)."""
    return [s for s in servers if s.active and project in s.projects]


@dataclasses.dataclass(frozen=True)
class SubmittedJob:
    """An offload job as the hub's audit trail tells it (``submit`` events)."""

    user: str
    slurm_id: str
    projects: frozenset[str]
    manifest_sha256: str = ""
    server: str = ""
    time: str = ""


def _norm_sha(value) -> str:
    text = str(value or "").strip().lower()
    return text[len("sha256:"):] if text.startswith("sha256:") else text


def submitted_job(event: Mapping) -> SubmittedJob | None:
    """The job an audit *event* records, if it is an allowed ``submit`` with a Slurm id (pure):
    ``extra.slurm_job_id``, else ``slurm N`` in the detail. The projects: every part of each
    item (``PROJECT/SUBJECT/...``)."""
    if event.get("action") != "submit" or event.get("outcome", "allowed") != "allowed":
        return None
    extra = event.get("extra") if isinstance(event.get("extra"), Mapping) else {}
    slurm_id = str(extra.get("slurm_job_id") or "").strip()
    if not slurm_id:
        match = _SLURM_ID_RE.search(str(event.get("detail") or ""))
        slurm_id = match.group(1) if match else ""
    if not slurm_id.isdigit() or not event.get("user"):
        return None
    # every part of every item: the project comes first in items (PROJECT/SUBJECT/...), but
    # events written before that order was fixed may name it later; a revocation errs on the
    # side of the project (it only ever touches the revoked user's own jobs)
    projects = frozenset(part for i in event.get("items") or () for part in str(i).split("/") if part)
    hashes = event.get("hashes") or {}
    return SubmittedJob(str(event["user"]), slurm_id, projects,
                        _norm_sha(hashes.get("manifest") if isinstance(hashes, Mapping) else ""),
                        str(event.get("server") or ""), str(event.get("time") or ""))


def jobs_hit(events: Iterable[Mapping], user: str, project: str) -> list[SubmittedJob]:
    """*user*'s offload jobs whose dataset holds files of *project*, one per Slurm id, in the
    order of the trail (pure). Only events the hub stamped with *user* count."""
    seen: dict[str, SubmittedJob] = {}
    for event in events:
        job = submitted_job(event)
        if job is not None and job.user == user and project in job.projects and job.slurm_id not in seen:
            seen[job.slurm_id] = job
    return list(seen.values())


@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """One line of ``squeue -h -o '%i|%u|%T'``."""

    slurm_id: str
    user: str
    state: str


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """``squeue -h -o '%i|%u|%T'`` output → jobs by id (pure)."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split("|")]
        if len(parts) == 3 and parts[0]:
            jobs[parts[0]] = SlurmJob(*parts)
    return jobs


def cancel_decision(job: SubmittedJob, listed: SlurmJob | None, unix_user: str) -> str:
    """Whether to ``scancel`` *job* given what Slurm lists now (pure): ``"cancel"``, or why not
    (``"ended"``, ``"not the user's job"``). A job id that an event names but Slurm runs for
    another account is never touched: events come from the user's own server."""
    if listed is None or listed.state.split()[0] not in ACTIVE_STATES:
        return "ended"
    if listed.user != unix_user:
        return "not the user's job"
    return "cancel"


def bundle_files_to_remove(sidecars: Mapping[str, Mapping], manifests: set[str]) -> list[str]:
    """The file names of the bundles whose sidecar (``<id>.json`` → its JSON) records one of
    *manifests* (sha256 digests), every file of each bundle (pure)."""
    wanted = {_norm_sha(m) for m in manifests if m}
    names: list[str] = []
    for bundle_id, doc in sorted(sidecars.items()):
        if _BUNDLE_ID_RE.match(bundle_id) and _norm_sha(doc.get("manifest_sha256")) in wanted:
            names.extend(bundle_id + suffix for suffix in BUNDLE_SUFFIXES)
    return names


# -- effects ------------------------------------------------------------------------------

async def squeue(ids: Iterable[str]) -> dict[str, SlurmJob]:
    """What Slurm lists now for *ids* (jobs it forgot are absent)."""
    ids = sorted({i for i in ids if i.isdigit()})
    if not ids:
        return {}
    result = await procs.arun(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%u|%T"], timeout=30,
                              check=False)
    return parse_squeue(result.stdout)


async def cancel_jobs(jobs: list[SubmittedJob], unix_user: str) -> list[tuple[SubmittedJob, str]]:
    """``scancel`` each of *jobs* Slurm still runs for *unix_user*; ``(job, outcome)`` for each:
    ``cancelled``, ``ended``, ``not the user's job`` or ``scancel failed: …``."""
    listed = await squeue(j.slurm_id for j in jobs)
    outcomes = []
    for job in jobs:
        decision = cancel_decision(job, listed.get(job.slurm_id), unix_user)
        if decision == "cancel":
            try:
                await procs.arun(["scancel", job.slurm_id], timeout=30)
                decision = "cancelled"
            except CommandFailed as exc:
                decision = f"scancel failed: {exc.message}"[:300]
        outcomes.append((job, decision))
    return outcomes


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def wipe_bundles(staging_root: str, user: str, manifests: set[str]) -> list[str]:
    """Remove from ``<staging_root>/<user>/`` every bundle staged for one of *manifests*
    (blocking: run it in a thread); the names removed.

    Nothing is followed: the user's directory is opened with ``O_NOFOLLOW`` below a
    descriptor of the root and must be a directory owned by the user's account (or by the
    hub's, where it has none); sidecars are read and files unlinked relative to that
    descriptor, so a link placed in the directory is at most removed itself."""
    if not staging_root or not manifests or not _NAME_RE.match(user):
        return []
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        root_fd = os.open(staging_root, flags)
    except OSError as exc:
        log.warning("revocation: staging area %s unreadable: %s", staging_root, exc)
        return []
    try:
        try:
            ufd = os.open(user, flags | os.O_NOFOLLOW, dir_fd=root_fd)
        except OSError:
            return []  # none, or a link / not a directory: nothing of ours to remove there
        try:
            st = os.fstat(ufd)
            uid = _uid_of(user)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid not in ({uid} if uid is not None else {os.geteuid()}):
                log.warning("revocation: %s/%s is not %s's own directory; left alone", staging_root, user, user)
                return []
            sidecars: dict[str, dict] = {}
            for name in os.listdir(ufd):
                stem = name[:-len(".json")]
                if not (name.endswith(".json") and _BUNDLE_ID_RE.match(stem)):
                    continue
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=ufd)
                except OSError:
                    continue
                with os.fdopen(fd, "rb") as f:
                    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                        continue
                    try:
                        doc = json.loads(f.read(1 << 20))
                    except ValueError:
                        continue
                if isinstance(doc, dict):
                    sidecars[stem] = doc
            removed = []
            for name in bundle_files_to_remove(sidecars, manifests):
                try:
                    os.unlink(name, dir_fd=ufd)
                    removed.append(name)
                except FileNotFoundError:
                    pass
            return removed
        finally:
            os.close(ufd)
    finally:
        os.close(root_fd)


# -- what the user is told ---------------------------------------------------------------

#: how long the hub's pages show a user what a revocation did to their servers and jobs
NOTICE_SECONDS = 7 * 24 * 3600
_NOTICES: dict[str, list[tuple[float, str]]] = {}
_NOTICES_LOCK = threading.Lock()


def add_notice(user: str, text: str, now: float | None = None) -> None:
    """Remember *text* for *user*'s hub pages (this hub process only; the audit trail keeps it)."""
    with _NOTICES_LOCK:
        _NOTICES.setdefault(user, []).append((time.time() if now is None else now, text))
        del _NOTICES[user][:-5]


def notices_html(notices: list[tuple[float, str]], now: float) -> str:
    """The notices younger than :data:`NOTICE_SECONDS`, newest first, escaped (pure)."""
    fresh = [(t, text) for t, text in notices if now - t < NOTICE_SECONDS]
    if not fresh:
        return ""
    lines = "<br>".join(
        html.escape(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t))}: {text}")
        for t, text in reversed(fresh))
    return f'<span class="xnat-hpc-notice" role="status">{lines}</span>'


def user_notice(user) -> str:
    """For ``c.JupyterHub.template_vars`` (``announcement_home``, ``announcement_spawn``): what
    revocations did to the visitor's servers and jobs lately, or "" (JupyterHub passes the
    current user, None on pages before login)."""
    name = getattr(user, "name", None)
    if not name:
        return ""
    with _NOTICES_LOCK:
        notices = list(_NOTICES.get(name, ()))
    return notices_html(notices, time.time())


#: ``audit(user, action, outcome, items=..., detail=...)`` (:meth:`HubAuditLog.record`)
Audit = Callable[..., Awaitable[None]]
#: ``stop(server_name)`` stops one of the revoked user's servers
StopServer = Callable[[str], Awaitable[None]]


@dataclasses.dataclass
class RevocationReport:
    """What one revocation did, for the owner's page and the tests."""

    stopped: list[str] = dataclasses.field(default_factory=list)
    left_running: list[str] = dataclasses.field(default_factory=list)
    jobs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (slurm id, outcome)
    wiped: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        parts = []
        if self.stopped:
            parts.append(f"servers stopped: {', '.join(n or '(default)' for n in self.stopped)}")
        if self.left_running:
            parts.append(f"servers left running, new operations refused within 60 s: "
                         f"{', '.join(n or '(default)' for n in self.left_running)}")
        active = [(i, o) for i, o in self.jobs if o != "ended"]
        if active:
            parts.append("Slurm jobs: " + ", ".join(f"{i} {o}" for i, o in active))
        if self.wiped:
            parts.append(f"{len([n for n in self.wiped if n.endswith('.json')])} staged bundle(s) removed")
        if self.problems:
            parts.append("problems: " + "; ".join(self.problems))
        return "; ".join(parts) or "no running server or job of theirs used the project"


async def apply_revocation(*, user: str, project: str, reason: str, servers: list[ServerView],
                           events: list[Mapping], settings: OwnerAccess, staging_root: str,
                           stop: StopServer, audit: Audit) -> RevocationReport:
    """Carry out what *user* losing *project* means (module docstring); everything audited
    with *reason* (e.g. ``"access to CARDIO_ECG revoked by dave"``)."""
    report = RevocationReport()
    # jobs first: a server being stopped would cancel its own jobs, but a job must end even
    # when its server is already gone or its stop hangs
    jobs = jobs_hit(events, user, project)
    if jobs:
        try:
            outcomes = await cancel_jobs(jobs, user)
        except CommandFailed as exc:
            outcomes = [(job, f"squeue failed: {exc.message}"[:300]) for job in jobs]
        for job, outcome in outcomes:
            report.jobs.append((job.slurm_id, outcome))
            if outcome == "ended":
                continue  # finished before: nothing to stop (its bundle is still removed below)
            if outcome == "cancelled":
                add_notice(user, f"your offload job (Slurm job {job.slurm_id}) was cancelled and its "
                                 f"staged data removed: {reason}.")
                await audit(user, "cancel", "allowed", items=[project],
                            detail=f"{reason}; Slurm job {job.slurm_id} cancelled",
                            extra={"slurm_job_id": job.slurm_id})
            else:
                report.problems.append(f"Slurm job {job.slurm_id}: {outcome}")
                await audit(user, "cancel", "failed", items=[project],
                            detail=f"{reason}; Slurm job {job.slurm_id}: {outcome}")
        manifests = {j.manifest_sha256 for j in jobs if j.manifest_sha256}
        report.wiped = await asyncio.to_thread(wipe_bundles, staging_root, user, manifests)
        if report.wiped:
            await audit(user, "cancel", "allowed", items=[project],
                        detail=f"{reason}; staged bundles removed: "
                               f"{', '.join(n[:-5] for n in report.wiped if n.endswith('.json'))}")
    for server in servers_hit(servers, project):
        if settings.on_revoke == "narrow":
            report.left_running.append(server.name)
            add_notice(user, f"{reason}: your server {server.name or '(default)'} keeps running, but "
                             f"refuses new work on {project} within a minute.")
            await audit(user, "revoke", "allowed", items=[project],
                        detail=f"{reason}; server {server.name or '(default)'} left running: new "
                               f"operations on {project} refused within the permission TTL")
            continue
        if server.pending:
            report.problems.append(f"server {server.name or '(default)'} is {server.pending}; not stopped")
            await audit(user, "server_stopped", "failed", items=[project],
                        detail=f"{reason}; server {server.name or '(default)'} was {server.pending}")
            continue
        try:
            await stop(server.name)
        except Exception as exc:  # noqa: BLE001 - reported and audited; the other effects go on
            log.warning("revocation: stopping %s/%s failed: %r", user, server.name, exc)
            report.problems.append(f"stopping server {server.name or '(default)'} failed: {exc}")
            await audit(user, "server_stopped", "failed", items=[project],
                        detail=f"{reason}; stopping server {server.name or '(default)'} failed")
            continue
        report.stopped.append(server.name)
        add_notice(user, f"your server {server.name or '(default)'} was stopped: {reason}. Start a new "
                         f"one without {project}, or ask an owner of {project} for access.")
        await audit(user, "server_stopped", "allowed", items=[project],
                    detail=f"{reason}; server {server.name or '(default)'} stopped")
    return report
