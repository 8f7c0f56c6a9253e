"""Shared test configuration. Fixtures that start real components live in
``tests/fixtures/`` (one module per component) and are loaded here."""

import os
from pathlib import Path

import pytest

pytest_plugins = [  # spawn before kube, which imports it (else pytest cannot rewrite its asserts)
    "tests.fixtures.devxnat",
    "tests.fixtures.slurm",
    "tests.fixtures.spawn",
    "tests.fixtures.kube",
    "tests.fixtures.offload",
]

#: pytest's ``tmp_path`` root. Not /tmp: the development Slurm gives every job a private
#: /tmp (job_container/tmpfs, as a secure partition should), and tests hand their staging
#: areas and node-local bases to jobs; /var/tmp is the same machine's disk, seen by jobs.
TEMP_ROOT = Path("/var/tmp/xnat-hpc-pytest")


def pytest_configure(config):
    if not os.environ.get("PYTEST_DEBUG_TEMPROOT"):
        TEMP_ROOT.mkdir(exist_ok=True)
        os.chmod(TEMP_ROOT, 0o1777)  # like /tmp: pytest makes a private pytest-of-<user> in it
        os.environ["PYTEST_DEBUG_TEMPROOT"] = str(TEMP_ROOT)


@pytest.fixture
def short_tmp_path():
    """A fresh directory with a short path, for Unix sockets (at most 100 bytes here): under
    pytest-xdist ``tmp_path`` is too long for one (``.../popen-gw0/<test name>0/``)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="xh-sock-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_sessionstart(session):
    from tests.fixtures import demo_guard

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # the controller checks the whole run, once
        session.config._demo_snapshot = demo_guard.snapshot()


def pytest_sessionfinish(session, exitstatus):
    """Fail the session when it changed a developer's demo (:mod:`tests.fixtures.demo_guard`)."""
    from tests.fixtures import demo_guard

    before = getattr(session.config, "_demo_snapshot", None)
    if before is None:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    running = demo_guard.demo_running()
    if running:
        if reporter:
            reporter.write_line(f"demo guard: not checked, a demo is running ({running})")
        return
    changed = demo_guard.changes(before, demo_guard.snapshot())
    if changed:
        if reporter:
            reporter.write_line("demo guard: this session changed the demo users' homes or the demo's "
                                "directories (tests must use their own accounts and directories):", red=True)
            for line in changed[:50]:
                reporter.write_line(f"  {line}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif reporter:
        roots = demo_guard.guarded_roots()
        reporter.write_line(f"demo guard: {len(before)} entries under {len(roots)} demo directories unchanged")

