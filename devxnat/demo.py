"""The development server's synthetic demo archive, reproducible from a seed.

:func:`generate_demo` creates, once per data directory (it records a summary
in the store's meta key ``demo_generated`` and does nothing when that is set):

* users ``admin`` (site admin), ``alice``, ``bob``, ``carol``, ``dave`` with
  the fixed passwords ``<name>-demo`` (development server only); alice and
  bob also hold the site role ``Jupyter``;
* private projects ``NEURO_MRI`` (MR sessions: scans ``1`` T1w and ``2`` T2w,
  resource ``NIFTI`` = a NIfTI-1 ``.nii`` volume + a JSON sidecar),
  ``SLEEP_EEG`` (EEG sessions: scan ``1`` PSG, resource ``EDF`` = an EDF
  recording of Fp1, C3, O1 at 256 Hz + a JSON sidecar) and ``CARDIO_ECG``
  (ECG sessions: scan ``1`` ECG12, resource ``EDF`` = leads I, II at 500 Hz
  + a JSON sidecar, resource ``CSV`` = a ``time_s,lead_I,lead_II`` excerpt);
  every first session also has a session resource ``NOTES`` with a README.txt;
* memberships: alice Owner of NEURO_MRI and Member of SLEEP_EEG, bob
  Collaborator on NEURO_MRI and Member of CARDIO_ECG, dave Owner of
  SLEEP_EEG and CARDIO_ECG, carol and admin in no project;
* subjects ``{PROJECT}_S001`` ... with one or two sessions each
  (``NEURO_MRI_S001_MR1``, ``SLEEP_EEG_S004_EEG2``, ...);
* stored searches (:data:`.stored_search.DEMO_SEARCHES`), shared with alice and bob:
  ``xs1700000000001`` "NEURO_MRI first visits" (MR sessions ``…_MR1``, saved in NEURO_MRI) and
  ``xs1700000000002`` "First visits, every modality" (``…_MR1``, ``…_EEG1``, ``…_ECG1``; site-wide).

All files are written streaming (a few MB at a time, md5 computed on the way)
into the archive in XNAT's layout (see :mod:`.archive`) and registered in the
store with their sizes and digests. The total size follows ``size_bytes``
(the budget is re-split after every file, so the result lands within about a
percent for sizes from 2 MB up): more subjects and bigger volumes / longer
recordings for bigger archives, no file above 64 MiB. The same seed and size
give byte-identical files and identical IDs and labels (on an empty store).

The catalog is written in one transaction: if generation fails half-way the
store is left as before and the next run starts over (stale directories of the
demo projects are removed first).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
import re
import shutil
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .archive import resource_dir
from .stored_search import seed_demo as seed_searches
from .store import Store

log = logging.getLogger(__name__)

META_KEY = "demo_generated"
MAX_FILE = 64 * 2**20  #: no single file above this
MIN_SIZE = 500_000  #: below this the fixed-size small files dominate
_CHUNK = 1 << 21  #: samples / voxels generated per step (4 MiB of int16)
_SMALL = 700  #: budget estimate for a JSON sidecar

#: (login, site admin, first name, last name)
USERS = (("admin", True, "Site", "Admin"), ("alice", False, "Alice", "Adams"),
         ("bob", False, "Bob", "Baker"), ("carol", False, "Carol", "Clark"),
         ("dave", False, "Dave", "Davis"))
JUPYTER_USERS = ("alice", "bob")
MEMBERS = (("NEURO_MRI", "alice", "Owners"), ("SLEEP_EEG", "alice", "Members"),
           ("NEURO_MRI", "bob", "Collaborators"), ("CARDIO_ECG", "bob", "Members"),
           ("SLEEP_EEG", "dave", "Owners"), ("CARDIO_ECG", "dave", "Owners"))


@dataclass(frozen=True)
class _Project:
    pid: str
    name: str
    description: str
    pi: tuple[str, str]
    share: float  #: fraction of the archive's bytes
    modality: str  #: "MR", "EEG" or "ECG"


PROJECTS = (
    _Project("NEURO_MRI", "Neuro MRI cohort", "Structural brain MRI (T1w, T2w) as NIfTI-1 volumes. "
             "Synthetic demo data.", ("Ada", "Lovelace"), 0.5, "MR"),
    _Project("SLEEP_EEG", "Sleep EEG study", "Overnight polysomnography EEG (Fp1, C3, O1) as EDF. "
             "Synthetic demo data.", ("Hans", "Berger"), 0.25, "EEG"),
    _Project("CARDIO_ECG", "Cardio ECG registry", "Resting ECG (leads I, II) as EDF and CSV. "
             "Synthetic demo data.", ("Willem", "Einthoven"), 0.25, "ECG"),
)
SESSION_XSI = {"MR": "xnat:mrSessionData", "EEG": "xnat:eegSessionData", "ECG": "xnat:ecgSessionData"}

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


@dataclass(frozen=True)
class DemoSummary:
    projects: int
    subjects: int
    experiments: int
    files: int
    bytes: int


def parse_size(text: str) -> int:
    """``"30MB"``, ``"2GB"``, ``"500kB"``, ``"1.5GiB"``, ``"1000"`` → bytes.

    kB/MB/GB/TB are decimal (MB = 10**6), KiB/MiB/GiB/TiB binary (MiB = 2**20);
    units are case-insensitive. Raises ValueError for anything else.
    """
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional unit "
                         "(B, kB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 30MB, 2GB or 1.5GiB")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


# -- writing files --------------------------------------------------------------

def _mkdir(d: Path) -> None:
    """``mkdir -p`` with mode 0755 on every directory it creates."""
    if d.is_dir():
        return
    _mkdir(d.parent)
    d.mkdir()
    d.chmod(0o755)


class _Sink:
    """A file written streaming, counting bytes and md5 on the way (mode 0644)."""

    def __init__(self, path: Path):
        _mkdir(path.parent)
        self.path = path
        self._f = open(path, "wb")
        self._md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self._md5.update(data)
        self.size += len(data)

    def close(self) -> tuple[int, str]:
        self._f.close()
        self.path.chmod(0o644)
        return self.size, self._md5.hexdigest()


def write_bytes(path: Path, data: bytes) -> tuple[int, str]:
    sink = _Sink(path)
    sink.write(data)
    return sink.close()


def _json(doc: dict) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()


def nifti_shape(target: int) -> tuple[int, int, int]:
    """A head-like (x = y, z ≈ 0.75 x) int16 volume shape of about ``target`` file bytes."""
    voxels = max(8 * 8 * 6, (target - 352) // 2)
    side = max(8, round((voxels / 0.75) ** (1 / 3)))
    return side, side, max(4, round(voxels / (side * side)))


#: intensity profiles over the normalised head radius: CSF, white matter,
#: grey matter, CSF at the surface, scalp, background
_RADII = [0.0, 0.12, 0.2, 0.55, 0.7, 0.86, 0.9, 0.95, 0.99, 1.0]
_CONTRAST = {"T1w": [180, 200, 720, 720, 560, 560, 150, 950, 900, 0],
             "T2w": [1300, 1250, 380, 380, 620, 620, 1400, 300, 350, 0]}


def write_nifti(path: Path, rng: np.random.Generator, shape: tuple[int, int, int],
                pixdim: tuple[float, float, float], contrast: str, descrip: str) -> tuple[int, str]:
    """A single-file NIfTI-1 int16 volume: an ellipsoid "head" plus noise, written in slabs."""
    nx, ny, nz = shape
    h = bytearray(348)
    struct.pack_into("<i", h, 0, 348)
    h[38] = ord("r")
    struct.pack_into("<8h", h, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", h, 70, 4, 16)  # datatype NIFTI_TYPE_INT16, bitpix
    struct.pack_into("<8f", h, 76, 1.0, *pixdim, 0.0, 0.0, 0.0, 0.0)  # pixdim[0] = qfac
    struct.pack_into("<3f", h, 108, 352.0, 1.0, 0.0)  # vox_offset, scl_slope, scl_inter
    h[123] = 2 | 8  # xyzt_units: mm, s
    desc = descrip.encode("ascii")[:79]
    h[148:148 + len(desc)] = desc
    offsets = [-pixdim[i] * (shape[i] - 1) / 2 for i in range(3)]
    struct.pack_into("<hh", h, 252, 1, 2)  # qform scanner, sform aligned
    struct.pack_into("<6f", h, 256, 0.0, 0.0, 0.0, *offsets)  # identity quaternion, offsets
    for i in range(3):
        row = [0.0, 0.0, 0.0, offsets[i]]
        row[i] = pixdim[i]
        struct.pack_into("<4f", h, 280 + 16 * i, *row)
    h[344:348] = b"n+1\x00"
    sink = _Sink(path)
    sink.write(bytes(h) + b"\x00\x00\x00\x00")  # no extensions
    sq = [((np.arange(n, dtype=np.float32) - (n - 1) / 2) / (n * f)) ** 2
          for n, f in ((nx, 0.42), (ny, 0.48), (nz, 0.46))]
    per = max(1, _CHUNK // (nx * ny))
    for z0 in range(0, nz, per):
        r = np.sqrt(sq[2][z0:z0 + per, None, None] + sq[1][None, :, None] + sq[0][None, None, :])
        vol = np.interp(r, _RADII, _CONTRAST[contrast], right=0.0).astype(np.float32)
        vol += rng.standard_normal(vol.shape, dtype=np.float32) * 18.0
        sink.write(np.abs(vol).astype("<i2").tobytes())  # magnitude image: no negatives
    return sink.close()


def _edf_field(value: object, width: int) -> bytes:
    text = str(value)
    if len(text) > width:
        raise ValueError(f"EDF header value {text!r} longer than {width}")
    return text.ljust(width).encode("ascii")


def write_edf(path: Path, labels: list[str], rate: int, seconds: int, phys: tuple[int, int], *,
              patient: str, recording: str, start: dt.datetime, transducer: str, prefilter: str,
              signal: Callable[[np.ndarray], np.ndarray]) -> tuple[int, str]:
    """An EDF file of ``seconds`` one-second records of int16 samples.

    ``signal(t)`` gives the physical values (µV), shape ``(len(labels), len(t))``,
    at the times ``t`` (s); it is called a few MB at a time.
    """
    ns = len(labels)
    head = b"".join([
        _edf_field(0, 8), _edf_field(patient, 80), _edf_field(recording, 80),
        _edf_field(start.strftime("%d.%m.%y"), 8), _edf_field(start.strftime("%H.%M.%S"), 8),
        _edf_field(256 * (ns + 1), 8), _edf_field("", 44), _edf_field(seconds, 8),
        _edf_field(1, 8), _edf_field(ns, 4)])
    # per-signal fields, each stored for all signals in turn: label, transducer,
    # physical dimension, physical min/max, digital min/max, prefilter, samples/record, reserved
    head += b"".join(_edf_field(lab, 16) for lab in labels)
    for width, value in ((80, transducer), (8, "uV"), (8, phys[0]), (8, phys[1]), (8, -32768),
                         (8, 32767), (80, prefilter), (8, rate), (32, "")):
        head += _edf_field(value, width) * ns
    assert len(head) == 256 * (ns + 1)
    gain = 65535 / (phys[1] - phys[0])
    sink = _Sink(path)
    sink.write(head)
    per = max(1, _CHUNK // (ns * rate))
    for s0 in range(0, seconds, per):
        k = min(per, seconds - s0)
        x = signal(s0 + np.arange(k * rate) / rate)
        d = np.clip(np.rint((x - phys[0]) * gain - 32768), -32768, 32767).astype("<i2")
        # (signal, record, sample) -> record-major: each record holds every signal's second
        sink.write(d.reshape(ns, k, rate).transpose(1, 0, 2).tobytes())
    return sink.close()


def _angle(freq: float, t: np.ndarray) -> np.ndarray:
    """``2π·freq·t`` reduced to one turn in float64, then float32 (cheap, exact enough trig)."""
    turns = freq * t
    turns -= np.floor(turns)  # much faster than ``% 1.0``
    return turns.astype(np.float32) * np.float32(2 * np.pi)


def _eeg_signal(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Fp1, C3, O1: alpha (occipital), sleep-cycle-modulated delta, theta, eye blinks (Fp1), noise."""
    alpha_f = rng.uniform(9.0, 11.5)
    phases = rng.uniform(0, 2 * np.pi, size=(3, 3))
    cos_p, sin_p = np.cos(phases).astype(np.float32), np.sin(phases).astype(np.float32)
    amps = np.array([[8.0, 40.0, 10.0], [15.0, 60.0, 10.0], [35.0, 45.0, 10.0]], np.float32)

    def signal(t: np.ndarray) -> np.ndarray:
        cycle = 0.5 - 0.5 * np.cos(_angle(1 / 5400.0, t))  # 90-minute sleep cycles
        weight = (1 - cycle, cycle, np.float32(1.0))  # alpha fades, delta grows with depth
        x = rng.standard_normal((3, t.size), dtype=np.float32) * np.float32(6.0)
        for k, freq in enumerate((alpha_f, 1.3, 6.0)):
            a = _angle(freq, t)
            sin_a, cos_a = np.sin(a) * weight[k], np.cos(a) * weight[k]
            for ch in range(3):  # sin(a + p) = sin a cos p + cos a sin p
                x[ch] += amps[ch, k] * (sin_a * cos_p[ch, k] + cos_a * sin_p[ch, k])
        u = ((t % 4.7) - 2.0).astype(np.float32) / np.float32(0.12)
        x[0] += np.float32(120.0) * np.exp(-u * u)  # blinks on Fp1
        return x

    return signal


def _ecg_signal(rng: np.random.Generator) -> Callable[[np.ndarray], np.ndarray]:
    """Leads I and II (µV): P-QRS-T beats at a random heart rate with slight variability."""
    hr = rng.uniform(55, 85) / 60.0
    grid = np.arange(2048) / 2048
    beat = sum(a * np.exp(-((grid - c) / w) ** 2) for a, c, w in
               ((120, 0.15, 0.025), (-100, 0.27, 0.008), (1200, 0.30, 0.01),
                (-250, 0.33, 0.01), (300, 0.55, 0.05))).astype(np.float32)

    def signal(t: np.ndarray) -> np.ndarray:
        phase = hr * t + 0.03 * np.sin(_angle(0.25, t))
        phase -= np.floor(phase)
        wave = beat[(phase * 2048).astype(np.int64) % 2048]
        wander = np.float32(60.0) * np.sin(_angle(0.3, t))
        x = rng.standard_normal((2, t.size), dtype=np.float32) * np.float32(12.0)
        x[0] += np.float32(0.6) * wave + np.float32(0.5) * wander
        x[1] += wave + wander
        return x

    return signal


# -- generation -------------------------------------------------------------------

def _subjects_per_project(size_bytes: int) -> int:
    base = round(6 * (size_bytes / 10e6) ** (1 / 3))
    # with one session per subject, the biggest file must still stay under MAX_FILE
    need = math.ceil(size_bytes * 0.25 / (0.8 * MAX_FILE))
    return max(6, base, need)


class _Generator:
    def __init__(self, store: Store, archive: Path, rng: np.random.Generator):
        self.store, self.archive, self.rng = store, archive, rng
        self.counts = {"subjects": 0, "experiments": 0, "files": 0, "bytes": 0}

    def register(self, eid: str, scan_id: str, label: str, fmt: str, content: str,
                 files: list[tuple[str, int, str]]) -> int:
        self.store.add_resource(eid, scan_id, label, format=fmt, content=content, files=files)
        self.counts["files"] += len(files)
        written = sum(f[1] for f in files)
        self.counts["bytes"] += written
        return written

    def project(self, p: _Project, budget: float, n_subjects: int) -> None:
        rng, store = self.rng, self.store
        store.add_project(p.pid, p.name, description=p.description, accessibility="private", pi=p.pi)
        plan = [(str(rng.choice(["female", "male"])), int(rng.integers(1940, 2005)),
                 1 + int(rng.random() < 0.5)) for _ in range(n_subjects)]
        sessions_left = sum(n for _, _, n in plan)
        start = self.counts["bytes"]
        for i, (gender, yob, n_sessions) in enumerate(plan, 1):
            subject = f"{p.pid}_S{i:03d}"
            sid = store.add_subject(p.pid, subject, gender=gender, yob=str(yob))
            self.counts["subjects"] += 1
            day = dt.date(2019, 1, 1) + dt.timedelta(days=int(rng.integers(0, 5 * 365)))
            for visit in range(1, n_sessions + 1):
                target = (budget - (self.counts["bytes"] - start)) / sessions_left
                self.session(p, sid, subject, visit, day, target)
                sessions_left -= 1
                day += dt.timedelta(days=int(rng.integers(90, 540)))
        log.info("demo project %s: %d subjects, %.1f MB", p.pid, n_subjects,
                 (self.counts["bytes"] - start) / 1e6)

    def session(self, p: _Project, sid: str, subject: str, visit: int, day: dt.date, target: float) -> None:
        rng, store = self.rng, self.store
        label = f"{subject}_{p.modality}{visit}"
        eid = store.add_experiment(p.pid, sid, label, SESSION_XSI[p.modality],
                                   date=day.isoformat(), modality=p.modality)
        self.counts["experiments"] += 1
        start = dt.datetime.combine(day, dt.time(int(rng.integers(8, 23)), int(rng.integers(0, 60))))
        written = 0
        if visit == 1:
            text = (f"{label}: synthetic {p.modality} session of subject {subject} in {p.pid}, "
                    f"acquired {day.isoformat()}.\nGenerated by the devxnat demo; no real person's data.\n")
            size, md5 = write_bytes(resource_dir(self.archive, p.pid, label, "", "NOTES") / "README.txt",
                                    text.encode())
            written += self.register(eid, "", "NOTES", "TXT", "NOTES", [("README.txt", size, md5)])
        if p.modality == "MR":
            for k, (scan_id, contrast, seq) in enumerate((("1", "T1w", "MPRAGE"), ("2", "T2w", "SPACE"))):
                want = (target - written) / (2 - k) - _SMALL
                shape = nifti_shape(int(min(max(want, 0), MAX_FILE)))
                pixdim = (round(240 / shape[0], 4), round(240 / shape[1], 4), round(180 / shape[2], 4))
                store.add_scan(eid, scan_id, "xnat:mrScanData", type=contrast,
                               series_description=f"{contrast} {seq}", quality="usable", frames=str(shape[2]))
                d = resource_dir(self.archive, p.pid, label, scan_id, "NIFTI")
                base = f"{label}_{contrast}"
                tr, te = (2.3, 0.00298) if contrast == "T1w" else (3.2, 0.409)
                sidecar = write_bytes(d / f"{base}.json", _json({
                    "Modality": "MR", "MagneticFieldStrength": 3, "Manufacturer": "devxnat",
                    "SeriesDescription": f"{contrast} {seq}", "RepetitionTime": tr, "EchoTime": te,
                    "FlipAngle": int(rng.integers(8, 121)) if contrast == "T2w" else 9,
                    "AcquisitionDate": day.isoformat(), "Dimensions": list(shape), "VoxelSizeMM": list(pixdim)}))
                nii = write_nifti(d / f"{base}.nii", rng, shape, pixdim, contrast, f"devxnat {contrast} {label}")
                written += self.register(eid, scan_id, "NIFTI", "NIFTI", "RAW",
                                         [(f"{base}.nii", *nii), (f"{base}.json", *sidecar)])
            return
        eeg = p.modality == "EEG"
        labels, rate, phys = (["Fp1", "C3", "O1"], 256, (-500, 500)) if eeg else (["I", "II"], 500, (-5000, 5000))
        scan_type = "PSG" if eeg else "ECG12"
        store.add_scan(eid, "1", "xnat:eegScanData" if eeg else "xnat:ecgScanData", type=scan_type,
                       series_description="overnight PSG" if eeg else "resting 12-lead ECG", quality="usable")
        signal = _eeg_signal(rng) if eeg else _ecg_signal(rng)
        if not eeg:  # a short CSV excerpt (≈ 10 % of the session, at most one minute)
            rows = int(min(60 * rate, max(rate, 0.1 * target / 24)))
            t = np.arange(rows) / rate
            x = signal(t) / 1000.0  # mV
            text = "time_s,lead_I,lead_II\n" + "".join(
                f"{a:.3f},{b:.4f},{c:.4f}\n" for a, b, c in zip(t.tolist(), x[0].tolist(), x[1].tolist()))
            csv = write_bytes(resource_dir(self.archive, p.pid, label, "1", "CSV") / f"{label}.csv", text.encode())
            written += self.register(eid, "1", "CSV", "CSV", "RAW", [(f"{label}.csv", *csv)])
        want = min(target - written - _SMALL, MAX_FILE) - 256 * (len(labels) + 1)
        seconds = max(1, round(want / (2 * rate * len(labels))))
        d = resource_dir(self.archive, p.pid, label, "1", "EDF")
        sidecar = write_bytes(d / f"{label}.json", _json({
            "Modality": p.modality, "TaskName": "sleep" if eeg else "rest", "SamplingFrequency": rate,
            "Channels": labels, "RecordingDuration": seconds, "RecordingStart": start.isoformat(),
            "PowerLineFrequency": 50, "Units": "uV"}))
        edf = write_edf(d / f"{label}.edf", labels, rate, seconds, phys,
                        patient=f"{subject} X X X", recording=f"Startdate {start:%d-%b-%Y} {label} devxnat",
                        start=start, transducer="AgAgCl electrode",
                        prefilter="HP:0.3Hz LP:70Hz" if eeg else "HP:0.05Hz LP:150Hz", signal=signal)
        self.register(eid, "1", "EDF", "EDF", "RAW", [(f"{label}.edf", *edf), (f"{label}.json", *sidecar)])


def generate_demo(store: Store, archive: Path, size_bytes: int, seed: int = 0) -> DemoSummary:
    """Create the demo users, projects, catalog and files (see the module docstring).

    Idempotent: when the store already records a demo archive, returns its
    summary and touches nothing.
    """
    done = store.get_meta(META_KEY)
    if done:
        return DemoSummary(**json.loads(done))
    if size_bytes < MIN_SIZE:
        raise ValueError(f"demo size {size_bytes} bytes is too small (at least {MIN_SIZE} bytes)")
    archive = Path(archive)
    for p in PROJECTS:
        if store.project(p.pid) is not None:
            raise RuntimeError(f"project {p.pid} exists but no demo archive is recorded; "
                               "use an empty data directory for the demo")
        stale = archive / p.pid
        if stale.exists():
            log.warning("removing %s left over from an interrupted demo generation", stale)
            shutil.rmtree(stale)
    _mkdir(archive)
    rng = np.random.default_rng(seed)
    gen = _Generator(store, archive, rng)
    n_subjects = _subjects_per_project(size_bytes)
    log.info("generating the demo archive (%.1f MB, seed %d) in %s", size_bytes / 1e6, seed, archive)
    with store.tx():  # one transaction: all or nothing
        for login, admin, first, last in USERS:
            if store.user(login) is None:
                store.add_user(login, f"{login}-demo", admin=admin, firstname=first, lastname=last)
        for login in JUPYTER_USERS:
            store.add_role(login, "Jupyter")
        shares_left = sum(p.share for p in PROJECTS)
        for p in PROJECTS:
            budget = (size_bytes - gen.counts["bytes"]) * p.share / shares_left
            gen.project(p, budget, n_subjects + int(rng.integers(0, 3)))
            shares_left -= p.share
        for pid, login, group in MEMBERS:
            store.set_member(pid, login, group)
        seed_searches(store)
        summary = DemoSummary(projects=len(PROJECTS), **gen.counts)
        store.set_meta(META_KEY, json.dumps(asdict(summary)))
    log.info("demo archive generated: %s", summary)
    return summary
