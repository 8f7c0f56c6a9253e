"""Live staging progress (xnat_bridge.offload.progress): rate over a sliding window, time left,
the tracker's bounded sample rate, and the REST shape — pure, no staging."""

from __future__ import annotations

import pytest

from xnat_bridge.offload.progress import (
    Sample,
    StagingTracker,
    eta_seconds,
    progress_json,
    window_rate,
)


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_rate_needs_two_samples_and_time_between_them():
    assert window_rate([], 1.0) is None
    assert window_rate([Sample(1.0, 10)], 1.0) is None
    assert window_rate([Sample(1.0, 10), Sample(1.0, 20)], 1.0) is None
    assert window_rate([Sample(0.0, 0), Sample(2.0, 200)], 2.0) == 100.0


def test_rate_counts_only_the_window_not_the_whole_staging():
    # 10 s at 1 MB/s, then 5 s at 10 MB/s: over a 5 s window the rate is the recent one
    samples = [Sample(float(t), t * 1_000_000) for t in range(11)]
    samples += [Sample(10.0 + t, 10_000_000 + t * 10_000_000) for t in range(1, 6)]
    assert window_rate(samples, 15.0, window=5.0) == pytest.approx(10_000_000)
    # the average since the start would be 4 MB/s: a different answer, so the window matters
    assert window_rate(samples, 15.0, window=100.0) == pytest.approx(60_000_000 / 15)


def test_rate_keeps_a_sample_before_the_window_when_ticks_are_sparse():
    samples = [Sample(0.0, 0), Sample(20.0, 2000)]
    assert window_rate(samples, 20.0, window=5.0) == 100.0


def test_eta():
    assert eta_seconds(50, 150, 10.0) == 10.0
    assert eta_seconds(150, 150, None) == 0.0
    assert eta_seconds(0, 150, None) is None
    assert eta_seconds(0, 150, 0.0) is None


def test_progress_json_shape():
    assert progress_json(1, 10, 0, 3, 12.345, 0.7291) == {
        "phase": "staging", "bytes_done": 1, "bytes_total": 10, "files_done": 0, "files_total": 3,
        "rate": 12.3, "eta_s": 0.7}
    assert progress_json(0, 10, 0, 3, None, None)["rate"] is None


def test_tracker_before_start_says_nothing_then_counts_and_estimates():
    clock = Clock()
    tr = StagingTracker(clock=clock, window=5.0, min_interval=0.25)
    assert tr.snapshot() is None
    tr.start(1000, 4)
    snap = tr.snapshot()
    assert snap["bytes_done"] == 0 and snap["bytes_total"] == 1000 and snap["files_total"] == 4
    assert snap["rate"] is None and snap["eta_s"] is None
    for i in range(1, 5):
        clock.t += 1.0
        tr.update(100 * i, i - 1, 1000, 4)
    snap = tr.snapshot()
    assert snap["bytes_done"] == 400 and snap["files_done"] == 3
    assert snap["rate"] == pytest.approx(100.0)
    assert snap["eta_s"] == pytest.approx(6.0)


def test_tracker_keeps_at_most_four_samples_a_second_but_always_the_latest_counts():
    clock = Clock()
    tr = StagingTracker(clock=clock, window=5.0, min_interval=0.25)
    tr.start(10_000, 100)
    for i in range(1, 101):  # 100 ticks in 1 s
        clock.t += 0.01
        tr.update(i * 10, i, 10_000, 100)
    assert len(tr._samples) <= 5
    snap = tr.snapshot()
    assert snap["bytes_done"] == 1000 and snap["files_done"] == 100  # never behind the ticks


def test_tracker_history_is_bounded_over_a_long_staging():
    clock = Clock()
    tr = StagingTracker(clock=clock, window=5.0, min_interval=0.25)
    tr.start(10**12, 10)
    for i in range(4000):  # 1000 s at 4 ticks/s
        clock.t += 0.25
        tr.update(i * 1000, 0, 10**12, 10)
    assert len(tr._samples) <= 2 * 5.0 / 0.25 + 3


def test_a_stalled_stream_shows_a_falling_rate():
    clock = Clock()
    tr = StagingTracker(clock=clock, window=5.0, min_interval=0.25)
    tr.start(1000, 1)
    clock.t += 1.0
    tr.update(500, 0, 1000, 1)
    fast = tr.snapshot()["rate"]
    clock.t += 9.0  # nothing for 9 s
    slow = tr.snapshot()["rate"]
    assert fast == pytest.approx(500.0) and slow < fast / 5


def test_progress_text_matches_the_labs_words():
    from xnat_bridge.offload.progress import progress_percent, progress_text

    mib = 2**20
    p = progress_json(412 * mib, 1024 * mib, 37, 120, 85 * mib, 7.2)
    assert progress_text(p) == "Staging 412 MiB / 1.0 GiB · 37/120 files · 85 MiB/s · 8s left"
    assert progress_percent(p) == 40
    p = progress_json(0, 10, 0, 3, None, None)
    assert progress_text(p) == "Staging 0 B / 10 B · 0/3 files"
    assert progress_percent(progress_json(0, 0, 1, 4, None, None)) == 25
    assert progress_text(progress_json(1, 10, 0, 1, 1.0, 185)).endswith("3m 05s left")


def test_before_the_first_byte_the_rate_is_unknown_not_zero():
    clock = Clock()
    tr = StagingTracker(clock=clock)
    tr.start(1000, 2)
    clock.t += 2.0  # the readers are still opening files
    snap = tr.snapshot()
    assert snap["rate"] is None and snap["eta_s"] is None


def test_no_time_left_from_the_first_few_bytes():
    # 327 bytes of 191 MiB at 677 B/s would promise 3 days: not shown until 1 % is done
    assert eta_seconds(327, 191 * 2**20, 677.0) is None
    assert eta_seconds(2 * 2**20, 191 * 2**20, 2 * 2**20) == pytest.approx(94.5)
