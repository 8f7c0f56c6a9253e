"""The owners' page as pure functions: filters from the query string, jobs and servers derived
from the trail, an owner's part of an event, CSV that a spreadsheet cannot execute, and HTML
that is escaped and accessible (headings, captions, scoped headers, labels, skip link)."""

from __future__ import annotations

import csv
import io
import re

import pytest

from xnat_hpc_governance import owner_render as R


def test_filters_are_parsed_normalized_and_checked():
    f = R.parse_filters({"project": "A", "user": "bob", "action": "submit", "since": "2026-11-01",
                         "until": "2026-11-02T10:30", "page": "2", "per_page": "100"}, {"A", "B"})
    assert f == R.Filters("A", "bob", "submit", "2026-11-01T00:00:00.000Z", "2026-11-02T10:30:59.999Z", 2, 100)
    assert f.query_args(page=1) == {"project": "A", "user": "bob", "action": "submit",
                                    "since": "2026-11-01T00:00:00.000Z", "until": "2026-11-02T10:30:59.999Z",
                                    "per_page": 100}
    assert R.parse_filters({}, set()) == R.Filters()
    for bad, words in [({"project": "C"}, "do not own"), ({"action": "drop"}, "unknown action"),
                       ({"since": "yesterday"}, "not a date"), ({"per_page": "7"}, "per_page"),
                       ({"page": "x"}, "numbers")]:
        with pytest.raises(ValueError, match=words):
            R.parse_filters(bad, {"A"})


def test_an_owner_sees_only_their_part_of_an_event_about_several_projects():
    ev = {"user": "u", "items": ["A/S1/E1", "B/S2"], "detail": "dataset over A and B",
          "hashes": {"manifest": "m"}, "extra": {"job": "j1", "slurm_job_id": "7", "dataset": "A+B"}}
    part = R.visible_part(ev, {"B"})
    assert part["items"] == ["B/S2"] and part["detail"] == R.WITHHELD and part["hashes"] == {}
    assert part["extra"] == {"job": "j1", "slurm_job_id": "7"}
    assert R.visible_part(ev, {"A", "B"}) is ev


def _ev(seq, action, user="bob", outcome="allowed", **kw):
    return {"seq": seq, "time": f"2026-11-26T00:00:{seq:02d}.000Z", "user": user, "action": action,
            "outcome": outcome, **kw}


def test_jobs_are_followed_through_their_events():
    submits = [_ev(2, "submit", items=["A/S1"], files=3, bytes=300, hashes={"manifest": "m1", "script": "s1"},
                   extra={"job": "j000000000001", "slurm_job_id": "41", "dataset": "d1"}),
               _ev(5, "submit", items=["A/S2"], detail="job j000000000002 slurm 42 partition secure")]
    follow = [_ev(3, "key_release", extra={"job": "j000000000001", "slurm_job_id": "41"}),
              _ev(4, "result_retrieve", files=2, bytes=20, extra={"job": "j000000000001"}),
              _ev(6, "cancel", detail="job j000000000002 slurm 42 by user"),
              _ev(7, "result_retrieve", user="mallory", extra={"job": "j000000000002"}),  # not bob's job
              _ev(8, "key_release", extra={"job": "j999999999999"})]                      # not a visible job
    jobs = R.jobs_from_events(submits, follow)
    assert [(j["job"], j["slurm_job_id"], j["state"]) for j in jobs] == [
        ("j000000000002", "42", "cancelled"), ("j000000000001", "41", "done")]
    assert jobs[1]["manifest"] == "m1" and jobs[1]["script"] == "s1" and jobs[1]["results"].startswith("2 file(s)")


def test_active_servers_come_from_the_latest_spawn_of_a_running_server():
    spawns = [_ev(1, "spawn", items=["A"], server=""), _ev(2, "spawn", items=["B"], server=""),
              _ev(3, "spawn", user="carol", items=["A", "C"], server="gpu"),
              _ev(4, "spawn", user="dan", items=["A"], outcome="denied", server="")]
    active = [("bob", "", "2026-11-26T01:00:00Z"), ("carol", "gpu", ""), ("dan", "", "")]
    assert R.active_servers(spawns, active, "A") == [
        {"user": "carol", "server": "gpu", "started": "2026-11-26T00:00:03.000Z", "scope": ["A"]}]
    assert [s["user"] for s in R.active_servers(spawns, active, "B")] == ["bob"]


def test_csv_export_is_parseable_and_cannot_run_formulas():
    text = R.to_csv([_ev(1, "download", items=["A/S1"], detail="=HYPERLINK(\"http://evil\")", hashes={"m": "x"})])
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == list(R.CSV_COLUMNS)
    assert rows[1][R.CSV_COLUMNS.index("detail")].startswith("'=") and rows[1][R.CSV_COLUMNS.index("projects")] == "A"


def test_page_is_escaped_and_accessible():
    view = R.ProjectView("A", [{"login": "bob", "firstname": "Bob", "lastname": "<b>", "displayname": "Members"}],
                         "", [], R.jobs_from_events([_ev(2, "submit", items=["A/S1"], extra={"job": "j1"})], []),
                         [], actions_html='<p class="owner-actions"><a href="/x">Grant</a></p>')
    page = R.render_page(R.PageView("dave", ["A"], True, "intact (2 records)", "2026-11-26T00:00:00Z",
                                    R.Filters(action="submit"), [_ev(2, "submit", items=["A/S1"], detail="<script>")],
                                    120, [view], ["bob"], "/hub/xnat-hpc/owner"))
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page
    assert page.count("<h1>") == 1 and '<a href="#events-section">' in page and 'id="events-section"' in page
    tables = re.findall(r"<table.*?</table>", page, re.S)
    assert tables and all("<caption>" in t for t in tables)
    assert all('scope="col"' in th for th in re.findall(r"<th(?:\s[^>]*)?>", page))
    for control in re.findall(r'<(?:input|select)[^>]* id="(f-[^"]+)"', page):
        assert f'<label for="{control}">' in page
    assert 'method="get"' in page and '<option value="submit" selected>' in page
    assert 'rel="next" href="/hub/xnat-hpc/owner?action=submit&amp;page=2"' in page  # 120 events, 50 a page
    assert 'href="/hub/xnat-hpc/owner?action=submit&amp;format=csv"' in page
    assert '<a href="/x">Grant</a>' in page  # the owner actions hook's HTML
    broken = R.render_page(R.PageView("dave", [], False, "record 4 was changed", "", R.Filters(), [], 0, [], [], "/o"))
    assert "BROKEN" in broken and 'class="broken"' in broken
