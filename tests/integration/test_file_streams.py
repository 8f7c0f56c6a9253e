"""Datasets are metadata, files are verified streams, nothing is cached implicitly (issue 11,
reading side) — against the real devxnat over real HTTP.

Faults are injected by a loopback proxy between the client and devxnat
(:mod:`tests.fixtures.faultproxy`): it drops or stalls a transfer after N bytes,
strips ``Range`` headers or refuses connections. Requests that devxnat received
are counted from its own access log.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import xnat_bridge
from xnat_bridge import audit
from xnat_bridge.errors import Conflict, InvalidRequest, XnatUnavailable
from xnat_bridge.files import MountAccess
from xnat_bridge.scope import Scope

from ..fixtures.faultproxy import FaultProxy

pytestmark = pytest.mark.devxnat

#: a file download in devxnat's access log: a path below ``/files/`` or a zip of files
_DOWNLOAD = re.compile(r"\b(?:GET|HEAD) (/(?:data|REST)/\S*/files/[^?\s]+|\S*/files\?\S*format=zip)")


@pytest.fixture
def connect(devxnat, tmp_path):
    made = []

    def make(user="alice", url=None, **kw):
        kw.setdefault("workspace", tmp_path / f"ws-{user}")
        kw.setdefault("sink", audit.MemorySink())
        kw.setdefault("ttl", 60)
        kw.setdefault("scope", Scope.unrestricted())
        c = xnat_bridge.connect(url or devxnat.url, user, f"{user}-demo", **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def proxy(devxnat):
    p = FaultProxy(devxnat.url)
    yield p
    p.close()


def _mark(devxnat) -> str:
    """Send a marker request and wait until devxnat logged it (it logs after answering)."""
    marker = f"/data/version?marker={secrets.token_hex(6)}"
    devxnat.get(marker)
    deadline = time.monotonic() + 10
    while marker not in devxnat.log():
        assert time.monotonic() < deadline, "devxnat did not log the marker request"
        time.sleep(0.05)
    return marker


def _logged_requests(devxnat, action) -> list[str]:
    """The access-log lines devxnat wrote for the requests *action* sent (between two markers)."""
    first = _mark(devxnat)
    action()
    last = _mark(devxnat)
    text = devxnat.log()
    text = text[text.index(first):text.index(last)]
    return [line for line in text.splitlines()[1:] if re.search(r"\b\d{3} [A-Z]+ /", line)]


def _log_position(devxnat) -> int:
    """Where devxnat's log ends once everything asked so far is logged."""
    _mark(devxnat)
    return len(devxnat.log())


def _statuses(devxnat, name: str, count: int, since: int) -> list[str]:
    """The statuses devxnat logged after *since* for GETs of file *name*, sorted, once *count*
    are logged (a request whose connection the proxy cut may be logged after the one that
    resumed it)."""
    deadline = time.monotonic() + 15
    while True:
        codes = sorted(line.split()[2] for line in devxnat.log()[since:].splitlines()
                       if " GET " in line and re.search(re.escape(name) + r"(\s|\?)", line))
        if len(codes) >= count or time.monotonic() > deadline:
            return codes
        time.sleep(0.1)


def _biggest(m, suffix=(".nii", ".edf")):
    return max((f for f in m.files if f.name.endswith(suffix)), key=lambda f: f.size)


class _Changed:
    """Replace a file's bytes in devxnat's archive (same size unless *data* says otherwise)."""

    def __init__(self, devxnat, f, data: bytes | None = None):
        self.disk = devxnat.archive / f.archive_path
        self.original = self.disk.read_bytes()
        if data is None:
            mid = len(self.original) // 2
            data = self.original[:mid] + bytes([self.original[mid] ^ 0xFF]) + self.original[mid + 1:]
        self.data = data

    def __enter__(self):
        self.disk.write_bytes(self.data)
        return self

    def __exit__(self, *exc):
        self.disk.write_bytes(self.original)


# -- dataset creation is metadata only --------------------------------------------------------------

def test_dataset_creation_downloads_nothing(devxnat, tmp_path):
    alias, secret = devxnat.token("alice")  # as in a spawned server: an alias token
    c = xnat_bridge.connect(devxnat.url, alias, secret, workspace=tmp_path / "ws",
                            sink=audit.MemorySink(), ttl=60, scope=Scope.unrestricted())
    try:
        made = {}
        lines = _logged_requests(devxnat, lambda: made.setdefault(
            "m", c.create_dataset(f"whole-{secrets.token_hex(3)}", [{"project": "NEURO_MRI"},
                                                                     {"project": "SLEEP_EEG"}])))
        m = made["m"]
    finally:
        c.close()
    assert len(m.files) > 20 and m.total_size > 0
    downloads = [line for line in lines if _DOWNLOAD.search(line)]
    assert downloads == [], downloads
    # listings only: the experiments of each project and one file listing per batch of them
    listings = [line for line in lines if re.search(r"/files\?", line)]
    assert len(listings) == 2, listings
    assert all(f.sha256 == "" and f.md5 and f.size > 0 for f in m.files)
    for f in m.files:  # what XNAT lists is what the archive holds
        raw = (devxnat.archive / f.archive_path).read_bytes()
        assert len(raw) == f.size and hashlib.md5(raw).hexdigest() == f.md5
    assert secret not in "\n".join(lines)  # the access log carries no token secret


def test_devxnat_lists_several_sessions_in_one_answer_as_xnat_does(devxnat):
    def listing(path, user):
        r = devxnat.get(path, user, params={"format": "json"})
        return r.status_code, (r.json()["ResultSet"]["Result"] if r.status_code == 200 else None)

    neuro = [r["ID"] for r in devxnat.get("/data/projects/NEURO_MRI/experiments", "alice").json()
             ["ResultSet"]["Result"]][:3]
    sleep = devxnat.get("/data/projects/SLEEP_EEG/experiments", "alice").json()["ResultSet"]["Result"][0]["ID"]
    one_by_one = []
    for e in neuro + [sleep]:
        one_by_one += listing(f"/data/experiments/{e}/scans/ALL/files", "alice")[1]
    code, together = listing(f"/data/experiments/{','.join(neuro + [sleep])}/scans/ALL/files", "alice")
    assert code == 200 and together == one_by_one and len({r["URI"] for r in together}) == len(together)
    # sessions the user may not read (bob: SLEEP_EEG) or that do not exist are left out, as in XNAT
    code, bobs = listing(f"/data/experiments/{','.join(neuro + [sleep, 'XNAT_E99999'])}/scans/ALL/files", "bob")
    assert code == 200 and bobs == [r for r in one_by_one if f"/experiments/{sleep}/" not in r["URI"]]
    assert listing(f"/data/experiments/{sleep},XNAT_E99999/scans/ALL/files", "bob")[0] == 404


def test_home_directory_holds_no_data_bytes(devxnat, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XNAT_HPC_WORKSPACE", raising=False)
    monkeypatch.delenv("XNAT_HPC_SCOPE", raising=False)
    monkeypatch.delenv("XNAT_DATA", raising=False)
    with xnat_bridge.connect(devxnat.url, "alice", "alice-demo") as c:  # every default: workspace in ~
        assert c.access.mode == "api" and c.workspace == home / "xnat-hpc"
        m = c.create_dataset("scan me", [{"project": "NEURO_MRI"}])
        windows = []
        for f in m.files:
            with c.open(f) as stream:
                data = stream.read()
            assert data == (devxnat.archive / f.archive_path).read_bytes()
            if f.name.endswith(".nii") and f.size > 256:
                mid = f.size // 2
                windows += [data[mid:mid + 48], data[-48:]]
    assert windows and (home / "xnat-hpc" / "datasets" / "scan me" / "v1.json").is_file()
    hits = []
    for path in home.rglob("*"):
        if path.is_file() and not path.is_symlink():
            content = path.read_bytes()
            hits += [str(path) for w in windows if w in content]
    assert hits == [], f"plaintext data bytes under the home directory: {sorted(set(hits))}"
    assert not (home / ".cache").exists()


# -- streams: resume, verification, failures ----------------------------------------------------------

def test_dropped_connection_resumes_with_range(connect, proxy, devxnat):
    c = connect(url=proxy.url)
    m = c.create_dataset("resume", [{"project": "NEURO_MRI"}])
    f = _biggest(m)
    name = f.uri.rsplit("/", 1)[-1]
    proxy.cut(re.escape(name) + r"$", after=f.size // 3, times=2)  # two drops, one stream
    since = _log_position(devxnat)
    with c.open(f) as stream:
        data = b"".join(iter(lambda: stream.read(4096), b""))
    assert data == (devxnat.archive / f.archive_path).read_bytes()
    ranges = proxy.ranges(name)
    assert ranges[0] is None and len(ranges) == 3, ranges
    starts = [int(r.split("=")[1].rstrip("-")) for r in ranges[1:]]
    assert 0 < starts[0] < starts[1] < f.size, ranges  # each resume starts where the last one stopped
    assert _statuses(devxnat, name, 3, since) == ["200", "206", "206"]


def test_a_server_that_ignores_the_range_is_skipped_not_restarted(connect, proxy, devxnat):
    c = connect(url=proxy.url)
    m = c.create_dataset("no range", [{"project": "SLEEP_EEG"}])
    f = _biggest(m)
    name = f.uri.rsplit("/", 1)[-1]
    proxy.strip_range = True
    proxy.cut(re.escape(name) + r"$", after=f.size // 2)
    since = _log_position(devxnat)
    with c.open(f) as stream:
        parts = list(iter(lambda: stream.read(1000), b""))
    assert b"".join(parts) == (devxnat.archive / f.archive_path).read_bytes()
    assert sum(map(len, parts)) == f.size  # nothing delivered twice
    assert proxy.ranges(name)[1].startswith("bytes=")  # asked for the rest, got everything again
    assert _statuses(devxnat, name, 2, since) == ["200", "200"]


def test_a_stalled_transfer_times_out_and_resumes(connect, proxy, devxnat):
    c = connect(url=proxy.url, timeout=1.5)
    m = c.create_dataset("stall", [{"project": "NEURO_MRI"}])
    f = _biggest(m)
    name = f.uri.rsplit("/", 1)[-1]
    proxy.stall(re.escape(name) + r"$", after=f.size // 2)
    t = time.monotonic()
    with c.open(f) as stream:
        data = stream.read()
    assert data == (devxnat.archive / f.archive_path).read_bytes()
    assert time.monotonic() - t >= 1.4 and len(proxy.ranges(name)) == 2


def test_closing_a_stream_from_another_thread_ends_a_blocked_read(connect, proxy):
    c = connect(url=proxy.url, timeout=30)
    m = c.create_dataset("cancel", [{"project": "NEURO_MRI"}])
    f = _biggest(m)
    proxy.stall(re.escape(f.uri.rsplit("/", 1)[-1]) + r"$", after=f.size // 2)
    stream = c.open(f)
    threading.Timer(0.5, stream.close).start()  # what a cancelled staging does
    t = time.monotonic()
    with pytest.raises((ValueError, OSError)):
        stream.read()
    assert time.monotonic() - t < 10  # not the 30 s read timeout, and no resume
    assert len(proxy.ranges(f.uri.rsplit("/", 1)[-1])) == 1


def test_bytes_that_do_not_match_xnats_md5_are_refused_by_name(connect, devxnat):
    c = connect()
    m = c.create_dataset("md5", [{"project": "NEURO_MRI"}])
    f = _biggest(m)
    with _Changed(devxnat, f):
        stream = c.open(f)
        got = b""
        with pytest.raises(Conflict, match="md5") as e:
            while chunk := stream.read(f.size - 1 - len(got) or 1):
                got += chunk
        assert e.value.item == f.archive_path and f.archive_path in e.value.message
        assert len(got) == f.size - 1  # refused before the last byte is handed out
        with pytest.raises(Conflict):  # and stays refused
            stream.read(1)
        stream.close()
        mount = connect(access=MountAccess(devxnat.archive, check_md5=True))
        with pytest.raises(Conflict, match="md5") as e:
            mount.open(f).read()
        assert e.value.item == f.archive_path
        # readinto (the staging's readers: straight into their buffers) checks the same
        buf, into = bytearray(f.size), mount.open(f)
        with pytest.raises(Conflict, match="md5") as e:
            view, n = memoryview(buf), 0
            while (got_n := into.readinto(view[n:])):
                n += got_n
        assert e.value.item == f.archive_path and n < f.size  # the last read is refused
        with pytest.raises(Conflict):  # and stays refused
            into.readinto(bytearray(1))
        # by default the mount checks the size only (the staging checks md5 where no sha256 of
        # the file is recorded yet: see MountAccess)
        with connect(access=MountAccess(devxnat.archive)).open(f) as stream:
            assert stream.read() == (devxnat.archive / f.archive_path).read_bytes()
        with connect(access=MountAccess(devxnat.archive)).open(f) as stream:
            buf = bytearray(f.size + 10)
            assert stream.readinto(buf) == f.size and stream.readinto(buf) == 0
            assert bytes(buf[:f.size]) == (devxnat.archive / f.archive_path).read_bytes()


def test_a_file_whose_size_changed_is_refused_at_open(connect, devxnat):
    c = connect()
    m = c.create_dataset("size", [{"project": "SLEEP_EEG"}])
    f = _biggest(m)
    with _Changed(devxnat, f, (devxnat.archive / f.archive_path).read_bytes() + b"more"):
        with pytest.raises(Conflict, match="now has") as e:
            c.open(f)
        assert e.value.item == f.archive_path
        with pytest.raises(Conflict, match="mount has") as e:
            connect(access=MountAccess(devxnat.archive)).open(f)
        assert e.value.item == f.archive_path


def test_xnat_down_names_the_file(connect, proxy):
    c = connect(url=proxy.url, retry_window=1.0)
    m = c.create_dataset("down", [{"project": "NEURO_MRI"}])
    f = _biggest(m)
    proxy.down()
    t = time.monotonic()
    with pytest.raises(XnatUnavailable) as e:
        c.open(f)
    assert e.value.item == f.archive_path and f.archive_path in e.value.message
    assert "could not be resumed within 1 s" in e.value.message and time.monotonic() - t < 15
    # down in the middle of the file: fails naming it, after the retry window
    proxy.up()
    name = f.uri.rsplit("/", 1)[-1]
    proxy.cut(re.escape(name) + r"$", after=f.size // 2)
    stream = c.open(f)
    proxy.down()
    with pytest.raises(XnatUnavailable) as e:
        stream.read()
    assert e.value.item == f.archive_path and "failed after" in e.value.message
    stream.close()


def test_xnat_back_within_the_retry_window_resumes(connect, proxy, devxnat):
    c = connect(url=proxy.url, retry_window=30.0)
    m = c.create_dataset("back", [{"project": "NEURO_MRI"}])
    f = _biggest(m)
    name = f.uri.rsplit("/", 1)[-1]
    proxy.cut(re.escape(name) + r"$", after=f.size // 2)
    stream = c.open(f)
    proxy.down()
    threading.Timer(1.5, proxy.up).start()
    assert stream.read() == (devxnat.archive / f.archive_path).read_bytes()
    stream.close()


def test_streams_read_concurrently_from_threads(connect, devxnat):
    c = connect()
    m = c.create_dataset("threads", [{"project": "NEURO_MRI"}, {"project": "SLEEP_EEG"}])
    files = sorted(m.files, key=lambda f: -f.size)[:12]
    out, errors = {}, []

    def read(f):
        try:
            with c.open(f) as s:
                out[f.name] = b"".join(iter(lambda: s.read(997), b""))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=read, args=(f,)) for f in files]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert all(out[f.name] == (devxnat.archive / f.archive_path).read_bytes() for f in files)
    # one stream shared by several threads: every read is whole, the end is verified once
    f = files[0]
    shared, got = c.open(f), []

    def drain():
        while chunk := shared.read(500):
            got.append(chunk)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(map(len, got)) == f.size
    shared.close()


# -- download: explicit, verified, atomic -----------------------------------------------------------

def test_download_is_verified_atomic_and_records_sha256(connect, devxnat, tmp_path):
    c = connect("bob")
    m = c.create_dataset("ecg", [{"project": "CARDIO_ECG"}])
    with pytest.raises(InvalidRequest, match="needs a directory"):
        c.download(m, None, progress=False)
    dest = tmp_path / "out"
    bad = _biggest(m)
    with _Changed(devxnat, bad):
        with pytest.raises(Conflict) as e:
            c.download(m, dest, progress=False, check=False, workers=3)
    assert e.value.item == bad.archive_path
    assert not (dest / bad.name).exists()  # never under its name unless verified
    assert list(dest.rglob("*.part")) == []
    assert c.sink.events[-1].action == "download" and c.sink.events[-1].outcome == "failed"
    assert not c.load_dataset("ecg").hashed  # a failed download records nothing
    paths = c.download(m, dest, progress=False)
    assert len(paths) == len(m.files) and list(dest.rglob("*.part")) == []
    recorded = c.load_dataset("ecg")
    assert recorded.digest == m.digest and recorded.hashed
    for mf, path in zip(recorded.files, paths):
        raw = (devxnat.archive / mf.archive_path).read_bytes()
        assert path == dest / mf.name and path.read_bytes() == raw
        assert hashlib.sha256(raw).hexdigest() == mf.sha256
        assert path.stat().st_mode & 0o777 == 0o600
    ev = c.sink.events[-1]
    assert ev.action == "download" and ev.outcome == "allowed" and str(dest) in ev.detail


def test_download_from_the_mount_checks_xnats_md5_itself(connect, devxnat, tmp_path):
    c = connect("bob", access=MountAccess(devxnat.archive))  # the mount's streams skip md5
    m = c.create_dataset("ecg-mount", [{"project": "CARDIO_ECG"}])
    bad = _biggest(m)
    with _Changed(devxnat, bad):
        with pytest.raises(Conflict, match="md5") as e:
            c.download(m, tmp_path / "m", progress=False, check=False)
    assert e.value.item == bad.name and not (tmp_path / "m" / bad.name).exists()
    assert list((tmp_path / "m").rglob("*.part")) == []
    assert len(c.download(m, tmp_path / "m", progress=False)) == len(m.files)


def test_download_refuses_bytes_that_differ_from_the_recorded_sha256(connect, devxnat, tmp_path):
    c = connect("bob")
    m = c.create_dataset("ecg2", [{"project": "CARDIO_ECG"}])
    f = _biggest(m)
    m = c.record_sha256(m, {f.name: "0" * 64})  # what a staging recorded for other bytes
    with pytest.raises(Conflict, match="recorded sha256") as e:
        c.download(m, tmp_path / "o", progress=False)
    assert e.value.item == f.name and not (tmp_path / "o" / f.name).exists()
    assert list((tmp_path / "o").rglob("*.part")) == []


# -- the admin's node-local file cache --------------------------------------------------------------

def test_file_cache_is_node_local_private_and_wiped(devxnat, tmp_path, monkeypatch):
    from xnat_bridge.filecache import FileCache, PREFIX
    from xnat_bridge.serverext.state import ServerState
    from xnat_bridge.offload.manager import OffloadManager

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    root = tmp_path / "local"
    root.mkdir(mode=0o1777)

    def factory(**kw):
        return xnat_bridge.connect(devxnat.url, "alice", "alice-demo", sink=audit.MemorySink(),
                                   scope=Scope.unrestricted(), ttl=60, **kw)

    # off by default: the server's state has no cache and reads stream from XNAT
    plain = ServerState(factory, OffloadManager, tmp_path / "ws0", tmp_path, needs_env=False)
    assert plain.file_cache is None and type(plain.connection().access).__name__ == "ApiAccess"
    plain.close()

    # a server that died (SIGKILL) leaves its directory behind ...
    code = (f"import os, sys; from xnat_bridge.filecache import FileCache; c = FileCache({str(root)!r}); "
            "open(c.dir / 'x', 'w').write('plaintext'); print(c.dir, flush=True); os.kill(os.getpid(), 9)")
    died = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert died.returncode == -signal.SIGKILL
    dead_dir = Path(died.stdout.strip())
    assert (dead_dir / "x").exists()
    # ... which the next server of the user wipes when it starts, while a live one's stays
    live = FileCache(root)
    cache = FileCache(root)
    assert not dead_dir.exists() and dead_dir.name in live.wiped
    assert live.dir.exists() and cache.wiped == []
    assert cache.dir.parent == root and cache.dir.name.startswith(f"{PREFIX}{os.getuid()}-")
    assert cache.dir.stat().st_mode & 0o777 == 0o700
    live.close()

    state = ServerState(factory, OffloadManager, tmp_path / "ws", tmp_path, needs_env=False, file_cache=cache,
                        file_retry_window=5.0)
    conn = state.connection()
    assert conn.access.mode == "api" and conn.access.inner.retry_window == 5.0
    m = conn.create_dataset("cached", [{"project": "SLEEP_EEG"}])
    f = _biggest(m)
    with conn.open(f) as partly:  # a read that stops half-way caches nothing
        partly.read(f.size // 2)
    with _Changed(devxnat, f), pytest.raises(Conflict):  # nor does one that fails verification
        conn.open(f).read()
    assert [p for p in cache.dir.rglob("*") if p.is_file() and p.name != ".lock"] == []
    first = conn.open(f).read()
    entries = [p for p in cache.dir.rglob("*") if p.is_file() and p.name != ".lock"]
    assert len(entries) == 1 and entries[0].read_bytes() == first
    assert entries[0].stat().st_mode & 0o777 == 0o600
    lines = _logged_requests(devxnat, lambda: conn.open(f).read())
    assert not [line for line in lines if _DOWNLOAD.search(line)]  # the second read came from the cache
    home_hits = [p for p in (tmp_path / "home").rglob("*") if p.is_file() and first[100:148] in p.read_bytes()]
    assert home_hits == []
    state.close()  # the server stops
    assert not cache.dir.exists()


def test_file_cache_refuses_the_home_directory(tmp_path, monkeypatch):
    from traitlets import TraitError

    from xnat_bridge.serverext.app import XnatHpcExtension

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "cache").mkdir()
    assert XnatHpcExtension().file_cache_dir == ""
    with pytest.raises(TraitError, match="home directory"):
        XnatHpcExtension(file_cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TraitError, match="absolute"):
        XnatHpcExtension(file_cache_dir="scratch")
