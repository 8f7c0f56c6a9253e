"""Why a server's pod will not become ready, or has ended, read from its state (pure).

kubespawner waits for a pod to run until ``start_timeout``, whatever the pod says. Some states
never resolve by waiting: an image the node lacks with ``imagePullPolicy: Never``, a claim no
volume can bind (no storage class: no provisioner will come), a container that keeps crashing.
:func:`pod_failure` names them from the pod as the API returns it (a dict, as kubespawner's
reflector holds it) and the events of its claims, so the Kubernetes backend fails the start at
once with the reason (:class:`PodWillNotStart`) instead of after minutes. :func:`pod_ended`
says why a running pod is going away (evicted, deleted by someone else), for ``poll``.
:func:`api_refusal` turns the API server's refusal of a pod (a namespace quota) into the error
the user reads.

Nothing here talks to a cluster.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from collections.abc import Iterable, Mapping
from typing import Any

from xnat_bridge.errors import PermissionDenied, XnatHpcError


class PodWillNotStart(XnatHpcError):
    """The server's pod cannot start; the message says why and who can fix it."""

    status = 503
    reason = "pod_will_not_start"


class ClusterQuotaExceeded(PermissionDenied):
    """The namespace's ResourceQuota refuses the server's pod."""

    reason = "quota_exceeded"


#: container ``waiting`` reasons that waiting does not cure, with what to tell the user
_FATAL_WAITING = {
    "ErrImageNeverPull": "the image {image} is not on the node, and the cluster is set never to pull "
                         "it (imagePullPolicy: Never); an admin imports it on the nodes or fixes the "
                         "profile's image",
    "InvalidImageName": "the profile's image name {image} is not valid",
    "CreateContainerConfigError": "the container could not be configured: {message}",
    "CreateContainerError": "the container could not be created: {message}",
    "RunContainerError": "the container could not be run: {message}",
    "CrashLoopBackOff": "the server exits as soon as it starts ({last}); its log says why",
}


def _conditions(pod: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (pod.get("status") or {}).get("conditions") or []}


def _last_exit(status: Mapping[str, Any]) -> str:
    term = ((status.get("lastState") or {}).get("terminated") or {})
    if not term:
        return "no exit status yet"
    text = f"exit code {term.get('exitCode')}"
    if term.get("reason"):
        text += f", {term['reason']}"
    if term.get("message"):
        text += f": {term['message'].strip()[:300]}"
    return text


def claim_names(pod: Mapping[str, Any]) -> list[str]:
    """The PersistentVolumeClaims the pod's volumes name."""
    return [v["persistentVolumeClaim"]["claimName"] for v in (pod.get("spec") or {}).get("volumes") or []
            if v.get("persistentVolumeClaim")]


def unbound_claims_block(pod: Mapping[str, Any]) -> bool:
    """The scheduler keeps the pod off every node because a claim it needs is not bound."""
    scheduled = _conditions(pod).get("PodScheduled") or {}
    return (scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable"
            and "unbound" in (scheduled.get("message") or "") and "PersistentVolumeClaim" in scheduled["message"])


def _when(event: Mapping[str, Any]) -> datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        if event.get(key):
            try:
                return datetime.fromisoformat(str(event[key]).replace("Z", "+00:00"))
            except ValueError:
                return None
    return None


#: the volume controller's pass over pending claims (kube-controller-manager's
#: ``--pvclaimbinder-sync-period``, 15 s by default)
CLAIM_RESYNC = timedelta(seconds=15)


def claim_failure(claim: Mapping[str, Any], events: Iterable[Mapping[str, Any]],
                  since: str | None = None) -> str | None:
    """Why *claim* (a PVC) will not bind, or None: it is ``Pending``, it names no storage class
    (``""``: static volumes only, no provisioner will make one) and the volume controller said
    it found no volume for it (a ``FailedBinding`` event) since this start (*since*: the pod's
    ``creationTimestamp``). A claim made before the pod counts only an event a whole controller
    pass (:data:`CLAIM_RESYNC`) after it: an older one may predate the volume an admin has made
    since, and a pass at the moment of the start may race that volume's binding; a claim made
    for this start counts any."""
    spec, status = claim.get("spec") or {}, claim.get("status") or {}
    if status.get("phase") != "Pending" or spec.get("storageClassName") not in ("", None):
        return None
    if spec.get("volumeName"):
        return None  # bound by name to a volume that is coming
    start = _when({"eventTime": since}) if since else None
    made = _when({"eventTime": (claim.get("metadata") or {}).get("creationTimestamp")})
    old_claim = start is not None and made is not None and made < start

    def fresh(event: Mapping[str, Any]) -> bool:
        when = _when(event)
        if start is None or when is None:
            return True
        # a claim of an earlier start: the controller's pass racing the volume an admin has just
        # made may still say "no volume"; only a whole pass after this start is its answer
        return when >= start + CLAIM_RESYNC if old_claim else when >= start

    failed = [e for e in events if e.get("reason") == "FailedBinding" and fresh(e)]
    if not failed:
        return None
    name = (claim.get("metadata") or {}).get("name", "?")
    return (f"the volume claim {name} cannot be bound: {failed[-1].get('message', 'no volume')}; an admin "
            "makes a PersistentVolume for it (this cluster has no provisioner for it)")


def pod_failure(pod: Mapping[str, Any] | None,
                claim_reasons: Mapping[str, str | None] | None = None) -> str | None:
    """Why the starting *pod* will never become ready, or None while it still may.

    *claim_reasons*: :func:`claim_failure` of each of the pod's claims, read by the caller when
    :func:`unbound_claims_block` (no request otherwise)."""
    if not pod:
        return None
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        reason = status.get("reason") or "Failed"
        return f"the cluster ended the server's pod before it was ready ({reason}: {status.get('message', '')})".strip()
    images = {c.get("name"): c.get("image") for c in (pod.get("spec") or {}).get("containers") or []}
    for cs in status.get("containerStatuses") or []:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        template = _FATAL_WAITING.get(waiting.get("reason", ""))
        if template:
            return template.format(image=images.get(cs.get("name")) or cs.get("image", "?"),
                                   message=(waiting.get("message") or "").strip()[:300] or "no detail",
                                   last=_last_exit(cs))
    if unbound_claims_block(pod):
        for claim in claim_names(pod):
            reason = (claim_reasons or {}).get(claim)
            if reason:
                return reason
    return None


def pod_ended(pod: Mapping[str, Any] | None) -> str | None:
    """Why a pod that was running is going away or gone, or None while it runs: deleted
    (``deletionTimestamp``, by anyone: an eviction, an admin, a node drain), evicted by the node
    (phase ``Failed``), or missing."""
    if not pod:
        return "the server's pod is gone"
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    disruption = _conditions(pod).get("DisruptionTarget") or {}
    if disruption.get("status") == "True":
        return f"the cluster is ending the server's pod ({disruption.get('reason')}: {disruption.get('message', '')})"
    if meta.get("deletionTimestamp"):
        return "the server's pod is being deleted"
    if status.get("phase") in ("Failed", "Succeeded"):
        return f"the server's pod ended ({status.get('reason') or status['phase']}: {status.get('message', '')})"
    return None


def api_refusal(status: int, body: str | bytes | None) -> XnatHpcError | None:
    """The error for the API server's refusal of the server's pod (*status*, *body* of its
    ``ApiException``), when the user can understand it: a namespace quota. None otherwise."""
    try:
        message = json.loads(body or b"{}").get("message", "")
    except (ValueError, AttributeError):
        message = ""
    if status == 403 and "exceeded quota" in message:
        return ClusterQuotaExceeded(f"the cluster's quota for servers is used up: {message}")
    return None
