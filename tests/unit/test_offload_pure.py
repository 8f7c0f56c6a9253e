"""Offload building blocks without infrastructure: policy, requests, job script
options, key release, script checks, registry, CLI table."""

from __future__ import annotations

import json
import os

import pytest

from xnat_bridge.errors import InvalidRequest, NotFound
from xnat_bridge.offload.cli import format_table
from xnat_bridge.offload.inputs import resolve_script
from xnat_bridge.offload.jobscript import ClusterSpec, cluster_options, prologue
from xnat_bridge.offload.keyrelease import KeyRelease
from xnat_bridge.offload.policy import (
    OffloadPolicy,
    ResourceRequest,
    format_walltime,
    parse_memory,
    parse_walltime,
)
from xnat_bridge.offload.registry import (
    JobRecord,
    JobRegistry,
    JobState,
    new_job_id,
    now_iso,
)
from xnat_bridge.server_env import offload_from_env
from xnat_bridge.staging import AgeIdentity


def test_sizes_and_durations():
    assert parse_memory("4G") == 4 * 2**30 == parse_memory("4GiB") == parse_memory(4 * 2**30)
    assert parse_memory("512M") == 512 * 2**20
    assert parse_walltime("1:00:00") == 3600 and parse_walltime("1-02:00:00") == 93600
    assert parse_walltime(90) == 90 and format_walltime(93600) == "1-02:00:00"
    for bad in ("lots", "-1G", True, 0):
        with pytest.raises(InvalidRequest):
            parse_memory(bad)
    for bad in ("1h", "1:99:00", 0, "x"):
        with pytest.raises(InvalidRequest):
            parse_walltime(bad)


def test_policy_from_env_and_json():
    assert offload_from_env({}) == OffloadPolicy()
    p = offload_from_env({"XNAT_HPC_OFFLOAD": '{"max_memory": "32G", "max_walltime": "1-00:00:00", '
                                                    '"max_cpus": 8, "account": "med", "exclusive": false}'})
    assert p.max_memory == 32 * 2**30 and p.max_walltime == 86400 and p.max_cpus == 8
    assert p.to_json()["max_memory"] == 32 * 2**30 and p.to_json()["exclusive"] is False
    with pytest.raises(InvalidRequest, match="unknown keys"):
        offload_from_env({"XNAT_HPC_OFFLOAD": '{"max_ram": 1}'})
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        offload_from_env({"XNAT_HPC_OFFLOAD": "{"})
    assert OffloadPolicy(max_memory="2G").max_memory == 2 * 2**30


def test_request_defaults_and_every_violation_listed():
    p = OffloadPolicy(max_cpus=4, max_memory=8 * 2**30, max_gpus=0, max_walltime=7200, account="med")
    r = ResourceRequest.parse(p)
    assert (r.partition, r.cpus, r.memory, r.gpus, r.walltime, r.account) == ("secure", 1, 2 * 2**30, 0, 3600,
                                                                             "med")
    assert p.check(r) is r
    bad = ResourceRequest.parse(p, partition="interactive", cpus=16, mem="64G", gpus=2, walltime="3:00:00",
                                account="other")
    with pytest.raises(InvalidRequest) as e:
        p.check(bad)
    for part in ("partition 'interactive'", "cpus 16 is above the maximum 4", "mem 64G is above the maximum 8G",
                 "gpus 2 is above the maximum 0", "walltime 03:00:00 is above the maximum 02:00:00",
                 "account 'other'"):
        assert part in e.value.message
    with pytest.raises(InvalidRequest, match="whole number"):
        ResourceRequest.parse(p, cpus=1.5)
    with pytest.raises(InvalidRequest, match="Slurm name"):
        ResourceRequest.parse(p, partition="secure; rm -rf /")


def _spec(**kw):
    r = ResourceRequest("secure", 4, 8 * 2**30, 1, 5400, account="med", qos="high")
    base = {"job_id": "j0123456789ab", "request": r, "exclusive": True,
            "shared_temp_directory": "/s/alice/.tls-x", "log_directory": "/w/jobs/j0123456789ab/slurm"}
    base.update(kw)
    return ClusterSpec(**base)


def test_cluster_options_golden():
    o = cluster_options(_spec())
    assert o["queue"] == "secure" and o["cores"] == 4 and o["processes"] == 1 and o["memory"] == "8192MiB"
    assert o["walltime"] == "01:30:00" and o["security"] is True and o["interface"] == "lo"
    assert o["job_extra_directives"] == ["--export=ALL", "--exclusive", "--account=med", "--qos=high",
                                         "--gres=gpu:1"]
    assert o["scheduler_options"]["host"] == "127.0.0.1" and o["death_timeout"] == 60
    assert o["shared_temp_directory"] == "/s/alice/.tls-x"
    assert "-m xnat_bridge.offload.nodeguard" in o["python"]
    o2 = cluster_options(_spec(exclusive=False, request=ResourceRequest("secure", 1, 2**30, 0, 60)))
    assert o2["job_extra_directives"] == ["--export=ALL"]


def test_cluster_spec_from_env_and_prologue():
    r = ResourceRequest("secure", 1, 2**30, 0, 60)
    s = ClusterSpec.from_env("j0123456789ab", r, True, "/t", "/l", environ={
        "XNAT_HPC_SCHEDULER_HOST": "10.0.0.5", "XNAT_HPC_WORKER_PYTHON": "/opt/py/bin/python",
        "XNAT_HPC_NODE_TMPDIR": "/local/scratch", "XNAT_HPC_DEATH_TIMEOUT": "30"})
    assert (s.scheduler_host, s.worker_interface, s.python, s.death_timeout) == ("10.0.0.5", None,
                                                                                "/opt/py/bin/python", 30)
    lines = "\n".join(prologue(s))
    assert "umask 077" in lines
    # a fresh directory with a random name (mktemp -d), never `mkdir -p` of a predictable one
    assert 'XNAT_HPC_JOB_DIR=$(mktemp -d /local/scratch/xnat-hpc-slurm-"$SLURM_JOB_ID".XXXXXXXXXXXX)' in lines
    assert "mkdir -p" not in lines
    assert "trap '[ -z \"$XNAT_HPC_JOB_DIR\" ] || rm -rf -- \"$XNAT_HPC_JOB_DIR\"' EXIT" in lines
    assert "TERM" in lines
    assert "AGE-SECRET" not in lines


def test_key_release_once_and_only_to_the_right_slurm_job():
    ident = AgeIdentity.generate()
    released, refused = [], []
    k = KeyRelease("j0123456789ab", ident, lambda: "42", released.append, lambda s, r: refused.append(r))
    assert "error" in k.claim("j0123456789ab", "41")  # another Slurm job
    assert "error" in k.claim("jffffffffffff", "42")  # another job
    reply = k.claim("j0123456789ab", "42")
    assert reply == {"identity": ident.secret()} and released == ["42"]
    second = k.claim("j0123456789ab", "42")
    assert "second claim" in second["error"] and len(refused) == 3


def test_key_release_before_sbatch_returned_is_refused():
    k = KeyRelease("j0123456789ab", AgeIdentity.generate(), lambda: None, lambda s: None, lambda s, r: None)
    assert "error" in k.claim("j0123456789ab", "42")


def test_resolve_script(tmp_path):
    ws = tmp_path / "ws"
    (ws / "sub").mkdir(parents=True)
    (ws / "sub" / "t.py").write_text("print(1)\n")
    s = resolve_script("sub/t.py", [ws])
    assert (s.path, s.name, s.member) == ("sub/t.py", "t.py", "script/t.py") and len(s.sha256) == 64
    assert resolve_script(str(ws / "sub" / "t.py"), [ws]).path == "sub/t.py"
    (tmp_path / "out.py").write_text("x")
    (ws / "in_link.py").symlink_to(ws / "sub" / "t.py")
    assert resolve_script("in_link.py", [ws]).name == "t.py"  # a link inside is fine
    (ws / "out_link.py").symlink_to(tmp_path / "out.py")
    cases = {"../out.py": "plain relative path", str(tmp_path / "out.py"): "outside your workspace",
             "out_link.py": "symbolic link", "sub": "not a regular file", "": "path of a Python file",
             "/etc/passwd": "outside your workspace"}
    for arg, msg in cases.items():
        with pytest.raises(InvalidRequest, match=msg):
            resolve_script(arg, [ws])
    with pytest.raises(NotFound):
        resolve_script("nope.py", [ws])


def _record(job_id=None, token=None, state=JobState.STAGING):
    now = now_iso()
    return JobRecord(job_id or new_job_id(), "alice", "t1", 1, "a" * 64, "train.py", "b" * 64,
                     {"cpus": 1}, state, None, now, now, None, None, None, "staging", token)


def test_registry_states_tokens_and_restart(tmp_path):
    reg = JobRegistry(tmp_path / "ws")
    assert oct(os.stat(reg.path).st_mode & 0o777) == "0o600"
    a = reg.add(_record(token="tok"), "host:1:x")
    assert reg.add(_record(token="tok"), "host:1:x").id == a.id  # idempotent submit
    b = reg.add(_record(), "host:1:x")
    assert [r.id for r in reg.list()] == [b.id, a.id]
    rec = reg.update(a.id, state=JobState.RUNNING, slurm_job_id="7")
    assert rec.state == JobState.RUNNING and rec.slurm_job_id == "7" and not rec.terminal
    rec = reg.update(a.id, state=JobState.CANCELLED, message="cancelled by user")
    assert rec.terminal and rec.ended
    rec = reg.update(a.id, state=JobState.DONE, message="done")  # a terminal state is final
    assert rec.state == JobState.CANCELLED and rec.message == "cancelled by user"
    reg.close()
    reg2 = JobRegistry(tmp_path / "ws")
    assert reg2.get(a.id).to_json()["state"] == "cancelled"
    assert [r.id for r, _ in reg2.active()] == [b.id]
    with pytest.raises(NotFound):
        reg2.get("j000000000000")
    with pytest.raises(InvalidRequest):
        reg2.get("../etc")


def test_format_table():
    text = format_table([_record("j0123456789ab")])
    assert text.splitlines()[0].startswith("ID") and text.splitlines()[1].split()[:5] == ["j0123456789ab", "staging", "t1", "v1", "train.py"]


# --------------------------------------------------------------------------- node-local scratch (issue 11)


def test_node_scratch_rule_and_its_message():
    from xnat_bridge.offload.policy import SCRATCH_RESERVE_MIN, scratch_needed

    assert scratch_needed(0) == SCRATCH_RESERVE_MIN == 512 * 2**20
    assert scratch_needed(100 * 2**30) == 110 * 2**30  # the data plus 10 % for results
    nothing = OffloadPolicy()
    assert nothing.check_scratch("'mri' v1", 10**15, None) is None  # unknown: nothing to check
    assert nothing.check_scratch("'mri' v1", 10**15, 0) is None  # TmpDisk=0: not declared
    slurm = 20 * 2**30
    assert nothing.check_scratch("'mri' v1", 2 * 2**30, slurm) == slurm
    with pytest.raises(InvalidRequest) as e:
        nothing.check_scratch("'mri' v1", 19 * 2**30, slurm)
    for part in ("'mri' v1", "partition 'secure'", "20.9 GiB", "19.0 GiB of data", "1.9 GiB for results",
                 "20.0 GiB (Slurm's TmpDisk", "smaller dataset"):
        assert part in e.value.message, e.value.message
    site = OffloadPolicy(node_scratch="1G")
    assert site.node_scratch == 2**30
    with pytest.raises(InvalidRequest, match=r"1.0 GiB \(the site's offload.node_scratch\)"):
        site.check_scratch("'mri' v1", 600 * 2**20, slurm)  # the site's value wins over Slurm's
    assert site.check_scratch("'mri' v1", 100 * 2**20, None) == 2**30


def test_offload_json_carries_the_scratch_and_staging_settings():
    from xnat_bridge.server_env import offload_to_env

    p = OffloadPolicy(node_scratch="200G", staging_threads=16, staging_buffer="128M")
    doc = json.loads(offload_to_env(p))
    assert doc["node_scratch"] == 200 * 2**30 and doc["staging_threads"] == 16
    assert doc["staging_buffer"] == 128 * 2**20
    assert offload_from_env({"XNAT_HPC_OFFLOAD": offload_to_env(p)}) == p
    assert "node_scratch" not in json.loads(offload_to_env(OffloadPolicy()))  # default: ask Slurm
    back = OffloadPolicy.from_json({"node_scratch": "50G", "staging_threads": "4", "staging_buffer": 2**25})
    assert (back.node_scratch, back.staging_threads, back.staging_buffer) == (50 * 2**30, 4, 2**25)
    with pytest.raises(InvalidRequest, match="staging_threads"):
        OffloadPolicy.from_json({"staging_threads": 0})
    with pytest.raises(InvalidRequest, match="node_scratch"):
        OffloadPolicy.from_json({"node_scratch": "lots"})


def test_profiles_offload_section_takes_the_scratch_keys():
    from hub_ext.profiles import load_profiles

    cfg = load_profiles("profiles:\n  - slug: a\n    backend: local\n"
                        "offload:\n  node_scratch: 400G\n  staging_threads: 4\n  staging_buffer: 32M\n")
    assert cfg.offload.node_scratch == 400 * 2**30
    assert (cfg.offload.staging_threads, cfg.offload.staging_buffer) == (4, 32 * 2**20)
    with pytest.raises(InvalidRequest, match="node_scratch"):
        load_profiles("profiles:\n  - slug: a\n    backend: local\noffload:\n  node_scratch: plenty\n")


def test_tmp_disk_from_sinfo():
    from xnat_bridge.offload.slurm import parse_tmp_disk

    assert parse_tmp_disk("0\n") is None and parse_tmp_disk("") is None
    assert parse_tmp_disk("204800\n") == 200 * 2**30
    assert parse_tmp_disk("500000\n102400+\n") == 100 * 2**30  # the smallest node group
