"""The development server's synthetic demo archive (reproducible from a seed).

Creates, when the data directory has none yet:

* users ``admin`` (site admin), ``alice``, ``bob``, ``carol``, ``dave`` with the
  fixed passwords ``<name>-demo`` (development server only); alice and bob
  also hold the site role ``Jupyter``;
* projects ``NEURO_MRI`` (MR sessions, NIfTI-1 volumes + JSON sidecars),
  ``SLEEP_EEG`` (EEG sessions, EDF recordings) and ``CARDIO_ECG`` (ECG
  sessions, EDF + CSV), with alice Owner of NEURO_MRI and Member of
  SLEEP_EEG, bob Collaborator on NEURO_MRI and Member of CARDIO_ECG, dave
  Owner of SLEEP_EEG and CARDIO_ECG, carol in no project;
* subjects, sessions, scans and files whose total size is about ``size_bytes``
  (more subjects and bigger files for bigger sizes; no file above 64 MB),
  written streaming into the archive in XNAT's layout and registered with
  their sizes and md5 digests.

The same seed and size give byte-identical files and identical IDs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import struct
from pathlib import Path

import numpy as np

from .archive import resource_dir
from .store import Store

log = logging.getLogger(__name__)

MAX_FILE = 64 * 10**6
USERS = (("admin", True), ("alice", False), ("bob", False), ("carol", False), ("dave", False))
PROJECTS = (
    ("NEURO_MRI", "Neuro MRI cohort", "T1w/T2w brain MRI (NIfTI)", ("Ada", "Lovelace"), 0.5),
    ("SLEEP_EEG", "Sleep EEG study", "Overnight polysomnography EEG (EDF)", ("Hans", "Berger"), 0.25),
    ("CARDIO_ECG", "Cardio ECG registry", "12-lead ECG recordings (EDF + CSV)", ("Willem", "Einthoven"), 0.25),
)
MEMBERS = (("NEURO_MRI", "alice", "Owners"), ("SLEEP_EEG", "alice", "Members"),
           ("NEURO_MRI", "bob", "Collaborators"), ("CARDIO_ECG", "bob", "Members"),
           ("SLEEP_EEG", "dave", "Owners"), ("CARDIO_ECG", "dave", "Owners"))
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclasses.dataclass(frozen=True)
class DemoSummary:
    projects: int
    subjects: int
    experiments: int
    files: int
    bytes: int


def parse_size(text: str) -> int:
    """``"30MB"``, ``"2GB"``, ``"1.5GiB"``, ``"1000"`` → bytes (decimal MB, binary MiB)."""
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write e.g. 30MB, 2GB or 1.5GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class _Writer:
    """Write a file streaming, counting bytes and md5."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = open(path, "wb")
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> None:
        self.f.write(data)
        self.md5.update(data)
        self.size += len(data)

    def close(self) -> tuple[int, str]:
        self.f.close()
        self.path.chmod(0o644)
        return self.size, self.md5.hexdigest()


def write_nifti(path: Path, rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[int, str]:
    """A single-file NIfTI-1 (int16) volume: an ellipsoid "head" plus noise, written slice by slice."""
    nx, ny, nz = shape
    hdr = bytearray(348)
    struct.pack_into("<i", hdr, 0, 348)
    struct.pack_into("<8h", hdr, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", hdr, 70, 4, 16)  # datatype int16, bitpix
    struct.pack_into("<8f", hdr, 76, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", hdr, 108, 352.0)  # vox_offset
    struct.pack_into("<f", hdr, 112, 1.0)  # scl_slope
    hdr[344:348] = b"n+1\x00"
    w = _Writer(path)
    w.write(bytes(hdr) + b"\x00\x00\x00\x00")
    yy, xx = np.mgrid[0:ny, 0:nx]
    for z in range(nz):
        r = ((xx - nx / 2) / (nx * 0.4)) ** 2 + ((yy - ny / 2) / (ny * 0.45)) ** 2 \
            + ((z - nz / 2) / (nz * 0.45)) ** 2
        sl = np.where(r < 1, 800 + 200 * np.cos(6 * r), 0) + rng.normal(0, 20, (ny, nx))
        w.write(sl.astype("<i2").tobytes())
    return w.close()


def write_edf(path: Path, rng: np.random.Generator, labels: list[str], rate: int,
              seconds: int, start: str) -> tuple[int, str]:
    """An EDF file: 1-second records of int16 samples per signal."""
    ns = len(labels)

    def field(value, width: int) -> bytes:
        return str(value)[:width].ljust(width).encode("ascii")

    date, time_ = start.split(" ")
    head = (field(0, 8) + field("X X X X", 80) + field(f"Startdate {date} X X devxnat", 80)
            + field(date, 8) + field(time_, 8) + field(256 * (ns + 1), 8) + field("", 44)
            + field(seconds, 8) + field(1, 8) + field(ns, 4))
    for width, values in ((16, labels), (80, ["AgAgCl electrode"] * ns), (8, ["uV"] * ns),
                          (8, [-3200] * ns), (8, [3200] * ns), (8, [-32768] * ns),
                          (8, [32767] * ns), (80, ["HP:0.1Hz LP:75Hz"] * ns), (8, [rate] * ns),
                          (32, [""] * ns)):
        head += b"".join(field(v, width) for v in values)
    w = _Writer(path)
    w.write(head)
    t = np.arange(rate) / rate
    for sec in range(seconds):
        rec = []
        for i in range(ns):
            sig = 3000 * np.sin(2 * np.pi * (1 + i) * (t + sec)) + rng.normal(0, 800, rate)
            rec.append(np.clip(sig, -32768, 32767).astype("<i2").tobytes())
        w.write(b"".join(rec))
    return w.close()


def write_csv(path: Path, rng: np.random.Generator, rate: int, seconds: int) -> tuple[int, str]:
    w = _Writer(path)
    w.write(b"time_s,lead_I,lead_II\n")
    for sec in range(seconds):
        t = sec + np.arange(rate) / rate
        a = np.sin(2 * np.pi * 1.2 * t) + rng.normal(0, 0.05, rate)
        b = np.sin(2 * np.pi * 1.2 * t + 0.3) + rng.normal(0, 0.05, rate)
        w.write("".join(f"{x:.4f},{y:.4f},{z:.4f}\n" for x, y, z in zip(t, a, b)).encode())
    return w.close()


def write_text(path: Path, text: str) -> tuple[int, str]:
    w = _Writer(path)
    w.write(text.encode())
    return w.close()


def _plan(size_bytes: int) -> tuple[int, float]:
    """(subjects per project, scale factor for file sizes)."""
    subjects = int(min(200, max(6, 6 * math.sqrt(size_bytes / 30e6))))
    return subjects, 1.0


def generate_demo(store: Store, archive: Path, size_bytes: int, seed: int = 0) -> DemoSummary:
    """Create the demo users, projects and archive (idempotent; see the module docstring)."""
    done = store.get_meta("demo_generated")
    if done:
        return DemoSummary(**json.loads(done))
    archive = Path(archive)
    for login, admin in USERS:
        if store.user(login) is None:
            store.add_user(login, f"{login}-demo", admin=admin, firstname=login.title(),
                           lastname="Demo")
    for login in ("alice", "bob"):
        store.add_role(login, "Jupyter")
    rng = np.random.default_rng(seed)
    n_subjects, _ = _plan(size_bytes)
    counts = dict(subjects=0, experiments=0, files=0, bytes=0)
    for pid, name, desc, pi, share in PROJECTS:
        if store.project(pid) is None:
            store.add_project(pid, name, description=desc, pi=pi)
        budget = size_bytes * share
        sessions = sum(1 + (i % 2) for i in range(n_subjects))
        per_session = budget / sessions
        for i in range(1, n_subjects + 1):
            label = f"{pid}_S{i:03d}"
            sid = store.add_subject(pid, label, gender=str(rng.choice(["female", "male"])),
                                    yob=str(int(rng.integers(1940, 2005))))
            counts["subjects"] += 1
            for v in range(1, 2 + (i - 1) % 2):
                date = f"20{int(rng.integers(18, 26))}-{int(rng.integers(1, 13)):02d}-{int(rng.integers(1, 29)):02d}"
                made = _session(store, archive, rng, pid, sid, label, v, date, per_session)
                counts["experiments"] += 1
                counts["files"] += made[0]
                counts["bytes"] += made[1]
    for pid, login, group in MEMBERS:
        store.set_member(pid, login, group)
    summary = DemoSummary(len(PROJECTS), **counts)
    store.set_meta("demo_generated", json.dumps(dataclasses.asdict(summary)))
    log.info("demo archive generated: %s", summary)
    return summary


def _session(store, archive, rng, pid, sid, subject_label, visit, date, budget) -> tuple[int, int]:
    kind = pid.split("_")[1]
    xsi = {"MRI": "xnat:mrSessionData", "EEG": "xnat:eegSessionData", "ECG": "xnat:ecgSessionData"}[kind]
    modality = {"MRI": "MR", "EEG": "EEG", "ECG": "ECG"}[kind]
    label = f"{subject_label}_{modality}{visit}"
    eid = store.add_experiment(pid, sid, label, xsi, date=date, modality=modality)
    files = total = 0

    def register(scan_id, res_label, fmt, content, entries):
        nonlocal files, total
        store.add_resource(eid, scan_id, res_label, format=fmt, content=content, files=entries)
        files += len(entries)
        total += sum(e[1] for e in entries)

    if kind == "MRI":
        for scan_id, stype in (("1", "T1w"), ("2", "T2w")):
            side = max(8, int(round((min(budget / 2, MAX_FILE) / 2) ** (1 / 3))))
            shape = (side, side, max(4, side * 3 // 4))
            store.add_scan(eid, scan_id, "xnat:mrScanData", type=stype, series_description=f"{stype} MPRAGE",
                           frames=str(shape[2]))
            d = resource_dir(archive, pid, label, scan_id, "NIFTI")
            nii = write_nifti(d / f"{label}_{stype}.nii", rng, shape)
            side_json = write_text(d / f"{label}_{stype}.json", json.dumps(
                {"RepetitionTime": 2.3, "EchoTime": 0.00298, "FlipAngle": 9, "Shape": shape}, indent=1))
            register(scan_id, "NIFTI", "NIFTI", "RAW",
                     [(f"{label}_{stype}.nii", *nii), (f"{label}_{stype}.json", *side_json)])
    else:
        labels, rate = (["Fp1", "C3", "O1"], 256) if kind == "EEG" else (["I", "II"], 500)
        scan_type = "PSG" if kind == "EEG" else "ECG12"
        store.add_scan(eid, "1", f"xnat:{kind.lower()}ScanData", type=scan_type,
                       series_description=f"{scan_type} recording")
        share = 0.6 if kind == "ECG" else 1.0
        seconds = max(2, int(min(budget * share, MAX_FILE) / (2 * rate * len(labels))))
        d = resource_dir(archive, pid, label, "1", "EDF")
        edf = write_edf(d / f"{label}.edf", rng, labels, rate, seconds, f"{date[8:10]}.{date[5:7]}.{date[2:4]} 22.00.00")
        register("1", "EDF", "EDF", "RAW", [(f"{label}.edf", *edf)])
        if kind == "ECG":
            csv_seconds = max(1, int(budget * 0.4 / (rate * 24)))
            dc = resource_dir(archive, pid, label, "1", "CSV")
            csv = write_csv(dc / f"{label}.csv", rng, rate, csv_seconds)
            register("1", "CSV", "CSV", "RAW", [(f"{label}.csv", *csv)])
    if visit == 1:
        dn = resource_dir(archive, pid, label, "", "NOTES")
        note = write_text(dn / "README.txt", f"Synthetic {modality} session {label} (devxnat demo).\n")
        register("", "NOTES", "TXT", "NOTES", [("README.txt", *note)])
    return files, total
