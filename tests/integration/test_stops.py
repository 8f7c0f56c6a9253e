"""Stops leave nothing behind (issue 25), on the real stack: a researcher's server, local
(bubblewrap) or on Slurm, runs an offloaded job; the hub stops the server (the API, as a cull,
a revocation or the admin would); within 10 s the job's Slurm job is gone, and the staging area
holds neither its bundle nor the worker's TLS files (its private key), and the job is recorded
as cancelled."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.fixtures.accounts import unix_entry
from tests.fixtures.spawn import UserServer, make_hub, wait_gone, wait_ready

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat]

PROFILES = """
profiles:
  - slug: local-stop
    display_name: Local
    backend: local
    default: true
  - slug: slurm-stop
    display_name: Slurm
    backend: slurm
    resources:
      cpus: 1
      memory: 1G
      partition: interactive
      walltime: "0:30:00"
offload:
  partition: secure
  max_cpus: 1
  exclusive: false
  staging_dir: {staging}
"""  # make_hub fills {staging}

SLEEPER = """\
import time
print("READY", flush=True)
time.sleep(600)
"""

#: how long after the stop the job's Slurm job may still be listed (the issue's bound)
GONE_WITHIN = 10.0


@pytest.fixture(scope="module")
def hub(shared_devxnat, unix_users, staging, slurm, tmp_path_factory):
    h = make_hub(tmp_path_factory.mktemp("stops-hub"), shared_devxnat, "xnat", staging=staging,
                 profiles_text=PROFILES)
    yield h
    h.stop()


def slurm_listed(job_id: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return bool(out) and out not in ("COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")


@pytest.mark.parametrize("profile, user", [("local-stop", "alice"), ("slurm-stop", "bob")])
def test_stopping_a_server_cancels_its_job_and_leaves_nothing_on_the_staging_area(hub, staging, profile, user):
    server = f"stop-{profile.split('-')[0]}"
    home = Path(unix_entry(user).pw_dir)
    script = home / f"sleeper_{server}.py"
    script.write_text(SLEEPER)
    entry = unix_entry(user)
    os.chown(script, entry.pw_uid, entry.pw_gid)
    hub.login(user, f"{user}-demo")
    r = hub.api("POST", f"/users/{user}/servers/{server}", json={"profile": profile, "projects": ["NEURO_MRI"]})
    assert r.status_code in (201, 202), r.text
    wait_ready(hub, user, server, timeout=180)
    srv = UserServer(hub, user, server, note="stops")
    srv.call("POST", "datasets", 201, json={"name": f"ds-{server}", "selection": [{"project": "NEURO_MRI"}]})
    job = srv.call("POST", "jobs", 202, json={"dataset": f"ds-{server}", "script": script.name, "cpus": 1,
                                              "memory": "512M", "walltime": "0:10:00"})
    deadline = time.monotonic() + 180
    while True:
        rec = srv.call("GET", f"jobs/{job['id']}", 200)
        assert rec["state"] not in ("done", "failed", "cancelled", "lost"), rec
        if rec["state"] == "running" and "READY" in srv.call("GET", f"jobs/{job['id']}/logs", 200)["text"]:
            break
        assert time.monotonic() < deadline, f"the job did not start: {rec['state']} {rec['message']}"
        time.sleep(0.3)
    slurm_job = rec["slurm_job_id"]
    udir = staging / user  # the staging area is per XNAT login
    assert list(udir.glob("*.tar.age")) and list(udir.glob(".tls-*")), sorted(os.listdir(udir))

    r = hub.api("DELETE", f"/users/{user}/servers/{server}")
    assert r.status_code in (202, 204), r.text
    wait_gone(hub, user, server, timeout=60)
    stopped = time.monotonic()
    while slurm_listed(slurm_job):
        assert time.monotonic() - stopped < GONE_WITHIN, f"Slurm job {slurm_job} still listed {GONE_WITHIN} s after the stop"
        time.sleep(0.2)
    # nothing of the job on the staging area: no bundle, no worker key
    left = sorted(p.name for p in udir.iterdir())
    assert not [n for n in left if n.endswith((".tar.age", ".partial")) or n.startswith(".tls-")], left
    # and the registry says what happened
    db = sqlite3.connect(f"file:{home / 'xnat-hpc' / 'jobs.sqlite'}?mode=ro", uri=True)
    try:
        state, message = db.execute("SELECT state, message FROM jobs WHERE id=?", (job["id"],)).fetchone()
    finally:
        db.close()
    assert state == "cancelled" and "shut down" in message, (state, message)
