"""The hub ↔ governance service socket (hub_ext.governance_socket), attacked as another Unix
account would: the servers' tokens the hub passes on must reach the service and nobody else.

``nobody`` is the other account (it exists on every Debian machine and owns nothing here);
files are handed to it with ``chown`` (the tests run as root, as the hub does)."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile

import pytest
from tornado import web
from tornado.httpserver import HTTPServer

from hub_ext import governance_socket as gs


@pytest.fixture
def tmp_path(short_tmp_path):  # its sockets' paths must stay short (tests/conftest.py)
    return short_tmp_path


NOBODY = pwd.getpwnam("nobody").pw_uid


def as_nobody(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-c", code],
                          capture_output=True, text=True, timeout=60)


def test_the_service_makes_a_private_directory_and_a_0600_socket(tmp_path):
    path = str(tmp_path / "run" / "governance.sock")
    sock = gs.listen(path)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "run").st_mode) == 0o700
        st = os.lstat(path)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
        gs.check_socket(path)  # the hub connects to it
    finally:
        sock.close()


def test_another_account_can_neither_connect_nor_take_the_socket():
    """In a directory nobody may traverse and read (0755, on a path open to them: the socket's
    own mode is what refuses them): nobody's connect is refused, and with the socket opened up
    (the control) it goes through; nobody cannot place a socket of their own there either."""
    base = tempfile.mkdtemp(prefix="xh-gov-", dir="/var/tmp")
    try:
        os.chmod(base, 0o755)
        run = os.path.join(base, "run")
        os.mkdir(run, 0o755)
        path = os.path.join(run, "governance.sock")
        sock = gs.listen(path)
        sock.listen(8)
        connect = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); print('in')"
        try:
            r = as_nobody(connect)
            assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
            os.chmod(path, 0o666)  # the control: the mode is what kept them out
            assert as_nobody(connect).stdout.strip() == "in"
            r = as_nobody(f"import socket; s = socket.socket(socket.AF_UNIX); s.bind({run + '/other.sock'!r})")
            assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
        finally:
            sock.close()
    finally:
        shutil.rmtree(base)


@pytest.mark.parametrize("how", ["open to others", "another account's", "a link"])
def test_a_directory_others_could_write_or_swap_is_refused_both_ways(tmp_path, how):
    run = tmp_path / "run"
    if how == "a link":
        real = tmp_path / "real"
        real.mkdir(mode=0o700)
        run.symlink_to(real)
    else:
        run.mkdir(mode=0o700)
        if how == "open to others":
            os.chmod(run, 0o777)
        else:
            os.chown(run, NOBODY, -1)
    path = str(run / "governance.sock")
    with pytest.raises(gs.GovernanceUnavailable) as refused:
        gs.listen(path)
    assert "c.XnatGovernance.service_socket" in refused.value.message
    with pytest.raises(gs.GovernanceUnavailable):
        gs.check_socket(path)


def test_a_socket_planted_by_another_account_gets_nothing(tmp_path):
    """A socket at the service's path that is not the hub's own (a squatter's, or a file) is
    never connected to, and the service refuses to start over it."""
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    path = str(run / "governance.sock")
    planted = socket.socket(socket.AF_UNIX)
    planted.bind(path)
    os.chown(path, NOBODY, -1)
    try:
        with pytest.raises(gs.GovernanceUnavailable, match="not the governance service's socket"):
            gs.check_socket(path)
        with pytest.raises(gs.GovernanceUnavailable, match="not a socket of the hub's account"):
            gs.listen(path)
    finally:
        planted.close()
    os.unlink(path)
    (run / "governance.sock").write_text("not a socket")
    with pytest.raises(gs.GovernanceUnavailable):
        gs.check_socket(path)
    with pytest.raises(gs.GovernanceUnavailable):
        gs.listen(path)


def test_a_stale_socket_of_the_hub_is_replaced_and_the_client_reaches_the_service(tmp_path):
    path = str(tmp_path / "run" / "governance.sock")
    gs.listen(path).close()  # a service that ended without removing its socket

    class Hello(web.RequestHandler):
        def get(self):
            self.finish({"via": "socket"})

    async def main():
        server = HTTPServer(web.Application([(r"/hello", Hello)]))
        server.add_socket(gs.listen(path))
        http = gs.client(path)
        try:
            gs.check_socket(path)
            r = await http.fetch("http://xnat-hpc-governance/hello")
            return r.code, r.body
        finally:
            http.close()
            server.stop()

    assert asyncio.run(main()) == (200, b'{"via": "socket"}')
