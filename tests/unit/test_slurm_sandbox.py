"""Slurm servers with the archive mounted on the nodes (issue 20, item 3), pure: a Slurm profile's
``archive_node_path`` gives the plan the scope's mounts and ``XNAT_DATA`` exactly as the local
backend's, and the batch script runs the launcher in the one bubblewrap builder's sandbox
(:func:`spawner.sandbox.bwrap_args`) with the scope's folders of the node path read-only, then
``setpriv`` to the user; without it nothing is mounted and the job is the user's, as before.
The spawner's side (who submits, whom the sandbox drops to) against a recorded ``sbatch``; the
development cluster's pieces (the demo's profiles, the node's log directory)."""

from __future__ import annotations

import dataclasses
import grp
import os
import shlex
import types
from pathlib import Path

import pytest
from traitlets.config import Config

from devstack import demo, hubconfig
from devstack import slurm as devslurm
from hub_ext.profiles import load_profiles
from spawner.decide import Session, build_plan, node_sandbox, scope_mounts
from spawner.plan import DataLayout, DataMount, SpawnPlan
from spawner.request import parse_request
from spawner.sandbox import RunAs, SandboxSpec, bwrap_args, sandbox_command
from spawner.slurm_script import NodeSandbox, SlurmSettings, batch_script, split_env
from xnat_bridge.errors import InvalidRequest, XnatHpcError
from xnat_bridge.offload.policy import OffloadPolicy

NODE = "/mnt/xnat/archive"
CONFIG = load_profiles(f"""
profiles:
  - slug: local
    backend: local
  - slug: slurm-data
    backend: slurm
    archive_node_path: {NODE}
    resources: {{cpus: 1, memory: 1G, partition: interactive}}
  - slug: slurm-rest
    backend: slurm
    resources: {{cpus: 1, memory: 1G, partition: interactive}}
""")
LOCAL, MOUNTED, REST = CONFIG.profiles
SESSIONS = {"SLEEP_EEG": (Session("E1", "EEG_S001_01", "S1", "SLEEP_EEG_S001"),
                          Session("E2", "EEG_S001_02", "S1", "SLEEP_EEG_S001"),
                          Session("E3", "EEG_S002_01", "S2", "SLEEP_EEG_S002"))}
SUBJECT_START = parse_request({"userId": 1, "servername": None, "xsiType": "xnat:subjectData", "itemId": "S1",
                               "itemLabel": "SLEEP_EEG_S001", "projectId": "SLEEP_EEG", "eventTrackingId": "1",
                               "dashboardConfigId": None, "task_template": None})
PROJECT_REST = parse_request({"projects": ["NEURO_MRI"]})
ALICE = RunAs(1001, 1001, (1001, 995), "/usr/bin/setpriv")
LAUNCHER = ("/opt/venv/bin/python", "-m", "xnat_bridge.launch")
SERVER = ("/opt/venv/bin/jupyterhub-singleuser", "--debug")
SANDBOX = NodeSandbox(ALICE, "/var/log/xnat-hpc-hub/slurm-servers", ("/opt/venv", "/run/munge"),
                      ("/srv/staging",), "/usr/bin/bwrap")


def plan_of(profile, request=SUBJECT_START, layout=DataLayout.PLUGIN, data_mount=DataMount.HOST_PATH,
            roles=None) -> SpawnPlan:
    mounts = scope_mounts(request.scope, SESSIONS, layout)
    return build_plan(user="alice", server_name="sleep", request=request, profile=profile,
                      roles=roles or {p: "Member" for p in request.projects}, mounts=mounts,
                      data_mount=data_mount, xnat_url="http://x", alias="a", secret="s3cret",
                      offload=OffloadPolicy(staging_dir="/srv/staging"), layout=layout)


def settings(sandbox: NodeSandbox | None = SANDBOX) -> SlurmSettings:
    return SlurmSettings(LAUNCHER, SERVER, "/home/alice", sandbox=sandbox)


def exec_argv(script: str) -> list[str]:
    line = next(line for line in script.splitlines() if line.startswith("exec "))
    return shlex.split(line)[1:]


# -- the plan: the same mounts and XNAT_DATA as local -------------------------------------------
@pytest.mark.parametrize("request_, layout", [(SUBJECT_START, DataLayout.PLUGIN), (PROJECT_REST, DataLayout.XNAT),
                                              (PROJECT_REST, DataLayout.PLUGIN)])
def test_a_slurm_profile_with_a_node_path_plans_what_local_plans(request_, layout):
    local, slurm = plan_of(LOCAL, request_, layout), plan_of(MOUNTED, request_, layout)
    assert slurm.mounts == local.mounts and slurm.mounts
    assert slurm.server_env.to_env() | {"XNAT_HPC_PROFILE": "local"} == local.server_env.to_env()
    assert slurm.server_env.data_dir == layout.root
    if layout is DataLayout.PLUGIN:  # the plugin's workspace: the node sandbox binds the home there
        assert slurm.server_env.to_env()["JUPYTERHUB_ROOT_DIR"] == "/workspace/alice"
    assert node_sandbox(MOUNTED) and not node_sandbox(REST) and not node_sandbox(LOCAL)


def test_without_a_node_path_a_slurm_plan_mounts_nothing():
    for data_mount in (DataMount.HOST_PATH, DataMount.NONE):
        plan = plan_of(REST, data_mount=data_mount)
        env = plan.server_env.to_env()
        assert plan.mounts == () and "XNAT_DATA" not in env
        assert not {"JUPYTERHUB_ROOT_DIR", "XDG_CONFIG_HOME", "XNAT_HPC_WORKSPACE"} & env.keys()
    assert plan_of(MOUNTED, data_mount=DataMount.NONE).mounts == ()  # a backend that mounts nothing


# -- the batch script: the one bwrap builder, then setpriv --------------------------------------
def test_the_script_runs_the_launcher_in_the_one_sandbox_builders_sandbox():
    plan = plan_of(MOUNTED)
    public, _ = split_env({"XNAT_HOST": "h", "XNAT_PASS": "s3cret", "USER": "alice", "HOME": "/home/alice"})
    script = batch_script(plan, settings(), list(public))
    spec = SandboxSpec(NODE, "/home/alice", SANDBOX.ro_paths, SANDBOX.rw_paths, "/usr/bin/bwrap")
    assert exec_argv(script) == [*sandbox_command(plan, spec, ALICE), *LAUNCHER, "--", *SERVER]
    assert exec_argv(script)[:2] == ["/usr/bin/bwrap", "--die-with-parent"]
    setpriv = exec_argv(script).index("/usr/bin/setpriv")
    assert exec_argv(script)[setpriv - 1] == "--" and "--no-new-privs" in exec_argv(script)[setpriv:]
    # root writes the job's output: never into the user's home
    assert "#SBATCH --output=/var/log/xnat-hpc-hub/slurm-servers/jupyter-xnat-%j.log" in script
    assert "#SBATCH --chdir=/home/alice" in script and "# environment: HOME,USER,XNAT_HOST" in script
    assert "s3cret" not in script and "XNAT_PASS" not in script


def test_only_the_scopes_folders_of_the_node_path_are_bound_read_only():
    plan = plan_of(MOUNTED)
    argv = exec_argv(batch_script(plan, settings(), []))
    binds = [(argv[i], argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a.startswith("--") and
             i + 2 < len(argv) and argv[i + 1].startswith(NODE)]
    P = "/data/projects/SLEEP_EEG"
    assert binds == [
        ("--ro-bind", f"{NODE}/SLEEP_EEG/arc001/EEG_S001_01", f"{P}/experiments/EEG_S001_01"),
        ("--ro-bind", f"{NODE}/SLEEP_EEG/arc001/EEG_S001_02", f"{P}/experiments/EEG_S001_02"),
        # optional folders (a subject's resources) are skipped where the archive lacks them
        ("--ro-bind-try", f"{NODE}/SLEEP_EEG/subjects/SLEEP_EEG_S001", f"{P}/subject-resources/SLEEP_EEG_S001")]
    # nothing else of the archive: not its root, not another subject's or project's folder
    assert [a for a in argv if a.startswith(NODE)] == [source for _, source, _ in binds]
    assert NODE not in argv and not any("EEG_S002" in a or "NEURO_MRI" in a for a in argv)
    assert ["--tmpfs", "/data"] == argv[argv.index("/data") - 1:argv.index("/data") + 1]
    assert ["--bind", "/home/alice", "/workspace/alice"] == argv[argv.index("/workspace/alice") - 2:
                                                                 argv.index("/workspace/alice") + 1]


def test_a_whole_project_in_the_plugin_layout_tries_its_optional_folders():
    argv = exec_argv(batch_script(plan_of(MOUNTED, PROJECT_REST, DataLayout.PLUGIN,
                                          roles={"NEURO_MRI": "Owner"}), settings(), []))
    P = "/data/projects/NEURO_MRI"
    assert argv[argv.index(f"{NODE}/NEURO_MRI/arc001") - 1:][:3] == [
        "--ro-bind", f"{NODE}/NEURO_MRI/arc001", f"{P}/experiments"]
    for folder in ("resources", "subjects"):
        assert argv[argv.index(f"{NODE}/NEURO_MRI/{folder}") - 1] == "--ro-bind-try"


def test_a_node_path_with_spaces_is_quoted_not_split():
    odd = dataclasses.replace(MOUNTED, archive_node_path="/mnt/x n a t; rm -rf")
    argv = exec_argv(batch_script(plan_of(odd), settings(), []))
    assert "/mnt/x n a t; rm -rf/SLEEP_EEG/arc001/EEG_S001_01" in argv


def test_without_a_node_path_the_job_is_the_users_and_mounts_nothing():
    script = batch_script(plan_of(REST), settings(None), ["XNAT_HOST"])
    assert "bwrap" not in script and "setpriv" not in script and "/data" not in script
    assert exec_argv(script) == [*LAUNCHER, "--", *SERVER]
    assert "#SBATCH --output=/home/alice/jupyter-xnat-%j.log" in script
    assert "XNAT_DATA" not in script


@pytest.mark.parametrize("plan, sandbox, words", [
    (plan_of(REST), SANDBOX, "names no archive_node_path, so its Slurm job has no sandbox"),
    (plan_of(MOUNTED), None, "names archive_node_path '/mnt/xnat/archive' but the Slurm job was given no sandbox"),
    (dataclasses.replace(plan_of(MOUNTED), profile=REST), None, "mounts 3 archive folders, but a Slurm job "
                                                                "without a node sandbox can mount none"),
    (plan_of(MOUNTED), dataclasses.replace(SANDBOX, log_dir="/home/alice/logs"), "outside the home '/home/alice'"),
    (plan_of(MOUNTED), dataclasses.replace(SANDBOX, log_dir="/"), "outside the home"),
    (plan_of(MOUNTED), dataclasses.replace(SANDBOX, log_dir="/var/../home/alice"), "outside the home"),
    (plan_of(MOUNTED), dataclasses.replace(SANDBOX, log_dir="logs"), "must be an absolute directory"),
    (plan_of(MOUNTED), dataclasses.replace(SANDBOX, log_dir="/var/log/x y"), "characters sbatch does not accept"),
])
def test_a_script_that_disagrees_with_its_profile_is_refused(plan, sandbox, words):
    with pytest.raises(InvalidRequest, match=words.replace("(", r"\(")):
        batch_script(plan, settings(sandbox), [])


@pytest.mark.parametrize("node_path, words", [
    ("mnt/xnat/archive", "must be an absolute path"),   # a profile the schema would have refused
    ("/", "may not be bound into the sandbox"),
    ("/xnat/data/elsewhere", "may not be bound into the sandbox"),
    ("/mnt/a\nb", "must be an absolute path"),
])
def test_bad_node_paths_are_refused_by_the_builder_too(node_path, words):
    bad = dataclasses.replace(MOUNTED, archive_node_path=node_path)
    with pytest.raises(InvalidRequest, match=words):
        batch_script(plan_of(bad), settings(), [])


def test_the_sandbox_never_runs_the_server_as_root():
    with pytest.raises(InvalidRequest, match="may not run as root"):
        batch_script(plan_of(MOUNTED), settings(dataclasses.replace(SANDBOX, run_as=RunAs(0, 0))), [])


# -- the spawner: who submits, whom the sandbox drops to ------------------------------------------
def _spawner(config: Config | None = None):
    from spawner.slurm import XnatSlurmSpawner

    return XnatSlurmSpawner(config=config or Config(), user=types.SimpleNamespace(name="alice", url="/user/alice/"))


NOBODY = types.SimpleNamespace(pw_name="nobody", pw_uid=65534, pw_gid=65534, pw_dir="/nonexistent")


def test_the_spawner_drops_to_the_user_with_the_archive_group_only_when_mounted():
    c = Config()
    c.XnatSlurmSpawner.archive_group = grp.getgrgid(65534).gr_name  # a group that exists here
    spawner = _spawner(c)
    assert spawner.data_mount() is DataMount.HOST_PATH  # per profile: build_plan decides
    mounted = spawner._run_as(plan_of(MOUNTED), NOBODY)
    assert (mounted.uid, mounted.gid, mounted.setpriv) == (65534, 65534, "/usr/bin/setpriv")
    assert 65534 in mounted.groups
    empty = dataclasses.replace(plan_of(MOUNTED), mounts=(), server_env=plan_of(REST).server_env)
    assert spawner._run_as(empty, NOBODY).groups == tuple(os.getgrouplist("nobody", 65534))
    c.XnatSlurmSpawner.archive_group = "no-such-group-xnat-hpc"
    with pytest.raises(XnatHpcError, match="access to the XNAT archive on the compute nodes is not set up"):
        _spawner(c)._run_as(plan_of(MOUNTED), NOBODY)


def test_the_sandbox_settings_bind_the_code_munge_and_staging():
    c = Config()
    c.XnatSlurmSpawner.python = "/opt/site/venv/bin/python"
    c.XnatSlurmSpawner.sandbox_ro_paths = ["/sw"]
    spawner = _spawner(c)
    assert spawner.sandbox_settings(plan_of(REST)) is None
    with pytest.raises(XnatHpcError, match="not prepared"):
        spawner.sandbox_settings(plan_of(MOUNTED))
    spawner.node_run_as = ALICE
    sandbox = spawner.sandbox_settings(plan_of(MOUNTED))
    code = str(Path(__file__).resolve().parents[2])
    assert {"/opt/site/venv", code, "/run/munge", "/sw"} <= set(sandbox.ro_paths)
    assert sandbox.rw_paths == ("/srv/staging",) and sandbox.run_as == ALICE
    assert (sandbox.log_dir, sandbox.bwrap) == ("/var/log/xnat-hpc-hub/slurm-servers", "/usr/bin/bwrap")


async def test_a_hub_that_is_not_root_refuses_a_node_sandbox(monkeypatch):
    from spawner import slurm

    async def no_staging(spawner, plan, account):
        return None

    monkeypatch.setattr(slurm, "prepare_staging", no_staging)
    monkeypatch.setattr(slurm.os, "geteuid", lambda: 1000)
    spawner = _spawner()
    monkeypatch.setattr(spawner, "_account", lambda: NOBODY)
    await spawner.prepare_host(plan_of(REST))  # REST only: nothing to build as root
    assert spawner.node_run_as is None
    with pytest.raises(XnatHpcError, match="cannot run servers of profile 'slurm-data' on Slurm"):
        await spawner.prepare_host(plan_of(MOUNTED))


@pytest.mark.parametrize("profile, sbatch_as", [(MOUNTED, None), (REST, "alice")])
async def test_a_sandboxed_job_is_submitted_by_the_hub_the_others_as_the_user(monkeypatch, profile, sbatch_as):
    from hub_ext import bootstrap
    from spawner import slurm

    submitted = {}

    async def asubmit(script, *, run_as=None, env=None, cwd=None, timeout=None):
        submitted.update(script=script, run_as=run_as, env=env)
        return "77"

    monkeypatch.setattr(slurm.slurm, "asubmit", asubmit)
    monkeypatch.setattr(slurm.os, "geteuid", lambda: 0)
    monkeypatch.setattr(bootstrap.registry, "issue", lambda owner, secret, ttl: "code")
    monkeypatch.setattr(bootstrap.registry, "bind", lambda code, job_id: None)
    spawner = _spawner()
    spawner.xnat_plan = plan_of(profile)
    spawner.node_run_as = ALICE
    monkeypatch.setattr(spawner, "_home", lambda: "/home/alice")
    monkeypatch.setattr(spawner, "get_env", lambda: {"XNAT_PASS": "s3cret", "XNAT_HOST": "h"})
    monkeypatch.setattr(spawner, "get_args", lambda: [])
    assert await spawner.submit_batch_script() == "77"
    assert submitted["run_as"] == sbatch_as
    assert ("/usr/bin/bwrap" in submitted["script"]) is (profile is MOUNTED)
    assert "s3cret" not in submitted["script"] and "XNAT_PASS" not in submitted["env"]


# -- the development cluster shows the mounted case ---------------------------------------------------
def test_the_demo_profiles_name_the_run_directorys_archive_as_the_node_path(tmp_path):
    archive = tmp_path / "my demo" / "xnat" / "archive"
    config = load_profiles(demo.demo_profiles(archive))
    nodes = {p.slug: p.archive_node_path for p in config.profiles if p.backend == "slurm"}
    assert nodes == {"slurm-cpu": None, "slurm-data": str(archive), "slurm-owners": None}
    assert config.profile_for_hardware("slurm-data").slug == "slurm-data"
    default = load_profiles(demo.DEMO_PROFILES.read_text()).by_slug("slurm-data")
    assert default.archive_node_path == str(demo.DEMO_ARCHIVE)
    with pytest.raises(XnatHpcError, match="exactly once"):
        demo.demo_profiles(archive, "profiles: []\n")


def test_the_dev_hubs_and_the_dev_node_agree_on_the_sandboxed_jobs_log_directory():
    text = hubconfig.xnat_hub_config(xnat_url="http://x", profiles=Path("/p"), archive=Path("/a"),
                                     audit_log=Path("/l"))
    assert f'c.XnatSlurmSpawner.sandbox_log_dir = "{devslurm.SERVER_LOG_DIR}"' in text
    cfg = devslurm.SlurmDevConfig(run_dir=Path("/r"), controller_host="vm")
    assert cfg.server_log_dir == devslurm.SERVER_LOG_DIR
    assert str(devslurm.SERVER_LOG_DIR) not in devslurm.slurm_conf(cfg)  # a node directory, not Slurm's
    assert _spawner().sandbox_log_dir == str(devslurm.SERVER_LOG_DIR)
