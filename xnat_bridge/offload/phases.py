"""Where a job's start goes: its phases, measured by the server and reported by the node.

A job's way from ``submit`` to RUNNING (the worker on the secure node holds the dataset key)
has these phases, in order (:data:`PHASES`):

``checks``        the submission's checks in the server: resources, script, dataset, XNAT
                  permissions and revocation, the partition's scratch, the staging area, the
                  hub's ledger;
``staging``       the encrypted bundle made (or a cached one reused);
``scheduler``     the job's dask scheduler started, with its TLS certificates;
``sbatch``        ``sbatch`` until it returned the Slurm job id;
``slurm_start``   until the job's script started on the node (Slurm's scheduling pass);
``worker_start``  the node guard's checks of the node-local directory, the dask worker's start,
                  its TLS connection to the scheduler and the task handed to it;
``key_claim``     the task's claim of the dataset key until the server released it.

The server times its own phases with a monotonic clock (:class:`PhaseClock`); the last three
span two machines, so the node reports wall-clock times (when its job script and its task
started) and :func:`node_phases` turns them into durations — clamped at zero, since the two
clocks may differ by a little. The phases go into the job's record (``phases``), its log
and the server's log, so that a researcher and an admin see where a slow start went.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

PHASES = ("checks", "staging", "scheduler", "sbatch", "slurm_start", "worker_start", "key_claim")
#: the environment variable the job script sets to its start (bash's ``$EPOCHREALTIME``)
SCRIPT_START_VAR = "XNAT_HPC_SCRIPT_START"


class PhaseClock:
    """Durations of consecutive phases: :meth:`mark` ends the current phase and starts the next.

    *clock* is a monotonic clock in seconds (injected in tests); *order* names the phases in
    the order they are reported (a job's :data:`PHASES` by default; the hub's spawner has its
    own)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, started: float | None = None,
                 order: Sequence[str] = PHASES):
        self._clock = clock
        self.order = tuple(order)
        self._last = clock() if started is None else started
        self.durations: dict[str, float] = {}

    def mark(self, phase: str) -> float:
        """End *phase* now; return its seconds."""
        now = self._clock()
        seconds = self.durations[phase] = max(0.0, now - self._last)
        self._last = now
        return seconds

    def add(self, phase: str, seconds: float) -> None:
        """Record a phase measured elsewhere (e.g. on the node)."""
        self.durations[phase] = max(0.0, float(seconds))

    def as_json(self) -> dict[str, float]:
        return phases_json(self.durations, self.order)

    def text(self) -> str:
        return phases_text(self.durations, self.order)


def phases_json(durations: Mapping[str, float], order: Sequence[str] = PHASES) -> dict[str, float]:
    """The known phases in *order*, in seconds to the millisecond (pure)."""
    return {p: round(float(durations[p]), 3) for p in order if p in durations}


def _wall(value) -> float | None:
    try:
        t = float(value)
    except (TypeError, ValueError):
        return None
    return t if math.isfinite(t) and t > 0 else None


def node_phases(sbatch_returned: float, node: Mapping | None, claimed: float) -> dict[str, float]:
    """``slurm_start``, ``worker_start`` and ``key_claim`` from wall-clock times (pure).

    *sbatch_returned* and *claimed* are the server's times; *node* is what the node reported:
    ``{"script": when its job script started, "task": when its task started}``. A missing or
    malformed node time folds its phase into the next (the node is the job's own, but it is
    still input); negative spans (clock skew between the machines) count as zero.
    """
    node = node if isinstance(node, Mapping) else {}
    script, task = _wall(node.get("script")), _wall(node.get("task"))
    out: dict[str, float] = {}
    last = sbatch_returned
    for phase, at in (("slurm_start", script), ("worker_start", task), ("key_claim", claimed)):
        if at is None:
            continue
        out[phase] = round(max(0.0, at - last), 3)
        last = at
    return out


def phases_text(phases: Mapping[str, float], order: Sequence[str] = PHASES) -> str:
    """``checks 0.04 s · staging 0.21 s · ...`` (pure); ``""`` without phases."""
    known = [p for p in order if p in phases]
    if not known:
        return ""
    return (" · ".join(f"{p.replace('_', ' ')} {phases[p]:.2f} s" for p in known)
            + f" (total {sum(phases[p] for p in known):.2f} s)")
