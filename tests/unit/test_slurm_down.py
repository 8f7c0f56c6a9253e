"""A submission while Slurm's controller does not answer is refused at once (503), before
anything is recorded, staged or waited for — in-process, no Slurm."""

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
