"""Admin limits for offloaded jobs and the resources a researcher asks for (pure).

:class:`OffloadPolicy` is the one model of the site's limits: the hub builds it
from the ``offload:`` section of the profiles file, and the spawner hands it to
the user's server as JSON in the environment variable ``XNAT_HPC_OFFLOAD``
(written and read by :mod:`xnat_bridge.server_env`)::

    XNAT_HPC_OFFLOAD='{"partition": "secure", "max_cpus": 16, "max_memory": "64G",
                       "max_gpus": 1, "max_walltime": "1-00:00:00", "exclusive": true,
                       "staging_dir": "/shared/xnat-hpc/staging", "account": "med"}'

``node_scratch`` (a size) is the node-local scratch a job may fill on the
partition's nodes; without it the server asks Slurm (``sinfo -h -p PART -o %d``,
the nodes' ``TmpDisk``). :meth:`OffloadPolicy.check_scratch` refuses a dataset
that does not fit, before anything is staged: a job needs the dataset's bytes
plus a reserve for its results and temporary files (:func:`scratch_needed`:
10 % of the dataset, at least 512 MiB). ``staging_threads`` and
``staging_buffer`` tune staging: files read concurrently ahead of the
encryption, and the memory their data may hold.

Memory is ``int`` bytes or a string with a binary unit (``"512M"``, ``"32G"``,
``"1T"``; ``K``/``M``/``G``/``T`` mean KiB/MiB/GiB/TiB as in Slurm); walltime
is ``int`` seconds or ``"HH:MM:SS"`` / ``"D-HH:MM:SS"``. :meth:`OffloadPolicy.check`
reports *every* violation of a request in one :class:`InvalidRequest`, with
the allowed maximum, so a person can fix all of them at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping

from .. import units
from ..errors import InvalidRequest

ENV = "XNAT_HPC_OFFLOAD"
DEFAULT_STAGING_DIR = "/var/lib/xnat-hpc-hub/staging"
_BYTES_SUFFIX = re.compile(r"(?<=[KMGT])I?B$", re.IGNORECASE)  # "4GiB", "4GB" -> "4G"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def parse_memory(value, what: str = "memory") -> int:
    """Bytes from ``int`` bytes, or a size such as ``"4G"``/``"512M"``/``"4GiB"`` (binary units)."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what} must be bytes (an integer) or a size such as '4G', not {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    else:
        text = _BYTES_SUFFIX.sub("", value.strip()) if isinstance(value, str) else ""
        try:
            n = units.parse_memory(text.replace(" ", ""))
        except ValueError:
            raise InvalidRequest(f"{what} {value!r} is not a size: use bytes (an integer) or e.g. "
                                 "'512M', '4G', '1T'", item=what) from None
    if n <= 0:
        raise InvalidRequest(f"{what} must be positive, not {value!r}", item=what)
    return n


def parse_walltime(value, what: str = "walltime") -> int:
    """Seconds from ``int`` seconds or ``"HH:MM:SS"`` / ``"D-HH:MM:SS"``."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{what} must be seconds or 'HH:MM:SS', not {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value)
    else:
        try:
            n = units.parse_walltime(value) if isinstance(value, str) else 0
        except ValueError:
            n = 0
        if not n:
            raise InvalidRequest(f"{what} {value!r} is not a duration: use seconds (an integer), "
                                 "'HH:MM:SS' or 'D-HH:MM:SS'", item=what) from None
    if n <= 0:
        raise InvalidRequest(f"{what} must be positive, not {value!r}", item=what)
    return n


def format_walltime(seconds: int) -> str:
    """``"HH:MM:SS"`` below a day, ``"D-HH:MM:SS"`` from a day on, as Slurm writes it."""
    return units.format_walltime(seconds, pad_hours=True)


format_memory = units.format_memory


def _count(value, what: str, minimum: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{what} must be a whole number, not {value!r}", item=what)
    if value < minimum:
        raise InvalidRequest(f"{what} must be at least {minimum}, not {value}", item=what)
    return value


def _name(value, what: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidRequest(f"{what} {value!r} is not a valid Slurm name (letters, digits, "
                             "'_', '.', '-')", item=what)
    return value


#: the reserve for results and temporary files on the node: 10 % of the dataset, at least this
SCRATCH_RESERVE_MIN = 512 * 2**20
_SIZE_FIELDS = ("max_memory", "default_memory", "node_scratch", "staging_buffer")


def size_text(n: int) -> str:
    """Bytes for a message: ``"3.1 MiB"``, ``"258.0 GiB"`` (binary units, as Slurm's MB)."""
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n / factor:.1f} {unit}"
    return f"{n} bytes"


def scratch_needed(data_bytes: int) -> int:
    """Node-local scratch a job on *data_bytes* of data needs: the decrypted dataset plus a
    reserve for the script's results and temporary files (10 %, at least 512 MiB)."""
    return data_bytes + max(data_bytes // 10, SCRATCH_RESERVE_MIN)


@dataclasses.dataclass(frozen=True)
class ResourceRequest:
    """What one job asks for: memory in bytes, walltime in seconds."""

    partition: str
    cpus: int
    memory: int
    gpus: int
    walltime: int
    account: str | None = None
    qos: str | None = None

    @classmethod
    def parse(cls, policy: OffloadPolicy, *, partition=None, cpus=None, mem=None, gpus=None,
              walltime=None, account=None, qos=None) -> ResourceRequest:
        """Validate types and units; fill what is not given from *policy*'s defaults."""
        return cls(
            partition=_name(partition, "partition") or policy.partition,
            cpus=_count(policy.default_cpus if cpus is None else cpus, "cpus", 1),
            memory=parse_memory(policy.default_memory if mem is None else mem, "mem"),
            gpus=_count(policy.default_gpus if gpus is None else gpus, "gpus", 0),
            walltime=parse_walltime(policy.default_walltime if walltime is None else walltime),
            account=_name(account, "account") or policy.account,
            qos=_name(qos, "qos") or policy.qos,
        )

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping) -> ResourceRequest:
        return cls(**{f.name: doc.get(f.name) for f in dataclasses.fields(cls)})


@dataclasses.dataclass(frozen=True)
class OffloadPolicy:
    """The site's limits (None = no limit); the spawner sets them in ``XNAT_HPC_OFFLOAD``.

    Sizes are bytes and durations seconds; the constructor also takes ``"32G"`` and
    ``"1:00:00"``. The profiles file sets the first seven fields (``offload:``).
    """

    partition: str = "secure"
    max_cpus: int | None = None
    max_memory: int | None = None  # bytes
    max_gpus: int | None = None
    max_walltime: int | None = None  # seconds
    exclusive: bool = True
    staging_dir: str = DEFAULT_STAGING_DIR
    account: str | None = None
    qos: str | None = None
    default_cpus: int = 1
    default_memory: int = 2 * 1024**3
    default_gpus: int = 0
    default_walltime: int = 3600
    #: bytes of node-local scratch per job on the partition's nodes; None = ask Slurm (TmpDisk)
    node_scratch: int | None = None
    #: files read concurrently ahead of the encryption while staging
    staging_threads: int = 8
    #: bytes of file data staging may hold in memory (the readers' buffers)
    staging_buffer: int = 64 * 2**20

    def __post_init__(self):
        """Accept ``"32G"`` / ``"1:00:00"`` in the constructor too (normalised to bytes / seconds)."""
        for key in _SIZE_FIELDS:
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, parse_memory(value, key))
        for key in ("max_walltime", "default_walltime"):
            value = getattr(self, key)
            if isinstance(value, str):
                object.__setattr__(self, key, parse_walltime(value, key))

    @classmethod
    def from_json(cls, doc: Mapping) -> OffloadPolicy:
        """From a mapping with the field names; sizes and durations in either notation."""
        if not isinstance(doc, Mapping):
            raise InvalidRequest(f"{ENV} must be a JSON object of offload limits")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(doc) - known)
        if unknown:
            raise InvalidRequest(f"{ENV}: unknown keys {unknown}; known: {sorted(known)}")
        kw: dict = {}
        for key, value in doc.items():
            if value is None:
                kw[key] = None
            elif key in _SIZE_FIELDS:
                kw[key] = parse_memory(value, key)
            elif key in ("max_walltime", "default_walltime"):
                kw[key] = parse_walltime(value, key)
            elif key in ("max_cpus", "max_gpus", "default_cpus", "default_gpus", "staging_threads"):
                kw[key] = _count(value, key, 0 if "gpus" in key else 1)
            elif key == "exclusive":
                if not isinstance(value, bool):
                    raise InvalidRequest(f"{ENV}: exclusive must be true or false, not {value!r}")
                kw[key] = value
            elif key == "staging_dir":
                if not isinstance(value, str) or not os.path.isabs(value):
                    raise InvalidRequest(f"{ENV}: staging_dir must be an absolute path, not {value!r}")
                kw[key] = value
            else:
                kw[key] = _name(value, key)
        if kw.get("partition", "x") is None:
            raise InvalidRequest(f"{ENV}: partition must name a Slurm partition")
        return cls(**kw)

    def to_json(self) -> dict:
        """For ``GET /xnat-hpc/api/limits``: memory in bytes, walltime in seconds."""
        return dataclasses.asdict(self)

    def check(self, request: ResourceRequest) -> ResourceRequest:
        """Return *request* if it is within the limits, else InvalidRequest listing every violation."""
        problems = []
        if request.partition != self.partition:
            problems.append(f"partition {request.partition!r} is not allowed (only {self.partition!r})")
        for what, value, limit, fmt in (
            ("cpus", request.cpus, self.max_cpus, str),
            ("mem", request.memory, self.max_memory, format_memory),
            ("gpus", request.gpus, self.max_gpus, str),
            ("walltime", request.walltime, self.max_walltime, format_walltime),
        ):
            if limit is not None and value > limit:
                problems.append(f"{what} {fmt(value)} is above the maximum {fmt(limit)}")
        for what, value, fixed in (("account", request.account, self.account),
                                   ("qos", request.qos, self.qos)):
            if fixed is not None and value != fixed:
                problems.append(f"{what} {value!r} is not allowed (only {fixed!r})")
        if problems:
            raise InvalidRequest("the requested resources are outside the site's limits: "
                                 + "; ".join(problems))
        return request

    def check_scratch(self, dataset: str, data_bytes: int, slurm_tmp_disk: int | None) -> int | None:
        """Refuse (InvalidRequest, with the sizes) a dataset too large for the node-local scratch.

        The scratch is :attr:`node_scratch` when the site set it, else *slurm_tmp_disk*
        (bytes, the smallest ``TmpDisk`` of the partition's nodes; None or 0 = unknown:
        nothing to check). Returns the scratch size that was checked against, or None.
        """
        scratch, source = ((self.node_scratch, "the site's offload.node_scratch")
                           if self.node_scratch is not None
                           else (slurm_tmp_disk or None, "Slurm's TmpDisk of its nodes"))
        if scratch is None:
            return None
        need = scratch_needed(data_bytes)
        if need > scratch:
            reserve = need - data_bytes
            raise InvalidRequest(
                f"dataset {dataset} is too large for the node-local scratch of partition "
                f"{self.partition!r}: a job needs about {size_text(need)} "
                f"({size_text(data_bytes)} of data plus {size_text(reserve)} for "
                f"results and temporary files), the nodes have {size_text(scratch)} "
                f"({source}); train on a smaller dataset (fewer subjects or resources) or ask an "
                "administrator for a partition with more node-local scratch", item=dataset)
        return scratch

    def violations(self, *, cpus: int = 1, memory: int | None = None, gpus: int = 0,
                   walltime: int | None = None) -> list[str]:
        """What a job of these sizes exceeds, one sentence each (empty when it fits).

        The admin-side form of :meth:`check` (keyword sizes in bytes and seconds, e.g.
        for checking a profiles file); ``None`` = not asked.
        """
        asks = (("cpus", cpus, self.max_cpus, str),
                ("memory", memory, self.max_memory, units.format_memory),
                ("gpus", gpus, self.max_gpus, str),
                ("walltime", walltime, self.max_walltime, units.format_walltime))
        return [f"{name} {fmt(asked)} is above the limit {fmt(limit)} of partition "
                f"{self.partition!r}; ask for at most {fmt(limit)}"
                for name, asked, limit, fmt in asks
                if limit is not None and asked is not None and asked > limit]

    def check_request(self, **asked) -> None:
        """Raise :class:`InvalidRequest` naming every limit :meth:`violations` finds."""
        problems = self.violations(**asked)
        if problems:
            raise InvalidRequest("; ".join(problems))
