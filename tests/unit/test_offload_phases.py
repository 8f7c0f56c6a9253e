"""Where a job's start goes (xnat_bridge.offload.phases): the clock, the node's report, the
record that keeps them — pure and in-process, no Slurm."""

from __future__ import annotations

import json
import sqlite3

from xnat_bridge.offload.jobscript import ClusterSpec, prologue
from xnat_bridge.offload.keyrelease import KeyRelease
from xnat_bridge.offload.phases import (
    PHASES,
    SCRIPT_START_VAR,
    PhaseClock,
    node_phases,
    phases_json,
    phases_text,
)
from xnat_bridge.offload.policy import ResourceRequest
from xnat_bridge.offload.registry import JobRecord, JobRegistry, JobState, new_job_id, now_iso
from xnat_bridge.staging import AgeIdentity


class FakeClock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_phase_clock_measures_consecutive_phases_with_an_injected_clock():
    clock = FakeClock()
    phases = PhaseClock(clock)
    clock.t += 0.25
    assert phases.mark("checks") == 0.25
    clock.t += 1.5
    phases.mark("staging")
    phases.add("slurm_start", 0.75)
    phases.add("key_claim", -0.2)  # clock skew between two machines counts as zero
    assert phases.as_json() == {"checks": 0.25, "staging": 1.5, "slurm_start": 0.75, "key_claim": 0.0}
    assert list(phases.as_json()) == [p for p in PHASES if p in phases.durations]


def test_node_phases_from_wall_clock_times_and_what_the_node_may_get_wrong():
    assert node_phases(1000.0, {"script": "1000.5", "task": 1001.25}, 1001.5) == {
        "slurm_start": 0.5, "worker_start": 0.75, "key_claim": 0.25}
    # a missing or malformed time folds its phase into the next; skew counts as zero
    assert node_phases(1000.0, {"script": "", "task": 1001.0}, 1001.5) == {"worker_start": 1.0,
                                                                          "key_claim": 0.5}
    assert node_phases(1000.0, {"script": "nan", "task": [1]}, 1002.0) == {"key_claim": 2.0}
    assert node_phases(1000.0, None, 1002.0) == {"key_claim": 2.0}
    assert node_phases(1000.0, {"script": 999.0, "task": 1003.0}, 1002.5) == {
        "slurm_start": 0.0, "worker_start": 4.0, "key_claim": 0.0}


def test_phases_text_reads_in_order_with_the_total():
    text = phases_text({"sbatch": 0.1, "checks": 0.05, "key_claim": 0.2})
    assert text == "checks 0.05 s · sbatch 0.10 s · key claim 0.20 s (total 0.35 s)"
    assert phases_text({}) == ""
    assert phases_json({"staging": 1.23456, "unknown": 3}) == {"staging": 1.235}


def test_the_job_script_records_its_start_and_the_claim_carries_the_node_times():
    spec = ClusterSpec("j0123456789ab", ResourceRequest("secure", 1, 2**30, 0, 60), True, "/t", "/l")
    assert prologue(spec)[0] == f"export {SCRIPT_START_VAR}=$EPOCHREALTIME"
    released = []
    k = KeyRelease("j0123456789ab", AgeIdentity.generate(), lambda: "42", released.append, lambda s, r: None)
    k.claim("j0123456789ab", "41", node_times={"script": 1.0})  # refused: its times are not kept
    assert k.node_times is None
    k.claim("j0123456789ab", "42", node_times={"script": 1.0, "task": 2.0})
    assert released == ["42"] and k.node_times == {"script": 1.0, "task": 2.0}


def _record(**kw) -> JobRecord:
    now = now_iso()
    return JobRecord(new_job_id(), "alice", "t1", 1, "a" * 64, "train.py", "b" * 64, {}, JobState.STAGING,
                     None, now, now, None, None, None, "staging", None, **kw)


def test_the_registry_keeps_the_phases_and_opens_a_registry_of_an_older_release(tmp_path):
    reg = JobRegistry(tmp_path)
    rec = reg.add(_record(), "owner")
    assert reg.get(rec.id).phases == {}
    got = reg.update(rec.id, state=JobState.RUNNING, phases={"staging": 0.1, "sbatch": 0.2, "key_claim": 0.3})
    assert list(got.phases.items()) == [("staging", 0.1), ("sbatch", 0.2), ("key_claim", 0.3)]  # in order
    assert got.to_json()["phases"] == {"staging": 0.1, "sbatch": 0.2, "key_claim": 0.3}
    reg.close()
    # a registry written before the phases existed: the column is added, its jobs read as {}
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "jobs.sqlite")
    cols = [c for c in JobRecord.__dataclass_fields__ if c != "phases"]
    db.execute(f"CREATE TABLE jobs ({', '.join(c + (' TEXT PRIMARY KEY' if c == 'id' else '') for c in cols)}, "
               "owner TEXT NOT NULL DEFAULT '')")
    r = _record().to_json()
    r["resources"] = json.dumps(r["resources"])
    db.execute(f"INSERT INTO jobs ({','.join(cols)}, owner) VALUES ({','.join('?' * (len(cols) + 1))})",
               [r[c] for c in cols] + ["o"])
    db.commit()
    db.close()
    reg = JobRegistry(old)
    assert reg.get(r["id"]).phases == {}
    assert reg.update(r["id"], phases={"staging": 1.0}).phases == {"staging": 1.0}
    reg.close()


def test_sbatch_runs_with_an_environment_of_its_own_never_the_servers(monkeypatch):
    """The job gets sbatch's environment (--export=ALL, no login environment loaded on the node:
    a second per start): so sbatch must never run with the server's, which holds the token."""
    import asyncio

    from xnat_bridge import procs
    from xnat_bridge.offload.jobscript import sbatch_environment
    from xnat_bridge.offload.slurm import gateway_job_class

    server = {"PATH": "/usr/bin", "HOME": "/home/alice", "USER": "alice", "LANG": "C.UTF-8",
              "XNAT_PASS": "s3cret", "JUPYTERHUB_API_TOKEN": "t0k", "SBATCH_EXPORT": "NONE",
              "SLURM_CONF": "/etc/slurm/slurm.conf", "AWS_SECRET_ACCESS_KEY": "k"}
    assert sbatch_environment(server) == {"PATH": "/usr/bin", "HOME": "/home/alice", "USER": "alice",
                                          "LANG": "C.UTF-8", "SLURM_CONF": "/etc/slurm/slurm.conf"}
    seen = {}

    async def arun(cmd, **kw):
        seen.update(cmd=cmd, **kw)
        return type("P", (), {"stdout": "42\n"})()

    monkeypatch.setattr(procs, "arun", arun)
    monkeypatch.setattr("os.environ", server)
    out = asyncio.run(gateway_job_class()._call(["sbatch", "/tmp/job.sh"]))
    assert out == "42\n" and seen["env"] == sbatch_environment(server)
    assert "s3cret" not in repr(seen) and "t0k" not in repr(seen)
