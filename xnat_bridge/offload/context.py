"""What one job run may use, handed to it explicitly: :class:`OffloadContext`.

The manager builds one context (once its XNAT connection exists) and gives it
to every :class:`~.runner.JobRun` together with the job's own inputs (record,
manifest, script, request). A run reaches nothing else: no manager, no
connection. What it tells the manager goes through :attr:`OffloadContext.on_finished`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ..files import FileAccess
from ..staging import AgeEngine
from .bundles import BundleCache
from .policy import OffloadPolicy
from .registry import JobRegistry, check_job_id


def job_dir(workspace: Path, job_id: str) -> Path:
    """``<workspace>/jobs/<id>``: the job's log, results and provenance."""
    return Path(workspace) / "jobs" / check_job_id(job_id)


@dataclasses.dataclass(frozen=True)
class OffloadContext:
    """The collaborators of a job run (see the module docstring).

    ``audit(action, outcome="allowed", **fields)`` emits one audit event of the
    user; ``cluster_factory(**cluster_options)`` returns a started dask
    ``SLURMCluster`` (default :func:`~.slurm.make_slurm_cluster`);
    ``on_finished(run)`` is called once, at the end of the run's clean-up;
    ``engine`` is the age engine for what the server decrypts (the results; None:
    :func:`~xnat_bridge.staging.default_engine`);
    ``record_hashes(dataset, version, {name: sha256})`` writes the sha256s that a
    staging computed into that dataset version and returns the updated manifest
    (the connection's ``DatasetStore.record_sha256``; None: nothing is recorded).
    """

    registry: JobRegistry
    files: FileAccess
    policy: OffloadPolicy
    audit: Callable[..., None]
    workspace: Path
    bundles: BundleCache
    cluster_factory: Callable[..., Any]
    on_finished: Callable[[Any], None]
    engine: AgeEngine | None = None
    record_hashes: Callable[[str, int, Mapping[str, str]], Any] | None = None

    def job_dir(self, job_id: str) -> Path:
        return job_dir(self.workspace, job_id)
