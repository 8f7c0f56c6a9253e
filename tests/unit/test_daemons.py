""":mod:`devstack.daemons`, the development clusters' shared plumbing, on real processes: a pid
file whose number another program took is not the daemon, a zombie is not running, a daemon
started in its own session is stopped with its process group."""

from __future__ import annotations

import os
import subprocess
import sys

from devstack import daemons


def test_a_pid_file_names_the_daemon_only_while_that_program_runs(tmp_path):
    pid_file = tmp_path / "sleep.pid"
    assert daemons.read_pid(pid_file) is None  # no file
    pid_file.write_text("not a number\n")
    assert daemons.read_pid(pid_file) is None
    pid = daemons.start(["sleep", "60"], log=tmp_path / "sleep.log", pid_file=pid_file, cwd=tmp_path)
    try:
        assert daemons.read_pid(pid_file) == pid and daemons.alive(pid)
        assert daemons.running_pid(pid_file, "sleep") == pid
        assert daemons.running_pid(pid_file, "etcd") is None  # the number is another program's
        assert os.getpgid(pid) == pid  # its own session and process group
        assert (tmp_path / "sleep.log").stat().st_mode & 0o777 == 0o600
    finally:
        daemons.terminate(pid, 5, group=True)
    os.waitpid(pid, 0)
    assert not daemons.alive(pid) and daemons.running_pid(pid_file, "sleep") is None


def test_a_zombie_is_not_running_and_a_daemon_ignoring_sigterm_is_killed(tmp_path):
    child = subprocess.Popen(["true"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, not reaped: a zombie
    assert not daemons.alive(child.pid)
    child.wait()
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                                 "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"],
                                stdout=subprocess.PIPE, text=True)
    assert stubborn.stdout.readline() == "ready\n"
    daemons.terminate(stubborn.pid, 0.5)
    assert stubborn.wait(5) == -9
