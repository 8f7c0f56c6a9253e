"""Memory sizes and walltimes, as Slurm and JupyterHub write them (pure).

One implementation for the admin's profiles file (:mod:`hub_ext.profile_schema`,
strict text only) and the offload requests (:mod:`xnat_bridge.offload.policy`,
which also takes integers and ``GiB``-style suffixes on top of these).
Sizes use binary units (K, M, G, T = powers of 1024); walltimes are
``HH:MM:SS`` or ``D-HH:MM:SS``.
"""

from __future__ import annotations

import re

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_MEMORY_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT])$", re.IGNORECASE)
_WALLTIME_RE = re.compile(r"^(?:(\d+)-)?(\d+):([0-5]\d):([0-5]\d)$")


def parse_memory(text: str) -> int:
    """``"4G"`` → 4294967296; ValueError saying what to write otherwise."""
    match = _MEMORY_RE.match(text.strip())
    size = int(float(match.group(1)) * UNITS[match.group(2).upper()]) if match else 0
    if size <= 0:
        raise ValueError(f"{text!r} is not a memory size; write e.g. 4G or 512M")
    return size


def parse_walltime(text: str) -> int:
    """``"8:00:00"`` → 28800, ``"1-12:00:00"`` → 129600; ValueError otherwise."""
    match = _WALLTIME_RE.match(text.strip())
    if match:
        days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
        total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
        if total > 0 and (match.group(1) is None or hours < 24):
            return total
    raise ValueError(f"{text!r} is not a walltime; write HH:MM:SS (e.g. 8:00:00) "
                     "or D-HH:MM:SS (e.g. 1-12:00:00)")


def format_memory(size: int | None) -> str:
    """Bytes → the largest exact unit: 4294967296 → ``4G`` (rounded up to K otherwise)."""
    if size is None:
        return "unset"
    for unit in "TGMK":
        if size % UNITS[unit] == 0:
            return f"{size // UNITS[unit]}{unit}"
    return f"{-(-size // UNITS['K'])}K"


def format_walltime(seconds: int | None, *, pad_hours: bool = False) -> str:
    """Seconds → ``8:00:00`` (``08:00:00`` with *pad_hours*), ``1-12:00:00`` from a day on."""
    if seconds is None:
        return "unset"
    days, rest = divmod(int(seconds), 86400)
    hours = f"{rest // 3600:02d}" if days or pad_hours else str(rest // 3600)
    hms = f"{hours}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{hms}" if days else hms
