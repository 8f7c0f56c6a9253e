"""Stops and outages (issue 25), in-process: a submission while Slurm's controller does not
answer is refused at once (503) before anything is recorded, staged or waited for; a local
server's stop signals reach the server inside its sandbox, not bubblewrap."""

from __future__ import annotations

import subprocess

import pytest

from xnat_bridge import procs, slurm
from xnat_bridge.errors import CommandFailed, SlurmError, SlurmUnavailable
from xnat_bridge.offload import OffloadManager, OffloadPolicy


def test_scontrol_ping_is_read_for_an_up_controller_only():
    assert slurm.ping_argv() == ["scontrol", "ping"]
    assert slurm.parse_ping("Slurmctld(primary) at vm is UP\n")
    assert slurm.parse_ping("Slurmctld(primary) at a is DOWN\nSlurmctld(backup) at b is UP\n")
    assert not slurm.parse_ping("Slurmctld(primary) at vm is DOWN\n*****\n** RESTORE SLURMCTLD DAEMON **\n")
    assert not slurm.parse_ping("") and not slurm.parse_ping("is UPPER")


def test_controller_up_asks_once_and_a_failing_command_means_down(monkeypatch):
    answers = iter([subprocess.CompletedProcess(["scontrol"], 0, "Slurmctld(primary) at vm is UP\n", ""),
                    subprocess.CompletedProcess(["scontrol"], 1, "Slurmctld(primary) at vm is DOWN\n", ""),
                    CommandFailed(["scontrol", "ping"], 127, "", "not found")])
    calls = []

    def run(cmd, **kw):
        calls.append((list(cmd), kw.get("check")))
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(procs, "run", run)
    assert [slurm.controller_up(), slurm.controller_up(), slurm.controller_up()] == [True, False, False]
    assert calls == [(["scontrol", "ping"], False)] * 3


def test_a_submission_while_slurm_is_down_is_refused_before_anything_is_recorded(tmp_path):
    events = []
    sink = type("Sink", (), {"emit": lambda self, e: events.append(e)})()
    m = OffloadManager(workspace=tmp_path / "ws", policy=OffloadPolicy(staging_dir=str(tmp_path / "st")),
                       sink=sink, slurm_check=lambda: False)
    try:
        with pytest.raises(SlurmUnavailable, match="Slurm is not answering") as refused:
            m.submit("t1", "train.py")
        assert refused.value.status == 503 and refused.value.reason == "slurm_unavailable"
        assert isinstance(refused.value, SlurmError)  # callers that catch Slurm's errors still do
        assert m.list() == [] and not (tmp_path / "st").exists()
        assert [(e.action, e.outcome) for e in events] == [("submit", "failed")]
    finally:
        m.close()


def test_the_default_check_is_slurms_and_a_fake_cluster_is_not_asked(tmp_path):
    assert OffloadManager(workspace=tmp_path / "a").slurm_check is slurm.controller_up
    assert OffloadManager(workspace=tmp_path / "b", cluster_factory=lambda **kw: None).slurm_check is None


def test_the_server_in_a_sandbox_is_found_below_bubblewraps_init(tmp_path):
    """JupyterHub's stop signals go to the server inside bwrap's pid namespace (the children of
    the sandbox's init), never to bwrap, whose death would SIGKILL the server (issue 25)."""
    from spawner.sandbox import children_of, sandboxed_server_pids

    def proc(pid: int, ppid: int, comm: str = "python3") -> None:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} {pid} {pid} 0 -1 4194560\n")

    proc(100, 1, "bwrap")          # the hub's child: bwrap, outside
    proc(101, 100, "bwrap")        # the sandbox's init (pid 1 inside)
    proc(102, 101, "jupyterhub-si")  # the server (pid 2 inside)
    proc(103, 102, "python3")      # a kernel of the server: not signalled by the hub
    proc(104, 1, "a) S 100 (odd")  # a name with ") S 100 (" in it is no child of 100
    (tmp_path / "self").mkdir()
    assert children_of(100, str(tmp_path)) == [101]
    assert sandboxed_server_pids(100, str(tmp_path)) == [102]
    assert sandboxed_server_pids(999, str(tmp_path)) == []
    assert children_of(100, str(tmp_path / "missing")) == []


def test_the_staging_sweep_takes_what_no_live_job_needs_and_follows_no_link(tmp_path):
    """A server killed mid-job left a worker's private key (.tls-<job>-*), bundles nobody can
    open and results on the staging area; the next server start removes them — not a live
    job's, not results held for review, not a link's target, not anything else (issue 25)."""
    from xnat_bridge.offload.sweep import remove_entries, stale_entries

    live, dead, held = "j" + "a" * 12, "j" + "b" * 12, "j" + "c" * 12
    names = [f".tls-{live}-x1", f".tls-{dead}-y2", f"results-{dead}-0badcafe.tar.age",
             f"results-{held}-0badcafe.tar.age", f"results-{dead}-12345678.tar.age.partial",
             "0123456789ab-ba9876543210.tar.age", "0123456789ab-ba9876543210.json",
             "0123456789ab-ba9876543210.tar.age.partial", "notes.txt", ".tls-nojobid-z", "results-x.tar.age"]
    assert stale_entries(names, live_jobs={live}, held_jobs={held}, bundles_in_use=True) == sorted(
        [f".tls-{dead}-y2", f"results-{dead}-0badcafe.tar.age", f"results-{dead}-12345678.tar.age.partial"])
    assert stale_entries(names, live_jobs=set(), held_jobs={held}, bundles_in_use=False) == sorted(
        [f".tls-{dead}-y2", f".tls-{live}-x1", f"results-{dead}-0badcafe.tar.age",
         f"results-{dead}-12345678.tar.age.partial", "0123456789ab-ba9876543210.tar.age",
         "0123456789ab-ba9876543210.json", "0123456789ab-ba9876543210.tar.age.partial"])

    udir, outside = tmp_path / "alice", tmp_path / "elsewhere"
    udir.mkdir(mode=0o700)
    outside.mkdir()
    (outside / "precious").write_text("not the sweep's")
    tls = udir / f".tls-{dead}-y2"
    tls.mkdir()
    (tls / "worker.key").write_text("-----BEGIN PRIVATE KEY-----")
    (tls / "link-out").symlink_to(outside)  # a link inside the directory: removed, not followed
    (udir / f".tls-{dead}-zz").symlink_to(outside)  # a link under a TLS name: the link goes
    (udir / "0123456789ab-ba9876543210.tar.age").write_bytes(b"age")
    removed = remove_entries(udir, [f".tls-{dead}-y2", f".tls-{dead}-zz", "0123456789ab-ba9876543210.tar.age",
                                    "gone-meanwhile"])
    assert removed == [f".tls-{dead}-y2", f".tls-{dead}-zz", "0123456789ab-ba9876543210.tar.age"]
    assert sorted(p.name for p in udir.iterdir()) == []
    assert (outside / "precious").read_text() == "not the sweep's"
