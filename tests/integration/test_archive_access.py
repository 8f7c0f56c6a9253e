"""The XNAT archive only through the scope (issue 12, finding 2), tried as the other
researcher would, on real components: devxnat's archive closed as the demo closes it
(``devstack.demo.close_archive``), the demo users' Unix accounts through ``runuser``,
and a local server of alice started through a real JupyterHub (bubblewrap run as root,
``setpriv`` to alice inside), whose own kernel reads files.

* no account but root reads or lists the archive — not bob, whom XNAT refuses
  SLEEP_EEG, and not alice either, whom XNAT allows it: outside a sandbox every read is
  unaudited; even an account holding the archive group cannot reach it (its parent
  directory is root's alone), which is what a set-group-id program made inside a sandbox
  would give;
* alice's local server reads its scope at /xnat/data and nothing else; it runs as alice's
  uid with the archive group, no capabilities and ``no_new_privs``; alice's own processes
  outside have no archive group and read nothing of the archive.
"""

from __future__ import annotations

import grp
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from devstack.demo import ARCHIVE_GROUP, prepare_staging_root
from tests.fixtures.accounts import unix_entry, unix_name
from tests.fixtures.spawn import make_hub
from tests.integration.test_spawn_hub import _server_process, stop, wait_ready

pytestmark = [pytest.mark.devxnat]

DENIED = "Permission denied"


def as_user(user: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", unix_name(user), "--", *argv], capture_output=True, text=True,
                          check=False, timeout=30)


def a_file(archive: Path, project: str) -> Path:
    return next(p for p in sorted((archive / project).rglob("*")) if p.is_file())


@pytest.fixture(scope="module")
def hub(shared_devxnat, unix_users, public_dir, tmp_path_factory):
    staging = public_dir / "staging-archive"
    prepare_staging_root(staging)
    h = make_hub(tmp_path_factory.mktemp("hub"), shared_devxnat, "xnat", staging=staging)
    yield h
    h.stop()


def test_no_account_reads_the_archive_outside_a_sandbox(shared_devxnat, unix_users):
    archive = shared_devxnat.archive
    sleep = a_file(archive, "SLEEP_EEG")  # bob is in no SLEEP_EEG group; alice is a Member
    for user in ("bob", "alice"):
        for argv in (["cat", str(sleep)], ["ls", str(archive)], ["ls", str(archive / "SLEEP_EEG")],
                     ["stat", str(sleep)]):
            r = as_user(user, *argv)
            assert r.returncode != 0 and DENIED in r.stderr, (user, argv, r.stdout[:200], r.stderr)
    # with the archive group (what a set-group-id file made inside a sandbox would give): still
    # nothing, the directory above the archive is root's alone
    gid = grp.getgrnam(ARCHIVE_GROUP).gr_gid
    bob = unix_entry("bob")
    r = subprocess.run(["setpriv", f"--reuid={bob.pw_uid}", f"--regid={bob.pw_gid}", f"--groups={gid}",
                        "--", "cat", str(sleep)], capture_output=True, text=True, check=False, timeout=30)
    assert r.returncode != 0 and DENIED in r.stderr, r.stderr
    st = os.stat(archive.parent)
    assert st.st_uid == 0 and st.st_mode & 0o077 == 0, oct(st.st_mode)
    st = os.stat(sleep)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, gid, 0o640)


def run_code(hub, user: str, server: str, code: str) -> str:
    """Run *code* in a new kernel of the server (it runs as the server does); its stdout."""
    base = f"{hub.url}/user/{user}/{server}/api/kernels"
    auth = {"Authorization": f"token {hub.api_token}"}
    r = requests.post(base, headers=auth, json={"name": "python3"}, timeout=60)
    assert r.status_code == 201, r.text
    kernel = r.json()["id"]
    ws = websocket.create_connection(f"ws{base[4:]}/{kernel}/channels", timeout=60,
                                     header=[f"Authorization: token {hub.api_token}"])
    try:
        msg_id = uuid.uuid4().hex
        ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": user, "session": uuid.uuid4().hex,
                       "msg_type": "execute_request", "version": "5.3", "date": ""},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        out = []
        while True:
            msg = json.loads(ws.recv())
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                raise AssertionError("\n".join(msg["content"]["traceback"]))
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return "".join(out)
    finally:
        ws.close()
        requests.delete(f"{base}/{kernel}", headers=auth, timeout=30)


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_local_server_reads_its_scope_and_alice_outside_reads_nothing(hub, shared_devxnat):
    archive = shared_devxnat.archive
    sleep = a_file(archive, "SLEEP_EEG")
    neuro = a_file(archive, "NEURO_MRI")  # alice may read it in XNAT, but it is not in this scope
    gid = grp.getgrnam(ARCHIVE_GROUP).gr_gid
    alice = unix_entry("alice")
    hub.login("alice", "alice-demo")
    r = hub.api("POST", "/users/alice/servers/arch", json={"profile": "local-small", "projects": ["SLEEP_EEG"]})
    assert r.status_code in (201, 202), r.text
    try:
        pid = _server_process("alice", wait_ready(hub, "alice", "arch"))
        status = _status(pid)
        assert status["Uid"].split() == [str(alice.pw_uid)] * 4 and status["Gid"].split() == [str(alice.pw_gid)] * 4
        assert str(gid) in status["Groups"].split()  # inside the sandbox only
        assert int(status["CapEff"], 16) == int(status["CapPrm"], 16) == int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        inside = f"/xnat/data/{sleep.relative_to(archive)}"
        code = f"""
import json, os
def attempt(path):
    try:
        with open(path, "rb") as f:
            return len(f.read())
    except OSError as e:
        return type(e).__name__
print(json.dumps({{"uid": os.getuid(), "groups": os.getgroups(), "scope": attempt({inside!r}),
                  "host_sleep": attempt({str(sleep)!r}), "host_neuro": attempt({str(neuro)!r}),
                  "data": sorted(os.listdir("/xnat/data")), "archive": os.path.exists({str(archive)!r})}}))
"""
        seen = json.loads(run_code(hub, "alice", "arch", code))
        assert seen["uid"] == alice.pw_uid and gid in seen["groups"]
        assert seen["scope"] == sleep.stat().st_size  # 0640 root:xnat-archive, read through the group
        assert seen["data"] == ["SLEEP_EEG"] and seen["archive"] is False
        assert seen["host_sleep"] == seen["host_neuro"] == "FileNotFoundError"
        # alice outside the sandbox: her own account, without the group, reads nothing of it
        groups = as_user("alice", "id", "-G").stdout.split()
        assert str(gid) not in groups and str(alice.pw_gid) in groups
        for path in (sleep, neuro):
            r = as_user("alice", "cat", str(path))
            assert r.returncode != 0 and DENIED in r.stderr, r.stderr
    finally:
        stop(hub, "alice", "arch")
