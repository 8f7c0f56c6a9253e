"""Releasing a dataset identity to the one worker that may have it, once.

A :class:`KeyRelease` lives in the user's server next to the job's dask
scheduler; its :meth:`handler` is registered as the scheduler's
``xnat_hpc_claim_key`` handler, so a claim arrives over the job's TLS comm
(whose certificate only the job's user holds). The identity is released only
if the claim names this job *and* the Slurm job id that ``sbatch`` returned
for it, and only the first time; every other claim is refused, reported to
*on_refused* (which audits it and fails the job) and answered with an error.
A claim may carry the node's start times (``node_times``, :func:`~.phases.node_phases`):
kept in :attr:`KeyRelease.node_times` for the released claim only, never trusted for more
than the job's own timing figures.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..staging import AgeIdentity

log = logging.getLogger(__name__)


class KeyRelease:
    def __init__(self, job_id: str, identity: AgeIdentity, expected_slurm_job_id: Callable[[], str | None],
                 on_released: Callable[[str], None], on_refused: Callable[[str, str], None]):
        self.job_id = job_id
        self._identity: AgeIdentity | None = identity
        self._expected = expected_slurm_job_id
        self._on_released = on_released
        self._on_refused = on_refused
        self._lock = threading.Lock()
        self.claims = 0
        #: what the released claim said of the node's start (``{"script": t, "task": t}``)
        self.node_times: dict | None = None

    def claim(self, job: str | None, slurm_job_id: str | None, peer: str = "?",
              node_times: dict | None = None) -> dict:
        """``{"identity": ...}`` for the first valid claim, else ``{"error": reason}``."""
        with self._lock:
            self.claims += 1
            expected = self._expected()
            if job != self.job_id:
                reason = f"claim for job {job!r} reached the scheduler of job {self.job_id}"
            elif not slurm_job_id or expected is None or str(slurm_job_id) != str(expected):
                reason = (f"claim from Slurm job {slurm_job_id!r} ({peer}), but the key belongs to "
                          f"Slurm job {expected}")
            elif self._identity is None:
                reason = f"second claim for the key of Slurm job {expected} ({peer}); it was released once"
            else:
                secret = self._identity.secret()
                self._identity = None
                self.node_times = node_times if isinstance(node_times, dict) else None
                log.info("job %s: dataset key released to Slurm job %s (%s)", self.job_id, expected, peer)
                self._on_released(str(expected))
                return {"identity": secret}
        log.warning("job %s: key claim refused: %s", self.job_id, reason)
        self._on_refused(str(slurm_job_id), reason)
        return {"error": f"key claim refused: {reason}"}

    async def handler(self, comm=None, job: str | None = None, slurm_job_id: str | None = None,
                      node_times: dict | None = None) -> dict:
        peer = getattr(comm, "peer_address", "?") if comm is not None else "?"
        return self.claim(job, slurm_job_id, peer, node_times)

    def forget(self) -> None:
        with self._lock:
            self._identity = None
