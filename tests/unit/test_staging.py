"""Encrypted staging bundles (xnat_bridge.staging): format, safety rules, age CLI interop.

Everything lives under tmp_path. The age command-line tool (Debian package
``age``) must be installed: the interoperability tests fail without it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import stat
import subprocess
import sys
import tarfile
import textwrap
import threading
from pathlib import Path

import pyrage
import pytest

from xnat_bridge import staging
from xnat_bridge.errors import CommandFailed, Conflict, InvalidRequest, NotFound, PermissionDenied
from xnat_bridge.staging import (
    AgeIdentity,
    StagedFile,
    decrypt_to_directory,
    encrypt_directory,
    extract_bundle,
    find_bundle,
    generate_keypair,
    stage_files,
)

MARKER = b"PLAINTEXT-MARKER-7f3c1e"


def age_cli() -> str:
    path = shutil.which("age") or "/usr/bin/age"
    assert os.access(path, os.X_OK), "the age command-line tool is missing: apt-get install age"
    return path


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def sfile(name: str, data: bytes, sha: str | None = None) -> StagedFile:
    return StagedFile(name, len(data), sha or hashlib.sha256(data).hexdigest(),
                      lambda: io.BytesIO(data))


def dataset() -> dict[str, bytes]:
    return {
        "S1/E1/scans/1/NIFTI/t1.nii.gz": os.urandom(300_000),
        "S1/E1/scans/2/DICOM/0001.dcm": b"DICM" + MARKER + os.urandom(5000),
        "S2/E2/resources/NOTES/empty.txt": b"",
        "S2/E2/resources/NOTES/n\u00e4me with spaces.txt": b"note\n",
        "S3/" + "long/" * 40 + "deep.bin": os.urandom(1234),
    }


@pytest.fixture(autouse=True, params=["cli", "pyrage"])
def age_engine(request) -> staging.AgeEngine:
    """Every test runs with both engines: the age CLI in a child process, and pyrage."""
    if request.param == "cli":
        age_cli()
        return staging.AgeCliEngine()  # age looked up on PATH
    return staging.PyrageEngine()


_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _children_before():
    """Children this process already had (session servers of other tests) are not ours."""
    _BEFORE.clear()
    _BEFORE.update(_all_children())
    yield


def child_processes() -> list[int]:
    """Live or zombie children of this process started during the current test."""
    return [pid for pid in _all_children() if pid not in _BEFORE]


def _all_children() -> list[int]:
    me = str(os.getpid())
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                found.append(int(pid))
    return found


@pytest.fixture
def keys():
    return generate_keypair()


@pytest.fixture
def staging_root(tmp_path) -> Path:
    root = tmp_path / "staging"
    root.mkdir()
    return root


def stage(root: Path, recipient: str, data: dict[str, bytes] | None = None, **kw):
    data = dataset() if data is None else data
    files = [sfile(n, b) for n, b in data.items()]
    return stage_files(files, staging_dir=root, user="alice", recipient=recipient, **kw), data


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if not p.is_dir())


def write_keyfile(tmp_path: Path, identity: str) -> Path:
    """For the CLI tests only: the identity in a 0600 file inside tmp_path."""
    key = tmp_path / "keys" / "identity.txt"
    key.parent.mkdir(mode=0o700)
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(identity + "\n")
    return key


def evil_bundle(path: Path, recipient: str, members: list[tuple[tarfile.TarInfo, bytes]],
                manifest_files: list[dict] | None = None, *, trailer: bool = True) -> Path:
    """A hand-made bundle (format 2): a valid MANIFEST.json (listing data/a.bin), then *members*,
    then (with *trailer*) a HASHES.json with the sha256 of the good data."""
    good = b"good data"
    files = manifest_files if manifest_files is not None else [
        {"name": "a.bin", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()}]
    head = {"format": staging.FORMAT, "format_version": staging.FORMAT_VERSION,
            "files": [{"name": f["name"], "size": f["size"], "md5": f.get("md5", "")} for f in files],
            "extra": [], "metadata": {}, "file_count": len(files),
            "total_size": sum(f["size"] for f in files)}
    raw = staging.canonical_json(head)
    hashes = {"format": "xnat-hpc-bundle-hashes", "format_version": staging.FORMAT_VERSION,
              "contents_sha256": hashlib.sha256(raw).hexdigest(),
              "manifest_sha256": staging.manifest_sha256(files),
              "files": [{"name": f["name"], "sha256": f["sha256"]} for f in files]}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(staging.MANIFEST_NAME)
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
        for info, content in members:
            tar.addfile(info, io.BytesIO(content) if info.isreg() else None)
        if trailer:
            info, content = reg(staging.HASHES_NAME, staging.canonical_json(hashes))
            tar.addfile(info, io.BytesIO(content))
    path.write_bytes(pyrage.encrypt(buf.getvalue(), [pyrage.x25519.Recipient.from_str(recipient)]))
    return path


def reg(name: str, content: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def special(name: str, kind: bytes, linkname: str = "") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info, b""


# --------------------------------------------------------------------------- round trip


def test_round_trip_bytes_manifest_and_modes(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys
    script = b"import os\nprint(os.environ['DATASET_DIR'])\n"
    info, data = stage(staging_root, recipient, metadata={"script_sha256": "ab" * 32, "job": "j1"},
                       extra_members={"script/train.py": script}, engine=age_engine)
    assert info.path == staging_root / "alice" / f"{info.bundle_id}.tar.age"
    assert info.recipient == recipient and info.size == info.path.stat().st_size
    assert info.manifest_sha256 == staging.manifest_sha256([sfile(n, b) for n, b in data.items()])

    dest = tmp_path / "node-local" / "dataset"
    dest.parent.mkdir()
    manifest = extract_bundle(info.path, identity, dest, expected_manifest_sha256=info.manifest_sha256,
                              engine=age_engine)
    assert manifest["manifest_sha256"] == info.manifest_sha256
    assert manifest["metadata"] == {"script_sha256": "ab" * 32, "job": "j1"}
    assert [f["name"] for f in manifest["files"]] == sorted(data)
    assert manifest["extra"] == [{"name": "script/train.py", "size": len(script),
                                  "sha256": hashlib.sha256(script).hexdigest()}]
    for name, content in data.items():
        assert (dest / "data" / name).read_bytes() == content
    assert (dest / "script" / "train.py").read_bytes() == script
    assert json.loads((dest / "MANIFEST.json").read_bytes()) == manifest
    # nothing else, and private modes (umask 077)
    expected = {f"data/{n}" for n in data} | {"script/train.py", "MANIFEST.json"}
    assert {str(p.relative_to(dest)) for p in all_files(dest)} == expected
    for p in dest.rglob("*"):
        assert mode(p) == (0o700 if p.is_dir() else 0o600), p
    assert mode(dest) == 0o700


def test_age_cli_lists_our_bundle(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys
    info, data = stage(staging_root, recipient, extra_members={"script/train.py": b"print(1)\n"},
                       engine=age_engine)
    key = write_keyfile(tmp_path, identity)
    dec = subprocess.run([age_cli(), "-d", "-i", str(key), str(info.path)], capture_output=True,
                         check=True).stdout
    listing = subprocess.run(["tar", "-t"], input=dec, capture_output=True, check=True)
    names = listing.stdout.decode().splitlines()
    assert names[0] == "MANIFEST.json"
    # format 2: the sha256 of every file, computed while staging, follows the data
    assert names[1:-1] == [f"data/{n}" for n in sorted(data)] + ["script/train.py"]
    assert names[-1] == "HASHES.json"
    # and GNU tar reads the same bytes back
    one = "S1/E1/scans/1/NIFTI/t1.nii.gz"
    out = subprocess.run(["tar", "-xO", f"data/{one}"], input=dec, capture_output=True, check=True)
    assert out.stdout == data[one]


def test_age_cli_encrypted_tar_is_readable(tmp_path, keys, age_engine):
    identity, recipient = keys
    src = tmp_path / "results"
    (src / "ckpt" / "epoch1").mkdir(parents=True)
    (src / "empty-dir").mkdir()
    (src / "metrics.json").write_text('{"loss": 0.1}')
    (src / "ckpt" / "epoch1" / "model.pt").write_bytes(os.urandom(200_000))
    out = tmp_path / "results.tar.age"
    tar = subprocess.Popen(["tar", "-cf", "-", "-C", str(src), "."], stdout=subprocess.PIPE)
    subprocess.run([age_cli(), "-r", recipient, "-o", str(out)], stdin=tar.stdout, check=True)
    tar.stdout.close()
    assert tar.wait() == 0

    dest = tmp_path / "collected"
    result = decrypt_to_directory(out, identity, dest, engine=age_engine)
    assert sorted(f["name"] for f in result["files"]) == ["ckpt/epoch1/model.pt", "metrics.json"]
    assert "empty-dir" in result["directories"]
    for f in result["files"]:
        assert (dest / f["name"]).read_bytes() == (src / f["name"]).read_bytes()
        assert f["sha256"] == hashlib.sha256((src / f["name"]).read_bytes()).hexdigest()
    assert (dest / "empty-dir").is_dir()


def test_encrypt_directory_round_trip_and_age_cli(tmp_path, keys, age_engine):
    identity, recipient = keys
    src = tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "weights.bin").write_bytes(os.urandom(70_000))
    (src / "log.txt").write_bytes(MARKER)
    (src / "best.bin").symlink_to("sub/weights.bin")  # inside: archived as a copy
    enc = tmp_path / "sealed" / "results.tar.age"
    enc.parent.mkdir()
    res = encrypt_directory(src, recipient, enc, engine=age_engine)
    assert mode(enc) == 0o600 and res["size"] == enc.stat().st_size
    assert MARKER not in enc.read_bytes()
    assert os.listdir(enc.parent) == ["results.tar.age"]
    assert sorted(f["name"] for f in res["files"]) == ["best.bin", "log.txt", "sub/weights.bin"]

    key = write_keyfile(tmp_path, identity)
    dec = subprocess.run([age_cli(), "-d", "-i", str(key), str(enc)], capture_output=True, check=True)
    names = subprocess.run(["tar", "-t"], input=dec.stdout, capture_output=True, check=True)
    assert set(names.stdout.decode().split()) == {"best.bin", "log.txt", "sub/", "sub/weights.bin"}

    dest = tmp_path / "back"
    back = decrypt_to_directory(enc, AgeIdentity(identity), dest, engine=age_engine)
    assert back["files"] == res["files"]
    assert (dest / "best.bin").read_bytes() == (src / "sub" / "weights.bin").read_bytes()
    assert not (dest / "best.bin").is_symlink()
    assert mode(dest / "sub") == 0o700 and mode(dest / "log.txt") == 0o600


def test_encrypt_directory_refuses_outside_symlink_and_bad_targets(tmp_path, keys, age_engine):
    _, recipient = keys
    src = tmp_path / "out"
    src.mkdir()
    (src / "ok.txt").write_text("ok")
    secret = tmp_path / "elsewhere.txt"
    secret.write_bytes(MARKER)
    (src / "leak").symlink_to(secret)
    enc = tmp_path / "r.tar.age"
    with pytest.raises(InvalidRequest, match="leak"):
        encrypt_directory(src, recipient, enc, engine=age_engine)
    assert not enc.exists() and not (tmp_path / "r.tar.age.partial").exists()
    (src / "leak").unlink()
    with pytest.raises(InvalidRequest, match="outside the directory"):
        encrypt_directory(src, recipient, src / "r.tar.age", engine=age_engine)
    enc.write_bytes(b"already here")
    with pytest.raises(Conflict, match="already exists"):
        encrypt_directory(src, recipient, enc, engine=age_engine)


# --------------------------------------------------------------------------- staging rules


def test_no_plaintext_in_staging_dir(staging_root, keys, age_engine):
    _, recipient = keys
    info, _ = stage(staging_root, recipient, extra_members={"script/train.py": MARKER},
                    engine=age_engine)
    found = all_files(staging_root)
    assert found == sorted([info.path, info.path.with_name(f"{info.bundle_id}.json")])
    for path in found:
        assert MARKER not in path.read_bytes(), path
    sidecar = json.loads(info.path.with_name(f"{info.bundle_id}.json").read_text())
    assert sidecar["recipient"] == info.recipient and sidecar["size"] == info.size
    assert sidecar["manifest_sha256"] == info.manifest_sha256
    assert "SECRET" not in json.dumps(sidecar).upper()


def test_modes(staging_root, keys, age_engine):
    _, recipient = keys
    info, _ = stage(staging_root, recipient, engine=age_engine)
    assert mode(staging_root / "alice") == 0o700
    assert mode(info.path) == 0o600
    assert mode(info.path.with_name(f"{info.bundle_id}.json")) == 0o600


@pytest.mark.parametrize("how", ["sha256", "shorter", "longer"])
def test_changed_file_conflict_leaves_nothing(staging_root, keys, how, age_engine):
    _, recipient = keys
    good = sfile("S1/ok.bin", os.urandom(3_000_000))
    data = os.urandom(2_500_000)
    if how == "sha256":
        bad = sfile("S1/changed.bin", data, sha=hashlib.sha256(b"other").hexdigest())
    else:
        stated = len(data) + (1000 if how == "shorter" else -1000)
        bad = StagedFile("S1/changed.bin", stated, hashlib.sha256(data).hexdigest(),
                         lambda: io.BytesIO(data))
    with pytest.raises(Conflict, match="S1/changed.bin") as exc:
        stage_files([good, bad], staging_dir=staging_root, user="alice", recipient=recipient,
                    engine=age_engine)
    assert exc.value.item == "S1/changed.bin" or "S1/changed.bin" in str(exc.value)
    assert os.listdir(staging_root) == ["alice"]
    assert os.listdir(staging_root / "alice") == []


def helper_threads() -> list[str]:
    return [t.name for t in threading.enumerate()
            if t.name.startswith(("bundle-reader", "age-decrypt", "bundle-fetch", "bundle-md5"))]


def test_source_error_propagates_and_cleans_up(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys

    def gone():
        raise FileNotFoundError(2, "No such file", "/mnt/xnat/P/arc001/gone.dcm")

    files = [sfile("a.bin", os.urandom(2_000_000)), StagedFile("b.bin", 10, "0" * 64, gone)]
    with pytest.raises(FileNotFoundError):
        stage_files(files, staging_dir=staging_root, user="alice", recipient=recipient,
                    engine=age_engine)
    assert os.listdir(staging_root / "alice") == []
    assert helper_threads() == []
    # and extraction threads end after a refusal half-way through a large bundle
    info, _ = stage(staging_root, recipient, data={"big.bin": os.urandom(8_000_000)}, engine=age_engine)
    with pytest.raises(Conflict):
        extract_bundle(info.path, identity, tmp_path / "d", expected_manifest_sha256="2" * 64,
                       engine=age_engine)
    assert helper_threads() == []
    assert child_processes() == []  # age reaped, no zombie


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "a//b", "a/./b", "./a", "a/",
                                  "", "a\\b", "a\x00b", ".."])
def test_bad_names_refused(staging_root, keys, name, age_engine):
    _, recipient = keys
    with pytest.raises(InvalidRequest) as exc:
        stage_files([sfile(name, b"x")], staging_dir=staging_root, user="alice", recipient=recipient,
                    engine=age_engine)
    assert repr(name) in str(exc.value)
    assert os.listdir(staging_root) == []


@pytest.mark.parametrize("extra", ["MANIFEST.json", "data/x.py", "../train.py", "/train.py"])
def test_bad_extra_member_names(staging_root, keys, extra, age_engine):
    _, recipient = keys
    with pytest.raises(InvalidRequest):
        stage(staging_root, recipient, extra_members={extra: b"print(1)"}, engine=age_engine)
    assert os.listdir(staging_root) == []


def test_duplicate_names_and_bad_digests_refused(staging_root, keys, age_engine):
    _, recipient = keys
    with pytest.raises(InvalidRequest, match="twice"):
        stage_files([sfile("a", b"1"), sfile("a", b"2")], staging_dir=staging_root, user="alice",
                    recipient=recipient, engine=age_engine)
    with pytest.raises(InvalidRequest, match="sha256"):
        stage_files([StagedFile("a", 1, "not-a-digest", lambda: io.BytesIO(b"1"))],
                    staging_dir=staging_root, user="alice", recipient=recipient, engine=age_engine)
    with pytest.raises(InvalidRequest, match="user name"):
        stage_files([sfile("a", b"1")], staging_dir=staging_root, user="../bob", recipient=recipient,
                    engine=age_engine)


def test_group_writable_user_dir_refused(staging_root, keys, age_engine):
    _, recipient = keys
    (staging_root / "alice").mkdir()
    os.chmod(staging_root / "alice", 0o770)
    with pytest.raises(PermissionDenied, match="chmod 700"):
        stage(staging_root, recipient, engine=age_engine)
    with pytest.raises(PermissionDenied):
        find_bundle(staging_root, "alice", "0" * 64)
    assert os.listdir(staging_root / "alice") == []


def test_user_dir_of_another_owner_or_symlink_refused(tmp_path, staging_root, keys, monkeypatch,
                                                     age_engine):
    _, recipient = keys
    (staging_root / "alice").mkdir(mode=0o700)
    real_uid = os.geteuid()
    monkeypatch.setattr(os, "geteuid", lambda: real_uid + 4242)
    with pytest.raises(PermissionDenied, match="belongs to uid"):
        stage(staging_root, recipient, engine=age_engine)
    monkeypatch.undo()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (staging_root / "bob").symlink_to(elsewhere)
    with pytest.raises(PermissionDenied, match="symbolic link"):
        stage_files([sfile("a", b"1")], staging_dir=staging_root, user="bob", recipient=recipient,
                    engine=age_engine)
    assert os.listdir(elsewhere) == []


def test_missing_staging_root(tmp_path, keys, age_engine):
    with pytest.raises(NotFound, match="administrator"):
        stage(tmp_path / "nope", keys[1], engine=age_engine)


class ManualClock:
    """A clock that moves only when the test moves it (STYLE 23: no sleeping in tests)."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_progress_throttle_follows_its_clock():
    calls: list[tuple] = []
    clock = ManualClock(0.0)
    tracker = staging.common.Progress(lambda *a: calls.append(a), 300, 3, clock=clock)
    tracker.add(100)  # the first tick is reported at once
    clock.t = staging.PROGRESS_INTERVAL / 2
    tracker.add(100, 1)  # too soon
    assert calls == [(100, 0, 300, 3)]
    clock.t = staging.PROGRESS_INTERVAL
    tracker.add(0, 1)  # an interval after the last call
    tracker.add(100)  # too soon again
    tracker.finish()  # the final call, whatever the clock says
    assert calls == [(100, 0, 300, 3), (200, 2, 300, 3), (300, 2, 300, 3)]


class SteppingClock(ManualClock):
    """A clock that is *step* seconds later each time it is read."""

    def __init__(self, step: float):
        super().__init__()
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@pytest.mark.parametrize("clock", ["standing", "stepping"])
def test_progress_called_throttled_and_final(monkeypatch, staging_root, keys, age_engine, clock):
    """stage_files reports through the throttle, on its clock, in order: a clock that stands
    still gives the first tick and the final call only; one that moves an interval each time
    it is read reports every tick (20 files of one chunk each: their bytes, then their end)."""
    _, recipient = keys
    tick = ManualClock() if clock == "standing" else SteppingClock(staging.PROGRESS_INTERVAL)
    monkeypatch.setattr(staging.common.Progress, "clock", staticmethod(tick))
    calls: list[tuple] = []
    size = 200_000
    data = {f"f{i:02d}": os.urandom(size) for i in range(20)}
    files = [StagedFile(n, len(b), hashlib.sha256(b).hexdigest(), lambda b=b: io.BytesIO(b))
             for n, b in data.items()]
    stage_files(files, staging_dir=staging_root, user="alice", recipient=recipient,
                progress=lambda *a: calls.append(a), engine=age_engine)
    total = size * 20
    final = (total, 20, total, 20)
    if clock == "standing":
        assert calls == [(size, 0, total, 20), final]
    else:
        ticks = [c for i in range(1, 21) for c in ((size * i, i - 1, total, 20), (size * i, i, total, 20))]
        assert calls == ticks + [final]


def test_find_bundle_reuse(staging_root, keys, age_engine):
    _, recipient = keys
    data = dataset()
    files = [sfile(n, b) for n, b in data.items()]
    digest = staging.manifest_sha256(files)
    assert find_bundle(staging_root, "alice", digest) is None  # no user dir yet
    script = {"script/train.py": b"print(1)\n"}
    info = stage_files(files, staging_dir=staging_root, user="alice", recipient=recipient,
                       extra_members=script, engine=age_engine)
    assert find_bundle(staging_root, "alice", digest) == info
    assert find_bundle(staging_root, "alice", "sha256:" + digest.upper()) == info
    assert find_bundle(staging_root, "alice", digest, recipient=recipient) == info
    assert find_bundle(staging_root, "alice", digest, recipient=generate_keypair()[1]) is None
    want = staging.contents_sha256(files, None, script)
    assert info.contents_sha256 == want
    assert find_bundle(staging_root, "alice", digest, contents_sha256=want) == info
    other = staging.contents_sha256(files, None, {"script/train.py": b"print(2)\n"})
    assert find_bundle(staging_root, "alice", digest, contents_sha256=other) is None
    assert find_bundle(staging_root, "alice", "0" * 64) is None
    assert find_bundle(staging_root, "bob", digest) is None
    # an incomplete bundle is never offered
    info.path.rename(info.path.with_name(info.path.name + ".partial"))
    assert find_bundle(staging_root, "alice", digest) is None


def test_keys_never_shown(staging_root, keys, caplog, age_engine):
    identity, recipient = keys
    assert identity.startswith("AGE-SECRET-KEY-1") and recipient.startswith("age1")
    holder = AgeIdentity(identity)
    assert holder.recipient == recipient and holder.secret() == identity
    assert identity not in repr(holder) and identity not in str(holder) and identity not in f"{holder}"
    with pytest.raises(TypeError):
        pickle.dumps(holder)
    with pytest.raises(InvalidRequest) as exc:
        stage(staging_root, identity, engine=age_engine)  # a secret passed as recipient
    assert identity not in str(exc.value)
    with pytest.raises(InvalidRequest) as exc:
        AgeIdentity(identity[:-3] + "QQQ")
    assert identity[20:] not in str(exc.value)
    with pytest.raises(InvalidRequest, match="secret key"):
        stage(staging_root, recipient, metadata={"oops": identity}, engine=age_engine)
    caplog.set_level(logging.DEBUG)
    info, _ = stage(staging_root, recipient, engine=age_engine)
    extract_bundle(info.path, holder, staging_root.parent / "x", engine=age_engine)
    assert identity not in caplog.text and identity.lower() not in caplog.text.lower()


def test_age_keyfile_content_accepted(tmp_path, keys):
    identity, recipient = keys
    text = f"# created: 2026-01-01T00:00:00Z\n# public key: {recipient}\n{identity}\n"
    assert AgeIdentity(text).recipient == recipient


# --------------------------------------------------------------------------- extraction rules


EVIL = {
    "parent": lambda tmp: [reg("data/a.bin", b"good data"), reg("../x", b"evil")],
    "nested-parent": lambda tmp: [reg("data/a.bin", b"good data"), reg("data/../../x", b"evil")],
    "absolute": lambda tmp: [reg("data/a.bin", b"good data"), reg(str(tmp / "x"), b"evil")],
    "symlink": lambda tmp: [special("data/a.bin", tarfile.SYMTYPE, str(tmp / "x"))],
    "symlink-then-write": lambda tmp: [special("data", tarfile.SYMTYPE, str(tmp)),
                                       reg("data/a.bin", b"good data")],
    "hardlink": lambda tmp: [special("data/a.bin", tarfile.LNKTYPE, "../../x")],
    "fifo": lambda tmp: [special("data/a.bin", tarfile.FIFOTYPE)],
    "device": lambda tmp: [special("data/a.bin", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("kind", sorted(EVIL))
def test_malicious_members_refused(tmp_path, keys, kind, age_engine):
    identity, recipient = keys
    outside = tmp_path / "outside"
    outside.mkdir()
    bundle = evil_bundle(tmp_path / "evil.tar.age", recipient, EVIL[kind](outside))
    before = sorted(tmp_path.rglob("*"))
    dest = tmp_path / "dest"
    with pytest.raises(InvalidRequest):
        extract_bundle(bundle, identity, dest, engine=age_engine)
    assert not dest.exists()
    assert sorted(tmp_path.rglob("*")) == before and os.listdir(outside) == []
    with pytest.raises(InvalidRequest):
        decrypt_to_directory(bundle, identity, dest, engine=age_engine)
    assert not dest.exists()
    assert sorted(tmp_path.rglob("*")) == before and os.listdir(outside) == []


def test_existing_symlink_in_dest_not_followed(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys
    info, _ = stage(staging_root, recipient, engine=age_engine)
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "data").symlink_to(outside)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        extract_bundle(info.path, identity, dest, engine=age_engine)
    assert os.listdir(outside) == []
    assert os.listdir(dest) == ["data"]  # only what was there before


def test_member_not_in_manifest_refused(tmp_path, keys, age_engine):
    identity, recipient = keys
    bundle = evil_bundle(tmp_path / "b.tar.age", recipient,
                         [reg("data/a.bin", b"good data"), reg("data/extra.bin", b"smuggled")])
    with pytest.raises(Conflict, match="not listed"):
        extract_bundle(bundle, identity, tmp_path / "dest", engine=age_engine)
    assert not (tmp_path / "dest").exists()
    dup = evil_bundle(tmp_path / "d.tar.age", recipient,
                      [reg("data/a.bin", b"good data"), reg("data/a.bin", b"good data")])
    with pytest.raises(Conflict):
        extract_bundle(dup, identity, tmp_path / "dest", engine=age_engine)
    assert not (tmp_path / "dest").exists()


@pytest.mark.parametrize("case", ["content", "size", "missing"])
def test_manifest_mismatch_conflict(tmp_path, keys, case, age_engine):
    identity, recipient = keys
    members = {"content": [reg("data/a.bin", b"evil data")],
               "size": [reg("data/a.bin", b"good data, longer")],
               "missing": []}[case]
    bundle = evil_bundle(tmp_path / "b.tar.age", recipient, members)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(Conflict, match="a.bin"):
        extract_bundle(bundle, identity, dest, engine=age_engine)
    assert os.listdir(dest) == ["keep.txt"]  # ours removed, the rest untouched


def test_expected_manifest_digest(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys
    info, _ = stage(staging_root, recipient, engine=age_engine)
    with pytest.raises(Conflict, match="expected"):
        extract_bundle(info.path, identity, tmp_path / "d", expected_manifest_sha256="1" * 64,
                       engine=age_engine)
    assert not (tmp_path / "d").exists()


def test_wrong_identity_clear_error(tmp_path, staging_root, keys, age_engine):
    _, recipient = keys
    info, _ = stage(staging_root, recipient, engine=age_engine)
    other, _ = generate_keypair()
    with pytest.raises(PermissionDenied, match="identity") as exc:
        extract_bundle(info.path, other, tmp_path / "d", engine=age_engine)
    assert other not in str(exc.value)
    assert not (tmp_path / "d").exists()
    with pytest.raises(PermissionDenied, match="identity"):
        decrypt_to_directory(info.path, other, tmp_path / "d", engine=age_engine)
    with pytest.raises(InvalidRequest, match="AGE-SECRET-KEY"):
        extract_bundle(info.path, "not a key", tmp_path / "d", engine=age_engine)


def test_truncated_or_corrupt_bundle(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys
    info, _ = stage(staging_root, recipient, data={"big.bin": os.urandom(1_000_000)}, engine=age_engine)
    raw = info.path.read_bytes()
    cut = tmp_path / "cut.tar.age"
    cut.write_bytes(raw[:-70_000])
    with pytest.raises(Conflict):
        extract_bundle(cut, identity, tmp_path / "d1", engine=age_engine)
    assert not (tmp_path / "d1").exists()
    flipped = bytearray(raw)
    flipped[-10] ^= 1
    bad = tmp_path / "bad.tar.age"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(Conflict, match="corrupt"):
        extract_bundle(bad, identity, tmp_path / "d2", engine=age_engine)
    assert not (tmp_path / "d2").exists()
    junk = tmp_path / "junk.tar.age"
    junk.write_bytes(b"not age at all" * 100)
    with pytest.raises(InvalidRequest):
        extract_bundle(junk, identity, tmp_path / "d3", engine=age_engine)


def test_not_a_bundle(tmp_path, keys, age_engine):
    identity, recipient = keys
    plain = tmp_path / "plain.tar.age"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info, content = reg("readme.txt", b"hello")
        tar.addfile(info, io.BytesIO(content))
    plain.write_bytes(pyrage.encrypt(buf.getvalue(), [pyrage.x25519.Recipient.from_str(recipient)]))
    with pytest.raises(InvalidRequest, match="MANIFEST.json"):
        extract_bundle(plain, identity, tmp_path / "d", engine=age_engine)
    assert not (tmp_path / "d").exists()


def test_memory_stays_bounded(tmp_path, staging_root, keys, age_engine):
    """Stage and extract 256 MiB in a child process: peak RSS well under 200 MB."""
    code = textwrap.dedent(f"""
        import hashlib, io, sys
        from xnat_bridge import staging
        size = 256 << 20
        class Zeros(io.RawIOBase):
            def __init__(self): self.left = size
            def readable(self): return True
            def read(self, n=-1):
                n = min(self.left, n if n >= 0 else self.left); self.left -= n; return bytes(n)
        h = hashlib.sha256()
        for _ in range(256): h.update(bytes(1 << 20))
        ident, rcpt = staging.generate_keypair()
        engine = staging.engine_by_name({age_engine.name!r})
        f = staging.StagedFile("zeros.bin", size, h.hexdigest(), Zeros)
        info = staging.stage_files([f], staging_dir={str(staging_root)!r}, user="alice", recipient=rcpt,
                                   engine=engine)
        staging.extract_bundle(info.path, ident, {str(tmp_path / "out")!r}, engine=engine)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                print(int(line.split()[1]) // 1024)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    peak_mb = int(out.stdout.strip())
    assert peak_mb < 200, f"peak RSS {peak_mb} MB"
    assert (tmp_path / "out" / "data" / "zeros.bin").stat().st_size == 256 << 20


# --------------------------------------------------------------------------- engines


def test_engine_selection(tmp_path, staging_root, keys, monkeypatch, age_engine):
    identity, recipient = keys
    monkeypatch.setenv("PATH", str(tmp_path))  # no age on PATH
    assert isinstance(staging.engine_by_name("auto"), staging.PyrageEngine)  # falls back to pyrage
    info, data = stage(staging_root, recipient)  # no engine=: the default engine
    manifest = extract_bundle(info.path, identity, tmp_path / "d")
    assert manifest["file_count"] == len(data)
    with pytest.raises(NotFound, match="age command-line tool"):
        stage(staging_root, recipient, engine=staging.engine_by_name("age-cli"))
    with pytest.raises(ValueError, match="bogus"):
        staging.engine_by_name("bogus")


@pytest.mark.parametrize("age_engine", ["cli"], indirect=True)  # only the CLI engine has an age process
def test_age_process_failure_removes_partial(tmp_path, staging_root, keys, age_engine):
    _, recipient = keys
    fake = tmp_path / "bin" / "age"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nhead -c 100000 > /dev/null\necho 'age: error: simulated failure' >&2\n"
                    "exit 3\n")
    fake.chmod(0o700)
    failing = staging.AgeCliEngine(str(fake))
    with pytest.raises(CommandFailed, match="simulated failure") as exc:
        stage(staging_root, recipient, data={"big.bin": os.urandom(4_000_000)}, engine=failing)
    assert exc.value.returncode == 3
    assert os.listdir(staging_root / "alice") == []
    assert child_processes() == []
    # a failing decryption process: a clear error, nothing extracted
    info, _ = stage(staging_root, recipient, engine=age_engine)
    with pytest.raises(CommandFailed, match="simulated failure"):
        extract_bundle(info.path, keys[0], tmp_path / "d", engine=failing)
    assert not (tmp_path / "d").exists()
    assert child_processes() == []


def test_disk_full_removes_partial(tmp_path, keys, age_engine):
    """ENOSPC on a 1 MiB tmpfs: OSError ENOSPC, no partial file left, age reaped."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    _, recipient = keys
    root = tmp_path / "small"
    root.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(root)], check=True)
    try:
        with pytest.raises(OSError) as exc:
            stage(root, recipient, data={"big.bin": os.urandom(3_000_000)}, engine=age_engine)
        assert exc.value.errno == errno.ENOSPC
        assert os.listdir(root / "alice") == []
        assert child_processes() == []
        info, _ = stage(root, recipient, data={"small.bin": os.urandom(100_000)},
                        engine=age_engine)  # room again
        assert info.path.exists()
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_identity_never_on_age_command_line_or_environment(tmp_path, staging_root, keys, age_engine):
    identity, recipient = keys
    argv = staging.age_cli.decrypt_argv("/usr/bin/age", 7)
    assert argv == ["/usr/bin/age", "-d", "-i", "/dev/fd/7"]
    assert staging.age_cli.encrypt_argv("/usr/bin/age", recipient) == ["/usr/bin/age", "-r", recipient]
    with pytest.raises(InvalidRequest):
        staging.age_cli.encrypt_argv("/usr/bin/age", identity)
    if not isinstance(age_engine, staging.AgeCliEngine):
        return
    info, _ = stage(staging_root, recipient, data={"big.bin": os.urandom(8_000_000)}, engine=age_engine)
    dec = staging.age_cli.CliDecryptor(age_cli(), info.path, identity)
    try:
        pid = dec._proc.pid
        secret = identity.encode()
        for what in ("cmdline", "environ"):
            with open(f"/proc/{pid}/{what}", "rb") as f:
                assert secret not in f.read()
        assert dec.reader.read(512)  # it decrypts: the identity came through the pipe
    finally:
        dec.abort()
    assert child_processes() == []


def test_engine_objects_named_and_picklable(age_engine):
    """The plug point: engines chosen by name, the CLI when installed, small picklable objects."""
    assert staging.engine_by_name("pyrage") == staging.PyrageEngine()
    assert staging.engine_by_name("age-cli") == staging.AgeCliEngine()
    assert staging.default_engine() == staging.AgeCliEngine(shutil.which("age"))
    assert staging.engine_by_name("auto") == staging.default_engine()
    assert isinstance(age_engine, staging.AgeEngine)
    assert pickle.loads(pickle.dumps(age_engine)) == age_engine
