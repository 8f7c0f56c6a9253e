"""The XNAT JupyterHub plugin's data layout as a mount layout (pure): where each archive
directory of the scope appears, which starts get it, and what the local and Kubernetes
builders make of it."""

from __future__ import annotations

import pytest

from hub_ext.profiles import load_profiles
from spawner.decide import Session, build_plan, data_layout, scope_mounts
from spawner.kube_objects import ArchiveVolume, pod_settings
from spawner.plan import DataLayout, DataMount, ScopeMount, mount_target
from spawner.request import parse_request
from spawner.sandbox import SandboxSpec, bwrap_args
from xnat_bridge.errors import InvalidRequest
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
""")
AUTO, PLUGIN, XNAT, KUBE = CONFIG.profiles
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
])
def test_plugin_targets_are_the_plugins_paths(source, target):
    assert mount_target(DataLayout.PLUGIN, source) == target
    assert mount_target(DataLayout.XNAT, source) == f"/xnat/data/{source}"


@pytest.mark.parametrize("source", ["NEURO_MRI", "NEURO_MRI/arc001/X/SCANS", "NEURO_MRI/../x", "/etc",
                                    "NEURO_MRI/cache"])
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
