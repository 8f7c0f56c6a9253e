"""Shared test configuration. Fixtures that start real components live in
``tests/fixtures/`` (one module per component) and are loaded here."""

pytest_plugins = [
    "tests.fixtures.devxnat",
    "tests.fixtures.slurm",
    "tests.fixtures.offload",
    "tests.fixtures.spawn",
]
