"""The review page's HTML (pure functions): the owner's projects with their review setting,
the held jobs with provenance, result lists, previews and the decision forms.

Server-rendered, no JavaScript; every value escaped; forms carry the hub's ``_xsrf``.
Previews are shown as text (``<pre>``), JSON pretty-printed, CSV/TSV as a table, each
cut to :data:`PREVIEW_CHARS` characters and :data:`PREVIEW_ROWS` rows.
"""

from __future__ import annotations

import csv
import html
import io
import json

PREVIEW_CHARS = 20000
PREVIEW_ROWS = 200
_e = html.escape


def human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def render_preview(name: str, data: bytes) -> str:
    """One file's preview as HTML (pure): escaped, size-capped, CSV/TSV as a table."""
    text = data.decode("utf-8", errors="replace")
    cut = len(text) > PREVIEW_CHARS
    text = text[:PREVIEW_CHARS]
    note = f'<p class="cut">(first {PREVIEW_CHARS} characters shown)</p>' if cut else ""
    lower = name.lower()
    if lower.endswith((".csv", ".tsv")):
        rows = list(csv.reader(io.StringIO(text), delimiter="\t" if lower.endswith(".tsv") else ","))
        more = len(rows) > PREVIEW_ROWS
        rows = rows[:PREVIEW_ROWS]
        if rows:
            head = "".join(f'<th scope="col">{_e(c)}</th>' for c in rows[0])
            body = "\n".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
            note += f'<p class="cut">(first {PREVIEW_ROWS} rows shown)</p>' if more else ""
            return (f'<table class="preview"><caption>{_e(name)}</caption><thead><tr>{head}</tr></thead>'
                    f"<tbody>{body}</tbody></table>{note}")
    if lower.endswith(".json") and not cut:
        try:
            text = json.dumps(json.loads(text), indent=2, sort_keys=True)[:PREVIEW_CHARS]
        except ValueError:
            pass
    return f'<figure><figcaption>{_e(name)}</figcaption><pre>{_e(text)}</pre></figure>{note}'


def _projects_section(owned: list[str], marked: dict[str, dict], xsrf: str) -> str:
    if not owned:
        return "<p>You own no XNAT project (as XNAT says now).</p>"
    rows = []
    for p in owned:
        on = p in marked
        state = (f"results need review (set by {_e(marked[p]['by'])}, {_e(marked[p]['time'])})" if on
                 else "results go to the researcher directly")
        action = "Stop reviewing results" if on else "Review results of jobs on this project"
        rows.append(
            f'<tr><th scope="row">{_e(p)}</th><td>{state}</td><td>'
            f'<form method="post" action="review/projects"><input type="hidden" name="_xsrf" value="{_e(xsrf)}">'
            f'<input type="hidden" name="project" value="{_e(p)}">'
            f'<input type="hidden" name="review" value="{"off" if on else "on"}">'
            f'<button type="submit">{action}</button></form></td></tr>')
    return ('<table id="projects"><caption>Your projects</caption><thead><tr><th scope="col">project</th>'
            '<th scope="col">results</th><th scope="col">change</th></tr></thead><tbody>'
            + "\n".join(rows) + "</tbody></table>")


def _job_section(job: dict, owned: set[str], previews: dict[str, bytes], xsrf: str) -> str:
    mine = [p for p in job["projects"] if p in owned]
    others = len(job["projects"]) - len(mine)
    jid = f'{job["user"]}-{job["job"]}'
    results = "\n".join(
        f"<tr><td>{_e(f['name'])}</td><td>{_e(human_size(int(f['size'])))}</td>"
        f"<td><code>{_e(str(f.get('sha256', ''))[:16])}</code></td></tr>" for f in job["results"])
    decided = "".join(
        f"<li>{_e(p)}: {_e(d['decision'])}d by {_e(d['owner'])} at {_e(d['time'])}"
        + (f" — {_e(d['reason'])}" if d.get("reason") else "") + "</li>"
        for p, d in sorted(job["decisions"].items()) if p in owned)
    pending_mine = [p for p in job["pending"] if p in owned]
    other_note = (f"<p>{others} other project(s) of this dataset must also be approved by their owners "
                  f"({len([p for p in job['pending'] if p not in owned])} pending).</p>" if others else "")
    forms = ""
    if job["state"] == "held" and pending_mine:
        action = f'review/jobs/{_e(job["user"])}/{_e(job["job"])}'
        hidden = f'<input type="hidden" name="_xsrf" value="{_e(xsrf)}">'
        forms = (
            f'<form method="post" action="{action}">{hidden}<input type="hidden" name="decision" value="approve">'
            f'<button type="submit">Approve for {_e(", ".join(pending_mine))}</button></form>'
            f'<form method="post" action="{action}">{hidden}<input type="hidden" name="decision" value="reject">'
            f'<label for="reason-{_e(jid)}">Reason (the researcher reads it)</label> '
            f'<textarea id="reason-{_e(jid)}" name="reason" required maxlength="1000"></textarea>'
            f'<button type="submit">Reject and delete</button></form>')
    status = {"held": "held for review", "approved": "approved", "rejected": "rejected"}[job["state"]]
    if job["state"] == "rejected":
        status += f": {_e(job['reason'])}"
    prev = "\n".join(render_preview(n, previews[n]) for n in sorted(previews))
    return f"""<section class="job" id="job-{_e(jid)}" aria-labelledby="h-{_e(jid)}">
<h3 id="h-{_e(jid)}">Job {_e(job["job"])} of {_e(job["user"])} — <span class="state">{status}</span></h3>
<dl><dt>dataset</dt><dd>{_e(job["dataset"])} v{_e(str(job["dataset_version"]))}</dd>
<dt>your projects in it</dt><dd>{_e(", ".join(mine))}</dd>
<dt>manifest sha256</dt><dd><code>{_e(job["manifest_sha256"])}</code></dd>
<dt>script sha256</dt><dd><code>{_e(job["script_sha256"])}</code></dd>
<dt>Slurm job</dt><dd>{_e(job["slurm_job_id"])}</dd><dt>held since</dt><dd>{_e(job["since"])}</dd></dl>
{other_note}<ul class="decisions">{decided}</ul>
<table class="results"><caption>Result files ({len(job["results"])})</caption><thead><tr>
<th scope="col">file</th><th scope="col">size</th><th scope="col">sha256</th></tr></thead>
<tbody>{results}</tbody></table>
<div class="previews">{prev or "<p>No preview (only small text, JSON and CSV files are previewed).</p>"}</div>
{forms}
</section>"""


def render_page(user: str, owned: list[str], marked: dict[str, dict], jobs: list[dict],
                previews: dict[tuple[str, str], dict[str, bytes]], xsrf: str, notice: str = "") -> str:
    """The whole review page (pure)."""
    owned_set = set(owned)
    held = [j for j in jobs if j["state"] == "held"]
    done = [j for j in jobs if j["state"] != "held"]
    held_html = "\n".join(_job_section(j, owned_set, previews.get((j["user"], j["job"]), {}), xsrf)
                          for j in held) or "<p>No results wait for your review.</p>"
    done_html = "\n".join(_job_section(j, owned_set, {}, xsrf) for j in done) or "<p>None yet.</p>"
    notice_html = f'<p role="status" id="notice">{_e(notice)}</p>' if notice else ""
    return f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>XNAT projects: results review</title></head><body>
<h1>Results review</h1>{notice_html}
<p>{_e(user)}, results of jobs on a project marked here stay encrypted until an owner of every project
of the job's dataset approves them; a rejection deletes them.</p>
<h2>Your projects</h2>
{_projects_section(owned, marked, xsrf)}
<h2>Waiting for your review</h2>
{held_html}
<h2>Decided</h2>
{done_html}
</body></html>"""
