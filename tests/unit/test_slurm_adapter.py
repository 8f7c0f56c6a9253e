"""The one Slurm adapter (xnat_bridge.slurm) against canned command outputs: the state
vocabulary, the argument lists, the batched ``squeue`` parser, and the calls of the
spawner, the offload and the revocation played as transcripts (batchspawner's
``run_spawner_script`` habit: each expected command and what Slurm answers to it)."""

from __future__ import annotations

import re
import subprocess

import pytest

from xnat_bridge import procs, slurm
from xnat_bridge.errors import CommandFailed, InvalidRequest
from xnat_bridge.slurm import Phase, SlurmJob, SlurmState

FMT = slurm.STATUS_FORMAT


class Transcript:
    """Plays ``(argv, returncode, stdout, stderr)`` steps in order for procs.run/arun; any other
    command, or one too many, fails the test."""

    def __init__(self, monkeypatch, *steps):
        self.steps = list(steps)
        self.inputs: list[bytes | None] = []
        monkeypatch.setattr(procs, "run", self.run)
        monkeypatch.setattr(procs, "arun", self.arun)

    def run(self, cmd, *, input=None, check=True, **kw):
        assert self.steps, f"unexpected command {cmd}"
        argv, rc, out, err = self.steps.pop(0)
        assert list(cmd) == argv
        assert all(isinstance(a, str) for a in cmd)  # an argument list, never a shell string
        self.inputs.append(input)
        if check and rc != 0:
            raise CommandFailed(cmd, rc, out, err)
        return subprocess.CompletedProcess(list(cmd), rc, out, err)

    async def arun(self, cmd, **kw):
        return self.run(cmd, **kw)

    def done(self):
        assert self.steps == [], f"commands not run: {self.steps}"


# -- the one vocabulary ---------------------------------------------------------------------

def test_every_state_has_exactly_one_phase_and_the_sets_partition_them():
    names = {s.value for s in SlurmState}
    assert set(slurm.PHASES) == names
    sets = (slurm.PENDING_STATES, slurm.RUNNING_STATES, slurm.TERMINAL_STATES)
    assert set().union(*sets) == names and sum(map(len, sets)) == len(names)
    assert slurm.ACTIVE_STATES == slurm.PENDING_STATES | slurm.RUNNING_STATES
    assert not slurm.ACTIVE_STATES & slurm.TERMINAL_STATES


def test_the_phases_of_the_states_the_three_callers_relied_on():
    # what the spawner (batchspawner's patterns) took for pending and running
    assert {"PENDING", "CONFIGURING"} <= slurm.PENDING_STATES
    assert {"RUNNING", "COMPLETING"} <= slurm.RUNNING_STATES
    # what the revocation cancelled (its former ACTIVE_STATES): all still active
    assert {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
            "SIGNALING", "STAGE_OUT", "REQUEUE_HOLD", "REQUEUE_FED"} <= slurm.ACTIVE_STATES
    # what the offload waited for (its former _ENDED): all terminal
    assert {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
            "DEADLINE", "PREEMPTED"} <= slurm.TERMINAL_STATES


@pytest.mark.parametrize("state, expected", [
    ("PENDING", Phase.PENDING), ("REQUEUE_HOLD", Phase.PENDING), ("RUNNING", Phase.RUNNING),
    ("SUSPENDED", Phase.RUNNING), ("COMPLETED", Phase.ENDED), ("CANCELLED by 0", Phase.ENDED),
    ("RUNNING node1", Phase.RUNNING), ("WARPING", None), ("running", None), ("", None), (None, None),
])
def test_phase_of_a_state(state, expected):
    assert slurm.phase(state) is expected
    assert slurm.is_active(state) == (expected in (Phase.PENDING, Phase.RUNNING))
    assert slurm.is_terminal(state) == (expected is Phase.ENDED)
    assert slurm.is_pending(state) == (expected is Phase.PENDING)
    assert slurm.is_running(state) == (expected is Phase.RUNNING)


def test_an_unknown_state_is_neither_active_nor_terminal():
    job = SlurmJob("7", "bob", "WARPING")
    assert job.phase is None and not job.active and not job.terminal and not job.pending and not job.running


def test_state_regex_matches_whole_state_words_at_the_start():
    pending = re.compile(slurm.state_regex(slurm.PENDING_STATES))
    running = re.compile(slurm.state_regex(slurm.RUNNING_STATES))
    assert pending.search("PENDING (null)") and pending.search("CONFIGURING n/a") and pending.search("PENDING")
    assert running.search("RUNNING node1") and running.search("COMPLETING node1")
    assert not running.search("PENDING n/a") and not pending.search("RUNNING node1")
    assert not running.search("RUNNINGX node1") and not pending.search("node1 PENDING")
    assert not pending.search("slurm_load_jobs error: Invalid job id specified")


def test_the_spawners_patterns_are_the_adapters_states():
    pytest.importorskip("batchspawner")
    from spawner.slurm import XnatSlurmSpawner

    traits = XnatSlurmSpawner.class_traits()
    assert traits["state_pending_re"].default_value == slurm.state_regex(slurm.PENDING_STATES)
    assert traits["state_running_re"].default_value == slurm.state_regex(slurm.RUNNING_STATES)


def test_the_revocation_uses_the_one_list_and_the_one_parser():
    from hub_ext import revocation

    assert revocation.ACTIVE_STATES is slurm.ACTIVE_STATES
    assert revocation.parse_squeue is slurm.parse_squeue and revocation.SlurmJob is slurm.SlurmJob


# -- argument lists -------------------------------------------------------------------------

def test_squeue_asks_for_many_ids_in_one_call():
    assert slurm.squeue_argv(["13", "12", "12", "123_4"]) == [
        "squeue", "-h", "-j", "12,13,123_4", "-o", "%i|%u|%T|%B|%r"]
    assert slurm.state_node_argv("42") == ["squeue", "-h", "-j", "42", "-o", "%T %B"]


@pytest.mark.parametrize("bad", ["", "-u root", "12,13", "12; rm", "abc", "12_", "_4", "1 2", "--me"])
def test_no_argument_list_takes_a_text_that_is_no_job_id(bad):
    with pytest.raises(InvalidRequest, match="not a Slurm job id"):
        slurm.squeue_argv([bad])
    with pytest.raises(InvalidRequest, match="not a Slurm job id"):
        slurm.scancel_argv(["12", bad])


def test_no_command_without_a_job_id():
    with pytest.raises(InvalidRequest):
        slurm.squeue_argv([])
    with pytest.raises(InvalidRequest):
        slurm.scancel_argv([])


def test_scancel_sbatch_and_sinfo_argument_lists():
    assert slurm.scancel_argv(["42"]) == ["scancel", "42"]
    assert slurm.scancel_argv(["43", "42_1"]) == ["scancel", "42_1", "43"]
    assert slurm.sbatch_argv() == ["sbatch", "--parsable"]
    assert slurm.sbatch_argv(run_as="alice", sbatch="/usr/bin/sbatch", runuser="/usr/sbin/runuser") == [
        "/usr/sbin/runuser", "-u", "alice", "--", "/usr/bin/sbatch", "--parsable"]
    with pytest.raises(InvalidRequest):
        slurm.sbatch_argv(run_as="-x")
    assert slurm.sinfo_tmp_disk_argv("secure") == ["sinfo", "-h", "-p", "secure", "-o", "%d"]


# -- the batched squeue parser --------------------------------------------------------------

def test_parse_the_full_status_format():
    text = ("12|bob|PENDING|n/a|Priority\n"
            "13|alice|RUNNING|node1|None\n"
            "14|bob|COMPLETING|node2|(null)\n")
    assert slurm.parse_squeue(text) == {
        "12": SlurmJob("12", "bob", "PENDING", "", "Priority"),
        "13": SlurmJob("13", "alice", "RUNNING", "node1", ""),
        "14": SlurmJob("14", "bob", "COMPLETING", "node2", ""),
    }


def test_parse_empty_output():
    assert slurm.parse_squeue("") == {}
    assert slurm.parse_squeue("\n\n") == {}


def test_a_job_of_another_user_is_listed_with_its_user():
    [job] = slurm.parse_squeue("77|mallory|RUNNING|node3|None\n").values()
    assert job.user == "mallory" and job.active


def test_array_ids_are_kept_as_slurm_prints_them():
    text = ("123_4|bob|RUNNING|node1|None\n"
            "123_[5-9%2]|bob|PENDING|n/a|JobArrayTaskLimit\n"
            "124+0|bob|RUNNING|node1|None\n")
    jobs = slurm.parse_squeue(text)
    assert list(jobs) == ["123_4", "123_[5-9%2]", "124+0"]
    assert jobs["123_[5-9%2]"].reason == "JobArrayTaskLimit" and jobs["123_[5-9%2]"].pending


def test_an_unknown_state_is_kept_as_printed():
    [job] = slurm.parse_squeue("15|bob|WARPING|node1|None\n").values()
    assert job.state == "WARPING" and job.phase is None


def test_garbage_lines_are_skipped():
    text = ("garbage\n"
            "slurm_load_jobs error: Invalid job id specified\n"
            "JOBID|USER|STATE|NODE|REASON\n"      # a header
            "12|bob\n"                             # too few fields
            "|bob|RUNNING|node1|None\n"            # no id
            "12; rm -rf|bob|RUNNING|node1|None\n"  # not an id
            "16||RUNNING|node1|None\n"             # no user
            "17|bob||node1|None\n"                 # no state
            "  18 | bob | RUNNING | node1 | None  \n")
    assert slurm.parse_squeue(text) == {"18": SlurmJob("18", "bob", "RUNNING", "node1", "")}


def test_the_reason_keeps_what_follows_it_and_three_fields_are_enough():
    [job] = slurm.parse_squeue("19|bob|PENDING|n/a|(ReqNodeNotAvail, a|b)\n").values()
    assert job.reason == "(ReqNodeNotAvail, a|b)"
    assert slurm.parse_squeue("12|bob|PENDING\n") == {"12": SlurmJob("12", "bob", "PENDING")}


def test_sbatch_answer():
    assert slurm.parse_sbatch("42\n") == "42"
    assert slurm.parse_sbatch("42;cluster\n") == "42"
    assert slurm.parse_sbatch("noise from a prolog\n42\n") == "42"
    assert slurm.parse_sbatch("") == "" and slurm.parse_sbatch("Submitted batch job 42\n") == ""


def test_tmp_disk_answer():
    assert slurm.parse_tmp_disk("0\n") is None and slurm.parse_tmp_disk("") is None
    assert slurm.parse_tmp_disk("500000\n102400+\n") == 100 * 2**30


# -- the calls, as transcripts --------------------------------------------------------------

def test_status_is_one_squeue_for_all_ids(monkeypatch):
    t = Transcript(monkeypatch, (["squeue", "-h", "-j", "12,13", "-o", FMT], 0,
                                 "12|bob|RUNNING|node1|None\n13|alice|PENDING|n/a|Priority\n", ""))
    jobs = slurm.status(["13", "12", "13"])
    assert jobs["12"] == SlurmJob("12", "bob", "RUNNING", "node1") and jobs["13"].user == "alice"
    t.done()


def test_status_of_no_job_id_runs_nothing(monkeypatch):
    t = Transcript(monkeypatch)
    assert slurm.status([]) == {}
    assert slurm.status(["", "1; rm", None]) == {}  # no text that is no job id reaches squeue
    t.done()


def test_an_id_slurm_forgot_is_absent_not_a_failure(monkeypatch):
    t = Transcript(monkeypatch,
                   (["squeue", "-h", "-j", "99", "-o", FMT], 1, "",
                    "slurm_load_jobs error: Invalid job id specified\n"),
                   (["squeue", "-h", "-j", "98,99", "-o", FMT], 0, "", ""))
    assert slurm.status(["99"]) == {}
    assert slurm.status(["99", "98"]) == {}
    t.done()


def test_a_controller_that_does_not_answer_is_a_failure(monkeypatch):
    t = Transcript(monkeypatch, (["squeue", "-h", "-j", "12", "-o", FMT], 1, "",
                                 "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"))
    with pytest.raises(CommandFailed, match="Unable to contact slurm controller"):
        slurm.status(["12"])
    t.done()


async def test_async_status_and_cancel(monkeypatch):
    t = Transcript(monkeypatch,
                   (["squeue", "-h", "-j", "12,123_4", "-o", FMT], 0,
                    "123_4|bob|RUNNING|node1|None\n", ""),
                   (["scancel", "123_4"], 0, "", ""),
                   (["scancel", "12"], 1, "", "scancel: error: Kill job error on job id 12: "
                                              "Job/step already completing or completed\n"))
    assert list(await slurm.astatus(["123_4", "12"])) == ["123_4"]
    await slurm.acancel(["123_4"])
    with pytest.raises(CommandFailed, match="already completing"):
        await slurm.acancel(["12"])
    t.done()


def test_sync_cancel(monkeypatch):
    t = Transcript(monkeypatch, (["scancel", "5", "6"], 0, "", ""))
    slurm.cancel(["6", "5"])
    t.done()


async def test_submit_sends_the_script_on_stdin(monkeypatch):
    monkeypatch.setattr(procs, "which", lambda name: f"/usr/bin/{name}")
    t = Transcript(monkeypatch, (["/usr/bin/runuser", "-u", "alice", "--", "/usr/bin/sbatch", "--parsable"],
                                 0, "42;dev\n", ""))
    assert await slurm.asubmit("#!/bin/sh\ntrue\n", run_as="alice") == "42"
    assert t.inputs == [b"#!/bin/sh\ntrue\n"]
    t.done()


async def test_state_node_is_batchspawners_answer(monkeypatch):
    t = Transcript(monkeypatch, (["squeue", "-h", "-j", "42", "-o", "%T %B"], 0, "RUNNING node1\n", ""))
    assert await slurm.astate_node("42") == "RUNNING node1"
    t.done()


# -- the offload and the revocation over the adapter ------------------------------------------

def test_offload_slurm_state_wait_gone_and_scancel(monkeypatch):
    from xnat_bridge.offload import slurm as offload_slurm

    monkeypatch.setattr(offload_slurm.time, "sleep", lambda s: None)
    t = Transcript(monkeypatch,
                   (["squeue", "-h", "-j", "42", "-o", FMT], 0, "42|bob|RUNNING|node1|None\n", ""),
                   (["squeue", "-h", "-j", "42", "-o", FMT], 1, "", "slurm_load_jobs error: Unable to contact\n"),
                   # wait_gone: still completing, then cancelled
                   (["squeue", "-h", "-j", "42", "-o", FMT], 0, "42|bob|COMPLETING|node1|None\n", ""),
                   (["squeue", "-h", "-j", "42", "-o", FMT], 0, "42|bob|CANCELLED|node1|None\n", ""),
                   (["scancel", "42"], 1, "", "scancel: error: Invalid job id specified\n"))
    assert offload_slurm.slurm_state("42") == "RUNNING"
    assert offload_slurm.slurm_state("42") is None  # Slurm cannot say: as before, None
    assert offload_slurm.wait_gone("42", timeout=60)
    offload_slurm.scancel("42")  # logged, not raised
    offload_slurm.scancel(None)  # nothing to cancel
    t.done()


async def test_revocation_cancels_only_the_users_active_jobs_in_one_query(monkeypatch):
    from hub_ext.revocation import SubmittedJob, cancel_jobs

    jobs = [SubmittedJob("bob", sid, frozenset({"P"})) for sid in ("11", "12", "13", "14", "15")]
    t = Transcript(monkeypatch,
                   (["squeue", "-h", "-j", "11,12,13,14,15", "-o", FMT], 0,
                    "11|bob|RUNNING|node1|None\n"
                    "12|mallory|RUNNING|node1|None\n"
                    "13|bob|COMPLETED|node1|None\n"
                    "14|bob|WARPING|node1|None\n", ""),   # 15: forgotten
                   (["scancel", "11"], 0, "", ""),
                   (["scancel", "14"], 0, "", ""))  # a state nobody knows: cancelled all the same
    outcomes = await cancel_jobs(jobs, "bob")
    assert [(j.slurm_id, o) for j, o in outcomes] == [
        ("11", "cancelled"), ("12", "not the user's job"), ("13", "ended"), ("14", "cancelled"), ("15", "ended")]
    t.done()
