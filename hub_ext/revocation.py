"""What revoking a user's access to an XNAT project does on the hub, and on Slurm.

When an owner takes a user out of a project (:mod:`xnat_hpc_governance.owner_access`, or in
XNAT's own UI and then found by :class:`RevocationWatch`), XNAT already refuses
the user's alias token for that project. What the hub adds:

* **running servers** whose scope holds the project are stopped
  (``c.OwnerAccess.on_revoke = "stop"``, the default) or left running
  (``"narrow"``): a server left running keeps no data of the project it could not
  already read, and every new operation on the project (browse, download, dataset,
  staging, submission) is refused by the server within its permission cache's TTL
  (:data:`xnat_bridge.permissions.DEFAULT_TTL_S`, 60 s) because the server asks XNAT
  again with the user's token; files the user already copied into the workspace stay;
* **offload jobs** of servers whose scope held the project, found in the hub's job ledger
  (:mod:`hub_ext.review_store`: user, server, the scope as the hub decided it, Slurm job id,
  manifest digest — never a server's claim on the trail), are cancelled when Slurm
  still lists them as the user's own pending or running job (``scancel``; the job's node
  guard wipes its node-local directory), and their encrypted bundles are removed from
  the user's staging directory;
* every effect is audited (``server_stopped``, ``cancel``, ``revoke``) with its reason,
  and told to the user on the hub's home and spawn pages for a week
  (:func:`user_notice`, for ``c.JupyterHub.template_vars``; kept on the notice board of the
  ledger's store, which the governance service writes and the hub reads, so a restart of either
  keeps them; the audit trail keeps everything).

The decisions (which servers, which jobs, which bundle files) are pure functions
here; the effects are the few functions at the end (Slurm commands through
:mod:`xnat_bridge.procs`, file removal that follows no link). A server is stopped by a
callable handed in: the hub's REST API as the governance service
(:meth:`hub_ext.hub_rest.HubRestClient.stop_server`), from the access page and the re-check alike.

A revocation can neither be blocked nor hold up others: the user can write their staging
directory, so nothing there is opened that could block or lead elsewhere (every open
through :mod:`xnat_bridge.private`: ``O_NOFOLLOW | O_NONBLOCK``, a regular-file check
before and after opening; a FIFO planted under a sidecar's name is skipped, never read);
and each user's effects run within ``c.OwnerAccess.revoke_timeout`` seconds
(:func:`within_bound`), the rest going on in the background and reported as pending.
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
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Protocol

from traitlets import Enum, Float, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from xnat_bridge import slurm
from xnat_bridge.errors import CommandFailed, NotFound, XnatHpcError
from xnat_bridge.private import open_directory, read_regular

log = logging.getLogger(__name__)

#: what the ``on_revoke`` setting may say
ON_REVOKE = ("stop", "narrow")
#: Slurm states of a job that still holds (or will hold) the dataset: the adapter's one list
ACTIVE_STATES = slurm.ACTIVE_STATES
#: a per-user directory name (the staging area's rule, :mod:`xnat_bridge.staging.area`)
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._@+\-]{0,127}$")
_BUNDLE_ID_RE = re.compile(r"^[0-9a-f]{12}-[0-9a-f]{12}$")
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
        within its XNAT permission cache's TTL (:attr:`permission_ttl`, 60 s), since the server asks XNAT again with
        the user's own token; files already copied into the workspace stay. Warning: a
        server that mounts the archive (local and Kubernetes backends) keeps its read-only
        mount of the project until it stops, so "narrow" does not end file access there; use
        it where servers read XNAT through REST only (Slurm backend). Offload jobs on the
        project's data are cancelled and their bundles wiped in both modes.""",
    ).tag(config=True)

    permission_ttl = Float(
        60.0,
        help="""Seconds a user's server trusts XNAT's answer about which projects the user may
        read before it asks again (handed to servers as ``XNAT_HPC_PERMISSION_TTL``): the bound
        on how long a server left running by a revocation (``on_revoke = "narrow"``) or by a
        loss in XNAT's own UI may still start new work on the lost project. Shorter means more
        requests to XNAT (two per user per period, only while the server is used). Example:
        ``c.OwnerAccess.permission_ttl = 30``. Above 0, at most 86400.""",
    ).tag(config=True)

    @validate("permission_ttl")
    def _check_ttl(self, proposal):
        if not 0 < proposal["value"] <= 86400:
            raise TraitError(f"OwnerAccess.permission_ttl must be above 0 and at most 86400, not {proposal['value']}")
        return proposal["value"]

    recheck_interval = Float(
        300.0,
        help="""Seconds between the hub's re-checks of every running server's scope against
        XNAT (with the user's own token), catching revocations done in XNAT's UI rather than
        on the hub's access page; each loss is handled like a revocation from the page.
        0 turns the re-check off. One loop per hub process; it starts with the first server
        start, audit event or request to one of the hub's XNAT pages (owner page, access page)
        after the hub starts. Example: ``c.OwnerAccess.recheck_interval = 120``.""",
    ).tag(config=True)

    revoke_timeout = Float(
        5.0,
        help="""Seconds that one user's revocation effects (cancelling their Slurm jobs, removing
        their staged bundles, stopping their servers) may hold up the owner's request or the
        re-check's round. What is not done by then goes on in the background and the owner's
        page lists it as still pending; the audit trail records each effect when it happens.
        One user whose jobs or servers do not answer therefore delays neither the owner nor
        the other users by more than this. Example: ``c.OwnerAccess.revoke_timeout = 10``.
        Must be above 0.""",
    ).tag(config=True)

    @validate("revoke_timeout")
    def _positive_timeout(self, proposal):
        if proposal["value"] <= 0:
            raise TraitError(f"c.OwnerAccess.revoke_timeout must be more than 0 seconds, not "
                             f"{proposal['value']}; e.g. 5")
        return proposal["value"]

    staging_dir = Unicode(
        "",
        help="""The offload staging area's root, where revoked jobs' encrypted bundles are
        removed (``<staging_dir>/<user>/``). Empty (default): the ``offload.staging_dir`` of
        the profiles file the user's spawner reads. Example: ``/shared/xnat-hpc/staging``.""",
    ).tag(config=True)


# -- pure decisions ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ServerView:
    """What the decision needs of one of a user's servers."""

    name: str
    projects: frozenset[str]
    active: bool = True
    pending: str | None = None
    #: when the hub started it (its spawn record): a restarted server is another server
    started: str = ""


def servers_hit(servers: Iterable[ServerView], project: str) -> list[ServerView]:
    """The active servers whose scope holds *project* (pure)."""
    return [s for s in servers if s.active and project in s.projects]


@dataclasses.dataclass(frozen=True)
class SubmittedJob:
    """An offload job as the hub's job ledger records it (:mod:`hub_ext.review_store`)."""

    user: str
    slurm_id: str
    projects: frozenset[str]
    manifest_sha256: str = ""
    server: str = ""
    time: str = ""
    job: str = ""


def ledger_jobs_hit(rows: Iterable[Mapping], user: str, project: str) -> list[SubmittedJob]:
    """*user*'s ledger jobs whose projects (the submitting server's scope as the hub decided
    it) hold *project*, oldest first (pure). A job without a Slurm id yet (still staging) is
    kept: its bundle is removed; only jobs with an id are asked of Slurm."""
    out = []
    for row in sorted(rows, key=lambda r: r.get("created", "")):
        if row.get("user") != user or project not in (row.get("projects") or ()):
            continue
        slurm_id = str(row.get("slurm_job_id") or "")
        out.append(SubmittedJob(user, slurm_id if slurm_id.isdigit() else "", frozenset(row["projects"]),
                                str(row.get("manifest_sha256") or ""), str(row.get("server") or ""),
                                str(row.get("created") or ""), str(row.get("job") or "")))
    return out


#: one job as Slurm lists it, and the batched ``squeue`` parser: the adapter's (:mod:`xnat_bridge.slurm`)
SlurmJob = slurm.SlurmJob
parse_squeue = slurm.parse_squeue


def cancel_decision(job: SubmittedJob, listed: SlurmJob | None, unix_user: str) -> str:
    """Whether to ``scancel`` *job* given what Slurm lists now (pure): ``"cancel"``, or why not
    (``"ended"``, ``"not the user's job"``). A job id the ledger has (as the server reported
    it) but Slurm runs for another account is never touched. A state Slurm lists that the
    adapter does not know is cancelled: a revocation errs on the side of the project."""
    if listed is None or slurm.is_terminal(listed.state):
        return "ended"
    if listed.user != unix_user:
        return "not the user's job"
    return "cancel"


def _norm_sha(value) -> str:
    text = str(value or "").strip().lower()
    return text[len("sha256:"):] if text.startswith("sha256:") else text


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
    """What Slurm lists now for *ids*, in one ``squeue`` call (jobs it forgot are absent);
    :class:`CommandFailed` when Slurm cannot say (controller down, ...)."""
    return await slurm.astatus(ids, timeout=30)


async def cancel_jobs(jobs: list[SubmittedJob], unix_user: str) -> list[tuple[SubmittedJob, str]]:
    """``scancel`` each of *jobs* Slurm still runs for *unix_user*; ``(job, outcome)`` for each:
    ``cancelled``, ``ended``, ``not the user's job`` or ``scancel failed: …``."""
    listed = await squeue(j.slurm_id for j in jobs)
    outcomes = []
    for job in jobs:
        decision = cancel_decision(job, listed.get(job.slurm_id), unix_user)
        if decision == "cancel":
            try:
                await slurm.acancel([job.slurm_id], timeout=30)
                decision = "cancelled"
            except XnatHpcError as exc:  # CommandFailed, or an id that is no Slurm job id
                decision = f"scancel failed: {exc.message}"[:300]
        outcomes.append((job, decision))
    return outcomes


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def wipe_bundles(staging_root: str, user: str, manifests: set[str], account: str | None = None) -> list[str]:
    """Remove from ``<staging_root>/<user>/`` every bundle staged for one of *manifests*
    (blocking: run it in a thread); the names removed. *account*: the user's Unix account
    (``UnixAccounts.name_template``; default *user*).

    The user can write that directory, so nothing in it is trusted, and nothing blocks or
    is followed (:mod:`xnat_bridge.private`): the directory is opened with ``O_NOFOLLOW``
    below a descriptor of the root and must be a directory owned by the user's account (or
    by the hub's, where it has none); each sidecar is ``lstat``-ed, opened with
    ``O_NOFOLLOW | O_NONBLOCK`` and read only if it is a regular file (a FIFO, socket,
    device or link planted under a sidecar's name is skipped, never opened for reading);
    files are unlinked relative to the directory's descriptor, so a link is at most removed
    itself."""
    if not staging_root or not manifests or not _NAME_RE.match(user):
        return []
    try:
        root_fd = os.open(staging_root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        log.warning("revocation: staging area %s unreadable: %s", staging_root, exc)
        return []
    try:
        uid = _uid_of(account or user)
        try:
            ufd = open_directory(user, dir_fd=root_fd, owner_uid=os.geteuid() if uid is None else uid,
                                 what=f"{user}'s staging directory")
        except NotFound:
            return []
        except XnatHpcError as exc:
            log.warning("revocation: %s; nothing removed there", exc.message)
            return []
        except OSError as exc:
            log.warning("revocation: %s/%s unreadable (%s); nothing removed there", staging_root, user, exc)
            return []
        try:
            sidecars: dict[str, dict] = {}
            for name in os.listdir(ufd):
                stem = name[:-len(".json")]
                if not (name.endswith(".json") and _BUNDLE_ID_RE.match(stem)):
                    continue
                try:
                    doc = json.loads(read_regular(name, dir_fd=ufd, max_bytes=1 << 20,
                                                  what=f"{user}'s bundle sidecar"))
                except NotFound:
                    continue
                except XnatHpcError as exc:
                    log.warning("revocation: %s; skipped", exc.message)
                    continue
                except (OSError, ValueError) as exc:
                    log.warning("revocation: %s's bundle sidecar %s unreadable (%s); skipped", user, name, exc)
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
                except OSError as exc:  # a directory under a bundle's name, ...: left, said
                    log.warning("revocation: %s's %s not removed: %s", user, name, exc)
            return removed
        finally:
            os.close(ufd)
    finally:
        os.close(root_fd)


# -- what the user is told ---------------------------------------------------------------

#: how long the hub's pages show a user what a revocation did to their servers and jobs, or
#: why a start of theirs was refused
NOTICE_SECONDS = 7 * 24 * 3600


class NoticeBoard(Protocol):
    """Where notices are kept (:class:`hub_ext.review_store.ReviewStore`: the governance
    service's revocations and the hub's refused starts write it, the hub's pages read it)."""

    def add_notice(self, user: str, text: str, now: float | None = None, *, key: str = "") -> None: ...

    def drop_notice(self, user: str, key: str) -> None: ...

    def notices(self, user: str) -> list[tuple[float, str]]: ...


def notices_html(notices: list[tuple[float, str]], now: float) -> str:
    """The notices younger than :data:`NOTICE_SECONDS`, newest first, escaped (pure)."""
    fresh = [(t, text) for t, text in notices if now - t < NOTICE_SECONDS]
    if not fresh:
        return ""
    lines = "<br>".join(
        html.escape(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t))}: {text}")
        for t, text in reversed(fresh))
    return f'<span class="xnat-hpc-notice" role="status">{lines}</span>'


def notice_board(config) -> NoticeBoard:
    """The hub's notice board as its configuration (``c.ReviewStore.path``) places it."""
    from .review_store import ReviewStore

    return ReviewStore(config=config)


def user_notice(user) -> str:
    """For ``c.JupyterHub.template_vars`` (``announcement_home``, ``announcement_spawn``): what
    revocations did to the visitor's servers and jobs lately, and why starts of theirs were
    refused (:meth:`spawner.mixin.XnatScopedSpawner.checked_plan`), or "" (JupyterHub passes the
    current user, None on pages before login). Read from the notice board of the hub's
    configuration (the user's ``settings["config"]``): one indexed read of a few rows; a board
    that cannot be read shows nothing (logged)."""
    name = getattr(user, "name", None)
    if not name:
        return ""
    try:
        notices = notice_board((getattr(user, "settings", None) or {}).get("config")).notices(name)
    except Exception as exc:  # noqa: BLE001 - a page must render without its notices
        log.warning("notices of %s not read: %r", name, exc)
        return ""
    return notices_html(notices, time.time())


#: ``audit(user, action, outcome, items=..., detail=...)`` (:meth:`HubAuditLog.record`)
Audit = Callable[..., Awaitable[None]]
#: ``stop(server_name)`` stops one of the revoked user's servers
StopServer = Callable[[str], Awaitable[None]]


@dataclasses.dataclass
class RevocationReport:
    """What one revocation did, for the owner's page and the tests. Filled as the effects
    happen: :attr:`pending` names those begun and not finished (what a report returned at
    the time bound, :func:`within_bound`, still waits for)."""

    stopped: list[str] = dataclasses.field(default_factory=list)
    left_running: list[str] = dataclasses.field(default_factory=list)
    jobs: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (slurm id, outcome)
    wiped: list[str] = dataclasses.field(default_factory=list)
    problems: list[str] = dataclasses.field(default_factory=list)
    pending: list[str] = dataclasses.field(default_factory=list)

    def snapshot(self) -> RevocationReport:
        """A copy that the effects still running do not change."""
        return RevocationReport(*(list(getattr(self, f.name)) for f in dataclasses.fields(self)))

    def summary(self) -> str:
        parts = []
        if self.stopped:
            parts.append(f"servers stopped: {', '.join(n or '(default)' for n in self.stopped)}")
        if self.left_running:
            parts.append(f"servers left running, new operations refused within their permission TTL: "
                         f"{', '.join(n or '(default)' for n in self.left_running)}")
        active = [(i, o) for i, o in self.jobs if o != "ended"]
        if active:
            parts.append("Slurm jobs: " + ", ".join(f"{i} {o}" for i, o in active))
        if self.wiped:
            parts.append(f"{len([n for n in self.wiped if n.endswith('.json')])} staged bundle(s) removed")
        if self.problems:
            parts.append("problems: " + "; ".join(self.problems))
        if self.pending:
            parts.append("still pending, going on in the background (the audit trail records each "
                         "when done): " + "; ".join(self.pending))
        return "; ".join(parts) or "no running server or job of theirs used the project"


class _Pending:
    """``async with _Pending(report, "stopping server x")``: listed in ``report.pending`` meanwhile."""

    def __init__(self, report: RevocationReport, what: str):
        self.report, self.what = report, what

    async def __aenter__(self):
        self.report.pending.append(self.what)

    async def __aexit__(self, *exc):
        self.report.pending.remove(self.what)


async def apply_revocation(*, user: str, project: str, reason: str, servers: list[ServerView],
                           jobs: list[SubmittedJob], settings: OwnerAccess, staging_root: str,
                           stop: StopServer, audit: Audit, notices: NoticeBoard | None = None,
                           report: RevocationReport | None = None,
                           unix_user: str | None = None) -> RevocationReport:
    """Carry out what *user* losing *project* means (module docstring); everything audited
    with *reason* (e.g. ``"access to CARDIO_ECG revoked by dave"``). *report* (a new one by
    default) is filled as the effects happen, so that :func:`within_bound` can tell what is
    done and what is pending at its bound. *notices*: where the user is told what happened
    (their hub pages), if anywhere. *unix_user*: the Unix account *user*'s jobs run as and
    their staging directory belongs to (``UnixAccounts.name_template``; default *user*)."""
    report = RevocationReport() if report is None else report

    async def tell(text: str) -> None:
        if notices is not None:
            try:
                await asyncio.to_thread(notices.add_notice, user, text)
            except Exception as exc:  # noqa: BLE001 - the effects go on; the trail has them
                log.warning("revocation: the notice for %s was not kept: %r", user, exc)

    # jobs first: a server being stopped would cancel its own jobs, but a job must end even
    # when its server is already gone or its stop hangs
    queued = [j for j in jobs if j.slurm_id]
    if jobs:
        outcomes = []
        if queued:
            async with _Pending(report, f"cancelling Slurm jobs {', '.join(j.slurm_id for j in queued)}"):
                try:
                    outcomes = await cancel_jobs(queued, unix_user or user)
                except CommandFailed as exc:
                    outcomes = [(job, f"squeue failed: {exc.message}"[:300]) for job in queued]
        for job, outcome in outcomes:
            report.jobs.append((job.slurm_id, outcome))
            if outcome == "ended":
                continue  # finished before: nothing to stop (its bundle is still removed below)
            if outcome == "cancelled":
                await tell(f"your offload job (Slurm job {job.slurm_id}) was cancelled and its "
                           f"staged data removed: {reason}.")
                await audit(user, "cancel", "allowed", items=[project],
                            detail=f"{reason}; Slurm job {job.slurm_id} cancelled",
                            extra={"slurm_job_id": job.slurm_id})
            else:
                report.problems.append(f"Slurm job {job.slurm_id}: {outcome}")
                await audit(user, "cancel", "failed", items=[project],
                            detail=f"{reason}; Slurm job {job.slurm_id}: {outcome}")
        manifests = {j.manifest_sha256 for j in jobs if j.manifest_sha256}
        async with _Pending(report, f"removing {user}'s staged bundles"):
            wiped = await asyncio.to_thread(wipe_bundles, staging_root, user, manifests, unix_user)
        report.wiped.extend(wiped)
        if wiped:
            await audit(user, "cancel", "allowed", items=[project],
                        detail=f"{reason}; staged bundles removed: "
                               f"{', '.join(n[:-5] for n in wiped if n.endswith('.json'))}")
    for server in servers_hit(servers, project):
        shown = server.name or "(default)"
        if settings.on_revoke == "narrow":
            report.left_running.append(server.name)
            await tell(f"{reason}: your server {shown} keeps running, but "
                       f"refuses new work on {project} within {settings.permission_ttl:g} s.")
            await audit(user, "revoke", "allowed", items=[project],
                        detail=f"{reason}; server {shown} left running: new "
                               f"operations on {project} refused within the permission TTL")
            continue
        if server.pending:
            report.problems.append(f"server {shown} is {server.pending}; not stopped")
            await audit(user, "server_stopped", "failed", items=[project],
                        detail=f"{reason}; server {shown} was {server.pending}")
            continue
        try:
            async with _Pending(report, f"stopping server {shown}"):
                await stop(server.name)
        except Exception as exc:  # noqa: BLE001 - reported and audited; the other effects go on
            log.warning("revocation: stopping %s/%s failed: %r", user, server.name, exc)
            report.problems.append(f"stopping server {shown} failed: {exc}")
            await audit(user, "server_stopped", "failed", items=[project],
                        detail=f"{reason}; stopping server {shown} failed")
            continue
        report.stopped.append(server.name)
        # the owners' record first: the server is already gone from the hub's API, and the
        # trail must not lag behind what anyone can see
        await audit(user, "server_stopped", "allowed", items=[project],
                    detail=f"{reason}; server {shown} stopped")
        await tell(f"your server {shown} was stopped: {reason}. Start a new "
                   f"one without {project}, or ask an owner of {project} for access.")
    return report


async def within_bound(work: Awaitable[RevocationReport], report: RevocationReport, timeout: float, *,
                       keep: set, what: str) -> RevocationReport:
    """*work* (which fills *report*) awaited for at most *timeout* seconds; then a snapshot of
    *report* whose ``pending`` says what is still running, while *work* goes on in the
    background (shielded; a reference kept in *keep* until it ends, its end logged).

    A thread blocked in a system call cannot be cancelled, so the bound is no excuse to
    block: the effects open nothing that can block (:func:`wipe_bundles`); the bound is for
    the slow ones (a server's stop, Slurm's commands, the audit trail) and for the unknown."""
    task = asyncio.ensure_future(work)
    keep.add(task)
    task.add_done_callback(keep.discard)
    try:
        return await asyncio.wait_for(asyncio.shield(task), timeout)
    except asyncio.TimeoutError:
        pass
    late = report.snapshot()
    if not late.pending:
        late.pending.append("finishing")
    log.warning("revocation: %s not done within %.1f s; still pending: %s (goes on in the background)",
                what, timeout, "; ".join(late.pending))

    def finished(t: asyncio.Task) -> None:
        if t.cancelled():
            log.warning("revocation: %s cancelled before it finished", what)
        elif t.exception() is not None:
            log.error("revocation: %s failed after its time bound", what, exc_info=t.exception())
        else:
            log.info("revocation: %s finished after its time bound: %s", what, t.result().summary())

    task.add_done_callback(finished)
    return late
