"""Per-user staging directories made by the hub (issue 12, finding 6), tried as the other
researcher would, on real components: the staging area's root as the demo makes it
(``devstack.demo.prepare_staging_root``: root's, 0755), the demo users' Unix accounts
through ``runuser``, a real JupyterHub, devxnat and the local Slurm.

* no account can create a directory in the staging root, so nobody can take
  ``<staging>/carol`` before carol;
* a ``<staging>/carol`` that is not carol's own 0700 directory (bob's, or a symbolic
  link) refuses carol's start with a sentence saying why, logs the fix for the admin,
  and is left as it was;
* carol's start — local or Slurm — makes ``<staging>/carol``, owned by carol, 0700.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess

import pytest

from spawner.userdirs import ensure_user_dir
from tests.fixtures.accounts import unix_entry, unix_name
from tests.integration.test_spawn_hub import stop, wait_ready
from xnat_bridge.errors import Conflict

pytestmark = [pytest.mark.devxnat]


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", unix_name(user), "--", *argv], capture_output=True, text=True,
                          check=False, timeout=30)


def remove(path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path)


@pytest.fixture
def carol_in_cardio(shared_devxnat):
    """carol (in no project) as a Member of CARDIO_ECG for the test, so she can start a server."""
    with shared_devxnat.membership("CARDIO_ECG", "carol", "Members"):
        yield


def test_no_account_can_create_in_the_staging_root(staging, unix_users):
    for user, name in (("bob", "carol"), ("carol", "carol")):
        r = as_user(user, "mkdir", str(staging / name))
        made = os.path.lexists(staging / name)
        remove(staging / name)
        assert r.returncode != 0 and "Permission denied" in r.stderr and not made, (user, r.stderr)
    st = os.stat(staging)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o755


@pytest.mark.parametrize("squat", ["bob's directory", "a symbolic link", "carol's, but 0755"])
def test_a_squatted_directory_refuses_the_start_and_says_why(hub, staging, carol_in_cardio, squat):
    path = staging / "carol"
    remove(path)
    bob, carol = unix_entry("bob"), unix_entry("carol")
    target = staging.parent / "squat-target"
    if squat == "bob's directory":
        path.mkdir(mode=0o700)
        os.chown(path, bob.pw_uid, bob.pw_gid)
        words = f"belongs to uid {bob.pw_uid}, not to the user (uid {carol.pw_uid})"
    elif squat == "a symbolic link":
        target.mkdir(mode=0o755, exist_ok=True)
        os.symlink(target, path)
        os.lchown(path, bob.pw_uid, bob.pw_gid)
        words = "is a symbolic link"
    else:
        path.mkdir(mode=0o755)
        os.chmod(path, 0o755)
        os.chown(path, carol.pw_uid, carol.pw_gid)
        words = "has mode 0755, not 0700"
    before = os.lstat(path)
    try:
        hub.login("carol", "carol-demo")
        r = hub.api("POST", "/users/carol/servers/", json={"profile": "local-small", "projects": ["CARDIO_ECG"]})
        assert r.status_code == 409, r.text
        message = r.json()["message"]
        assert message.startswith("Your server was not started: the staging directory "
                                  f"{path} {words}"), message
        assert "ask them to remove it" in message
        assert "" not in hub.api("GET", "/users/carol").json()["servers"]
        assert f"refused to start a server of carol: the staging directory {path} {words}" in hub.log()
        assert f"rm -r -- {path}" in hub.log()
        after = os.lstat(path)  # left as it was; nothing followed
        assert (after.st_ino, after.st_uid, after.st_mode) == (before.st_ino, before.st_uid, before.st_mode)
        if squat == "a symbolic link":
            assert os.stat(target).st_uid == 0 and stat.S_IMODE(os.stat(target).st_mode) == 0o755
    finally:
        if "" in hub.api("GET", "/users/carol").json()["servers"]:  # started after all: the test failed
            stop(hub, "carol", "")
        remove(path)
        remove(target)


@pytest.mark.parametrize("profile", ["local-small", "slurm-cpu"])
def test_the_hub_makes_the_users_private_staging_directory(hub, staging, carol_in_cardio, profile):
    path = staging / "carol"
    remove(path)
    hub.login("carol", "carol-demo")
    r = hub.api("POST", "/users/carol/servers/", json={"profile": profile, "projects": ["CARDIO_ECG"]})
    assert r.status_code in (201, 202), r.text
    try:
        wait_ready(hub, "carol", "", timeout=120)
        st = os.lstat(path)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700
        assert (st.st_uid, st.st_gid) == (unix_entry("carol").pw_uid, unix_entry("carol").pw_gid)
        # carol's own account can use it, bob's cannot
        assert as_user("carol", "touch", str(path / "mine")).returncode == 0
        r = as_user("bob", "ls", str(path))
        assert r.returncode != 0 and "Permission denied" in r.stderr
    finally:
        stop(hub, "carol", "")
        remove(path)


def test_the_privileged_function_checks_and_never_fixes(staging, unix_users):
    """The privileged function itself: a new directory is handed to the user, an existing one
    is checked and never changed."""
    carol = unix_entry("carol")
    path = staging / "carol"
    remove(path)
    try:
        made = ensure_user_dir(staging, "carol", carol.pw_uid, carol.pw_gid)
        assert made == path and os.stat(path).st_uid == carol.pw_uid
        assert ensure_user_dir(staging, "carol", carol.pw_uid, carol.pw_gid) == path  # again: accepted
        os.chmod(path, 0o750)
        with pytest.raises(Conflict, match="has mode 0750"):
            ensure_user_dir(staging, "carol", carol.pw_uid, carol.pw_gid)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o750  # not "fixed" behind the admin's back
    finally:
        remove(path)
