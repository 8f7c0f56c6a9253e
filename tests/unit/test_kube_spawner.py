"""``XnatKubeSpawner`` without a cluster: apply a plan, then let kubespawner's own
``get_pod_manifest`` build the pod (template expansion, the mixin's ``get_env``), and
validate it against the Kubernetes 1.30 schema.

kubespawner loads a kubeconfig when constructed; the tests give it one that points at a
closed port on 127.0.0.1, and nothing here sends a request.
"""

from __future__ import annotations

import json
import types
from importlib.metadata import entry_points
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_asyncio.client import ApiClient
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from traitlets.config import Config

from hub_ext.profiles import load_profiles
from spawner.kube import XnatKubeSpawner
from spawner.plan import DataMount
from tests.unit.test_kube_objects import K8S_VERSION, TOKEN, k8s_profile, make_plan
from xnat_bridge.errors import InvalidRequest

Z2JH = Path(__file__).resolve().parents[2] / "config" / "z2jh-values.yaml"
UNREACHABLE_KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters: [{name: none, cluster: {server: "https://127.0.0.1:9"}}]
contexts: [{name: none, context: {cluster: none, user: none}}]
current-context: none
users: [{name: none, user: {token: "unused"}}]
"""


@pytest.fixture
def make_spawner(tmp_path, monkeypatch):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(UNREACHABLE_KUBECONFIG)
    # read when kubespawner loads its config (once per process), not from KUBECONFIG at import
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))

    def make(**traits) -> XnatKubeSpawner:
        user = types.SimpleNamespace(name="alice", id=7, url="/user/alice/", groups=[])
        hub = types.SimpleNamespace(public_host="", url="http://hub:8081/hub/", base_url="/hub/",
                                    api_url="http://hub:8081/hub/api")
        config = Config()
        home = {"name": "home", "persistentVolumeClaim": {"claimName": "claim-{username}"}}
        config.KubeSpawner.volumes = [home]
        config.KubeSpawner.volume_mounts = [{"name": "home", "mountPath": "/home/jovyan"}]
        return XnatKubeSpawner(user=user, hub=hub, config=config, **traits)

    return make


async def start_manifest(spawner: XnatKubeSpawner, plan) -> dict:
    """What the mixin's start does before kubespawner's: set the plan, apply it; then the pod."""
    spawner.xnat_plan = plan
    spawner.apply_plan(plan)
    pod = await KubeSpawner.get_pod_manifest(spawner)  # kubespawner's own (ours first writes the Secret)
    async with ApiClient() as api:
        return api.sanitize_for_serialization(pod)


async def test_pod_from_the_spawner_validates_and_keeps_the_token_out(make_spawner):
    spawner = make_spawner(xnat_archive_volume={"claim_name": "xnat-archive"})
    assert spawner.xnat_data_root == "pvc:xnat-archive"  # where the archive is (data_mount: VOLUME)
    pod = await start_manifest(spawner, make_plan())
    assert kubernetes_validate.validate(pod, K8S_VERSION, strict=True) == K8S_VERSION
    assert TOKEN not in json.dumps(pod)  # the mixin's get_env put it in; ours replaced it
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["XNAT_PASS"]["valueFrom"]["secretKeyRef"] == {"name": "jupyter-alice-xnat", "key": "XNAT_PASS"}
    assert env["XNAT_DATA"]["value"] == "/xnat/data"
    assert json.loads(env["XNAT_HPC_SCOPE"]["value"]) == json.loads(make_plan().scope.to_json())
    # the admin's home volume (a template) is kept and expanded; the archive is added, read-only
    assert pod["spec"]["volumes"] == [
        {"name": "home", "persistentVolumeClaim": {"claimName": "claim-alice"}},
        {"name": "xnat-archive", "persistentVolumeClaim": {"claimName": "xnat-archive", "readOnly": True}}]
    assert [(m["subPath"], m["readOnly"]) for m in container["volumeMounts"] if m["name"] == "xnat-archive"] \
        == [("NEURO_MRI", True), ("SLEEP_EEG/arc001/SLEEP_EEG_E001", True)]
    annotations = pod["metadata"]["annotations"]
    assert json.loads(annotations["xnat-hpc-hub/scope"]) == json.loads(make_plan().scope.to_json())
    assert container["image"] == "quay.io/jupyter/scipy-notebook:2024-10-07"
    assert spawner._xnat_secret["metadata"]["name"] == "jupyter-alice-xnat"


async def test_a_second_start_does_not_pile_up_and_without_archive_no_xnat_data(make_spawner):
    spawner = make_spawner(xnat_archive_volume={"claim_name": "xnat-archive"})
    await start_manifest(spawner, make_plan())
    pod = await start_manifest(spawner, make_plan(profile=k8s_profile(gpus=1, image=None)))
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["home", "xnat-archive"]
    assert len(pod["spec"]["containers"][0]["volumeMounts"]) == 3
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"

    bare = make_spawner()  # no archive in the cluster: REST only
    assert bare.xnat_data_root == ""
    assert (spawner.data_mount(), bare.data_mount()) == (DataMount.VOLUME, DataMount.NONE)
    pod = await start_manifest(bare, make_plan(mounts=[]))  # the plan the mixin makes for it
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert "XNAT_DATA" not in env and "XNAT_PASS" in env
    assert [v["name"] for v in pod["spec"]["volumes"]] == ["home"]
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


async def test_bad_archive_volume_config_is_refused(make_spawner):
    with pytest.raises(InvalidRequest, match="claim_name"):
        make_spawner(xnat_archive_volume={"pvc": "xnat-archive"})


def test_entry_point_is_the_kube_spawner():
    (entry,) = [e for e in entry_points(group="jupyterhub.spawners") if e.name == "xnat-kube"]
    assert entry.load() is XnatKubeSpawner


async def test_z2jh_example_values_configure_a_valid_pod(make_spawner):
    values = yaml.safe_load(Z2JH.read_text())
    hub_config = values["hub"]["config"]
    assert hub_config["JupyterHub"] == {"authenticator_class": "xnat", "spawner_class": "xnat-kube",
                                        "allow_named_servers": True}  # XNAT's button names its servers
    profiles = load_profiles(values["hub"]["extraFiles"]["xnat-profiles"]["stringData"], "z2jh-values")
    assert {p.backend for p in profiles.profiles} == {"kubernetes"}
    spawner = make_spawner(**hub_config["XnatKubeSpawner"])
    pod = await start_manifest(spawner, make_plan(profile=profiles.by_slug("k8s-gpu")))
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["spec"]["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu",
                                           "operator": "Exists"}]


async def test_the_hub_config_for_a_hub_outside_the_cluster_makes_the_pod_a_site_runs(make_spawner):
    """devstack.hubconfig.kube_hub_config (the tests' cluster and a site whose hub is not in a
    pod): the image's command given, local images only, the archive's group, the workspace claim
    expanded per user at /workspace, no cluster credentials in the pod."""
    from devstack.hubconfig import kube_hub_config

    config = Config()
    exec(kube_hub_config(namespace="xnat-hpc", hub_ip="10.244.0.1", archive_claim="xnat-archive",
                         archive_gid=998), {"c": config})
    assert config.JupyterHub.hub_ip == "10.244.0.1"
    user = types.SimpleNamespace(name="alice", id=7, url="/user/alice/", groups=[])
    hub = types.SimpleNamespace(public_host="", url="http://10.244.0.1:8081/hub/", base_url="/hub/",
                                api_url="http://10.244.0.1:8081/hub/api")
    spawner = XnatKubeSpawner(user=user, hub=hub, config=config)
    assert spawner.namespace == "xnat-hpc" and spawner.pvc_name == "workspace-alice"
    pod = await start_manifest(spawner, make_plan())
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    spec, [container] = pod["spec"], pod["spec"]["containers"]
    assert container["args"][0] == "jupyterhub-singleuser" and container["imagePullPolicy"] == "Never"
    assert container["securityContext"]["runAsUser"] == 1000 and spec["securityContext"]["supplementalGroups"] == [998]
    assert spec["automountServiceAccountToken"] is False and container["workingDir"] == "/workspace"
    assert {"name": "workspace", "persistentVolumeClaim": {"claimName": "workspace-alice"}} in spec["volumes"]
    assert {"name": "workspace", "mountPath": "/workspace"} in container["volumeMounts"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["XNAT_HPC_WORKSPACE"] == "/workspace/xnat-hpc"
    assert env["JUPYTERHUB_API_URL"] == "http://10.244.0.1:8081/hub/api"
