"""One streaming pass (issue 11): bundle format 2 (sha256s computed while staging, in a
trailer), the reader pool ahead of the tar writer (concurrent, bounded in memory,
stopped by any error or cancellation), and what the extractor refuses in format 2.

Sources are in-memory byte strings or counting generators; everything else is real
(age CLI and pyrage, a real staging directory, real threads)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import threading
import time
from pathlib import Path

import pyrage
import pytest

from tests.unit.test_staging import age_cli, evil_bundle, helper_threads, reg, write_keyfile
from xnat_bridge import staging
from xnat_bridge.errors import Conflict, InvalidRequest, XnatUnavailable
from xnat_bridge.staging import StagedFile, extract_bundle, stage_files


@pytest.fixture(params=["cli", "pyrage"])
def engine(request) -> staging.AgeEngine:
    if request.param == "cli":
        age_cli()
        return staging.AgeCliEngine()
    return staging.PyrageEngine()


@pytest.fixture
def keys():
    return staging.generate_keypair()


@pytest.fixture
def root(tmp_path) -> Path:
    (tmp_path / "staging").mkdir()
    return tmp_path / "staging"


def unknown(name: str, data: bytes, **kw) -> StagedFile:
    """A file whose sha256 is not known yet (a dataset's first staging)."""
    return StagedFile(name, len(data), "", lambda: io.BytesIO(data), **kw)


class Tracked(io.RawIOBase):
    """A source that records opens, concurrency and closes; optionally waits at a barrier
    while open (requests in flight together), fails, or hangs until it is closed."""

    lock = threading.Lock()

    def __init__(self, data: bytes, book: dict, *, together: threading.Barrier | None = None,
                 fail_after: int | None = None, hang: threading.Event | None = None):
        super().__init__()
        self.data, self.pos, self.book = data, 0, book
        self.fail_after, self.hang = fail_after, hang
        with self.lock:
            book["open"] = book.get("open", 0) + 1
            book["opened"] = book.get("opened", 0) + 1
            book["max_open"] = max(book.get("max_open", 0), book["open"])
        if together is not None:
            together.wait()  # open until the barrier's other requests are open too

    def readable(self):
        return True

    def read(self, n=-1):
        if self.hang is not None:
            # XNAT stopped answering: only a close ends this read
            if not self.hang.wait(60):
                self.book["hang_ran_out"] = True
            if self.closed:
                raise ConnectionError("stream closed while reading")
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise XnatUnavailable("XNAT stopped answering while reading S/broken.bin and did not come "
                                  "back within 60 s", item="S/broken.bin")
        n = len(self.data) - self.pos if n is None or n < 0 else n
        if self.fail_after is not None:
            n = min(n, self.fail_after - self.pos) or 1
        chunk = self.data[self.pos:self.pos + n]
        self.pos += len(chunk)
        return chunk

    def close(self):
        if not self.closed:
            with self.lock:
                self.book["open"] -= 1
                self.book["closed"] = self.book.get("closed", 0) + 1
            super().close()
            if self.hang is not None:
                self.hang.set()  # after the close: the hung read wakes to a closed stream


# --------------------------------------------------------------------------- format 2


def test_unknown_sha256_computed_once_and_carried_in_the_trailer(tmp_path, root, keys, engine):
    identity, recipient = keys
    data = {f"S{i}/f{i}.bin": os.urandom(1000 * i + 7) for i in range(12)}
    md5 = {n: hashlib.md5(b).hexdigest() for n, b in data.items()}
    files = [unknown(n, b, md5=md5[n]) for n, b in data.items()]
    script = {"script/train.py": b"print(1)\n"}
    info = stage_files(files, staging_dir=root, user="alice", recipient=recipient, extra_members=script,
                       metadata={"dataset": "t1"}, engine=engine)
    want = {n: hashlib.sha256(b).hexdigest() for n, b in data.items()}
    assert dict(info.file_sha256) == want
    known = [StagedFile(n, len(b), want[n], lambda: io.BytesIO(b), md5=md5[n]) for n, b in data.items()]
    assert info.manifest_sha256 == staging.manifest_sha256(known)
    # the bundle-cache key is known before staging and does not depend on the sha256s
    assert info.contents_sha256 == staging.contents_sha256(files, {"dataset": "t1"}, script)
    assert info.contents_sha256 == staging.contents_sha256(known, {"dataset": "t1"}, script)
    # the public sidecar holds no per-file digest
    sidecar = info.path.with_name(info.bundle_id + ".json").read_text()
    assert not any(sha in sidecar for sha in want.values())

    key = write_keyfile(tmp_path, identity)
    plain = subprocess.run([age_cli(), "-d", "-i", str(key), str(info.path)], capture_output=True,
                           check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(plain)) as tar:
        names = tar.getnames()
        head = json.loads(tar.extractfile("MANIFEST.json").read())
        trailer = json.loads(tar.extractfile("HASHES.json").read())
    assert names[0] == "MANIFEST.json" and names[-1] == "HASHES.json"
    assert head["format_version"] == 2 and all("sha256" not in f for f in head["files"])
    assert {f["name"]: f["md5"] for f in head["files"]} == md5
    assert {f["name"]: f["sha256"] for f in trailer["files"]} == want
    assert trailer["manifest_sha256"] == info.manifest_sha256
    assert trailer["contents_sha256"] == info.contents_sha256

    dest = tmp_path / "node"
    final = extract_bundle(info.path, identity, dest, info.manifest_sha256,
                           expected_contents_sha256=info.contents_sha256, engine=engine)
    assert {f["name"]: f["sha256"] for f in final["files"]} == want
    assert {f["name"]: f["md5"] for f in final["files"]} == md5
    assert json.loads((dest / "MANIFEST.json").read_bytes()) == final
    assert not (dest / "HASHES.json").exists()
    for n, b in data.items():
        assert (dest / "data" / n).read_bytes() == b


def test_known_sha256_that_differs_is_refused_with_the_file_name(root, keys, engine):
    _, recipient = keys
    good = unknown("S1/ok.bin", os.urandom(3_000_000))
    served = os.urandom(2_000_000)
    recorded = StagedFile("S1/changed.dcm", len(served), hashlib.sha256(b"what was recorded").hexdigest(),
                          lambda: io.BytesIO(served))
    with pytest.raises(Conflict, match="S1/changed.dcm") as exc:
        stage_files([good, recorded], staging_dir=root, user="alice", recipient=recipient, engine=engine)
    assert exc.value.item == "S1/changed.dcm" and "recorded" in exc.value.message
    assert os.listdir(root / "alice") == []
    assert helper_threads() == []


def test_verify_md5_for_sources_that_do_not(root, keys, engine):
    _, recipient = keys
    data = os.urandom(100_000)
    wrong = StagedFile("S1/a.dcm", len(data), "", lambda: io.BytesIO(data), md5="0" * 32)
    with pytest.raises(Conflict, match="S1/a.dcm.*md5"):
        stage_files([wrong], staging_dir=root, user="alice", recipient=recipient, engine=engine,
                    verify_md5=True)
    assert os.listdir(root / "alice") == []
    right = StagedFile("S1/a.dcm", len(data), "", lambda: io.BytesIO(data), md5=hashlib.md5(data).hexdigest())
    assert stage_files([right], staging_dir=root, user="alice", recipient=recipient, engine=engine,
                       verify_md5=True).file_count == 1
    # a recorded sha256 stands for bytes whose md5 the staging that recorded it verified: the
    # sha256 is checked (it always is), the md5 not again — and a file that changed is still refused
    recorded = StagedFile("S1/a.dcm", len(data), hashlib.sha256(data).hexdigest(), lambda: io.BytesIO(data),
                          md5="0" * 32)
    assert stage_files([recorded], staging_dir=root, user="alice", recipient=recipient, engine=engine,
                       verify_md5=True).file_count == 1
    changed = StagedFile("S1/a.dcm", len(data), hashlib.sha256(data).hexdigest(),
                         lambda: io.BytesIO(os.urandom(len(data))), md5=hashlib.md5(data).hexdigest())
    with pytest.raises(Conflict, match="S1/a.dcm.*recorded"):
        stage_files([changed], staging_dir=root, user="alice", recipient=recipient, engine=engine,
                    verify_md5=True)


def test_bad_md5_and_thread_settings_refused(root, keys):
    _, recipient = keys
    with pytest.raises(InvalidRequest, match="md5"):
        stage_files([unknown("a", b"1", md5="xyz")], staging_dir=root, user="alice", recipient=recipient)
    with pytest.raises(InvalidRequest, match="threads"):
        stage_files([unknown("a", b"1")], staging_dir=root, user="alice", recipient=recipient, threads=0)
    with pytest.raises(InvalidRequest, match="buffer"):
        stage_files([unknown("a", b"1")], staging_dir=root, user="alice", recipient=recipient,
                    buffer_bytes=1000)
    assert os.listdir(root) == []


# --------------------------------------------------------------------------- the reader pool


def test_many_small_files_are_fetched_concurrently_not_one_after_the_other(root, keys):
    """40 small files, 8 readers: the first 8 requests are in flight together (each stays open
    at a barrier until the other 7 are open: a pool that opened them one after the other would
    never pass it), and never more than 8. No clock: benchmarks/bench_staging.py measures speed."""
    _, recipient = keys
    book: dict = {}
    together = threading.Barrier(8, timeout=60)
    data = {f"S/f{i:03d}.dcm": os.urandom(2000 + i) for i in range(40)}
    files = [StagedFile(n, len(b), "", lambda b=b, i=i: Tracked(b, book, together=together if i < 8 else None))
             for i, (n, b) in enumerate(data.items())]
    info = stage_files(files, staging_dir=root, user="alice", recipient=recipient, threads=8)
    assert info.file_count == 40 and book["opened"] == 40 and book["open"] == 0
    assert not together.broken and book["max_open"] == 8, book  # really concurrent, never more
    plain = [StagedFile(n, len(b), "", lambda b=b: Tracked(b, book)) for n, b in data.items()]
    single = stage_files(plain, staging_dir=root, user="alice", recipient=recipient, threads=1)
    assert single.manifest_sha256 == info.manifest_sha256  # same bundle contents either way


def test_queued_bytes_stay_below_the_buffer_whatever_the_order():
    """A slow writer, fast readers: the queue never holds more than buffer + one file's reserve."""
    book: dict = {}
    blobs = [os.urandom(3 << 20) for _ in range(12)]
    files = [StagedFile(f"f{i:02d}", len(b), "", lambda b=b: Tracked(b, book)) for i, b in enumerate(blobs)]
    fetcher = staging.Prefetcher(files, threads=6, buffer_bytes=4 << 20, chunk=1 << 20)
    with fetcher:
        for i, b in enumerate(blobs):
            got = []
            chunks = fetcher.read(i)
            while True:
                try:
                    got.append(bytes(next(chunks)))  # a view: valid until the next one
                except StopIteration as end:
                    digests = end.value
                    break
                time.sleep(0.002)  # a slow writer, so that the pool fills; the bound holds in any schedule
            assert b"".join(got) == b and digests.sha256 == hashlib.sha256(b).hexdigest()
    assert fetcher.peak_bytes <= (4 << 20) + fetcher.reserve
    assert book["open"] == 0 and book["closed"] == 12
    assert helper_threads() == []


def test_no_deadlock_and_exact_bytes_under_many_schedules():
    """Random file sizes, pool sizes, reader counts and writer speeds (small chunks, so that the
    pool is always short): every schedule ends, in order, with the exact bytes and digests."""
    import random

    rng = random.Random(11)
    chunk = 64 << 10
    for round_ in range(40):
        blobs = [os.urandom(rng.choice([0, 1, 100, chunk - 1, chunk, chunk + 1, 5 * chunk + 7, 9 * chunk]))
                 for _ in range(rng.randint(1, 24))]
        book: dict = {}
        files = [StagedFile(f"f{i:02d}", len(b), "", lambda b=b: Tracked(b, book)) for i, b in enumerate(blobs)]
        fetcher = staging.Prefetcher(files, threads=rng.randint(1, 9), chunk=chunk,
                                     buffer_bytes=chunk * rng.randint(1, 6))
        slow = rng.random() < 0.3
        result: dict = {}

        def consume():
            with fetcher:
                for i, b in enumerate(blobs):
                    got, chunks = [], fetcher.read(i)
                    while True:
                        try:
                            got.append(bytes(next(chunks)))
                        except StopIteration as end:
                            result[i] = (b"".join(got) == b, end.value.sha256 == hashlib.sha256(b).hexdigest())
                            break
                        if slow:
                            time.sleep(0.0005)  # another schedule: every one must end, exactly

        t = threading.Thread(target=consume, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), f"round {round_}: the pool is stuck ({len(result)} of {len(blobs)} files)"
        assert all(ok == (True, True) for ok in result.values()) and len(result) == len(blobs), round_
        assert fetcher.peak_bytes <= fetcher.max_buffers * chunk + fetcher.reserve
        assert book.get("open", 0) == 0
    assert helper_threads() == []


def test_a_failing_file_stops_every_reader_and_closes_every_stream(root, keys, engine):
    """XNAT gone for one file half-way: the error names it, all readers stop, every stream is
    closed, no partial bundle or sidecar stays."""
    _, recipient = keys
    book: dict = {}
    big = os.urandom(4 << 20)
    files = [StagedFile(f"S/a{i:02d}.nii", len(big), "", lambda: Tracked(big, book)) for i in range(10)]
    files.append(StagedFile("S/broken.bin", len(big), "", lambda: Tracked(big, book, fail_after=1 << 20)))
    files += [StagedFile(f"S/z{i:02d}.nii", len(big), "", lambda: Tracked(big, book)) for i in range(10)]
    with pytest.raises(XnatUnavailable, match="S/broken.bin"):
        stage_files(files, staging_dir=root, user="alice", recipient=recipient, engine=engine,
                    threads=4, buffer_bytes=8 << 20)
    assert os.listdir(root / "alice") == []
    assert book["open"] == 0 and book["closed"] == book["opened"]
    assert book["opened"] < len(files)  # stopped: files after the failure were not all read
    assert helper_threads() == []


def test_a_hanging_stream_is_closed_under_its_reader(root, keys):
    """One stream never answers (XNAT hangs) while another file fails: staging fails at once,
    the hung stream is closed and its thread ends."""
    _, recipient = keys
    book: dict = {}
    hang = threading.Event()
    data = os.urandom(100_000)
    files = [StagedFile("S/a.dcm", len(data), "", lambda: Tracked(data, book, hang=hang)),
             StagedFile("S/broken.bin", len(data), "", lambda: Tracked(data, book, fail_after=10))]
    with pytest.raises(XnatUnavailable, match="S/broken.bin"):
        stage_files(files, staging_dir=root, user="alice", recipient=recipient, threads=2)
    # the hung read ended because its stream was closed under it, not because it ran out
    assert hang.is_set() and "hang_ran_out" not in book and book["open"] == 0
    assert helper_threads() == []
    assert os.listdir(root / "alice") == []


class Cancelled(Exception):
    pass


def cancel_while_reading(root, recipient, engine, count: int, size: int, **kw) -> dict:
    """Stage *count* files of *size* bytes through a job's cancellable readers, cancelled from
    another thread once staging is under way (the writer's first progress call, or a reader at
    the end of its file, whichever comes first); return what the readers counted.

    No timer: each source holds back its end (the read that says "no more bytes") until the
    job is cancelled, so staging cannot finish before the cancellation, whatever the machine's
    speed or load, and the cancellation always lands while reads are still to come. Without
    the hold, a cancellation after the last read is not staging's to see (the job checks it
    once staging returns), and a timer could land on either side of that read.
    """
    cancelled, under_way = threading.Event(), threading.Event()
    book = {"ends_held": 0, "raised": 0}
    lock = threading.Lock()

    class Reader(io.RawIOBase):
        """The shape of offload.runner.CancellableReader: every read checks the job first."""

        def __init__(self, data):
            self.src = io.BytesIO(data)

        def readable(self):
            return True

        def check(self):
            if cancelled.is_set():
                with lock:
                    book["raised"] += 1
                raise Cancelled("cancelled by user")

        def read(self, n=-1):
            self.check()
            chunk = self.src.read(min(n, 64 << 10))
            if not chunk:
                with lock:
                    book["ends_held"] += 1
                under_way.set()
                assert cancelled.wait(60), "the test never cancelled the job"
                self.check()
            return chunk

    def cancel():  # the user's click, in the server's thread
        if under_way.wait(60):
            cancelled.set()

    data = os.urandom(size)
    files = [StagedFile(f"f{i:02d}", len(data), "", lambda: Reader(data)) for i in range(count)]
    canceller = threading.Thread(target=cancel, name="test-canceller")
    canceller.start()
    try:
        with pytest.raises(Cancelled, match="cancelled by user"):
            stage_files(files, staging_dir=root, user="alice", recipient=recipient, engine=engine,
                        progress=lambda *a: under_way.set(), **kw)
    finally:
        under_way.set()
        canceller.join()
    assert cancelled.is_set() and book["raised"] >= 1
    assert os.listdir(root / "alice") == []
    assert helper_threads() == []
    return book


def test_cancellation_from_the_source_stops_staging(root, keys, engine):
    """The job's reader raises once the job is cancelled: staging ends, nothing stays behind.
    12 files of 3 MiB, 8 readers, a 4 MiB buffer: when the cancel comes, readers are reading,
    waiting for room in the pool or at the end of their file; every one of them stops."""
    _, recipient = keys
    book = cancel_while_reading(root, recipient, engine, 12, 3 << 20, threads=8, buffer_bytes=4 << 20)
    assert book["ends_held"] < 12  # the pool held the readers back: not every file was read


def test_cancellation_of_a_tiny_dataset_is_seen_at_its_end(root, keys, engine):
    """One file of 10 bytes, cancelled after its data was read: the reader pool always makes
    the read that finds a file's end (it fills a buffer until then), so the cancellation is seen
    by staging, not only by the job once staging returned."""
    _, recipient = keys
    book = cancel_while_reading(root, recipient, engine, 1, 10)
    assert book == {"ends_held": 1, "raised": 1}


@pytest.mark.parametrize("engine_name", ["age-cli", "pyrage"])
def test_peak_memory_is_flat_in_the_dataset_size(tmp_path, engine_name):
    """Stage 256 MiB and 1 GiB in 64 files each (zeros, generated) with a 16 MiB buffer, so that
    both fill it: the peak RSS of the staging process stays under 200 MB and does not grow with
    the data (benchmarks/bench_staging.py --memory measures 1 GB vs 5 GB with the defaults)."""
    if engine_name == "age-cli":
        age_cli()
    code = textwrap.dedent("""
        import hashlib, io, sys
        from xnat_bridge import staging
        total, count, root = int(sys.argv[1]), 64, sys.argv[2]
        per = total // count
        class Zeros(io.RawIOBase):
            def __init__(self): self.left = per
            def readable(self): return True
            def read(self, n=-1):
                n = min(self.left, n if n >= 0 else self.left); self.left -= n; return bytes(n)
        files = [staging.StagedFile(f"S{i // 8}/f{i:02d}.nii", per, "", Zeros) for i in range(count)]
        ident, rcpt = staging.generate_keypair()
        info = staging.stage_files(files, staging_dir=root, user="alice", recipient=rcpt,
                                   engine=staging.engine_by_name(sys.argv[3]), buffer_bytes=16 << 20)
        assert info.total_size == per * count
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                print(int(line.split()[1]) // 1024)
    """)
    peaks = []
    for size in (256 << 20, 1 << 30):
        root = tmp_path / f"st{size}"
        root.mkdir()
        out = subprocess.run([sys.executable, "-c", code, str(size), str(root), engine_name],
                             capture_output=True, text=True, check=True,
                             cwd=Path(__file__).resolve().parents[2])
        peaks.append(int(out.stdout.strip()))
        for p in root.rglob("*.tar.age"):
            p.unlink()
    assert max(peaks) < 200, f"peak RSS {peaks} MB"
    assert peaks[1] - peaks[0] < 25, f"peak RSS grows with the data: {peaks} MB for 256 MiB, 1 GiB"


# --------------------------------------------------------------------------- extraction of format 2


GOOD = b"good data"
GOOD_FILES = [{"name": "a.bin", "size": len(GOOD), "sha256": hashlib.sha256(GOOD).hexdigest()}]


def test_trailer_checks(tmp_path, keys, engine):
    identity, recipient = keys
    dest = tmp_path / "dest"
    # a data file that differs from HASHES.json: refused at the end, nothing left
    wrong = evil_bundle(tmp_path / "w.tar.age", recipient, [reg("data/a.bin", b"evil data")])
    with pytest.raises(Conflict, match="a.bin.*HASHES.json"):
        extract_bundle(wrong, identity, dest, engine=engine)
    assert not dest.exists()
    # no trailer: incomplete, nothing usable
    cut = evil_bundle(tmp_path / "c.tar.age", recipient, [reg("data/a.bin", GOOD)], trailer=False)
    with pytest.raises(Conflict, match="incomplete"):
        extract_bundle(cut, identity, dest, engine=engine)
    assert not dest.exists()
    # a member after the trailer
    late = evil_bundle(tmp_path / "l.tar.age", recipient, [reg("data/a.bin", GOOD)])
    plain = pyrage.decrypt(late.read_bytes(), [pyrage.x25519.Identity.from_str(identity)])
    buf = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(plain)) as src, tarfile.open(fileobj=buf, mode="w") as out:
        for m in src.getmembers():
            out.addfile(m, src.extractfile(m))
        info, content = reg("script/late.py", b"print('smuggled')\n")
        out.addfile(info, io.BytesIO(content))
    late.write_bytes(pyrage.encrypt(buf.getvalue(), [pyrage.x25519.Recipient.from_str(recipient)]))
    with pytest.raises(Conflict, match="follows HASHES.json"):
        extract_bundle(late, identity, dest, engine=engine)
    assert not dest.exists()
    # a good one, but not the expected contents or data
    ok = evil_bundle(tmp_path / "ok.tar.age", recipient, [reg("data/a.bin", GOOD)])
    with pytest.raises(Conflict, match="expected"):
        extract_bundle(ok, identity, dest, expected_contents_sha256="3" * 64, engine=engine)
    assert not dest.exists()
    with pytest.raises(Conflict, match="expected"):
        extract_bundle(ok, identity, dest, expected_manifest_sha256="4" * 64, engine=engine)
    assert not dest.exists()
    final = extract_bundle(ok, identity, dest, staging.manifest_sha256(GOOD_FILES), engine=engine)
    assert final["files"][0]["sha256"] == GOOD_FILES[0]["sha256"]


def test_xnat_md5_is_verified_on_extraction(tmp_path, keys, engine):
    identity, recipient = keys
    files = [{**GOOD_FILES[0], "md5": hashlib.md5(b"other").hexdigest()}]
    bad = evil_bundle(tmp_path / "m.tar.age", recipient, [reg("data/a.bin", GOOD)], files)
    with pytest.raises(Conflict, match="a.bin.*md5"):
        extract_bundle(bad, identity, tmp_path / "d", engine=engine)
    assert not (tmp_path / "d").exists()
    # a large file's md5 runs in a helper thread: same verdicts, thread ended
    big = os.urandom(9 << 20)
    entry = {"name": "big.bin", "size": len(big), "sha256": hashlib.sha256(big).hexdigest(),
             "md5": hashlib.md5(big).hexdigest()}
    ok = evil_bundle(tmp_path / "b.tar.age", recipient, [reg("data/big.bin", big)], [entry])
    assert extract_bundle(ok, identity, tmp_path / "d", engine=engine)["files"][0]["md5"] == entry["md5"]
    assert helper_threads() == []
    wrong = evil_bundle(tmp_path / "x.tar.age", recipient, [reg("data/big.bin", big)],
                        [{**entry, "md5": "0" * 32}])
    with pytest.raises(Conflict, match="md5"):
        extract_bundle(wrong, identity, tmp_path / "e", engine=engine)
    assert not (tmp_path / "e").exists() and helper_threads() == []
    # against the digests its staging computed (the worker's call), XNAT's md5 is not checked
    # again: every file's sha256 must match them, and the staging verified the md5 of those bytes
    wrong_md5_right_bytes = evil_bundle(tmp_path / "y.tar.age", recipient, [reg("data/big.bin", big)],
                                        [{**entry, "md5": "0" * 32}])
    final = extract_bundle(wrong_md5_right_bytes, identity, tmp_path / "f", staging.manifest_sha256([entry]),
                           engine=engine)
    assert final["files"][0]["sha256"] == entry["sha256"]
    other = os.urandom(len(big))
    swapped = evil_bundle(tmp_path / "z.tar.age", recipient, [reg("data/big.bin", other)],
                          [{**entry, "sha256": hashlib.sha256(other).hexdigest()}])
    with pytest.raises(Conflict, match="expected"):
        extract_bundle(swapped, identity, tmp_path / "g", staging.manifest_sha256([entry]), engine=engine)
    assert not (tmp_path / "g").exists()


def test_format_1_bundles_and_bad_heads_are_refused(tmp_path, keys, engine):
    identity, recipient = keys
    for doc, match in (
        ({"format": "xnat-hpc-bundle", "format_version": 1, "files": GOOD_FILES, "extra": [],
          "manifest_sha256": staging.manifest_sha256(GOOD_FILES)}, "v2"),
        ({"format": "xnat-hpc-bundle", "format_version": 2, "extra": [], "metadata": {},
          "files": [{"name": "b", "size": 1, "md5": ""}, {"name": "a", "size": 1, "md5": ""}]}, "sorted"),
        ({"format": "xnat-hpc-bundle", "format_version": 2, "extra": [], "metadata": {},
          "files": [{"name": "a", "size": 1, "md5": ""}, {"name": "a", "size": 1, "md5": ""}]}, "twice"),
        ({"format": "xnat-hpc-bundle", "format_version": 2, "files": [], "metadata": {},
          "extra": [{"name": "HASHES.json", "size": 1, "sha256": "0" * 64}]}, "clashes"),
    ):
        raw = staging.canonical_json(doc)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info, content = reg("MANIFEST.json", raw)
            tar.addfile(info, io.BytesIO(content))
        path = tmp_path / "old.tar.age"
        path.write_bytes(pyrage.encrypt(buf.getvalue(), [pyrage.x25519.Recipient.from_str(recipient)]))
        with pytest.raises(InvalidRequest, match=match):
            extract_bundle(path, identity, tmp_path / "d", engine=engine)
        assert not (tmp_path / "d").exists()
