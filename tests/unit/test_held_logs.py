"""Held jobs' logs are held with their results (issue 19, finding 4), without Slurm: the real
:func:`~xnat_bridge.offload.worker.run_training` on a real staged bundle (the scheduler's key
hand-over and its event stream replaced by the test), the runner's filter of what reaches
``log.txt``, the sealed log's release at opening and deletion at rejection, and what
:meth:`OffloadManager.logs` answers for a held job."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from xnat_bridge.errors import Conflict
from xnat_bridge.offload import review as rv
from xnat_bridge.offload import worker as worker_mod
from xnat_bridge.offload.bundles import BundleCache
from xnat_bridge.offload.inputs import resolve_script
from xnat_bridge.offload.runner import JobEnded, JobRun, keep_log_event
from xnat_bridge.staging import AgeIdentity, decrypt_to_directory

DATA = b"ECG-ROW patient=P0042 lead=II " * 40
ROW = "ECG-ROW patient=P0042"
#: prints data rows on stdout and stderr, through the file objects and the raw descriptors,
#: from a child process too, and writes a result file
SCRIPT = r"""
import os, subprocess, sys
from pathlib import Path
data = next(p for p in Path(os.environ["DATASET_DIR"]).rglob("*") if p.is_file()).read_bytes()
row = data[:21].decode()
print(row, "stdout")
print(row, "stderr", file=sys.stderr)
sys.stdout.flush(); sys.stderr.flush()
os.write(1, (row + " fd1\n").encode()); os.write(2, (row + " fd2\n").encode())
subprocess.run(["sh", "-c", f'echo "{row} child"; echo "{row} child-err" >&2'], check=True)
(Path(os.environ["OUTPUT_DIR"]) / "metrics.json").write_text('{"auc": 0.91}')
sys.exit(EXIT)
"""


def _manifest():
    f = SimpleNamespace(name="S1/E1/ecg.csv", size=len(DATA), sha256=hashlib.sha256(DATA).hexdigest())
    return SimpleNamespace(name="ecg", version=1, digest="d" * 64, xnat_host="http://xnat", total_size=len(DATA),
                           selection=[{"project": "CARDIO_ECG"}], files=[f])


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A staged bundle of *SCRIPT* (exit code per test), the key hand-over and the event
    stream of the scheduler replaced; returns a runner of run_training and the sent events."""
    events: list[tuple[str, str, str]] = []
    base = tmp_path / "node"
    base.mkdir()
    os.chmod(base, 0o1777)
    monkeypatch.delenv("XNAT_HPC_JOB_DIR", raising=False)
    monkeypatch.setenv("SLURM_TMPDIR", str(base))
    monkeypatch.setattr(worker_mod, "_send_log", lambda job, text, kind=worker_mod.OUTPUT:
                        events.append((job, text, kind)))
    staging = tmp_path / "staging"
    staging.mkdir()
    umask = os.umask(0o022)  # run_training sets the process's umask (a worker's own process)
    os.umask(umask)

    def run(exit_code: int = 0, review: AgeIdentity | None = None, script: str = SCRIPT):
        root = tmp_path / f"root{len(list(tmp_path.glob('root*')))}"
        root.mkdir()
        (root / "train.py").write_text(script.replace("EXIT", str(exit_code)))
        scr = resolve_script("train.py", [root])
        cache = BundleCache(str(staging), "bob", lambda *a, **kw: None)
        bundle = cache.obtain("j1", _manifest(), scr, lambda f: io.BytesIO(DATA))
        monkeypatch.setattr(worker_mod, "_call_scheduler",
                            lambda op, **kw: {"identity": bundle.identity.secret()})
        result_key = AgeIdentity.generate()
        results = staging / "bob" / f"results-{os.urandom(4).hex()}.tar.age"
        out = worker_mod.run_training("j000000000001", str(bundle.info.path), bundle.info.manifest_sha256,
                                      scr.member, str(results), result_key.recipient, 1,
                                      bundle.info.contents_sha256,
                                      review_recipient=review.recipient if review else None)
        cache.close()
        return out, result_key, results

    yield SimpleNamespace(run=run, events=events, base=base)
    os.umask(umask)


def test_a_held_job_streams_no_output_and_seals_it_with_its_results(node, capfd, tmp_path):
    hub = AgeIdentity.generate()
    result, server, archive = node.run(review=hub)
    assert result["exit_code"] == 0 and result["tail"] == []
    sent = "".join(text for _job, text, _kind in node.events)
    assert ROW not in sent and {kind for *_, kind in node.events} == {worker_mod.STATUS}
    assert "held for review" in sent and "6 lines" in sent  # counts only, no output
    # the script's output never reached the worker's own stdout/stderr (Slurm's --output)
    captured = capfd.readouterr()
    assert ROW not in captured.out and ROW not in captured.err
    # nothing left on the node; the archive holds the results and the log, sealed
    assert list(node.base.iterdir()) == []
    assert ROW.encode() not in archive.read_bytes()
    names = {f["name"] for f in result["results"]["files"]}
    assert names == {"metrics.json", rv.LOG_MEMBER}
    sealed = result["review"]
    preview = rv.unwrap(sealed["previews"][rv.LOG_MEMBER], hub).decode()  # the reviewers read it
    for where in ("stdout", "stderr", "fd1", "fd2", "child", "child-err"):
        assert f"{ROW} {where}\n" in preview
    key = rv.identity_from_shares(rv.unwrap(sealed["user_share"], server), rv.unwrap(sealed["hub_share"], hub))
    decrypt_to_directory(archive, key, tmp_path / "opened")
    assert (tmp_path / "opened" / rv.LOG_MEMBER).read_text() == preview


def test_a_failed_held_job_returns_no_tail_and_deletes_its_output(node, capfd):
    result, _server, archive = node.run(exit_code=3, review=AgeIdentity.generate())
    assert result["exit_code"] == 3 and result["tail"] == [] and result["results"] is None
    assert "review" not in result and not archive.exists()
    sent = "".join(text for _job, text, _kind in node.events)
    assert ROW not in sent and "exit code 3" in sent and "deleted" in sent
    assert ROW not in "".join(capfd.readouterr())
    assert list(node.base.iterdir()) == []


def test_a_job_that_is_not_held_streams_as_before(node, capfd):
    result, _server, archive = node.run(exit_code=0)
    sent = "".join(text for _job, text, kind in node.events if kind == worker_mod.OUTPUT)
    assert f"{ROW} stdout\n" in sent and f"{ROW} child-err\n" in sent
    assert any(ROW in line for line in result["tail"]) and "review" not in result
    assert {f["name"] for f in result["results"]["files"]} == {"metrics.json"}
    assert ROW not in "".join(capfd.readouterr())  # the pipe, never the worker's stdout


def test_the_log_member_is_the_jobs_name(node):
    spoof = SCRIPT.replace('"metrics.json"', f'"{rv.LOG_MEMBER}"')
    with pytest.raises(Conflict, match="reserved for the job's output log"):
        node.run(review=AgeIdentity.generate(), script=spoof)
    assert list(node.base.iterdir()) == []


def test_held_log_without_o_tmpfile_uses_a_private_file(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "output").mkdir(parents=True)
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY)
    out_fd = os.open(work / "output", os.O_RDONLY | os.O_DIRECTORY)
    try:
        monkeypatch.delattr(os, "O_TMPFILE")
        sink = worker_mod.HeldLog(fd)
        assert not sink.anonymous and oct((work / worker_mod.HELD_LOG_FILE).stat().st_mode & 0o777) == "0o600"
        sink.write("a\nb\n")
        sink.place(out_fd, rv.LOG_MEMBER)
        sink.close()
        assert (work / "output" / rv.LOG_MEMBER).read_text() == "a\nb\n" and (sink.lines, sink.bytes) == (2, 4)
    finally:
        os.close(fd)
        os.close(out_fd)


def test_held_status_lines_carry_no_output():
    assert "held for review" in worker_mod.held_status("start")
    assert "(12 lines, 300 bytes) is sealed" in worker_mod.held_status("end", 12, 300, 0)
    assert "exit code 2" in worker_mod.held_status("end", 1, 5, 2)


# -- the server's side -------------------------------------------------------------------
def test_the_runner_keeps_only_status_lines_of_a_held_job():
    assert keep_log_event({"text": "x", "kind": "output"}, held=False)
    assert keep_log_event({"text": "x"}, held=False)  # an older node: as before
    assert keep_log_event({"text": "x", "kind": "status"}, held=True)
    assert not keep_log_event({"text": "x", "kind": "output"}, held=True)
    assert not keep_log_event({"text": "x"}, held=True)  # a node that does not say: not kept


def _run(tmp_path, review):
    run = JobRun.__new__(JobRun)  # only the log and the collect step: no thread, no context
    run.id, run.job_dir, run.review = "j000000000001", tmp_path, review
    import threading

    run._log_lock = threading.Lock()
    return run


def test_a_held_run_writes_no_output_to_its_log_and_reports_no_tail(tmp_path):
    run = _run(tmp_path, {"recipient": "age1x", "review": ["CARDIO_ECG"], "client": None})
    run._log_event((0, {"job": run.id, "text": f"{ROW} leaked\n", "kind": "output"}))
    run._log_event((0, {"job": run.id, "text": "[xnat-hpc] held\n", "kind": "status"}))
    assert (tmp_path / "log.txt").read_text() == "[xnat-hpc] held\n"
    with pytest.raises(JobEnded) as e:
        run._collect({"exit_code": 1, "tail": [f"{ROW} stdout\n"]})
    assert ROW not in e.value.message and "withheld" in e.value.message and e.value.exit_code == 1
    # a node that did not seal results of a held job: nothing is released
    with pytest.raises(JobEnded, match="not sealed for review"):
        run._collect({"exit_code": 0, "tail": [], "results": {"files": []}})
    free = _run(tmp_path / "free", None)
    (tmp_path / "free").mkdir()
    free._log_event((0, {"job": free.id, "text": "row\n", "kind": "output"}))
    with pytest.raises(JobEnded, match="last output:\nrow"):
        free._collect({"exit_code": 1, "tail": ["row\n"]})


def test_log_notes_follow_the_review_state(tmp_path):
    assert "held for review with its results" in rv.HeldResults.log_note({"state": "held", "pending": ["A"]})
    assert "owners of A" in rv.HeldResults.log_note({"state": "held", "pending": ["A"]})
    assert "approved" in rv.HeldResults.log_note({"state": "approved"})
    note = rv.HeldResults.log_note({"state": "rejected", "reason": "rows of\nsingle patients"})
    assert "rows of single patients" in note and "deleted" in note and note.count("\n") == 1
    assert rv.HeldResults.log_note({"state": "approved", "opened": True}) is None
    held = rv.HeldResults(tmp_path)
    held.save({"state": "held", "pending": ["A"]})
    (tmp_path / "log.txt").write_text("[xnat-hpc] started\n")
    for _ in range(3):  # once per state
        held.note_log()
    held.save({"state": "rejected", "reason": "no"})
    held.note_log()
    held.note_log()
    lines = (tmp_path / "log.txt").read_text().splitlines()
    assert len(lines) == 3 and "held for review" in lines[1] and "rejected" in lines[2]


def _sealed_job(tmp_path: Path, output: str):
    """A held job as the runner leaves it: the sealed archive (results + log member), the
    server's share, review.json, and a log.txt of status lines."""
    out = tmp_path / "node-output"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text('{"auc": 0.91}')
    (out / rv.LOG_MEMBER).write_text(output)
    server, hub = AgeIdentity.generate(), AgeIdentity.generate()
    archive = tmp_path / "staging" / "results.tar.age"
    archive.parent.mkdir()
    facts, sealed = rv.seal_held_results(out, str(archive), server.recipient, hub.recipient,
                                         log_member=rv.LOG_MEMBER)
    job = tmp_path / "ws" / "jobs" / "j000000000001"
    job.mkdir(parents=True)
    held = rv.HeldResults(job)
    held.save_share(rv.unwrap(sealed["user_share"], server))
    held.save({"state": "held", "pending": ["CARDIO_ECG"], "projects": ["CARDIO_ECG"], "archive": str(archive)})
    (job / "log.txt").write_text("[xnat-hpc] this job's results are held for review\n")
    return SimpleNamespace(held=held, job=job, archive=archive, hub_share=rv.unwrap(sealed["hub_share"], hub),
                           facts=facts)


def test_opening_approved_results_releases_the_log_and_a_rejection_deletes_it(tmp_path):
    output = "".join(f"{ROW} line {i}\n" for i in range(5000))  # far above the preview size
    job = _sealed_job(tmp_path / "a", output)
    assert rv.LOG_MEMBER in {f["name"] for f in job.facts["files"]}
    state = {**job.held.load(), "state": "approved"}
    files = rv.open_approved(job.held, state, job.hub_share, job.job / "results")
    assert [f["name"] for f in files] == ["metrics.json"]
    assert not (job.job / "results" / rv.LOG_MEMBER).exists()
    log = (job.job / "log.txt").read_text()
    assert log.startswith("[xnat-hpc] this job's results are held") and log.endswith(output)
    assert not job.archive.exists() and rv.HeldResults.log_note(job.held.load()) is None
    # rejected: the log goes with the archive
    gone = _sealed_job(tmp_path / "r", output)
    gone.held.forget_secrets(str(gone.archive))
    gone.held.save({**gone.held.load(), "state": "rejected", "reason": "rows"})
    gone.held.note_log()
    assert not gone.archive.exists() and ROW not in (gone.job / "log.txt").read_text()


def test_manager_logs_of_a_held_job_answer_where_the_output_is(tmp_path, monkeypatch):
    from xnat_bridge.audit import MemorySink
    from xnat_bridge.offload import OffloadManager, OffloadPolicy
    from xnat_bridge.offload.registry import JobRecord, JobState, now_iso

    monkeypatch.delenv("JUPYTERHUB_API_URL", raising=False)
    staging = tmp_path / "staging-root"
    staging.mkdir()
    m = OffloadManager(workspace=tmp_path / "ws", policy=OffloadPolicy(staging_dir=str(staging), exclusive=False),
                       sink=MemorySink())
    try:
        now = now_iso()
        rec = m.registry.add(JobRecord("j000000000001", "bob", "ecg", 1, "a" * 64, "train.py", "b" * 64, {},
                                       JobState.DONE, "7", now, now, now, now, 0, "done, held", None), "h:1:x")
        job = _sealed_job(tmp_path, f"{ROW} stdout\n")
        os.replace(job.job, m.job_dir(rec.id))  # the manager's job directory
        text, offset = m.logs(rec.id)
        assert ROW not in text and "held for review with its results" in text and "CARDIO_ECG" in text
        assert m.logs(rec.id, offset) == ("", offset)  # a reader that polls sees it once
        held = rv.HeldResults(m.job_dir(rec.id))
        rv.open_approved(held, {**held.load(), "state": "approved"}, job.hub_share, m.job_dir(rec.id) / "results")
        more, _ = m.logs(rec.id, offset)
        assert f"{ROW} stdout\n" in more  # released with the results
        assert {f["name"] for f in m.results(rec.id)["files"]} == {"metrics.json"}
    finally:
        m.close()

