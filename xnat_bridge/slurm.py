"""The one Slurm adapter: job states, argument lists, parsers and the few calls.

The spawner (a server is a Slurm job), the offload (a training job) and the hub's
revocation (cancel a user's jobs) all talk to Slurm through this module — the shape
of dask-gateway's jobqueue backend: submit, cancel and *batched* status with one
parser, over one list of states.

* **vocabulary** — :class:`SlurmState` (the states ``squeue -o %T`` prints) and ONE
  definition of their phases: :data:`PENDING_STATES` (queued or held, will or may
  run), :data:`RUNNING_STATES` (the job holds its node), :data:`ACTIVE_STATES` (the
  two together: the job holds, or will hold, what it was given) and
  :data:`TERMINAL_STATES` (it ended). A state Slurm adds later is in none of them
  (:func:`phase` is None): each caller says what an unknown state means to it;
* **pure builders and parsers** — :func:`squeue_argv`, :func:`scancel_argv`,
  :func:`sbatch_argv`, :func:`sinfo_tmp_disk_argv`; :func:`parse_squeue` (one
  ``squeue`` call for many ids, :data:`STATUS_FORMAT`: id, user, state, node,
  reason), :func:`parse_sbatch`, :func:`parse_tmp_disk`;
* **calls**, thin functions over :mod:`xnat_bridge.procs` (argument lists, no shell,
  logged at debug, :class:`~xnat_bridge.errors.CommandFailed` on failure):
  :func:`status`/:func:`astatus`, :func:`cancel`/:func:`acancel`, :func:`asubmit`,
  :func:`astate_node` (batchspawner's one-job answer) and :func:`tmp_disk`.

Only job ids that look like Slurm's (``123``, array task ``123_4``) reach an
argument list; nothing secret ever does (Slurm stores scripts and environments,
and argument lists are visible to every user in ``ps``).

This module is the lowest layer: it imports :mod:`xnat_bridge.procs` and
:mod:`xnat_bridge.errors` only.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import subprocess
from collections.abc import Iterable, Mapping
from types import MappingProxyType

from . import procs
from .errors import CommandFailed, InvalidRequest

#: seconds a ``squeue``/``scancel``/``sinfo`` may take unless the caller says otherwise
DEFAULT_TIMEOUT = 30


# -- the one vocabulary ---------------------------------------------------------------------

class SlurmState(str, enum.Enum):
    """A job state as ``squeue -o %T`` prints it (Slurm 22.05's long names)."""

    BOOT_FAIL = "BOOT_FAIL"
    CANCELLED = "CANCELLED"
    COMPLETED = "COMPLETED"
    COMPLETING = "COMPLETING"
    CONFIGURING = "CONFIGURING"
    DEADLINE = "DEADLINE"
    FAILED = "FAILED"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PENDING = "PENDING"
    PREEMPTED = "PREEMPTED"
    REQUEUED = "REQUEUED"
    REQUEUE_FED = "REQUEUE_FED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    RESIZING = "RESIZING"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    REVOKED = "REVOKED"
    RUNNING = "RUNNING"
    SIGNALING = "SIGNALING"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    STAGE_OUT = "STAGE_OUT"
    STOPPED = "STOPPED"
    SUSPENDED = "SUSPENDED"
    TIMEOUT = "TIMEOUT"


class Phase(str, enum.Enum):
    """Where a job stands, whatever Slurm's exact state."""

    #: queued, configuring its nodes, or held after a requeue: it will or may run
    PENDING = "pending"
    #: it holds its node (running, suspended, stopped, completing, ...)
    RUNNING = "running"
    #: it ended; Slurm forgets it after ``MinJobAge``
    ENDED = "ended"


S = SlurmState
#: the one definition: each state's phase
PHASES: Mapping[str, Phase] = MappingProxyType({
    **{s.value: Phase.PENDING for s in (S.PENDING, S.CONFIGURING, S.REQUEUED, S.REQUEUE_FED,
                                        S.REQUEUE_HOLD, S.RESV_DEL_HOLD, S.SPECIAL_EXIT)},
    **{s.value: Phase.RUNNING for s in (S.RUNNING, S.COMPLETING, S.SUSPENDED, S.STOPPED, S.SIGNALING,
                                        S.STAGE_OUT, S.RESIZING)},
    **{s.value: Phase.ENDED for s in (S.BOOT_FAIL, S.CANCELLED, S.COMPLETED, S.DEADLINE, S.FAILED,
                                      S.NODE_FAIL, S.OUT_OF_MEMORY, S.PREEMPTED, S.REVOKED, S.TIMEOUT)},
})
del S

PENDING_STATES = frozenset(s for s, p in PHASES.items() if p is Phase.PENDING)
RUNNING_STATES = frozenset(s for s, p in PHASES.items() if p is Phase.RUNNING)
#: a job in one of these still holds, or will hold, the data it was given
ACTIVE_STATES = PENDING_STATES | RUNNING_STATES
TERMINAL_STATES = frozenset(s for s, p in PHASES.items() if p is Phase.ENDED)


def state_name(text: str | None) -> str:
    """The state word of *text* (``"CANCELLED by 0"`` → ``"CANCELLED"``), "" for nothing (pure)."""
    words = (text or "").split()
    return words[0] if words else ""


def phase(state: str | None) -> Phase | None:
    """The phase of *state*; None for a state this vocabulary does not know, or none (pure)."""
    return PHASES.get(state_name(state))


def is_pending(state: str | None) -> bool:
    return phase(state) is Phase.PENDING


def is_running(state: str | None) -> bool:
    return phase(state) is Phase.RUNNING


def is_active(state: str | None) -> bool:
    """Pending or running: the job holds, or will hold, what it was given (unknown: no)."""
    return phase(state) in (Phase.PENDING, Phase.RUNNING)


def is_terminal(state: str | None) -> bool:
    """The job ended (unknown: no)."""
    return phase(state) is Phase.ENDED


def state_regex(states: Iterable[str]) -> str:
    """A pattern that matches a line starting with one of *states* as a whole word, for
    batchspawner's ``state_*_re`` traits (pure)."""
    return r"^(?:" + "|".join(re.escape(s) for s in sorted(states)) + r")(?=\s|$)"


# -- one job as squeue lists it -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class SlurmJob:
    """One line of the batched ``squeue`` (:data:`STATUS_FORMAT`)."""

    job_id: str
    user: str
    state: str
    #: the node that runs the batch script; "" while pending
    node: str = ""
    #: why it waits (``Priority``, ``Resources``, ...); "" when none
    reason: str = ""

    @property
    def phase(self) -> Phase | None:
        return phase(self.state)

    @property
    def active(self) -> bool:
        return is_active(self.state)

    @property
    def pending(self) -> bool:
        return is_pending(self.state)

    @property
    def running(self) -> bool:
        return is_running(self.state)

    @property
    def terminal(self) -> bool:
        return is_terminal(self.state)


# -- pure argument lists and parsers --------------------------------------------------------

#: the fields of the batched status query, in this order: id, user, state, batch host, reason
STATUS_FORMAT = "%i|%u|%T|%B|%r"
#: one job's "STATE NODE", the answer batchspawner's SlurmSpawner patterns read
STATE_NODE_FORMAT = "%T %B"

#: an id we ask Slurm about: a job, or one task of an array job
_JOB_ID_RE = re.compile(r"^[0-9]+(?:_[0-9]+)?$")
#: an id squeue prints: also a pending array's rest (``123_[5-9%2]``) or a het job component
_LISTED_ID_RE = re.compile(r"^[0-9]+(?:_(?:[0-9]+|\[[0-9,%:\-]+\]))?(?:\+[0-9]+)?$")
#: what squeue prints for "no node" or "no reason"
_NOTHING = frozenset({"", "(null)", "n/a", "None"})
#: squeue's answer for an id it does not know (any more): no job, not a failure
_UNKNOWN_ID_RE = re.compile(r"Invalid job id specified")


def is_job_id(text: str | None) -> bool:
    """Whether *text* is a Slurm job id we may pass to a command (``123``, ``123_4``) (pure)."""
    return bool(text) and bool(_JOB_ID_RE.match(str(text)))


def job_ids(ids: Iterable[str]) -> list[str]:
    """*ids* checked for a command: sorted, each once; :class:`InvalidRequest` names the first
    that is no Slurm job id (never an option, a list or a shell word) (pure)."""
    out = set()
    for raw in ids:
        text = str(raw).strip()
        if not is_job_id(text):
            raise InvalidRequest(f"not a Slurm job id: {str(raw)[:40]!r} (expected e.g. 123 or 123_4)")
        out.add(text)
    return sorted(out, key=lambda i: tuple(int(p) for p in i.split("_")))


def squeue_argv(ids: Iterable[str], fmt: str = STATUS_FORMAT) -> list[str]:
    """``squeue`` for *ids*, one call for all, no header, in *fmt* (pure)."""
    checked = job_ids(ids)
    if not checked:
        raise InvalidRequest("squeue needs at least one job id")
    return ["squeue", "-h", "-j", ",".join(checked), "-o", fmt]


def state_node_argv(job_id: str) -> list[str]:
    """One job's ``STATE NODE`` (``RUNNING node1``), what batchspawner's patterns read (pure)."""
    return squeue_argv([job_id], STATE_NODE_FORMAT)


def scancel_argv(ids: Iterable[str]) -> list[str]:
    checked = job_ids(ids)
    if not checked:
        raise InvalidRequest("scancel needs at least one job id")
    return ["scancel", *checked]


def sbatch_argv(*, run_as: str | None = None, sbatch: str = "sbatch", runuser: str = "runuser") -> list[str]:
    """``sbatch --parsable`` reading its script from stdin, as *run_as* through ``runuser``
    when given (the hub runs as root and submits as the user) (pure)."""
    argv = [sbatch, "--parsable"]
    if run_as:
        if run_as.startswith("-"):
            raise InvalidRequest(f"not a user name: {run_as[:40]!r}")
        argv = [runuser, "-u", run_as, "--", *argv]
    return argv


def sinfo_tmp_disk_argv(partition: str) -> list[str]:
    """The ``TmpDisk`` (MB) of *partition*'s nodes, one line per node group (pure)."""
    return ["sinfo", "-h", "-p", partition, "-o", "%d"]


def _field(text: str) -> str:
    text = text.strip()
    return "" if text in _NOTHING else text


def parse_squeue_line(line: str) -> SlurmJob | None:
    """One line of :data:`STATUS_FORMAT` (or its first three fields, ``id|user|state``) → the
    job, or None for a line that is not one (pure)."""
    parts = line.strip().split("|", 4)
    if len(parts) < 3:
        return None
    job_id, user, state = (p.strip() for p in parts[:3])
    state = state_name(state)
    if not (_LISTED_ID_RE.match(job_id) and user and state):
        return None
    node = _field(parts[3]) if len(parts) > 3 else ""
    reason = _field(parts[4]) if len(parts) > 4 else ""
    return SlurmJob(job_id, user, state, node, reason)


def parse_squeue(text: str) -> dict[str, SlurmJob]:
    """The batched ``squeue`` answer (:data:`STATUS_FORMAT`) → jobs by id as Slurm prints it
    (``123``, ``123_4``, ``123_[5-9]``); empty lines and lines that are no job are skipped;
    a state this vocabulary does not know is kept as printed (pure)."""
    jobs: dict[str, SlurmJob] = {}
    for line in text.splitlines():
        job = parse_squeue_line(line)
        if job is not None:
            jobs[job.job_id] = job
    return jobs


def squeue_result(result: subprocess.CompletedProcess) -> dict[str, SlurmJob]:
    """The jobs of a finished ``squeue`` (run with ``check=False``): an id Slurm does not know
    (any more) is no failure, only absent; any other non-zero exit raises
    :class:`CommandFailed` (controller down, ...) (pure)."""
    if result.returncode != 0 and not _UNKNOWN_ID_RE.search(result.stderr or ""):
        raise CommandFailed(result.args, result.returncode, result.stdout or "", result.stderr or "")
    return parse_squeue(result.stdout or "")


def parse_sbatch(stdout: str) -> str:
    """The job id of ``sbatch --parsable``'s answer (``123`` or ``123;cluster``; its last line),
    "" when there is none (pure)."""
    lines = [ln.strip() for ln in (stdout or "").splitlines() if ln.strip()]
    job_id = lines[-1].split(";")[0].strip() if lines else ""
    return job_id if is_job_id(job_id) else ""


def ping_argv() -> list[str]:
    """``scontrol ping``: asks each controller once and answers at once (``sinfo`` and
    ``sbatch`` retry a controller that is down for about 10 s)."""
    return ["scontrol", "ping"]


def parse_ping(stdout: str) -> bool:
    """Whether ``scontrol ping``'s answer says a controller is UP (pure)."""
    return bool(re.search(r"\bis UP\b", stdout or ""))


def parse_tmp_disk(text: str) -> int | None:
    """Bytes of the smallest ``TmpDisk`` in ``sinfo -h -o %d`` output (MB per line, Slurm's MB
    being MiB; a ``+`` marks a range's lower bound); None when no node declares one (pure)."""
    sizes = []
    for line in text.split():
        value = line.strip().rstrip("+")
        if value.isdigit() and int(value) > 0:
            sizes.append(int(value))
    return min(sizes) * 2**20 if sizes else None


# -- the calls, through procs ---------------------------------------------------------------

def _askable(ids: Iterable[str]) -> list[str]:
    """The ids worth asking: a text that is no job id cannot be listed (absent from the answer)."""
    return job_ids(i for i in {str(i).strip() for i in ids if i is not None} if is_job_id(i))


def status(ids: Iterable[str], *, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, SlurmJob]:
    """What Slurm lists now for *ids*, in one ``squeue`` call; a job it forgot (or a text that is
    no job id) is absent. Raises :class:`CommandFailed` when ``squeue`` fails otherwise."""
    asked = _askable(ids)
    if not asked:
        return {}
    return squeue_result(procs.run(squeue_argv(asked), timeout=timeout, check=False))


async def astatus(ids: Iterable[str], *, timeout: float | None = DEFAULT_TIMEOUT) -> dict[str, SlurmJob]:
    """:func:`status` for code on an event loop."""
    asked = _askable(ids)
    if not asked:
        return {}
    return squeue_result(await procs.arun(squeue_argv(asked), timeout=timeout, check=False))


def cancel(ids: Iterable[str], *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """``scancel`` *ids* (one call). Raises :class:`CommandFailed` (e.g. a job already gone)."""
    procs.run(scancel_argv(ids), timeout=timeout)


async def acancel(ids: Iterable[str], *, timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """:func:`cancel` for code on an event loop."""
    await procs.arun(scancel_argv(ids), timeout=timeout)


async def asubmit(script: str, *, run_as: str | None = None, env: Mapping[str, str] | None = None,
                  cwd: str | None = None, timeout: float | None = None) -> str:
    """Submit *script* (on stdin, never as an argument) with ``sbatch --parsable``, as *run_as*
    when given; the job id, "" when ``sbatch`` printed none. Raises :class:`CommandFailed`
    when Slurm refuses the job (its message in ``stderr``)."""
    argv = sbatch_argv(run_as=run_as, sbatch=procs.which("sbatch") or "sbatch",
                       runuser=procs.which("runuser") or "/usr/sbin/runuser")
    done = await procs.arun(argv, input=script.encode(), env=env, cwd=cwd, timeout=timeout)
    return parse_sbatch(done.stdout)


async def astate_node(job_id: str, *, timeout: float | None = DEFAULT_TIMEOUT) -> str:
    """One job's ``STATE NODE`` line as ``squeue`` prints it ("" when not listed); raises
    :class:`CommandFailed` with squeue's message (``slurm_load_jobs error: ...``), which
    batchspawner's ``state_unknown_re`` reads."""
    return (await procs.arun(state_node_argv(job_id), timeout=timeout)).stdout.strip()


def controller_up(*, timeout: float | None = 10) -> bool:
    """Whether Slurm's controller answers now (``scontrol ping``); False when it is down or the
    command fails."""
    try:
        done = procs.run(ping_argv(), timeout=timeout, check=False)
    except CommandFailed:
        return False
    return parse_ping(done.stdout)


def tmp_disk(partition: str, *, timeout: float | None = 20) -> int | None:
    """The smallest node-local scratch (``TmpDisk``) of *partition*'s nodes in bytes; None when
    no node declares one. Raises :class:`CommandFailed` when ``sinfo`` fails."""
    return parse_tmp_disk(procs.run(sinfo_tmp_disk_argv(partition), timeout=timeout).stdout)
