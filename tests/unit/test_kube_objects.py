"""The Kubernetes backend's pure builders: settings asserted, then turned into real manifests by
kubespawner's own ``make_pod`` and checked offline against the Kubernetes 1.30 API schema."""

from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
from kubernetes_asyncio.client import ApiClient, V1Secret
from kubespawner.objects import make_pod
from kubespawner.utils import get_k8s_model

from hub_ext.profiles import load_profiles_file
from spawner.kube_objects import (
    MANAGED_TRAITS,
    ArchiveVolume,
    escape_template,
    label_value,
    make_secret,
    pod_settings,
    secret_name_for,
    trait_values,
)
from spawner.plan import DATA_MOUNT, ScopeMount, SpawnPlan
from xnat_bridge.errors import InvalidRequest
from xnat_bridge.scope import Scope
from xnat_bridge.server_env import ServerEnv

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "profiles.yaml"
K8S_VERSION = "1.30"
GiB = 1 << 30
TOKEN = "3f9a7c1e-alias-secret-b0d2"  # stands in for an alias token secret
SECRET = "jupyter-alice-xnat"
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
PVC = ArchiveVolume(claim_name="xnat-archive")


def k8s_profile(**resources):
    profile = load_profiles_file(EXAMPLE).by_slug("k8s-standard")
    return dataclasses.replace(profile, resources=dataclasses.replace(profile.resources, **resources))


def mount(source: str, project: str | None = None, target: str | None = None) -> ScopeMount:
    return ScopeMount(project or source.split("/")[0], source, target or f"{DATA_MOUNT}/{source}")


def make_plan(*, user="alice", profile=None, mounts=None, scope=None, secret_env=None) -> SpawnPlan:
    """A plan as :func:`spawner.decide.build_plan` makes it: ``XNAT_DATA`` exactly when mounting."""
    scope = scope or Scope.of({"NEURO_MRI": {}, "SLEEP_EEG": {"experiments": ["XNAT_E00007"]}})
    profile = profile or k8s_profile()
    mounts = tuple(mounts if mounts is not None else
                   [mount("SLEEP_EEG/arc001/SLEEP_EEG_E001"), mount("NEURO_MRI")])
    return SpawnPlan(
        user=user,
        server_name="neuro",
        profile=profile,
        roles={"NEURO_MRI": "Owner", "SLEEP_EEG": "Member"},
        mounts=mounts,
        server_env=ServerEnv("https://xnat.example.org", user, scope, profile.slug,
                             data_dir=DATA_MOUNT if mounts else None),
        secret_env={"XNAT_PASS": TOKEN} if secret_env is None else secret_env,
    )


async def pod_manifest(settings, name="jupyter-alice") -> dict:
    """What kubespawner's ``make_pod`` makes of the settings, as the API server would receive it."""
    pod = make_pod(
        name=name, cmd=["jupyterhub-singleuser"], port=8888, image=settings.image,
        env=copy.deepcopy(settings.environment), volumes=copy.deepcopy(settings.volumes),
        volume_mounts=copy.deepcopy(settings.volume_mounts), labels=settings.extra_labels,
        annotations=settings.extra_annotations, cpu_guarantee=settings.cpu_guarantee,
        cpu_limit=settings.cpu_limit, mem_guarantee=settings.mem_guarantee, mem_limit=settings.mem_limit,
        extra_resource_limits=settings.extra_resource_limits, node_selector=settings.node_selector,
        tolerations=settings.tolerations,
    )
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)


async def secret_manifest(secret: dict) -> dict:
    """The Secret dict through the client's ``V1Secret`` model (unknown fields would fail here)."""
    async with ApiClient() as api:
        return api.sanitize_for_serialization(get_k8s_model(V1Secret, secret))


# -- settings ---------------------------------------------------------------------------------


def test_settings_from_the_example_profile():
    s = pod_settings(make_plan(), PVC, secret_name=SECRET)
    assert s.image == "quay.io/jupyter/scipy-notebook:2024-10-07"
    assert (s.cpu_guarantee, s.cpu_limit) == (2.0, 4.0)
    assert (s.mem_guarantee, s.mem_limit) == (4 * GiB, 8 * GiB)
    assert s.extra_resource_limits == {}
    assert s.node_selector == {"node-role.example.org/notebooks": "true"}
    assert s.tolerations == [{"key": "notebooks", "operator": "Equal", "value": "yes",
                              "effect": "NoSchedule"}]
    assert s.volumes == [{"name": "xnat-archive",
                          "persistentVolumeClaim": {"claimName": "xnat-archive", "readOnly": True}}]
    # one read-only mount per scope directory, sorted by target, subPath = archive sub-path
    assert s.volume_mounts == [
        {"name": "xnat-archive", "mountPath": "/xnat/data/NEURO_MRI", "subPath": "NEURO_MRI",
         "readOnly": True},
        {"name": "xnat-archive", "mountPath": "/xnat/data/SLEEP_EEG/arc001/SLEEP_EEG_E001",
         "subPath": "SLEEP_EEG/arc001/SLEEP_EEG_E001", "readOnly": True},
    ]
    assert s.environment["XNAT_PASS"] == {
        "name": "XNAT_PASS", "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "XNAT_PASS"}}}
    assert s.environment["XNAT_USER"] == "alice"
    assert s.environment["XNAT_DATA"] == DATA_MOUNT
    assert TOKEN not in json.dumps(dataclasses.asdict(s))
    assert s.extra_labels == {"xnat-hpc-hub/user": "alice", "xnat-hpc-hub/profile": "k8s-standard",
                              "xnat-hpc-hub/scope-projects": "NEURO_MRI.SLEEP_EEG"}
    ann = s.extra_annotations
    assert ann["xnat-hpc-hub/user"] == "alice"
    assert json.loads(ann["xnat-hpc-hub/scope"]) == {
        "projects": {"NEURO_MRI": {}, "SLEEP_EEG": {"experiments": ["XNAT_E00007"]}}}
    assert json.loads(ann["xnat-hpc-hub/roles"]) == {"NEURO_MRI": "Owner", "SLEEP_EEG": "Member"}


def test_nfs_archive_gpus_and_unset_limits():
    plan = make_plan(profile=k8s_profile(gpus=2, cpu_limit=None, mem_limit=None, image=None))
    s = pod_settings(plan, ArchiveVolume(nfs_server="nfs.example.org", nfs_path="/data/xnat/archive"),
                     secret_name=SECRET)
    assert s.volumes == [{"name": "xnat-archive", "nfs": {"server": "nfs.example.org",
                                                          "path": "/data/xnat/archive", "readOnly": True}}]
    assert s.extra_resource_limits == {"nvidia.com/gpu": "2"}
    assert s.image is None and s.cpu_limit is None and s.mem_limit is None
    rest_only = make_plan(profile=plan.profile, mounts=[])  # no archive volume: the plan mounts nothing
    s = pod_settings(rest_only, None, secret_name=SECRET, gpu_resource="amd.com/gpu")
    assert s.extra_resource_limits == {"amd.com/gpu": "2"}


def test_without_archive_nothing_is_mounted_and_no_xnat_data():
    # without an archive volume the backend plans no mounts (XnatKubeSpawner.data_mount)
    s = pod_settings(make_plan(mounts=[]), None, secret_name=SECRET)
    assert s.volumes == [] and s.volume_mounts == []
    assert "XNAT_DATA" not in s.environment  # the server falls back to XNAT's REST API
    s = pod_settings(make_plan(mounts=[]), PVC, secret_name=SECRET)
    assert s.volumes == [] and s.volume_mounts == []  # no scope directory: not even the volume
    assert "XNAT_DATA" not in s.environment
    with pytest.raises(InvalidRequest, match="no archive volume"):  # a plan that mounts needs one
        pod_settings(make_plan(), None, secret_name=SECRET)


def test_xnat_data_is_set_when_mounted_even_if_the_plan_lacks_it():
    plan = make_plan()
    with pytest.raises(InvalidRequest, match="XNAT_DATA"):  # a plan cannot lack it while mounting
        dataclasses.replace(plan, server_env=dataclasses.replace(plan.server_env, data_dir=None))
    assert pod_settings(plan, PVC, secret_name=SECRET).environment["XNAT_DATA"] == DATA_MOUNT


def test_without_secret_env_no_reference():
    s = pod_settings(make_plan(secret_env={}), PVC)
    assert "XNAT_PASS" not in s.environment


@pytest.mark.parametrize("bad, why", [
    (mount("../NEURO_MRI", project="NEURO_MRI", target="/xnat/data/NEURO_MRI"), "clean archive sub-path"),
    (mount("NEURO_MRI/../SLEEP_EEG", project="NEURO_MRI"), "clean archive sub-path"),
    (ScopeMount("NEURO_MRI", "/NEURO_MRI", "/xnat/data/NEURO_MRI"), "clean archive sub-path"),
    (mount("NEURO_MRI//arc001"), "clean archive sub-path"),
    (mount("NEURO_MRI/./arc001"), "clean archive sub-path"),
    (mount("NEURO_MRI/arc001/"), "clean archive sub-path"),
    (mount("NEURO_MRI/{username}"), "clean archive sub-path"),
    (mount("CARDIO_ECG"), "not inside project"),                                   # not in the scope
    (mount("CARDIO_ECG/arc001/X", project="NEURO_MRI"), "not inside project"),      # other project
    (mount("NEURO_MRI", target="/home/alice"), "is not where the xnat layout puts 'NEURO_MRI'"),
    (mount("NEURO_MRI", target="/xnat/data/../etc"), "is not where the xnat layout puts 'NEURO_MRI'"),
])
def test_mount_that_could_escape_is_refused(bad, why):
    with pytest.raises(InvalidRequest, match=re.escape(why)):
        pod_settings(make_plan(mounts=[mount("SLEEP_EEG"), bad]), PVC, secret_name=SECRET)


def test_same_directory_twice_is_refused():
    with pytest.raises(InvalidRequest, match="same directory twice"):
        pod_settings(make_plan(mounts=[mount("NEURO_MRI"), mount("NEURO_MRI")]), PVC, secret_name=SECRET)


def test_wrong_backend_unrestricted_scope_bad_names_are_refused():
    slurm = dataclasses.replace(k8s_profile(), backend="slurm")
    with pytest.raises(InvalidRequest, match="'slurm' backend, not kubernetes"):
        pod_settings(make_plan(profile=slurm), PVC, secret_name=SECRET)
    with pytest.raises(InvalidRequest, match="unrestricted"):
        pod_settings(make_plan(scope=Scope.unrestricted(), mounts=[]), PVC, secret_name=SECRET)
    with pytest.raises(InvalidRequest, match="secret name ''"):
        pod_settings(make_plan(), PVC)  # a secret to refer to, but no name for it
    with pytest.raises(InvalidRequest, match="not a valid variable name"):
        pod_settings(make_plan(secret_env={"XNAT PASS": "x"}), PVC, secret_name=SECRET)
    with pytest.raises(InvalidRequest, match="not a valid Kubernetes object name"):
        make_secret(make_plan(), "Jupyter_Alice")


@pytest.mark.parametrize("config, why", [
    ({"claim_name": "a", "nfs_server": "n", "nfs_path": "/x"}, "not both"),
    ({"nfs_server": "nfs.example.org"}, "nfs_path"),
    ({"claim_name": "Bad_Name"}, "not a valid PVC name"),
    ({"nfs_server": "nfs.example.org", "nfs_path": "data/xnat"}, "clean absolute path"),
    ({"nfs_server": "nfs.example.org", "nfs_path": "/data/../etc"}, "clean absolute path"),
    ({"nfs_server": "bad host/x", "nfs_path": "/data"}, "host name"),
    ({"claimName": "xnat-archive"}, "unknown key"),
    ({"claim_name": 7}, "must be text"),
])
def test_archive_volume_config_errors(config, why):
    with pytest.raises(InvalidRequest, match=why):
        ArchiveVolume.from_config(config)


def test_archive_volume_config_ok():
    assert ArchiveVolume.from_config({}) is None
    assert ArchiveVolume.from_config({"claim_name": "xnat-archive"}) == PVC


def test_labels_are_valid_label_values():
    assert label_value("NEURO_MRI.SLEEP_EEG") == "NEURO_MRI.SLEEP_EEG"
    many = ".".join(f"PROJECT_{i:03d}" for i in range(40))
    for text in ("alice@example.org", "-x-", "ü", "", "a" * 64, many):
        value = label_value(text)
        assert LABEL_VALUE.match(value) and len(value) <= 63, (text, value)
    assert label_value("alice@example.org") != label_value("alice#example.org")
    plan = make_plan(user="alice@example.org",
                     scope=Scope.of([f"PROJECT_{i:03d}" for i in range(40)]), mounts=[])
    labels = pod_settings(plan, PVC, secret_name=SECRET).extra_labels
    assert all(LABEL_VALUE.match(v) and len(v) <= 63 for v in labels.values()), labels
    assert plan.scope.to_json() == pod_settings(plan, PVC, secret_name=SECRET).extra_annotations[
        "xnat-hpc-hub/scope"]


def test_secret_name_for_pods():
    assert secret_name_for("jupyter-alice--neuro") == "jupyter-alice--neuro-xnat"
    assert re.match(r"^xnat-[0-9a-f]{16}$", secret_name_for("x" * 250))


# -- trait values for kubespawner ------------------------------------------------------------


def _expand(value, ns):
    """kubespawner's ``_expand_all``: every string is a ``str.format`` template."""
    if isinstance(value, str):
        return value.format(**ns)
    if isinstance(value, list):
        return [_expand(v, ns) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, ns) for k, v in value.items()}
    return value


def test_trait_values_merge_with_configured_values():
    s = pod_settings(make_plan(), PVC, secret_name=SECRET)
    home_volume = {"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}
    base = {"image": "site/notebook:1", "cpu_guarantee": None, "mem_limit": 2 * GiB,
            "volumes": [home_volume],
            "volume_mounts": {"home": {"name": "home", "mountPath": "/home/jovyan"}},
            "extra_labels": {"site": "x"}, "environment": {"TZ": "UTC", "XNAT_USER": "{username}"},
            "tolerations": [], "node_selector": {"pool": "users"}}
    out = trait_values(s, base)
    assert set(out) == set(MANAGED_TRAITS)
    assert out["image"] == s.image and out["mem_limit"] == 8 * GiB
    assert out["volumes"][0] == home_volume and out["volumes"][1:] == s.volumes
    assert out["volume_mounts"][0]["name"] == "home" and len(out["volume_mounts"]) == 3
    assert out["node_selector"] == {"pool": "users", **s.node_selector}
    assert out["extra_labels"]["site"] == "x"
    assert out["environment"]["TZ"] == "UTC" and out["environment"]["XNAT_USER"] == "alice"  # plan wins
    # what kubespawner expands comes out as the literal values; the admin's template still expands
    ns = {"username": "alice", "servername": "neuro"}
    assert _expand(out["extra_annotations"], ns) == s.extra_annotations
    assert _expand(out["environment"]["XNAT_HPC_SCOPE"], ns) == s.environment["XNAT_HPC_SCOPE"]
    assert _expand(out["volumes"][0], ns)["persistentVolumeClaim"]["claimName"] == "claim-alice"
    # a profile without an image keeps the configured one; without limits, the configured limit
    plain = pod_settings(make_plan(profile=k8s_profile(image=None, mem_limit=None)), PVC, secret_name=SECRET)
    out = trait_values(plain, base)
    assert out["image"] == "site/notebook:1" and out["mem_limit"] == 2 * GiB


def test_escape_template():
    assert escape_template({"a": ['{"x": 1}', 3]}) == {"a": ['{{"x": 1}}', 3]}


# -- real manifests, validated against the Kubernetes API schema ----------------------------


async def test_pod_manifest_validates_and_holds_no_secret():
    plan = make_plan()
    pod = await pod_manifest(pod_settings(plan, PVC, secret_name=SECRET))
    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True) == K8S_VERSION
    text = json.dumps(pod)
    assert TOKEN not in text and base64.b64encode(TOKEN.encode()).decode() not in text
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["XNAT_PASS"] == {"name": "XNAT_PASS",
                                "valueFrom": {"secretKeyRef": {"name": SECRET, "key": "XNAT_PASS"}}}
    assert env["XNAT_USER"] == {"name": "XNAT_USER", "value": "alice"}
    assert json.loads(env["XNAT_HPC_SCOPE"]["value"]) == json.loads(plan.scope.to_json())
    mounts = container["volumeMounts"]
    assert [m["subPath"] for m in mounts] == ["NEURO_MRI", "SLEEP_EEG/arc001/SLEEP_EEG_E001"]
    assert all(m["readOnly"] is True and m["name"] == "xnat-archive" for m in mounts)
    for m in mounts:
        assert ".." not in m["subPath"].split("/") and not m["subPath"].startswith("/")
        assert m["mountPath"] == f"{DATA_MOUNT}/{m['subPath']}"
    assert pod["spec"]["volumes"] == [{"name": "xnat-archive", "persistentVolumeClaim": {
        "claimName": "xnat-archive", "readOnly": True}}]
    assert container["resources"] == {"limits": {"cpu": 4.0, "memory": 8 * GiB},
                                      "requests": {"cpu": 2.0, "memory": 4 * GiB}}
    assert pod["spec"]["nodeSelector"] == {"node-role.example.org/notebooks": "true"}
    assert pod["spec"]["tolerations"][0]["key"] == "notebooks"
    assert pod["metadata"]["labels"]["xnat-hpc-hub/scope-projects"] == "NEURO_MRI.SLEEP_EEG"


async def test_gpu_nfs_pod_manifest_validates():
    plan = make_plan(user="alice@example.org", profile=k8s_profile(gpus=1))
    settings = pod_settings(plan, ArchiveVolume(nfs_server="10.0.0.5", nfs_path="/export/xnat"),
                            secret_name=SECRET)
    pod = await pod_manifest(settings, name="jupyter-alice-40example-2eorg")
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["volumes"][0]["nfs"]["readOnly"] is True


async def test_broken_pod_manifest_fails_validation():
    """The schema check can fail: the same pod with a wrong type, or an unknown field."""
    pod = await pod_manifest(pod_settings(make_plan(), PVC, secret_name=SECRET))
    wrong_type = copy.deepcopy(pod)
    wrong_type["spec"]["containers"][0]["volumeMounts"][0]["readOnly"] = "yes"
    with pytest.raises(kubernetes_validate.ValidationError, match="not of type 'boolean'"):
        kubernetes_validate.validate(wrong_type, K8S_VERSION, strict=True)
    unknown = copy.deepcopy(pod)
    unknown["spec"]["containers"][0]["volumeMounts"][0]["subpath"] = "CARDIO_ECG"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSION, strict=True)


async def test_secret_manifest_validates_and_matches_the_reference():
    plan = make_plan()
    settings = pod_settings(plan, PVC, secret_name=SECRET)
    secret = await secret_manifest(make_secret(plan, SECRET))
    assert kubernetes_validate.validate(secret, K8S_VERSION, strict=True) == K8S_VERSION
    assert secret["kind"] == "Secret" and secret["type"] == "Opaque"
    ref = settings.environment["XNAT_PASS"]["valueFrom"]["secretKeyRef"]
    assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["data"]
    assert base64.b64decode(secret["data"]["XNAT_PASS"]).decode() == TOKEN
    assert secret["metadata"]["labels"]["xnat-hpc-hub/user"] == "alice"
    assert TOKEN not in json.dumps(secret["metadata"])
    broken = copy.deepcopy(secret)
    broken["data"] = {"XNAT_PASS": 12}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
