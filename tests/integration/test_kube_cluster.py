"""The Kubernetes backend's Secret and pod against a real API server (server-side dry run).

Runs only where a kubeconfig exists (``KUBECONFIG`` or ``~/.kube/config``); the
namespace is ``XNAT_HPC_TEST_NAMESPACE`` (default ``default``) and must exist.
``dry_run="All"`` makes the API server validate and admit both objects (schema,
admission webhooks, Pod Security) without storing anything, so nothing is left to delete.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from spawner import kube_objects as ko
from tests.unit.test_kube_objects import TOKEN, make_plan, pod_manifest

KUBECONFIG = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
NAMESPACE = os.environ.get("XNAT_HPC_TEST_NAMESPACE", "default")

pytestmark = [
    pytest.mark.kube,
    pytest.mark.skipif(not all(Path(p).is_file() for p in KUBECONFIG.split(os.pathsep) if p),
                       reason=f"no Kubernetes cluster: no kubeconfig at {KUBECONFIG} "
                              "(set KUBECONFIG to run the cluster test)"),
]


@pytest.fixture
async def core():
    api_client = await config.new_client_from_config(config_file=KUBECONFIG.split(os.pathsep)[0])
    async with api_client:
        yield client.CoreV1Api(api_client)


async def test_secret_and_pod_are_admitted_by_the_cluster(core):
    pod_name = f"jupyter-xnat-test-{secrets.token_hex(4)}"
    secret_name = ko.secret_name_for(pod_name)
    plan = make_plan()
    settings = ko.pod_settings(plan, ko.ArchiveVolume(claim_name="xnat-archive"), secret_name=secret_name)

    secret = await core.create_namespaced_secret(NAMESPACE, ko.make_secret(plan, secret_name),
                                                 dry_run="All")
    assert secret.metadata.name == secret_name
    assert secret.metadata.labels["xnat-hpc-hub/scope-projects"] == "NEURO_MRI.SLEEP_EEG"

    pod = await core.create_namespaced_pod(NAMESPACE, await pod_manifest(settings, name=pod_name),
                                           dry_run="All")
    container = pod.spec.containers[0]
    env = {e.name: e for e in container.env}
    assert env["XNAT_PASS"].value is None
    assert env["XNAT_PASS"].value_from.secret_key_ref.name == secret_name
    assert TOKEN not in str(pod.to_dict())
    mounts = [m for m in container.volume_mounts if m.name == "xnat-archive"]
    assert [(m.sub_path, m.mount_path, m.read_only) for m in mounts] == [
        ("NEURO_MRI", "/xnat/data/NEURO_MRI", True),
        ("SLEEP_EEG/arc001/SLEEP_EEG_E001", "/xnat/data/SLEEP_EEG/arc001/SLEEP_EEG_E001", True)]
    archive = next(v for v in pod.spec.volumes if v.name == "xnat-archive")
    assert archive.persistent_volume_claim.read_only is True

    # dry run: nothing was stored
    names = [p.metadata.name for p in (await core.list_namespaced_pod(NAMESPACE)).items]
    assert pod_name not in names
