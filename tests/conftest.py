"""Shared test configuration. Fixtures that start real components live in
``tests/fixtures/`` (one module per component) and are loaded here."""

import os
from pathlib import Path

pytest_plugins = [
    "tests.fixtures.devxnat",
    "tests.fixtures.slurm",
    "tests.fixtures.kube",
    "tests.fixtures.offload",
    "tests.fixtures.spawn",
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
