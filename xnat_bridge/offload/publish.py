"""Publishing a finished job's results to XNAT with the hub's signed provenance (issue 22).

``job.publish()``, ``POST …/xnat-hpc/api/jobs/{id}/publish`` and the lab's "Publish to XNAT…"
end here (:meth:`~xnat_bridge.offload.manager.OffloadManager.publish`):

1. **The results** are what the job returned: the files, sizes and sha256s recorded in its
   ``provenance.json`` as they were decrypted (held results opened first: only approved ones
   exist there). No second pass reads them: each file is hashed as the upload sends it (no
   link followed), and one changed since the job fails the upload, named.
2. **The target** is the XNAT item the dataset covers (:func:`choose_target`, pure): its one
   experiment, else its one subject, else its one project (or the project the caller names).
3. **The hub signs** (``POST /hub/api/xnat-hpc/jobs/{id}/publish``): it checks the job, the
   target and, for held results, that the files are exactly those the owners approved; it
   answers the RO-Crate it built from its own records and its SSHSIG
   (:mod:`hub_ext.publication`). The server never holds the key.
4. **The upload is XNAT's own resource API, as the user** (:class:`XnatResourceWriter`): the
   resource ``xnat-hpc-results-{job}`` is created on the item (``format=RO-Crate``), every
   file streamed from disk (``PUT …/files/{path}?inbody=true&overwrite=true``, never read
   whole into memory), then ``ro-crate-metadata.json`` and, **last**,
   ``ro-crate-metadata.json.sig``: the signature is the commit mark. XNAT decides who may
   write: a Collaborator is refused at the resource's creation (403), and where XNAT answers
   an upload with a silent 200 and keeps nothing (a Collaborator on an existing resource),
   the listing checked after the upload finds it.
5. **A failure in the middle** deletes the resource (XNAT lets Owners delete; a Member's
   resource stays without its signature, which ``verify-results`` rejects as unsigned), and
   the hub is told (``PATCH``: audited ``publish`` failed). **Publishing again** is
   idempotent: the hub answers the same crate and signature; a resource that already holds
   them is left as it is, one left half-written is completed (``overwrite=true``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import stat
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path

from ..errors import Conflict, InvalidRequest, NotFound, PermissionDenied, XnatHpcError
from ..results_crate import METADATA, SIGNATURE, FileEntry

log = logging.getLogger(__name__)

RESOURCE_PREFIX = "xnat-hpc-results-"
RESOURCE_FORMAT = "RO-Crate"
RESOURCE_CONTENT = "xnat-hpc-hub results"
#: the job directory's record of its publication
STATE_FILE = "publication.json"


@dataclasses.dataclass(frozen=True)
class Target:
    project: str
    subject: str = ""
    experiment: str = ""

    def to_json(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


def choose_target(file_names: Iterable[str], project: str | None = None) -> Target:
    """The XNAT item a dataset's files cover (pure). Names are the manifest's
    ``{project}/{subject label or _}/{session label}/…``: one experiment → it; one subject →
    it; else the project — *project* when given (it must be one of the dataset's), else the
    dataset's only one."""
    items = set()
    for name in file_names:
        parts = name.split("/")
        if len(parts) < 4:
            raise InvalidRequest(f"{name!r} is not a dataset file name (project/subject/session/…)")
        items.add((parts[0], parts[1], parts[2]))
    projects = sorted({p for p, _, _ in items})
    if not projects:
        raise InvalidRequest("the dataset has no files: nothing says where the results belong")
    if project is not None:
        if project not in projects:
            raise InvalidRequest(f"the dataset has no data of project {project} (it covers "
                                 f"{', '.join(projects)}): results go to a project the job read", item=project)
        items = {i for i in items if i[0] == project}
    elif len(projects) > 1:
        raise InvalidRequest(f"the dataset covers {', '.join(projects)}: name the project to publish the "
                             "results to (project=…)", item=",".join(projects))
    p = project or projects[0]
    if len(items) == 1:
        _, subject, experiment = next(iter(items))
        return Target(p, experiment=experiment)
    subjects = {s for _, s, _ in items}
    if len(subjects) == 1 and "_" not in subjects:
        return Target(p, subject=subjects.pop())
    return Target(p)


def item_path(target: Target) -> str:
    q = urllib.parse.quote
    path = f"/data/projects/{q(target.project, safe='')}"
    if target.experiment:
        return f"{path}/experiments/{q(target.experiment, safe='')}"
    if target.subject:
        return f"{path}/subjects/{q(target.subject, safe='')}"
    return path


def resource_path(target: Target, job_id: str) -> str:
    return f"{item_path(target)}/resources/{RESOURCE_PREFIX}{job_id}"


def run_claims(provenance: Mapping, environ: Mapping[str, str] = os.environ) -> dict:
    """What the server tells the hub of the run (the hub names it as the server's report)."""
    from importlib import metadata
    import platform

    software = {"python": platform.python_version()}
    for dist in ("xnat-hpc-hub", "dask", "distributed", "dask-jobqueue", "jupyter-server"):
        try:
            software[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    image = environ.get("JUPYTER_IMAGE_SPEC") or environ.get("JUPYTER_IMAGE")
    if image:
        software["image"] = image
    resources = {k: str(v) for k, v in (provenance.get("resources") or {}).items() if v not in (None, "")}
    used = {}
    try:
        began = _dt.datetime.fromisoformat(str(provenance.get("started")).replace("Z", "+00:00"))
        ended = _dt.datetime.fromisoformat(str(provenance.get("ended")).replace("Z", "+00:00"))
        used["walltime_seconds"] = str(max(0, round((ended - began).total_seconds())))
    except (TypeError, ValueError):
        pass  # a run without both times: nothing measured
    return {"script": str(provenance.get("script") or ""), "node": str(provenance.get("node") or ""),
            "partition": str(provenance.get("partition") or ""),
            "started": str(provenance.get("started") or ""), "ended": str(provenance.get("ended") or ""),
            "resources": resources, "used": used, "software": software}


class XnatResourceWriter:
    """One resource of one XNAT item, written through XNAT's REST API as the user
    (:class:`~xnat_bridge.client.XnatClient`)."""

    def __init__(self, client, resource: str, project: str):
        self.client = client
        self.resource = resource
        self.project = project

    def _refused(self, exc: XnatHpcError, what: str) -> XnatHpcError:
        if isinstance(exc, PermissionDenied):
            return PermissionDenied(f"XNAT does not let {self.client.username} {what} in project "
                                    f"{self.project} (a Collaborator, or a Member on the project itself, "
                                    "cannot write resources): ask an owner of the project", item=self.project)
        return exc

    def create(self) -> bool:
        """Create the resource; False when it exists already (XNAT's 409)."""
        try:
            resp = self.client.request("PUT", self.resource, params={
                "format": RESOURCE_FORMAT, "content": RESOURCE_CONTENT,
                "description": "results of an xnat-hpc-hub job with their signed RO-Crate"},
                what=f"resource {self.resource}", accept=(409,))
        except XnatHpcError as e:
            raise self._refused(e, "create resources") from None
        resp.close()
        return resp.status_code != 409

    def listing(self) -> dict[str, int]:
        """Name → size of the resource's files, as XNAT lists them."""
        rows = self.client.result(f"{self.resource}/files", what=f"the files of {self.resource}")
        out = {}
        for r in rows:
            name = r.get("Name") or ""
            uri = r.get("URI") or ""
            marker = "/files/"
            rel = uri.split(marker, 1)[1] if marker in uri else name
            out[urllib.parse.unquote(rel)] = int(r.get("Size") or 0)
        return out

    def read(self, name: str) -> bytes:
        return self.client.request("GET", f"{self.resource}/files/{urllib.parse.quote(name)}",
                                   what=f"{self.resource}/files/{name}").content

    def put(self, name: str, body, size: int) -> None:
        """Upload one file, streamed from *body* (a file object or bytes), replacing it."""
        try:
            resp = self.client.request(
                "PUT", f"{self.resource}/files/{urllib.parse.quote(name)}",
                params={"inbody": "true", "overwrite": "true", "format": RESOURCE_FORMAT},
                data=body, headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
                what=f"{self.resource}/files/{name}")
        except XnatHpcError as e:
            raise self._refused(e, "upload files") from None
        text = resp.text
        resp.close()
        if "duplicates" in text:  # XNAT's answer when it kept the old file (overwrite not taken)
            raise Conflict(f"XNAT kept an older {name} in {self.resource} and did not replace it", item=name)

    def delete(self) -> bool:
        """Delete the resource with its files; False when XNAT refuses (a Member may not delete)."""
        try:
            self.client.request("DELETE", self.resource, params={"removeFiles": "true"},
                                what=f"resource {self.resource}").close()
            return True
        except XnatHpcError as e:
            log.warning("publishing: %s could not be removed after a failure: %s", self.resource, e.message)
            return False


class HashingReader:
    """A result file as the upload reads it, hashed on the way (one read of each byte): the
    upload checks that what XNAT received is what the crate names. A rewind (the client's
    retry) starts the hash again."""

    mode = "rb"  # what requests reads a body's length by (with fileno)

    def __init__(self, raw):
        self.raw = raw
        self.hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.hash.update(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self.raw.seek(offset, whence)
        if pos == 0:
            self.hash = hashlib.sha256()
        return pos

    def tell(self) -> int:
        return self.raw.tell()

    def fileno(self) -> int:
        return self.raw.fileno()


def upload(writer: XnatResourceWriter, results: Path, files: list[FileEntry], crate: bytes,
           signature: str) -> str:
    """Write the results, the crate, then its signature; ``"published"`` or ``"unchanged"``
    (the resource already held this very publication). Each file's sha256 is taken as it is
    sent and must be the crate's (the job's results as they were decrypted): a file changed
    since fails the upload, named. Raises after deleting what it made (or, where XNAT does
    not let the user delete, leaving it unsigned)."""
    made = writer.create()
    if not made:
        have = writer.listing()
        if SIGNATURE in have and METADATA in have:
            if writer.read(METADATA) == crate and writer.read(SIGNATURE).decode() == signature:
                return "unchanged"
            raise Conflict(f"{writer.resource} already holds another signed publication; it is left as it is",
                           item=writer.resource)
    try:
        for f in files:
            fd = os.open(results / f.path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as raw:
                st = os.fstat(raw.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
                    raise Conflict(f"{f.path} changed since the job ended ({st.st_size} bytes, the job's "
                                   f"{f.size}): what is published is what the job returned", item=f.path)
                body = HashingReader(raw)
                writer.put(f.path, body, f.size)
                if body.hash.hexdigest() != f.sha256:
                    raise Conflict(f"{f.path} changed since the job ended (sha256 {body.hash.hexdigest()[:16]}…, "
                                   f"the job's {f.sha256[:16]}…): what is published is what the job returned",
                                   item=f.path)
        writer.put(METADATA, crate, len(crate))
        have = writer.listing()
        want = {**{f.path: f.size for f in files}, METADATA: len(crate)}
        wrong = sorted(n for n, size in want.items() if have.get(n) != size)
        if wrong:
            raise PermissionDenied(f"XNAT did not keep {wrong[0]} in {writer.resource} (it answers uploads it "
                                   f"refuses with success): {writer.client.username} may not write to project "
                                   f"{writer.project}", item=wrong[0])
        writer.put(SIGNATURE, signature.encode(), len(signature.encode()))  # last: the commit mark
    except BaseException:
        if made:
            writer.delete()
        raise
    return "published"


def load_state(job_dir: Path) -> dict | None:
    try:
        return json.loads((job_dir / STATE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise NotFound(f"{job_dir / STATE_FILE} is damaged; remove it to publish again") from None
