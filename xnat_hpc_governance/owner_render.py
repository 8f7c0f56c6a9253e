"""The owners' page as pure functions: what an owner may see of an event, the filters of
the query string, the jobs and servers derived from the trail, the CSV / JSON exports, and
what the page's templates receive (:mod:`xnat_hpc_governance.owner` gathers the data and answers).

Everything here is a function of its arguments (no hub, no XNAT, no store), covered by
``tests/unit/test_owner_render.py``. The HTML comes from the templates of
:mod:`xnat_hpc_governance.pages` (``xnat-hpc-owner.html`` and its partials; autoescaped, overridable by
a site): ``*_context`` functions shape the data, ``render_page`` / ``project_section`` /
``filter_form`` render it. It works without JavaScript and is meant to be read with a screen
reader too: one ``h1``, a skip link, a section per project with an ``h2``, tables with
captions and ``scope`` on their headers, a labelled GET form for the filters, pagination links.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import urlencode

from xnat_bridge.audit import ACTIONS

from hub_ext.audit_store import project_of
from .pages import XnatHpcPages, render

#: what replaces the detail of an event that also concerns projects the visitor does not own
WITHHELD = "details withheld: this event also concerns projects you do not own"
#: structured fields that name no project (kept when the rest of an event is withheld)
NEUTRAL_EXTRA = ("job", "slurm_job_id", "state", "out_of_scope")
#: how the page labels what a researcher's server sent (their code runs there: its claim)
REPORTED_BY_SERVER = "reported by the server"
#: how the page labels what the hub recorded itself
RECORDED_BY_HUB = "recorded by the hub"
PAGE_SIZES = (25, 50, 100, 200, 500)
CSV_COLUMNS = ("seq", "time", "user", "server", "source", "action", "outcome", "projects", "items",
               "files", "bytes", "hashes", "detail", "extra", "event_time")
_JOB_RE = re.compile(r"\bjob (j[0-9a-f]{12})\b")
_SLURM_RE = re.compile(r"\bslurm (\d+)\b")


def source_label(event: Mapping) -> str:
    """Who vouches for *event*: :data:`REPORTED_BY_SERVER` for what a server sent (Slurm ids,
    hashes, states are its claims), :data:`RECORDED_BY_HUB` for what the hub recorded."""
    return REPORTED_BY_SERVER if event.get("source") == "server" else RECORDED_BY_HUB


def owned_projects(roles: Mapping[str, str], site_admin: bool) -> set[str]:
    return set(roles) if site_admin else {p for p, r in roles.items() if r == "Owner"}


def visible_part(event: dict, projects: set[str]) -> dict:
    """*event* as a visitor owning *projects* may see it: unchanged when all its items (and the
    items its server claimed outside its scope, ``extra.claimed_items``) are theirs; otherwise
    only their items, and the detail, file hashes and structured fields (which may name the
    other projects) withheld, but for :data:`NEUTRAL_EXTRA`."""
    items = list(event.get("items") or ())
    claimed = list((event.get("extra") or {}).get("claimed_items") or ())
    if {project_of(i) for i in items + claimed} <= projects:
        return event
    extra = {k: v for k, v in (event.get("extra") or {}).items() if k in NEUTRAL_EXTRA}
    return {**event, "items": [i for i in items if project_of(i) in projects], "detail": WITHHELD,
            "hashes": {}, "extra": extra}


def events_for(events: Iterable[dict], projects: set[str], limit: int = 500) -> list[dict]:
    """Events touching one of *projects*, newest first, each cut to its :func:`visible_part`
    (for events already in memory; the page asks the store, which filters by project)."""
    hits = [visible_part(e, projects) for e in events
            if projects.intersection(project_of(i) for i in e.get("items") or ())]
    return list(reversed(hits))[:limit]


def simple_page(visitor: str, owned: set[str], events: list[dict], chain: str) -> str:
    """The page with events only (no project sections): for tests and small tools."""
    return render_page(PageView(visitor, sorted(owned), None, chain, "", Filters(), events, len(events), [],
                                [], "/hub/xnat-hpc/owner"))


# -- filters ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Filters:
    project: str = ""
    user: str = ""
    action: str = ""
    since: str = ""
    until: str = ""
    page: int = 1
    per_page: int = 50

    def query_args(self, **override) -> dict:
        d = {**dataclasses.asdict(self), **override}
        return {k: v for k, v in d.items() if v not in ("", None) and not (k == "page" and v == 1)
                and not (k == "per_page" and v == 50)}


_TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?)?Z?$")


def normalize_time(value: str, *, end: bool) -> str:
    """A date or date-time from the form (UTC) as the trail's ISO form; the end of that day or
    minute when *end*. ``""`` stays ``""``; anything else raises ValueError."""
    value = (value or "").strip()
    if not value:
        return ""
    if not _TIME_RE.match(value):
        raise ValueError(f"not a date or date-time (YYYY-MM-DD or YYYY-MM-DDTHH:MM): {value!r}")
    value = value.rstrip("Z").replace(" ", "T")
    if len(value) == 10:
        value += "T23:59:59.999" if end else "T00:00:00.000"
    elif len(value) == 16:
        value += ":59.999" if end else ":00.000"
    elif len(value) == 19:
        value += ".999" if end else ".000"
    return value + "Z"


def parse_filters(args: Mapping[str, str], owned: set[str]) -> Filters:
    """The filters of a query string (ValueError with the reason for a wrong one)."""
    get = lambda k: str(args.get(k, "") or "").strip()  # noqa: E731
    project, action = get("project"), get("action")
    if project and project not in owned:
        raise ValueError(f"you do not own the project {project!r} (as XNAT says now)")
    if action and action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    try:
        page = max(1, int(get("page") or 1))
        per_page = int(get("per_page") or 50)
    except ValueError:
        raise ValueError("page and per_page are numbers") from None
    if per_page not in PAGE_SIZES:
        raise ValueError(f"per_page is one of {', '.join(map(str, PAGE_SIZES))}")
    user = get("user")[:128]
    return Filters(project, user, action, normalize_time(get("since"), end=False),
                   normalize_time(get("until"), end=True), page, per_page)


# -- what the trail says about jobs and servers -------------------------------------------------
def job_id_of(event: Mapping) -> str:
    extra = event.get("extra") or {}
    if extra.get("job"):
        return str(extra["job"])
    m = _JOB_RE.search(str(event.get("detail") or ""))
    return m.group(1) if m else ""


def slurm_id_of(event: Mapping) -> str:
    extra = event.get("extra") or {}
    if extra.get("slurm_job_id"):
        return str(extra["slurm_job_id"])
    m = _SLURM_RE.search(str(event.get("detail") or ""))
    return m.group(1) if m else ""


def jobs_from_events(submits: Iterable[dict], followups: Iterable[dict]) -> list[dict]:
    """One row per submitted job (newest first): *submits* are the (visible) ``submit``
    events, *followups* any ``key_release`` / ``result_retrieve`` / ``cancel`` /
    ``job_state`` events of the same users — only those naming a job of *submits* count."""
    jobs: dict[str, dict] = {}
    for ev in submits:
        jid = job_id_of(ev) or f"#{ev.get('seq')}"
        extra = ev.get("extra") or {}
        jobs[jid] = {
            "job": jid, "user": ev.get("user", ""), "time": ev.get("time", ""),
            "dataset": extra.get("dataset", ""), "items": list(ev.get("items") or ()),
            "files": ev.get("files", 0), "bytes": ev.get("bytes", 0),
            "manifest": (ev.get("hashes") or {}).get("manifest", ""),
            "script": (ev.get("hashes") or {}).get("script", ""),
            "slurm_job_id": slurm_id_of(ev), "resources": extra.get("resources", {}),
            "state": "submitted" if ev.get("outcome") == "allowed" else f"submit {ev.get('outcome')}",
            "results": "",
        }
    order = {"submitted": 0, "running": 1, "cancelled": 2, "failed": 2, "done": 3}
    for ev in sorted(followups, key=lambda e: e.get("seq", 0)):
        job = jobs.get(job_id_of(ev))
        if job is None or ev.get("user") != job["user"]:
            continue
        action, outcome = ev.get("action"), ev.get("outcome")
        if action == "key_release":
            state = "running" if outcome == "allowed" else "failed"
        elif action == "result_retrieve":
            state = "done" if outcome == "allowed" else "failed"
            if outcome == "allowed":
                job["results"] = f"{ev.get('files', 0)} file(s), {ev.get('bytes', 0)} bytes at {ev.get('time', '')}"
        elif action == "cancel":
            state = "cancelled"
        elif action == "job_state":
            state = str((ev.get("extra") or {}).get("state") or job["state"])
        else:
            continue
        if order.get(state, 1) >= order.get(job["state"], 0):
            job["state"] = state
    return sorted(jobs.values(), key=lambda j: j["time"], reverse=True)


def active_servers(spawns: Iterable[dict], active: Iterable[tuple[str, str, str]], project: str) -> list[dict]:
    """The servers running now (*active*: ``(user, server name, started)``) whose latest allowed
    ``spawn`` event names *project*: user, server, since, the scope's part in *project*."""
    latest: dict[tuple[str, str], dict] = {}
    for ev in spawns:
        if ev.get("action") != "spawn" or ev.get("outcome") != "allowed" or ev.get("source") == "server":
            continue  # only the hub records starts
        key = (ev.get("user", ""), ev.get("server", ""))
        if key not in latest or ev.get("seq", 0) > latest[key].get("seq", 0):
            latest[key] = ev
    rows = []
    for user, server, started in active:
        ev = latest.get((user, server))
        if ev is None or project not in {project_of(i) for i in ev.get("items") or ()}:
            continue
        rows.append({"user": user, "server": server or "(default)", "started": started or ev.get("time", ""),
                     "scope": [i for i in ev.get("items") or () if project_of(i) == project]})
    return rows


# -- exports ------------------------------------------------------------------------------------
def csv_rows(events: Iterable[dict]) -> Iterable[list[str]]:
    for ev in events:
        items = list(ev.get("items") or ())
        yield [str(ev.get("seq", "")), ev.get("time", ""), ev.get("user", ""), ev.get("server", ""),
               ev.get("source", ""), ev.get("action", ""), ev.get("outcome", ""),
               " ".join(sorted({project_of(i) for i in items})), " ".join(items), str(ev.get("files", 0)),
               str(ev.get("bytes", 0)), json.dumps(ev.get("hashes") or {}, sort_keys=True),
               ev.get("detail", ""), json.dumps(ev.get("extra") or {}, sort_keys=True), ev.get("event_time", "")]


def to_csv(events: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for row in csv_rows(events):
        # a cell starting with = + - @ would be a formula in a spreadsheet
        w.writerow([("'" + c) if c[:1] in ("=", "+", "-", "@") else c for c in map(str, row)])
    return buf.getvalue()


# -- HTML (through the templates of xnat_hpc_governance.pages) ---------------------------------------------
def _short(h: str) -> str:
    h = str(h or "")
    return h if len(h) <= 23 else h[:23] + "…"


def _table(tid: str, caption: str, headers: list[str], rows: list[list], empty: str) -> dict:
    """A table as the templates' ``table`` macro takes it (``xnat-hpc-macros.html``)."""
    return {"id": tid, "caption": caption, "headers": headers, "rows": rows, "empty": empty}


@dataclasses.dataclass
class ProjectView:
    project: str
    members: list[dict] | None          # None: XNAT did not answer (members_error says why)
    members_error: str
    servers: list[dict]
    jobs: list[dict]
    downloads: list[dict]
    publications: list[dict] = dataclasses.field(default_factory=list)
    #: shares of running servers on the project: {"owner", "server", "name", "guest", "since"}
    shares: list[dict] = dataclasses.field(default_factory=list)
    #: where an owner ends a share ({"url", "xsrf"}), None for who does not own the project
    share_form: dict | None = None
    actions_html: str = ""              # grant/revoke, review: filled by xnat_hpc_governance.owner's hook (trusted HTML)


def project_context(v: ProjectView) -> dict:
    """What ``xnat-hpc-owner-project.html`` receives as ``p`` (pure)."""
    p = v.project
    members = None if v.members is None else _table(
        f"members-{p}", f"Who has access to {p} (from XNAT, now)", ["XNAT user", "name", "role"],
        [[m.get("login", ""), " ".join(str(m.get(k) or "") for k in ("firstname", "lastname")).strip(),
          m.get("displayname") or m.get("role", "")] for m in v.members], "nobody")
    servers = _table(f"servers-{p}", f"Servers running now with {p} in their scope",
                     ["user", "server", "started", "scope in this project"],
                     [[s["user"], s["server"], s["started"], ", ".join(s["scope"])] for s in v.servers], "none")
    jobs = _table(f"jobs-{p}", f"Offload jobs on the data of {p}, newest first (files, bytes, Slurm job id, "
                  f"state and results: {REPORTED_BY_SERVER})",
                  ["submitted", "user", "job", "dataset", "files", "bytes", "manifest sha256", "script sha256",
                   "Slurm job id", "state", "results"],
                  [[j["time"], j["user"], j["job"], j["dataset"], j["files"], j["bytes"], j["manifest"],
                    j["script"], j["slurm_job_id"], j["state"], j["results"]] for j in v.jobs], "none")
    downloads = _table(f"downloads-{p}", f"Downloads of data of {p}, newest first",
                       ["time", "user", "outcome", "items", "files", "bytes", "manifest sha256", "source"],
                       [[d.get("time", ""), d.get("user", ""), d.get("outcome", ""), ", ".join(d.get("items") or ()),
                         d.get("files", 0), d.get("bytes", 0), _short((d.get("hashes") or {}).get("manifest", "")),
                         source_label(d)]
                        for d in v.downloads], "none")
    publications = _table(
        f"published-{p}", f"Results published to XNAT from jobs on the data of {p}, newest first (signed by the "
        "hub; the resource holds the files, their RO-Crate and its signature)",
        ["signed", "user", "job", "files", "state", "XNAT resource"],
        [[x["signed"], x["user"], x["job"], len(x["files"]), x["state"] + (f": {x['message']}" if x["message"] else ""),
          link(x["url"], x["resource"])] for x in v.publications], "none")
    return {"project": p, "members": members, "members_error": v.members_error, "actions_html": v.actions_html,
            "servers": servers, "jobs": jobs, "downloads": downloads, "publications": publications,
            "shares": v.shares, "share_form": v.share_form}


def link(url: str, text: str) -> dict | str:
    """A table cell that links to *url* (the macro renders it escaped), or the text alone when
    *url* is not an http(s) address."""
    return {"href": url, "text": text} if url.startswith(("http://", "https://")) else text


def project_section(v: ProjectView, *, pages: XnatHpcPages | None = None) -> str:
    """One project's section of the page (``xnat-hpc-owner-project.html``)."""
    return render("xnat-hpc-owner-project.html", pages, p=project_context(v))


def filter_context(f: Filters, owned: list[str], users: list[str], action_url: str) -> dict:
    """What ``xnat-hpc-owner-filters.html`` receives as ``form`` (pure)."""
    return {"action_url": action_url, "projects": [(p, p == f.project) for p in owned],
            "user": f.user, "users": list(users), "actions": [(a, a == f.action) for a in ACTIONS],
            "since": f.since[:16], "until": f.until[:16], "sizes": [(n, n == f.per_page) for n in PAGE_SIZES]}


def filter_form(f: Filters, owned: list[str], users: list[str], action_url: str, *,
                pages: XnatHpcPages | None = None) -> str:
    """The filter form alone (``xnat-hpc-owner-filters.html``)."""
    return render("xnat-hpc-owner-filters.html", pages, form=filter_context(f, owned, users, action_url))


@dataclasses.dataclass
class PageView:
    visitor: str
    owned: list[str]
    chain_ok: bool | None
    chain: str
    chain_checked: str
    filters: Filters
    events: list[dict]
    total: int
    projects: list[ProjectView]
    users: list[str]
    base_url: str                       # this page's URL (no query)
    links: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (label, url)
    error: str = ""


def page_context(v: PageView) -> dict:
    """What ``xnat-hpc-owner.html`` receives (pure)."""
    f = v.filters
    rows = [[e.get("time", ""), e.get("user", ""), e.get("server", ""), source_label(e), e.get("action", ""),
             e.get("outcome", ""), ", ".join(e.get("items") or ()), e.get("files", 0), e.get("bytes", 0),
             " ".join(f"{k}:{_short(h)}" for k, h in sorted((e.get("hashes") or {}).items())),
             e.get("detail", "") + ("" if not e.get("extra") else " " + json.dumps(e["extra"], sort_keys=True))]
            for e in v.events]
    pages = max(1, -(-v.total // f.per_page))
    url = lambda **q: f"{v.base_url}?{urlencode(q)}"  # noqa: E731
    return {
        "visitor": v.visitor, "owned": list(v.owned), "chain_ok": v.chain_ok, "chain": v.chain,
        "chain_checked": v.chain_checked, "links": list(v.links), "error": v.error,
        "projects": [project_context(p) for p in v.projects],
        "form": filter_context(f, v.owned, v.users, v.base_url),
        "csv_url": url(**f.query_args(page=1, per_page=50), format="csv"),
        "json_url": url(**f.query_args(page=1, per_page=50), format="json"),
        "total": v.total, "page": f.page, "pages": pages,
        "prev_url": url(**f.query_args(page=f.page - 1)) if f.page > 1 else "",
        "next_url": url(**f.query_args(page=f.page + 1)) if f.page < pages else "",
        "events": _table("events", "Audit events on your projects, newest first (times UTC, stamped by the hub)",
                         ["time", "user", "server", "source", "action", "outcome", "items", "files", "bytes",
                          "hashes", "detail"], rows, "no events match"),
        "recorded_by_hub": RECORDED_BY_HUB, "reported_by_server": REPORTED_BY_SERVER,
    }


def render_page(v: PageView, *, pages: XnatHpcPages | None = None) -> str:
    """The whole page (``xnat-hpc-owner.html``; *pages*: the hub's, else the packaged templates)."""
    return render("xnat-hpc-owner.html", pages, **page_context(v))
