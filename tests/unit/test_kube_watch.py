""":mod:`spawner.kube_watch` on pods, claims and events as the API server returns them (the
shapes kubespawner's reflector holds; the cases were read off the development cluster)."""

from __future__ import annotations

import json

import pytest

from spawner.kube_watch import (
    ClusterQuotaExceeded,
    api_refusal,
    claim_failure,
    claim_names,
    pod_ended,
    pod_failure,
    unbound_claims_block,
)

IMAGE = "docker.io/xnat-hpc-hub/not-on-this-node:0"


def pod(phase="Pending", waiting=None, last=None, conditions=(), deleting=False, reason=None, message=None):
    status = {"phase": phase, "conditions": list(conditions)}
    if reason:
        status["reason"], status["message"] = reason, message
    if waiting is not None or last is not None:
        cs = {"name": "notebook", "image": IMAGE, "ready": False, "restartCount": 3,
              "state": {"waiting": waiting} if waiting else {"running": {"startedAt": "2026-12-07T18:00:00Z"}}}
        if last:
            cs["lastState"] = {"terminated": last}
        status["containerStatuses"] = [cs]
    meta = {"name": "jupyter-alice", "namespace": "xnat-hpc", "creationTimestamp": "2026-12-07T18:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-07T18:05:00Z"
    return {"metadata": meta, "status": status,
            "spec": {"containers": [{"name": "notebook", "image": IMAGE}],
                     "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": "workspace-alice"}},
                                 {"name": "xnat-archive", "persistentVolumeClaim": {"claimName": "xnat-archive",
                                                                                    "readOnly": True}},
                                 {"name": "tmp", "emptyDir": {}}]}}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims. "
                            "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."}


def claim(phase="Pending", storage_class="", volume_name=None, made="2026-12-07T18:00:00Z"):
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}},
            "volumeMode": "Filesystem"}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    if volume_name:
        spec["volumeName"] = volume_name
    return {"metadata": {"name": "workspace-alice", "namespace": "xnat-hpc", "creationTimestamp": made},
            "spec": spec, "status": {"phase": phase}}


FAILED_BINDING = {"reason": "FailedBinding", "type": "Normal", "count": 2,
                  "message": "no persistent volumes available for this claim and no storage class is set",
                  "firstTimestamp": "2026-12-07T18:00:00Z", "lastTimestamp": "2026-12-07T18:00:01Z"}


def test_a_pod_still_starting_is_not_a_failure():
    assert pod_failure(None) is None
    assert pod_failure(pod()) is None  # just created
    assert pod_failure(pod(waiting={"reason": "ContainerCreating"})) is None
    assert pod_failure(pod(waiting={"reason": "ErrImagePull"})) is None  # a registry may answer next time
    busy = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/1 nodes are available: 1 Insufficient cpu."}
    assert pod_failure(pod(conditions=[busy])) is None  # another server may end


def test_an_image_the_node_lacks_is_named():
    waiting = {"reason": "ErrImageNeverPull",
               "message": f'Container image "{IMAGE}" is not present with pull policy of Never'}
    reason = pod_failure(pod(waiting=waiting))
    assert reason.startswith(f"the image {IMAGE} is not on the node") and "imagePullPolicy: Never" in reason
    assert "not valid" in pod_failure(pod(waiting={"reason": "InvalidImageName", "message": "bad"}))


def test_a_server_that_keeps_crashing_gives_its_exit():
    reason = pod_failure(pod(waiting={"reason": "CrashLoopBackOff", "message": "back-off 10s restarting"},
                             last={"exitCode": 1, "reason": "Error", "message": "Usage: tini [OPTIONS]\n"}))
    assert reason == ("the server exits as soon as it starts (exit code 1, Error: Usage: tini [OPTIONS]); "
                      "its log says why")
    assert "(no exit status yet)" in pod_failure(pod(waiting={"reason": "CrashLoopBackOff"}))
    config = pod_failure(pod(waiting={"reason": "CreateContainerConfigError",
                                      "message": 'secret "jupyter-alice-xnat" not found'}))
    assert config == 'the container could not be configured: secret "jupyter-alice-xnat" not found'


def test_a_pod_the_node_failed_before_it_was_ready():
    assert pod_failure(pod(phase="Failed", reason="Evicted", message="The node was low on resource: memory.")) \
        == "the cluster ended the server's pod before it was ready (Evicted: The node was low on resource: memory.)"


def test_an_unbound_claim_fails_only_with_its_reason():
    blocked = pod(conditions=[UNSCHEDULABLE])
    assert unbound_claims_block(blocked) and claim_names(blocked) == ["workspace-alice", "xnat-archive"]
    assert pod_failure(blocked) is None  # the caller has not read the claims
    assert pod_failure(blocked, {"workspace-alice": None, "xnat-archive": None}) is None
    assert pod_failure(blocked, {"xnat-archive": "the claim x cannot be bound"}) == "the claim x cannot be bound"
    assert not unbound_claims_block(pod())


def test_a_claim_fails_when_no_volume_and_no_provisioner_will_come():
    reason = claim_failure(claim(), [FAILED_BINDING])
    assert reason == ("the volume claim workspace-alice cannot be bound: no persistent volumes available for "
                      "this claim and no storage class is set; an admin makes a PersistentVolume for it "
                      "(this cluster has no provisioner for it)")
    assert claim_failure(claim(storage_class=None), [FAILED_BINDING]) is not None
    # bound, or a class whose provisioner may still make one, or no word from the controller yet
    assert claim_failure(claim(phase="Bound"), [FAILED_BINDING]) is None
    assert claim_failure(claim(storage_class="standard"), [FAILED_BINDING]) is None
    assert claim_failure(claim(volume_name="workspace-alice-1"), [FAILED_BINDING]) is None
    assert claim_failure(claim(), [{"reason": "ExternalProvisioning", "message": "waiting"}]) is None


def test_a_binding_failure_older_than_the_pod_is_not_this_starts():
    # the claim made for this start, in the pod's second: its first failure counts
    assert claim_failure(claim(made="2026-12-07T18:00:01Z"), [FAILED_BINDING], since="2026-12-07T18:00:01Z")
    # a claim of an earlier start: the admin may have made the volume since the last failure,
    # even within the same second; only the controller's next word counts
    assert claim_failure(claim(), [FAILED_BINDING], since="2026-12-07T18:05:00Z") is None
    assert claim_failure(claim(), [FAILED_BINDING], since="2026-12-07T18:00:01Z") is None
    fresh = {**FAILED_BINDING, "lastTimestamp": "2026-12-07T18:05:15Z"}
    assert claim_failure(claim(), [fresh], since="2026-12-07T18:05:00Z") is not None
    # a pass just after the start may race the volume the admin made before it (seen in CI):
    # only a whole pass (15 s) after the start is the controller's answer
    racing = {**FAILED_BINDING, "lastTimestamp": "2026-12-07T18:05:01Z"}
    assert claim_failure(claim(), [racing], since="2026-12-07T18:05:00Z") is None


def test_why_a_running_pod_ended():
    running = pod(phase="Running", waiting=None, last=None)
    assert pod_ended(running) is None
    assert pod_ended(None) == "the server's pod is gone"
    assert pod_ended(pod(phase="Running", deleting=True)) == "the server's pod is being deleted"
    evicting = {"type": "DisruptionTarget", "status": "True", "reason": "EvictionByEvictionAPI",
                "message": "Eviction API: evicting"}
    assert pod_ended(pod(phase="Running", conditions=[evicting], deleting=True)) \
        == "the cluster is ending the server's pod (EvictionByEvictionAPI: Eviction API: evicting)"
    assert pod_ended(pod(phase="Failed", reason="Evicted", message="low on memory")) \
        == "the server's pod ended (Evicted: low on memory)"


@pytest.mark.parametrize("body", [
    json.dumps({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": 'pods "jupyter-alice" is forbidden: exceeded quota: servers, requested: pods=1, '
                           'used: pods=0, limited: pods=0'}),
    json.dumps({"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403,
                "message": 'pods "jupyter-alice" is forbidden: exceeded quota: servers, requested: pods=1, '
                           'used: pods=0, limited: pods=0'}).encode(),
])
def test_a_quota_refusal_is_a_403_naming_the_quota(body):
    err = api_refusal(403, body)
    assert isinstance(err, ClusterQuotaExceeded) and err.status == 403 and err.reason == "quota_exceeded"
    assert "exceeded quota: servers" in err.message


def test_other_refusals_are_left_to_the_caller():
    rbac = json.dumps({"message": 'pods is forbidden: User "xnat-hpc-hub" cannot create resource "pods"'})
    assert api_refusal(403, rbac) is None
    assert api_refusal(500, "not json") is None
    assert api_refusal(403, None) is None
