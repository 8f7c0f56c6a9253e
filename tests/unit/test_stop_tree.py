"""``devstack.demo.stop_tree``: a hub that does not stop in time is killed with everything it
started, also what it started in sessions of its own (its proxy, managed services, servers),
so that nothing outlives it (found after a CI run: a killed hub left its proxy answering on the
hub's port and its culler calling a hub that was gone)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from devstack.demo import descendants, stop_tree

#: a "hub" that ignores SIGTERM and starts a "proxy" in a session of its own (as JupyterHub does)
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
print(child.pid, flush=True)
time.sleep(600)
"""

#: a "hub" that stops its "proxy" itself when told to
TIDY = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
def stop(*_):
    child.terminate(); child.wait(); sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print(child.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start(code: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    return proc, child


def test_a_hub_that_does_not_stop_is_killed_with_what_it_started():
    proc, child = _start(STUBBORN)
    try:
        assert child in descendants(proc.pid)
        started = time.monotonic()
        stop_tree(proc, 0.5)
        assert proc.returncode is not None and time.monotonic() - started < 10
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the hub's own child outlived it"
    finally:
        for pid in (proc.pid, child):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def test_a_hub_that_stops_in_time_is_left_to_stop_its_children_itself():
    proc, child = _start(TIDY)
    stop_tree(proc, 30)
    assert proc.returncode == 0  # it exited by itself, not killed
    assert not _alive(child)
