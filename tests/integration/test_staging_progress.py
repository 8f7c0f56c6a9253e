"""Staging progress through the REST API (issue 15): while the server builds the bundle of a
job on a larger dataset (a private devxnat of 400 MB, NEURO_MRI ≈ 200 MB), ``GET jobs`` and
``GET jobs/{id}`` carry ``progress`` {bytes_done, bytes_total, files_done, files_total, rate,
eta_s} that moves, agrees with the dataset, is null once the job left staging, and is kept in
memory: the job registry is not rewritten at every tick.

Real components: pytest-jupyter's ServerApp with the extension, devxnat over HTTP, real Slurm
for the submission after staging.
"""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from pytest_jupyter.jupyter_server import *  # noqa: F401,F403 - jp_fetch, jp_serverapp, ...

from tests.fixtures.devxnat import start_devxnat
from tests.integration.test_serverext_api import (  # noqa: F401 - fixtures
    api,
    jp_server_config,
    openapi,
    run,
    server_env,
    staging_dir,
)

pytestmark = [pytest.mark.devxnat, pytest.mark.slurm]

SIZE = os.environ.get("XNAT_HPC_TEST_PROGRESS_SIZE", "400MB")
TERMINAL = {"done", "failed", "cancelled", "lost"}


@pytest.fixture(scope="module")
def devxnat(tmp_path_factory):
    """A private devxnat with a larger archive (this module's own: the session's is 3 MB)."""
    server = start_devxnat(tmp_path_factory.mktemp("devxnat-progress") / "data", demo_size=SIZE, timeout=600)
    yield server
    server.stop()


@pytest.fixture
def xnat_env(devxnat, monkeypatch, tmp_path, staging_dir, jp_root_dir):  # noqa: F811
    return server_env(devxnat, monkeypatch, tmp_path, staging_dir, jp_root_dir,
                      node_scratch="4G", staging_threads=2)


def test_progress_while_staging_a_larger_dataset(slurm, api, run, jp_root_dir):
    (jp_root_dir / "train.py").write_text("print('hello')\n")
    _, ds = api("POST", "datasets", body={"name": "big", "selection": [{"project": "NEURO_MRI"}]}, expect=201)
    assert ds["total_size"] > 100 * 10**6, ds["total_size"]
    code, job = api("POST", "jobs", body={"dataset": "big", "script": "train.py", "cpus": 1})
    assert code == 202 and job["state"] == "staging"
    seen, updated, listed = [], set(), []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        _, cur = api("GET", f"jobs/{job['id']}", expect=200)  # answers are checked against openapi.yaml
        if cur["state"] != "staging":
            break
        updated.add(cur["updated"])
        if cur["progress"] is not None:
            seen.append(cur["progress"])
        if len(listed) < 3:
            _, jobs = api("GET", "jobs", expect=200)
            (mine,) = [j for j in jobs["items"] if j["id"] == job["id"]]
            if mine["state"] == "staging" and mine["progress"]:
                listed.append(mine["progress"])
        run(asyncio.sleep(0.05))
    else:
        raise AssertionError(f"job {job['id']} still staging after 300 s")
    assert cur["progress"] is None, cur  # left staging: no progress any more
    middle = [p for p in seen if 0 < p["bytes_done"] < p["bytes_total"]]
    assert middle, f"no poll saw the staging in the middle ({len(seen)} polls: {seen[:3]} ... {seen[-3:]})"
    for p in seen:
        assert p["phase"] == "staging"
        assert p["bytes_total"] == ds["total_size"] and p["files_total"] == ds["file_count"]
        assert 0 <= p["files_done"] <= p["files_total"] and 0 <= p["bytes_done"] <= p["bytes_total"]
    done = [p["bytes_done"] for p in seen]
    assert done == sorted(done), "bytes_done went backwards"
    assert any(p["files_done"] > 0 for p in seen) or len(middle) < 3
    rated = [p for p in middle if p["rate"]]
    if len(seen) >= 8:  # staging lasted ≥ 0.4 s of polls: a rate and a time left are known
        assert rated, seen
        assert all(p["rate"] > 0 for p in rated)
        assert all(p["eta_s"] is not None and p["eta_s"] >= 0 for p in rated
                   if p["bytes_done"] >= 0.01 * p["bytes_total"])
    assert listed, "GET jobs never showed the staging progress"
    # kept in memory: the registry row changed at submit and at the start of staging, not per tick
    assert len(updated) <= 3, f"the registry was rewritten {len(updated)} times during staging"
    print(f"\nstaging progress: {len(seen)} polls, {len(middle)} in the middle, last {seen[-1]}")
    _, cancelled = api("POST", f"jobs/{job['id']}/cancel", expect=200)
    assert cancelled["progress"] is None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        _, cur = api("GET", f"jobs/{job['id']}", expect=200)
        if cur["state"] in TERMINAL:
            break
        run(asyncio.sleep(0.5))
    assert cur["state"] in TERMINAL and cur["progress"] is None
