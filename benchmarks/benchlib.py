"""Shared parts of the benchmark scripts (not a benchmark itself: ``run_all.py`` runs ``bench_*.py``).

* :func:`alternate` runs ours and the plain alternatives side by side, in an order that
  rotates every round (ours first, then plain first, ...), so that a machine that gets
  slower or faster during the run weighs on both sides alike;
* :class:`Stats` holds one side's times and prints the **median** and the spread
  (min–max); :func:`ratio` is the ratio of medians;
* :func:`build_project` writes random files plus their catalog into a devxnat data
  directory (through devxnat's Store, as a site's XNAT would hold them) and
  :class:`DevXnat` starts devxnat on a free port of 127.0.0.1;
* :func:`curl_config` writes a 0600 curl config with the credentials (never on a
  command line, where ``ps`` shows them).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
BENCH_USER, BENCH_PASSWORD = "bench", "bench-pass"


def parse_size(text: str) -> int:
    """``"1GB"`` → 10**9, ``"2GiB"`` → 2 * 2**30 (argparse type)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([A-Za-z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 1GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` value in MB (``VmHWM`` = peak RSS, ``VmRSS`` = now)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) // 1024
    return -1


# --------------------------------------------------------------------------- statistics


@dataclasses.dataclass
class Stats:
    """One side's seconds over the rounds, and the extra facts each round reported."""

    name: str
    seconds: list[float] = dataclasses.field(default_factory=list)
    facts: list[dict] = dataclasses.field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def spread(self, unit: str = "s") -> str:
        if unit == "ms":
            return f"{self.median * 1e3:.0f} ms ({min(self.seconds) * 1e3:.0f}–{max(self.seconds) * 1e3:.0f})"
        return f"{self.median:.2f} s ({min(self.seconds):.2f}–{max(self.seconds):.2f})"

    def rate(self, mb: float) -> str:
        """Throughput at the median, and its spread (the fastest and the slowest round)."""
        return (f"{mb / self.median:6.0f} MB/s ({mb / max(self.seconds):.0f}–{mb / min(self.seconds):.0f}), "
                f"{self.spread()}")


def ratio(plain: Stats, ours: Stats) -> float:
    """plain's median time / ours: > 1 means ours is faster (a throughput ratio)."""
    return plain.median / ours.median


def alternate(rounds: int, runners: dict[str, Callable[[], float | dict]],
              after: Callable[[str, float | dict], None] | None = None, warmup: int = 0) -> dict[str, Stats]:
    """Run every runner once per round, the order rotated by one each round.

    A runner returns its seconds, or a dict with ``seconds`` and other facts (e.g. the
    peak RSS of a child process); *after(name, result)* runs untimed after each call
    (cleanup of an output). *warmup* rounds run first and are not counted. Every call starts
    after an untimed ``sync``, so that no side pays for the writeback of the files another
    side left dirty in the page cache."""
    names = list(runners)
    out = {n: Stats(n) for n in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            os.sync()
            result = runners[name]()
            facts = result if isinstance(result, dict) else {"seconds": result}
            if r >= warmup:
                out[name].seconds.append(facts["seconds"])
                out[name].facts.append(facts)
            if after:
                after(name, result)
    return out


def timed_shell(script: str, **env: str) -> float:
    """Seconds of ``bash -c SCRIPT`` (with ``set -euo pipefail``), after a ``sync``."""
    os.sync()
    t = time.perf_counter()
    subprocess.run(["bash", "-c", "set -euo pipefail; " + script], check=True, env={**os.environ, **env})
    return time.perf_counter() - t


def machine() -> str:
    return f"{os.cpu_count()} CPUs, python {sys.version.split()[0]}"


# --------------------------------------------------------------------------- devxnat


def random_file(path: Path, size: int, block: int = 1 << 20) -> str:
    """Write *size* random bytes; return their md5 (XNAT's digest)."""
    digest = hashlib.md5()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(block, left))
            digest.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def build_project(data: Path, project: str, *, files: int, total: int, experiments: int = 1,
                  files_per_scan: int = 50, link_from: str | None = None) -> list[str]:
    """Add *project* to the devxnat data directory *data*: *files* random files of *total*
    bytes together, spread over *experiments* sessions, scans of *files_per_scan* files
    (one resource ``DATA`` each). The user ``bench`` is a member (created when missing).

    *link_from*: the files are hard links of that project's (same layout; no new bytes on
    disk) — for a larger dataset whose reading costs the same per byte.
    Returns the session labels."""
    from devxnat import open_data_dir
    from devxnat.archive import resource_dir

    st, archive = open_data_dir(data)
    try:
        if st.user(BENCH_USER) is None:
            st.add_user(BENCH_USER, BENCH_PASSWORD)
        st.add_project(project, project)
        st.set_member(project, BENCH_USER, "Members")
        sub = st.add_subject(project, f"{project}_S1")
        per_exp = -(-files // experiments)
        labels, n = [], 0
        for e in range(experiments):
            label = f"{project}_E{e:04d}"
            eid = st.add_experiment(project, sub, label, "xnat:mrSessionData", date="2025-01-01")
            labels.append(label)
            count = min(per_exp, files - n)
            for s in range(-(-count // files_per_scan)):
                scan = str(s + 1)
                st.add_scan(eid, scan, "xnat:mrScanData", type="T1w")
                d = resource_dir(archive, project, label, scan, "DATA")
                d.mkdir(parents=True)
                entries = []
                for _ in range(min(files_per_scan, count - s * files_per_scan)):
                    name = f"f{n:05d}.bin"
                    size = total // files + (total % files if n == files - 1 else 0)
                    if link_from:
                        src = resource_dir(archive, link_from, label.replace(project, link_from, 1), scan,
                                           "DATA") / name
                        os.link(src, d / name)
                        md5 = _md5_of(src)
                    else:
                        md5 = random_file(d / name, size)
                    entries.append((name, size, md5))
                    n += 1
                st.add_resource(eid, scan, "DATA", format="BIN", files=entries)
            if n >= files:
                break
    finally:
        st.close()
    return labels


def _md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


class DevXnat:
    """devxnat on a free port of 127.0.0.1 over the data directory *data*; its log in *log*."""

    def __init__(self, data: Path, log: Path):
        self.log = open(log, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "devxnat", "--data", str(data), "--port", "0",
                                      "--log-level", "WARNING"], stdout=subprocess.PIPE, stderr=self.log,
                                     cwd=REPO)
        line = self.proc.stdout.readline().decode()
        if "listening on " not in line:
            self.stop()
            raise SystemExit(f"devxnat did not start: {line!r}; see {log}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def curl_config(path: Path, lines: list[str] = ()) -> Path:
    """A 0600 curl config holding the bench user's credentials (and *lines*)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f'user = "{BENCH_USER}:{BENCH_PASSWORD}"\n')
        for line in lines:
            f.write(line + "\n")
    return path
