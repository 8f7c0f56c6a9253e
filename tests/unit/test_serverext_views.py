"""Pure helpers of the REST API (``xnat_bridge.serverext.views``): input checks and shapes."""

from __future__ import annotations

import pytest

from xnat_bridge.errors import InvalidRequest, NotFound
from xnat_bridge.offload.inputs import check_client_token, resolve_script
from xnat_bridge.serverext import views


def test_int_and_page_args():
    assert views.page_args(None, None) == (0, 100)
    assert views.page_args("20", "500") == (20, 500)
    for offset, limit, word in (("-1", None, "offset"), (None, "0", "limit"), (None, "501", "limit"),
                                ("1.5", None, "offset")):
        with pytest.raises(InvalidRequest, match=word):
            views.page_args(offset, limit)


def test_job_ids():
    assert views.check_job_id("j3fa94c0d12ab") == "j3fa94c0d12ab"
    for bad in ("", "j3FA94C0D12AB", "j3fa94c0d12a", "../j3fa94c0d12ab"):
        with pytest.raises(NotFound):
            views.check_job_id(bad)


def test_resolve_script(tmp_path):
    # the REST API's script rules, now the one resolver of offload.inputs (root dir = the only base)
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "train.py").write_text("x = 1\n")
    (root / "inner.py").symlink_to(root / "sub" / "train.py")
    outside = tmp_path / "evil.py"
    outside.write_text("x = 1\n")
    (root / "out.py").symlink_to(outside)
    (root / "sub" / "up").symlink_to(tmp_path)
    assert resolve_script("sub/train.py", [root]).source == root / "sub" / "train.py"
    assert resolve_script("inner.py", [root]).source == root / "sub" / "train.py"  # a link inside: fine
    for bad, words in (("", "relative"), ("/etc/x.py", "absolute"), ("~/x.py", "absolute"),
                       ("sub/../../evil.py", "'..'"), ("out.py", "outside"), ("sub/up/evil.py", "outside"),
                       ("sub", "not a Python file"), ("nope.py", "does not exist"), ("a\x00.py", "NUL"),
                       (None, "relative")):
        with pytest.raises(InvalidRequest, match=words):
            resolve_script(bad, [root])


def test_list_scripts_depth_limit_and_skips(tmp_path):
    root = tmp_path
    for rel in ("a.py", "x/b.py", "x/y/z/c.py", "x/y/z/w/too_deep.py", ".git/hook.py",
                "__pycache__/m.py", "ws/jobs/r.py", "x/.hidden.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("pass\n")
    got = [s["path"] for s in views.list_scripts(root, skip=(root / "ws",))]
    assert got == ["a.py", "x/b.py", "x/y/z/c.py"]
    assert len(views.list_scripts(root, limit=2)) == 2


def test_parse_job_body():
    ok = views.parse_job_body({"dataset": "d", "script": "t.py", "memory": "4G", "walltime": 60,
                               "cpus": 2, "client_token": "abc-1"})
    assert ok == {"dataset": "d", "script": "t.py", "memory": "4G", "walltime": 60, "cpus": 2,
                  "client_token": "abc-1"}
    for body, words in (([], "JSON object"), ({"script": "t.py"}, "needs a dataset"),
                        ({"dataset": "d", "script": "t.py", "cpus": True}, "cpus must be an integer"),
                        ({"dataset": "d", "script": "t.py", "memory": 1.5}, "memory must be"),
                        ({"dataset": "d", "script": "t.py", "x": 1}, "unknown fields")):
        with pytest.raises(InvalidRequest, match=words):
            views.parse_job_body(body)
    # the client_token's syntax is the manager's (OffloadManager.submit_once) one check
    with pytest.raises(InvalidRequest, match="client_token"):
        check_client_token(views.parse_job_body({"dataset": "d", "script": "t.py", "client_token": "a b"})
                           ["client_token"])


def test_display_path(tmp_path):
    root = tmp_path / "home"
    (root / "xnat-hpc" / "jobs").mkdir(parents=True)
    assert views.display_path(root / "xnat-hpc" / "jobs", root) == "xnat-hpc/jobs"
    assert views.display_path(tmp_path / "elsewhere", root) == str(tmp_path / "elsewhere")
    assert views.display_path(tmp_path / "home2", root) == str(tmp_path / "home2")  # not a prefix match


def _record(job_id: str, state: str):
    from xnat_bridge.offload.registry import JobRecord, JobState

    return JobRecord(id=job_id, user="alice", dataset="d", dataset_version=1, manifest_sha256="",
                     script="train.py", script_sha256="0" * 64, resources={}, state=JobState(state),
                     slurm_job_id=None, created="2026-11-26T00:00:00.000Z", updated="2026-11-26T00:00:00.000Z",
                     started=None, ended=None, exit_code=None, message="", client_token=None)


def test_job_json_carries_progress_only_while_staging():
    live = {"phase": "staging", "bytes_done": 5, "bytes_total": 10, "files_done": 1, "files_total": 2,
            "rate": 2.0, "eta_s": 2.5}
    staging, running = _record("j000000000001", "staging"), _record("j000000000002", "running")
    assert views.job_json(staging, live)["progress"] == live
    assert views.job_json(staging)["progress"] is None
    assert views.job_json(running, live)["progress"] is None  # a stale tracker never shows
    asked = []

    def progress_of(job_id):
        asked.append(job_id)
        return live

    out = views.jobs_json([staging, running], progress_of)
    assert [j["progress"] for j in out["items"]] == [live, None]
    assert asked == ["j000000000001"]  # only staging jobs are asked
