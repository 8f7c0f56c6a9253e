"""What the hub signs when a job's results are published to XNAT (issue 22), pure.

A researcher's server asks the governance service to sign the RO-Crate of a finished job's
results (``POST /hub/api/xnat-hpc/jobs/{job}/publish``) before it uploads them to XNAT as
the user. The service signs only what it can stand behind:

* **the job is the user's and finished** — the ledger's row, entered by the hub at
  submission from the server's scope, reported ``done``;
* **the target is in the job's scope** — the XNAT item's project is one of the ledger's
  projects (a server cannot publish a job's results into a project the job never read);
* **held results are published as approved** — when a project of the job needs review, the
  owners approved it and every file, its size and sha256, is exactly what was registered
  for review (the job's output log, released into ``log.txt``, is not a result);
* **the crate's facts come from the hub's records** where it has them: dataset, manifest and
  script digests, Slurm job id, the approvals (who, when), the trail's record ids, XNAT's
  address. What only the server knows (script name, node, partition, times, resources,
  software) is said in the crate to be the server's report.

:func:`check_request` parses the server's body, :func:`check_publishable` decides,
:func:`run_record` builds the :class:`~xnat_bridge.results_crate.RunRecord`, and
the XNAT item and resource are named by :mod:`xnat_bridge.offload.publish` (``item_path``,
``resource_path``), as the server uploads to them — all pure.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

from xnat_bridge.errors import Conflict, InvalidRequest, PermissionDenied
from xnat_bridge.offload.publish import Target, item_path
from xnat_bridge.offload.review import LOG_MEMBER
from xnat_bridge.results_crate import OWN, Approval, FileEntry, RunRecord

#: XNAT IDs and labels as the publication names them (XNAT's own rule is looser; ours is a subset)
_XNAT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
_SHA = re.compile(r"^[0-9a-f]{64}$")
MAX_FILES = 10000
MAX_CLAIM = 200
#: what the crate says the server reported (the hub has no record of it)
REPORTED = ("script name", "node", "partition", "start and end", "resources asked and used", "software")


@dataclasses.dataclass(frozen=True)
class PublishRequest:
    target: Target
    files: tuple[FileEntry, ...]
    run: Mapping[str, object]


def _name(value, what: str, *, optional: bool = False) -> str:
    if optional and value in (None, ""):
        return ""
    if not isinstance(value, str) or not _XNAT_NAME.match(value):
        raise InvalidRequest(f"{what} {str(value)[:60]!r} is not an XNAT ID or label "
                             "(letters, digits, '_', '-', '.'; at most 100)", item=str(value)[:60])
    return value


def _relpath(value) -> str:
    if not isinstance(value, str) or not value or len(value) > 1000 or value.startswith("/") \
            or "\\" in value or any(p in ("", ".", "..") for p in value.split("/")) \
            or any(ord(c) < 32 for c in value):
        raise InvalidRequest(f"{str(value)[:80]!r} is not a result file's relative path", item=str(value)[:80])
    if value in OWN:
        raise InvalidRequest(f"a result file may not be named {value}: the crate's own file", item=value)
    return value


def _claims(run) -> dict:
    if not isinstance(run, Mapping):
        raise InvalidRequest("'run' must be an object: what the server knows of the run")
    out: dict = {}
    for key in ("script", "node", "partition", "started", "ended"):
        v = run.get(key, "")
        if not isinstance(v, str) or len(v) > MAX_CLAIM:
            raise InvalidRequest(f"run.{key} must be a string of at most {MAX_CLAIM} characters")
        out[key] = v
    for key in ("resources", "used", "software"):
        v = run.get(key) or {}
        if not isinstance(v, Mapping) or len(v) > 100 or any(
                not isinstance(k, str) or len(k) > MAX_CLAIM or len(str(x)) > MAX_CLAIM for k, x in v.items()):
            raise InvalidRequest(f"run.{key} must be an object of at most 100 short name/value pairs")
        out[key] = {k: str(x) for k, x in v.items()}
    return out


def check_request(body: Mapping) -> PublishRequest:
    """The server's publish request, checked (every problem named; nothing is trusted yet)."""
    if not isinstance(body, Mapping):
        raise InvalidRequest("the body must be a JSON object")
    unknown = sorted(set(body) - {"target", "files", "run"})
    if unknown:
        raise InvalidRequest(f"unknown field(s) {', '.join(unknown)} (target, files, run)")
    t = body.get("target")
    if not isinstance(t, Mapping) or set(t) - {"project", "subject", "experiment"}:
        raise InvalidRequest("'target' must be an object naming project, and subject or experiment or none")
    target = Target(_name(t.get("project"), "the target project"),
                    _name(t.get("subject"), "the target subject", optional=True),
                    _name(t.get("experiment"), "the target experiment", optional=True))
    files = body.get("files")
    if not isinstance(files, list) or not files:
        raise InvalidRequest("'files' must list the result files (name, size, sha256): nothing to publish")
    if len(files) > MAX_FILES:
        raise InvalidRequest(f"{len(files)} result files: the hub signs at most {MAX_FILES}")
    entries, seen = [], set()
    for f in files:
        if not isinstance(f, Mapping):
            raise InvalidRequest("each result file must be an object (name, size, sha256)")
        name = _relpath(f.get("name"))
        size, sha = f.get("size"), f.get("sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidRequest(f"{name}: size must be a byte count", item=name)
        if not isinstance(sha, str) or not _SHA.match(sha):
            raise InvalidRequest(f"{name}: sha256 must be 64 lower-case hex digits", item=name)
        if name in seen:
            raise InvalidRequest(f"{name} is listed twice", item=name)
        seen.add(name)
        entries.append(FileEntry(name, size, sha))
    return PublishRequest(target, tuple(sorted(entries, key=lambda e: e.path)), _claims(body.get("run") or {}))


def approved_files(held: Mapping) -> set[tuple[str, int, str]]:
    """The result files the owners approved (the job's output log is not a result)."""
    return {(f["name"], int(f["size"]), f["sha256"]) for f in held.get("results") or ()
            if f["name"] != LOG_MEMBER}


def check_publishable(ledger: Mapping, held: Mapping | None, req: PublishRequest) -> None:
    """Raise unless *req* may be signed for the ledger job *ledger* (module docstring).
    *held*: the review store's job when its results were held, else None."""
    job = ledger["job"]
    if ledger["state"] != "done":
        raise Conflict(f"job {job} is {ledger['state']} in the hub's ledger: only a finished job's results "
                       "are published", item=job)
    projects = list(ledger["projects"])
    if req.target.project not in projects:
        raise PermissionDenied(f"job {job} ran on data of {', '.join(projects)}: its results cannot be "
                               f"published to project {req.target.project}", item=req.target.project)
    if not ledger.get("review"):
        return
    if held is None:
        raise Conflict(f"the results of job {job} are held for review by the owners of "
                       f"{', '.join(ledger['review'])}, and were never registered with the hub", item=job)
    if held["state"] != "approved":
        pending = ", ".join(held.get("pending") or ledger["review"])
        raise Conflict(f"the results of job {job} are {held['state']}"
                       + (f" (waiting for the owners of {pending})" if held["state"] == "held" else "")
                       + ": only approved results are published", item=job)
    approved = approved_files(held)
    asked = {(f.path, f.size, f.sha256) for f in req.files}
    if asked != approved:
        by_name = {a[0]: a for a in approved}
        for name, size, sha in sorted(asked - approved):
            if name not in by_name:
                raise Conflict(f"{name} is not among the results the owners approved", item=name)
            raise Conflict(f"{name} is not what the owners approved (sha256 {sha[:16]}…, approved "
                           f"{by_name[name][2][:16]}…)", item=name)
        missing = sorted(a[0] for a in approved - asked)
        raise Conflict(f"{missing[0]} was approved but is not published: what is published is exactly "
                       "what was approved", item=missing[0])


def approvals(held: Mapping | None) -> tuple[Approval, ...]:
    if not held:
        return ()
    return tuple(Approval(d["owner"], d["time"], f"{d['decision']} ({project})")
                 for project, d in sorted((held.get("decisions") or {}).items()))


def run_record(ledger: Mapping, held: Mapping | None, req: PublishRequest, *, xnat_url: str,
               audit_ids: list[int] | tuple[int, ...]) -> RunRecord:
    """What the crate says of the run: the hub's records first, the server's report named as such."""
    run = req.run
    xnat_url = xnat_url.rstrip("/")
    return RunRecord(
        job_id=ledger["job"], user=ledger["user"], xnat_host=xnat_url or "xnat",
        dataset=f"{ledger['dataset']} v{ledger['dataset_version']}",
        manifest_sha256=ledger["manifest_sha256"], script=str(run.get("script") or "script"),
        script_sha256=ledger["script_sha256"], slurm_job_id=ledger["slurm_job_id"] or "",
        partition=str(run.get("partition") or ""), node=str(run.get("node") or ""),
        start=str(run.get("started") or ledger["created"]), end=str(run.get("ended") or ledger["updated"]),
        resources_asked=dict(run.get("resources") or {}), resources_used=dict(run.get("used") or {}),
        software=dict(run.get("software") or {}),
        approvals=approvals(held), audit_ids=tuple(str(i) for i in audit_ids),
        xnat_item=f"{xnat_url}{item_path(req.target)}" if xnat_url else item_path(req.target),
        note=("Checked by the hub: the job's user, dataset and digests of manifest and script, its Slurm "
              "job id, its project scope and the owners' approvals (its ledger and review store); "
              + ("the result files are exactly those the owners approved. " if held else "")
              + "Reported by the researcher's server: " + ", ".join(REPORTED)
              + ("" if held else ", and the result files' digests") + "."),
    )
