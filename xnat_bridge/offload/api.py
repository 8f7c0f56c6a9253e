"""The notebook API: ``xnat_bridge.submit(...)`` and ``xnat_bridge.jobs()``.

    import xnat_bridge
    job = xnat_bridge.submit("t1", script="train.py", cpus=2, mem="4G", walltime="0:30:00")
    job.status            # "staging", "queued", "running", ..., "done" (refreshed on every access)
    print(job.logs())     # the script's output so far
    job.wait(); job.results()["files"]
    job.publish()         # the results into XNAT, with the hub's signed RO-Crate

Both use one default :class:`OffloadManager` per process, on
``xnat_bridge.connect()`` (``XNAT_HOST``/``XNAT_USER``/``XNAT_PASS``) and the
limits in ``XNAT_HPC_OFFLOAD``; :func:`set_manager` replaces it.
"""

from __future__ import annotations

import threading

from .manager import OffloadManager
from .registry import JobRecord

_default: OffloadManager | None = None
_lock = threading.Lock()


def default_manager() -> OffloadManager:
    global _default
    with _lock:
        if _default is None:
            from ..connection import connect

            _default = OffloadManager(connect())
        return _default


def set_manager(manager: OffloadManager | None) -> None:
    """Use *manager* for :func:`submit` and :func:`jobs` (None: create one on next use)."""
    global _default
    with _lock:
        _default = manager


class Job:
    """A handle on one offloaded job; attributes read the registry afresh."""

    def __init__(self, job_id: str, manager: OffloadManager | None = None):
        self.id = job_id
        self._manager = manager

    @property
    def manager(self) -> OffloadManager:
        return self._manager or default_manager()

    @property
    def record(self) -> JobRecord:
        return self.manager.get(self.id)

    @property
    def status(self) -> str:
        return self.record.state.value

    def logs(self, offset: int = 0) -> str:
        return self.manager.logs(self.id, offset)[0]

    def wait(self, timeout: float | None = None) -> Job:
        self.manager.wait(self.id, timeout)
        return self

    def cancel(self) -> Job:
        self.manager.cancel(self.id)
        return self

    def results(self) -> dict:
        return self.manager.results(self.id)

    def publish(self, project: str | None = None) -> dict:
        """Publish the results to XNAT, signed by the hub (``{"resource", "url", ...}``); see
        :meth:`OffloadManager.publish`."""
        return self.manager.publish(self.id, project)

    def __repr__(self) -> str:
        rec = self.record
        return f"<xnat_bridge.Job {self.id} {rec.state.value} dataset={rec.dataset} v{rec.dataset_version}>"


def submit(dataset: str, script: str, **resources) -> Job:
    """Train *script* on *dataset* on the secure partition; see :meth:`OffloadManager.submit`."""
    m = default_manager()
    return Job(m.submit(dataset, script, **resources).id, m)


def jobs() -> list[Job]:
    """Every job of this workspace, newest first."""
    m = default_manager()
    return [Job(r.id, m) for r in m.list()]
