"""Pure parts of a start from XNAT's "Start Jupyter": XNAT's stored user options → XnatLaunch,
and the hardware's resources mapped onto the admin's profile within its limits."""

from __future__ import annotations

import pytest

from hub_ext.profiles import load_profiles
from spawner.request import parse_request
from spawner.xnat_launch import LaunchResources, XnatLaunch, apply_hardware, parse_launch, parse_resources
from xnat_bridge.errors import InvalidRequest, PermissionDenied

CONFIG = load_profiles("""
profiles:
  - slug: slurm-gpu
    backend: slurm
    resources: {cpus: 8, memory: 32G, gpus: 2, partition: gpu, constraint: a100}
  - slug: local-nomem
    backend: local
  - slug: kube
    backend: kubernetes
    resources: {cpus: 2, memory: 4G, cpu_limit: 4, mem_limit: 8G, image: "quay.io/jupyter/scipy-notebook:2024"}
""")
GPU, NOMEM, KUBE = CONFIG.profiles


def start(xsi_type="xnat:mrSessionData", item="XNAT_E00001", project="NEURO_MRI"):
    return parse_request({"userId": 3, "servername": "", "xsiType": xsi_type, "itemId": item,
                          "itemLabel": "MR_1", "projectId": project, "eventTrackingId": "17",
                          "dashboardConfigId": None, "task_template": None})


def stored(xsi_type="xnat:experimentData", item="XNAT_E00001", project="NEURO_MRI", **resources):
    """What the plugin's user-options endpoint answers (DefaultUserOptionsService)."""
    return {"userId": 3, "servername": "", "xsiType": xsi_type, "itemId": item, "itemLabel": "MR_1",
            "projectId": project, "eventTrackingId": "17", "dashboardConfigId": None,
            "task_template": {
                "container_spec": {
                    "image": "jupyter/datascience-notebook:hub-4.0.2", "command": "",
                    "env": {"XNAT_HOST": "https://xnat.example.org", "XNAT_USER": "alias-1",
                            "XNAT_PASS": "secret-1", "XNAT_DATA": "/data", "XNAT_XSI_TYPE": xsi_type,
                            "XNAT_ITEM_ID": item, "JUPYTERHUB_ROOT_DIR": "/workspace/alice",
                            "XNAT_HPC_HARDWARE": "gpu-large"},
                    "labels": {}, "mounts": [
                        {"source": "/etc", "target": "/workspace/alice", "type": "bind", "read_only": False},
                        {"source": "/", "target": "/data/projects/NEURO_MRI/experiments/MR_1",
                         "type": "bind", "read_only": True}]},
                "resources": {"cpu_limit": None, "cpu_reservation": None, "mem_limit": None,
                              "mem_reservation": None, "generic_resources": {}, **resources},
                "placement": {"constraints": ["node.role==worker"]}}}


def test_stored_options_become_a_launch_with_the_xnat_issued_token():
    launch = parse_launch(stored(cpu_limit=4.0, mem_limit="16G", generic_resources={"gpu": "1"}), start())
    assert launch.token.alias == "alias-1" and launch.token.secret == "secret-1"
    assert "secret-1" not in repr(launch)
    assert launch.hardware == "gpu-large" and launch.constraints == ("node.role==worker",)
    assert launch.resources == LaunchResources(4.0, 0.0, 16 << 30, 0, 1, ())
    assert launch.mount_targets == ("/workspace/alice", "/data/projects/NEURO_MRI/experiments/MR_1")


@pytest.mark.parametrize("doc", [stored(item="XNAT_E00002"), stored(project="OTHER"),
                                 stored(xsi_type="xnat:subjectData")])
def test_a_stored_start_for_another_item_is_refused(doc):
    with pytest.raises(PermissionDenied, match="start Jupyter again from XNAT"):
        parse_launch(doc, start())


@pytest.mark.parametrize("resources, words", [
    ({"mem_limit": "lots"}, "write it like 4G"),
    ({"cpu_limit": "two"}, "number of cores"),
    ({"cpu_limit": -1}, "number of cores"),
    ({"generic_resources": {"gpu": "one"}}, "whole number"),
])
def test_malformed_hardware_is_refused_by_name(resources, words):
    with pytest.raises(InvalidRequest, match=words):
        parse_resources(resources)


def test_memory_units_the_plugin_admits():
    assert parse_resources({"mem_limit": "4G", "mem_reservation": "512Mi"}) == \
        LaunchResources(mem_limit=4 << 30, mem_reservation=512 << 20)


def test_resources_within_the_profile_are_applied():
    launch = XnatLaunch("xnat:experimentData", "E", "P", resources=LaunchResources(3.5, 1, 16 << 30, 0, 1))
    profile, notes = apply_hardware(GPU, launch)
    assert (profile.resources.cpus, profile.resources.memory, profile.resources.gpus) == (4, 16 << 30, 1)
    assert profile.resources.partition == "gpu" and profile.slug == "slurm-gpu"
    assert notes == []
    reserved = apply_hardware(GPU, XnatLaunch("t", "E", "P", resources=LaunchResources(cpu_reservation=2)))[0]
    assert reserved.resources.cpus == 2 and reserved.resources.memory == 32 << 30


@pytest.mark.parametrize("resources, words", [
    (LaunchResources(cpu_limit=9), "asks for 9 CPUs; profile 'slurm-gpu' allows at most 8"),
    (LaunchResources(mem_limit=64 << 30), "asks for 64G of memory; profile 'slurm-gpu' allows at most 32G"),
    (LaunchResources(gpus=3), "asks for 3 GPU"),
])
def test_resources_beyond_the_profile_are_refused_with_the_fix(resources, words):
    with pytest.raises(PermissionDenied, match=words) as info:
        apply_hardware(GPU, XnatLaunch("t", "E", "P", resources=resources))
    assert "choose a smaller hardware configuration in XNAT" in info.value.message


def test_kubernetes_limits_and_what_is_ignored():
    launch = XnatLaunch("t", "E", "P", resources=LaunchResources(3, 0, 6 << 30, 0, 0, ("fpga",)),
                        constraints=("node.role==worker",), image="evil/image:latest", command="sh -c x")
    profile, notes = apply_hardware(KUBE, launch)
    r = profile.resources
    assert (r.cpus, r.cpu_limit, r.memory, r.mem_limit) == (2, 3, 4 << 30, 6 << 30)
    assert r.image == "quay.io/jupyter/scipy-notebook:2024"
    text = " ".join(notes)
    for words in ("fpga", "node.role==worker", "evil/image:latest ignored", "command ignored"):
        assert words in text
    with pytest.raises(PermissionDenied, match="at most 4"):
        apply_hardware(KUBE, XnatLaunch("t", "E", "P", resources=LaunchResources(cpu_limit=5)))


def test_a_profile_without_memory_keeps_the_backend_default():
    profile, notes = apply_hardware(NOMEM, XnatLaunch("t", "E", "P", resources=LaunchResources(mem_limit=1 << 30)))
    assert profile.resources.memory is None and "sets no memory limit" in notes[0]
    assert apply_hardware(NOMEM, XnatLaunch("t", "E", "P"))[0] is NOMEM
