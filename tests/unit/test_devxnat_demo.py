"""The devxnat demo archive generator: users and memberships, files in XNAT's
layout registered with their real sizes and md5, valid NIfTI / EDF / CSV,
size control, reproducibility, idempotence, atomicity, and parse_size."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from devxnat import demo
from devxnat.archive import resource_dir
from devxnat.demo import DemoSummary, generate_demo, parse_size
from devxnat.store import Store

MB = 10**6


def make(root: Path, size: int, seed: int = 0) -> tuple[Store, Path, DemoSummary]:
    store = Store(root / "db.sqlite3")
    archive = root / "archive"
    return store, archive, generate_demo(store, archive, size, seed=seed)


def registered(store: Store, archive: Path) -> list[dict]:
    """Every registered file with its catalog context and expected disk path."""
    out = []
    for p in store.projects():
        for e in store.experiments(project=p["id"]):
            for scan_id in ["", *(s["scan_id"] for s in store.scans(e["id"]))]:
                for r in store.resources(e["id"], scan_id):
                    for f in store.files(r["id"]):
                        out.append({
                            "project": p["id"], "session": e["label"], "eid": e["id"], "xsi": e["xsi_type"],
                            "subject": e["subject_label"], "scan": scan_id, "resource": r["label"],
                            "format": r["format"], "path": f["path"], "size": f["size"], "md5": f["md5"],
                            "disk": resource_dir(archive, p["id"], e["label"], scan_id, r["label"]) / f["path"],
                        })
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    store, archive, summary = make(tmp_path_factory.mktemp("demo5"), 5 * MB)
    return store, archive, summary, registered(store, archive)


# -- users, roles, projects, memberships ----------------------------------------

def test_users_roles_and_memberships(small):
    store, _, summary, _ = small
    assert [u["login"] for u in store.users()] == ["admin", "alice", "bob", "carol", "dave"]
    assert {u["login"]: bool(u["admin"]) for u in store.users()} == {
        "admin": True, "alice": False, "bob": False, "carol": False, "dave": False}
    for login in ("admin", "alice", "bob", "carol", "dave"):
        assert store.check_password(login, f"{login}-demo") is not None
        assert store.check_password(login, "wrong") is None
    assert store.roles("alice") == ["Jupyter"] and store.roles("bob") == ["Jupyter"]
    assert store.roles("carol") == [] and store.roles("dave") == []
    assert store.roles("admin") == ["Administrator"]
    assert store.memberships("alice") == {"NEURO_MRI": "Owners", "SLEEP_EEG": "Members"}
    assert store.memberships("bob") == {"NEURO_MRI": "Collaborators", "CARDIO_ECG": "Members"}
    assert store.memberships("dave") == {"SLEEP_EEG": "Owners", "CARDIO_ECG": "Owners"}
    assert store.memberships("carol") == {} and store.memberships("admin") == {}
    projects = {p["id"]: p for p in store.projects()}
    assert set(projects) == {"NEURO_MRI", "SLEEP_EEG", "CARDIO_ECG"}
    assert all(p["accessibility"] == "private" and p["pi_lastname"] and p["description"]
               for p in projects.values())
    assert summary.projects == 3


def test_catalog_labels_types_and_counts(small):
    store, _, summary, files = small
    xsi = {"NEURO_MRI": ("xnat:mrSessionData", "MR", "xnat:mrScanData"),
           "SLEEP_EEG": ("xnat:eegSessionData", "EEG", "xnat:eegScanData"),
           "CARDIO_ECG": ("xnat:ecgSessionData", "ECG", "xnat:ecgScanData")}
    n_subjects = n_experiments = 0
    for pid, (session_xsi, modality, scan_xsi) in xsi.items():
        subjects = store.subjects(pid)
        assert 6 <= len(subjects) <= 12
        n_subjects += len(subjects)
        assert [s["label"] for s in subjects] == [f"{pid}_S{i:03d}" for i in range(1, len(subjects) + 1)]
        assert all(s["gender"] in ("female", "male") and 1900 < int(s["yob"]) < 2010 for s in subjects)
        for s in subjects:
            exps = store.experiments(project=pid, subject_id=s["id"])
            assert 1 <= len(exps) <= 2
            labels = [f"{s['label']}_{modality}{v}" for v in range(1, len(exps) + 1)]
            assert sorted(e["label"] for e in exps) == labels
            n_experiments += len(exps)
            for e in exps:
                assert e["xsi_type"] == session_xsi and e["modality"] == modality
                assert len(e["date"]) == 10 and e["date"][4] == "-" and e["date"][7] == "-"
                scans = store.scans(e["id"])
                assert all(sc["xsi_type"] == scan_xsi and sc["quality"] == "usable" for sc in scans)
                if modality == "MR":
                    assert [(sc["scan_id"], sc["type"]) for sc in scans] == [("1", "T1w"), ("2", "T2w")]
                    assert all(int(sc["frames"]) > 0 for sc in scans)
                else:
                    scan_type = "PSG" if modality == "EEG" else "ECG12"
                    assert [(sc["scan_id"], sc["type"]) for sc in scans] == [("1", scan_type)]
    assert (summary.subjects, summary.experiments) == (n_subjects, n_experiments)
    assert summary.files == len(files) and summary.bytes == sum(f["size"] for f in files)
    resources = {(f["project"], f["scan"] != "", f["resource"], f["format"]) for f in files}
    assert resources == {("NEURO_MRI", True, "NIFTI", "NIFTI"), ("SLEEP_EEG", True, "EDF", "EDF"),
                         ("CARDIO_ECG", True, "EDF", "EDF"), ("CARDIO_ECG", True, "CSV", "CSV"),
                         ("NEURO_MRI", False, "NOTES", "TXT"), ("SLEEP_EEG", False, "NOTES", "TXT"),
                         ("CARDIO_ECG", False, "NOTES", "TXT")}
    # every MR scan resource holds a volume and its sidecar
    for f in files:
        if f["resource"] == "NIFTI":
            same = sorted(g["path"] for g in files if (g["eid"], g["scan"]) == (f["eid"], f["scan"]))
            assert [p.rsplit(".", 1)[1] for p in same] == ["json", "nii"]


# -- files on disk ----------------------------------------------------------------

def test_every_registered_file_is_on_disk_with_size_md5_and_modes(small):
    _, archive, summary, files = small
    assert files
    for f in files:
        disk: Path = f["disk"]
        kind = "SCANS" if f["scan"] else "RESOURCES"
        expected = archive / f["project"] / "arc001" / f["session"] / kind
        expected = expected / f["scan"] / f["resource"] if f["scan"] else expected / f["resource"]
        assert disk == expected / f["path"]
        data = disk.read_bytes()
        assert len(data) == f["size"] and hashlib.md5(data).hexdigest() == f["md5"], disk
        assert stat.S_IMODE(disk.stat().st_mode) == 0o644
    on_disk = {p for p in archive.rglob("*") if p.is_file()}
    assert on_disk == {f["disk"] for f in files}  # nothing unregistered
    for d in (p for p in archive.rglob("*") if p.is_dir()):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d
    assert len({f["disk"].name for f in files if f["resource"] != "NOTES"}) == \
        len([f for f in files if f["resource"] != "NOTES"])  # data file names are unique


def test_nifti_volumes_load_in_nibabel(small):
    _, _, _, files = small
    volumes = [f for f in files if f["path"].endswith(".nii")]
    assert volumes
    for f in volumes:
        img = nib.load(str(f["disk"]))
        assert len(img.shape) == 3 and min(img.shape) >= 4
        assert img.header["sizeof_hdr"] == 348 and img.header["magic"] == b"n+1"
        assert img.get_data_dtype() == np.int16
        with open(f["disk"], "rb") as fh:  # the loaded image's header copy has vox_offset reset
            raw = nib.Nifti1Header.from_fileobj(fh)
        assert raw.get_data_offset() == 352 and raw["bitpix"] == 16 and raw["datatype"] == 4
        data = np.asarray(img.dataobj)
        centre = data[tuple(n // 2 for n in img.shape)]
        corner = data[0, 0, 0]
        assert data.min() >= 0 and data.max() > 0 and corner < 100 < data.mean() * 10
        assert abs(float(centre)) < 32767
        side = json.loads(f["disk"].with_suffix(".json").read_text())
        assert side["Dimensions"] == list(img.shape)
    # T1w and T2w differ in contrast: CSF (the centre) is dark in T1w, bright in T2w
    f1 = next(f for f in volumes if f["path"].endswith("_T1w.nii"))
    f2 = f1["disk"].parent.parent.parent / "2" / "NIFTI" / f1["path"].replace("T1w", "T2w")
    c1 = np.asarray(nib.load(str(f1["disk"])).dataobj)
    c2 = np.asarray(nib.load(str(f2)).dataobj)
    mid = lambda a: float(a[tuple(slice(n // 2 - 1, n // 2 + 2) for n in a.shape)].mean())  # noqa: E731
    assert mid(c1) < 400 < 900 < mid(c2)


def parse_edf(path: Path) -> dict:
    raw = path.read_bytes()
    head = raw[:256].decode("ascii")
    ns = int(head[252:256])
    assert int(head[184:192]) == 256 * (ns + 1)
    sig = raw[256:256 * (ns + 1)].decode("ascii")

    def fields(offset: int, width: int) -> list[str]:
        return [sig[offset + i * width: offset + (i + 1) * width].strip() for i in range(ns)]

    o = 0
    out = {"version": head[:8], "records": int(head[236:244]), "duration": float(head[244:252]),
           "start": (head[168:176], head[176:184]), "ns": ns, "size": len(raw)}
    for name, width in (("labels", 16), ("transducer", 80), ("dim", 8), ("pmin", 8), ("pmax", 8),
                        ("dmin", 8), ("dmax", 8), ("prefilter", 80), ("samples", 8), ("reserved", 32)):
        out[name] = fields(o, width)
        o += width * ns
    assert o == 256 * ns
    samples = [int(s) for s in out["samples"]]
    assert out["size"] == 256 * (ns + 1) + out["records"] * sum(samples) * 2
    data = np.frombuffer(raw[256 * (ns + 1):], "<i2").reshape(out["records"], ns, samples[0])
    out["data"] = data.transpose(1, 0, 2).reshape(ns, -1)
    return out


def test_edf_headers_are_consistent(small):
    _, _, _, files = small
    edfs = [f for f in files if f["path"].endswith(".edf")]
    assert {f["project"] for f in edfs} == {"SLEEP_EEG", "CARDIO_ECG"}
    for f in edfs:
        h = parse_edf(f["disk"])
        assert h["version"] == "0       " and h["duration"] == 1.0 and h["records"] >= 1
        d, m, y = h["start"][0].split(".")
        assert f["disk"].parent.parent.parent.parent.name == f["session"] and len(y) == 2
        if f["project"] == "SLEEP_EEG":
            assert h["labels"] == ["Fp1", "C3", "O1"] and h["samples"] == ["256"] * 3
        else:
            assert h["labels"] == ["I", "II"] and h["samples"] == ["500"] * 2
        ns = h["ns"]
        assert h["dim"] == ["uV"] * ns and h["dmin"] == ["-32768"] * ns and h["dmax"] == ["32767"] * ns
        assert h["data"].std(axis=1).min() > 50  # a signal, not silence
        side = json.loads(f["disk"].with_suffix(".json").read_text())
        assert side["RecordingDuration"] == h["records"] and side["Channels"] == h["labels"]


def test_ecg_csv(small):
    _, _, _, files = small
    csvs = [f for f in files if f["resource"] == "CSV"]
    assert csvs and all(f["project"] == "CARDIO_ECG" and f["path"].endswith(".csv") for f in csvs)
    lines = csvs[0]["disk"].read_text().splitlines()
    assert lines[0] == "time_s,lead_I,lead_II" and len(lines) > 100
    rows = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
    assert rows.shape[1] == 3 and np.allclose(np.diff(rows[:, 0]), 0.002)
    assert rows[:, 2].max() > 0.5  # R peaks of about a millivolt in lead II


def test_readme_session_resources(small):
    _, _, _, files = small
    notes = [f for f in files if f["resource"] == "NOTES"]
    assert notes and all(f["scan"] == "" and f["path"] == "README.txt" for f in notes)
    assert {f["session"] for f in notes} == {f["session"] for f in files if f["session"].endswith("1")}
    assert notes[0]["session"] in notes[0]["disk"].read_text()


# -- size ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [2 * MB, 5 * MB, 40 * MB])
def test_total_size_follows_the_request(tmp_path, size):
    store, archive, summary = make(tmp_path, size)
    files = registered(store, archive)
    total = sum(f["size"] for f in files)
    assert summary.bytes == total
    assert abs(total - size) <= 0.15 * size
    assert sum(p.stat().st_size for p in archive.rglob("*") if p.is_file()) == total


def test_bigger_archives_have_more_subjects(tmp_path):
    assert demo._subjects_per_project(5 * MB) == 6
    assert 6 <= demo._subjects_per_project(30 * MB) <= 10
    assert demo._subjects_per_project(5 * 10**9) > 3 * demo._subjects_per_project(30 * MB)
    # even with one session per subject, files stay below the cap
    for size in (10**9, 5 * 10**9, 50 * 10**9):
        n = demo._subjects_per_project(size)
        assert size * 0.25 / n < demo.MAX_FILE


def test_nifti_shape_tracks_the_target():
    for target in (60_000, 2 * MB, 30 * MB, 60 * MB):
        nx, ny, nz = demo.nifti_shape(target)
        assert nx == ny and abs(352 + 2 * nx * ny * nz - target) <= 0.05 * target


# -- reproducibility, idempotence, atomicity -------------------------------------

def fingerprint(store: Store, archive: Path) -> list[tuple]:
    return sorted((f["eid"], f["subject"], f["session"], f["scan"], f["resource"], f["path"], f["size"], f["md5"])
                  for f in registered(store, archive))


def test_same_seed_same_archive_other_seed_other_archive(tmp_path):
    for name in "abc":
        (tmp_path / name).mkdir()
    a = fingerprint(*make(tmp_path / "a", 2 * MB, seed=7)[:2])
    b = fingerprint(*make(tmp_path / "b", 2 * MB, seed=7)[:2])
    c = fingerprint(*make(tmp_path / "c", 2 * MB, seed=8)[:2])
    assert a == b
    assert [x[-1] for x in a] != [x[-1] for x in c]
    data = (".nii", ".edf", ".csv")
    assert {x[-1] for x in a if x[5].endswith(data)}.isdisjoint({x[-1] for x in c if x[5].endswith(data)})


def test_second_call_is_a_no_op(tmp_path):
    store, archive, first = make(tmp_path, 2 * MB)
    before = {p: p.stat().st_mtime_ns for p in archive.rglob("*")}
    rows = fingerprint(store, archive)
    again = generate_demo(store, archive, 40 * MB, seed=3)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in archive.rglob("*")} == before
    assert fingerprint(store, archive) == rows
    assert json.loads(store.get_meta("demo_generated")) == {
        "projects": 3, "subjects": first.subjects, "experiments": first.experiments,
        "files": first.files, "bytes": first.bytes}


def test_failure_half_way_leaves_nothing_and_a_retry_succeeds(tmp_path, monkeypatch):
    store = Store(tmp_path / "db.sqlite3")
    archive = tmp_path / "archive"
    real = demo.write_edf
    calls = []

    def failing(*args, **kw):
        calls.append(1)
        if len(calls) > 3:
            raise OSError("disk full")
        return real(*args, **kw)

    monkeypatch.setattr(demo, "write_edf", failing)
    with pytest.raises(OSError, match="disk full"):
        generate_demo(store, archive, 2 * MB)
    assert store.get_meta("demo_generated") is None
    assert store.projects() == [] and store.users() == []
    assert (archive / "NEURO_MRI").is_dir()  # files were written before the failure
    monkeypatch.setattr(demo, "write_edf", real)
    summary = generate_demo(store, archive, 2 * MB)
    files = registered(store, archive)
    assert summary.files == len(files)
    assert {p for p in archive.rglob("*") if p.is_file()} == {f["disk"] for f in files}
    reference = tmp_path / "ref"
    reference.mkdir()
    assert fingerprint(store, archive) == fingerprint(*make(reference, 2 * MB)[:2])


def test_existing_project_without_demo_record_is_refused(tmp_path):
    store = Store(tmp_path / "db.sqlite3")
    store.add_project("NEURO_MRI", "mine")
    with pytest.raises(RuntimeError, match="NEURO_MRI"):
        generate_demo(store, tmp_path / "archive", 2 * MB)
    assert store.get_meta("demo_generated") is None


def test_too_small_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too small"):
        generate_demo(Store(tmp_path / "db.sqlite3"), tmp_path / "archive", 1000)


# -- parse_size ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("30MB", 30 * 10**6), ("2GB", 2 * 10**9), ("500kB", 500_000), ("500KB", 500_000),
    ("1.5GiB", 3 * 2**29), ("1000", 1000), ("64MiB", 64 * 2**20), (" 3 mb ", 3 * 10**6),
    ("10B", 10), ("0.5MB", 500_000), ("1TB", 10**12), ("2K", 2000), ("0.1MB", 100_000),
])
def test_parse_size_good(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "MB", "abc", "-5MB", "5 XB", "1e6", "5MBB", "1.2.3GB", "nan", "inf",
                                  "5 M B"])
def test_parse_size_bad(text):
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)
