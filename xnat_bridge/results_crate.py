"""The provenance record of a job's published results: an RO-Crate (issue 22).

A published result set is a directory: the job's result files, ``ro-crate-metadata.json``
(RO-Crate 1.1, the Process Run Crate profile: one ``CreateAction`` — the training run — whose
``instrument`` is the script, ``object`` the dataset manifest, ``result`` the files) and the
hub's signature of that file, ``ro-crate-metadata.json.sig`` (:mod:`xnat_bridge.sshsig`). Every
file is named in the crate with its size and sha256, so the signature of the one metadata file
covers every byte; :func:`check_files` finds a changed, missing or added file and names it.

:func:`crate_metadata` is a pure function of a :class:`RunRecord` and the files'
:class:`FileEntry` list; :func:`digest_files` reads a directory (no link followed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import InvalidRequest

METADATA = "ro-crate-metadata.json"
SIGNATURE = METADATA + ".sig"
CONTEXT = "https://w3id.org/ro/crate/1.1/context"
RO_CRATE = "https://w3id.org/ro/crate/1.1"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
#: the crate's own files: not results, not listed as parts
OWN = frozenset({METADATA, SIGNATURE})


@dataclasses.dataclass(frozen=True)
class FileEntry:
    path: str      # relative, "/"-separated
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class Approval:
    who: str
    when: str      # ISO 8601
    decision: str = "approved"


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the crate says of the run (everything the hub and the server know of the job)."""

    job_id: str
    user: str
    xnat_host: str
    dataset: str
    manifest_sha256: str
    script: str
    script_sha256: str
    slurm_job_id: str
    partition: str
    node: str
    start: str
    end: str
    resources_asked: Mapping[str, str]
    resources_used: Mapping[str, str] = dataclasses.field(default_factory=dict)
    software: Mapping[str, str] = dataclasses.field(default_factory=dict)
    approvals: tuple[Approval, ...] = ()
    audit_ids: tuple[str, ...] = ()
    xnat_item: str = ""   # the XNAT URI of the item the results belong to
    note: str = ""        # which of these facts the signer checked, and which it was told


def _properties(values: Mapping[str, str], prefix: str) -> list[dict]:
    return [{"@id": f"#{prefix}-{k}", "@type": "PropertyValue", "name": k, "value": str(v)}
            for k, v in sorted(values.items())]


def crate_metadata(run: RunRecord, files: Iterable[FileEntry]) -> dict:
    """``ro-crate-metadata.json`` for *run*'s result *files* (pure)."""
    files = sorted(files, key=lambda f: f.path)
    for f in files:
        if f.path in OWN:
            raise InvalidRequest(f"a result file may not be named {f.path}: the crate's own file")
    person = f"#user-{run.user}"
    action = f"#run-{run.job_id}"
    software = [{"@id": f"#software-{name}", "@type": "SoftwareApplication", "name": name, "version": version}
                for name, version in sorted(run.software.items())]
    approvals = [{"@id": f"#approval-{i}", "@type": "AssessAction", "name": f"results review: {a.decision}",
                  "agent": {"@id": f"#user-{a.who}"}, "endTime": a.when, "object": {"@id": action},
                  "actionStatus": "http://schema.org/CompletedActionStatus"} for i, a in enumerate(run.approvals, 1)]
    people = {run.user, *(a.who for a in run.approvals)}
    asked, used = _properties(run.resources_asked, "asked"), _properties(run.resources_used, "used")
    graph = [
        {"@id": METADATA, "@type": "CreativeWork", "about": {"@id": "./"},
         "conformsTo": [{"@id": RO_CRATE}, {"@id": PROCESS_RUN_CRATE}]},
        {"@id": "./", "@type": "Dataset", "name": f"Results of job {run.job_id} on dataset {run.dataset}",
         "datePublished": run.end, "conformsTo": {"@id": PROCESS_RUN_CRATE},
         "hasPart": [{"@id": f.path} for f in files], "mentions": {"@id": action},
         **({"isPartOf": {"@id": run.xnat_item}} if run.xnat_item else {})},
        {"@id": PROCESS_RUN_CRATE, "@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"},
        *({"@id": f.path, "@type": "File", "contentSize": str(f.size), "sha256": f.sha256} for f in files),
        {"@id": action, "@type": "CreateAction", "name": f"training job {run.job_id}",
         "agent": {"@id": person}, "instrument": {"@id": f"#script-{run.script_sha256[:16]}"},
         "object": [{"@id": f"#dataset-{run.manifest_sha256[:16]}"}], "result": [{"@id": f.path} for f in files],
         "startTime": run.start, "endTime": run.end,
         "identifier": [{"@id": f"#slurm-{run.slurm_job_id}"}, *({"@id": f"#audit-{a}"} for a in run.audit_ids)],
         "location": {"@id": f"#node-{run.node}"},
         "additionalProperty": [{"@id": p["@id"]} for p in asked + used],
         "actionStatus": "http://schema.org/CompletedActionStatus",
         **({"description": run.note} if run.note else {})},
        {"@id": f"#script-{run.script_sha256[:16]}", "@type": "SoftwareApplication", "name": run.script,
         "sha256": run.script_sha256,
         **({"softwareRequirements": [{"@id": s["@id"]} for s in software]} if software else {})},
        {"@id": f"#dataset-{run.manifest_sha256[:16]}", "@type": "Dataset", "name": run.dataset,
         "description": "the dataset manifest the job ran on (XNAT files and their digests)",
         "sha256": run.manifest_sha256, "publisher": {"@id": run.xnat_host}},
        {"@id": run.xnat_host, "@type": "Organization", "name": "XNAT", "url": run.xnat_host},
        *([{"@id": run.xnat_item, "@type": "Dataset", "name": "the XNAT item the results are published to",
            "url": run.xnat_item}] if run.xnat_item else []),
        {"@id": f"#slurm-{run.slurm_job_id}", "@type": "PropertyValue", "name": "Slurm job id",
         "value": run.slurm_job_id},
        {"@id": f"#node-{run.node}", "@type": "Place", "name": f"node {run.node}, partition {run.partition}"},
        *({"@id": f"#audit-{a}", "@type": "PropertyValue", "name": "xnat-hpc-hub audit record", "value": a}
          for a in run.audit_ids),
        *asked, *used, *software, *approvals,
        *({"@id": f"#user-{p}", "@type": "Person", "name": p} for p in sorted(people)),
    ]
    return {"@context": CONTEXT, "@graph": graph}


def dumps(metadata: dict) -> bytes:
    """The metadata file's bytes, as signed (sorted keys, indented, one newline at the end)."""
    return (json.dumps(metadata, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest_files(root: Path) -> list[FileEntry]:
    """Every regular file under *root* but the crate's own, with size and sha256; a symbolic
    link or anything but a file or directory is refused (results are plain files)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in sorted(dirnames + filenames):
            full = Path(dirpath) / name
            mode = os.lstat(full).st_mode
            rel = full.relative_to(root).as_posix()
            if stat.S_ISDIR(mode):
                continue
            if not stat.S_ISREG(mode):
                raise InvalidRequest(f"{rel} is not a plain file (a link or a device): results are plain files")
            if rel not in OWN:
                out.append(FileEntry(rel, os.lstat(full).st_size, _sha256(full)))
    return sorted(out, key=lambda f: f.path)


def listed_files(metadata: Mapping) -> dict[str, FileEntry]:
    """The crate's ``File`` entities: path → entry."""
    out = {}
    for node in metadata.get("@graph") or []:
        if node.get("@type") == "File":
            out[node["@id"]] = FileEntry(node["@id"], int(node.get("contentSize", -1)), node.get("sha256", ""))
    return out


def check_files(root: Path, metadata: Mapping) -> list[str]:
    """What differs between the directory and its crate, one line per file (empty: nothing)."""
    listed = listed_files(metadata)
    try:
        present = {f.path: f for f in digest_files(root)}
    except InvalidRequest as exc:
        return [exc.message]
    problems = []
    for path in sorted(set(listed) | set(present)):
        want, got = listed.get(path), present.get(path)
        if got is None:
            problems.append(f"{path}: missing")
        elif want is None:
            problems.append(f"{path}: not in the signed record (added after publishing)")
        elif (got.size, got.sha256) != (want.size, want.sha256):
            problems.append(f"{path}: changed after publishing (sha256 {got.sha256[:16]}…, signed "
                            f"{want.sha256[:16]}…)")
    return problems


def verify_results(root: Path, public_key: bytes) -> list[str]:
    """Everything wrong with the published results in *root*: the hub's signature of the crate
    (:mod:`xnat_bridge.sshsig`, namespace ``xnat-hpc-results``), then every file against the
    signed crate. Empty: the results are as the hub signed them."""
    from .sshsig import BadSignature, verify

    try:
        body = (root / METADATA).read_bytes()
        signature = (root / SIGNATURE).read_text()
    except OSError as exc:
        return [f"{exc.filename}: {exc.strerror}"]
    try:
        verify(body, signature, public_key)
    except BadSignature as exc:
        return [f"{METADATA}: {exc.message}"]
    try:
        metadata = json.loads(body)
    except ValueError:
        return [f"{METADATA}: not JSON"]
    return check_files(root, metadata)
