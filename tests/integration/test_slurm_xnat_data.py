"""A Slurm server started from XNAT sees the plugin's ``/data`` layout when its profile names where
the nodes mount the archive (issue 20, item 3), on real components: devxnat's archive closed to
the users' accounts as a site keeps it (the development node is this machine, so the node path is
devxnat's archive itself), the real single-node Slurm, a real JupyterHub driven call by call as
XNAT's JupyterHub plugin drives it (:mod:`tests.integration.test_xnat_plugin_hub`), real
bubblewrap and setpriv in the job.

The server's own kernel reads its experiment's files under ``XNAT_DATA=/data`` and finds no
other experiment, no other project and no archive root; its job is the hub's (root builds the
sandbox), its server the user's, with the archive group inside the sandbox only. A Slurm
profile without the node path (``XNAT_DATA`` unset) is covered by
``test_hardware_mapped_to_a_slurm_profile_starts_there``."""

from __future__ import annotations

import grp
import json
import subprocess
from pathlib import Path

import pytest

from devstack.demo import ARCHIVE_GROUP
from tests.fixtures.accounts import unix_entry, unix_name
from tests.fixtures.plugin import make_plugin_hub
from tests.fixtures.spawn import process_environ, server_process
from tests.integration.test_archive_access import run_code
from tests.integration.test_xnat_plugin_hub import (
    PluginClient,
    experiment_of,
    seed_start,
    start_as_the_plugin,
    stop_as_the_plugin,
)

pytestmark = [pytest.mark.devxnat, pytest.mark.slurm]

SERVICE_ACCOUNT = "hubsvc-slurm-data"   # this module's XNAT account with the plugin's JupyterHub role

PROFILES = """
profiles:
  - slug: local-small
    backend: local
    default: true
  - slug: slurm-data
    display_name: Slurm, archive on the node
    backend: slurm
    archive_node_path: "{archive}"
    resources: {{cpus: 1, memory: 1G, partition: interactive, walltime: "0:30:00"}}
offload:
  partition: secure
  staging_dir: {staging}
xnat_hardware:
  slurm-data: slurm-data
"""

SLURM_DATA = {"id": 92, "hardware": {
    "name": "Slurm with data", "cpuReservation": 1.0, "cpuLimit": 1.0, "memoryReservation": "1G",
    "memoryLimit": "1G", "constraints": [],
    "environmentVariables": [{"key": "XNAT_HPC_HARDWARE", "value": "slurm-data"}], "genericResources": []}}


@pytest.fixture(scope="module")
def hub(shared_devxnat, unix_users, staging, tmp_path_factory, slurm):
    profiles = PROFILES.replace("{archive}", str(shared_devxnat.archive))
    h = make_plugin_hub(tmp_path_factory.mktemp("slurm-data-hub"), shared_devxnat, SERVICE_ACCOUNT,
                        staging=staging, profiles_text=profiles)
    yield h
    h.stop()


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_a_slurm_server_from_xnat_reads_its_experiment_under_xnat_data_and_nothing_else(hub, shared_devxnat):
    user, server = "alice", "slurm-data"
    archive = shared_devxnat.archive
    exp = experiment_of(shared_devxnat, user, "NEURO_MRI")
    label = exp["label"]
    folder = archive / "NEURO_MRI" / "arc001" / label
    mine = next(p for p in sorted(folder.rglob("*")) if p.is_file())
    other_experiment = next(p for p in sorted((archive / "NEURO_MRI" / "arc001").iterdir()) if p.name != label)
    sleep = next(p for p in sorted((archive / "SLEEP_EEG").rglob("*")) if p.is_file())  # alice's, not in scope
    body = seed_start(shared_devxnat, user, server, xsi_type="xnat:mrSessionData", item=exp["ID"],
                      project="NEURO_MRI", hardware=SLURM_DATA)
    client = PluginClient(hub)
    srv = start_as_the_plugin(hub, client, user, server, body)
    try:
        full = hub.api("GET", f"/users/{user}").json()["servers"][server]  # with state
        job_id = str(full["state"]["child"]["job_id"])
        pid = server_process(user, full)
        env = process_environ(pid)
        assert env["SLURM_JOB_ID"] == job_id and env["XNAT_HPC_PROFILE"] == "slurm-data"
        assert env["XNAT_DATA"] == "/data"
        assert env["JUPYTERHUB_ROOT_DIR"] == env["XDG_CONFIG_HOME"] == f"/workspace/{user}"
        # the job is the hub's (its script builds the sandbox as root); the server is alice's,
        # with the archive group inside the sandbox only, no capabilities, no_new_privs
        assert subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%u"], capture_output=True, text=True,
                              check=True).stdout.strip() == "root"
        script = subprocess.run(["scontrol", "write", "batch_script", job_id, "-"], capture_output=True,
                                text=True, check=True).stdout
        assert "bwrap" in script and "--die-with-parent" in script and "setpriv" in script
        alice, gid = unix_entry(user), grp.getgrnam(ARCHIVE_GROUP).gr_gid
        status = _status(pid)
        assert status["Uid"].split() == [str(alice.pw_uid)] * 4 and str(gid) in status["Groups"].split()
        assert int(status["CapEff"], 16) == int(status["CapBnd"], 16) == 0 and status["NoNewPrivs"] == "1"
        # what the server's process sees: the plugin's layout of its experiment, read-only
        mounts = [line.split() for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()]
        data = [m for m in mounts if m[4].startswith("/data/projects/")]
        assert [m[4] for m in data] == [f"/data/projects/NEURO_MRI/experiments/{label}"]
        assert "ro" in data[0][5].split(",")
        workspace = [m for m in mounts if m[4] == f"/workspace/{user}"]
        assert workspace and "rw" in workspace[0][5].split(",")
        # and its own kernel, as alice: the experiment's file, nothing else of the archive
        inside = f"/data/projects/NEURO_MRI/experiments/{label}/{mine.relative_to(folder)}"
        code = f"""
import json, os
def attempt(path):
    try:
        with open(path, "rb") as f:
            return len(f.read())
    except OSError as e:
        return type(e).__name__
print(json.dumps({{"data": os.environ.get("XNAT_DATA"), "uid": os.getuid(),
                  "projects": sorted(os.listdir("/data/projects")),
                  "experiments": sorted(os.listdir("/data/projects/NEURO_MRI/experiments")),
                  "mine": attempt({inside!r}),
                  "other_project": os.path.exists("/data/projects/SLEEP_EEG"),
                  "host_other_experiment": os.path.exists({str(other_experiment)!r}),
                  "host_sleep": attempt({str(sleep)!r}), "archive": os.path.exists({str(archive)!r})}}))
"""
        seen = json.loads(run_code(hub, user, server, code))
        assert seen["data"] == "/data" and seen["uid"] == alice.pw_uid
        assert seen["projects"] == ["NEURO_MRI"] and seen["experiments"] == [label]
        assert seen["mine"] == mine.stat().st_size  # 0640 root:xnat-archive: read through the group
        assert seen["other_project"] is False and seen["host_other_experiment"] is False
        assert seen["host_sleep"] == "FileNotFoundError" and seen["archive"] is False
    finally:
        stop_as_the_plugin(client, user, server)
    gone = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    assert gone.strip() in ("", "COMPLETING", "CANCELLED")
    # outside any sandbox alice's own account still reads nothing of the archive
    r = subprocess.run(["runuser", "-u", unix_name(user), "--", "cat", str(mine)], capture_output=True, text=True)
    assert r.returncode != 0 and "Permission denied" in r.stderr
