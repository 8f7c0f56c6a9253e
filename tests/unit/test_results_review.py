"""Results review, the pure parts and the stores: key split and combine, sealing on the node,
the approval rule, the hub's store and the page's rendering and escaping."""

from __future__ import annotations

import html
import json
import os

import pytest

from xnat_hpc_governance.review_page import PREVIEW_ROWS, render_page, render_preview
from hub_ext.review_store import decidable, decide
from xnat_bridge.errors import InvalidRequest, PermissionDenied
from xnat_bridge.offload import review as rv
from xnat_bridge.staging import AgeIdentity, decrypt_to_directory


def test_split_and_combine():
    secret = b"AGE-SECRET-KEY-1" + b"Q" * 58
    user, hub = rv.split_secret(secret)
    assert rv.combine_shares(user, hub) == secret
    assert user != secret and hub != secret and len(user) == len(hub) == len(secret)
    user2, hub2 = rv.split_secret(secret)
    assert hub2 != hub and user2 != user  # a fresh pad each time
    with pytest.raises(InvalidRequest):
        rv.combine_shares(user, hub[:-1])
    with pytest.raises(ValueError):
        rv.split_secret(secret, pad=b"x")


def test_wrap_unwrap_and_wrong_recipient():
    a, b = AgeIdentity.generate(), AgeIdentity.generate()
    blob = rv.wrap(b"share", a.recipient)
    assert rv.unwrap(blob, a) == b"share"
    with pytest.raises(PermissionDenied):
        rv.unwrap(blob, b)
    with pytest.raises(InvalidRequest):
        rv.unwrap("not base64!", a)


def test_identity_from_altered_share_is_refused():
    key = AgeIdentity.generate()
    user, hub = rv.split_secret(key.secret().encode())
    assert rv.identity_from_shares(user, hub).recipient == key.recipient
    with pytest.raises(PermissionDenied):
        rv.identity_from_shares(user, bytes([hub[0] ^ 0x80]) + hub[1:])


def test_preview_candidates():
    listing = [{"name": "model.pkl", "size": 10}, {"name": "metrics.json", "size": 100},
               {"name": "big.csv", "size": rv.PREVIEW_MAX_FILE + 1}, {"name": "notes.TXT", "size": 5}]
    assert [f["name"] for f in rv.preview_candidates(listing)] == ["metrics.json", "notes.TXT"]
    many = [{"name": f"f{i}.txt", "size": 1} for i in range(50)]
    assert len(rv.preview_candidates(many)) == rv.PREVIEW_MAX_FILES


def test_seal_held_results_needs_both_shares(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"acc": 0.9}')
    (out / "model.bin").write_bytes(os.urandom(4096))
    server, hub = AgeIdentity.generate(), AgeIdentity.generate()
    archive = tmp_path / "results.tar.age"
    facts, sealed = rv.seal_held_results(out, str(archive), server.recipient, hub.recipient)
    assert {f["name"] for f in facts["files"]} == {"metrics.json", "model.bin"}
    blob = json.dumps(sealed)
    assert "AGE-SECRET-KEY" not in blob  # only ciphertext leaves the job
    assert rv.unwrap(sealed["previews"]["metrics.json"], hub) == b'{"acc": 0.9}'
    assert list(sealed["previews"]) == ["metrics.json"]
    user_share = rv.unwrap(sealed["user_share"], server)
    hub_share = rv.unwrap(sealed["hub_share"], hub)
    with pytest.raises(PermissionDenied):  # the server cannot open the hub's share
        rv.unwrap(sealed["hub_share"], server)
    # each share alone is no age key; together they open the archive
    for alone in (user_share, hub_share):
        with pytest.raises(Exception):
            AgeIdentity(alone.decode("latin-1"))
    key = rv.identity_from_shares(user_share, hub_share)
    listing = decrypt_to_directory(archive, key, tmp_path / "opened")
    assert (tmp_path / "opened" / "metrics.json").read_text() == '{"acc": 0.9}'
    assert len(listing["files"]) == 2


def test_seal_held_results_with_the_jobs_log(tmp_path):
    """The job's output log is one more member of the sealed results: under the same key,
    always previewed for the reviewers (its head, whatever its size), and moved out of the
    results into the job's log.txt when approved results are opened."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"acc": 0.9}')
    (out / rv.LOG_MEMBER).write_bytes(b"epoch 1 loss 0.3\n" * (rv.PREVIEW_MAX_FILE // 8))
    server, hub = AgeIdentity.generate(), AgeIdentity.generate()
    archive = tmp_path / "results.tar.age"
    facts, sealed = rv.seal_held_results(out, str(archive), server.recipient, hub.recipient,
                                         log_member=rv.LOG_MEMBER)
    assert {f["name"] for f in facts["files"]} == {"metrics.json", rv.LOG_MEMBER}
    assert list(sealed["previews"]) == [rv.LOG_MEMBER, "metrics.json"]
    head = rv.unwrap(sealed["previews"][rv.LOG_MEMBER], hub)
    assert len(head) == rv.PREVIEW_MAX_FILE and head.startswith(b"epoch 1 loss")
    assert b"epoch 1" not in archive.read_bytes()
    job = tmp_path / "job"
    job.mkdir()
    held = rv.HeldResults(job)
    held.save_share(rv.unwrap(sealed["user_share"], server))
    files = rv.open_approved(held, {"state": "approved", "archive": str(archive)},
                             rv.unwrap(sealed["hub_share"], hub), job / "results")
    assert [f["name"] for f in files] == ["metrics.json"]
    assert sorted(p.name for p in (job / "results").iterdir()) == ["metrics.json"]
    assert (job / "log.txt").read_bytes().endswith(b"epoch 1 loss 0.3\n" * 3)
    assert held.load()["opened"] and not archive.exists()


def test_decide_rule():
    ok = {"decision": "approve", "owner": "dave", "reason": "", "time": "t"}
    assert decide(["A", "B"], {}) == {"state": "held", "pending": ["A", "B"], "reason": "", "by": ""}
    assert decide(["A", "B"], {"A": ok})["pending"] == ["B"]
    assert decide(["A", "B"], {"A": ok, "B": ok})["state"] == "approved"
    no = {"decision": "reject", "owner": "alice", "reason": "identifiable", "time": "t"}
    r = decide(["A", "B"], {"A": ok, "B": no})
    assert r["state"] == "rejected" and r["reason"] == "identifiable" and "alice" in r["by"]
    assert decidable(["A", "B"], {"B", "C"}) == ["B"]
    assert decidable(["A"], {"C"}) == []


def test_held_results_messages(tmp_path):
    with pytest.raises(rv.ResultsHeld, match="held for review by the owners of CARDIO_ECG since 2026"):
        rv.HeldResults.raise_if_closed("j000000000001", {"state": "held", "pending": ["CARDIO_ECG"],
                                                         "since": "2026-11-26T01:00:00Z"})
    with pytest.raises(rv.ResultsRejected, match="rejected by an owner.*: too small a cohort") as e:
        rv.HeldResults.raise_if_closed("j000000000001", {"state": "rejected", "reason": "too small a cohort"})
    assert e.value.status == 410
    rv.HeldResults.raise_if_closed("j000000000001", {"state": "approved"})


def test_render_preview_escapes_and_tables():
    html_text = render_preview("notes.txt", b"<script>alert(1)</script>")
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    table = render_preview("t.csv", b"a,b\n1,<i>2</i>\n")
    assert '<th scope="col">a</th>' in table and "<td>&lt;i&gt;2&lt;/i&gt;</td>" in table
    long = render_preview("t.csv", b"h\n" + b"1\n" * (PREVIEW_ROWS + 10))
    assert long.count("<tr>") == PREVIEW_ROWS and "first" in long
    pretty = render_preview("m.json", b'{"acc":1}')  # the quotes escaped (as &#34;, markupsafe's form)
    assert '"acc"' not in pretty and '"acc": 1' in html.unescape(pretty)
    assert "first" in render_preview("x.txt", b"y" * 30000)


def test_render_page_forms_only_for_owned_projects():
    job = {"user": "bob", "job": "j000000000001", "dataset": "d", "dataset_version": 1,
           "projects": ["A", "B"], "manifest_sha256": "m" * 64, "script_sha256": "s" * 64,
           "slurm_job_id": "12", "results": [{"name": "<x>.txt", "size": 2048, "sha256": "ab"}],
           "since": "t", "state": "held", "reason": "", "by": "", "decided": "", "pending": ["A", "B"],
           "decisions": {}}
    page = render_page("dave", ["A"], {"A": {"by": "dave", "time": "t"}}, [job],
                       {("bob", "j000000000001"): {"<x>.txt": b"hi"}}, "XSRF1")
    assert 'name="_xsrf" value="XSRF1"' in page and "Approve for A" in page
    assert "&lt;x&gt;.txt" in page and "2.0 KiB" in page
    assert "1 other project(s)" in page and "Approve for B" not in page
    other = render_page("carol", ["C"], {}, [job], {}, "XSRF1")
    assert "Approve" not in other


def test_rest_job_json_carries_the_review_of_done_jobs_only():
    from xnat_bridge.serverext.handlers import _review

    class Manager:
        asked: list = []

        def review(self, job_id):
            self.asked.append(job_id)
            return {"state": "held", "reason": "", "since": "t", "projects": ["A"], "pending": ["A"]}

    m = Manager()
    assert _review(m, {"id": "j1", "state": "done"})["review"]["state"] == "held"
    assert _review(m, {"id": "j2", "state": "running"})["review"] is None
    assert m.asked == ["j1"]
    assert _review(object(), {"id": "j3", "state": "done"})["review"] is None
