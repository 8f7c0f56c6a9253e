"""Pure decisions of a revocation (hub_ext.revocation) and the access page's form
parsing and rendering (xnat_hpc_governance.owner_access), without infrastructure."""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest

from xnat_hpc_governance.owner_access import AccessChange, access_section_html, parse_change, render_page
from hub_ext.revocation import (
    OwnerAccess,
    ServerView,
    SlurmJob,
    SubmittedJob,
    apply_revocation,
    bundle_files_to_remove,
    cancel_decision,
    ledger_jobs_hit,
    parse_squeue,
    servers_hit,
    wipe_bundles,
)
from xnat_bridge.errors import InvalidRequest

SHA = "a" * 64
OTHER_SHA = "b" * 64


def test_servers_hit_are_the_active_ones_holding_the_project():
    servers = [ServerView("a", frozenset({"CARDIO_ECG", "NEURO_MRI"})),
               ServerView("b", frozenset({"NEURO_MRI"})),
               ServerView("c", frozenset({"CARDIO_ECG"}), active=False),
               ServerView("", frozenset({"CARDIO_ECG"}))]
    assert [s.name for s in servers_hit(servers, "CARDIO_ECG")] == ["a", ""]
    assert servers_hit(servers, "SLEEP_EEG") == []


def ledger_row(user="bob", slurm="123", projects=("CARDIO_ECG",), job="j000000000001", created="t1", **kw):
    return {"user": user, "job": job, "server": "s", "projects": list(projects), "slurm_job_id": slurm,
            "manifest_sha256": SHA, "created": created, "state": "running", **kw}


def test_ledger_jobs_hit_only_the_users_jobs_of_servers_scoped_to_the_project():
    rows = [ledger_row(slurm="4", projects=("NEURO_MRI", "CARDIO_ECG"), job="j000000000004", created="t4"),
            ledger_row(slurm="1", created="t1"),
            ledger_row(slurm="2", projects=("NEURO_MRI",), job="j000000000002", created="t2"),
            ledger_row(user="alice", slurm="3", job="j000000000003", created="t3"),
            ledger_row(slurm="", job="j000000000005", created="t5"),  # still staging: no Slurm id yet
            ledger_row(slurm="1; rm", job="j000000000006", created="t6")]
    hit = ledger_jobs_hit(rows, "bob", "CARDIO_ECG")
    assert [(j.job, j.slurm_id) for j in hit] == [("j000000000001", "1"), ("j000000000004", "4"),
                                                 ("j000000000005", ""), ("j000000000006", "")]
    assert hit[0] == SubmittedJob("bob", "1", frozenset({"CARDIO_ECG"}), SHA, "s", "t1", "j000000000001")
    assert [j.slurm_id for j in ledger_jobs_hit(rows, "alice", "CARDIO_ECG")] == ["3"]
    assert ledger_jobs_hit(rows, "bob", "SLEEP_EEG") == []


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


def _run_revocation(on_revoke, servers, jobs=()):
    stopped, audited = [], []

    async def stop(name):
        stopped.append(name)

    async def audit(user, action, outcome, *, items=(), detail="", **kw):
        audited.append((user, action, outcome, list(items), detail))

    report = asyncio.run(apply_revocation(
        user="bob", project="CARDIO_ECG", reason="access to CARDIO_ECG revoked by dave", servers=servers,
        jobs=list(jobs), settings=OwnerAccess(on_revoke=on_revoke), staging_root="", stop=stop, audit=audit))
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
    from xnat_hpc_governance.revocation_watch import lost_projects

    servers = [ServerView("a", frozenset({"CARDIO_ECG", "NEURO_MRI"})),
               ServerView("b", frozenset({"SLEEP_EEG"}), active=False)]
    assert lost_projects(servers, {"NEURO_MRI"}) == {"CARDIO_ECG"}
    assert lost_projects(servers, {"NEURO_MRI", "CARDIO_ECG"}) == set()


def test_user_notices_are_escaped_recent_and_per_user(tmp_path):
    """What one process writes on the board (the service's revocations), the hub's pages read
    (each from its own connection to the store of the hub's configuration)."""
    from traitlets.config import Config

    from hub_ext.review_store import ReviewStore
    from hub_ext.revocation import NOTICE_SECONDS, notices_html, user_notice

    c = Config()
    c.ReviewStore.path = str(tmp_path / "review" / "review.db")

    class U:
        name = "notice-test-user"
        settings = {"config": c}

    assert user_notice(U()) == "" and user_notice(None) == ""
    ReviewStore(config=c).add_notice(U.name, "server <x> was stopped")
    shown = user_notice(U())
    assert "server &lt;x&gt; was stopped" in shown and 'role="status"' in shown
    assert notices_html([(0.0, "old")], NOTICE_SECONDS + 1) == ""
    assert user_notice(type("V", (), {"name": "someone-else", "settings": {"config": c}})()) == ""
    for i in range(7):  # the last five are kept
        ReviewStore(config=c).add_notice(U.name, f"notice {i}")
    shown = user_notice(U())
    assert "notice 6" in shown and "notice 2" in shown and "notice 1" not in shown and "&lt;x&gt;" not in shown


def test_a_revocation_acts_on_the_hub_user_the_authenticator_maps_the_xnat_login_to():
    """XNAT names the revoked account by its login; the hub's servers, audit events and Slurm
    jobs are under the hub name ``c.XnatAuthenticator.username_map`` gives it (the access page
    of the governance service, which reads the hub's configuration)."""
    from traitlets.config import Config

    from hub_ext.revocation import RevocationReport
    from xnat_hpc_governance.owner_pages import OwnerAccessPage, hub_name_of

    seen = {}

    class Watch:
        async def revoke(self, user, hub_name, project, reason, stop):
            seen.update(user=user, hub_name=hub_name, project=project)
            return RevocationReport()

    class Hub:  # the hub's REST API, as governance reads it
        async def user(self, name):
            seen["looked_up"] = name
            return f"<User {name}>"

    config = Config()
    config.XnatAuthenticator.username_map = {"J.Doe": "jdoe"}

    class Page:
        hub = Hub()
        settings = {"hub_name": hub_name_of(config), "watch": Watch()}

    asyncio.run(OwnerAccessPage.revoke_effects(Page(), "J.Doe", "CARDIO_ECG", "revoked"))
    assert seen == {"looked_up": "jdoe", "user": "<User jdoe>", "hub_name": "jdoe", "project": "CARDIO_ECG"}
    asyncio.run(OwnerAccessPage.revoke_effects(Page(), "bob", "CARDIO_ECG", "revoked"))
    assert seen["hub_name"] == "bob"  # an unmapped login is its own hub name
    asyncio.run(OwnerAccessPage.revoke_effects(Page(), "Jane.Doe", "CARDIO_ECG", "revoked"))
    assert seen["hub_name"].startswith("jane.doe--")  # XNAT's capitals: a derived name, never folded


# -- nothing blocks a revocation, nothing holds it up ---------------------------------------

def test_wipe_bundles_skips_a_planted_fifo_and_removes_the_real_bundle(tmp_path):
    """The finding of issue 19: a FIFO under a sidecar's name blocked the hub's open for
    ever. Run in a thread with a deadline; a regression is released by opening the write end."""
    import concurrent.futures

    user = "no-such-account-xyz"
    udir = tmp_path / "staging" / user
    udir.mkdir(parents=True)
    fifo = udir / "000000000000-000000000000.json"
    os.mkfifo(fifo)
    _bundle(udir, "0123456789ab-0123456789ab", SHA)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(wipe_bundles, str(tmp_path / "staging"), user, {SHA})
    try:
        removed = future.result(timeout=5)
    except concurrent.futures.TimeoutError:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("wipe_bundles blocked on a FIFO")
    finally:
        pool.shutdown(wait=False)
    assert sorted(removed) == ["0123456789ab-0123456789ab.json", "0123456789ab-0123456789ab.tar.age"]
    assert [p.name for p in udir.iterdir()] == [fifo.name]


def test_wipe_bundles_leaves_a_directory_of_another_account(tmp_path):
    user = "no-such-account-xyz"  # no Unix account: the directory must be the hub's own
    udir = tmp_path / "staging" / user
    udir.mkdir(parents=True)
    _bundle(udir, "0123456789ab-0123456789ab", SHA)
    if os.geteuid() != 0:
        pytest.skip("needs root to give the directory to another account")
    os.chown(udir, 65534, 65534)
    assert wipe_bundles(str(tmp_path / "staging"), user, {SHA}) == []
    assert len(list(udir.iterdir())) == 2


def test_a_report_lists_what_is_pending_and_a_snapshot_does_not_change():
    from hub_ext.revocation import RevocationReport

    report = RevocationReport(stopped=["a"], pending=["stopping server b"])
    snap = report.snapshot()
    report.pending.clear()
    report.stopped.append("b")
    assert snap.stopped == ["a"] and snap.pending == ["stopping server b"]
    assert "still pending, going on in the background" in snap.summary()
    assert "stopping server b" in snap.summary()
    assert "pending" not in report.summary()


def test_within_bound_returns_at_the_bound_and_the_work_goes_on():
    from hub_ext.revocation import RevocationReport, within_bound

    async def main():
        release = asyncio.Event()
        report = RevocationReport()
        keep = set()

        async def work():
            report.stopped.append("fast")
            report.pending.append("stopping server slow")
            await release.wait()
            report.pending.remove("stopping server slow")
            report.stopped.append("slow")
            return report

        loop = asyncio.get_running_loop()
        began = loop.time()
        early = await within_bound(work(), report, 0.2, keep=keep, what="test")
        assert loop.time() - began < 5
        assert early.stopped == ["fast"] and early.pending == ["stopping server slow"]
        assert len(keep) == 1  # a reference is kept while it runs
        release.set()
        await asyncio.gather(*keep)
        assert report.stopped == ["fast", "slow"] and not report.pending and not keep
        done = await within_bound(asyncio.sleep(0, result=report), report, 0.2, keep=keep, what="t2")
        assert done is report

    asyncio.run(main())


def test_apply_revocation_marks_a_hanging_stop_pending():
    from hub_ext.revocation import RevocationReport, within_bound

    async def main():
        never = asyncio.Event()

        async def stop(name):
            await never.wait()

        async def audit(*a, **kw):
            pass

        report = RevocationReport()
        keep = set()
        work = apply_revocation(user="bob", project="P", reason="r", servers=[ServerView("s", frozenset({"P"}))],
                                jobs=[], settings=OwnerAccess(), staging_root="", stop=stop, audit=audit,
                                report=report)
        early = await within_bound(work, report, 0.2, keep=keep, what="test")
        assert early.pending == ["stopping server s"] and early.stopped == []
        never.set()
        await asyncio.gather(*keep)
        assert report.stopped == ["s"] and report.pending == []

    asyncio.run(main())


def test_revoke_timeout_is_a_positive_number_of_seconds():
    from traitlets import TraitError

    assert OwnerAccess().revoke_timeout == 5.0
    assert OwnerAccess(revoke_timeout=0.5).revoke_timeout == 0.5
    with pytest.raises(TraitError, match="more than 0 seconds"):
        OwnerAccess(revoke_timeout=0)


def test_handled_servers_are_forgotten_once_stopped_or_restarted():
    from xnat_hpc_governance.revocation_watch import handled_keys, still_running

    servers = [ServerView("a", frozenset({"P"}), started="t1"), ServerView("b", frozenset({"P"}), started="t1")]
    handled = handled_keys("bob", servers, ["a", "b"], "P")
    assert handled == {("bob", "a", "t1", "P"), ("bob", "b", "t1", "P")}
    # a still runs as started at t1; b was restarted (t2)
    assert still_running(handled, {("bob", "a", "t1"), ("bob", "b", "t2")}) == {("bob", "a", "t1", "P")}
    assert still_running(handled, set()) == set()


def test_the_service_account_is_read_from_the_most_specific_spawner_section():
    from traitlets.config import Config

    from xnat_hpc_governance.revocation_watch import service_account_config

    class XnatScopedSpawner:
        pass

    class XnatLocalSpawner(XnatScopedSpawner):
        pass

    c = Config()
    assert service_account_config(c, XnatLocalSpawner) == ("", "")
    assert "XnatScopedSpawner" not in c  # reading adds no section
    c.XnatScopedSpawner.xnat_service_user = "jupyterhub"
    c.XnatScopedSpawner.xnat_service_password_file = "/etc/p"
    assert service_account_config(c, None) == ("jupyterhub", "/etc/p")
    c.XnatLocalSpawner.xnat_service_user = "hubsvc"
    assert service_account_config(c, XnatLocalSpawner) == ("hubsvc", "/etc/p")
    assert service_account_config(None) == ("", "")


def test_the_service_password_file_must_be_private(tmp_path):
    from xnat_hpc_governance.revocation_watch import read_service_password
    from xnat_bridge.errors import AuthenticationFailed, PermissionDenied

    path = tmp_path / "pw"
    path.write_text("  s3cret \n")
    os.chmod(path, 0o600)
    assert read_service_password(str(path)) == "s3cret"
    os.chmod(path, 0o644)
    with pytest.raises(PermissionDenied, match="xnat_service_password_file .* chmod 600"):
        read_service_password(str(path))
    path.write_text("\n")
    os.chmod(path, 0o600)
    with pytest.raises(AuthenticationFailed, match="empty"):
        read_service_password(str(path))
