"""The generated slurm.conf (pure builder) and the `slurm` CLI's refusals."""

import os
from pathlib import Path

import pytest

from devstack import slurm
from xnat_bridge.errors import SlurmError

CFG = slurm.SlurmDevConfig(
    run_dir=Path("/var/lib/x/slurm"), controller_host="vm", cpus=2, memory_mb=2048
)


def conf_dict(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out.setdefault(key, value)
    return out


def test_conf_has_two_partitions_interactive_default():
    text = slurm.slurm_conf(CFG)
    parts = [l for l in text.splitlines() if l.startswith("PartitionName=")]
    assert [p.split()[0] for p in parts] == ["PartitionName=interactive", "PartitionName=secure"]
    assert "Default=YES" in parts[0] and "Default=NO" in parts[1]


def test_conf_keeps_everything_under_run_dir():
    conf = conf_dict(slurm.slurm_conf(CFG))
    for key in ("StateSaveLocation", "SlurmdSpoolDir", "SlurmctldPidFile", "SlurmdPidFile",
                "SlurmctldLogFile", "SlurmdLogFile"):
        assert conf[key].startswith("/var/lib/x/slurm/"), key
    assert conf["SlurmctldHost"] == "vm(127.0.0.1)"


def test_conf_node_resources_and_secure_partition_isolation():
    text = slurm.slurm_conf(CFG)
    node = next(l for l in text.splitlines() if l.startswith("NodeName="))
    assert "CPUs=2" in node and "RealMemory=2048" in node and "NodeAddr=127.0.0.1" in node
    conf = conf_dict(text)
    assert conf["ProctrackType"] == "proctrack/cgroup"
    assert conf["TaskPlugin"] == "task/cgroup"
    assert conf["JobContainerType"] == "job_container/tmpfs"
    assert conf["PrologFlags"] == "Contain"
    assert text.startswith(slurm.MANAGED_MARKER)
    # one node carries both partitions: exclusive nodes would deadlock a server and its job
    assert "OverSubscribe" not in conf_dict(text) and "# not OverSubscribe=EXCLUSIVE" in text
    cg = conf_dict(slurm.cgroup_conf(CFG))
    assert (cg["ConstrainCores"], cg["ConstrainRAMSpace"], cg["ConstrainDevices"]) == ("yes", "yes", "yes")
    jc = conf_dict(slurm.job_container_conf(CFG))
    assert jc["BasePath"] == "/var/lib/x/slurm/jobtmp" and jc["AutoBasePath"] == "true"


def test_conf_without_what_the_machine_lacks_says_why():
    import dataclasses

    cfg = dataclasses.replace(CFG, cgroups=False, job_container=False,
                              not_used=("proctrack/cgroup, task/cgroup: no cgroup file system is mounted",))
    text = slurm.slurm_conf(cfg)
    conf = conf_dict(text)
    assert (conf["ProctrackType"], conf["TaskPlugin"], conf["JobContainerType"]) == (
        "proctrack/linuxproc", "task/none", "job_container/none")
    assert "PrologFlags" not in conf
    assert "# not used on this machine: proctrack/cgroup, task/cgroup: no cgroup file system" in text


def test_probes_on_this_machine():
    """What this machine allows (docs/admin.md lists it): each probe returns None or a reason."""
    for probe in (slurm.probe_cgroups, slurm.probe_mount_namespaces):
        why = probe()
        assert why is None or (isinstance(why, str) and why)
    mine = slurm.SlurmDevConfig.for_this_machine(Path("/r"))
    assert mine.cgroups == (slurm.probe_cgroups() is None)
    assert mine.job_container == (slurm.probe_mount_namespaces() is None)
    assert len(mine.not_used) == (not mine.cgroups) + (not mine.job_container)
    assert slurm.probe_cgroups(Path("/nonexistent-cgroup-root")).startswith("no cgroup file system")


def test_write_conf_puts_the_plugin_files_next_to_slurm_conf(monkeypatch, tmp_path):
    monkeypatch.setattr(slurm, "SYSTEM_CONF", tmp_path / "etc-slurm" / "slurm.conf")
    dev = slurm.SlurmDev(cfg=slurm.SlurmDevConfig(run_dir=tmp_path / "run", controller_host="vm"))
    assert dev._write_conf() is True
    etc = tmp_path / "run" / "etc"
    assert (etc / "cgroup.conf").read_text() == slurm.cgroup_conf(dev.cfg)
    assert (etc / "job_container.conf").read_text() == slurm.job_container_conf(dev.cfg)
    assert dev._write_conf() is False  # unchanged: no restart


def test_example_config_matches_builder():
    """config/slurm-dev.conf is the builder's output for a documented example."""
    example = Path(__file__).parents[2] / "config" / "slurm-dev.conf"
    cfg = slurm.SlurmDevConfig(
        run_dir=slurm.DEFAULT_RUN_DIR, controller_host="HOSTNAME", cpus=2, memory_mb=23552,
        tmp_disk_mb=20480,
    )
    assert example.read_text() == slurm.slurm_conf(cfg)
    for name, build in (("cgroup-dev.conf", slurm.cgroup_conf), ("job_container-dev.conf", slurm.job_container_conf)):
        assert (example.parent / name).read_text() == build(cfg), name


def test_node_declares_its_node_local_scratch():
    """TmpDisk (issue 11): the offload layer refuses datasets too large for the node's scratch."""
    assert "TmpDisk" not in slurm.slurm_conf(CFG)  # 0: not declared
    conf = slurm.slurm_conf(slurm.SlurmDevConfig(run_dir=Path("/r"), controller_host="vm", tmp_disk_mb=4096))
    node = next(l for l in conf.splitlines() if l.startswith("NodeName="))
    assert "TmpDisk=4096" in node and conf_dict(conf)["TmpFS"] == "/tmp"
    mine = slurm.SlurmDevConfig.for_this_machine(Path("/r"))
    st = os.statvfs("/tmp")
    assert 0 < mine.tmp_disk_mb <= st.f_blocks * st.f_frsize // 2**20  # never above what slurmd finds
    assert mine.tmp_disk_mb % 1024 == 0


def test_up_without_packages_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setattr(slurm, "which", lambda name: None)
    with pytest.raises(SlurmError) as e:
        slurm.SlurmDev(tmp_path).up()
    assert "apt-get install slurm-wlm munge" in e.value.message
    assert "slurmctld" in e.value.message


def test_up_refuses_foreign_system_config(monkeypatch, tmp_path):
    foreign = tmp_path / "slurm.conf"
    foreign.write_text("ClusterName=production\n")
    monkeypatch.setattr(slurm, "SYSTEM_CONF", foreign)
    dev = slurm.SlurmDev(tmp_path / "run")
    with pytest.raises(SlurmError, match="not written by xnat-hpc-hub"):
        dev._write_conf()
    assert foreign.read_text() == "ClusterName=production\n"


def test_cli_default_run_dir_is_the_dev_clusters():
    """`xnat-hpc-hub slurm` names the run directory without importing devstack."""
    from hub_ext.cli import SLURM_RUN_DIR

    assert SLURM_RUN_DIR == slurm.DEFAULT_RUN_DIR
