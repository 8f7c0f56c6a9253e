"""`xnat-hpc-hub demo` brings up devxnat with the demo archive, the local Slurm
and JupyterHub, prints how to reach them, and stops what it started."""

import grp
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devstack.demo import HUB_STOP_GRACE
from tests.fixtures import accounts
from tests.fixtures.hub import free_port
from tests.fixtures.shared_service import machine_lock
from tests.fixtures.slurm import RUN_DIR

pytestmark = [pytest.mark.slurm, pytest.mark.devxnat]


@pytest.fixture(autouse=True)
def one_demo_at_a_time():
    """A demo's governance pages prefer one privileged port: one demo on the machine at a time."""
    with machine_lock("demo"):
        yield


def demo_isolation(staging: Path) -> tuple[str, ...]:
    """The demo's options that keep a test's demo out of a developer's: this session's
    throwaway accounts (tests.fixtures.accounts) and a staging area of its own."""
    return ("--unix-accounts", accounts.TEMPLATE, "--staging-dir", str(staging))


def test_demo_starts_prints_and_stops(slurm, unix_users, public_dir, tmp_path):
    port, hub_port = free_port(), free_port()
    staging_dir = public_dir / "demo-staging-1"
    proc = subprocess.run(
        [sys.executable, "-m", "hub_ext.cli", "demo", "--exit-when-ready",
         "--run-dir", str(tmp_path / "demo"), "--slurm-run-dir", str(RUN_DIR),
         "--xnat-port", str(port), "--hub-port", str(hub_port), "--demo-size", "5MB",
         *demo_isolation(staging_dir)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert f"http://127.0.0.1:{port}" in out
    for user in ("admin", "alice", "bob", "carol", "dave"):
        assert f"{user:<6} password {user}-demo" in out
    assert "secure" in out and "interactive*" in out
    # the hub answered before the summary was printed, and is gone again
    assert f"http://127.0.0.1:{hub_port}/hub/login" in out
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{hub_port}/hub/api", timeout=2)
    config = (tmp_path / "demo" / "hub" / "jupyterhub_config.py").read_text()
    assert 'c.JupyterHub.authenticator_class = "xnat"' in config and 'spawner_class = "xnat"' in config
    # it stopped devxnat again, and left the already-running Slurm alone
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/xapi/siteConfig/buildInfo", timeout=2)
    assert subprocess.run(["sinfo"], capture_output=True).returncode == 0
    # its run directory, logs and devxnat's state are the hub admin's alone
    demo = tmp_path / "demo"
    assert demo.stat().st_mode & 0o077 & ~0o011 == 0, oct(demo.stat().st_mode)  # at most traversable
    for private in ("devxnat.log", "jupyterhub.log", "xnat/devxnat.sqlite3"):
        assert (demo / private).stat().st_mode & 0o777 == 0o600, private
    for private_dir in ("hub", "xnat"):
        assert (demo / private_dir).stat().st_mode & 0o066 == 0, private_dir
    # the archive it generated is in XNAT's layout
    archive = list((tmp_path / "demo" / "xnat").rglob("arc001"))
    assert archive, "no {archive}/{project}/arc001 directory generated"
    # closed to the demo users' accounts: root and xnat-archive, under a root-only directory;
    # the staging area's root is root's, 0755 (the hub makes each user's directory)
    gid = grp.getgrnam("xnat-archive").gr_gid
    assert (demo / "xnat").stat().st_mode & 0o777 == 0o700 and (demo / "xnat").stat().st_uid == 0
    some_file = next(p for p in archive[0].rglob("*") if p.is_file())
    assert (some_file.stat().st_gid, some_file.stat().st_mode & 0o777) == (gid, 0o640)
    assert (archive[0].stat().st_gid, archive[0].stat().st_mode & 0o777) == (gid, 0o750)
    staging = staging_dir.stat()
    assert (staging.st_uid, staging.st_mode & 0o777) == (0, 0o755)


def test_start_jupyter_from_xnat_works_in_the_demo(slurm, unix_users, public_dir, tmp_path):
    """`make demo` wires devxnat's JupyterHub plugin to the demo hub (service token and the
    `jupyterhub` account's password in 0600 files): XNAT's "Start Jupyter" on a project starts
    a server scoped to it, and XNAT's stop removes it."""
    import os
    import signal
    import threading
    import time

    port, hub_port = free_port(), free_port()
    run_dir = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub_ext.cli", "demo", "--run-dir", str(run_dir),
         "--slurm-run-dir", str(RUN_DIR), "--xnat-port", str(port), "--hub-port", str(hub_port),
         "--demo-size", "5MB", *demo_isolation(public_dir / "demo-staging-2")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # its own process group: a kill below takes devxnat and the hub too
    )
    ready, lines = threading.Event(), []

    def pump():
        for line in proc.stdout:
            lines.append(line)
            if "Press Ctrl-C to stop." in line:
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert ready.wait(300) and proc.poll() is None, "".join(lines)
        xnat, hub = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{hub_port}"
        assert "/xapi/jupyterhub/users/bob/server/ecg" in "".join(lines)  # the summary says how
        secrets_dir = run_dir / "secrets"
        for name in ("xnat-service-token", "jupyterhub-password"):
            assert (secrets_dir / name).stat().st_mode & 0o777 == 0o600, name
        assert secrets_dir.stat().st_mode & 0o777 == 0o700
        token = (secrets_dir / "xnat-service-token").read_text().strip()
        assert token not in (run_dir / "hub" / "jupyterhub_config.py").read_text()

        bob = ("bob", "bob-demo")
        body = {"username": "bob", "servername": "ecg", "xsiType": "xnat:projectData",
                "itemId": "CARDIO_ECG", "itemLabel": "CARDIO_ECG", "projectId": "CARDIO_ECG",
                "eventTrackingId": "demo-start-1", "computeEnvironmentConfigId": 1, "hardwareConfigId": 1}
        r = requests.post(f"{xnat}/xapi/jupyterhub/users/bob/server/ecg", json=body, auth=bob, timeout=30)
        assert r.status_code == 200, r.text

        def final(key, timeout):
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                e = requests.get(f"{xnat}/xapi/event_tracking/{key}", auth=bob, timeout=30)
                if e.status_code == 200 and e.json()["succeeded"] is not None:
                    return e.json()
                time.sleep(1)
            raise AssertionError(f"no final event for {key}: {''.join(lines)[-3000:]}")

        done = final("demo-start-1", 240)
        assert done["succeeded"] is True and "available at" in done["finalMessage"], done
        user = requests.get(f"{hub}/hub/api/users/bob", headers={"Authorization": f"token {token}"},
                            timeout=30).json()
        server = user["servers"]["ecg"]
        assert server["ready"] is True
        assert server["user_options"]["itemId"] == "CARDIO_ECG"
        assert all(v is None or isinstance(v, str) for v in server["user_options"].values())

        r = requests.delete(f"{xnat}/xapi/jupyterhub/users/bob/server/ecg?eventTrackingId=demo-stop-1",
                            auth=bob, timeout=30)
        assert r.status_code == 200, r.text
        assert final("demo-stop-1", 120)["succeeded"] is True
        user = requests.get(f"{hub}/hub/api/users/bob", headers={"Authorization": f"token {token}"},
                            timeout=30).json()
        assert "ecg" not in user["servers"]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
        try:  # the demo gives the hub HUB_STOP_GRACE and devxnat 20 s to stop: never kill it first
            proc.wait(HUB_STOP_GRACE + 60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
