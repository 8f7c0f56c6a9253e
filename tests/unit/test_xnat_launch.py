"""Pure parts of a start from XNAT's "Start Jupyter": XNAT's stored user options → XnatLaunch,
the general xsiType, the compute environment's variables, XNAT's data mounts, and the hardware's
resources mapped onto the admin's profile within its limits."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from devxnat import plugin_configs as pc
from hub_ext.profiles import load_profiles
from spawner.request import parse_request
from spawner.xnat_launch import (
    EXPERIMENT_TYPES,
    PLUGIN_ENV,
    RESERVED_ENV,
    SCAN_TYPES,
    LaunchMount,
    LaunchResources,
    XnatLaunch,
    apply_hardware,
    archive_paths,
    general_xsi_type,
    item_type,
    launch_env,
    parse_launch,
    parse_resources,
    reserved_env,
)
from xnat_bridge.errors import InvalidRequest, PermissionDenied

REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "xnat-schemas" / "xnat.xsd"

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


def stored(xsi_type="xnat:experimentData", item="XNAT_E00001", project="NEURO_MRI", env=None, **resources):
    """What the plugin's user-options endpoint answers (DefaultUserOptionsService)."""
    doc = {"userId": 3, "servername": "", "xsiType": xsi_type, "itemId": item, "itemLabel": "MR_1",
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
    doc["task_template"]["container_spec"]["env"].update(env or {})
    return doc


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


# -- xsiType: the plugin's general type ------------------------------------------------------
def _subtypes(of: str) -> set[str]:
    ns = {"xs": "http://www.w3.org/2001/XMLSchema"}
    base = {}
    for ct in ET.parse(REFERENCE).getroot().findall("xs:complexType", ns):
        ext = ct.find(".//xs:extension", ns)
        if ext is not None:
            base[ct.get("name")] = ext.get("base").split(":")[-1]

    def ancestors(name):
        while name in base:
            name = base[name]
            yield name
    return {f"xnat:{n}" for n in base if of in ancestors(n)}


def test_the_tables_are_xnats_schema():
    """Every type of XNAT's xnat.xsd that is an experimentData (imageScanData) and nothing else:
    what the plugin's ``instanceOf`` answers for XNAT's own types."""
    assert REFERENCE.exists(), f"reference schema missing: {REFERENCE}"
    assert EXPERIMENT_TYPES == _subtypes("experimentData")
    assert SCAN_TYPES == _subtypes("imageScanData")


@pytest.mark.parametrize("xsi_type, general", [
    ("xnat:eegSessionData", "xnat:experimentData"), ("xnat:mrSessionData", "xnat:experimentData"),
    ("xnat:qcAssessmentData", "xnat:experimentData"), ("xnat:subjectVariablesData", "xnat:experimentData"),
    ("xnat:experimentData", "xnat:experimentData"), ("xnat:projectData", "xnat:projectData"),
    ("xnat:subjectData", "xnat:subjectData"), ("xnat:mrScanData", "xnat:imageScanData"),
    ("xdat:stored_search", "xdat:stored_search"),
    ("icr:roiCollectionData", None), ("xnat:fooSessionData", None), ("xnat:investigatorData", None),
])
def test_general_xsi_type(xsi_type, general):
    assert general_xsi_type(xsi_type) == general


def test_devxnats_plugin_maps_its_own_types_as_the_hub_does():
    for xsi_type in ("xnat:mrSessionData", "xnat:eegSessionData", "xnat:ecgSessionData", "xnat:imageSessionData",
                     "xnat:subjectAssessorData", "xnat:mrScanData", "xnat:eegScanData", "xnat:ecgScanData",
                     "xnat:projectData", "xnat:subjectData", "xnat:experimentData"):
        assert pc.general_xsi_type(xsi_type) == general_xsi_type(xsi_type), xsi_type


@pytest.mark.parametrize("posted, kind_type", [("xnat:projectData", "xnat:projectData"),
                                              ("xnat:subjectData", "xnat:subjectData"),
                                              ("xnat:eegSessionData", "xnat:experimentData"),
                                              ("icr:roiCollectionData", "xnat:experimentData")])
def test_the_servers_xsi_type_is_the_general_one(posted, kind_type):
    item = "NEURO_MRI" if posted == "xnat:projectData" else "XNAT_E00001"
    assert item_type(start(posted, item).xnat_item) == kind_type


@pytest.mark.parametrize("posted, stored_type", [
    ("xnat:eegSessionData", "xnat:experimentData"),     # what XNAT stores
    ("xnat:eegSessionData", "xnat:eegSessionData"),     # an older stand-in: accepted
    ("icr:roiCollectionData", "xnat:experimentData"),   # a site's type: XNAT's schema says experiment
])
def test_xnat_stores_the_general_type_of_the_posted_one(posted, stored_type):
    assert parse_launch(stored(stored_type), start(posted)).xsi_type == stored_type


@pytest.mark.parametrize("posted, stored_type", [("xnat:eegSessionData", "xnat:imageScanData"),
                                                 ("xnat:eegSessionData", "xnat:mrSessionData"),
                                                 ("xnat:subjectData", "xnat:experimentData")])
def test_a_stored_type_that_is_not_the_posted_ones_is_refused(posted, stored_type):
    with pytest.raises(PermissionDenied, match="start Jupyter again from XNAT"):
        parse_launch(stored(stored_type), start(posted))


def test_a_type_xnat_does_not_store_as_an_experiment_is_refused():
    """XNAT keeps a type its schema does not know (``instanceOf`` is false): the plugin would start a
    server with no data; this hub has no scope for such an item and says so."""
    with pytest.raises(InvalidRequest, match="does not store icr:roiCollectionData as an experiment"):
        parse_launch(stored("icr:roiCollectionData"), start("icr:roiCollectionData"))


# -- container_spec.env ------------------------------------------------------------------------
def test_the_compute_environments_variables_are_passed_and_the_plugins_are_the_hubs():
    env = {"JUPYTER_ENABLE_LAB": "yes", "AWS_SECRET_ACCESS_KEY": "s3cr3t-v4lue", "EMPTY": "",
           "MY_JSON": '{"a": 1}'}
    launch = parse_launch(stored(env=env), start())
    assert dict(launch.env) == env
    assert [k for k, _ in launch.env] == sorted(env)
    assert "s3cr3t-v4lue" not in repr(launch)
    assert not PLUGIN_ENV & dict(launch.env).keys() and "XNAT_HPC_HARDWARE" not in dict(launch.env)


@pytest.mark.parametrize("name", ["JUPYTERHUB_API_TOKEN", "JUPYTERHUB_USER", "JPY_API_TOKEN", "XNAT_HPC_SCOPE",
                                  "XNAT_HPC_BOOTSTRAP", "XNAT_HPC_OFFLOAD", "SBATCH_PARTITION", "SLURM_CONF",
                                  "LD_PRELOAD", "PATH", "PYTHONPATH", "HOME", "BASH_ENV"])
def test_a_reserved_variable_refuses_the_start_by_name(name):
    assert reserved_env(name)
    with pytest.raises(InvalidRequest, match=f"sets {name}, a name reserved on this hub") as info:
        parse_launch(stored(env={name: "x"}), start())
    assert "compute environment (or hardware) configuration in XNAT" in info.value.message


def test_the_plugins_own_variables_and_the_hardware_name_are_not_reserved():
    for name in (*PLUGIN_ENV, "XNAT_HPC_HARDWARE", "JUPYTER_ENABLE_LAB", "XNAT_HOSTING", "PATHS"):
        assert reserved_env(name) is None, name
    assert all(key.endswith("_") or key.isupper() for key in RESERVED_ENV)


@pytest.mark.parametrize("env, words", [
    ({"THREADS": 4}, "sets THREADS to a value of type int \\(not shown\\); the value must be text"),
    ({"NOTHING": None}, "sets NOTHING to a value of type NoneType"),
    ({"LIST": ["s3cret"]}, "sets LIST to a value of type list \\(not shown\\)"),
    ({"1ABC": "x"}, "'1ABC', which is not an environment variable name"),
    ({"A-B": "x"}, "'A-B', which is not an environment variable name"),
    ({"A": "x\x00y"}, "NUL byte"),
    ({f"V{i}": "x" for i in range(101)}, "at most 100"),
])
def test_bad_compute_environment_variables_are_refused(env, words):
    with pytest.raises(InvalidRequest, match=words):
        launch_env(env)


def test_the_compute_environment_must_be_an_object():
    doc = stored()
    doc["task_template"]["container_spec"]["env"] = ["X=1"]
    with pytest.raises(InvalidRequest, match="container_spec.env must be an object"):
        parse_launch(doc, start())


# -- container_spec.mounts: which folders exist, and their archive paths ------------------------
def _launch(*mounts, project="NEURO_MRI"):
    return XnatLaunch("xnat:projectData", project, project, mounts=tuple(LaunchMount(*m) for m in mounts))


def test_archive_paths_come_from_xnats_sources():
    launch = _launch(("/workspace/alice", "/data/xnat/workspaces/users/alice", False),
                     ("/data/projects/NEURO_MRI/experiments", "/data/xnat/archive/NEURO_MRI/arc002", True),
                     ("/data/projects/NEURO_MRI/resources", "./NEURO_MRI/resources", True),   # path translation "."
                     ("/data/projects/NEURO_MRI/subjects", "NEURO_MRI/subjects/", True),
                     ("/data/projects/NEURO_MRI/experiments/MR_1", "/arch/NEURO_MRI/arc001/MR_1", True),
                     ("/data/projects/NEURO_MRI/subject-resources/S_1", "/arch/NEURO_MRI/subjects/S_1", True))
    listed, notes = archive_paths(launch)
    assert listed == {"/data/projects/NEURO_MRI/experiments": "NEURO_MRI/arc002",
                      "/data/projects/NEURO_MRI/resources": "NEURO_MRI/resources",
                      "/data/projects/NEURO_MRI/subjects": "NEURO_MRI/subjects",
                      "/data/projects/NEURO_MRI/experiments/MR_1": "NEURO_MRI/arc001/MR_1",
                      "/data/projects/NEURO_MRI/subject-resources/S_1": "NEURO_MRI/subjects/S_1"}
    assert notes == []


@pytest.mark.parametrize("target, source", [
    ("/data/projects/NEURO_MRI/experiments", "/data/xnat/archive/custom_root/arc001"),  # not named after P
    ("/data/projects/NEURO_MRI/experiments", "/data/xnat/archive/NEURO_MRI/prearchive"),
    ("/data/projects/NEURO_MRI/experiments/MR_1", "/a/NEURO_MRI/arc001/MR_1_renamed"),
    ("/data/projects/NEURO_MRI/experiments/MR_1", "/a/NEURO_MRI/arc001/../../OTHER/arc001/MR_1"),
    ("/data/projects/NEURO_MRI/resources", "/a/OTHER/resources"),
])
def test_a_source_that_is_not_the_projects_folder_falls_back_to_the_default(target, source):
    listed, notes = archive_paths(_launch((target, source, True)))
    assert listed == {target: None} and "the hub's default archive path is tried" in notes[0]


@pytest.mark.parametrize("mount", [
    ("/data/projects/OTHER/experiments", "/a/OTHER/arc001", True),           # another project
    ("/data/projects/NEURO_MRI", "/data/xnat/shared/1234", True),            # shared data: a folder of links
    ("/data/projects/NEURO_MRI/experiments", "/a/NEURO_MRI/arc001", False),  # not read-only
    ("/data/projects/NEURO_MRI/experiments/MR_1/SCANS", "/a/NEURO_MRI/arc001/MR_1/SCANS", True),
])
def test_data_mounts_without_a_place_are_ignored_and_said(mount):
    listed, notes = archive_paths(_launch(mount))
    assert listed == {} and "ignored" in notes[0]


def test_mount_notes_reach_the_log_and_other_host_paths_are_never_bound():
    launch = _launch(("/data/projects/NEURO_MRI", "/shared/1", True), ("/models", "/srv/models", True))
    notes = " ".join(apply_hardware(GPU, launch)[1])
    assert "/data/projects/NEURO_MRI is not one of the item's read-only folders" in notes
    assert "mount /models of XNAT's compute environment ignored" in notes
