"""The Kubernetes backend on a real cluster (issue 21): a hub outside the cluster whose servers
are pods of the development Kubernetes (``kube_site``: :mod:`tests.fixtures.kube`), started
from the REST API, used through the proxy, and stopped — every step checked on the cluster
itself (``kubectl`` as its admin), in the pod (``kubectl exec``) and on the node's disk.
"""

from __future__ import annotations

import base64
import grp
import json

import pytest
import requests

from devstack.demo import ARCHIVE_GROUP
from tests.fixtures.devxnat import PASSWORDS
from tests.fixtures.spawn import stop_server, wait_gone, wait_ready

pytestmark = [pytest.mark.kube]


def _spawn_failure(hub, user: str, body: dict, server: str = "") -> tuple[int, str]:
    """Start *user*'s *server* with *body*; it must fail: ``(status, message)`` of the REST reply
    when the failure came within JupyterHub's slow-spawn wait, else of the progress stream's last
    event (status 0). Waits for states (the reply, the stream's end), never for a time."""
    r = hub.api("POST", f"/users/{user}/servers/{server}", json=body, timeout=120)
    if r.status_code not in (201, 202):
        return r.status_code, r.json()["message"]
    assert r.status_code == 202, f"the start did not fail: {r.status_code} {r.text}"
    last = {}
    with hub.api("GET", f"/users/{user}/servers/{server}/progress", stream=True, timeout=120) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data:"):
                last = json.loads(line[5:])
                if last.get("ready") or last.get("failed"):
                    break
    assert last.get("failed"), last
    return 0, last["message"]


def _token(hub, user: str) -> str:
    r = hub.api("POST", f"/users/{user}/tokens", json={"expires_in": 600, "note": "kube test"})
    assert r.status_code == 201, r.text
    return r.json()["token"]


def test_a_server_from_the_rest_api_is_a_pod_of_its_scope(kube_site):
    site, hub = kube_site, kube_site.hub
    workspace = site.add_workspace("alice")
    hub.login("alice", PASSWORDS["alice"])
    r = hub.api("POST", "/users/alice/servers/", json={"profile": "k8s-small", "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text + hub.log()[-4000:]
    wait_ready(hub, "alice", "", timeout=180)
    try:
        pod = site.pod("jupyter-alice")
        assert pod is not None and pod["status"]["phase"] == "Running"
        spec, [container] = pod["spec"], pod["spec"]["containers"]
        # the profile's image and resources; the admin's pod identity, no cluster credentials
        assert container["image"] == "docker.io/xnat-hpc-hub/server:dev"
        assert container["imagePullPolicy"] == "Never"
        assert container["resources"] == {"requests": {"cpu": "1", "memory": str(256 << 20)},
                                         "limits": {"memory": str(1 << 30)}}
        assert container["securityContext"]["runAsUser"] == 1000 and spec["automountServiceAccountToken"] is False
        archive_gid = grp.getgrnam(ARCHIVE_GROUP).gr_gid
        assert spec["securityContext"]["supplementalGroups"] == [archive_gid]
        # the scope: one read-only sub-path of the archive claim; the workspace claim at /workspace
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/xnat/data/NEURO_MRI"] == {"name": "xnat-archive", "mountPath": "/xnat/data/NEURO_MRI",
                                                  "subPath": "NEURO_MRI", "readOnly": True}
        assert mounts["/workspace"]["name"] == "workspace"
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {"workspace": "workspace-alice", "xnat-archive": "xnat-archive"}
        # the XNAT token: only a reference to the Secret in the pod's spec
        env = {e["name"]: e for e in container["env"]}
        assert env["XNAT_PASS"]["valueFrom"]["secretKeyRef"]["name"] == "jupyter-alice-xnat"
        assert env["XNAT_HOST"]["value"] == site.devxnat.url
        secret = site.cluster.get("secret", "jupyter-alice-xnat", site.namespace)
        token = base64.b64decode(secret["data"]["XNAT_PASS"]).decode()
        assert token and token not in json.dumps(pod)
        # the servers' NetworkPolicy selects the pod (kubespawner's component label)
        policy = site.cluster.get("networkpolicy", "singleuser", site.namespace)
        assert all(pod["metadata"]["labels"].get(k) == v
                   for k, v in policy["spec"]["podSelector"]["matchLabels"].items())

        # inside the pod: the scope only, read-only; the archive's group; the workspace writable
        ls = site.exec("jupyter-alice", "sh", "-c", "ls /xnat/data; id -u; id -G; ls /xnat/data/NEURO_MRI | head -1")
        lines = ls.stdout.split("\n")
        assert lines[:2] == ["NEURO_MRI", "1000"] and str(archive_gid) in lines[2].split() and lines[3], ls.stdout
        assert site.exec("jupyter-alice", "sh", "-c", "touch /xnat/data/NEURO_MRI/x", check=False).returncode != 0
        site.exec("jupyter-alice", "sh", "-c", "echo kept > /workspace/note.txt")
        assert (workspace / "note.txt").read_text() == "kept\n"

        # through the proxy, with alice's token: the server's API, and the bridge asking XNAT from the pod
        token = _token(hub, "alice")
        headers = {"Authorization": f"token {token}"}
        r = requests.get(f"{hub.url}/user/alice/api/status", headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        r = requests.get(f"{hub.url}/user/alice/xnat-hpc/api/projects", headers=headers, timeout=60)
        assert r.status_code == 200, r.text
        assert [p["id"] for p in r.json()["items"]] == ["NEURO_MRI"]
    finally:
        stop_server(hub, "alice", "", timeout=90)
    # stopped: the pod and its Secret are gone; the workspace (claim and files) stays
    assert site.pod("jupyter-alice") is None
    assert not site.exists("secret", "jupyter-alice-xnat")
    assert site.exists("pvc", "workspace-alice")
    assert (workspace / "note.txt").exists()


# -- what goes wrong: clear and at once, nothing left behind -----------------------------------------

def test_an_image_missing_on_the_node_fails_the_start_at_once(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("alice", PASSWORDS["alice"])
    if not site.exists("pvc", "workspace-alice"):
        site.add_workspace("alice")
    status, message = _spawn_failure(hub, "alice", {"profile": "k8s-no-image", "projects": ["NEURO_MRI"]})
    assert status in (0, 503), message
    assert "docker.io/xnat-hpc-hub/not-on-this-node:0 is not on the node" in message
    wait_gone(hub, "alice", "")
    site.cluster.wait_for("the pod deleted", lambda: site.pod("jupyter-alice") is None)
    assert not site.exists("secret", "jupyter-alice-xnat")
    assert "failed to start in" not in hub.log()  # not kubespawner's start_timeout


def test_a_workspace_claim_that_cannot_bind_fails_the_start_naming_it(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("bob", PASSWORDS["bob"])  # bob has no workspace volume on this site
    status, message = _spawn_failure(hub, "bob", {"profile": "k8s-small", "projects": ["NEURO_MRI"]})
    assert status in (0, 503), message
    assert "the volume claim workspace-bob cannot be bound" in message and "PersistentVolume" in message
    wait_gone(hub, "bob", "")
    site.cluster.wait_for("the pod deleted", lambda: site.pod("jupyter-bob") is None)
    # an admin makes the volume; the next start binds and runs
    site.add_workspace("bob")
    r = hub.api("POST", "/users/bob/servers/", json={"profile": "k8s-small", "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text
    try:
        wait_ready(hub, "bob", "", timeout=120)
    finally:
        stop_server(hub, "bob", "")


def test_a_namespace_quota_refuses_the_pod_with_the_quota_named(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("alice", PASSWORDS["alice"])
    if not site.exists("pvc", "workspace-alice"):
        site.add_workspace("alice")
    site.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "servers", "namespace": site.namespace}, "spec": {"hard": {"pods": "0"}}})
    try:
        site.cluster.wait_for("the quota counted", lambda: "pods" in (
            site.cluster.get("resourcequota", "servers", site.namespace).get("status") or {}).get("hard", {}))
        status, message = _spawn_failure(hub, "alice", {"profile": "k8s-small", "projects": ["NEURO_MRI"]})
        assert status in (0, 403), message
        assert "quota for servers is used up" in message and "exceeded quota: servers" in message
        wait_gone(hub, "alice", "")
        assert site.pod("jupyter-alice") is None
        assert not site.exists("secret", "jupyter-alice-xnat")
    finally:
        site.cluster.kubectl("delete", "resourcequota", "servers", "-n", site.namespace)


def test_an_evicted_server_is_noticed_within_the_poll_interval(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("alice", PASSWORDS["alice"])
    if not site.exists("pvc", "workspace-alice"):
        site.add_workspace("alice")
    r = hub.api("POST", "/users/alice/servers/", json={"profile": "k8s-small", "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "alice", "", timeout=120)
    eviction = {"apiVersion": "policy/v1", "kind": "Eviction",
                "metadata": {"name": "jupyter-alice", "namespace": site.namespace}}
    site.cluster.kubectl("create", "--raw", f"/api/v1/namespaces/{site.namespace}/pods/jupyter-alice/eviction",
                         "-f", "-", input=json.dumps(eviction))
    # poll_interval is 2 s on this hub: within three intervals
    wait_gone(hub, "alice", "", timeout=6)
    assert "User alice server stopped, with exit code: 1" in hub.log()
    site.cluster.wait_for("the pod gone", lambda: site.pod("jupyter-alice") is None)
    assert not site.exists("secret", "jupyter-alice-xnat")
