"""Live staging progress of a job, in memory only: bytes, files, rate and time left.

While a job's bundle is built (between submit and the Slurm submission) the
staging calls back with ``(bytes_done, files_done, bytes_total, files_total)``
(:class:`~xnat_bridge.staging.common.Progress`, at most every 0.2 s). A
:class:`StagingTracker` keeps the latest numbers and a short history of samples,
so that the REST API (``GET jobs``, ``GET jobs/{id}``), the lab and the widgets
can show "Staging 412 MiB / 1.0 GiB · 37/120 files · 85 MiB/s · 7s left". It is
never written to the job registry: the registry stays a record of states, not a
stream of ticks (a SQLite write per tick would cost more than it tells).

The rate and the time left are pure functions of the samples
(:func:`window_rate`, :func:`eta_seconds`), unit-tested without staging.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

#: seconds of samples the rate is computed over (a sliding window)
RATE_WINDOW = 5.0
#: the tracker keeps at most one sample per this many seconds (≤ 4 updates a second)
MIN_INTERVAL = 0.25
#: no time left is estimated before this fraction of the bytes is done
MIN_ETA_FRACTION = 0.01


@dataclasses.dataclass(frozen=True)
class Sample:
    """Bytes done at monotonic time *t* (seconds)."""

    t: float
    bytes_done: int


def window_rate(samples: Sequence[Sample], now: float, window: float = RATE_WINDOW) -> float | None:
    """Bytes per second over the last *window* seconds before *now*, or None when unknown.

    Uses the oldest sample inside the window and the newest sample (the samples
    are in time order); falls back to the sample just before the window so that
    a slow tick rate still gives a rate. None with fewer than two samples or no
    time between them.
    """
    if len(samples) < 2:
        return None
    newest = samples[-1]
    start = next((s for s in samples if s.t >= now - window), newest)
    if start is newest:  # nothing older inside the window: the sample just before it
        start = samples[-2]
    dt = newest.t - start.t
    if dt <= 0:
        return None
    return max(0.0, (newest.bytes_done - start.bytes_done) / dt)


def eta_seconds(bytes_done: int, bytes_total: int, rate: float | None,
                min_fraction: float = MIN_ETA_FRACTION) -> float | None:
    """Seconds left at *rate* bytes/s: 0 when done; None when the rate is unknown or zero, or
    before *min_fraction* of the bytes are done (the first ticks, while the readers open their
    files, would promise days)."""
    remaining = max(0, bytes_total - bytes_done)
    if remaining == 0:
        return 0.0
    if rate is None or rate <= 0 or bytes_done < min_fraction * bytes_total:
        return None
    return remaining / rate


def progress_json(bytes_done: int, bytes_total: int, files_done: int, files_total: int,
                  rate: float | None, eta: float | None) -> dict:
    """The ``progress`` object of a job in the REST API (``openapi.yaml``: ``StagingProgress``)."""
    return {"phase": "staging", "bytes_done": int(bytes_done), "bytes_total": int(bytes_total),
            "files_done": int(files_done), "files_total": int(files_total),
            "rate": None if rate is None else round(rate, 1),
            "eta_s": None if eta is None else round(eta, 1)}


class StagingTracker:
    """The staging progress of one job (thread-safe): :meth:`update` from the staging thread,
    :meth:`snapshot` from the server's handlers. *clock* is a monotonic clock (tests pass one)."""

    def __init__(self, *, window: float = RATE_WINDOW, min_interval: float = MIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic):
        self.window, self.min_interval, self.clock = window, min_interval, clock
        self._lock = threading.Lock()
        self._samples: deque[Sample] = deque()
        self._counts = (0, 0, 0, 0)
        self._started = False

    def start(self, bytes_total: int, files_total: int) -> None:
        """Staging begins: nothing done yet of *bytes_total* in *files_total* files."""
        now = self.clock()
        with self._lock:
            self._samples = deque([Sample(now, 0)])
            self._counts = (0, int(bytes_total), 0, int(files_total))
            self._started = True

    def update(self, bytes_done: int, files_done: int, bytes_total: int, files_total: int) -> None:
        """A staging tick (:data:`~xnat_bridge.staging.common.ProgressCallback` order)."""
        now = self.clock()
        with self._lock:
            self._counts = (int(bytes_done), int(bytes_total), int(files_done), int(files_total))
            self._started = True
            if self._samples and now - self._samples[-1].t < self.min_interval:
                return  # counts are current; the rate's history keeps ≤ 1/min_interval samples a second
            self._samples.append(Sample(now, int(bytes_done)))
            while len(self._samples) > 2 and self._samples[1].t < now - 2 * self.window:
                self._samples.popleft()

    def snapshot(self) -> dict | None:
        """The progress as the REST API shows it, or None before staging began."""
        now = self.clock()
        with self._lock:
            if not self._started:
                return None
            done, total, files_done, files_total = self._counts
            samples = list(self._samples)
        if now > samples[-1].t:  # a stalled stream's rate falls: nothing more arrived until now
            samples.append(Sample(now, done))
        rate = window_rate(samples, now, self.window) if done > 0 else None  # no byte yet: unknown, not 0
        return progress_json(done, total, files_done, files_total, rate, eta_seconds(done, total, rate))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else (f"{n:.1f} {unit}" if n < 10 else f"{n:.0f} {unit}")
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _left(seconds: float) -> str:
    s = int(-(-seconds // 1))  # ceil
    if seconds < 1:
        return "<1s left"
    if s < 60:
        return f"{s}s left"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s left"
    return f"{s // 3600}h {s // 60 % 60:02d}m left"


def progress_text(p: dict) -> str:
    """``"Staging 412 MiB / 1.0 GiB · 37/120 files · 85 MiB/s · 8s left"`` (the lab's words; pure)."""
    parts = [f"Staging {_size(p['bytes_done'])} / {_size(p['bytes_total'])}",
             f"{p['files_done']}/{p['files_total']} files"]
    if p.get("rate") is not None:
        parts.append(f"{_size(p['rate'])}/s")
    if p.get("eta_s") is not None:
        parts.append(_left(p["eta_s"]))
    return " · ".join(parts)


def progress_percent(p: dict) -> int:
    """Percent done, 0..100, by bytes (by files for a dataset of empty files)."""
    done, total = ((p["bytes_done"], p["bytes_total"]) if p["bytes_total"] > 0
                   else (p["files_done"], p["files_total"]))
    return max(0, min(100, 100 * done // total)) if total > 0 else 0
