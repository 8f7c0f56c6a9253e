"""What the project owners' audit page shows, gathered (the page itself is the governance
service's: :class:`xnat_hpc_governance.owner_pages.OwnerAuditPage`, ``GET
/services/xnat-hpc-governance/owner``; the hub's old address ``/hub/xnat-hpc/owner`` redirects
there).

For each project the visitor **owns in XNAT right now** (asked of XNAT with the visitor's own
alias token, never taken from the hub; site administrators see every project) the page shows:

* who has access and with which role (XNAT's ``GET /data/projects/{P}/users``, as the
  visitor), with links to grant and revoke and to the results review;
* the servers running now whose scope includes the project (the trail's latest allowed
  ``spawn`` of each running server, joined with the servers the hub's REST API lists as
  active, asked as the governance service: :mod:`hub_ext.hub_rest`);
* offload jobs of servers whose scope held the project, from the **job ledger** (who,
  which server, when, dataset, manifest and script sha256, Slurm job id, state), with what
  the server reported on the trail (files, bytes, results retrieved), and downloads;
* the trail's events, filtered by the query string (``project``, ``user``, ``action``,
  ``since``, ``until``: UTC dates or date-times; ``page``, ``per_page``), exported with
  ``format=csv`` or ``format=json`` (the same filters, up to :data:`MAX_EXPORT` events);
* whether the trail verifies (:meth:`HubAuditLog.status`, refreshed in the background).

An event about several projects shows each owner only their part
(:func:`xnat_hpc_governance.owner_render.visible_part`). Rendering is pure (:mod:`xnat_hpc_governance.owner_render`,
through the templates of :mod:`xnat_hpc_governance.pages`); :func:`collect` gathers the data.
"""

from __future__ import annotations

from collections.abc import Callable

from . import owner_render as R
from hub_ext.audit_log import HubAuditLog
from .owner_render import WITHHELD, owned_projects, visible_part  # noqa: F401

#: the hub's old address of the page (relative to the hub's prefix): a redirect to the service's
ROUTE = r"/xnat-hpc/owner"
MAX_EXPORT = 100_000
JOB_ACTIONS = ("key_release", "result_retrieve", "cancel", "job_state")


def jobs_from_ledger(ledger: list[dict], reported: list[dict], project: str) -> list[dict]:
    """The jobs table of *project* (pure): one row per **ledger** job whose server's scope held
    *project* (who, which server, digests, Slurm id, state: what the hub recorded), with what
    the job's server reported on the trail (files, bytes, resources, results retrieved) added
    from *reported* (:func:`xnat_hpc_governance.owner_render.jobs_from_events` rows of the same user and
    job). Only *project* is named of the job's projects: the page shows an owner their part."""
    by_job = {(r["user"], r["job"]): r for r in reported}
    rows = []
    for job in ledger:
        ev = by_job.get((job["user"], job["job"]), {})
        state = job["state"]
        if state in ("submitted", "running") and ev.get("state") in ("done", "failed", "cancelled"):
            state = ev["state"]  # the server told the trail before it told the ledger
        rows.append({"job": job["job"], "user": job["user"], "time": job["created"], "dataset": job["dataset"],
                     "items": [project], "files": ev.get("files", 0), "bytes": ev.get("bytes", 0),
                     "manifest": job["manifest_sha256"] or ev.get("manifest", ""), "script": job["script_sha256"],
                     "slurm_job_id": job["slurm_job_id"] or ev.get("slurm_job_id", ""),
                     "resources": ev.get("resources", {}), "state": state, "results": ev.get("results", ""),
                     "server": job["server"] or "(default)", "review": project in job["review"]})
    return rows


def collect(audit_log: HubAuditLog, owned: set[str], scope: set[str], f: R.Filters, query: dict,
            active: list[tuple[str, str, str]],
            members: Callable[[str], tuple[list[dict] | None, str]],
            ledger: Callable[[str], list[dict]] = lambda p: [],
            published: Callable[[str], list[dict]] = lambda p: []) -> tuple[list[dict], int, list[R.ProjectView]]:
    """What the page shows (blocking: the store and XNAT; run it in a thread): the filtered
    events of this page, their count, and a :class:`~xnat_hpc_governance.owner_render.ProjectView` per
    project of *scope* (*members(project)* asks XNAT who has access, *ledger(project)* gives
    the ledger's jobs of servers whose scope held it, *published(project)* the publications
    to XNAT of those jobs' results)."""
    events = audit_log.query(**query, limit=f.per_page, offset=(f.page - 1) * f.per_page)
    total = audit_log.count(**query)
    views = []
    for p in sorted(scope):
        people, problem = members(p)
        jobs = ledger(p)
        submitters = {j["user"] for j in jobs}
        first = min((j["created"] for j in jobs), default="") or None
        reported = []
        if submitters:
            submits = audit_log.query(user=submitters, actions={"submit"}, since=first, limit=1000)
            follow = audit_log.query(user=submitters, actions=set(JOB_ACTIONS), since=first, limit=1000)
            reported = R.jobs_from_events(submits, follow)
        running = {u for u, _, _ in active}
        spawns = audit_log.query(projects={p}, user=running, actions={"spawn"}, limit=1000) if running else []
        downloads = [visible_part(e, owned) for e in audit_log.query(projects={p}, actions={"download"}, limit=50)]
        views.append(R.ProjectView(p, people, problem, R.active_servers(spawns, active, p),
                                   jobs_from_ledger(jobs, reported, p), downloads, published(p)))
    return [visible_part(e, owned) for e in events], total, views
