"""The one rule for private files and for files another account may have planted
(xnat_bridge.private), tested once: FIFO, socket, symlink, directory, wrong owner,
group-readable, missing, too large; creation private and atomic.

A FIFO with no writer blocks a plain ``open`` for ever: those cases run in a thread with a
generous deadline, and a regression is released by opening the FIFO's write end, so the
test fails instead of hanging."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import stat

import pytest

from xnat_bridge import private
from xnat_bridge.errors import NotFound, PermissionDenied
from xnat_bridge.private import (
    UnsafePath,
    check_private_dir,
    check_private_file,
    create_private_file,
    open_directory,
    open_regular,
    read_private_file,
    read_regular,
)

#: seconds a call that must return at once may take on a loaded machine
PROMPT = 5.0
OTHER_UID = 65534  # nobody


def _promptly(fn, fifo):
    """*fn()* in a thread; if it has not returned after :data:`PROMPT` s it is blocked in
    ``open`` on *fifo*: open the write end to release it, and fail."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    future = pool.submit(fn)
    try:
        return future.result(timeout=PROMPT)
    except concurrent.futures.TimeoutError:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader counts as one
        future.exception(timeout=PROMPT)
        pytest.fail(f"{fn} blocked on the FIFO {fifo}")
    finally:
        pool.shutdown(wait=False)


@pytest.fixture
def other_owner(monkeypatch):
    """Make a path belong to another account: chown as root, else pretend to be another uid."""
    def apply(path):
        if os.geteuid() == 0:
            os.chown(path, OTHER_UID, OTHER_UID, follow_symlinks=False)
        else:
            real = os.geteuid()
            monkeypatch.setattr(os, "geteuid", lambda: real + 4242)
    return apply


def _private(path, data=b"secret\n"):
    path.write_bytes(data)
    os.chmod(path, 0o600)
    return path


# -- regular files ------------------------------------------------------------------------

def test_a_regular_file_is_read_and_written(tmp_path):
    path = _private(tmp_path / "f.json", b'{"a": 1}')
    assert read_regular(path) == b'{"a": 1}'
    with open_regular(path, flags=os.O_WRONLY | os.O_APPEND) as f:
        f.write(b"\n")
        assert os.get_blocking(f.fileno())
    assert read_private_file(path, what="the key") == b'{"a": 1}\n'
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert read_regular("f.json", dir_fd=dir_fd) == b'{"a": 1}\n'
    finally:
        os.close(dir_fd)


def test_a_fifo_without_a_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "000000000000-000000000000.json"
    os.mkfifo(fifo)
    with pytest.raises(UnsafePath, match="FIFO") as exc:
        _promptly(lambda: read_regular(fifo, what="bundle sidecar"), fifo)
    assert str(fifo) in exc.value.message and "remove" in exc.value.message
    assert isinstance(exc.value, PermissionDenied)


def test_a_fifo_swapped_in_after_the_lstat_is_refused_at_once(tmp_path, monkeypatch):
    """The check on the descriptor (fstat) catches what the lstat before the open did not
    see; the open itself does not block (O_NONBLOCK)."""
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    regular = _private(tmp_path / "regular")
    monkeypatch.setattr(private, "_lstat", lambda name, dir_fd: os.lstat(regular))
    with pytest.raises(UnsafePath, match="FIFO"):
        _promptly(lambda: read_regular(fifo), fifo)


def test_a_file_replaced_between_lstat_and_open_is_refused(tmp_path, monkeypatch):
    one, two = _private(tmp_path / "one"), _private(tmp_path / "two")
    monkeypatch.setattr(private, "_lstat", lambda name, dir_fd: os.lstat(two))
    with pytest.raises(UnsafePath, match="replaced"):
        read_regular(one)


def test_a_symlink_is_never_followed(tmp_path):
    target = _private(tmp_path / "target")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafePath, match="symbolic link") as exc:
        read_regular(tmp_path / "link")
    assert f"remove the link ({tmp_path / 'link'})" in exc.value.message
    with pytest.raises(UnsafePath, match="symbolic link"):
        check_private_file(tmp_path / "link")


def test_a_directory_socket_or_device_is_not_a_regular_file(tmp_path):
    with pytest.raises(UnsafePath, match="is a directory, not a regular file"):
        read_regular(tmp_path)
    sock_path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        with pytest.raises(UnsafePath, match="socket"):
            read_regular(sock_path)
    with pytest.raises(UnsafePath, match="character device"):
        read_regular("/dev/null")


def test_a_missing_file_is_not_found(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        read_regular(tmp_path / "nothing")
    with pytest.raises(NotFound):
        check_private_file(tmp_path / "nothing")


def test_too_large_is_refused_not_cut_short(tmp_path):
    path = _private(tmp_path / "big", b"x" * 100)
    assert read_regular(path, max_bytes=100) == b"x" * 100
    with pytest.raises(UnsafePath, match="more than the 99"):
        read_regular(path, max_bytes=99)


def test_a_private_file_must_be_ours_and_closed_to_group_and_others(tmp_path, other_owner):
    path = _private(tmp_path / "password")
    assert stat.S_IMODE(check_private_file(path, what="password file").st_mode) == 0o600
    os.chmod(path, 0o640)
    with pytest.raises(UnsafePath, match="open to group or others") as exc:
        read_private_file(path, what="password file")
    assert exc.value.message.startswith(f"password file {path} ") and f"chmod 600 {path}" in exc.value.message
    with pytest.raises(UnsafePath, match="chmod 600"):
        check_private_file(path)
    os.chmod(path, 0o600)
    other_owner(path)
    with pytest.raises(UnsafePath, match="belongs to uid") as exc:
        check_private_file(path)
    assert "chown" in exc.value.message
    with pytest.raises(UnsafePath, match="belongs to uid"):
        read_private_file(path)
    assert read_regular(path)  # not private: anyone's regular file may be read


def test_open_regular_never_creates(tmp_path):
    with pytest.raises(ValueError, match="create_private_file"):
        open_regular(tmp_path / "new", flags=os.O_WRONLY | os.O_CREAT)


# -- directories ----------------------------------------------------------------------------

def test_a_private_directory_is_created_0700_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        st = check_private_dir(tmp_path / "d", create=True, what="staging directory")
    finally:
        os.umask(old)
    assert stat.S_IMODE(st.st_mode) == 0o700 and stat.S_IMODE(os.lstat(tmp_path / "d").st_mode) == 0o700
    check_private_dir(tmp_path / "d", create=True)  # exists: checked again


def test_a_private_directory_refuses_link_file_group_owner_and_missing(tmp_path, other_owner):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(elsewhere)
    with pytest.raises(UnsafePath, match="symbolic link"):
        check_private_dir(tmp_path / "link", create=True)
    _private(tmp_path / "file")
    with pytest.raises(UnsafePath, match="not a directory"):
        check_private_dir(tmp_path / "file")
    (tmp_path / "open").mkdir()
    os.chmod(tmp_path / "open", 0o750)
    with pytest.raises(UnsafePath, match=f"chmod 700 {tmp_path / 'open'}"):
        check_private_dir(tmp_path / "open", what="staging directory")
    with pytest.raises(NotFound, match="mkdir -m 700"):
        check_private_dir(tmp_path / "missing")
    (tmp_path / "theirs").mkdir(mode=0o700)
    other_owner(tmp_path / "theirs")
    with pytest.raises(UnsafePath, match="belongs to uid"):
        check_private_dir(tmp_path / "theirs")


def test_open_directory_checks_the_descriptor(tmp_path, other_owner):
    (tmp_path / "d").mkdir(mode=0o755)
    (tmp_path / "link").symlink_to(tmp_path / "d")
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = open_directory("d", dir_fd=root)
        assert stat.S_ISDIR(os.fstat(fd).st_mode)
        os.close(fd)
        with pytest.raises(UnsafePath, match="open to group"):
            open_directory("d", dir_fd=root, private=True)
        with pytest.raises(UnsafePath, match="symbolic link"):
            open_directory("link", dir_fd=root)
        with pytest.raises(NotFound):
            open_directory("none", dir_fd=root)
        with pytest.raises(UnsafePath, match=f"belongs to uid {os.geteuid()}, not to uid 12345"):
            open_directory("d", dir_fd=root, owner_uid=12345, what="bob's staging directory")
    finally:
        os.close(root)


# -- creating -----------------------------------------------------------------------------

def test_create_private_file_is_0600_exclusive_and_follows_no_link(tmp_path):
    old = os.umask(0)
    try:
        create_private_file(tmp_path / "key", b"k1")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.lstat(tmp_path / "key").st_mode) == 0o600
    assert read_private_file(tmp_path / "key") == b"k1"
    with pytest.raises(FileExistsError):
        create_private_file(tmp_path / "key", b"k2")
    target = tmp_path / "target"
    target.write_bytes(b"theirs")
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(FileExistsError):
        create_private_file(tmp_path / "link", b"mine")
    assert target.read_bytes() == b"theirs"


def test_create_private_file_replaces_atomically(tmp_path):
    create_private_file(tmp_path / "state", b"one")
    create_private_file(tmp_path / "state", b"two", replace=True)
    assert read_private_file(tmp_path / "state") == b"two"
    target = tmp_path / "target"
    target.write_bytes(b"theirs")
    (tmp_path / "link").symlink_to(target)
    create_private_file(tmp_path / "link", b"mine", replace=True)  # the link is replaced, not followed
    assert target.read_bytes() == b"theirs" and read_private_file(tmp_path / "link") == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "state", "target"]
