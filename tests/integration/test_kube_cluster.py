"""The development Kubernetes (issue 21): a real single-node cluster — etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, containerd + runc with a CNI bridge and a kubelet,
Kubernetes v1.34 built from the Go module proxy — brought up by ``xnat-hpc-hub kube up``
(:mod:`devstack.kube`, the ``kube_cluster`` fixture) and used as a site's cluster would be:

* the Kubernetes backend's Secret and pod are admitted by the real API server (server-side dry
  run: schema, admission, Pod Security; nothing stored);
* a pod of a locally built image (no registry: ``imagePullPolicy: Never``) runs on the node with
  an address of the pods' bridge, and is gone from containerd once deleted;
* an image missing on the node fails the pod at once with the reason, never a hang;
* no component answers without a client certificate, and no other account can read a key.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import ssl
import subprocess
import urllib.error
import urllib.request

import pytest
from kubernetes_asyncio import client, config

from devstack import kube
from spawner import kube_objects as ko
from tests.unit.test_kube_objects import TOKEN, make_plan, pod_manifest

NAMESPACE = "default"

pytestmark = [pytest.mark.kube]


@pytest.fixture
async def core(kube_cluster):
    api_client = await config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
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


def _pod(name: str, image: str) -> str:
    return f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{test: xnat-hpc-kube}}}}
spec:
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: 1
  containers: [{{name: c, image: "{image}", imagePullPolicy: Never}}]
"""


def test_a_pod_of_a_local_image_runs_on_the_bridge_and_is_gone_once_deleted(kube_cluster):
    name = f"xnat-hpc-test-{secrets.token_hex(3)}"
    kube_cluster.kubectl("apply", "-f", "-", input=_pod(name, kube.PAUSE_IMAGE))
    try:
        pod = kube_cluster.wait_for(f"pod {name} running", lambda: (
            lambda p: p if p["status"].get("phase") == "Running" else None)(kube_cluster.get("pod", name)))
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(kube.POD_CIDR)
        assert pod["spec"]["nodeName"] == kube.NODE
        node = kube_cluster.get("node", kube.NODE, namespace="")
        assert node["status"]["nodeInfo"]["kubeletVersion"] == kube.KUBE_VERSION
        assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    finally:
        kube_cluster.kubectl("delete", "pod", name, "--wait=true", timeout=120)
    ctr = ["ctr", "--address", str(kube.KubeDevConfig().containerd_socket), "-n", "k8s.io"]
    containers = subprocess.run([*ctr, "containers", "ls", "-q"], capture_output=True, text=True).stdout
    running = subprocess.run([*ctr, "tasks", "ls"], capture_output=True, text=True).stdout
    uid = pod["metadata"]["uid"]
    assert uid not in running and name not in running, running
    assert all(uid not in c for c in containers.split())


def test_an_image_missing_on_the_node_fails_the_pod_with_the_reason(kube_cluster):
    name = f"xnat-hpc-missing-{secrets.token_hex(3)}"
    kube_cluster.kubectl("apply", "-f", "-", input=_pod(name, "docker.io/xnat-hpc-hub/no-such-image:0"))
    try:
        def waiting() -> str | None:  # past ContainerCreating: the kubelet's reason
            status = (kube_cluster.get("pod", name)["status"].get("containerStatuses") or [{}])[0]
            reason = (status.get("state", {}).get("waiting") or {}).get("reason")
            return reason if reason not in (None, "ContainerCreating") else None

        reason = kube_cluster.wait_for(f"pod {name} to say why it cannot start", waiting, timeout=30)
        assert reason == "ErrImageNeverPull"
    finally:
        kube_cluster.kubectl("delete", "pod", name, "--wait=true", timeout=120)


def _https(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, context=context, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_no_component_answers_without_a_client_certificate_and_no_other_account_reads_a_key(kube_cluster):
    pki = kube_cluster.run_dir / "pki"
    trust = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    # the API server and the kubelet: TLS, and no anonymous access
    assert _https(f"https://127.0.0.1:{kube.API_PORT}/api/v1/secrets", trust) in (401, 403)
    assert _https(f"https://{kube.NODE_IP}:10250/pods", trust) in (401, 403)
    # etcd: no client certificate, no connection
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _https("https://127.0.0.1:2379/version", trust)
    # with the admin's certificate the API answers
    admin = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    admin.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
    assert _https(f"https://127.0.0.1:{kube.API_PORT}/readyz", admin) == 200
    # another account reads no key, no kubeconfig
    for path in (pki / "ca.key", pki / "etcd-server.key", kube_cluster.kubeconfig, pki / "sa.key"):
        r = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(path)], capture_output=True, text=True)
        assert r.returncode != 0 and "Permission denied" in r.stderr, path
    assert (os.stat(kube_cluster.run_dir).st_mode & 0o077) == 0


def test_the_server_image_built_here_runs_the_bridge_as_an_unprivileged_user(kube_cluster, server_image):
    """What images/Dockerfile makes for a site, made here without a registry or an engine: the
    wheel with the server extra in a virtualenv, run as uid 1000."""
    name = f"xnat-hpc-image-{secrets.token_hex(3)}"
    pod = f"""apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}}}
spec:
  automountServiceAccountToken: false
  restartPolicy: Never
  containers:
  - name: c
    image: "{server_image}"
    imagePullPolicy: Never
    command: ["python3", "-c", "import os, xnat_bridge, jupyterhub; print(os.getuid(), xnat_bridge.__file__)"]
"""
    kube_cluster.kubectl("apply", "-f", "-", input=pod)
    try:
        phase = kube_cluster.wait_for(f"pod {name} to end", lambda: (
            lambda p: p if p in ("Succeeded", "Failed") else None)(
            kube_cluster.get("pod", name)["status"].get("phase")), timeout=120)
        out = kube_cluster.kubectl("logs", name, "-n", NAMESPACE).stdout
        assert phase == "Succeeded", out
        uid, path = out.split()
        assert uid == "1000" and path.startswith("/opt/xnat-hpc-hub/venv/lib/python3.11/site-packages/xnat_bridge/")
    finally:
        kube_cluster.kubectl("delete", "pod", name, "--wait=true", timeout=120)
