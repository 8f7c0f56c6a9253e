"""No plaintext outside memory and the running job's node-local scratch (issue 11).

A real JupyterHub (configurable-http-proxy) with devxnat and the real Slurm spawns a server
for a demo user, with the local profile (bubblewrap, the scope's archive mounted read-only)
and with the Slurm profile (XNAT REST only). Through that server's REST API, with the user's
own hub token, the test creates a dataset of a freshly generated project (random bytes that
exist nowhere but in devxnat's archive) and submits a job to the secure partition whose
script reads every file, says so, and waits for the test before it ends.

64-byte windows of every file are then searched in the user's home (workspace and caches
included), the staging area, Slurm's run directory (state, spool, logs), ``/tmp``,
``/var/tmp``, ``/dev/shm`` and the server sandbox's private ``/tmp``:

* after the dataset is created: no hit;
* while the job runs: hits only in the job's node-local scratch — and there must be hits
  there, which shows that the search finds plaintext where it lies;
* after the job, and again after the server stopped: no hit at all.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import pytest

from devstack.hubconfig import governance_hub_config, xnat_hub_config
from tests.fixtures.accounts import unix_entry
from tests.fixtures.hub import free_privileged_port, start_hub
from tests.fixtures.plaintext import add_random_project, find_plaintext, remove_members, windows
from tests.fixtures.slurm import RUN_DIR
from tests.fixtures.spawn import HUB_TIMEOUTS, UserServer, governance_token_file, stop_server, wait_ready

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat]

PROFILES = """
profiles:
  - slug: local-scan
    display_name: Local (plaintext scan)
    backend: local
    default: true
  - slug: slurm-scan
    display_name: Slurm (plaintext scan)
    backend: slurm
    resources:
      cpus: 1
      memory: 1G
      partition: interactive
      walltime: "0:30:00"
offload:
  partition: secure
  max_cpus: 1
  max_walltime: "0:20:00"
  exclusive: false
  staging_dir: {staging}
"""

#: the job's script: read every file of the dataset, say so, wait for the test, then end
SCRIPT = """\
import os, sys, time
from pathlib import Path

files = [p for p in Path(os.environ["DATASET_DIR"]).rglob("*") if p.is_file()]
total = sum(len(p.read_bytes()) for p in files)
Path(os.environ["OUTPUT_DIR"], "count.txt").write_text(f"{{len(files)}} files\\n")
print("READY", len(files), "files", total, "bytes", flush=True)
deadline = time.monotonic() + 600
while not os.path.exists({go!r}) and time.monotonic() < deadline:
    time.sleep(0.2)
print("GO", flush=True)
"""

SERVER = "plain"
TERMINAL = {"done", "failed", "cancelled", "lost"}


@pytest.fixture(scope="module")
def shared_devxnat(public_dir):
    """This module's own devxnat (closed to the users' accounts as the shared one): the random
    projects its tests add stay out of the devxnat the other modules share, whose tests expect
    the demo's projects only."""
    import secrets as _secrets

    from devstack.demo import close_archive
    from tests.fixtures.devxnat import start_devxnat

    server = start_devxnat(public_dir / f"devxnat-plain-{_secrets.token_hex(3)}")
    close_archive(server.archive)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def hub(shared_devxnat, unix_users, staging, slurm, tmp_path_factory):
    directory = tmp_path_factory.mktemp("plain-hub")
    profiles = directory / "profiles.yaml"
    profiles.write_text(PROFILES.format(staging=staging))
    config = xnat_hub_config(xnat_url=shared_devxnat.url, profiles=profiles, archive=shared_devxnat.archive,
                             audit_log=directory / "audit.jsonl", spawner="xnat")
    config += governance_hub_config(token_file=governance_token_file(directory), pages_port=free_privileged_port())  # audit, ledger
    h = start_hub(directory, config + HUB_TIMEOUTS)
    yield h
    h.stop()


def sandbox_dirs(user: str) -> list[str]:
    """The private ``/tmp`` and ``/dev/shm`` of the user's server processes (bubblewrap's
    tmpfs mounts), where they are not the host's."""
    uid = unix_entry(user).pw_uid
    host = {d: os.stat(d) for d in ("/tmp", "/dev/shm")}
    out = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
            for d, st in host.items():
                inner = os.stat(f"/proc/{pid}/root{d}")
                if (inner.st_dev, inner.st_ino) != (st.st_dev, st.st_ino):
                    out.add(f"/proc/{pid}/root{d}")
        except OSError:
            continue
    return sorted(out)


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True).stdout
    return set(out.split())


@pytest.mark.parametrize("profile, user", [("local-scan", "alice"), ("slurm-scan", "bob")])
def test_no_plaintext_outside_the_jobs_scratch(hub, shared_devxnat, staging, public_dir, profile, user,
                                               request):
    project = f"PLAIN_{profile.split('-')[0].upper()}_{secrets.token_hex(3).upper()}"
    made = time.time_ns() - 2_000_000_000  # before the needles exist (and any clock granularity)
    content = add_random_project(shared_devxnat, project, {user: "Members"})
    # the shared devxnat outlives this test: later tests expect the demo users' projects only
    request.addfinalizer(lambda: remove_members(shared_devxnat, project, [user]))
    needles = [w for blob in content.values() for w in windows(blob)]
    home = Path(unix_entry(user).pw_dir)
    excluded = [shared_devxnat.archive / project]  # the data source itself

    def scan(extra=()) -> list[str]:
        return find_plaintext([home, staging, RUN_DIR, "/tmp", "/var/tmp", "/dev/shm", *extra],
                              needles, exclude=excluded, changed_since=made)

    assert scan() == []  # nothing yet: the needles are this test's alone
    go = public_dir / f"plain-go-{secrets.token_hex(6)}"
    script = home / f"plain_scan_{secrets.token_hex(3)}.py"
    script.write_text(SCRIPT.format(go=str(go)))
    entry = unix_entry(user)
    os.chown(script, entry.pw_uid, entry.pw_gid)
    dataset = f"plain {secrets.token_hex(3)}"

    hub.login(user, f"{user}-demo")  # the XNAT alias token in auth_state
    r = hub.api("POST", f"/users/{user}/servers/{SERVER}", json={"profile": profile, "projects": [project]})
    assert r.status_code in (201, 202), r.text
    try:
        wait_ready(hub, user, SERVER, timeout=180)
        srv = UserServer(hub, user, SERVER, note="plaintext scan")
        ds = srv.call("POST", "datasets", 201, json={"name": dataset, "selection": [{"project": project}]})
        assert ds["file_count"] == len(content)
        sandbox = sandbox_dirs(user)
        if profile == "local-scan":
            assert sandbox, "the local server's private /tmp was not found"
        hits = scan(sandbox)
        assert hits == [], f"plaintext after creating the dataset ({profile}): {hits}"

        job = srv.call("POST", "jobs", 202, json={"dataset": dataset, "script": script.name, "cpus": 1,
                                                  "memory": "512M", "walltime": "0:10:00"})
        deadline = time.monotonic() + 300
        text = ""
        while "READY" not in text:
            rec = srv.call("GET", f"jobs/{job['id']}", 200)
            assert rec["state"] not in TERMINAL, f"job {rec['state']}: {rec['message']}"
            assert time.monotonic() < deadline, f"the job did not start reading: {rec}"
            text = srv.call("GET", f"jobs/{job['id']}/logs", 200)["text"]
            time.sleep(0.5)
        rec = srv.call("GET", f"jobs/{job['id']}", 200)
        slurm_job = rec["slurm_job_id"]
        assert rec["state"] == "running" and slurm_job, rec

        # while the job runs: the data is in its node-local scratch, and nowhere else
        scratch = f"/xnat-hpc-slurm-{slurm_job}."  # mktemp -d: <base>/xnat-hpc-slurm-<id>.<random>/
        hits = scan(sandbox)
        inside = [h for h in hits if scratch in h]
        outside = [h for h in hits if scratch not in h]
        assert outside == [], f"plaintext outside the job's node-local scratch ({profile}): {outside}"
        assert inside, f"no plaintext found in the job's scratch ({scratch}): the search missed it"

        go.touch()
        deadline = time.monotonic() + 180
        while rec["state"] not in TERMINAL:
            assert time.monotonic() < deadline, f"the job did not end: {rec}"
            time.sleep(0.5)
            rec = srv.call("GET", f"jobs/{job['id']}", 200)
        assert rec["state"] == "done", f"job {rec['state']}: {rec['message']}"
        deadline = time.monotonic() + 60
        while slurm_job in squeue_ids():
            assert time.monotonic() < deadline, f"Slurm job {slurm_job} still queued after the job ended"
            time.sleep(0.5)

        # after the job: none at all (the results hold only the script's count)
        hits = scan(sandbox_dirs(user))
        assert hits == [], f"plaintext after the job ({profile}): {hits}"
        srv.call("DELETE", f"datasets/{dataset}", 204)
    finally:
        go.touch()  # a job left waiting ends
        try:
            stop_server(hub, user, SERVER)
        finally:
            script.unlink(missing_ok=True)
    hits = scan()
    go.unlink()
    assert hits == [], f"plaintext after the server stopped ({profile}): {hits}"
