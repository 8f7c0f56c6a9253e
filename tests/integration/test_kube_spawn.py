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
