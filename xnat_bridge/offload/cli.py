"""``xnat-hpc-hub jobs list|show ID|cancel ID [--workspace DIR]``: jobs from a terminal.

Reads the workspace's registry directly (no XNAT connection needed); ``cancel``
marks the job cancelled and ``scancel``\\ s its Slurm job — the server process
that follows the job notices and wipes what it holds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .manager import OffloadManager


def _default_workspace() -> Path:
    return Path(os.environ.get("XNAT_HPC_WORKSPACE") or Path.home() / "xnat-hpc")


def format_table(records) -> str:
    """A plain-text table of job records, newest first (pure)."""
    rows = [("ID", "STATE", "DATASET", "SCRIPT", "SLURM", "CREATED", "MESSAGE")]
    for r in records:
        rows.append((r.id, r.state.value, f"{r.dataset} v{r.dataset_version}", r.script,
                     r.slurm_job_id or "-", r.created[:19].replace("T", " "),
                     r.message.splitlines()[0][:60] if r.message else ""))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def jobs_main(action: str, job_id: str | None = None, workspace: str | Path | None = None) -> int:
    """Run one ``jobs`` action; print to stdout; return the exit code."""
    ws = Path(workspace) if workspace else _default_workspace()
    manager = OffloadManager(workspace=ws)
    try:
        if action == "list":
            print(format_table(manager.list()))
            return 0
        if not job_id:
            print(f"xnat-hpc-hub jobs {action}: a job id is needed (see `xnat-hpc-hub jobs list`)")
            return 2
        if action == "show":
            print(json.dumps(manager.get(job_id).to_json(), indent=1, sort_keys=True))
            return 0
        if action == "cancel":
            rec = manager.cancel(job_id)
            print(f"{rec.id}: {rec.state.value}" + (f" ({rec.message})" if rec.message else ""))
            return 0
        raise ValueError(f"unknown jobs action {action!r}")
    finally:
        manager.close()
