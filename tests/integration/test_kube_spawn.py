"""The Kubernetes backend on a real cluster (issue 21): a hub outside the cluster whose servers
are pods of the development Kubernetes (``kube_site``: :mod:`tests.fixtures.kube`), started
from the REST API, used through the proxy, and stopped — every step checked on the cluster
itself (``kubectl`` as its admin), in the pod (``kubectl exec``) and on the node's disk.
"""

from __future__ import annotations

import base64
import grp
import json
import os
import re
import subprocess
import sys

import pytest
import requests

from devstack.demo import ARCHIVE_GROUP
from hub_ext.names import hub_server_name
from tests.fixtures.accounts import unix_entry
from tests.fixtures.devxnat import PASSWORDS
from tests.fixtures.plugin import generate_event_tracking_id, start_outcome, stop_from_xnat, xnat_points_at
from tests.fixtures.spawn import audit_events, stop_server, wait_gone, wait_ready
from tests.integration.test_xnat_plugin_hub import experiment_of

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
    workspace = site.workspace("alice")
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
        alice = unix_entry("alice")  # the pod runs as alice's Unix account (xnat_unix_accounts)
        assert (container["securityContext"]["runAsUser"], container["securityContext"]["runAsGroup"]) \
            == (alice.pw_uid, alice.pw_gid)
        assert spec["automountServiceAccountToken"] is False
        archive_gid = grp.getgrnam(ARCHIVE_GROUP).gr_gid
        assert spec["securityContext"]["supplementalGroups"] == [archive_gid]
        # the scope: one read-only sub-path of the archive claim; the workspace claim at /workspace
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        assert mounts["/xnat/data/NEURO_MRI"] == {"name": "xnat-archive", "mountPath": "/xnat/data/NEURO_MRI",
                                                  "subPath": "NEURO_MRI", "readOnly": True}
        assert mounts[str(workspace)]["name"] == "workspace"  # where the Slurm node sees it too
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
        assert lines[:2] == ["NEURO_MRI", str(alice.pw_uid)] and str(archive_gid) in lines[2].split() and lines[3], ls.stdout
        assert site.exec("jupyter-alice", "sh", "-c", "touch /xnat/data/NEURO_MRI/x", check=False).returncode != 0
        site.exec("jupyter-alice", "sh", "-c", f"echo kept > {workspace}/note.txt")
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


def test_the_spawn_form_offers_the_kubernetes_profile_and_starts_a_named_pod(kube_site):
    site, hub = kube_site, kube_site.hub
    site.workspace("alice")
    s, r = hub.login("alice", PASSWORDS["alice"])
    assert r.status_code == 302
    page = s.get(f"{hub.url}/hub/spawn/alice/form", timeout=30)
    assert page.status_code == 200
    # ours, not kubespawner's profile list: the profiles alice may use, the projects she may read
    assert 'value="k8s-small"' in page.text and 'value="NEURO_MRI"' in page.text, page.text[-3000:]
    assert 'value="CARDIO_ECG"' not in page.text
    r = s.post(f"{hub.url}/hub/spawn/alice/form", data={"profile": "k8s-small", "project": ["NEURO_MRI"],
                                                        "_xsrf": s.cookies.get("_xsrf", path="/hub/")}, timeout=120)
    assert r.status_code == 200, r.text[-2000:]
    try:
        wait_ready(hub, "alice", "form", timeout=120)
        pod = site.pod("jupyter-alice--form")
        assert pod is not None and pod["metadata"]["annotations"]["xnat-hpc-hub/profile"] == "k8s-small"
        assert [m["subPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]
                if m["name"] == "xnat-archive"] == ["NEURO_MRI"]
    finally:
        stop_server(hub, "alice", "form")
    assert site.pod("jupyter-alice--form") is None and not site.exists("secret", "jupyter-alice--form-xnat")


# -- what goes wrong: clear and at once, nothing left behind -----------------------------------------

def test_an_image_missing_on_the_node_fails_the_start_at_once(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("alice", PASSWORDS["alice"])
    site.workspace("alice")
    status, message = _spawn_failure(hub, "alice", {"profile": "k8s-no-image", "projects": ["NEURO_MRI"]})
    assert status in (0, 503), message
    assert "docker.io/xnat-hpc-hub/not-on-this-node:0 is not on the node" in message
    wait_gone(hub, "alice", "")
    site.cluster.wait_for("the pod deleted", lambda: site.pod("jupyter-alice") is None)
    assert not site.exists("secret", "jupyter-alice-xnat")
    assert "failed to start in" not in hub.log()  # not kubespawner's start_timeout


def test_a_workspace_claim_that_cannot_bind_fails_the_start_naming_it(kube_site):
    site, hub = kube_site, kube_site.hub
    assert not (site.workspaces / "carol").exists()  # carol has no workspace volume on this site
    with site.devxnat.membership("NEURO_MRI", "carol", "Members"):
        hub.login("carol", PASSWORDS["carol"])
        status, message = _spawn_failure(hub, "carol", {"profile": "k8s-small", "projects": ["NEURO_MRI"]})
        assert status in (0, 503), message
        assert "the volume claim workspace-carol cannot be bound" in message and "PersistentVolume" in message
        wait_gone(hub, "carol", "")
        site.cluster.wait_for("the pod deleted", lambda: site.pod("jupyter-carol") is None)
        assert not site.exists("secret", "jupyter-carol-xnat")
        # an admin makes the volume; the next start binds and runs
        site.workspace("carol")
        r = hub.api("POST", "/users/carol/servers/", json={"profile": "k8s-small", "projects": ["NEURO_MRI"]})
        assert r.status_code in (201, 202), r.text
        try:
            wait_ready(hub, "carol", "", timeout=120)
        finally:
            stop_server(hub, "carol", "")


def test_a_namespace_quota_refuses_the_pod_with_the_quota_named(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("alice", PASSWORDS["alice"])
    site.workspace("alice")
    site.apply({"apiVersion": "v1", "kind": "ResourceQuota",
                "metadata": {"name": "servers", "namespace": site.namespace}, "spec": {"hard": {"pods": "0"}}})
    try:
        site.cluster.wait_for("the quota counted", lambda: "pods" in (
            site.cluster.get("resourcequota", "servers", site.namespace).get("status") or {}).get("hard", {}))
        status, message = _spawn_failure(hub, "alice", {"profile": "k8s-small", "projects": ["NEURO_MRI"]})
        assert status in (0, 403), message
        assert "quota for servers is used up" in message and "exceeded quota: servers" in message
        # kubespawner dumped the refused pod into the hub's log: its token value scrubbed
        assert "'name': 'JUPYTERHUB_API_TOKEN'" in hub.log()
        assert not re.search(r"'name': 'JUPYTERHUB_API_TOKEN',\s*'value': '(?!\[secret\])", hub.log())
        wait_gone(hub, "alice", "")
        assert site.pod("jupyter-alice") is None
        assert not site.exists("secret", "jupyter-alice-xnat")
    finally:
        site.cluster.kubectl("delete", "resourcequota", "servers", "-n", site.namespace)


def test_the_idle_culler_stops_an_idle_server_and_its_pod_goes(kube_site, tmp_path):
    """jupyterhub-idle-culler with the shipped role's scopes and a one-second timeout: the
    server, idle since its start, is stopped; its pod and Secret go with it."""
    site, hub = kube_site, kube_site.hub
    site.workspace("alice")
    hub.login("alice", PASSWORDS["alice"])
    r = hub.api("POST", "/users/alice/servers/", json={"profile": "k8s-small", "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, "alice", "", timeout=120)
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": hub.culler_token}
    log_path = tmp_path / "idle-culler.log"
    with open(log_path, "wb") as log_f:
        culler = subprocess.Popen([sys.executable, "-m", "jupyterhub_idle_culler", f"--url={hub.url}/hub/api",
                                   "--timeout=1", "--cull-every=1"], stdout=log_f, stderr=subprocess.STDOUT, env=env)
    try:
        wait_gone(hub, "alice", "", timeout=60)
    finally:
        culler.terminate()
        culler.wait(10)
        stop_server(hub, "alice", "")
    assert "Culling server alice" in log_path.read_text(errors="replace")
    site.cluster.wait_for("the pod deleted", lambda: site.pod("jupyter-alice") is None)
    assert not site.exists("secret", "jupyter-alice-xnat")


def test_an_evicted_server_is_noticed_within_the_poll_interval(kube_site):
    site, hub = kube_site, kube_site.hub
    hub.login("alice", PASSWORDS["alice"])
    site.workspace("alice")
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


# -- XNAT's "Start Jupyter" and the owners' revocation, on pods ---------------------------------------

#: the hardware a site adds in XNAT for its Kubernetes profile (XNAT_HPC_HARDWARE → xnat_hardware)
TINY_KUBE = {"name": "Tiny (Kubernetes)", "cpuReservation": 1.0, "cpuLimit": None, "memoryReservation": "256M",
             "memoryLimit": "1G", "constraints": [], "genericResources": [],
             "environmentVariables": [{"key": "XNAT_HPC_HARDWARE", "value": "tiny-kube"}]}


@pytest.fixture
def tiny_kube_hardware(kube_site):
    """``TINY_KUBE`` added to XNAT's compute services by the site's admin, enabled everywhere; its id."""
    body = {"hardware": TINY_KUBE,
            "scopes": {s: {"scope": s, "enabled": True, "ids": []} for s in ("Site", "Project", "User")}}
    r = kube_site.devxnat.request("POST", "/xapi/hardware-configs", "admin", json=body)
    assert r.status_code == 201, r.text
    yield r.json()["id"]
    kube_site.devxnat.request("DELETE", f"/xapi/hardware-configs/{r.json()['id']}", "admin")


def test_start_jupyter_in_xnat_runs_a_pod_of_the_experiment_and_xnat_stops_it(kube_site, tiny_kube_hardware):
    """XNAT's UI flow (the server named after the UI's event tracking id, POST to XNAT, its event
    tracking polled, DELETE to stop) on a hub whose servers are pods: the pod mounts the
    experiment where XNAT's plugin puts it, and XNAT's stop deletes the pod."""
    site, hub, xnat = kube_site, kube_site.hub, kube_site.devxnat
    site.workspace("bob")
    exp = experiment_of(xnat, "bob", "CARDIO_ECG")
    etid = generate_event_tracking_id()
    name, pod_name = hub_server_name(etid), None
    with xnat_points_at(xnat, hub):
        req = {"username": "bob", "servername": etid, "xsiType": "xnat:ecgSessionData", "itemId": exp["ID"],
               "itemLabel": exp["label"], "projectId": "CARDIO_ECG", "eventTrackingId": etid,
               "computeEnvironmentConfigId": 1, "hardwareConfigId": tiny_kube_hardware}
        r = xnat.request("POST", f"/xapi/jupyterhub/users/bob/server/{etid}", "bob", json=req)
        assert r.status_code == 200, r.text
        try:
            outcome = start_outcome(xnat, "bob", etid)
            assert outcome.get("succeeded") in (True, "true"), (outcome, hub.log()[-4000:])
            [pod] = [p for p in json.loads(site.cluster.kubectl("get", "pods", "-n", site.namespace, "-o",
                                                                "json").stdout)["items"]
                     if p["metadata"]["annotations"].get("hub.jupyter.org/servername") == name]
            pod_name = pod["metadata"]["name"]
            assert pod["metadata"]["annotations"]["xnat-hpc-hub/profile"] == "k8s-small"
            mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]
                      if m["name"] == "xnat-archive"}
            target = f"/data/projects/CARDIO_ECG/experiments/{exp['label']}"
            assert mounts[target]["readOnly"] is True and mounts[target]["subPath"].startswith("CARDIO_ECG/")
            listing = site.exec(pod_name, "ls", target).stdout.split()
            assert listing, "the experiment's folder is empty in the pod"
            # what XNAT's own polling sees: its own name, the hub's URL
            model = xnat.request("GET", f"/xapi/jupyterhub/users/bob/server/{etid}", "bob")
            assert model.status_code == 200 and model.json()["name"] == etid, model.text
        finally:
            stop_from_xnat(xnat, hub, "bob", etid, "bob", name)
    assert pod_name and site.pod(pod_name) is None
    assert not site.exists("secret", f"{pod_name}-xnat")


def test_a_revocation_in_xnat_deletes_the_pod_and_no_new_pod_gets_the_project(kube_site):
    site, hub, xnat = kube_site, kube_site.hub, kube_site.devxnat
    site.workspace("alice")
    with xnat.membership("CARDIO_ECG", "alice", "Members"):
        hub.login("alice", PASSWORDS["alice"])
        r = hub.api("POST", "/users/alice/servers/", json={"profile": "k8s-small", "projects": ["CARDIO_ECG"]})
        assert r.status_code in (201, 202), r.text
        try:
            wait_ready(hub, "alice", "", timeout=120)
            assert site.exec("jupyter-alice", "ls", "/xnat/data/CARDIO_ECG").stdout.split()
            # dave, CARDIO_ECG's owner, removes alice in XNAT itself; the hub's re-check finds it
            r = xnat.request("DELETE", "/data/projects/CARDIO_ECG/users/Members/alice", "dave")
            assert r.status_code == 200, r.text
            wait_gone(hub, "alice", "", timeout=60)
        finally:
            stop_server(hub, "alice", "")
        site.cluster.wait_for("the pod deleted", lambda: site.pod("jupyter-alice") is None)
        assert not site.exists("secret", "jupyter-alice-xnat")
        events = [e for e in audit_events(hub) if e["user"] == "alice"]
        assert any(e["action"] == "server_stopped" and "re-check" in e["detail"] for e in events), events[-5:]
        # a new start naming the project is refused before any pod exists
        r = hub.api("POST", "/users/alice/servers/", json={"profile": "k8s-small", "projects": ["CARDIO_ECG"]})
        assert r.status_code == 403 and "CARDIO_ECG" in r.json()["message"], r.text
        assert site.pod("jupyter-alice") is None and not site.exists("secret", "jupyter-alice-xnat")


# -- the pod as a client of the secure partition (the EMCP setup) ------------------------------------

COUNT_FILES = """import json, os, pathlib
root = pathlib.Path(os.environ["DATASET_DIR"])
files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
pathlib.Path(os.environ["OUTPUT_DIR"], "files.json").write_text(json.dumps(files))
print("counted", len(files), "files on", os.uname().nodename, flush=True)
"""


def test_a_pod_server_offloads_a_job_to_the_secure_partition_and_gets_its_results(kube_site, slurm):
    """alice's server runs in a pod as her Unix account; from it, a dataset of her scope is staged
    (encrypted) to the shared staging area, submitted with ``sbatch`` to the secure partition
    (the pod reads the site's slurm.conf and the node's munge socket), run on the node as alice,
    its workers reaching the job's scheduler in the pod, and the results come back into her
    workspace."""
    from devstack.slurm import SYSTEM_CONF

    site, hub, xnat = kube_site, kube_site.hub, kube_site.devxnat
    site.slurm_client(SYSTEM_CONF.read_text())
    workspace = site.workspace("alice")
    alice = unix_entry("alice")
    script = workspace / "count_files.py"
    script.write_text(COUNT_FILES)
    os.chown(script, alice.pw_uid, alice.pw_gid)
    hub.login("alice", PASSWORDS["alice"])
    r = hub.api("POST", "/users/alice/servers/", json={"profile": "k8s-small", "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text
    headers = {"Authorization": f"token {_token(hub, 'alice')}"}

    def api(method: str, path: str, **kw) -> requests.Response:
        return requests.request(method, f"{hub.url}/user/alice/xnat-hpc/api/{path}", headers=headers,
                                timeout=120, **kw)

    try:
        wait_ready(hub, "alice", "", timeout=120)
        assert site.exec("jupyter-alice", "sbatch", "--version").stdout.startswith("slurm")
        experiment = experiment_of(xnat, "alice", "NEURO_MRI")["ID"]
        name = f"kube-{os.getpid()}"
        r = api("POST", "datasets", json={"name": name, "selection": [{"project": "NEURO_MRI",
                                                                       "experiment": experiment}]})
        assert r.status_code in (200, 201), r.text
        r = api("POST", "jobs", json={"dataset": name, "script": "count_files.py", "cpus": 1, "memory": "512M",
                                      "walltime": "0:10:00", "client_token": name})
        assert r.status_code == 202, r.text
        job = r.json()["id"]

        def finished():
            record = api("GET", f"jobs/{job}").json()
            return record if record.get("state") in ("done", "failed", "cancelled", "lost") else None

        record = site.cluster.wait_for(f"job {job} to finish", finished, timeout=300)
        logs = {str(p): p.read_text(errors="replace")[-3000:]
                for p in workspace.glob(f"xnat-hpc/jobs/{job}/**/*") if p.is_file() and p.suffix in (".out", ".err", ".log", "")}
        assert record["state"] == "done", (record.get("message"), logs)
        shown = subprocess.run(["scontrol", "show", "job", str(record["slurm_job_id"]), "-o"],
                               capture_output=True, text=True).stdout
        assert f"UserId={alice.pw_name}({alice.pw_uid})" in shown and "Partition=secure" in shown, shown
        results = list(workspace.glob(f"xnat-hpc/jobs/{job}/**/files.json"))
        assert results, sorted(str(p) for p in workspace.rglob("*"))[:50]
        files = json.loads(results[0].read_text())
        assert files and all(not f.startswith("/") for f in files)
    finally:
        stop_server(hub, "alice", "")
