"""The review page (pure functions): the owner's projects with their review setting, the
held jobs with provenance, result lists, previews and the decision forms, shaped here and
laid out by the templates of :mod:`xnat_hpc_governance.pages` (``xnat-hpc-review.html``,
``xnat-hpc-preview.html``; autoescaped, overridable by a site).

Server-rendered, no JavaScript; every value escaped by the templates; forms carry the hub's
``_xsrf``. Previews are shown as text (``<pre>``), JSON pretty-printed, CSV/TSV as a table,
each cut to :data:`PREVIEW_CHARS` characters and :data:`PREVIEW_ROWS` rows.
"""

from __future__ import annotations

import csv
import io
import json

from .pages import XnatHpcPages, render

PREVIEW_CHARS = 20000
PREVIEW_ROWS = 200
STATES = {"held": "held for review", "approved": "approved", "rejected": "rejected"}


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def preview_of(name: str, data: bytes) -> dict:
    """One file's preview as ``xnat-hpc-preview.html`` receives it (pure): size-capped text
    (JSON pretty-printed) or, for CSV/TSV, a table of cells; ``notes`` say what was cut."""
    text = data.decode("utf-8", errors="replace")
    cut = len(text) > PREVIEW_CHARS
    text = text[:PREVIEW_CHARS]
    notes = [f"(first {PREVIEW_CHARS} characters shown)"] if cut else []
    lower = name.lower()
    if lower.endswith((".csv", ".tsv")):
        rows = list(csv.reader(io.StringIO(text), delimiter="\t" if lower.endswith(".tsv") else ","))
        more = len(rows) > PREVIEW_ROWS
        rows = rows[:PREVIEW_ROWS]
        if rows:
            notes += [f"(first {PREVIEW_ROWS} rows shown)"] if more else []
            return {"name": name, "kind": "table", "header": rows[0], "rows": rows[1:], "text": "", "notes": notes}
    if lower.endswith(".json") and not cut:
        try:
            text = json.dumps(json.loads(text), indent=2, sort_keys=True)[:PREVIEW_CHARS]
        except ValueError:
            pass
    return {"name": name, "kind": "text", "header": [], "rows": [], "text": text, "notes": notes}


def render_preview(name: str, data: bytes, *, pages: XnatHpcPages | None = None) -> str:
    """One file's preview as HTML (pure): escaped, size-capped, CSV/TSV as a table."""
    return render("xnat-hpc-preview.html", pages, preview=preview_of(name, data))


def _projects(owned: list[str], marked: dict[str, dict]) -> list[dict]:
    return [{"project": p, "on": p in marked, "by": marked.get(p, {}).get("by", ""),
             "time": marked.get(p, {}).get("time", "")} for p in owned]


def job_view(job: dict, owned: set[str], previews: dict[str, bytes]) -> dict:
    """One job's section as ``xnat-hpc-review.html`` receives it (pure): only the visitor's
    projects are named; ``decide`` lists those they may still decide on (a held job)."""
    mine = [p for p in job["projects"] if p in owned]
    status = STATES[job["state"]] + (f": {job['reason']}" if job["state"] == "rejected" else "")
    return {
        "jid": f'{job["user"]}-{job["job"]}', "job": job["job"], "user": job["user"], "status": status,
        "dataset": job["dataset"], "dataset_version": str(job["dataset_version"]), "mine": mine,
        "manifest_sha256": job["manifest_sha256"], "script_sha256": job["script_sha256"],
        "slurm_job_id": job["slurm_job_id"], "since": job["since"],
        "others": len(job["projects"]) - len(mine),
        "others_pending": len([p for p in job["pending"] if p not in owned]),
        "decisions": [{"project": p, "decision": d["decision"], "owner": d["owner"], "time": d["time"],
                       "reason": d.get("reason") or ""}
                      for p, d in sorted(job["decisions"].items()) if p in owned],
        "results": [{"name": f["name"], "size": human_size(int(f["size"])), "sha256": str(f.get("sha256", ""))[:16]}
                    for f in job["results"]],
        "previews": [preview_of(n, previews[n]) for n in sorted(previews)],
        "decide": [p for p in job["pending"] if p in owned] if job["state"] == "held" else [],
        "action": f'review/jobs/{job["user"]}/{job["job"]}',
    }


def render_page(user: str, owned: list[str], marked: dict[str, dict], jobs: list[dict],
                previews: dict[tuple[str, str], dict[str, bytes]], xsrf: str, notice: str = "", *,
                pages: XnatHpcPages | None = None) -> str:
    """The whole review page (pure; *pages*: the hub's, else the packaged templates)."""
    owned_set = set(owned)
    held = [job_view(j, owned_set, previews.get((j["user"], j["job"]), {})) for j in jobs if j["state"] == "held"]
    decided = [job_view(j, owned_set, {}) for j in jobs if j["state"] != "held"]
    return render("xnat-hpc-review.html", pages, user=user, notice=notice, owned=list(owned),
                  projects=_projects(owned, marked), held=held, decided=decided, xsrf=xsrf)
