"""Pure decisions of a revocation (hub_ext.revocation) and the access page's form
parsing and rendering (hub_ext.owner_access), without infrastructure."""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest

from hub_ext.owner_access import AccessChange, access_section_html, parse_change, render_page
from hub_ext.revocation import (
    OwnerAccess,
    ServerView,
    SlurmJob,
    SubmittedJob,
    apply_revocation,
    bundle_files_to_remove,
    cancel_decision,
    jobs_hit,
    parse_squeue,
    scope_projects,
    servers_hit,
    submitted_job,
    wipe_bundles,
)
from xnat_bridge.errors import InvalidRequest

SHA = "a" * 64
OTHER_SHA = "b" * 64


@pytest.mark.parametrize("options, projects", [
    ({"profile": "p", "projects": ["CARDIO_ECG", "NEURO_MRI"]}, {"CARDIO_ECG", "NEURO_MRI"}),
    ({"projects": "CARDIO_ECG"}, {"CARDIO_ECG"}),
    ({"projects": {"CARDIO_ECG": {"subjects": ["S1"]}}}, {"CARDIO_ECG"}),
    ({"xsiType": "xnat:projectData", "itemId": "CARDIO_ECG", "projectId": "CARDIO_ECG"}, {"CARDIO_ECG"}),
    ({}, set()), (None, set()), ({"projects": [1, None]}, set()),
])
def test_scope_projects_reads_every_shape_of_user_options(options, projects):
    assert scope_projects(options) == projects


def test_servers_hit_are_the_active_ones_holding_the_project():
    servers = [ServerView("a", frozenset({"CARDIO_ECG", "NEURO_MRI"})),
               ServerView("b", frozenset({"NEURO_MRI"})),
               ServerView("c", frozenset({"CARDIO_ECG"}), active=False),
               ServerView("", frozenset({"CARDIO_ECG"}))]
    assert [s.name for s in servers_hit(servers, "CARDIO_ECG")] == ["a", ""]
    assert servers_hit(servers, "SLEEP_EEG") == []


def submit(user="bob", slurm="123", items=("CARDIO_ECG/S1/E1",), outcome="allowed", **kw):
    return {"action": "submit", "outcome": outcome, "user": user, "items": list(items),
            "detail": f"job j1 slurm {slurm} partition secure" if slurm else "job j1",
            "hashes": {"manifest": f"sha256:{SHA}"}, "server": "s", **kw}


def test_submitted_job_from_detail_or_extra():
    job = submitted_job(submit(items=("CARDIO_ECG",)))
    assert job == SubmittedJob("bob", "123", frozenset({"CARDIO_ECG"}), SHA, "s", "")
    assert submitted_job(submit(items=("XNAT_E1/CARDIO_ECG",))).projects == {"XNAT_E1", "CARDIO_ECG"}
    assert submitted_job(submit(slurm="", extra={"slurm_job_id": "77"})).slurm_id == "77"
    assert submitted_job(submit(slurm="")) is None
    assert submitted_job(submit(outcome="failed")) is None
    assert submitted_job({**submit(), "action": "stage"}) is None
    assert submitted_job(submit(slurm="", extra={"slurm_job_id": "1; rm"})) is None


def test_jobs_hit_only_the_users_jobs_on_the_project_once_each():
    events = [submit(slurm="1"), submit(slurm="1"),
              submit(slurm="2", items=("NEURO_MRI/S/E",)),
              submit(user="alice", slurm="3"),
              submit(slurm="4", items=("NEURO_MRI/S/E", "CARDIO_ECG/S/E"))]
    assert [j.slurm_id for j in jobs_hit(events, "bob", "CARDIO_ECG")] == ["1", "4"]
    assert [j.slurm_id for j in jobs_hit(events, "alice", "CARDIO_ECG")] == ["3"]
    assert jobs_hit(events, "bob", "SLEEP_EEG") == []


def test_squeue_parsing_and_cancel_decision():
    listed = parse_squeue("12|bob|PENDING\n13|alice|RUNNING\n\ngarbage\n")
    assert listed == {"12": SlurmJob("12", "bob", "PENDING"), "13": SlurmJob("13", "alice", "RUNNING")}
    job = SubmittedJob("bob", "12", frozenset({"P"}))
    assert cancel_decision(job, listed["12"], "bob") == "cancel"
    # a job id another account runs (a forged event) is never cancelled
    assert cancel_decision(SubmittedJob("bob", "13", frozenset()), listed["13"], "bob") == "not the user's job"
    assert cancel_decision(job, None, "bob") == "ended"
    assert cancel_decision(job, SlurmJob("12", "bob", "COMPLETED"), "bob") == "ended"


def test_bundle_files_to_remove_match_the_manifest_digest():
    sidecars = {"0123456789ab-0123456789ab": {"manifest_sha256": SHA},
                "ba9876543210-ba9876543210": {"manifest_sha256": OTHER_SHA},
                "../../etc-passwd": {"manifest_sha256": SHA}}
    assert bundle_files_to_remove(sidecars, {f"sha256:{SHA}"}) == [
        "0123456789ab-0123456789ab.tar.age", "0123456789ab-0123456789ab.tar.age.partial",
        "0123456789ab-0123456789ab.json"]
    assert bundle_files_to_remove(sidecars, set()) == []


def _bundle(udir, bundle_id, sha):
    (udir / f"{bundle_id}.json").write_text(json.dumps({"manifest_sha256": sha}))
    (udir / f"{bundle_id}.tar.age").write_bytes(b"age")


def test_wipe_bundles_removes_only_matching_bundles_and_follows_no_link(tmp_path):
    user = "no-such-account-xyz"  # no Unix account: the directory must be the hub's own
    udir = tmp_path / "staging" / user
    udir.mkdir(parents=True)
    _bundle(udir, "0123456789ab-0123456789ab", SHA)
    _bundle(udir, "ba9876543210-ba9876543210", OTHER_SHA)
    outside = tmp_path / "outside.json"
    outside.write_text(json.dumps({"manifest_sha256": SHA}))
    os.symlink(outside, udir / "cccccccccccc-cccccccccccc.json")  # a linked sidecar is not read
    removed = wipe_bundles(str(tmp_path / "staging"), user, {SHA})
    assert sorted(removed) == ["0123456789ab-0123456789ab.json", "0123456789ab-0123456789ab.tar.age"]
    assert sorted(p.name for p in udir.iterdir()) == [
        "ba9876543210-ba9876543210.json", "ba9876543210-ba9876543210.tar.age", "cccccccccccc-cccccccccccc.json"]
    assert outside.exists()


def test_wipe_bundles_does_not_enter_a_linked_user_directory(tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    _bundle(elsewhere, "0123456789ab-0123456789ab", SHA)
    (tmp_path / "staging").mkdir()
    os.symlink(elsewhere, tmp_path / "staging" / "mallory")
    assert wipe_bundles(str(tmp_path / "staging"), "mallory", {SHA}) == []
    assert wipe_bundles(str(tmp_path / "staging"), "../elsewhere", {SHA}) == []
    assert len(list(elsewhere.iterdir())) == 2


def _run_revocation(on_revoke, servers, events=()):
    stopped, audited = [], []

    async def stop(name):
        stopped.append(name)

    async def audit(user, action, outcome, *, items=(), detail="", **kw):
        audited.append((user, action, outcome, list(items), detail))

    report = asyncio.run(apply_revocation(
        user="bob", project="CARDIO_ECG", reason="access to CARDIO_ECG revoked by dave", servers=servers,
        events=list(events), settings=OwnerAccess(on_revoke=on_revoke), staging_root="", stop=stop, audit=audit))
    return report, stopped, audited


def test_apply_revocation_stops_the_servers_on_the_project_and_audits_why():
    servers = [ServerView("ecg", frozenset({"CARDIO_ECG"})), ServerView("mri", frozenset({"NEURO_MRI"})),
               ServerView("busy", frozenset({"CARDIO_ECG"}), pending="spawn")]
    report, stopped, audited = _run_revocation("stop", servers)
    assert stopped == ["ecg"] and report.stopped == ["ecg"]
    assert ("bob", "server_stopped", "allowed", ["CARDIO_ECG"],
            "access to CARDIO_ECG revoked by dave; server ecg stopped") in audited
    assert any(a[1] == "server_stopped" and a[2] == "failed" and "busy" in a[4] for a in audited)
    assert "servers stopped: ecg" in report.summary()


def test_apply_revocation_narrow_leaves_servers_running():
    report, stopped, audited = _run_revocation("narrow", [ServerView("ecg", frozenset({"CARDIO_ECG"}))])
    assert stopped == [] and report.left_running == ["ecg"]
    assert audited[0][1] == "revoke" and "left running" in audited[0][4]


def test_on_revoke_is_stop_or_narrow():
    from traitlets import TraitError

    with pytest.raises(TraitError):
        OwnerAccess(on_revoke="ignore")


@pytest.mark.parametrize("form, words", [
    ({"action": "delete", "project": "P", "user": "bob"}, "action must be one of"),
    ({"action": "grant", "project": "../x", "user": "bob", "group": "Members"}, "not a valid XNAT identifier"),
    ({"action": "grant", "project": "P", "user": "bob/../x", "group": "Members"}, "not an XNAT user name"),
    ({"action": "grant", "project": "P", "user": "bob", "group": "Admins"}, "choose a role"),
])
def test_parse_change_refuses_bad_forms_by_name(form, words):
    with pytest.raises(InvalidRequest, match=re.escape(words)):
        parse_change(form)


def test_parse_change_accepts_grant_and_revoke():
    assert parse_change({"action": "grant", "project": "CARDIO_ECG", "user": " bob ", "group": "Members"}) == \
        AccessChange("grant", "CARDIO_ECG", "bob", "Members")
    assert parse_change({"action": "revoke", "project": "CARDIO_ECG", "user": "bob"}) == \
        AccessChange("revoke", "CARDIO_ECG", "bob", "")


def test_access_section_is_accessible_escaped_and_xsrf_protected():
    page = access_section_html("CARDIO_ECG", [
        {"login": "bob", "displayname": "Members", "firstname": "Bob", "lastname": "<b>"},
        {"login": "dave", "displayname": "Owners"}], xsrf="XS", action_url="/hub/xnat-hpc/owner/access")
    forms = re.findall(r"<form .*?</form>", page, re.S)
    assert len(forms) == 3  # revoke bob, revoke dave, grant
    assert all('method="post"' in f and 'name="_xsrf" value="XS"' in f for f in forms)
    assert "&lt;b&gt;" in page and "<b>" not in page
    for input_id in re.findall(r'<(?:input type="text"|select) id="([^"]+)"', page):
        assert f'<label for="{input_id}">' in page
    assert "<script" not in page
    full = render_page("dave", ["CARDIO_ECG"], [page], message="no <access>", error=True)
    assert 'role="alert"' in full and "no &lt;access&gt;" in full


def test_selection_items_read_project_first_whatever_the_callers_order():
    from xnat_bridge.datasets import check_selection
    from xnat_bridge.offload.inputs import audit_items

    selection = check_selection([{"experiment": "XNAT_E1", "project": "CARDIO_ECG"},
                                 {"resource": "R", "scan": "1", "experiment": "E2", "project": "P"}])
    assert [list(i) for i in selection] == [["project", "experiment"], ["project", "experiment", "scan", "resource"]]

    class Manifest:
        pass

    manifest = Manifest()
    manifest.selection = selection
    assert audit_items(manifest) == ["CARDIO_ECG/XNAT_E1", "P/E2/1/R"]


def test_lost_projects_are_those_of_active_servers_the_user_cannot_read_any_more():
    from hub_ext.revocation_watch import lost_projects

    servers = [ServerView("a", frozenset({"CARDIO_ECG", "NEURO_MRI"})),
               ServerView("b", frozenset({"SLEEP_EEG"}), active=False)]
    assert lost_projects(servers, {"NEURO_MRI"}) == {"CARDIO_ECG"}
    assert lost_projects(servers, {"NEURO_MRI", "CARDIO_ECG"}) == set()


def test_user_notices_are_escaped_recent_and_per_user():
    from hub_ext.revocation import NOTICE_SECONDS, add_notice, notices_html, user_notice

    class U:
        name = "notice-test-user"

    assert user_notice(U()) == "" and user_notice(None) == ""
    add_notice(U.name, "server <x> was stopped")
    shown = user_notice(U())
    assert "server &lt;x&gt; was stopped" in shown and 'role="status"' in shown
    assert notices_html([(0.0, "old")], NOTICE_SECONDS + 1) == ""
    assert user_notice(type("V", (), {"name": "someone-else"})()) == ""


def test_a_revocation_acts_on_the_hub_user_the_authenticator_maps_the_xnat_login_to(monkeypatch):
    """XNAT names the revoked account by its login; the hub's servers, audit events and Slurm
    jobs are under the hub name ``c.XnatAuthenticator.username_map`` gives it."""
    from hub_ext import owner_access
    from hub_ext.auth import XnatAuthenticator

    seen = {}

    async def fake_effects(settings, user, hub_name, project, reason, stop):
        seen.update(user=user, hub_name=hub_name, project=project)

    class Handler:
        authenticator = XnatAuthenticator(username_map={"J.Doe": "jdoe"})
        settings: dict = {}

        def find_user(self, name):
            seen["looked_up"] = name
            return f"<User {name}>"

    monkeypatch.setattr(owner_access, "revoke_effects", fake_effects)
    asyncio.run(owner_access.OwnerAccessHandler.revoke_effects(Handler(), "J.Doe", "CARDIO_ECG", "revoked"))
    assert seen == {"looked_up": "jdoe", "user": "<User jdoe>", "hub_name": "jdoe", "project": "CARDIO_ECG"}
    asyncio.run(owner_access.OwnerAccessHandler.revoke_effects(Handler(), "bob", "CARDIO_ECG", "revoked"))
    assert seen["hub_name"] == "bob"  # an unmapped login is its own hub name
