"""The XNAT JupyterHub plugin's data layout as a mount layout (pure): where each archive
directory of the scope appears, which starts get it, and what the local and Kubernetes
builders make of it; the server environment the plugin's notebooks expect (general xsiType,
workspace, the compute environment's variables) on each backend."""

from __future__ import annotations

import dataclasses
import json

import pytest

from hub_ext.profiles import load_profiles
from spawner.decide import Session, build_plan, data_layout, plan_workspace, scope_mounts
from spawner.kube_objects import ArchiveVolume, make_secret, pod_settings
from spawner.plan import DataLayout, DataMount, ScopeMount, mount_target
from spawner.request import parse_request
from spawner.sandbox import SandboxSpec, bwrap_args
from spawner.slurm_script import SlurmSettings, batch_script, split_env
from spawner.xnat_launch import LaunchMount, XnatLaunch
from xnat_bridge.errors import InvalidRequest, NotFound
from xnat_bridge.offload.policy import OffloadPolicy
from xnat_bridge.scope import Scope

CONFIG = load_profiles("""
profiles:
  - slug: auto
    backend: local
  - slug: plugin
    backend: local
    data_layout: plugin
  - slug: xnat
    backend: local
    data_layout: xnat
  - slug: kube
    backend: kubernetes
  - slug: slurm
    backend: slurm
""")
AUTO, PLUGIN, XNAT, KUBE, SLURM = CONFIG.profiles
SESSIONS = {"SLEEP_EEG": (Session("E1", "EEG_S001_01", "S1", "SLEEP_EEG_S001"),
                          Session("E2", "EEG_S001_02", "S1", "SLEEP_EEG_S001"),
                          Session("E3", "EEG_S002_01", "S2", "SLEEP_EEG_S002"))}
XNAT_START = parse_request({"userId": 1, "servername": None, "xsiType": "xnat:subjectData", "itemId": "S1",
                            "itemLabel": "SLEEP_EEG_S001", "projectId": "SLEEP_EEG", "eventTrackingId": "1",
                            "dashboardConfigId": None, "task_template": None})
REST_START = parse_request({"projects": ["NEURO_MRI"]})


@pytest.mark.parametrize("source, target", [
    ("NEURO_MRI/arc001", "/data/projects/NEURO_MRI/experiments"),
    ("NEURO_MRI/arc001/MR_S001_01", "/data/projects/NEURO_MRI/experiments/MR_S001_01"),
    ("NEURO_MRI/resources", "/data/projects/NEURO_MRI/resources"),
    ("NEURO_MRI/subjects", "/data/projects/NEURO_MRI/subjects"),
    ("NEURO_MRI/subjects/S1", "/data/projects/NEURO_MRI/subject-resources/S1"),
    ("NEURO_MRI/arc002", "/data/projects/NEURO_MRI/experiments"),   # XNAT's currentArc, whatever it is
    ("NEURO_MRI/arc002/MR_S001_01", "/data/projects/NEURO_MRI/experiments/MR_S001_01"),
])
def test_plugin_targets_are_the_plugins_paths(source, target):
    assert mount_target(DataLayout.PLUGIN, source) == target
    assert mount_target(DataLayout.XNAT, source) == f"/xnat/data/{source}"


@pytest.mark.parametrize("source", ["NEURO_MRI", "NEURO_MRI/arc001/X/SCANS", "NEURO_MRI/../x", "/etc",
                                    "NEURO_MRI/cache", "NEURO_MRI/archive", "NEURO_MRI/arc/X", "NEURO_MRI/arc1"])
def test_sources_without_a_place_are_refused(source):
    with pytest.raises(InvalidRequest):
        mount_target(DataLayout.PLUGIN, source)


def test_layout_follows_the_profile_else_the_kind_of_start():
    assert data_layout(AUTO, XNAT_START) is DataLayout.PLUGIN
    assert data_layout(AUTO, REST_START) is DataLayout.XNAT
    assert data_layout(PLUGIN, REST_START) is DataLayout.PLUGIN
    assert data_layout(XNAT, XNAT_START) is DataLayout.XNAT
    with pytest.raises(InvalidRequest, match="unknown data layout 'docker'"):
        load_profiles("profiles:\n  - {slug: a, backend: local, data_layout: docker}\n")


def test_plugin_mounts_of_a_whole_project_and_of_a_subject():
    whole = scope_mounts(Scope.of(["NEURO_MRI"]), {}, DataLayout.PLUGIN)
    assert [(m.source, m.target, m.optional) for m in whole] == [
        ("NEURO_MRI/arc001", "/data/projects/NEURO_MRI/experiments", False),
        ("NEURO_MRI/resources", "/data/projects/NEURO_MRI/resources", True),
        ("NEURO_MRI/subjects", "/data/projects/NEURO_MRI/subjects", True)]
    subject = scope_mounts(XNAT_START.scope, SESSIONS, DataLayout.PLUGIN)
    assert [m.target for m in subject] == [
        "/data/projects/SLEEP_EEG/experiments/EEG_S001_01", "/data/projects/SLEEP_EEG/experiments/EEG_S001_02",
        "/data/projects/SLEEP_EEG/subject-resources/SLEEP_EEG_S001"]
    experiment = scope_mounts(Scope.of({"SLEEP_EEG": {"experiments": ["E3"]}}), SESSIONS, DataLayout.PLUGIN)
    assert [m.target for m in experiment] == ["/data/projects/SLEEP_EEG/experiments/EEG_S002_01"]


def _plan(layout: DataLayout, data_mount=DataMount.HOST_PATH, profile=AUTO):
    mounts = scope_mounts(XNAT_START.scope, SESSIONS, layout)
    return build_plan(user="alice", server_name="x", request=XNAT_START, profile=profile,
                      roles={"SLEEP_EEG": "Member"}, mounts=mounts, data_mount=data_mount,
                      xnat_url="http://x", alias="a", secret="s", offload=OffloadPolicy(), layout=layout)


def test_plan_in_the_plugin_layout_has_xnat_data_at_data():
    plan = _plan(DataLayout.PLUGIN)
    assert plan.server_env.to_env()["XNAT_DATA"] == "/data" and plan.layout is DataLayout.PLUGIN
    assert "XNAT_DATA" not in _plan(DataLayout.PLUGIN, DataMount.NONE).server_env.to_env()
    with pytest.raises(InvalidRequest, match="not where the plugin layout puts"):
        type(plan)(plan.user, plan.server_name, plan.profile, plan.roles,
                   (ScopeMount("SLEEP_EEG", "SLEEP_EEG/arc001/EEG_S001_01", "/data/elsewhere"),),
                   plan.server_env, plan.secret_env, plan.layout)


def test_local_sandbox_binds_the_plugin_paths_read_only_and_the_workspace():
    args = bwrap_args(_plan(DataLayout.PLUGIN), SandboxSpec("/srv/archive", "/home/alice"))
    text = " ".join(args)
    assert "--tmpfs /data" in text
    assert "--ro-bind /srv/archive/SLEEP_EEG/arc001/EEG_S001_01 /data/projects/SLEEP_EEG/experiments/EEG_S001_01" \
        in text
    assert ("--ro-bind-try /srv/archive/SLEEP_EEG/subjects/SLEEP_EEG_S001 "
            "/data/projects/SLEEP_EEG/subject-resources/SLEEP_EEG_S001") in text
    assert "--bind /home/alice /workspace/alice" in text
    # every directory above a bind exists in the sandbox before it (made 0755, not bwrap's 0700)
    assert args.index("/data/projects/SLEEP_EEG") < args.index("/data/projects/SLEEP_EEG/experiments/EEG_S001_01")
    assert "/xnat/data/SLEEP_EEG" not in text


def test_kubernetes_mounts_the_plugin_paths_and_leaves_optional_folders_out():
    plan = _plan(DataLayout.PLUGIN, DataMount.VOLUME, KUBE)
    settings = pod_settings(plan, ArchiveVolume(claim_name="xnat-archive"), secret_name="s-alice")
    mounts = {m["mountPath"]: m for m in settings.volume_mounts if m.get("subPath")}
    assert set(mounts) == {"/data/projects/SLEEP_EEG/experiments/EEG_S001_01",
                           "/data/projects/SLEEP_EEG/experiments/EEG_S001_02"}
    assert all(m["readOnly"] for m in mounts.values())
    assert mounts["/data/projects/SLEEP_EEG/experiments/EEG_S001_01"]["subPath"] == "SLEEP_EEG/arc001/EEG_S001_01"


# -- starts from XNAT: XNAT's list of folders, its archive paths ------------------------------
def launch_of(request, *mounts) -> XnatLaunch:
    """What XNAT stored for *request*: its data mounts ``(target, source)``, read-only."""
    item = request.xnat_item
    general = {"project": "xnat:projectData", "subject": "xnat:subjectData"}.get(item.kind, "xnat:experimentData")
    return XnatLaunch(general, item.item_id, item.project,
                      mounts=(LaunchMount("/workspace/alice", "/x/workspaces/users/alice", False),
                              *(LaunchMount(t, s, True) for t, s in mounts)))


PROJECT_START = parse_request({"userId": 1, "servername": None, "xsiType": "xnat:projectData",
                               "itemId": "SLEEP_EEG", "itemLabel": "SLEEP_EEG", "projectId": "SLEEP_EEG",
                               "eventTrackingId": "1", "dashboardConfigId": None, "task_template": None})
EEG_START = parse_request({"userId": 1, "servername": None, "xsiType": "xnat:eegSessionData", "itemId": "E3",
                           "itemLabel": "EEG_S002_01", "projectId": "SLEEP_EEG", "eventTrackingId": "1",
                           "dashboardConfigId": None, "task_template": None})
P = "/data/projects/SLEEP_EEG"


def test_a_project_start_mounts_what_xnat_lists_from_xnats_archive_folder():
    launch = launch_of(PROJECT_START, (f"{P}/experiments", "/data/xnat/archive/SLEEP_EEG/arc002"))
    mounts = scope_mounts(PROJECT_START.scope, {}, DataLayout.PLUGIN, launch=launch)
    # resources and subjects folders XNAT did not list (missing in the archive): skipped
    assert mounts == (ScopeMount("SLEEP_EEG", "SLEEP_EEG/arc002", f"{P}/experiments", True, True),)
    # a project with no archive folder at all (no sessions yet) starts, with nothing mounted
    assert scope_mounts(PROJECT_START.scope, {}, DataLayout.PLUGIN, launch=launch_of(PROJECT_START)) == ()
    # the hub's own layout and form/REST starts are as before
    assert [m.source for m in scope_mounts(PROJECT_START.scope, {}, DataLayout.PLUGIN)] == [
        "SLEEP_EEG/arc001", "SLEEP_EEG/resources", "SLEEP_EEG/subjects"]
    assert [m.source for m in scope_mounts(PROJECT_START.scope, {}, DataLayout.XNAT, launch=launch)] == ["SLEEP_EEG"]


def test_a_subject_start_mounts_its_listed_sessions_and_resources():
    launch = launch_of(XNAT_START, (f"{P}/experiments/EEG_S001_01", "/arch/SLEEP_EEG/arc001/EEG_S001_01"),
                       (f"{P}/subject-resources/SLEEP_EEG_S001", "/arch/SLEEP_EEG/subjects/SLEEP_EEG_S001"),
                       (f"{P}/experiments/EEG_S002_01", "/arch/SLEEP_EEG/arc001/EEG_S002_01"))  # not the subject's
    mounts = scope_mounts(XNAT_START.scope, SESSIONS, DataLayout.PLUGIN, launch=launch)
    # EEG_S001_02 has no folder (XNAT did not list it): skipped; EEG_S002_01 is outside the hub's scope
    assert [(m.source, m.target, m.optional, m.listed) for m in mounts] == [
        ("SLEEP_EEG/arc001/EEG_S001_01", f"{P}/experiments/EEG_S001_01", True, True),
        ("SLEEP_EEG/subjects/SLEEP_EEG_S001", f"{P}/subject-resources/SLEEP_EEG_S001", True, True)]


def test_a_subject_without_experiments_starts():
    lonely = parse_request({"userId": 1, "servername": None, "xsiType": "xnat:subjectData", "itemId": "S9",
                            "itemLabel": "SLEEP_EEG_S009", "projectId": "SLEEP_EEG", "eventTrackingId": "1",
                            "dashboardConfigId": None, "task_template": None})
    listed = launch_of(lonely, (f"{P}/subject-resources/SLEEP_EEG_S009", "/arch/SLEEP_EEG/subjects/SLEEP_EEG_S009"))
    assert scope_mounts(lonely.scope, SESSIONS, DataLayout.PLUGIN, launch=listed) == (
        ScopeMount("SLEEP_EEG", "SLEEP_EEG/subjects/SLEEP_EEG_S009", f"{P}/subject-resources/SLEEP_EEG_S009",
                   True, True),)
    assert scope_mounts(lonely.scope, SESSIONS, DataLayout.PLUGIN, launch=launch_of(lonely)) == ()
    plan = build_plan(user="alice", server_name="x", request=lonely, profile=AUTO, roles={"SLEEP_EEG": "Member"},
                      mounts=(), data_mount=DataMount.HOST_PATH, xnat_url="http://x", alias="a", secret="s",
                      offload=OffloadPolicy(), layout=DataLayout.PLUGIN, launch=launch_of(lonely))
    assert plan.mounts == () and "XNAT_DATA" not in plan.server_env.to_env()
    # without XNAT's word (a REST start, the hub's layout) an unknown subject is still refused
    for layout, launch in ((DataLayout.PLUGIN, None), (DataLayout.XNAT, listed)):
        with pytest.raises(NotFound, match="S9 matches no experiment"):
            scope_mounts(lonely.scope, SESSIONS, layout, launch=launch)
    with pytest.raises(NotFound, match="matches no experiment"):  # an experiment must exist, from XNAT too
        scope_mounts(Scope.of({"SLEEP_EEG": {"experiments": ["E404"]}}), SESSIONS, DataLayout.PLUGIN,
                     launch=launch_of(EEG_START))


def test_a_path_xnat_does_not_explain_falls_back_to_the_default_skipped_if_missing():
    launch = launch_of(EEG_START, (f"{P}/experiments/EEG_S002_01", "/arch/renamed_project_dir/arc001/EEG_S002_01"))
    mounts = scope_mounts(EEG_START.scope, SESSIONS, DataLayout.PLUGIN, launch=launch)
    assert mounts == (ScopeMount("SLEEP_EEG", "SLEEP_EEG/arc001/EEG_S002_01", f"{P}/experiments/EEG_S002_01",
                                 True, False),)


def _xnat_plan(request, launch, mounts, profile=AUTO, data_mount=DataMount.HOST_PATH, **kw):
    return build_plan(user="alice", server_name="x", request=request, profile=profile,
                      roles={"SLEEP_EEG": "Member"}, mounts=mounts, data_mount=data_mount, xnat_url="http://x",
                      alias="a", secret="s", offload=OffloadPolicy(), layout=DataLayout.PLUGIN, launch=launch, **kw)


def test_local_binds_skip_missing_folders_and_kubernetes_mounts_only_what_xnat_listed():
    launch = launch_of(XNAT_START, (f"{P}/experiments/EEG_S001_01", "/arch/SLEEP_EEG/arc002/EEG_S001_01"),
                       (f"{P}/experiments/EEG_S001_02", "/arch/elsewhere/EEG_S001_02"))
    mounts = scope_mounts(XNAT_START.scope, SESSIONS, DataLayout.PLUGIN, launch=launch)
    text = " ".join(bwrap_args(_xnat_plan(XNAT_START, launch, mounts), SandboxSpec("/srv/archive", "/home/alice")))
    assert f"--ro-bind-try /srv/archive/SLEEP_EEG/arc002/EEG_S001_01 {P}/experiments/EEG_S001_01" in text
    assert f"--ro-bind-try /srv/archive/SLEEP_EEG/arc001/EEG_S001_02 {P}/experiments/EEG_S001_02" in text
    assert "--ro-bind " not in text.replace("--ro-bind-try", "")  # nothing missing fails the start
    settings = pod_settings(_xnat_plan(XNAT_START, launch, mounts, KUBE, DataMount.VOLUME),
                            ArchiveVolume(claim_name="xnat-archive"), secret_name="s-alice")
    assert [(m["subPath"], m["mountPath"]) for m in settings.volume_mounts] == [
        ("SLEEP_EEG/arc002/EEG_S001_01", f"{P}/experiments/EEG_S001_01")]


# -- the server's environment ------------------------------------------------------------------
def test_the_server_gets_the_general_xsi_type_not_the_posted_one():
    launch = launch_of(EEG_START)
    for request, general in ((EEG_START, "xnat:experimentData"), (XNAT_START, "xnat:subjectData"),
                             (PROJECT_START, "xnat:projectData")):
        env = _xnat_plan(request, launch, ()).server_env.to_env()
        assert (env["XNAT_XSI_TYPE"], env["XNAT_ITEM_ID"]) == (general, request.xnat_item.item_id)
    assert EEG_START.xnat_item.xsi_type == "xnat:eegSessionData"  # what the plugin's UI posts


def test_the_workspace_where_the_backend_gives_one():
    local = _xnat_plan(XNAT_START, None, ()).server_env.to_env()
    assert local["JUPYTERHUB_ROOT_DIR"] == local["XDG_CONFIG_HOME"] == "/workspace/alice"
    assert local["XNAT_HPC_WORKSPACE"] == "/workspace/alice/xnat-hpc"  # jobs and datasets inside the root dir
    args = bwrap_args(_xnat_plan(XNAT_START, None, ()), SandboxSpec("", "/home/alice"))
    assert "--bind /home/alice /workspace/alice" in " ".join(args)
    # Slurm: no sandbox on the node, so no /workspace: the server starts in the home directory
    slurm = _xnat_plan(XNAT_START, None, (), SLURM, DataMount.NONE).server_env.to_env()
    assert not {"JUPYTERHUB_ROOT_DIR", "XDG_CONFIG_HOME", "XNAT_HPC_WORKSPACE"} & slurm.keys()
    # Kubernetes: where the site's storage mounts the home at /workspace/{user} (the backend says so)
    assert plan_workspace("alice", KUBE, DataLayout.PLUGIN) is None
    kube = _xnat_plan(XNAT_START, None, (), KUBE, DataMount.VOLUME, workspace=True)
    settings = pod_settings(kube, None, secret_name="s-alice")
    assert settings.environment["JUPYTERHUB_ROOT_DIR"] == "/workspace/alice"
    # the hub's own layout (form and REST starts, or a profile's data_layout: xnat): none of it
    assert plan_workspace("alice", AUTO, DataLayout.XNAT) is None
    rest = build_plan(user="alice", server_name="", request=REST_START, profile=XNAT, roles={"NEURO_MRI": "Owner"},
                      mounts=(), data_mount=DataMount.NONE, xnat_url="http://x", alias="a", secret="s",
                      offload=OffloadPolicy())
    assert not {"JUPYTERHUB_ROOT_DIR", "XDG_CONFIG_HOME", "XNAT_HPC_WORKSPACE", "XNAT_XSI_TYPE"} & \
        rest.server_env.to_env().keys()


def test_a_plan_with_a_workspace_outside_the_plugins_layout_is_refused():
    plan = _xnat_plan(XNAT_START, None, ())
    env = dataclasses.replace(plan.server_env, workspace="/workspace/bob")
    with pytest.raises(InvalidRequest, match="workspace '/workspace/bob' is not the plugin layout's"):
        dataclasses.replace(plan, server_env=env)
    with pytest.raises(InvalidRequest, match="is not the plugin layout's"):
        dataclasses.replace(plan, layout=DataLayout.XNAT)


COMPUTE_ENV = (("AWS_SECRET_ACCESS_KEY", "s3cr3t"), ("JUPYTER_ENABLE_LAB", "yes"), ("OMP_NUM_THREADS", "2"),
               ("TEMPLATE", "{username}"))


def test_the_compute_environment_reaches_each_backend_secrets_as_secrets():
    launch = dataclasses.replace(launch_of(XNAT_START), env=COMPUTE_ENV)
    plan = _xnat_plan(XNAT_START, launch, ())
    env = plan.server_env.to_env()
    assert (env["JUPYTER_ENABLE_LAB"], env["OMP_NUM_THREADS"], env["TEMPLATE"]) == ("yes", "2", "{username}")
    assert "AWS_SECRET_ACCESS_KEY" not in env and "s3cr3t" not in json.dumps(env)
    assert plan.secret_env == {"AWS_SECRET_ACCESS_KEY": "s3cr3t", "XNAT_PASS": "s"}
    # Kubernetes: plain values in the pod (kubespawner's templates escaped), secrets from the Secret
    kube = _xnat_plan(XNAT_START, launch, (), KUBE, DataMount.NONE)
    settings = pod_settings(kube, None, secret_name="s-alice")
    assert settings.environment["JUPYTER_ENABLE_LAB"] == "yes"
    assert settings.environment["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == \
        "AWS_SECRET_ACCESS_KEY"
    assert "AWS_SECRET_ACCESS_KEY" in make_secret(kube, "s-alice")["data"]
    # Slurm: public names exported, secrets only through the one-time bootstrap
    slurm = _xnat_plan(XNAT_START, launch, (), SLURM, DataMount.NONE)
    public, secret = split_env({**slurm.server_env.to_env(), **slurm.secret_env})
    assert set(secret) == {"AWS_SECRET_ACCESS_KEY", "XNAT_PASS"}
    script = batch_script(slurm, SlurmSettings(("python", "-m", "xnat_bridge.launch"), ("jupyterhub-singleuser",),
                                               "/home/alice"), list(public))
    export = next(line for line in script.splitlines() if line.startswith("# environment: "))
    assert {"JUPYTER_ENABLE_LAB", "OMP_NUM_THREADS", "TEMPLATE"} <= set(export.split(": ", 1)[1].split(","))
    assert "s3cr3t" not in script and "AWS_SECRET" not in script
    # the hub's own variables always win over a compute environment's (never both: refused by name)
    clash = dataclasses.replace(plan.server_env, compute_env=(("XNAT_HOST", "http://evil"),))
    assert clash.to_env()["XNAT_HOST"] == "http://x"
